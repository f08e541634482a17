//! When a failed call may be repeated, and how long to wait first.
//!
//! The rule is that a retry must never send a second code or spend a second check: creates
//! and checks are repeated only when Twilio cannot have processed them (a 429, which Twilio
//! never processes, or a connection that was never opened). Fetch, cancel and the list of
//! attempts are idempotent, so they are also repeated after a 5xx.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::time::Duration;

use crate::TwilioError;

/// Whether repeating the request can change anything at Twilio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Safety {
    /// Fetch, cancel and the attempts list: repeating them gives the same result.
    Idempotent,
    /// Create (sends a code) and check (spends an attempt).
    NotIdempotent,
}

/// The longest `Retry-After` the adapter waits out itself; longer ones go back to the caller.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// The first backoff step; each retry doubles it.
const BASE_DELAY: Duration = Duration::from_millis(100);

/// The longest backoff step before jitter.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// How long to wait before attempt number `attempt + 1` (0 = the first retry), or `None`
/// when `err` must go back to the caller.
pub(crate) fn delay_before_retry(
    err: &TwilioError,
    safety: Safety,
    attempt: u32,
    max_retries: u32,
) -> Option<Duration> {
    if attempt >= max_retries || !may_retry(err, safety) {
        return None;
    }
    let backoff = backoff(attempt);
    match err.retry_after() {
        // Twilio says when; waiting less would only earn another 429.
        Some(after) if after <= MAX_RETRY_AFTER => Some(after.max(backoff)),
        Some(_) => None,
        None => Some(backoff),
    }
}

fn may_retry(err: &TwilioError, safety: Safety) -> bool {
    match err {
        // The connection was never opened, so the request never left.
        TwilioError::Connect(_) => true,
        // Only the rate limits Twilio names (or a bare 429): 60202/60203 are also 429 but
        // are final verdicts, and so may be a 429 code this adapter does not know.
        TwilioError::TooManyRequests(_) | TwilioError::ConcurrentRequests(_) => true,
        TwilioError::Other {
            code: None,
            status: 429,
            ..
        } => true,
        _ if err.http_status().is_some_and(|s| (500..=599).contains(&s)) => {
            safety == Safety::Idempotent
        }
        // A timeout may have sent a code or spent a check; everything else is a verdict.
        _ => false,
    }
}

/// Exponential backoff with "equal jitter": half the step fixed, half random, so replicas
/// that failed together do not retry together.
fn backoff(attempt: u32) -> Duration {
    let step = BASE_DELAY
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(MAX_DELAY);
    let half = step / 2;
    half + half.mul_f64(unit_random())
}

/// A number in `[0, 1)`. `RandomState` is seeded randomly per instance, which is plenty for
/// jitter and spares a dependency on a random number crate.
fn unit_random() -> f64 {
    let bits = RandomState::new().build_hasher().finish() >> 11;
    // 53 significant bits fit an f64 exactly.
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;

    fn api(status: u16, retry_after: Option<u64>) -> ApiError {
        ApiError {
            status,
            message: String::new(),
            more_info: None,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    fn other(status: u16) -> TwilioError {
        TwilioError::Other {
            code: None,
            status,
            message: String::new(),
            retry_after: None,
        }
    }

    fn check(err: TwilioError, safety: Safety, expected: bool) {
        assert_eq!(
            delay_before_retry(&err, safety, 0, 3).is_some(),
            expected,
            "{err:?} {safety:?}"
        );
    }

    #[test]
    fn only_safe_failures_are_retried() {
        use Safety::{Idempotent as Idem, NotIdempotent as Once};
        for safety in [Idem, Once] {
            check(TwilioError::Connect("refused".into()), safety, true);
            check(
                TwilioError::TooManyRequests(api(429, Some(1))),
                safety,
                true,
            );
            check(
                TwilioError::ConcurrentRequests(api(429, None)),
                safety,
                true,
            );
            check(other(429), safety, true);
            check(
                TwilioError::Other {
                    code: Some(60299),
                    status: 429,
                    message: String::new(),
                    retry_after: None,
                },
                safety,
                false,
            );
            check(
                TwilioError::TooManyRequests(api(429, Some(60))),
                safety,
                false,
            );
            check(TwilioError::MaxCheckAttempts(api(429, None)), safety, false);
            check(TwilioError::MaxSendAttempts(api(429, None)), safety, false);
            check(TwilioError::Timeout, safety, false);
            check(TwilioError::Transport("reset".into()), safety, false);
            check(TwilioError::Decode("eof".into()), safety, false);
            check(TwilioError::InvalidParameter(api(400, None)), safety, false);
            check(TwilioError::NotFound(api(404, None)), safety, false);
        }
        check(other(500), Idem, true);
        check(other(503), Idem, true);
        check(other(500), Once, false);
        check(other(502), Once, false);
    }

    #[test]
    fn retries_are_bounded_and_honour_retry_after() {
        let err = TwilioError::TooManyRequests(api(429, Some(3)));
        assert_eq!(
            delay_before_retry(&err, Safety::NotIdempotent, 0, 1),
            Some(Duration::from_secs(3))
        );
        assert_eq!(delay_before_retry(&err, Safety::NotIdempotent, 1, 1), None);
        assert_eq!(delay_before_retry(&err, Safety::NotIdempotent, 0, 0), None);
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for attempt in 0..40 {
            let step = BASE_DELAY
                .saturating_mul(2u32.saturating_pow(attempt))
                .min(MAX_DELAY);
            let d = backoff(attempt);
            assert!(d >= step / 2 && d <= step, "attempt {attempt}: {d:?}");
        }
    }
}
