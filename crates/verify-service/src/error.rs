//! The service's errors and the one table that maps them to gRPC statuses with rich
//! details (`google.rpc.BadRequest`, `ErrorInfo`, `RetryInfo`).

use std::collections::HashMap;
use std::time::Duration;

use domain::VerificationId;
use domain::abuse::{RiskAssessment, RiskDecision};
use domain::ports::{ProviderError, ProviderErrorKind, StoreError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "verify-gateway";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A request field is missing or invalid.
    #[error("invalid `{field}`: {description}")]
    InvalidArgument {
        field: &'static str,
        description: String,
    },
    #[error("verification {0} not found")]
    NotFound(VerificationId),
    /// The verification is not in a state that allows the operation.
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        message: String,
    },
    /// One of our limits was reached.
    #[error("{message}")]
    LimitReached {
        reason: &'static str,
        message: String,
        retry_after: Option<Duration>,
    },
    /// A rate limit refused the request: `limit` names it (`send_per_destination`), the
    /// description says what it allows, never whose destination it is.
    #[error("{description}")]
    RateLimited {
        limit: &'static str,
        description: String,
        retry_after: Duration,
    },
    /// Fraud scoring refused the start; `verification_id` names the BLOCKED record.
    #[error("fraud scoring refused the start (score {})", .assessment.score)]
    Refused {
        assessment: RiskAssessment,
        verification_id: String,
    },
    /// Another request is working on the same idempotency key.
    #[error("a request with this idempotency key is in progress")]
    InProgress,
    /// The call names no configured caller.
    #[error("{0}")]
    Unauthenticated(crate::auth::AuthError),
    /// The caller may not do this.
    #[error("{message}")]
    PermissionDenied {
        reason: &'static str,
        message: String,
    },
    /// The provider did not confirm a create (it timed out, or failed with a 5xx): the
    /// code may have been sent. The verification stays pending under its idempotency key.
    #[error("the provider did not confirm the send of {verification_id}: {source}")]
    SendUnconfirmed {
        verification_id: String,
        source: ProviderError,
    },
    #[error("provider: {0}")]
    Provider(#[from] ProviderError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl ServiceError {
    pub fn invalid(field: &'static str, description: impl ToString) -> Self {
        ServiceError::InvalidArgument {
            field,
            description: description.to_string(),
        }
    }
}

fn info(reason: &str, metadata: HashMap<String, String>) -> ErrorDetails {
    let mut d = ErrorDetails::new();
    d.set_error_info(reason, ERROR_DOMAIN, metadata);
    d
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Status {
        match err {
            ServiceError::InvalidArgument { field, description } => Status::with_error_details(
                Code::InvalidArgument,
                format!("invalid `{field}`: {description}"),
                ErrorDetails::with_bad_request_violation(field, description),
            ),
            ServiceError::NotFound(id) => Status::with_error_details(
                Code::NotFound,
                format!("verification {id} not found"),
                info("VERIFICATION_NOT_FOUND", HashMap::new()),
            ),
            ServiceError::FailedPrecondition { reason, message } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                info(reason, HashMap::new()),
            ),
            ServiceError::LimitReached {
                reason,
                message,
                retry_after,
            } => {
                let mut d = info(reason, HashMap::new());
                if retry_after.is_some() {
                    d.set_retry_info(retry_after);
                }
                Status::with_error_details(Code::ResourceExhausted, message, d)
            }
            ServiceError::RateLimited {
                limit,
                description,
                retry_after,
            } => {
                let mut d = info(
                    "RATE_LIMITED",
                    HashMap::from([("limit".to_owned(), limit.to_owned())]),
                );
                // Whole seconds, rounded up: a caller retrying at once would be refused again.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                d.set_retry_info(Some(Duration::from_secs(secs.max(1))));
                d.add_quota_failure_violation(limit, description.clone());
                Status::with_error_details(
                    Code::ResourceExhausted,
                    format!(
                        "rate limit {limit}: {description}; retry in {}s",
                        secs.max(1)
                    ),
                    d,
                )
            }
            ServiceError::Refused {
                assessment,
                verification_id,
            } => refused_status(&assessment, verification_id),
            ServiceError::InProgress => {
                let mut d = info("IDEMPOTENCY_KEY_IN_PROGRESS", HashMap::new());
                d.set_retry_info(Some(Duration::from_secs(1)));
                Status::with_error_details(
                    Code::Aborted,
                    "a request with this idempotency key is in progress; retry shortly",
                    d,
                )
            }
            ServiceError::Unauthenticated(e) => {
                use crate::auth::AuthError as A;
                let reason = match e {
                    A::NoCredentials => "CREDENTIALS_MISSING",
                    A::UnknownToken | A::UnknownSubject => "CREDENTIALS_UNKNOWN",
                    A::Mismatch => "CREDENTIALS_CONFLICT",
                };
                Status::with_error_details(
                    Code::Unauthenticated,
                    e.to_string(),
                    info(reason, HashMap::new()),
                )
            }
            ServiceError::PermissionDenied { reason, message } => Status::with_error_details(
                Code::PermissionDenied,
                message,
                info(reason, HashMap::new()),
            ),
            ServiceError::SendUnconfirmed {
                verification_id,
                source,
            } => {
                let mut metadata =
                    HashMap::from([("verification_id".to_owned(), verification_id.clone())]);
                if let Some(code) = source.code {
                    metadata.insert("twilio_code".to_owned(), code.to_string());
                }
                let mut d = info("SEND_UNCONFIRMED", metadata);
                d.set_retry_info(Some(Duration::from_secs(2)));
                Status::with_error_details(
                    Code::Unavailable,
                    format!(
                        "the provider did not confirm the send ({:?}): the code may or may not \
                         have been sent. Verification {verification_id} stays pending: a start \
                         again with the same idempotency key answers with it and sends nothing, \
                         a check of it works if the code arrived, a start without the key \
                         sends again",
                        source.kind
                    ),
                    d,
                )
            }
            ServiceError::Provider(e) => provider_status(e),
            ServiceError::Store(e) => store_status(e),
        }
    }
}

/// Twilio's verdicts, by kind. The Twilio code travels in `ErrorInfo.metadata.twilio_code`
/// and in the reason (`TWILIO_60410`), so callers act on it without reading text.
fn provider_status(e: ProviderError) -> Status {
    use ProviderErrorKind as K;
    let (code, message, retry) = match e.kind {
        K::InvalidDestination => (
            Code::InvalidArgument,
            "the provider refused the destination",
            None,
        ),
        K::InvalidRequest => (
            Code::InvalidArgument,
            "the provider refused a parameter",
            None,
        ),
        K::LandlineUnsupported => (
            Code::FailedPrecondition,
            "the destination is a landline and cannot receive SMS; use the call channel",
            None,
        ),
        K::ChannelDisabled => (
            Code::FailedPrecondition,
            "the channel is disabled for this Verify service",
            None,
        ),
        K::MaxChecks => (
            Code::ResourceExhausted,
            "the provider's check limit was reached",
            None,
        ),
        K::MaxSends => (
            Code::ResourceExhausted,
            "the provider's send limit was reached",
            None,
        ),
        K::NotFound => (
            Code::NotFound,
            "the provider no longer knows this verification",
            None,
        ),
        K::RateLimited => (
            Code::ResourceExhausted,
            "the provider is rate limiting; retry later",
            Some(e.retry_after.unwrap_or(Duration::from_secs(1))),
        ),
        K::FraudBlocked => (
            Code::PermissionDenied,
            "the provider's fraud protection blocked this destination",
            None,
        ),
        K::GeoBlocked => (
            Code::PermissionDenied,
            "sending to this destination's country is not permitted",
            None,
        ),
        K::Unsubscribed => (
            Code::FailedPrecondition,
            "the recipient has opted out of messages",
            None,
        ),
        K::Unauthenticated => (
            Code::Internal,
            "the gateway's provider credentials were refused",
            None,
        ),
        K::Unreachable => (
            Code::Unavailable,
            "the provider could not be reached (nothing was sent); retry later",
            Some(Duration::from_secs(1)),
        ),
        K::Unavailable => (
            Code::Unavailable,
            "the provider is unavailable; retry later",
            Some(e.retry_after.unwrap_or(Duration::from_secs(1))),
        ),
        K::Timeout => (
            Code::Unavailable,
            "the provider did not answer in time; the code may or may not have been sent",
            Some(Duration::from_secs(2)),
        ),
        K::Unexpected => (Code::Internal, "the provider failed unexpectedly", None),
    };
    let mut metadata = HashMap::new();
    let reason = match e.code {
        Some(c) => {
            metadata.insert("twilio_code".to_owned(), c.to_string());
            format!("TWILIO_{c}")
        }
        None => format!("PROVIDER_{:?}", e.kind).to_uppercase(),
    };
    let mut d = info(&reason, metadata);
    if retry.is_some() {
        d.set_retry_info(retry);
    }
    if e.kind == K::InvalidDestination {
        d.add_bad_request_violation("to", "the provider refused this destination");
    }
    let text = match e.code {
        Some(c) => format!("{message} (Twilio {c})"),
        None => message.to_owned(),
    };
    Status::with_error_details(code, text, d)
}

/// A start fraud scoring refused: the decision, score, reason codes and the BLOCKED
/// verification's id in `ErrorInfo`, the readable reasons in the message.
fn refused_status(a: &RiskAssessment, verification_id: String) -> Status {
    let readable = a
        .reasons
        .iter()
        .map(|r| r.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let metadata = HashMap::from([
        ("decision".to_owned(), a.decision.as_str().to_owned()),
        ("score".to_owned(), a.score.to_string()),
        ("reasons".to_owned(), a.reason_codes()),
        ("verification_id".to_owned(), verification_id),
    ]);
    match a.decision {
        RiskDecision::StepUp => {
            let mut d = info("STEP_UP_REQUIRED", metadata);
            d.add_precondition_failure_violation(
                "STEP_UP",
                "step_up_completed",
                "verify the user with a stronger check (a captcha, TOTP), then start again \
                 with step_up_completed",
            );
            Status::with_error_details(
                Code::FailedPrecondition,
                format!(
                    "a step-up is required before sending (score {}): {readable}",
                    a.score
                ),
                d,
            )
        }
        RiskDecision::Block | RiskDecision::Allow => Status::with_error_details(
            Code::PermissionDenied,
            format!(
                "sending was blocked by fraud scoring (score {}): {readable}",
                a.score
            ),
            info("FRAUD_BLOCKED", metadata),
        ),
    }
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(id) => Status::not_found(format!("verification {id} not found")),
        StoreError::Conflict(_) => {
            let mut d = info("CONCURRENT_UPDATE", HashMap::new());
            d.set_retry_info(Some(Duration::from_millis(100)));
            Status::with_error_details(
                Code::Aborted,
                "the verification changed concurrently; retry",
                d,
            )
        }
        StoreError::Unavailable(_) | StoreError::Corrupt(_) => {
            // Details stay in the logs: they may name tables or paths.
            tracing::error!(error = %e, "store failure");
            let mut d = info("STORE_UNAVAILABLE", HashMap::new());
            d.set_retry_info(Some(Duration::from_secs(1)));
            Status::with_error_details(Code::Unavailable, "the gateway's store is unavailable", d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(kind: ProviderErrorKind, code: Option<u32>) -> Status {
        ServiceError::Provider(ProviderError {
            kind,
            code,
            message: "x".into(),
            retry_after: None,
        })
        .into()
    }

    #[test]
    fn maps_provider_verdicts() {
        use ProviderErrorKind as K;
        let table = [
            (K::InvalidDestination, 60200, Code::InvalidArgument),
            (K::LandlineUnsupported, 60205, Code::FailedPrecondition),
            (K::FraudBlocked, 60410, Code::PermissionDenied),
            (K::GeoBlocked, 60605, Code::PermissionDenied),
            (K::MaxChecks, 60202, Code::ResourceExhausted),
            (K::RateLimited, 20429, Code::ResourceExhausted),
            (K::Unavailable, 20500, Code::Unavailable),
            (K::Unauthenticated, 20003, Code::Internal),
        ];
        for (kind, twilio, grpc) in table {
            let status = provider(kind, Some(twilio));
            assert_eq!(status.code(), grpc, "{kind:?}");
            let details = status.get_error_details();
            let info = details.error_info().expect("ErrorInfo is always set");
            assert_eq!(info.reason, format!("TWILIO_{twilio}"));
            assert_eq!(info.metadata.get("twilio_code"), Some(&twilio.to_string()));
            assert_eq!(
                details.retry_info().is_some(),
                matches!(kind, K::RateLimited | K::Unavailable),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn invalid_arguments_name_the_field() {
        let status: Status = ServiceError::invalid("to", "not a phone number").into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let br = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(br.field_violations[0].field, "to");
    }
}
