//! Twilio's refusals as typed values: one variant per Twilio error code the gateway acts on,
//! the transport failures around them, and their mapping to the domain's `ProviderError`.

use std::fmt;
use std::time::Duration;

use domain::ports::{ProviderError, ProviderErrorKind};
use serde::Deserialize;

/// What Twilio said when it refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status of the response.
    pub status: u16,
    /// Twilio's message, with anything that looks like a phone number or an email address
    /// replaced by `[redacted]` (Twilio echoes the `To` value in some messages).
    pub message: String,
    /// Twilio's link to the error's documentation.
    pub more_info: Option<String>,
    /// `Retry-After` of a 429 response.
    pub retry_after: Option<Duration>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (HTTP {})", self.message, self.status)
    }
}

/// Everything that can go wrong talking to Twilio Verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwilioError {
    #[error("20003 authentication failed: {0}")]
    AuthenticationFailed(ApiError),
    #[error("20008 not available with test credentials: {0}")]
    TestCredentials(ApiError),
    #[error("20404 resource not found: {0}")]
    NotFound(ApiError),
    #[error("20429 too many requests: {0}")]
    TooManyRequests(ApiError),
    #[error("21211 invalid `To` phone number: {0}")]
    InvalidToNumber(ApiError),
    #[error("21408 destination region not enabled by geo permissions: {0}")]
    RegionNotEnabled(ApiError),
    #[error("21608 trial account cannot send to an unverified number: {0}")]
    UnverifiedTrialDestination(ApiError),
    #[error("21610 recipient unsubscribed: {0}")]
    Unsubscribed(ApiError),
    #[error("30003 unreachable destination handset: {0}")]
    UnreachableHandset(ApiError),
    #[error("30005 unknown destination handset: {0}")]
    UnknownHandset(ApiError),
    #[error("30006 landline or unreachable carrier: {0}")]
    LandlineOrUnreachableCarrier(ApiError),
    #[error("60200 invalid parameter: {0}")]
    InvalidParameter(ApiError),
    #[error("60202 max check attempts reached: {0}")]
    MaxCheckAttempts(ApiError),
    #[error("60203 max send attempts reached: {0}")]
    MaxSendAttempts(ApiError),
    #[error("60205 SMS is not supported by landline numbers: {0}")]
    LandlineNotSupported(ApiError),
    #[error("60212 too many concurrent requests for the phone number: {0}")]
    ConcurrentRequests(ApiError),
    #[error("60221 neither `To` nor `VerificationSid` was given: {0}")]
    MissingToOrVerificationSid(ApiError),
    #[error("60223 delivery channel disabled: {0}")]
    ChannelDisabled(ApiError),
    #[error("60306 invalid Verify Push/TOTP parameters: {0}")]
    InvalidFactorParameters(ApiError),
    #[error("60308 max TOTP check attempts reached: {0}")]
    MaxTotpCheckAttempts(ApiError),
    #[error("60410 blocked by Fraud Guard: {0}")]
    FraudGuardBlocked(ApiError),
    #[error("60605 blocked by Verify geo permissions: {0}")]
    GeoPermissionBlocked(ApiError),
    /// A code this enum does not name, or a response without one (`code` is then `None`).
    #[error("Twilio error {} (HTTP {status}): {message}", code.map_or("without code".to_owned(), |c| c.to_string()))]
    Other {
        code: Option<u32>,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    /// No complete answer in time; Twilio may have acted on the request.
    #[error("the request to Twilio timed out; it may have been processed")]
    Timeout,
    /// The connection could not be opened, so the request never left.
    #[error("could not connect to Twilio: {0}")]
    Connect(String),
    /// Twilio answered with success but the body was not what the contract says.
    #[error("Twilio's response could not be read: {0}")]
    Decode(String),
    /// The exchange broke after the request may have been sent (reset, protocol error).
    #[error("the exchange with Twilio failed: {0}")]
    Transport(String),
    /// The request was refused before it was sent (a malformed SID).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The adapter's settings are unusable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

impl TwilioError {
    /// The typed error for Twilio `code`.
    fn from_code(code: u32, api: ApiError) -> TwilioError {
        match code {
            20003 => TwilioError::AuthenticationFailed(api),
            20008 => TwilioError::TestCredentials(api),
            20404 => TwilioError::NotFound(api),
            20429 => TwilioError::TooManyRequests(api),
            21211 => TwilioError::InvalidToNumber(api),
            21408 => TwilioError::RegionNotEnabled(api),
            21608 => TwilioError::UnverifiedTrialDestination(api),
            21610 => TwilioError::Unsubscribed(api),
            30003 => TwilioError::UnreachableHandset(api),
            30005 => TwilioError::UnknownHandset(api),
            30006 => TwilioError::LandlineOrUnreachableCarrier(api),
            60200 => TwilioError::InvalidParameter(api),
            60202 => TwilioError::MaxCheckAttempts(api),
            60203 => TwilioError::MaxSendAttempts(api),
            60205 => TwilioError::LandlineNotSupported(api),
            60212 => TwilioError::ConcurrentRequests(api),
            60221 => TwilioError::MissingToOrVerificationSid(api),
            60223 => TwilioError::ChannelDisabled(api),
            60306 => TwilioError::InvalidFactorParameters(api),
            60308 => TwilioError::MaxTotpCheckAttempts(api),
            60410 => TwilioError::FraudGuardBlocked(api),
            60605 => TwilioError::GeoPermissionBlocked(api),
            _ => TwilioError::Other {
                code: Some(code),
                status: api.status,
                message: api.message,
                retry_after: api.retry_after,
            },
        }
    }

    /// The Twilio code and response details of a typed API error.
    fn api(&self) -> Option<(u32, &ApiError)> {
        let pair = match self {
            TwilioError::AuthenticationFailed(a) => (20003, a),
            TwilioError::TestCredentials(a) => (20008, a),
            TwilioError::NotFound(a) => (20404, a),
            TwilioError::TooManyRequests(a) => (20429, a),
            TwilioError::InvalidToNumber(a) => (21211, a),
            TwilioError::RegionNotEnabled(a) => (21408, a),
            TwilioError::UnverifiedTrialDestination(a) => (21608, a),
            TwilioError::Unsubscribed(a) => (21610, a),
            TwilioError::UnreachableHandset(a) => (30003, a),
            TwilioError::UnknownHandset(a) => (30005, a),
            TwilioError::LandlineOrUnreachableCarrier(a) => (30006, a),
            TwilioError::InvalidParameter(a) => (60200, a),
            TwilioError::MaxCheckAttempts(a) => (60202, a),
            TwilioError::MaxSendAttempts(a) => (60203, a),
            TwilioError::LandlineNotSupported(a) => (60205, a),
            TwilioError::ConcurrentRequests(a) => (60212, a),
            TwilioError::MissingToOrVerificationSid(a) => (60221, a),
            TwilioError::ChannelDisabled(a) => (60223, a),
            TwilioError::InvalidFactorParameters(a) => (60306, a),
            TwilioError::MaxTotpCheckAttempts(a) => (60308, a),
            TwilioError::FraudGuardBlocked(a) => (60410, a),
            TwilioError::GeoPermissionBlocked(a) => (60605, a),
            TwilioError::Other { .. }
            | TwilioError::Timeout
            | TwilioError::Connect(_)
            | TwilioError::Decode(_)
            | TwilioError::Transport(_)
            | TwilioError::InvalidRequest(_)
            | TwilioError::InvalidConfig(_) => return None,
        };
        Some(pair)
    }

    /// Twilio's numeric error code, when Twilio gave one.
    pub fn code(&self) -> Option<u32> {
        match self {
            TwilioError::Other { code, .. } => *code,
            other => other.api().map(|(code, _)| code),
        }
    }

    /// The HTTP status of Twilio's answer, when there was one.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            TwilioError::Other { status, .. } => Some(*status),
            other => other.api().map(|(_, api)| api.status),
        }
    }

    /// `Retry-After` of a 429 answer.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TwilioError::Other { retry_after, .. } => *retry_after,
            other => other.api().and_then(|(_, api)| api.retry_after),
        }
    }

    /// The domain's classification of this error.
    pub fn kind(&self) -> ProviderErrorKind {
        use ProviderErrorKind as K;
        match self {
            TwilioError::AuthenticationFailed(_) | TwilioError::TestCredentials(_) => {
                K::Unauthenticated
            }
            TwilioError::NotFound(_) => K::NotFound,
            TwilioError::TooManyRequests(_) | TwilioError::ConcurrentRequests(_) => K::RateLimited,
            TwilioError::InvalidToNumber(_) | TwilioError::UnknownHandset(_) => {
                K::InvalidDestination
            }
            TwilioError::RegionNotEnabled(_) | TwilioError::GeoPermissionBlocked(_) => {
                K::GeoBlocked
            }
            TwilioError::UnverifiedTrialDestination(_) | TwilioError::Unsubscribed(_) => {
                K::Unsubscribed
            }
            TwilioError::LandlineNotSupported(_) | TwilioError::LandlineOrUnreachableCarrier(_) => {
                K::LandlineUnsupported
            }
            // A handset that is off or out of coverage fits no domain kind: the number is fine
            // and Twilio worked. 30xxx codes only come in delivery callbacks anyway.
            TwilioError::UnreachableHandset(_) => K::Unexpected,
            TwilioError::InvalidParameter(api) if names_to_parameter(&api.message) => {
                K::InvalidDestination
            }
            TwilioError::InvalidParameter(_)
            | TwilioError::MissingToOrVerificationSid(_)
            | TwilioError::InvalidFactorParameters(_)
            | TwilioError::InvalidRequest(_) => K::InvalidRequest,
            TwilioError::MaxCheckAttempts(_) | TwilioError::MaxTotpCheckAttempts(_) => K::MaxChecks,
            TwilioError::MaxSendAttempts(_) => K::MaxSends,
            TwilioError::ChannelDisabled(_) => K::ChannelDisabled,
            TwilioError::FraudGuardBlocked(_) => K::FraudBlocked,
            TwilioError::Other { status, .. } => match *status {
                429 => K::RateLimited,
                500..=599 => K::Unavailable,
                401 | 403 => K::Unauthenticated,
                404 => K::NotFound,
                400 | 422 => K::InvalidRequest,
                _ => K::Unexpected,
            },
            TwilioError::Timeout => K::Timeout,
            TwilioError::Connect(_) => K::Unreachable,
            // A success body we cannot read, or an exchange cut after sending: Twilio may
            // have acted, so nothing here may look retryable.
            TwilioError::Decode(_) | TwilioError::Transport(_) | TwilioError::InvalidConfig(_) => {
                K::Unexpected
            }
        }
    }

    /// Builds the error for a non-success response from its status, `Retry-After` and body.
    pub(crate) fn from_response(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Self {
        let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
        let code = parsed.as_ref().and_then(ErrorBody::code);
        let message = parsed.as_ref().and_then(ErrorBody::message).map_or_else(
            || format!("HTTP {status} without a Twilio error body"),
            |m| redact(&m),
        );
        let api = ApiError {
            status,
            message,
            more_info: parsed.and_then(|p| p.more_info.or(p.kind)),
            retry_after,
        };
        match code {
            Some(code) => TwilioError::from_code(code, api),
            None => TwilioError::Other {
                code: None,
                status,
                message: api.message,
                retry_after: api.retry_after,
            },
        }
    }

    /// Classifies a `reqwest` failure by whether the request can have reached Twilio.
    pub(crate) fn from_transport(err: &reqwest::Error) -> Self {
        let text = error_chain(err);
        // A connect timeout is both `is_connect` and `is_timeout`; the request never left,
        // so it is a connect error.
        if err.is_connect() {
            TwilioError::Connect(text)
        } else if err.is_timeout() {
            TwilioError::Timeout
        } else if err.is_decode() {
            TwilioError::Decode(text)
        } else {
            TwilioError::Transport(text)
        }
    }
}

impl From<TwilioError> for ProviderError {
    fn from(err: TwilioError) -> Self {
        let message = match (&err, err.api()) {
            (_, Some((_, api))) => api.message.clone(),
            (TwilioError::Other { message, .. }, None) => message.clone(),
            (other, None) => other.to_string(),
        };
        ProviderError {
            kind: err.kind(),
            code: err.code(),
            message,
            retry_after: err.retry_after(),
        }
    }
}

/// Twilio's error body, tolerant of the RFC 9457 problem shape (and Prism's variant of it).
#[derive(Deserialize)]
struct ErrorBody {
    /// A number in Twilio's shape; tolerated as a numeric string.
    code: Option<serde_json::Value>,
    message: Option<String>,
    more_info: Option<String>,
    title: Option<String>,
    detail: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    /// Prism lists the spec violations of a refused request here.
    validation: Option<Vec<Violation>>,
}

#[derive(Deserialize)]
struct Violation {
    message: Option<String>,
}

impl ErrorBody {
    fn code(&self) -> Option<u32> {
        match self.code.as_ref()? {
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    fn message(&self) -> Option<String> {
        let base = [&self.message, &self.detail, &self.title]
            .into_iter()
            .flatten()
            .find(|m| !m.trim().is_empty())?
            .clone();
        let violations: Vec<&str> = self
            .validation
            .iter()
            .flatten()
            .filter_map(|v| v.message.as_deref())
            .collect();
        if violations.is_empty() {
            Some(base)
        } else {
            Some(format!("{base}: {}", violations.join("; ")))
        }
    }
}

/// Whether a 60200 message names the `To` parameter (`Invalid parameter: To`,
/// ``Invalid parameter `To`: …``), which makes it a bad destination rather than a bad request.
fn names_to_parameter(message: &str) -> bool {
    message
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| word == "To")
}

/// Replaces words that look like a phone number (7 digits or more) or an email address, so a
/// Twilio message echoing the destination can be logged and passed on.
fn redact(message: &str) -> String {
    message
        .split(' ')
        .map(|word| {
            let digits = word.bytes().filter(u8::is_ascii_digit).count();
            if word.contains('@') || digits >= 7 {
                // Keep the punctuation around the value so the sentence still reads.
                let start = word
                    .find(|c: char| c.is_ascii_alphanumeric() || c == '+')
                    .unwrap_or(0);
                let end = word
                    .rfind(|c: char| c.is_ascii_alphanumeric())
                    .map_or(word.len(), |i| i + 1);
                if start < end {
                    format!("{}[redacted]{}", &word[..start], &word[end..])
                } else {
                    "[redacted]".to_owned()
                }
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The error and its causes on one line (`reqwest` puts the useful part in the sources).
fn error_chain(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProviderErrorKind as K;

    fn body(code: u32, status: u16, message: &str) -> Vec<u8> {
        serde_json::json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status,
        })
        .to_string()
        .into_bytes()
    }

    /// Parses a Twilio error body and checks the variant's code and the domain kind.
    fn check(code: u32, status: u16, message: &str, expected: K) {
        let err = TwilioError::from_response(status, None, &body(code, status, message));
        assert!(
            !matches!(err, TwilioError::Other { .. }),
            "{code} has no variant"
        );
        assert_eq!(err.code(), Some(code), "{code}");
        assert_eq!(err.http_status(), Some(status), "{code}");
        assert_eq!(err.kind(), expected, "{code}: {err}");
        let provider = ProviderError::from(err);
        assert_eq!((provider.kind, provider.code), (expected, Some(code)));
    }

    #[test]
    fn every_contract_code_has_a_variant_and_a_kind() {
        check(20003, 401, "Authenticate", K::Unauthenticated);
        check(20008, 403, "Test credentials", K::Unauthenticated);
        check(
            20404,
            404,
            "The requested resource was not found",
            K::NotFound,
        );
        check(20429, 429, "Too many requests", K::RateLimited);
        check(
            21211,
            400,
            "The 'To' number +15005550001 is not valid.",
            K::InvalidDestination,
        );
        check(
            21408,
            400,
            "Permission to send an SMS has not been enabled",
            K::GeoBlocked,
        );
        check(21608, 400, "The number is unverified", K::Unsubscribed);
        check(
            21610,
            400,
            "Attempt to send to unsubscribed recipient",
            K::Unsubscribed,
        );
        check(30003, 400, "Unreachable destination handset", K::Unexpected);
        check(
            30005,
            400,
            "Unknown destination handset",
            K::InvalidDestination,
        );
        check(
            30006,
            400,
            "Landline or unreachable carrier",
            K::LandlineUnsupported,
        );
        check(60200, 400, "Invalid parameter: To", K::InvalidDestination);
        check(
            60200,
            400,
            "Invalid parameter `To`: +1415555",
            K::InvalidDestination,
        );
        check(60200, 400, "Invalid parameter: Locale", K::InvalidRequest);
        check(
            60200,
            400,
            "Invalid parameter: CustomCode",
            K::InvalidRequest,
        );
        check(60202, 429, "Max check attempts reached", K::MaxChecks);
        check(60203, 429, "Max send attempts reached", K::MaxSends);
        check(
            60205,
            403,
            "SMS is not supported by landline phone number",
            K::LandlineUnsupported,
        );
        check(
            60212,
            429,
            "Too many concurrent requests for phone number",
            K::RateLimited,
        );
        check(
            60221,
            400,
            "Either a 'To' or a 'VerificationSid' must be specified",
            K::InvalidRequest,
        );
        check(
            60223,
            400,
            "Delivery channel disabled: WHATSAPP",
            K::ChannelDisabled,
        );
        check(60306, 400, "Invalid request parameters", K::InvalidRequest);
        check(60308, 429, "Max check attempts reached", K::MaxChecks);
        check(
            60410,
            403,
            "Verification delivery attempt blocked",
            K::FraudBlocked,
        );
        check(
            60605,
            403,
            "Verification delivery attempt blocked by geo permissions",
            K::GeoBlocked,
        );
    }

    #[test]
    fn code_round_trips_through_every_variant() {
        for code in [
            20003, 20008, 20404, 20429, 21211, 21408, 21608, 21610, 30003, 30005, 30006, 60200,
            60202, 60203, 60205, 60212, 60221, 60223, 60306, 60308, 60410, 60605,
        ] {
            let api = ApiError {
                status: 400,
                message: String::new(),
                more_info: None,
                retry_after: None,
            };
            assert_eq!(TwilioError::from_code(code, api).code(), Some(code));
        }
    }

    fn check_other(status: u16, raw: &str, code: Option<u32>, expected: K) {
        let err = TwilioError::from_response(status, None, raw.as_bytes());
        assert!(matches!(err, TwilioError::Other { .. }), "{raw}: {err:?}");
        assert_eq!(
            (err.code(), err.http_status(), err.kind()),
            (code, Some(status), expected),
            "{raw}"
        );
    }

    #[test]
    fn unknown_codes_and_odd_bodies_fall_back_to_the_http_status() {
        check_other(
            400,
            r#"{"code":60999,"message":"new","status":400}"#,
            Some(60999),
            K::InvalidRequest,
        );
        check_other(
            500,
            "<html>Internal Server Error</html>",
            None,
            K::Unavailable,
        );
        check_other(503, "", None, K::Unavailable);
        check_other(502, "null", None, K::Unavailable);
        check_other(429, "slow down", None, K::RateLimited);
        check_other(401, "", None, K::Unauthenticated);
        check_other(404, "{}", None, K::NotFound);
        check_other(418, "{}", None, K::Unexpected);
        // Prism's refusal of a request that breaks the spec.
        check_other(
            422,
            r#"{"type":"https://stoplight.io/prism/errors#UNPROCESSABLE_ENTITY","title":"Invalid request","status":422,"detail":"Your request is not valid and no HTTP validation response was found in the spec, so Prism is generating this error for you.","validation":[{"location":["body"],"severity":"Error","code":"required","message":"Request body must have required property 'To'"}]}"#,
            None,
            K::InvalidRequest,
        );
    }

    #[test]
    fn rfc9457_bodies_and_string_codes_are_understood() {
        let err = TwilioError::from_response(
            404,
            None,
            br#"{"type":"https://www.twilio.com/docs/errors/20404","title":"Not Found","status":404,"code":"20404","detail":"The requested resource was not found","instance":"/v2/x"}"#,
        );
        assert!(
            matches!(&err, TwilioError::NotFound(api) if api.message == "The requested resource was not found")
        );
        let provider = ProviderError::from(err);
        assert_eq!((provider.kind, provider.code), (K::NotFound, Some(20404)));
    }

    #[test]
    fn prism_violations_are_kept_in_the_message() {
        let err = TwilioError::from_response(
            422,
            None,
            br#"{"title":"Invalid request","status":422,"validation":[{"message":"Request body must have required property 'To'"}]}"#,
        );
        assert!(err.to_string().contains("required property 'To'"), "{err}");
    }

    #[test]
    fn retry_after_and_code_survive_into_the_provider_error() {
        let err = TwilioError::from_response(
            429,
            Some(Duration::from_secs(3)),
            &body(20429, 429, "Too many requests"),
        );
        let provider = ProviderError::from(err);
        assert_eq!(provider.kind, K::RateLimited);
        assert_eq!(provider.code, Some(20429));
        assert_eq!(provider.retry_after, Some(Duration::from_secs(3)));
        assert_eq!(provider.message, "Too many requests");
        assert!(provider.is_retryable());
    }

    #[test]
    fn transport_errors_map_to_their_kinds() {
        let kind = |e: TwilioError| ProviderError::from(e).kind;
        assert_eq!(kind(TwilioError::Timeout), K::Timeout);
        assert_eq!(kind(TwilioError::Connect("refused".into())), K::Unreachable);
        assert_eq!(kind(TwilioError::Decode("eof".into())), K::Unexpected);
        assert_eq!(kind(TwilioError::Transport("reset".into())), K::Unexpected);
        assert_eq!(
            kind(TwilioError::InvalidRequest("sid".into())),
            K::InvalidRequest
        );
    }

    fn check_redact(input: &str, expected: &str) {
        assert_eq!(redact(input), expected, "{input}");
    }

    #[test]
    fn messages_never_carry_the_destination() {
        check_redact("Invalid parameter: To", "Invalid parameter: To");
        check_redact(
            "The 'To' number +15005550001 is not a valid phone number.",
            "The 'To' number [redacted] is not a valid phone number.",
        );
        check_redact(
            "Invalid parameter `To`: +14155552671",
            "Invalid parameter `To`: [redacted]",
        );
        check_redact(
            "Cannot send to 'jo@example.com'.",
            "Cannot send to '[redacted]'.",
        );
        check_redact(
            "Max send attempts reached (60203)",
            "Max send attempts reached (60203)",
        );
        check_redact("@", "[redacted]");
    }
}
