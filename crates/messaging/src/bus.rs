//! [`Bus`]: the one handle the services hold on the event bus, whichever it is.

use std::sync::Arc;
use std::time::Duration;

use domain::events::{BusError, DedupeStore, EventBus};
use secrecy::{ExposeSecret, SecretString};

use crate::{InProcessBus, MemoryDedupeStore, RabbitBus, RabbitConfig};

/// The event bus of a process: RabbitMQ in the distributed mode, in process in the
/// embedded one. Cloning it shares the bus.
#[derive(Debug, Clone)]
pub struct Bus {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Rabbit(Arc<RabbitBus>),
    InProcess(Arc<InProcessBus>),
}

/// How long a consumer's claim on a message id holds before another consumer may take it
/// over (one that died mid-message).
const DEDUPE_LEASE: Duration = Duration::from_secs(60);

/// Message ids the in-process bus's dedupe remembers (the oldest are forgotten; a
/// redelivery that old changes nothing, as the state machine ignores it).
const IN_PROCESS_DEDUPE_CAPACITY: usize = 100_000;

impl Bus {
    /// Connects to RabbitMQ at `url` (`amqp://` or `amqps://`), on the topic `exchange`,
    /// naming the connection `connection_name` (the broker shows it). Fails when the broker
    /// cannot be reached now; later losses are reconnected in the background.
    pub async fn connect(
        url: SecretString,
        exchange: &str,
        connection_name: &str,
    ) -> Result<Bus, BusError> {
        let mut config = RabbitConfig::new(url, exchange);
        config.connection_name = connection_name.to_owned();
        Bus::connect_with(config).await
    }

    /// [`Bus::connect`] with every setting of the connection given.
    pub async fn connect_with(config: RabbitConfig) -> Result<Bus, BusError> {
        Bus::check_url(&config.url)?;
        let bus = RabbitBus::connect(config).await?;
        Ok(Bus {
            kind: Kind::Rabbit(Arc::new(bus)),
        })
    }

    /// A bus on a RabbitMQ connection made elsewhere (one whose topology a caller inspects).
    pub fn rabbit(bus: Arc<RabbitBus>) -> Bus {
        Bus {
            kind: Kind::Rabbit(bus),
        }
    }

    /// Refuses a URL [`Bus::connect`] could never use (not `amqp://` or `amqps://`), before
    /// anything is opened.
    pub fn check_url(url: &SecretString) -> Result<(), BusError> {
        let url = url.expose_secret();
        if url.starts_with("amqp://") || url.starts_with("amqps://") {
            Ok(())
        } else {
            Err(BusError::Invalid(
                "the AMQP URL must start with amqp:// or amqps://".to_owned(),
            ))
        }
    }

    /// A bus within this process: nothing durable, nothing shared with other processes.
    pub fn in_process() -> Bus {
        Bus {
            kind: Kind::InProcess(Arc::new(InProcessBus::new())),
        }
    }

    /// The port publishers and subscribers use.
    pub fn events(&self) -> Arc<dyn EventBus> {
        match &self.kind {
            Kind::Rabbit(bus) => Arc::clone(bus) as Arc<dyn EventBus>,
            Kind::InProcess(bus) => Arc::clone(bus) as Arc<dyn EventBus>,
        }
    }

    /// Whether it can carry a message now: RabbitMQ while a connection is up; the
    /// in-process bus always.
    pub fn is_connected(&self) -> bool {
        match &self.kind {
            Kind::Rabbit(bus) => bus.is_connected(),
            Kind::InProcess(_) => true,
        }
    }

    /// The dedupe store its consumers use: on RabbitMQ, `shared()` (the database's, so
    /// replicas dedupe together); on the in-process bus, one in memory, as it has one
    /// consumer per subscription in one process and its messages do not outlive it.
    pub fn dedupe_store(
        &self,
        shared: impl FnOnce(Duration) -> Arc<dyn DedupeStore>,
    ) -> Arc<dyn DedupeStore> {
        match &self.kind {
            Kind::Rabbit(_) => shared(DEDUPE_LEASE),
            Kind::InProcess(_) => Arc::new(MemoryDedupeStore::new(
                IN_PROCESS_DEDUPE_CAPACITY,
                DEDUPE_LEASE,
            )),
        }
    }

    /// Lets consumers finish what they hold, then closes.
    pub async fn close(&self) {
        match &self.kind {
            Kind::Rabbit(bus) => bus.close().await,
            Kind::InProcess(bus) => bus.close(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_amqp_urls_are_tried() {
        for url in ["http://127.0.0.1:5672", "127.0.0.1:5672", ""] {
            let refused = Bus::connect(SecretString::from(url), "verify.events", "test").await;
            assert!(
                matches!(&refused, Err(BusError::Invalid(why)) if why.contains("amqp://")),
                "{url}: {refused:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_in_process_bus_is_always_up_and_dedupes_in_memory() {
        let bus = Bus::in_process();
        assert!(bus.is_connected());
        let mut asked = false;
        let _store = bus.dedupe_store(|_| {
            asked = true;
            Arc::new(MemoryDedupeStore::new(1, DEDUPE_LEASE))
        });
        assert!(!asked, "no shared store for a bus no other process sees");
        bus.close().await;
    }
}
