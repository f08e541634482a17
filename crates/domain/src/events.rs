//! Events between services: the versioned message envelope, the `EventBus` port that
//! carries it (RabbitMQ in production, an in-process bus when embedded), the handler a
//! subscriber implements, and the dedupe port behind idempotent consumers.
//!
//! # Delivery guarantees
//!
//! - **At least once.** [`EventBus::publish`] returns `Ok` only after the broker has taken
//!   responsibility for the message (RabbitMQ: a publisher confirm for a persistent message
//!   on durable queues). An `Err` means the message may or may not have been stored, so the
//!   publisher retries with the *same* [`MessageId`] and consumers may see it twice.
//! - **Idempotent consumers.** A message can arrive more than once (publisher retries,
//!   redelivery after a lost ack or a reconnect). Handlers either are idempotent or are
//!   wrapped in a dedupe on [`Envelope::message_id`] backed by a [`DedupeStore`].
//! - **Manual acks.** A message is acknowledged only after its handler returned `Ok`.
//!   [`HandlerError::Retryable`] redelivers it after the subscription's retry delay, up to
//!   [`Subscription::max_attempts`] handler calls; then, or at once on
//!   [`HandlerError::Permanent`], it is dead-lettered (kept aside for inspection, not lost).
//! - **No ordering.** Retries, delays and concurrent handlers reorder messages.
//!
//! The types here only describe messages; payloads are opaque bytes (serde JSON by
//! convention, `content_type` `application/json`) that the publishing and consuming code
//! encode and decode.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The unique id of one message. Publishers keep it across retries of the same message, so
/// consumers can drop duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(Uuid);

impl MessageId {
    /// Wraps a UUID made by the caller (a UUIDv7 sorts by creation time).
    pub fn from_uuid(uuid: Uuid) -> Self {
        MessageId(uuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for MessageId {
    /// The hyphenated UUID, which is also what travels in the AMQP `message_id` property.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for MessageId {
    type Err = EventError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s)
            .map(MessageId)
            .map_err(|_| EventError::MessageId)
    }
}

/// What happened, as a dotted lower-case name such as `delivery.failed`. It is the routing
/// key, so subscriptions select events by kind (`delivery.*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKind(Cow<'static, str>);

impl EventKind {
    /// At most this many bytes: the limit of an AMQP routing key.
    pub const MAX_LEN: usize = 255;

    /// Accepts dot-separated words of `a-z`, `0-9`, `_` and `-`; wildcards (`*`, `#`) belong
    /// to subscriptions, not to events.
    pub fn parse(raw: &str) -> Result<Self, EventError> {
        if !Self::is_valid(raw) {
            return Err(EventError::Kind(raw.chars().take(64).collect()));
        }
        Ok(EventKind(Cow::Owned(raw.to_owned())))
    }

    /// A kind this code publishes, for a constant (`const K: EventKind =
    /// EventKind::known("delivery.reported")`): a name [`EventKind::parse`] would refuse
    /// fails the build there.
    pub const fn known(raw: &'static str) -> Self {
        assert!(Self::is_valid(raw), "not a valid event kind");
        EventKind(Cow::Borrowed(raw))
    }

    /// Dot-separated non-empty words of `a-z`, `0-9`, `_` and `-`, at most
    /// [`EventKind::MAX_LEN`] bytes (a `const fn`, for [`EventKind::known`]).
    const fn is_valid(raw: &str) -> bool {
        let bytes = raw.as_bytes();
        if bytes.is_empty() || bytes.len() > Self::MAX_LEN {
            return false;
        }
        let mut i = 0;
        let mut word_len = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'.' {
                if word_len == 0 {
                    return false;
                }
                word_len = 0;
            } else if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-' {
                word_len += 1;
            } else {
                return false;
            }
            i += 1;
        }
        word_len > 0
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("message id must be a UUID")]
    MessageId,
    #[error("event kind `{0}` must be dot-separated words of a-z, 0-9, `_` and `-`")]
    Kind(String),
}

/// One message on the bus.
///
/// `headers` carry cross-cutting context, above all the W3C trace context (`traceparent`,
/// `tracestate`). Header names starting with `x-` or `vg-` are reserved for the transport and
/// refused at publish time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Stable across retries of the same message; consumers dedupe on it.
    pub message_id: MessageId,
    pub kind: EventKind,
    /// The payload's schema version for `kind`; consumers refuse versions they do not know
    /// (a permanent error) rather than guess.
    pub version: u32,
    pub occurred_at: DateTime<Utc>,
    pub headers: BTreeMap<String, String>,
    /// The event itself, serde JSON by convention.
    pub payload: Vec<u8>,
}

impl Envelope {
    /// An envelope without headers. Time and the id are arguments: this crate reads no clock
    /// and draws no random numbers.
    pub fn new(
        message_id: MessageId,
        kind: EventKind,
        version: u32,
        occurred_at: DateTime<Utc>,
        payload: Vec<u8>,
    ) -> Self {
        Envelope {
            message_id,
            kind,
            version,
            occurred_at,
            headers: BTreeMap::new(),
            payload,
        }
    }

    /// Adds a header, e.g. `traceparent`.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

/// One delivery of an envelope to a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub envelope: Envelope,
    /// 1 on the first handler call for this subscription, 2 on the first retry, and so on.
    /// A redelivery after a lost connection keeps the number: the handler may not have run.
    pub attempt: u32,
}

/// Why a handler did not finish a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Trying again later may succeed (a dependency was down): the message is redelivered
    /// after the retry delay, and dead-lettered after `max_attempts` calls.
    #[error("retryable: {0}")]
    Retryable(String),
    /// Trying again cannot succeed (a malformed payload, an unknown version): the message is
    /// dead-lettered at once.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl HandlerError {
    pub fn retryable(reason: impl fmt::Display) -> Self {
        HandlerError::Retryable(reason.to_string())
    }

    pub fn permanent(reason: impl fmt::Display) -> Self {
        HandlerError::Permanent(reason.to_string())
    }
}

/// Handles the messages of one subscription. Called concurrently, up to the subscription's
/// `prefetch`.
#[async_trait]
pub trait EventHandler: Send + Sync + fmt::Debug {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError>;
}

/// A named, durable queue of the bus bound to event kinds, and how its messages are retried.
/// Several processes subscribing to the same queue name share its messages (competing
/// consumers); different queue names each get their own copy of every matching event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The subscriber's name, e.g. `verify-service.fallback`: dot-separated words of `a-z`,
    /// `0-9`, `_` and `-`, whose last word is not `retry` or `dead`.
    pub queue: String,
    /// Kinds or topic patterns (`*` one word, `#` zero or more), e.g. `delivery.failed`.
    pub bindings: Vec<String>,
    /// How many messages may be in the handler at once (AMQP prefetch), at least 1.
    pub prefetch: u16,
    /// Handler calls before a retryable failure is dead-lettered, at least 1 (1: no retry).
    pub max_attempts: u32,
    /// How long a message waits before it is redelivered after a retryable failure.
    pub retry_delay: Duration,
}

/// What can go wrong on the bus itself (not in a handler).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The broker is unreachable or did not confirm in time. The message may or may not have
    /// been stored: retry with the same message id.
    #[error("the message broker is unavailable: {0}")]
    Unavailable(String),
    /// The broker refused to take responsibility for the message (a publisher nack).
    #[error("the message broker refused the message")]
    Nacked,
    /// No queue is bound to the event's kind, so nothing was stored. Not retried: it needs a
    /// subscriber first.
    #[error("no queue is bound to `{0}`")]
    Unroutable(String),
    /// A malformed envelope or subscription, or a topology the broker refused.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The bus was shut down.
    #[error("the bus is shut down")]
    Closed,
}

impl BusError {
    /// Whether publishing the same message again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BusError::Unavailable(_) | BusError::Nacked)
    }
}

/// The event bus. Object-safe: services hold an `Arc<dyn EventBus>`.
#[async_trait]
pub trait EventBus: Send + Sync + fmt::Debug {
    /// Returns once the broker has confirmed the message (see the module docs). Fails with
    /// [`BusError::Unroutable`] when no subscription's queue matches the kind.
    async fn publish(&self, envelope: &Envelope) -> Result<(), BusError>;

    /// Like `publish`, but subscribers receive the message only after `delay` (scheduled work
    /// such as "no delivery report within N seconds"). `Ok` means the delayed message is
    /// confirmed; routing happens when the delay ends, and a kind nobody subscribes to by
    /// then is dropped.
    async fn publish_delayed(&self, envelope: &Envelope, delay: Duration) -> Result<(), BusError>;

    /// Declares the subscription's queue and bindings, then delivers its messages to
    /// `handler` in the background until the bus shuts down, resuming after reconnects.
    /// Messages published after this returns reach the queue even if the consumer is not
    /// running yet.
    async fn subscribe(
        &self,
        subscription: Subscription,
        handler: Arc<dyn EventHandler>,
    ) -> Result<(), BusError>;
}

/// The outcome of claiming a message id for one consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First time seen (or an earlier attempt released it): handle it, then `complete`.
    Acquired,
    /// Already handled: acknowledge without handling again.
    Done,
    /// Another delivery of the same message is being handled right now: retry later.
    Busy,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dedupe store: {0}")]
pub struct DedupeError(pub String);

/// Remembers which message ids a consumer has handled, so redeliveries have no second
/// effect. Keys are per consumer (usually the subscription's queue), because every
/// subscriber handles each message once.
#[async_trait]
pub trait DedupeStore: Send + Sync + fmt::Debug {
    async fn claim(&self, consumer: &str, message_id: MessageId) -> Result<Claim, DedupeError>;
    /// Marks a claimed id as handled for good.
    async fn complete(&self, consumer: &str, message_id: MessageId) -> Result<(), DedupeError>;
    /// Gives a claimed id back after a failed attempt, so a redelivery can claim it again.
    async fn release(&self, consumer: &str, message_id: MessageId) -> Result<(), DedupeError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, ok: bool) {
        assert_eq!(EventKind::parse(raw).is_ok(), ok, "{raw:?}");
    }

    #[test]
    fn a_known_kind_is_one_parse_accepts() {
        const KIND: EventKind = EventKind::known("delivery.silence_check");
        assert_eq!(EventKind::parse("delivery.silence_check"), Ok(KIND));
        for raw in ["", "a..b", ".a", "a.", "A", "a.*", &"a".repeat(256)] {
            assert!(!EventKind::is_valid(raw), "{raw:?}");
        }
    }

    #[test]
    fn event_kinds() {
        check("delivery.failed", true);
        check("delivery_report.missing-v2", true);
        check("x", true);
        check("", false);
        check("delivery..failed", false);
        check(".delivery", false);
        check("delivery.*", false);
        check("delivery.#", false);
        check("Delivery.Failed", false);
        check(&"a".repeat(256), false);
    }

    #[test]
    fn message_ids_round_trip_as_uuids() {
        let id = MessageId::from_uuid(Uuid::from_u128(42));
        assert_eq!(id.to_string().parse::<MessageId>(), Ok(id));
        assert_eq!("nope".parse::<MessageId>(), Err(EventError::MessageId));
    }

    #[test]
    fn only_broker_trouble_is_retryable() {
        assert!(BusError::Unavailable("down".into()).is_retryable());
        assert!(BusError::Nacked.is_retryable());
        assert!(!BusError::Unroutable("a.b".into()).is_retryable());
        assert!(!BusError::Invalid("bad".into()).is_retryable());
        assert!(!BusError::Closed.is_retryable());
    }
}
