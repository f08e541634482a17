//! The event bus of verify-gateway, behind the `domain::events::EventBus` port:
//!
//! - [`Bus`]: the handle a service holds, whichever bus it runs on (connect by URL, the
//!   port, health, the dedupe store its consumers use, close), as `storage::Database` is
//!   for the store.
//! - [`RabbitBus`]: RabbitMQ through `lapin`, with a durable topology ([`Topology`]),
//!   publisher confirms, manual acks, delayed delivery and retries built from per-queue TTLs
//!   and dead-letter exchanges (no plugins), dead-letter queues, and reconnects with
//!   exponential backoff.
//! - [`InProcessBus`]: the same semantics on tokio channels and timers, for the embedded mode.
//! - [`Idempotent`]: a handler wrapper that handles each message id once per consumer, with
//!   a pluggable `domain::events::DedupeStore` ([`MemoryDedupeStore`] in memory).

mod backoff;
mod bus;
mod idempotent;
mod in_process;
mod rabbit;
mod rules;

pub use bus::Bus;
pub use idempotent::{Idempotent, IdempotentStats, MemoryDedupeStore};
pub use in_process::InProcessBus;
pub use rabbit::{RabbitBus, RabbitConfig, Topology};

use domain::events::Envelope;

/// The topic exchange both services use unless configured otherwise.
pub const DEFAULT_EXCHANGE: &str = "verify.events";

/// A message taken out of a dead-letter queue, with why it ended there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The subscription whose handler gave up on the message.
    pub queue: String,
    pub envelope: Envelope,
    /// Handler calls made before it was dead-lettered.
    pub attempts: u32,
    /// The last handler error, or why the message could not be decoded.
    pub reason: String,
}
