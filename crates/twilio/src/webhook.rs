//! Proof that a webhook came from Twilio: the `X-Twilio-Signature` check of message status
//! callbacks (form posts) and Verify Events (JSON posts whose URL carries `bodySHA256`).
//!
//! # The algorithm
//!
//! As in CONTRACT.md §5 and Twilio's Python and Node libraries:
//!
//! 1. The string to sign is the full URL Twilio posted to, spelled as configured at Twilio
//!    (scheme, userinfo, host, port, path and query). A form post appends every parameter
//!    name in sorted order and, for each name, each distinct value in sorted order, as `name`
//!    then `value` with no separators (values decoded). A JSON post appends nothing.
//! 2. The signature is the padded standard base64 of the HMAC of that string. The key is the
//!    account's Auth Token and the hash SHA-1, unless the request carries
//!    `X-Twilio-Webhooks-Signature-Settings: key=<id>,algorithm=HMAC_SHA256|HMAC_SHA1`: it was
//!    then signed with that Webhooks SharedKey and the named hash.
//! 3. A JSON body is outside the HMAC. Twilio adds `bodySHA256=<hex SHA-256 of the body>` to
//!    the URL's query instead, so the signature covers the hash and the hash covers the body.
//!
//! Twilio does not always sign the URL in the spelling it was configured with, so a
//! signature is accepted when it matches one of these variants of the URL (as both official
//! libraries do): without its port, and with the scheme's default port (`:443`, `:80`) added
//! when it has none (unchanged when it has one). Both are tried for the URL as given (what
//! twilio-python does) and for its WHATWG serialisation (what twilio-node does through
//! `new URL`, which for instance writes `'` in the query as `%27`; the `url` crate implements
//! the same standard). Every variant names the same resource, so accepting them lets no
//! forged request through. twilio-node's third spelling, the query re-encoded by Node's legacy
//! `querystring` module, is not tried: no known vector needs it.
//!
//! Signatures and body hashes are compared in constant time. Validation never panics; every
//! reason to refuse a request is a [`SignatureError`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use url::Url;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Twilio-Signature";

/// The header naming the SharedKey and hash of a webhook signed with a Webhooks SharedKey.
pub const SIGNATURE_SETTINGS_HEADER: &str = "X-Twilio-Webhooks-Signature-Settings";

/// The query parameter in which Twilio puts the SHA-256 of a JSON body.
const BODY_HASH_PARAM: &str = "bodySHA256";

/// How much of a value from a request an error keeps: enough to name a key id in a log, not
/// enough to fill one.
const ECHO_LIMIT: usize = 64;

/// The hash of the HMAC, as `X-Twilio-Webhooks-Signature-Settings` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `HMAC_SHA1`: the Auth Token signature, and SharedKeys that name it.
    HmacSha1,
    /// `HMAC_SHA256`.
    HmacSha256,
}

impl Algorithm {
    /// The algorithm a settings header names; Twilio's Python library reads the name
    /// without regard to case, and so does this.
    fn from_name(name: &str) -> Option<Algorithm> {
        if name.eq_ignore_ascii_case("HMAC_SHA1") {
            Some(Algorithm::HmacSha1)
        } else if name.eq_ignore_ascii_case("HMAC_SHA256") {
            Some(Algorithm::HmacSha256)
        } else {
            None
        }
    }

    /// The length in bytes of the digest, which a decoded signature must have.
    fn output_len(self) -> usize {
        match self {
            Algorithm::HmacSha1 => 20,
            Algorithm::HmacSha256 => 32,
        }
    }
}

/// The signature headers of a request, as received (`None` when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureHeaders<'a> {
    /// The value of [`SIGNATURE_HEADER`].
    pub signature: Option<&'a str>,
    /// The value of [`SIGNATURE_SETTINGS_HEADER`].
    pub settings: Option<&'a str>,
}

/// Why a request is not accepted as coming from Twilio.
///
/// `MissingSignature`, `MalformedSignature`, `MalformedSettings` and `MissingBodyHash` say the
/// request is not a well-formed signed webhook (400; Twilio's Express middleware answers 400
/// to a missing signature); `Mismatch`, `BodyHashMismatch`, `UnknownSharedKey` and
/// `UnsupportedAlgorithm` say it is one that does not prove its origin (403). The service's
/// error table maps them to statuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Twilio-Signature` header, or an empty one.
    #[error("the X-Twilio-Signature header is missing")]
    MissingSignature,
    /// `X-Twilio-Signature` is not the base64 of a digest of the expected length.
    #[error("the X-Twilio-Signature header is not a base64 HMAC digest")]
    MalformedSignature,
    /// `X-Twilio-Webhooks-Signature-Settings` cannot be read (the reason is a fixed phrase).
    #[error("the X-Twilio-Webhooks-Signature-Settings header is malformed: {0}")]
    MalformedSettings(&'static str),
    /// A JSON webhook whose URL has no `bodySHA256` query parameter.
    #[error("the URL of a JSON webhook carries no bodySHA256")]
    MissingBodyHash,
    /// The signature matches no variant of the URL (and parameters) under the key.
    #[error("the signature does not match the request")]
    Mismatch,
    /// The signature is right but the body is not the one whose hash Twilio signed.
    #[error("bodySHA256 does not match the SHA-256 of the body")]
    BodyHashMismatch,
    /// The settings header names a SharedKey the validator does not hold (the id is shortened
    /// to 64 characters).
    #[error("the request is signed with an unknown SharedKey `{0}`")]
    UnknownSharedKey(String),
    /// The settings header names a hash this module does not know (shortened likewise).
    #[error("the request is signed with an unsupported algorithm `{0}`")]
    UnsupportedAlgorithm(String),
}

/// Checks webhook signatures with the account's Auth Token and, for webhooks signed with a
/// Webhooks SharedKey, the SharedKeys it holds. Its `Debug` shows key ids, never secrets.
#[derive(Clone)]
pub struct SignatureValidator {
    auth_token: SecretString,
    shared_keys: BTreeMap<String, SecretString>,
}

impl SignatureValidator {
    /// A validator of webhooks signed with the account's Auth Token.
    pub fn new(auth_token: SecretString) -> Self {
        SignatureValidator {
            auth_token,
            shared_keys: BTreeMap::new(),
        }
    }

    /// Also accepts webhooks whose settings header names `key_id`, checked with `secret`.
    /// Adding an id twice keeps the later secret.
    pub fn with_shared_key(mut self, key_id: impl Into<String>, secret: SecretString) -> Self {
        self.shared_keys.insert(key_id.into(), secret);
        self
    }

    /// Checks a form-encoded webhook (a message status callback).
    ///
    /// `url` is the full public URL Twilio posted to, query included: the configured public
    /// base followed by the path and query exactly as received. `params` are the decoded
    /// form fields in any order, a name repeated once per value; all of them count, since
    /// Twilio adds fields without notice.
    pub fn validate_form<K: AsRef<str>, V: AsRef<str>>(
        &self,
        url: &str,
        headers: SignatureHeaders<'_>,
        params: &[(K, V)],
    ) -> Result<(), SignatureError> {
        let (key, algorithm, signature) = self.prepare(headers)?;
        check_signature(algorithm, key, url, &params_to_sign(params), &signature)
    }

    /// Checks a JSON webhook (Verify Events): the signature covers `url`, whose `bodySHA256`
    /// must be the hex SHA-256 of `body`, the raw bytes as received.
    pub fn validate_json(
        &self,
        url: &str,
        headers: SignatureHeaders<'_>,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        let (key, algorithm, signature) = self.prepare(headers)?;
        let claimed = body_hash_param(url).ok_or(SignatureError::MissingBodyHash)?;
        check_signature(algorithm, key, url, "", &signature)?;
        if bool::from(body_sha256_hex(body).as_bytes().ct_eq(claimed.as_bytes())) {
            Ok(())
        } else {
            Err(SignatureError::BodyHashMismatch)
        }
    }

    /// The key, the hash and the decoded signature the headers call for.
    fn prepare(
        &self,
        headers: SignatureHeaders<'_>,
    ) -> Result<(&SecretString, Algorithm, Vec<u8>), SignatureError> {
        let signature = headers
            .signature
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(SignatureError::MissingSignature)?;
        let (key, algorithm) = self.signer(headers.settings)?;
        let decoded = BASE64
            .decode(signature)
            .map_err(|_| SignatureError::MalformedSignature)?;
        if decoded.len() != algorithm.output_len() {
            return Err(SignatureError::MalformedSignature);
        }
        Ok((key, algorithm, decoded))
    }

    /// The secret and hash that signed a request with these settings. An absent or blank
    /// header means the Auth Token and SHA-1, as in twilio-python.
    fn signer(&self, settings: Option<&str>) -> Result<(&SecretString, Algorithm), SignatureError> {
        let Some(settings) = settings.filter(|s| !s.trim().is_empty()) else {
            return Ok((&self.auth_token, Algorithm::HmacSha1));
        };
        let (key_id, algorithm) = parse_settings(settings)?;
        let key = self
            .shared_keys
            .get(key_id)
            .ok_or_else(|| SignatureError::UnknownSharedKey(shorten(key_id)))?;
        Ok((key, algorithm))
    }
}

impl fmt::Debug for SignatureValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureValidator")
            .field("auth_token", &"[redacted]")
            .field(
                "shared_key_ids",
                &self.shared_keys.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The signature Twilio would send for a form post of `params` to `url` (for a JSON post,
/// pass no params and a `url` carrying `bodySHA256`). For tests and tools that play Twilio;
/// validation does not need it.
pub fn sign<K: AsRef<str>, V: AsRef<str>>(
    algorithm: Algorithm,
    key: &SecretString,
    url: &str,
    params: &[(K, V)],
) -> String {
    BASE64.encode(mac(algorithm, key, url, &params_to_sign(params)))
}

/// The lowercase hex SHA-256 of a body, as Twilio writes it in `bodySHA256`.
pub fn body_sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Reads `key=<id>,algorithm=<name>`. Unknown names are skipped so Twilio can add some; a
/// missing or empty `algorithm` means SHA-1, as in twilio-python.
fn parse_settings(header: &str) -> Result<(&str, Algorithm), SignatureError> {
    let mut key = None;
    let mut algorithm = None;
    for part in header.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            return Err(SignatureError::MalformedSettings("a part without `=`"));
        };
        let slot = match name.trim() {
            "key" => &mut key,
            "algorithm" => &mut algorithm,
            _ => continue,
        };
        // Two keys or two algorithms leave it open which one signed.
        if slot.replace(value.trim()).is_some() {
            return Err(SignatureError::MalformedSettings("a repeated name"));
        }
    }
    let key = key
        .filter(|k| !k.is_empty())
        .ok_or(SignatureError::MalformedSettings("no `key`"))?;
    let algorithm = match algorithm.filter(|a| !a.is_empty()) {
        None => Algorithm::HmacSha1,
        Some(name) => Algorithm::from_name(name)
            .ok_or_else(|| SignatureError::UnsupportedAlgorithm(shorten(name)))?,
    };
    Ok((key, algorithm))
}

/// Accepts when the signature matches the HMAC of any variant of `url` followed by `params`.
/// Every variant is computed and compared, so the time taken does not tell which one came
/// close.
fn check_signature(
    algorithm: Algorithm,
    key: &SecretString,
    url: &str,
    params: &str,
    signature: &[u8],
) -> Result<(), SignatureError> {
    let mut matched = Choice::from(0u8);
    for candidate in candidate_urls(url) {
        matched |= mac(algorithm, key, &candidate, params).ct_eq(signature);
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The HMAC of `url` followed by `params`.
fn mac(algorithm: Algorithm, key: &SecretString, url: &str, params: &str) -> Vec<u8> {
    fn run<M: Mac + KeyInit>(key: &[u8], url: &str, params: &str) -> Vec<u8> {
        let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length");
        mac.update(url.as_bytes());
        mac.update(params.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
    let key = key.expose_secret().as_bytes();
    match algorithm {
        Algorithm::HmacSha1 => run::<Hmac<Sha1>>(key, url, params),
        Algorithm::HmacSha256 => run::<Hmac<Sha256>>(key, url, params),
    }
}

/// The part of the string to sign that follows the URL: names sorted, each name's distinct
/// values sorted, each pair as `name` then `value`. Order is by bytes, which for UTF-8 is
/// code point order, as in twilio-python (twilio-node sorts UTF-16 units, which differs
/// only between astral characters and U+E000..U+FFFF).
fn params_to_sign<K: AsRef<str>, V: AsRef<str>>(params: &[(K, V)]) -> String {
    let mut sorted: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, value) in params {
        sorted
            .entry(name.as_ref())
            .or_default()
            .insert(value.as_ref());
    }
    let mut out = String::new();
    for (name, values) in sorted {
        for value in values {
            out.push_str(name);
            out.push_str(value);
        }
    }
    out
}

/// The spellings of `url` a signature may have been made over, each once, the URL as given
/// first: then the port variants of the URL as given and of its WHATWG serialisation.
fn candidate_urls(url: &str) -> Vec<String> {
    let whatwg = Url::parse(url).ok().map(String::from);
    let mut out = vec![url.to_owned()];
    for spelling in std::iter::once(url).chain(whatwg.as_deref()) {
        let variants = match port_variants(spelling) {
            Some((without, with)) => [without, with],
            None => [spelling.to_owned(), spelling.to_owned()],
        };
        for variant in variants {
            if !out.contains(&variant) {
                out.push(variant);
            }
        }
    }
    out
}

/// The URL without its port, and with the scheme's default port added when it has none (the
/// URL itself when it has one). Works on the text, as twilio-python does, so nothing else
/// in the URL changes. An empty port (`host:`) counts as none. `None` when there is no
/// `scheme://authority` or its port is not a number.
fn port_variants(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    // RFC 3986 scheme syntax, so a `://` further on (in a query) is not taken for one.
    let mut scheme_chars = scheme.chars();
    if !scheme_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        || !scheme_chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    let authority_start = scheme.len() + "://".len();
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let host_start = authority.rfind('@').map_or(0, |at| at + 1);
    let host_port = &authority[host_start..];
    // An IPv6 literal holds colons of its own: the port separator follows its `]`.
    let host_len = if host_port.starts_with('[') {
        host_port.find(']')? + 1
    } else {
        host_port.find(':').unwrap_or(host_port.len())
    };
    let port = &host_port[host_len..];
    let digits = if port.is_empty() {
        port
    } else {
        port.strip_prefix(':')?
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let head = &url[..authority_start + host_start + host_len];
    let tail = &url[authority_start + authority_len..];
    let without = format!("{head}{tail}");
    let with = if digits.is_empty() {
        let default = if scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            80
        };
        format!("{head}:{default}{tail}")
    } else {
        url.to_owned()
    };
    Some((without, with))
}

/// The first non-empty `bodySHA256` of the URL's query (twilio-python skips blank values).
fn body_hash_param(url: &str) -> Option<String> {
    let url = url.split_once('#').map_or(url, |(before, _)| before);
    let (_, query) = url.split_once('?')?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, value)| name == BODY_HASH_PARAM && !value.is_empty())
        .map(|(_, value)| value.into_owned())
}

/// A value from the request, cut to a length fit for an error message.
fn shorten(value: &str) -> String {
    value.chars().take(ECHO_LIMIT).collect()
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    /// Twilio's own vectors (CONTRACT.md §5), copied unchanged from the shared contract.
    const VECTORS: &str = include_str!("../tests/contract/signature_vectors.json");

    #[derive(Deserialize)]
    struct Vectors {
        body_hashes: Vec<BodyHash>,
        vectors: Vec<Vector>,
        verification: BTreeMap<String, String>,
    }

    #[derive(Deserialize)]
    struct BodyHash {
        body: String,
        sha256_hex: String,
    }

    #[derive(Deserialize)]
    struct Vector {
        id: String,
        kind: String,
        token: String,
        request_url: String,
        signed_url: Option<String>,
        params: Vec<(String, String)>,
        body: Option<String>,
        expected_signature: String,
        expect_valid: bool,
    }

    fn vectors() -> Vectors {
        serde_json::from_str(VECTORS).expect("the vectors file is valid JSON of this shape")
    }

    const TOKEN: &str = "12345";
    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    fn secret(s: &str) -> SecretString {
        SecretString::from(s)
    }

    fn params() -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
            ("Caller", "+14158675309"),
        ]
        .iter()
        .map(|&(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
    }

    fn legacy(signature: &str) -> SignatureHeaders<'_> {
        SignatureHeaders {
            signature: Some(signature),
            settings: None,
        }
    }

    /// Runs one vector through the validator its kind calls for.
    fn validate(
        vector: &Vector,
        signature: &str,
        body: Option<&str>,
    ) -> Result<(), SignatureError> {
        let validator = SignatureValidator::new(secret(&vector.token));
        match vector.kind.as_str() {
            "form" => {
                validator.validate_form(&vector.request_url, legacy(signature), &vector.params)
            }
            "json" => {
                let body = body.expect("JSON vectors have a body");
                validator.validate_json(&vector.request_url, legacy(signature), body.as_bytes())
            }
            other => panic!("{}: unknown kind {other}", vector.id),
        }
    }

    #[test]
    fn every_vector_gives_its_expected_result() {
        let all = vectors();
        assert_eq!(all.vectors.len(), 17, "CONTRACT.md §5 counts 17 vectors");
        assert_eq!(
            all.verification.len(),
            2,
            "one verdict per official library"
        );
        // Every vector is checked before failing, so one run names all that fail.
        let mut failures = Vec::new();
        for vector in &all.vectors {
            let result = validate(vector, &vector.expected_signature, vector.body.as_deref());
            if result.is_ok() != vector.expect_valid {
                failures.push(format!(
                    "{}: expected valid={}, got {result:?}",
                    vector.id, vector.expect_valid
                ));
            }
            let Some(signed_url) = &vector.signed_url else {
                continue;
            };
            // As both libraries' `compute` over the URL Twilio signed.
            let computed = sign(
                Algorithm::HmacSha1,
                &secret(&vector.token),
                signed_url,
                &vector.params,
            );
            if computed != vector.expected_signature {
                failures.push(format!("{}: computed {computed}", vector.id));
            }
            if !candidate_urls(&vector.request_url).contains(signed_url) {
                failures.push(format!("{}: {signed_url} is not tried", vector.id));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn the_node_only_vector_passes_through_the_whatwg_spelling_alone() {
        let all = vectors();
        let vector = all
            .vectors
            .iter()
            .find(|v| v.id == "url_special_chars_quote")
            .expect("the vector exists");
        let signed_url = vector.signed_url.as_deref().expect("a positive vector");
        // twilio-python tries only the port variants of the URL as given, and refuses it.
        let (without, with) = port_variants(&vector.request_url).expect("an http URL");
        assert!(![&vector.request_url, &without, &with].contains(&&signed_url.to_owned()));
        assert_eq!(
            Url::parse(&vector.request_url).map(String::from).as_deref(),
            Ok(signed_url)
        );
    }

    #[test]
    fn negative_vectors_fail_for_their_reason() {
        let all = vectors();
        let reason = |id: &str| {
            let vector = all
                .vectors
                .iter()
                .find(|v| v.id == id)
                .expect("the vector exists");
            validate(vector, &vector.expected_signature, vector.body.as_deref())
        };
        // Not base64: the server can answer 400 rather than 403.
        assert_eq!(
            reason("neg_wrong_signature"),
            Err(SignatureError::MalformedSignature)
        );
        assert_eq!(
            reason("neg_extra_query_param"),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn body_hashes_match_the_vectors() {
        let all = vectors();
        assert_eq!(all.body_hashes.len(), 2);
        for hash in &all.body_hashes {
            assert_eq!(
                body_sha256_hex(hash.body.as_bytes()),
                hash.sha256_hex,
                "{}",
                hash.body
            );
        }
    }

    #[test]
    fn a_tampered_json_body_is_refused_after_the_signature_passes() {
        let all = vectors();
        for vector in all.vectors.iter().filter(|v| v.kind == "json") {
            let tampered = r#"{"property": "value", "boolean": false}"#;
            assert_eq!(
                validate(vector, &vector.expected_signature, Some(tampered)),
                Err(SignatureError::BodyHashMismatch),
                "{}",
                vector.id
            );
        }
    }

    #[test]
    fn a_json_url_must_carry_the_body_hash_and_the_signature_covers_it() {
        let validator = SignatureValidator::new(secret(TOKEN));
        let body = b"{}";
        let signature = sign::<&str, &str>(Algorithm::HmacSha1, &secret(TOKEN), URL, &[]);
        assert_eq!(
            validator.validate_json(URL, legacy(&signature), body),
            Err(SignatureError::MissingBodyHash)
        );
        let blank = format!("{URL}&bodySHA256=");
        assert_eq!(
            validator.validate_json(&blank, legacy(&signature), body),
            Err(SignatureError::MissingBodyHash)
        );
        // A matching hash swapped into the URL breaks the signature instead.
        let signed_url = format!("{URL}&bodySHA256={}", body_sha256_hex(body));
        let signature = sign::<&str, &str>(Algorithm::HmacSha1, &secret(TOKEN), &signed_url, &[]);
        assert_eq!(
            validator.validate_json(&signed_url, legacy(&signature), body),
            Ok(())
        );
        let other = b"[]";
        let swapped = format!("{URL}&bodySHA256={}", body_sha256_hex(other));
        assert_eq!(
            validator.validate_json(&swapped, legacy(&signature), other),
            Err(SignatureError::Mismatch)
        );
        // The hash is lowercase hex, as both libraries compare it.
        let upper = format!("{URL}&bodySHA256={}", body_sha256_hex(body).to_uppercase());
        let signature = sign::<&str, &str>(Algorithm::HmacSha1, &secret(TOKEN), &upper, &[]);
        assert_eq!(
            validator.validate_json(&upper, legacy(&signature), body),
            Err(SignatureError::BodyHashMismatch)
        );
    }

    /// Checks `params` against a signature made over `signed` (both with the vectors' token).
    fn check_params(
        signed: &[(&str, &str)],
        received: &[(&str, &str)],
        expected: Result<(), SignatureError>,
    ) {
        let signature = sign(Algorithm::HmacSha1, &secret(TOKEN), URL, signed);
        let result =
            SignatureValidator::new(secret(TOKEN)).validate_form(URL, legacy(&signature), received);
        assert_eq!(result, expected, "signed {signed:?}, received {received:?}");
    }

    #[test]
    fn repeated_values_count_once_and_order_does_not_matter() {
        let signed = [("Digits", "1234"), ("Digits", "5678"), ("Sid", "CA123")];
        check_params(&signed, &signed, Ok(()));
        check_params(
            &signed,
            &[
                ("Sid", "CA123"),
                ("Digits", "5678"),
                ("Digits", "1234"),
                ("Digits", "1234"),
            ],
            Ok(()),
        );
        check_params(
            &signed,
            &[("Digits", "5678"), ("Sid", "CA123"), ("Digits", "1234")],
            Ok(()),
        );
        assert_eq!(
            params_to_sign(&[("b", "2"), ("a", "y"), ("a", "x"), ("a", "y")]),
            "axayb2"
        );
    }

    #[test]
    fn tampered_params_are_refused() {
        let signed = [("MessageSid", "SM123"), ("MessageStatus", "delivered")];
        let mismatch = Err(SignatureError::Mismatch);
        check_params(
            &signed,
            &[("MessageSid", "SM123"), ("MessageStatus", "failed")],
            mismatch.clone(),
        );
        check_params(&signed, &[("MessageSid", "SM123")], mismatch.clone());
        check_params(
            &signed,
            &[
                ("MessageSid", "SM123"),
                ("MessageStatus", "delivered"),
                ("ErrorCode", "30003"),
            ],
            mismatch.clone(),
        );
        // A second distinct value of one name is a different request.
        check_params(
            &signed,
            &[
                ("MessageSid", "SM123"),
                ("MessageStatus", "delivered"),
                ("MessageStatus", "sent"),
            ],
            mismatch.clone(),
        );
        // Twilio's string to sign has no separators, so text moved from a value into its name
        // goes unnoticed. Pinned here so nobody mistakes it for a bug of this module; handlers
        // read only the names Twilio sends, which this cannot forge.
        check_params(
            &signed,
            &[("MessageSidSM", "123"), ("MessageStatus", "delivered")],
            Ok(()),
        );
        check_params(
            &signed,
            &[("MessageSid", "SM124"), ("MessageStatus", "delivered")],
            mismatch,
        );
    }

    #[test]
    fn a_signature_made_with_another_token_is_refused() {
        let signature = sign(
            Algorithm::HmacSha1,
            &secret("another-token"),
            URL,
            &params(),
        );
        assert_eq!(
            SignatureValidator::new(secret(TOKEN)).validate_form(
                URL,
                legacy(&signature),
                &params()
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_and_malformed_signatures_are_told_apart() {
        let validator = SignatureValidator::new(secret(TOKEN));
        let check = |signature: Option<&str>, expected: SignatureError| {
            let headers = SignatureHeaders {
                signature,
                settings: None,
            };
            assert_eq!(
                validator.validate_form(URL, headers, &params()),
                Err(expected),
                "{signature:?}"
            );
        };
        check(None, SignatureError::MissingSignature);
        check(Some(""), SignatureError::MissingSignature);
        check(Some("  "), SignatureError::MissingSignature);
        check(Some("WRONG_SIGNATURE"), SignatureError::MalformedSignature);
        check(
            Some("RSOYDt4T1cUTdK1PDd93/VVr8B8"),
            SignatureError::MalformedSignature,
        );
        // Base64 of a 32-byte digest where SHA-1 gives 20.
        check(
            Some(&BASE64.encode([0u8; 32])),
            SignatureError::MalformedSignature,
        );
        check(Some(&BASE64.encode([0u8; 20])), SignatureError::Mismatch);
        // Surrounding whitespace is not part of the value.
        let good = sign(Algorithm::HmacSha1, &secret(TOKEN), URL, &params());
        assert_eq!(
            validator.validate_form(URL, legacy(&format!(" {good} ")), &params()),
            Ok(())
        );
    }

    /// The SharedKey signature, computed with the `hmac` crate apart from the module's code.
    fn shared_key_signature(algorithm: Algorithm, secret: &str, url: &str, suffix: &str) -> String {
        let message = format!("{url}{suffix}");
        match algorithm {
            Algorithm::HmacSha1 => {
                let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(secret.as_bytes())
                    .expect("any key length");
                mac.update(message.as_bytes());
                BASE64.encode(mac.finalize().into_bytes())
            }
            Algorithm::HmacSha256 => {
                let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
                    .expect("any key length");
                mac.update(message.as_bytes());
                BASE64.encode(mac.finalize().into_bytes())
            }
        }
    }

    const KEY_ID: &str = "webhooks_sharedkey_01hzx";
    const KEY_SECRET: &str = "shared-key-secret";
    /// The string to sign after the URL for [`params`].
    const SUFFIX: &str =
        "CallSidCA1234567890ABCDECaller+14158675309Digits1234From+14158675309To+18005551212";

    fn shared_validator() -> SignatureValidator {
        SignatureValidator::new(secret(TOKEN))
            .with_shared_key("webhooks_sharedkey_other", secret("other"))
            .with_shared_key(KEY_ID, secret(KEY_SECRET))
    }

    /// Validates [`params`] at [`URL`] with these headers against [`shared_validator`].
    fn check_shared(signature: &str, settings: Option<&str>, expected: Result<(), SignatureError>) {
        let headers = SignatureHeaders {
            signature: Some(signature),
            settings,
        };
        assert_eq!(
            shared_validator().validate_form(URL, headers, &params()),
            expected,
            "{settings:?}"
        );
    }

    #[test]
    fn shared_key_signatures_use_the_named_key_and_hash() {
        assert_eq!(params_to_sign(&params()), SUFFIX);
        let sha256 = shared_key_signature(Algorithm::HmacSha256, KEY_SECRET, URL, SUFFIX);
        let sha1 = shared_key_signature(Algorithm::HmacSha1, KEY_SECRET, URL, SUFFIX);
        assert_eq!(
            sign(Algorithm::HmacSha256, &secret(KEY_SECRET), URL, &params()),
            sha256
        );

        check_shared(
            &sha256,
            Some(&format!("key={KEY_ID},algorithm=HMAC_SHA256")),
            Ok(()),
        );
        check_shared(
            &sha1,
            Some(&format!("key={KEY_ID},algorithm=HMAC_SHA1")),
            Ok(()),
        );
        // Spacing, order and case as twilio-python tolerates them; no algorithm means SHA-1.
        check_shared(
            &sha256,
            Some(&format!(" algorithm = hmac_sha256 , key = {KEY_ID} ")),
            Ok(()),
        );
        check_shared(&sha1, Some(&format!("key={KEY_ID}")), Ok(()));
        check_shared(&sha1, Some(&format!("key={KEY_ID},algorithm=")), Ok(()));
        check_shared(&sha1, Some(&format!("key={KEY_ID},version=2,")), Ok(()));
        // The port variants apply to SharedKey signatures too.
        let with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        let sha256_port =
            shared_key_signature(Algorithm::HmacSha256, KEY_SECRET, with_port, SUFFIX);
        check_shared(
            &sha256_port,
            Some(&format!("key={KEY_ID},algorithm=HMAC_SHA256")),
            Ok(()),
        );
    }

    #[test]
    fn shared_key_signatures_fail_with_the_wrong_key_hash_or_header() {
        let sha256 = shared_key_signature(Algorithm::HmacSha256, KEY_SECRET, URL, SUFFIX);
        let sha1 = shared_key_signature(Algorithm::HmacSha1, KEY_SECRET, URL, SUFFIX);
        // Without the settings header the Auth Token and SHA-1 are expected.
        check_shared(&sha256, None, Err(SignatureError::MalformedSignature));
        check_shared(&sha1, None, Err(SignatureError::Mismatch));
        check_shared(&sha1, Some(""), Err(SignatureError::Mismatch));
        // The right key under another id, or the hash named wrongly.
        check_shared(
            &sha256,
            Some("key=webhooks_sharedkey_other,algorithm=HMAC_SHA256"),
            Err(SignatureError::Mismatch),
        );
        check_shared(
            &sha1,
            Some(&format!("key={KEY_ID},algorithm=HMAC_SHA256")),
            Err(SignatureError::MalformedSignature),
        );
        // The Auth Token's signature does not pass as a SharedKey's.
        let legacy_sig = sign(Algorithm::HmacSha1, &secret(TOKEN), URL, &params());
        check_shared(
            &legacy_sig,
            Some(&format!("key={KEY_ID},algorithm=HMAC_SHA1")),
            Err(SignatureError::Mismatch),
        );
        check_shared(
            &sha256,
            Some("key=webhooks_sharedkey_gone,algorithm=HMAC_SHA256"),
            Err(SignatureError::UnknownSharedKey(
                "webhooks_sharedkey_gone".into(),
            )),
        );
        let long_id = "k".repeat(500);
        check_shared(
            &sha256,
            Some(&format!("key={long_id}")),
            Err(SignatureError::UnknownSharedKey("k".repeat(ECHO_LIMIT))),
        );
        check_shared(
            &sha256,
            Some(&format!("key={KEY_ID},algorithm=HMAC_SHA512")),
            Err(SignatureError::UnsupportedAlgorithm("HMAC_SHA512".into())),
        );
        for (header, why) in [
            ("algorithm=HMAC_SHA256", "no `key`"),
            ("key=,algorithm=HMAC_SHA256", "no `key`"),
            (",", "no `key`"),
            ("key", "a part without `=`"),
            ("key=a,key=b", "a repeated name"),
            (
                "key=a,algorithm=HMAC_SHA1,algorithm=HMAC_SHA256",
                "a repeated name",
            ),
        ] {
            check_shared(
                &sha256,
                Some(header),
                Err(SignatureError::MalformedSettings(why)),
            );
        }
    }

    /// Checks the URLs tried for `url`, in order.
    fn check_candidates(url: &str, expected: &[&str]) {
        assert_eq!(candidate_urls(url), expected, "{url}");
    }

    #[test]
    fn urls_are_tried_with_and_without_their_port() {
        check_candidates(
            "https://h.example/x?a=1",
            &["https://h.example/x?a=1", "https://h.example:443/x?a=1"],
        );
        check_candidates(
            "http://h.example/x",
            &["http://h.example/x", "http://h.example:80/x"],
        );
        check_candidates(
            "https://h.example:443/x",
            &["https://h.example:443/x", "https://h.example/x"],
        );
        check_candidates(
            "https://h.example:1234/x",
            &["https://h.example:1234/x", "https://h.example/x"],
        );
        check_candidates(
            "https://u:p@h.example:8443/x",
            &["https://u:p@h.example:8443/x", "https://u:p@h.example/x"],
        );
        check_candidates(
            "https://u:p@h.example",
            &[
                "https://u:p@h.example",
                "https://u:p@h.example:443",
                "https://u:p@h.example/",
                "https://u:p@h.example:443/",
            ],
        );
        check_candidates(
            "http://[::1]:8080/x",
            &["http://[::1]:8080/x", "http://[::1]/x"],
        );
        check_candidates("http://[::1]/x", &["http://[::1]/x", "http://[::1]:80/x"]);
        check_candidates(
            "https://h.example/x#f?g",
            &["https://h.example/x#f?g", "https://h.example:443/x#f?g"],
        );
        // The WHATWG spelling comes after the URL as given (twilio-node's `new URL`).
        check_candidates(
            "https://H.example/x?q=It's+ok",
            &[
                "https://H.example/x?q=It's+ok",
                "https://H.example:443/x?q=It's+ok",
                "https://h.example/x?q=It%27s+ok",
                "https://h.example:443/x?q=It%27s+ok",
            ],
        );
        check_candidates(
            "https://h.example:/x",
            &[
                "https://h.example:/x",
                "https://h.example/x",
                "https://h.example:443/x",
            ],
        );
        // No authority or no numeric port: only the URL as given.
        check_candidates("a?b=https://h:1/x", &["a?b=https://h:1/x"]);
        check_candidates("not a url", &["not a url"]);
        check_candidates("https://h.example:x/y", &["https://h.example:x/y"]);
        check_candidates("", &[""]);
    }

    #[test]
    fn the_url_as_given_is_accepted_as_twilio_python_does() {
        // twilio-python signs the URL exactly as given; the WHATWG spelling is added, not
        // substituted.
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2&Body=It's+amazing";
        let signature = sign(Algorithm::HmacSha1, &secret(TOKEN), url, &params());
        assert_eq!(
            SignatureValidator::new(secret(TOKEN)).validate_form(
                url,
                legacy(&signature),
                &params()
            ),
            Ok(())
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let shown = format!("{:?}", shared_validator());
        assert!(
            !shown.contains(TOKEN) && !shown.contains(KEY_SECRET),
            "{shown}"
        );
        assert!(shown.contains(KEY_ID), "{shown}");
    }

    /// A small deterministic generator (xorshift), so the odd-input test needs no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            let len = u64::try_from(from.len()).expect("a short list");
            let index = usize::try_from(self.next() % len).expect("an index into a short list");
            from[index]
        }

        fn text(&mut self, from: &[&str], max_parts: u64) -> String {
            let parts = self.next() % (max_parts + 1);
            (0..parts).map(|_| self.pick(from)).collect()
        }
    }

    const URL_PARTS: &[&str] = &[
        "https://",
        "http://",
        "h.example",
        ":",
        "443",
        "80",
        "0",
        "/",
        "?",
        "#",
        "@",
        "[",
        "]",
        "::1",
        "%",
        "%2",
        "=",
        "&",
        "+",
        "'",
        " ",
        "é",
        "日",
        "\u{1F600}",
        "bodySHA256",
        "a",
        "\0",
    ];
    const HEADER_PARTS: &[&str] = &[
        "key",
        "algorithm",
        "=",
        ",",
        " ",
        "HMAC_SHA1",
        "HMAC_SHA256",
        "webhooks_sharedkey_01hzx",
        "é",
        "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
        "==",
        "+",
        "/",
        "A",
    ];

    #[test]
    fn odd_inputs_are_refused_or_round_trip_without_panicking() {
        let validator = shared_validator();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..3000 {
            let url = rng.text(URL_PARTS, 12);
            let signature = rng.text(HEADER_PARTS, 4);
            let settings = rng.text(HEADER_PARTS, 6);
            let params: Vec<(String, String)> = (0..rng.next() % 4)
                .map(|_| (rng.text(URL_PARTS, 3), rng.text(URL_PARTS, 3)))
                .collect();
            let headers = SignatureHeaders {
                signature: Some(&signature),
                settings: Some(&settings),
            };
            // Whatever the outcome, it is a value.
            let _ = validator.validate_form(&url, headers, &params);
            let _ = validator.validate_json(&url, headers, url.as_bytes());

            // The URL as given is always tried, so a signature over it always passes.
            assert_eq!(candidate_urls(&url).first(), Some(&url), "{url:?}");
            let good = sign(Algorithm::HmacSha1, &secret(TOKEN), &url, &params);
            assert_eq!(
                validator.validate_form(&url, legacy(&good), &params),
                Ok(()),
                "{url:?} {params:?}"
            );
        }
    }
}
