//! Test support: where the throwaway RabbitMQ is, a bus per test under its own exchange
//! prefix that deletes what it declared, a recording handler and envelope builders.

// Shared with the `broker_restart` test binary, which uses only part of it.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use domain::events::{
    BusError, Delivery, Envelope, EventBus, EventHandler, EventKind, HandlerError, MessageId,
    Subscription,
};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use messaging::{DeadLetter, InProcessBus, RabbitBus, RabbitConfig, Topology};
use secrecy::SecretString;
use tokio::sync::mpsc;
use uuid::Uuid;

pub fn amqp_url() -> String {
    testkit::amqp_url().unwrap_or_else(|e| panic!("{e:#}"))
}

/// An exchange name no other test uses, so tests run in parallel.
pub fn unique_exchange() -> String {
    format!("test.{}.events", Uuid::new_v4().simple())
}

pub fn rabbit_config(exchange: &str) -> RabbitConfig {
    let mut config = RabbitConfig::new(SecretString::from(amqp_url()), exchange);
    config.connection_name = "messaging-tests".into();
    config.reconnect_max = Duration::from_millis(500);
    config
}

pub async fn connect(config: RabbitConfig) -> RabbitBus {
    RabbitBus::connect(config).await.unwrap_or_else(|error| {
        panic!(
            "RabbitMQ does not answer ({error}): {}",
            testkit::NOT_REACHABLE
        )
    })
}

/// A RabbitMQ bus that remembers which subscriptions and delays it declared, so the test
/// can delete exactly those afterwards.
#[derive(Debug)]
pub struct TrackedRabbit {
    pub bus: RabbitBus,
    subscriptions: Mutex<Vec<Subscription>>,
    delays: Mutex<Vec<Duration>>,
}

impl TrackedRabbit {
    pub async fn connect(exchange: &str) -> Self {
        TrackedRabbit {
            bus: connect(rabbit_config(exchange)).await,
            subscriptions: Mutex::new(Vec::new()),
            delays: Mutex::new(Vec::new()),
        }
    }

    /// Stops the bus, then deletes every queue and exchange it declared.
    pub async fn close_and_delete(&self) {
        self.bus.close().await;
        let subscriptions = self.subscriptions.lock().expect("not poisoned").clone();
        let delays = self.delays.lock().expect("not poisoned").clone();
        delete_topology(self.bus.topology(), &subscriptions, &delays).await;
    }
}

#[async_trait]
impl EventBus for TrackedRabbit {
    async fn publish(&self, envelope: &Envelope) -> Result<(), BusError> {
        self.bus.publish(envelope).await
    }

    async fn publish_delayed(&self, envelope: &Envelope, delay: Duration) -> Result<(), BusError> {
        self.delays.lock().expect("not poisoned").push(delay);
        self.bus.publish_delayed(envelope, delay).await
    }

    async fn subscribe(
        &self,
        subscription: Subscription,
        handler: Arc<dyn EventHandler>,
    ) -> Result<(), BusError> {
        self.subscriptions
            .lock()
            .expect("not poisoned")
            .push(subscription.clone());
        self.bus.subscribe(subscription, handler).await
    }
}

pub async fn delete_topology(
    topology: &Topology,
    subscriptions: &[Subscription],
    delays: &[Duration],
) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|error| {
            panic!(
                "RabbitMQ does not answer ({error}): {}",
                testkit::NOT_REACHABLE
            )
        });
    let channel = connection.create_channel().await.expect("a channel");
    let mut queues = Vec::new();
    for s in subscriptions {
        queues.push(topology.queue(&s.queue));
        queues.push(topology.retry_queue(&s.queue, s.retry_delay));
        queues.push(topology.dead_letter_queue(&s.queue));
    }
    for delay in delays {
        let ms = u64::try_from(delay.as_millis()).expect("small delay");
        queues.push(topology.delay_queue(ms));
    }
    for queue in queues {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap_or_else(|error| panic!("delete queue {queue}: {error}"));
    }
    for exchange in [
        topology.exchange().to_owned(),
        topology.dead_letter_exchange(),
        topology.delay_exchange(),
    ] {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .unwrap_or_else(|error| panic!("delete exchange {exchange}: {error}"));
    }
    connection
        .close(200, "test done".into())
        .await
        .expect("close the admin connection");
}

/// Reads a subscription's dead letters, whichever bus holds them.
#[async_trait]
pub trait DeadLetters: EventBus {
    async fn dead_letters(&self, queue: &str) -> Vec<DeadLetter>;
}

#[async_trait]
impl DeadLetters for TrackedRabbit {
    async fn dead_letters(&self, queue: &str) -> Vec<DeadLetter> {
        self.bus
            .take_dead_letters(queue, 100)
            .await
            .expect("read dead letters")
    }
}

#[async_trait]
impl DeadLetters for InProcessBus {
    async fn dead_letters(&self, queue: &str) -> Vec<DeadLetter> {
        self.take_dead_letters(queue)
    }
}

/// An envelope with a fresh id, now (to the microsecond, what the wire keeps), version 1.
pub fn envelope(kind: &str, payload: serde_json::Value) -> Envelope {
    Envelope::new(
        MessageId::from_uuid(Uuid::now_v7()),
        EventKind::parse(kind).expect("a valid kind"),
        1,
        now(),
        serde_json::to_vec(&payload).expect("JSON"),
    )
}

pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub fn subscription(queue: &str, bindings: &[&str]) -> Subscription {
    Subscription {
        queue: queue.into(),
        bindings: bindings.iter().map(|b| (*b).to_owned()).collect(),
        prefetch: 10,
        max_attempts: 3,
        retry_delay: Duration::from_millis(200),
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    Succeed,
    FailRetryable,
    FailPermanently,
}

/// A handler that reports every delivery, with when it arrived, and answers as told.
#[derive(Debug)]
pub struct Recorder {
    behaviour: Behaviour,
    seen: mpsc::UnboundedSender<(Delivery, Instant)>,
}

impl Recorder {
    pub fn new(behaviour: Behaviour) -> (Arc<Self>, mpsc::UnboundedReceiver<(Delivery, Instant)>) {
        let (seen, rx) = mpsc::unbounded_channel();
        (Arc::new(Recorder { behaviour, seen }), rx)
    }
}

#[async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let _ = self.seen.send((delivery.clone(), Instant::now()));
        match self.behaviour {
            Behaviour::Succeed => Ok(()),
            Behaviour::FailRetryable => Err(HandlerError::retryable("the downstream is down")),
            Behaviour::FailPermanently => Err(HandlerError::permanent("unknown payload version")),
        }
    }
}

/// The next delivery, failing the test after `within`.
pub async fn next(
    rx: &mut mpsc::UnboundedReceiver<(Delivery, Instant)>,
    within: Duration,
) -> (Delivery, Instant) {
    tokio::time::timeout(within, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no delivery within {within:?}"))
        .expect("the handler is alive")
}

/// Asserts nothing is delivered for `period`.
pub async fn nothing_for(rx: &mut mpsc::UnboundedReceiver<(Delivery, Instant)>, period: Duration) {
    if let Ok(Some((delivery, _))) = tokio::time::timeout(period, rx.recv()).await {
        panic!("unexpected delivery: {delivery:?}");
    }
}
