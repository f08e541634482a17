//! Rules both buses share, so the embedded mode behaves like RabbitMQ: what a valid envelope
//! and subscription are, topic matching, the outcome of a handler call, and calling a handler
//! so that a panic becomes a retryable failure instead of a message stuck unacknowledged.

use std::sync::Arc;
use std::time::Duration;

use domain::events::{BusError, Delivery, Envelope, EventHandler, HandlerError, Subscription};
use tracing::Instrument;

/// Header names the transport keeps for itself (`x-` is also RabbitMQ's own prefix).
const RESERVED_HEADER_PREFIXES: [&str; 2] = ["x-", "vg-"];

/// The longest delay accepted for delayed publishes and retries. RabbitMQ TTLs are 32-bit
/// milliseconds, and a delay queue's expiry is about twice its TTL; a week is far inside.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Subscription and exchange names stay short so derived queue names fit AMQP's 255 bytes.
pub(crate) const MAX_NAME_LEN: usize = 100;

/// A dead-letter reason is for people; a bounded excerpt is enough.
const MAX_REASON_LEN: usize = 1000;

pub(crate) fn validate_envelope(envelope: &Envelope) -> Result<(), BusError> {
    for name in envelope.headers.keys() {
        let lower = name.to_ascii_lowercase();
        if name.is_empty() || name.len() > 255 {
            return Err(BusError::Invalid(format!(
                "header name must have 1 to 255 bytes: `{}`",
                excerpt(name, 64)
            )));
        }
        if RESERVED_HEADER_PREFIXES
            .iter()
            .any(|p| lower.starts_with(p))
        {
            return Err(BusError::Invalid(format!(
                "header name `{name}` is reserved for the transport"
            )));
        }
    }
    Ok(())
}

pub(crate) fn validate_delay(delay: Duration) -> Result<(), BusError> {
    if delay > MAX_DELAY {
        return Err(BusError::Invalid(format!(
            "delay {delay:?} is longer than the maximum {MAX_DELAY:?}"
        )));
    }
    Ok(())
}

/// Dot-separated words of `a-z`, `0-9`, `_` and `-`.
pub(crate) fn is_dotted_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('.').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        })
}

fn is_binding_pattern(pattern: &str) -> bool {
    pattern.len() <= 255
        && pattern.split('.').all(|w| {
            w == "*"
                || w == "#"
                || (!w.is_empty()
                    && w.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    }))
        })
}

pub(crate) fn validate_subscription(subscription: &Subscription) -> Result<(), BusError> {
    let invalid = |why: String| Err(BusError::Invalid(why));
    if !is_dotted_name(&subscription.queue) {
        return invalid(format!(
            "subscription queue `{}` must be dot-separated words of a-z, 0-9, `_` and `-`, at most {MAX_NAME_LEN} bytes",
            excerpt(&subscription.queue, 64)
        ));
    }
    if subscription.bindings.is_empty() {
        return invalid(format!(
            "subscription `{}` binds nothing",
            subscription.queue
        ));
    }
    if let Some(bad) = subscription
        .bindings
        .iter()
        .find(|b| !is_binding_pattern(b))
    {
        return invalid(format!(
            "binding `{}` must be dot-separated words, `*` or `#`",
            excerpt(bad, 64)
        ));
    }
    if subscription.prefetch == 0 || subscription.max_attempts == 0 {
        return invalid("prefetch and max_attempts must be at least 1".into());
    }
    validate_delay(subscription.retry_delay)
}

/// AMQP topic matching: `*` is exactly one word, `#` zero or more.
pub(crate) fn topic_matches(pattern: &str, key: &str) -> bool {
    fn matches(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| matches(rest, &key[skip..])),
            Some((&"*", rest)) => !key.is_empty() && matches(rest, &key[1..]),
            Some((word, rest)) => key.first() == Some(word) && matches(rest, &key[1..]),
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    matches(&pattern, &key)
}

/// What becomes of a delivery after its handler ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack,
    /// Redeliver after the retry delay as this attempt number.
    Retry {
        next_attempt: u32,
    },
    DeadLetter {
        reason: String,
    },
}

pub(crate) fn settle(
    result: Result<(), HandlerError>,
    attempt: u32,
    subscription: &Subscription,
) -> Settle {
    match result {
        Ok(()) => Settle::Ack,
        Err(HandlerError::Retryable(_)) if attempt < subscription.max_attempts => Settle::Retry {
            next_attempt: attempt.saturating_add(1),
        },
        Err(error) => Settle::DeadLetter {
            reason: excerpt(&error.to_string(), MAX_REASON_LEN),
        },
    }
}

/// Runs the handler in a task of its own, so a panic is reported as a retryable error and
/// the delivery is still settled.
pub(crate) async fn call_handler(
    handler: Arc<dyn EventHandler>,
    delivery: Delivery,
) -> Result<(), HandlerError> {
    let task = tokio::spawn(async move { handler.handle(&delivery).await }.in_current_span());
    match task.await {
        Ok(result) => result,
        Err(error) if error.is_panic() => Err(HandlerError::retryable("the handler panicked")),
        Err(_) => Err(HandlerError::retryable("the handler was cancelled")),
    }
}

pub(crate) fn excerpt(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, key: &str, expected: bool) {
        assert_eq!(topic_matches(pattern, key), expected, "{pattern} vs {key}");
    }

    #[test]
    fn topic_patterns() {
        check("delivery.failed", "delivery.failed", true);
        check("delivery.failed", "delivery.sent", false);
        check("delivery.*", "delivery.failed", true);
        check("delivery.*", "delivery", false);
        check("delivery.*", "delivery.failed.sms", false);
        check("delivery.#", "delivery", true);
        check("delivery.#", "delivery.failed.sms", true);
        check("#", "anything.at.all", true);
        check("*.failed", "delivery.failed", true);
        check("#.failed", "a.b.failed", true);
        check("#.failed", "a.b.sent", false);
        check("a.#.z", "a.z", true);
        check("a.#.z", "a.b.c.z", true);
    }

    #[test]
    fn subscriptions_are_checked() {
        let ok = Subscription {
            queue: "verify-service.fallback".into(),
            bindings: vec!["delivery.*".into()],
            prefetch: 8,
            max_attempts: 3,
            retry_delay: Duration::from_secs(1),
        };
        assert_eq!(validate_subscription(&ok), Ok(()));
        for bad in [
            Subscription {
                queue: "Upper".into(),
                ..ok.clone()
            },
            Subscription {
                bindings: vec![],
                ..ok.clone()
            },
            Subscription {
                bindings: vec!["a..b".into()],
                ..ok.clone()
            },
            Subscription {
                prefetch: 0,
                ..ok.clone()
            },
            Subscription {
                max_attempts: 0,
                ..ok.clone()
            },
            Subscription {
                retry_delay: MAX_DELAY * 2,
                ..ok.clone()
            },
        ] {
            assert!(validate_subscription(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn retries_until_max_attempts_then_dead_letters() {
        let sub = Subscription {
            queue: "q".into(),
            bindings: vec!["#".into()],
            prefetch: 1,
            max_attempts: 3,
            retry_delay: Duration::ZERO,
        };
        let retryable = || Err(HandlerError::retryable("down"));
        assert_eq!(settle(Ok(()), 1, &sub), Settle::Ack);
        assert_eq!(
            settle(retryable(), 1, &sub),
            Settle::Retry { next_attempt: 2 }
        );
        assert_eq!(
            settle(retryable(), 2, &sub),
            Settle::Retry { next_attempt: 3 }
        );
        assert!(matches!(
            settle(retryable(), 3, &sub),
            Settle::DeadLetter { .. }
        ));
        assert!(matches!(
            settle(Err(HandlerError::permanent("bad")), 1, &sub),
            Settle::DeadLetter { .. }
        ));
    }
}
