//! The RabbitMQ event bus: configuration, the bus itself and the supervisor that keeps
//! its connection up.

mod codec;
mod consumer;
mod link;
mod topology;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use domain::events::{BusError, Envelope, EventBus, EventHandler, Subscription};
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::protocol::AMQPErrorKind;
use secrecy::SecretString;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};

pub use topology::Topology;

use crate::DeadLetter;
use crate::backoff::Backoff;
use crate::rules::{validate_delay, validate_envelope, validate_subscription};
use link::Link;
use topology::millis;

/// Settings of the RabbitMQ bus.
#[derive(Debug, Clone)]
pub struct RabbitConfig {
    /// `amqp://user:password@host:port/vhost` (`amqps://` for TLS); secret because it holds
    /// the password.
    pub url: SecretString,
    /// The topic exchange; every other name is derived from it (see [`Topology`]).
    pub exchange: String,
    /// Shown in the RabbitMQ management UI.
    pub connection_name: String,
    /// How long a publish waits for the broker's confirm before it fails as unavailable.
    pub confirm_timeout: Duration,
    pub connect_timeout: Duration,
    /// The first reconnect waits about this long; each failure doubles it up to
    /// `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl RabbitConfig {
    /// The given broker and exchange with these tuning values: `confirm_timeout` 10 s,
    /// `connect_timeout` 10 s, reconnects from 100 ms up to 5 s, connection name
    /// `verify-gateway`.
    pub fn new(url: SecretString, exchange: impl Into<String>) -> Self {
        RabbitConfig {
            url,
            exchange: exchange.into(),
            connection_name: "verify-gateway".into(),
            confirm_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

/// What the bus's background tasks share.
struct Shared {
    config: RabbitConfig,
    topology: Topology,
    /// The current link, `None` while reconnecting. Written only by the supervisor.
    link: watch::Receiver<Option<Arc<Link>>>,
}

impl Shared {
    fn usable_link(&self) -> Result<Arc<Link>, BusError> {
        match &*self.link.borrow() {
            Some(link) if link.usable() => Ok(Arc::clone(link)),
            _ => Err(BusError::Unavailable(
                "not connected to RabbitMQ (reconnecting)".into(),
            )),
        }
    }
}

/// The RabbitMQ implementation of `EventBus`. Dropping it (or [`RabbitBus::close`]) stops
/// its background tasks.
///
/// # Guarantees
///
/// - `publish` sends a persistent (`delivery_mode` 2), `mandatory` message on a channel in
///   confirm mode and returns `Ok` only after the broker's ack. A nack, a returned
///   (unroutable) message, a lost connection or no confirm within `confirm_timeout` is an
///   error, so a confirmed message is on disk in a durable queue and survives a broker
///   restart.
/// - **During an outage publishes fail fast** with the retryable
///   [`BusError::Unavailable`]: they do not wait for the reconnect. Callers (the outbox
///   relay) retry with the same message id; consumers dedupe.
/// - Consumers use manual acks and `basic_qos` prefetch; a message is acked only after its
///   handler returned and its retry or dead-letter copy (if any) was confirmed, so a crash
///   or a lost connection at any point redelivers rather than loses it.
/// - A supervisor task reconnects with exponential backoff and jitter, redeclares the
///   topology, and every subscription's consumer resumes on the new connection.
pub struct RabbitBus {
    shared: Arc<Shared>,
    /// Tells consumers to stop taking deliveries, finish what they hold and close.
    stop_consumers: watch::Sender<bool>,
    /// Tells the supervisor to close the connection; sent after the consumers are done.
    stop_link: watch::Sender<bool>,
    consumers: Mutex<Vec<JoinHandle<()>>>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for RabbitBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBus")
            .field("exchange", &self.shared.topology.exchange())
            .field("connected", &self.shared.usable_link().is_ok())
            .finish()
    }
}

impl RabbitBus {
    /// Connects and declares the exchanges. Fails when the broker cannot be reached now;
    /// after that, lost connections are re-established in the background.
    pub async fn connect(config: RabbitConfig) -> Result<Self, BusError> {
        let topology = Topology::new(&config.exchange)?;
        let link = Arc::new(Link::open(&config, &topology).await?);
        let (link_tx, link_rx) = watch::channel(Some(Arc::clone(&link)));
        let (stop_consumers, _) = watch::channel(false);
        let (stop_link, stop_link_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            topology,
            link: link_rx,
        });
        let span = info_span!("messaging.supervisor", exchange = %shared.topology.exchange());
        let supervisor = tokio::spawn(
            supervise(Arc::clone(&shared), link, link_tx, stop_link_rx).instrument(span),
        );
        Ok(RabbitBus {
            shared,
            stop_consumers,
            stop_link,
            consumers: Mutex::new(Vec::new()),
            supervisor: Mutex::new(Some(supervisor)),
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.shared.topology
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.shared.usable_link().is_ok()
    }

    /// Stops consuming, lets handlers that are running finish (acking what they finish),
    /// then closes the connection. Unacknowledged messages go back to their queues.
    pub async fn close(&self) {
        self.stop_consumers.send_replace(true);
        let consumers = self
            .consumers
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default();
        for consumer in consumers {
            // A consumer that panicked has nothing left to clean up.
            let _ = consumer.await;
        }
        self.stop_link.send_replace(true);
        let supervisor = self.supervisor.lock().ok().and_then(|mut s| s.take());
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
    }

    /// Removes up to `max` messages from a subscription's dead-letter queue and returns
    /// them, for inspection or replay. Messages that do not decode stay in the queue.
    pub async fn take_dead_letters(
        &self,
        subscription: &str,
        max: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        let link = self.shared.usable_link()?;
        let queue = self.shared.topology.dead_letter_queue(subscription);
        let channel = link
            .connection
            .create_channel()
            .await
            .map_err(lapin_error)?;
        let mut taken = Vec::new();
        let mut undecodable = Vec::new();
        while taken.len() + undecodable.len() < max {
            let Some(message) = channel
                .basic_get(codec::short(&queue)?, BasicGetOptions { no_ack: false })
                .await
                .map_err(lapin_error)?
            else {
                break;
            };
            let delivery = message.delivery;
            match codec::decode(&delivery.properties, &delivery.data) {
                Ok((envelope, attempts)) => {
                    delivery
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(lapin_error)?;
                    taken.push(DeadLetter {
                        queue: subscription.to_owned(),
                        envelope,
                        attempts,
                        reason: codec::dead_reason(&delivery.properties),
                    });
                }
                // Requeued only after the loop, so the next get does not return it again.
                Err(_) => undecodable.push(delivery),
            }
        }
        for delivery in undecodable {
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            delivery.nack(requeue).await.map_err(lapin_error)?;
        }
        let _ = channel.close(200, "dead letters taken".into()).await;
        Ok(taken)
    }

    fn ensure_open(&self) -> Result<(), BusError> {
        if *self.stop_consumers.borrow() {
            return Err(BusError::Closed);
        }
        Ok(())
    }
}

#[async_trait]
impl EventBus for RabbitBus {
    async fn publish(&self, envelope: &Envelope) -> Result<(), BusError> {
        self.ensure_open()?;
        validate_envelope(envelope)?;
        let span = info_span!(
            "messaging.publish",
            message_id = %envelope.message_id,
            kind = %envelope.kind,
        );
        async {
            let link = self.shared.usable_link()?;
            let properties = codec::properties(envelope, 1)?;
            link.publish_confirmed(
                self.shared.topology.exchange(),
                envelope.kind.as_str(),
                &envelope.payload,
                properties,
            )
            .await
        }
        .instrument(span)
        .await
    }

    async fn publish_delayed(&self, envelope: &Envelope, delay: Duration) -> Result<(), BusError> {
        self.ensure_open()?;
        validate_envelope(envelope)?;
        validate_delay(delay)?;
        let delay_ms = millis(delay);
        if delay_ms == 0 {
            return self.publish(envelope).await;
        }
        let span = info_span!(
            "messaging.publish_delayed",
            message_id = %envelope.message_id,
            kind = %envelope.kind,
            delay_ms,
        );
        async {
            let link = self.shared.usable_link()?;
            let topology = &self.shared.topology;
            let properties = codec::with_delay_header(codec::properties(envelope, 1)?, delay_ms);
            let mut force = false;
            loop {
                link.ensure_delay_queue(topology, delay_ms, force).await?;
                let published = link
                    .publish_confirmed(
                        &topology.delay_exchange(),
                        envelope.kind.as_str(),
                        &envelope.payload,
                        properties.clone(),
                    )
                    .await;
                match published {
                    // The delay queue vanished behind our back (deleted by hand, or its
                    // lease ran out while the broker was down): declare it and try once more.
                    Err(BusError::Unroutable(_)) if !force => force = true,
                    other => return other,
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn subscribe(
        &self,
        subscription: Subscription,
        handler: Arc<dyn EventHandler>,
    ) -> Result<(), BusError> {
        self.ensure_open()?;
        validate_subscription(&subscription)?;
        // Declared here, not only in the consumer task, so a refused topology reaches the
        // caller and messages published after this returns are already routed to the queue.
        let link = self.shared.usable_link()?;
        let topology = &self.shared.topology;
        let declared = &subscription;
        link.with_channel(|channel| async move {
            topology.declare_subscription(&channel, declared).await
        })
        .await?;
        let span = info_span!("messaging.consumer", queue = %subscription.queue);
        let task = tokio::spawn(
            consumer::run(
                Arc::clone(&self.shared),
                subscription,
                handler,
                self.stop_consumers.subscribe(),
            )
            .instrument(span),
        );
        if let Ok(mut consumers) = self.consumers.lock() {
            consumers.push(task);
        }
        Ok(())
    }
}

/// Keeps a link up: watches the current one and replaces it when it breaks, with
/// exponential backoff between failed attempts.
async fn supervise(
    shared: Arc<Shared>,
    first: Arc<Link>,
    link_tx: watch::Sender<Option<Arc<Link>>>,
    mut stop: watch::Receiver<bool>,
) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
    let mut current = Some(first);
    loop {
        let link = match current.take() {
            Some(link) => link,
            None => match Link::open(config, &shared.topology).await {
                Ok(link) => {
                    info!("reconnected to RabbitMQ");
                    backoff.reset();
                    let link = Arc::new(link);
                    link_tx.send_replace(Some(Arc::clone(&link)));
                    link
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    warn!(%error, retry_in_ms = millis(delay), "cannot connect to RabbitMQ");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue,
                        () = stopped(&mut stop) => return,
                    }
                }
            },
        };
        let mut events = link.connection.events_listener();
        // Besides connection events, poll: a publishing channel closed by the broker (a
        // deleted exchange, say) leaves the connection up but the link unusable.
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                event = events.next() => match event {
                    // Channel-level errors (a refused declaration on its own channel) come
                    // through here too; only a broken link is worth reconnecting for.
                    Some(lapin::Event::Error(error)) if !link.usable() => {
                        warn!(%error, "lost the RabbitMQ connection");
                        break;
                    }
                    Some(lapin::Event::Error(error)) => {
                        debug!(%error, "channel error; the connection is fine");
                    }
                    None => break,
                    Some(_) => {}
                },
                _ = tick.tick() => if !link.usable() {
                    warn!("the RabbitMQ link is no longer usable");
                    break;
                },
                () = stopped(&mut stop) => {
                    link_tx.send_replace(None);
                    link.close().await;
                    return;
                }
            }
        }
        link_tx.send_replace(None);
        link.close().await;
    }
}

/// Resolves when `true` was sent, or when the sender is gone (the bus was dropped).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Broker refusals of a request (a soft AMQP error such as PRECONDITION_FAILED on a
/// redeclaration with other arguments) are the caller's mistake; everything else is the
/// broker or the network being unavailable.
pub(crate) fn lapin_error(error: lapin::Error) -> BusError {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(_)) => {
            BusError::Invalid(error.to_string())
        }
        _ => BusError::Unavailable(error.to_string()),
    }
}
