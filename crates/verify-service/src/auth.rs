//! Who is calling: the callers `[callers.<name>]` configures, recognised by the subject of
//! their client certificate (mutual TLS) or by a bearer token.
//!
//! Tokens are configured only as their SHA-256 digests, so the configuration holds nothing
//! that would let its reader call. A presented token is hashed and compared with every
//! configured digest in constant time (digests have one length, so the comparison leaks
//! neither which caller nor how much of a digest matched).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

/// A SHA-256 digest.
pub type TokenDigest = [u8; 32];

/// One configured caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The name of its `[callers.<name>]` table: logs and ownership use it.
    pub name: String,
    /// The purposes it may start verifications for.
    pub purposes: BTreeSet<String>,
    /// Whether it may assert `step_up_completed` itself.
    pub trusted_step_up: bool,
}

impl Caller {
    pub fn may_use(&self, purpose: &str) -> bool {
        self.purposes.contains(purpose)
    }
}

/// A caller as configured, before the set is built.
#[derive(Debug, Clone)]
pub struct CallerEntry {
    pub caller: Caller,
    /// The client certificate's subject (URI SAN or DNS SAN) that names it.
    pub mtls_subject: Option<String>,
    /// The digest of its bearer token.
    pub token_sha256: Option<TokenDigest>,
}

/// Why a call was not recognised. The messages say what to send, never what was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "VerifyService needs a caller: `authorization: Bearer <token>` or a client certificate"
    )]
    NoCredentials,
    #[error("the bearer token is not one of a configured caller")]
    UnknownToken,
    #[error("the client certificate's subject is not one of a configured caller")]
    UnknownSubject,
    #[error("the bearer token and the client certificate name different callers")]
    Mismatch,
}

/// The configured callers.
#[derive(Debug, Clone)]
pub struct Callers {
    callers: Vec<Arc<Caller>>,
    subjects: HashMap<String, usize>,
    tokens: Vec<(TokenDigest, usize)>,
}

impl Callers {
    /// Builds the set; a subject or token digest claimed by two callers is an error naming
    /// both.
    pub fn new(entries: Vec<CallerEntry>) -> Result<Callers, String> {
        let mut callers = Vec::with_capacity(entries.len());
        let mut subjects = HashMap::new();
        let mut tokens: Vec<(TokenDigest, usize)> = Vec::new();
        for (i, entry) in entries.into_iter().enumerate() {
            let name = &entry.caller.name;
            if let Some(subject) = entry.mtls_subject {
                if let Some(&other) = subjects.get(&subject) {
                    let other: &Arc<Caller> = &callers[other];
                    return Err(format!(
                        "callers.{name}.mtls_subject is also callers.{}'s",
                        other.name
                    ));
                }
                subjects.insert(subject, i);
            }
            if let Some(digest) = entry.token_sha256 {
                if let Some((_, other)) = tokens.iter().find(|(d, _)| *d == digest) {
                    return Err(format!(
                        "callers.{name}.token_sha256 is also callers.{}'s",
                        callers[*other].name
                    ));
                }
                tokens.push((digest, i));
            }
            callers.push(Arc::new(entry.caller));
        }
        Ok(Callers {
            callers,
            subjects,
            tokens,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.callers.is_empty()
    }

    /// The caller a call comes from, given its bearer token and the subject of its client
    /// certificate. When both are given, they must name the same caller (a certificate
    /// whose subject names no caller only carried the connection, and the token decides).
    pub fn identify(
        &self,
        token: Option<&str>,
        subject: Option<&str>,
    ) -> Result<Arc<Caller>, AuthError> {
        let by_subject = subject.and_then(|s| self.subjects.get(s).copied());
        let by_token = match token {
            Some(token) => Some(self.by_token(token).ok_or(AuthError::UnknownToken)?),
            None => None,
        };
        let index = match (by_token, by_subject) {
            (Some(t), Some(s)) if t != s => return Err(AuthError::Mismatch),
            (Some(i), _) | (None, Some(i)) => i,
            (None, None) if subject.is_some() => return Err(AuthError::UnknownSubject),
            (None, None) => return Err(AuthError::NoCredentials),
        };
        Ok(Arc::clone(&self.callers[index]))
    }

    /// Compares the token's digest with every configured one, without stopping at a match.
    fn by_token(&self, token: &str) -> Option<usize> {
        let digest = token_digest(token);
        let mut found = None;
        for (configured, index) in &self.tokens {
            if bool::from(configured.ct_eq(&digest)) {
                found = Some(*index);
            }
        }
        found
    }
}

/// SHA-256 of a token, as `token_sha256` configures it (hex).
pub fn token_digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Parses a `token_sha256` setting: 64 hex digits.
pub fn parse_digest(hex_digest: &str) -> Option<TokenDigest> {
    let bytes = hex::decode(hex_digest.trim()).ok()?;
    bytes.try_into().ok()
}

/// The token of an `authorization: Bearer <token>` header. The scheme is matched without
/// regard to case (RFC 9110 §11.1); an empty token is none.
pub fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: &str, subject: Option<&str>, token: Option<&str>) -> CallerEntry {
        CallerEntry {
            caller: Caller {
                name: name.to_owned(),
                purposes: BTreeSet::from(["login".to_owned()]),
                trusted_step_up: false,
            },
            mtls_subject: subject.map(str::to_owned),
            token_sha256: token.map(token_digest),
        }
    }

    fn callers() -> Callers {
        Callers::new(vec![
            caller(
                "checkout",
                Some("spiffe://c/ns/shop/sa/checkout"),
                Some("t-checkout"),
            ),
            caller("signup", None, Some("t-signup")),
            caller("batch", Some("batch.jobs.svc"), None),
        ])
        .expect("valid")
    }

    fn name(r: Result<Arc<Caller>, AuthError>) -> Result<String, AuthError> {
        r.map(|c| c.name.clone())
    }

    #[test]
    fn a_token_or_a_subject_names_its_caller() {
        let c = callers();
        assert_eq!(
            name(c.identify(Some("t-signup"), None)),
            Ok("signup".into())
        );
        assert_eq!(
            name(c.identify(None, Some("batch.jobs.svc"))),
            Ok("batch".into())
        );
        assert_eq!(
            name(c.identify(Some("t-checkout"), Some("spiffe://c/ns/shop/sa/checkout"))),
            Ok("checkout".into())
        );
        // A certificate that names no caller only carried the connection.
        assert_eq!(
            name(c.identify(Some("t-signup"), Some("ingress.svc"))),
            Ok("signup".into())
        );
    }

    #[test]
    fn unknown_missing_and_conflicting_credentials_are_refused() {
        let c = callers();
        assert_eq!(name(c.identify(None, None)), Err(AuthError::NoCredentials));
        assert_eq!(
            name(c.identify(Some("t-nobody"), None)),
            Err(AuthError::UnknownToken)
        );
        assert_eq!(
            name(c.identify(None, Some("ingress.svc"))),
            Err(AuthError::UnknownSubject)
        );
        assert_eq!(
            name(c.identify(Some("t-signup"), Some("batch.jobs.svc"))),
            Err(AuthError::Mismatch)
        );
        // A right certificate does not excuse a wrong token.
        assert_eq!(
            name(c.identify(Some("t-nobody"), Some("batch.jobs.svc"))),
            Err(AuthError::UnknownToken)
        );
    }

    #[test]
    fn a_subject_or_token_of_two_callers_is_refused() {
        let twice = Callers::new(vec![
            caller("a", None, Some("same")),
            caller("b", None, Some("same")),
        ]);
        assert_eq!(
            twice.map(|_| ()),
            Err("callers.b.token_sha256 is also callers.a's".into())
        );
        let twice = Callers::new(vec![
            caller("a", Some("x.svc"), None),
            caller("b", Some("x.svc"), None),
        ]);
        assert_eq!(
            twice.map(|_| ()),
            Err("callers.b.mtls_subject is also callers.a's".into())
        );
    }

    #[test]
    fn digests_parse_from_hex() {
        let digest = token_digest("secret");
        assert_eq!(parse_digest(&hex::encode(digest)), Some(digest));
        assert_eq!(
            parse_digest(&hex::encode(digest).to_uppercase()),
            Some(digest)
        );
        assert_eq!(parse_digest("abc"), None);
        assert_eq!(parse_digest(&"z".repeat(64)), None);
    }

    #[test]
    fn the_bearer_scheme_is_matched_without_case() {
        let with = |value: &str| {
            let mut m = MetadataMap::new();
            m.insert("authorization", value.parse().expect("ascii"));
            bearer_token(&m).map(str::to_owned)
        };
        assert_eq!(with("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(with("bearer abc").as_deref(), Some("abc"));
        assert_eq!(with("BEARER  abc ").as_deref(), Some("abc"));
        assert_eq!(with("Basic abc"), None);
        assert_eq!(with("Bearer "), None);
        assert_eq!(with("abc"), None);
        assert_eq!(bearer_token(&MetadataMap::new()), None);
    }
}
