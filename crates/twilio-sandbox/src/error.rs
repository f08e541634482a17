//! Every failure the sandbox answers, and the one table that turns it into Twilio's error
//! body `{"code","message","more_info","status"}` with the right HTTP status and headers.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A Twilio API error as the sandbox answers it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Error {
    /// Missing or wrong Basic-auth credentials.
    #[error("Authenticate")]
    Unauthenticated,
    /// Unknown path, unknown SID or a soft-deleted verification; the message names the path.
    #[error("resource not found")]
    NotFound,
    /// A known path called with a method Twilio does not serve there.
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// The request body could not be read.
    #[error("Bad Request")]
    BadRequest,
    /// The request body is larger than the sandbox accepts.
    #[error("Request Entity Too Large")]
    PayloadTooLarge,
    /// A parameter is missing or malformed; the message names it.
    #[error("Invalid parameter: {0}")]
    InvalidParameter(&'static str),
    /// A check without `To` or `VerificationSid`.
    #[error("No target verification specified")]
    NoTarget,
    /// The sixth check of one verification.
    #[error("Max check attempts reached")]
    MaxCheckAttempts { retry_after: u64 },
    /// The sixth send of one verification.
    #[error("Max send attempts reached")]
    MaxSendAttempts { retry_after: u64 },
    /// SMS to a landline (scenario `landline_60205`).
    #[error("SMS is not supported by landline phone number")]
    Landline,
    /// Fraud Guard blocked the prefix (scenario `fraud_guard_60410`).
    #[error("Verification delivery attempt blocked")]
    FraudGuard,
    /// Verify Geo-Permissions blocked the destination (scenario `geo_blocked_60605`).
    #[error("The destination phone number has been blocked by Verify Geo-Permissions")]
    GeoBlocked,
    /// Account or Verify rate limit (scenario `rate_limited_20429`).
    #[error("Too many requests")]
    TooManyRequests { retry_after: u64 },
    /// An injected server failure (scenario `server_error_500`).
    #[error("Internal Server Error")]
    Internal,
}

/// Twilio's error body, field order as Twilio sends it.
#[derive(Debug, Serialize)]
struct Body {
    code: u32,
    message: String,
    more_info: String,
    status: u16,
}

impl Error {
    /// The HTTP status and Twilio error code: the one mapping table of this crate.
    pub(crate) fn status_and_code(&self) -> (StatusCode, u32) {
        match self {
            Error::Unauthenticated => (StatusCode::UNAUTHORIZED, 20003),
            Error::NotFound => (StatusCode::NOT_FOUND, 20404),
            Error::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, 20004),
            Error::BadRequest => (StatusCode::BAD_REQUEST, 20400),
            Error::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, 20413),
            Error::InvalidParameter(_) => (StatusCode::BAD_REQUEST, 60200),
            Error::NoTarget => (StatusCode::BAD_REQUEST, 60221),
            Error::MaxCheckAttempts { .. } => (StatusCode::TOO_MANY_REQUESTS, 60202),
            Error::MaxSendAttempts { .. } => (StatusCode::TOO_MANY_REQUESTS, 60203),
            Error::Landline => (StatusCode::FORBIDDEN, 60205),
            Error::FraudGuard => (StatusCode::FORBIDDEN, 60410),
            Error::GeoBlocked => (StatusCode::FORBIDDEN, 60605),
            Error::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, 20429),
            Error::Internal => (StatusCode::INTERNAL_SERVER_ERROR, 20500),
        }
    }

    /// Seconds a client should wait before retrying, sent as `Retry-After` on every 429.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Error::MaxCheckAttempts { retry_after }
            | Error::MaxSendAttempts { retry_after }
            | Error::TooManyRequests { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The `message` field; a 404 names the requested path the way Twilio does.
    fn message(&self, path: &str) -> String {
        match self {
            Error::NotFound => format!("The requested resource {path} was not found"),
            other => other.to_string(),
        }
    }

    /// Renders the error for a request to `path`.
    pub(crate) fn respond(&self, path: &str) -> Response {
        let (status, code) = self.status_and_code();
        let body = Body {
            code,
            message: self.message(path),
            more_info: format!("https://www.twilio.com/docs/errors/{code}"),
            status: status.as_u16(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if matches!(self, Error::Unauthenticated) {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Twilio API\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(error: Error, status: u16, code: u32, message: &str) {
        let (got_status, got_code) = error.status_and_code();
        assert_eq!(got_status.as_u16(), status, "{error:?}");
        assert_eq!(got_code, code, "{error:?}");
        assert_eq!(error.message("/v2/Services/VAx"), message, "{error:?}");
    }

    #[test]
    fn table_matches_twilio() {
        check(Error::Unauthenticated, 401, 20003, "Authenticate");
        check(
            Error::NotFound,
            404,
            20404,
            "The requested resource /v2/Services/VAx was not found",
        );
        check(Error::MethodNotAllowed, 405, 20004, "Method not allowed");
        check(
            Error::InvalidParameter("To"),
            400,
            60200,
            "Invalid parameter: To",
        );
        check(
            Error::NoTarget,
            400,
            60221,
            "No target verification specified",
        );
        check(
            Error::MaxCheckAttempts { retry_after: 1 },
            429,
            60202,
            "Max check attempts reached",
        );
        check(
            Error::MaxSendAttempts { retry_after: 1 },
            429,
            60203,
            "Max send attempts reached",
        );
        check(
            Error::Landline,
            403,
            60205,
            "SMS is not supported by landline phone number",
        );
        check(
            Error::FraudGuard,
            403,
            60410,
            "Verification delivery attempt blocked",
        );
        check(
            Error::GeoBlocked,
            403,
            60605,
            "The destination phone number has been blocked by Verify Geo-Permissions",
        );
        check(
            Error::TooManyRequests { retry_after: 1 },
            429,
            20429,
            "Too many requests",
        );
        check(Error::Internal, 500, 20500, "Internal Server Error");
        check(
            Error::PayloadTooLarge,
            413,
            20413,
            "Request Entity Too Large",
        );
        check(Error::BadRequest, 400, 20400, "Bad Request");
    }

    #[test]
    fn headers_follow_the_error() {
        let unauthorized = Error::Unauthenticated.respond("/v2/Services");
        assert_eq!(
            unauthorized.headers().get(header::WWW_AUTHENTICATE),
            Some(&HeaderValue::from_static("Basic realm=\"Twilio API\""))
        );
        let limited = Error::MaxSendAttempts { retry_after: 42 }.respond("/v2");
        assert_eq!(
            limited.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from(42u64))
        );
        assert!(
            Error::Internal
                .respond("/v2")
                .headers()
                .get(header::RETRY_AFTER)
                .is_none()
        );
    }
}
