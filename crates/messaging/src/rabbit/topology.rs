//! The RabbitMQ topology in one place: every exchange, queue, binding and argument the bus
//! uses is named and declared by [`Topology`].

use std::time::Duration;

use domain::events::{BusError, Subscription};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use super::codec::{HEADER_DELAY_MS, short};
use super::lapin_error;
use crate::rules::is_dotted_name;

/// Names and declarations of the bus's RabbitMQ objects, all derived from one exchange name.
///
/// For the exchange `verify.events` and a subscription `fallback` retried after 5 s:
///
/// | name | what | arguments |
/// |---|---|---|
/// | `verify.events` | topic exchange; events are published here with their kind as routing key | durable |
/// | `verify.events.sub.fallback` | the subscription's queue, bound to its kinds | durable; dead letters to `verify.events.dead` |
/// | `verify.events.retry.fallback.5000ms` | waiting room for retries | TTL 5000 ms, then dead-lettered through the default exchange back to the subscription's queue only |
/// | `verify.events.dead` | direct exchange for given-up messages | durable |
/// | `verify.events.dead.fallback` | the subscription's dead letters | bound to `verify.events.dead` with the queue's name |
/// | `verify.events.delay` | headers exchange for delayed publishes | durable |
/// | `verify.events.delay.20000ms` | one per delay: waits, then dead-letters to `verify.events` with the original kind | TTL 20000 ms, expires when unused |
///
/// Each distinct delay is a queue of its own, so schedule with a few fixed delays (a
/// purpose's `fallback_after_seconds`), not with computed ones.
///
/// All queues are durable and all messages persistent, so a broker restart loses nothing that
/// was confirmed. Retry queues carry their delay in the name, so changing a subscription's
/// retry delay declares a new queue instead of failing on changed arguments; an old one
/// still drains back into the subscription queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    exchange: String,
}

impl Topology {
    /// `exchange` is dot-separated words (`verify.events`); everything else is named after it,
    /// so one prefix isolates an installation (or a test) completely.
    pub fn new(exchange: &str) -> Result<Self, BusError> {
        if !is_dotted_name(exchange) {
            return Err(BusError::Invalid(format!(
                "exchange `{exchange:.64}` must be dot-separated words of a-z, 0-9, `_` and `-`, at most 100 bytes"
            )));
        }
        Ok(Topology {
            exchange: exchange.to_owned(),
        })
    }

    /// The topic exchange events are published to.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead", self.exchange)
    }

    pub fn delay_exchange(&self) -> String {
        format!("{}.delay", self.exchange)
    }

    pub fn queue(&self, subscription: &str) -> String {
        format!("{}.sub.{subscription}", self.exchange)
    }

    pub fn retry_queue(&self, subscription: &str, retry_delay: Duration) -> String {
        format!(
            "{}.retry.{subscription}.{}ms",
            self.exchange,
            millis(retry_delay)
        )
    }

    pub fn dead_letter_queue(&self, subscription: &str) -> String {
        format!("{}.dead.{subscription}", self.exchange)
    }

    pub fn delay_queue(&self, delay_ms: u64) -> String {
        format!("{}.delay.{delay_ms}ms", self.exchange)
    }

    /// The three exchanges. Idempotent, so it runs on every (re)connect.
    pub(crate) async fn declare_exchanges(&self, channel: &Channel) -> Result<(), BusError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for (name, kind) in [
            (self.exchange.clone(), ExchangeKind::Topic),
            (self.dead_letter_exchange(), ExchangeKind::Direct),
            (self.delay_exchange(), ExchangeKind::Headers),
        ] {
            channel
                .exchange_declare(short(&name)?, kind, durable, FieldTable::default())
                .await
                .map_err(lapin_error)?;
        }
        Ok(())
    }

    /// A subscription's queue with its bindings, its retry queue and its dead-letter queue.
    pub(crate) async fn declare_subscription(
        &self,
        channel: &Channel,
        subscription: &Subscription,
    ) -> Result<(), BusError> {
        let queue = self.queue(&subscription.queue);

        // Rejected messages (ours are republished explicitly, but a broker-side reject or
        // a tool's) still end up in the dead-letter queue rather than vanishing.
        let mut main_args = FieldTable::default();
        main_args.insert(
            "x-dead-letter-exchange".into(),
            text(&self.dead_letter_exchange()),
        );
        main_args.insert("x-dead-letter-routing-key".into(), text(&queue));
        self.declare_queue(channel, &queue, main_args).await?;
        for binding in &subscription.bindings {
            channel
                .queue_bind(
                    short(&queue)?,
                    short(&self.exchange)?,
                    short(binding)?,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(lapin_error)?;
        }

        // The retry queue has no consumer: its TTL expires each message back to the
        // subscription queue alone (the default exchange routes by queue name), so other
        // subscribers of the same kind never see a retry that is not theirs.
        let mut retry_args = FieldTable::default();
        retry_args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(to_i64(millis(subscription.retry_delay))),
        );
        retry_args.insert("x-dead-letter-exchange".into(), text(""));
        retry_args.insert("x-dead-letter-routing-key".into(), text(&queue));
        self.declare_queue(
            channel,
            &self.retry_queue(&subscription.queue, subscription.retry_delay),
            retry_args,
        )
        .await?;

        let dead = self.dead_letter_queue(&subscription.queue);
        self.declare_queue(channel, &dead, FieldTable::default())
            .await?;
        channel
            .queue_bind(
                short(&dead)?,
                short(&self.dead_letter_exchange())?,
                short(&queue)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(lapin_error)?;
        Ok(())
    }

    /// The queue that holds messages delayed by `delay_ms`, bound to the delay exchange by
    /// the `vg-delay-ms` header. When the TTL ends the broker dead-letters each message to
    /// the main exchange with its original routing key (the kind), where it is routed as if
    /// just published. Per-queue TTLs (not per-message ones) keep expiry in arrival order.
    ///
    /// The queue deletes itself when unused for `2 × delay + 60 s`; publishers redeclare it
    /// at least every `delay + 30 s` (see [`Self::delay_redeclare_after`]), so a queue never
    /// expires while it still holds a message.
    pub(crate) async fn declare_delay(
        &self,
        channel: &Channel,
        delay_ms: u64,
    ) -> Result<(), BusError> {
        let queue = self.delay_queue(delay_ms);
        let mut args = FieldTable::default();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(to_i64(delay_ms)),
        );
        args.insert("x-dead-letter-exchange".into(), text(&self.exchange));
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(to_i64(delay_ms.saturating_mul(2).saturating_add(60_000))),
        );
        self.declare_queue(channel, &queue, args).await?;
        let mut binding = FieldTable::default();
        binding.insert("x-match".into(), text("all"));
        binding.insert(HEADER_DELAY_MS.into(), text(&delay_ms.to_string()));
        channel
            .queue_bind(
                short(&queue)?,
                short(&self.delay_exchange())?,
                short("")?,
                QueueBindOptions::default(),
                binding,
            )
            .await
            .map_err(lapin_error)
    }

    /// How long a declared delay queue can be used before it must be declared again to
    /// renew its expiry lease.
    pub(crate) fn delay_redeclare_after(delay_ms: u64) -> Duration {
        Duration::from_millis(delay_ms.saturating_add(30_000))
    }

    async fn declare_queue(
        &self,
        channel: &Channel,
        name: &str,
        arguments: FieldTable,
    ) -> Result<(), BusError> {
        channel
            .queue_declare(short(name)?, QueueDeclareOptions::durable(), arguments)
            .await
            .map(drop)
            .map_err(lapin_error)
    }
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_exchange() {
        let t = Topology::new("verify.events").expect("valid");
        assert_eq!(t.queue("fallback"), "verify.events.sub.fallback");
        assert_eq!(
            t.retry_queue("fallback", Duration::from_secs(5)),
            "verify.events.retry.fallback.5000ms"
        );
        assert_eq!(
            t.dead_letter_queue("fallback"),
            "verify.events.dead.fallback"
        );
        assert_eq!(t.dead_letter_exchange(), "verify.events.dead");
        assert_eq!(t.delay_exchange(), "verify.events.delay");
        assert_eq!(t.delay_queue(20_000), "verify.events.delay.20000ms");
        assert!(Topology::new("Verify Events").is_err());
    }
}
