//! HTTP Basic authentication as Twilio does it: the account SID with its auth token, or an
//! API key SID with its secret, compared in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use subtle::ConstantTimeEq;

/// The credential pairs a sandbox accepts.
#[derive(Clone)]
pub(crate) struct Credentials {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("pairs", &self.pairs.len())
            .finish()
    }
}

impl Credentials {
    pub(crate) fn new(account_sid: &str, auth_token: &str, api_keys: &[(String, String)]) -> Self {
        let mut pairs = vec![(
            account_sid.as_bytes().to_vec(),
            auth_token.as_bytes().to_vec(),
        )];
        pairs.extend(
            api_keys
                .iter()
                .map(|(sid, secret)| (sid.as_bytes().to_vec(), secret.as_bytes().to_vec())),
        );
        Credentials { pairs }
    }

    /// Whether an `Authorization` header value carries accepted credentials.
    pub(crate) fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        // Every pair is compared, without an early exit, so the time taken does not reveal
        // which user name exists.
        let mut accepted = subtle::Choice::from(0u8);
        for (expected_user, expected_password) in &self.pairs {
            // Empty secrets never authenticate, whatever the client sends.
            let usable = subtle::Choice::from(u8::from(!expected_password.is_empty()));
            accepted |= usable
                & user.as_slice().ct_eq(expected_user)
                & password.as_slice().ct_eq(expected_password);
        }
        bool::from(accepted)
    }
}

/// Splits `Basic base64(user:password)` into its parts.
fn parse_basic(value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let (user, rest) = decoded.split_at(colon);
    Some((user.to_vec(), rest.get(1..)?.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
    }

    fn check(header: Option<&str>, expected: bool) {
        let credentials = Credentials::new(
            "ACsid",
            "token",
            &[
                ("SKkey".to_owned(), "secret".to_owned()),
                ("SKempty".to_owned(), String::new()),
            ],
        );
        assert_eq!(
            credentials.accepts(header.map(str::as_bytes)),
            expected,
            "{header:?}"
        );
    }

    #[test]
    fn accepts_account_and_api_keys_only() {
        check(Some(&basic("ACsid", "token")), true);
        check(Some(&basic("SKkey", "secret")), true);
        check(
            Some(&format!("basic {}", STANDARD.encode("ACsid:token"))),
            true,
        );
        check(Some(&basic("ACsid", "secret")), false);
        check(Some(&basic("SKkey", "token")), false);
        check(Some(&basic("SKempty", "")), false);
        check(Some(&basic("ACsid", "token2")), false);
        check(Some(&basic("ACsid", "")), false);
        check(Some(&basic("", "")), false);
        check(Some("Bearer abc"), false);
        check(Some("Basic !!!notbase64"), false);
        check(
            Some(&format!("Basic {}", STANDARD.encode("no-colon"))),
            false,
        );
        check(Some("Basic"), false);
        check(None, false);
    }

    #[test]
    fn passwords_may_contain_colons() {
        let credentials = Credentials::new("ACsid", "to:ken", &[]);
        assert!(credentials.accepts(Some(basic("ACsid", "to:ken").as_bytes())));
    }
}
