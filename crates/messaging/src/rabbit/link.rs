//! One live connection to RabbitMQ: the connection, its confirm-mode publishing channel and
//! the delay queues declared on it. A link is never repaired; when it breaks the supervisor
//! opens a new one, which redeclares the topology.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use domain::events::BusError;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use tracing::debug;

use super::codec::short;
use super::topology::Topology;
use super::{RabbitConfig, lapin_error};

pub(crate) struct Link {
    pub(crate) connection: Connection,
    /// Shared by every publish: lapin pipelines concurrent publishes on one channel and
    /// resolves each one's confirm separately.
    publisher: Channel,
    confirm_timeout: Duration,
    /// Delay queues declared on this link, with when; see `Topology::declare_delay`.
    delays: Mutex<HashMap<u64, Instant>>,
}

impl Link {
    pub(crate) async fn open(config: &RabbitConfig, topology: &Topology) -> Result<Self, BusError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(config.connection_name.as_str().into());
        let connect = Connection::connect(config.url.expose_secret(), properties);
        let connection = tokio::time::timeout(config.connect_timeout, connect)
            .await
            .map_err(|_| {
                BusError::Unavailable(format!(
                    "no connection to RabbitMQ within {:?}",
                    config.connect_timeout
                ))
            })?
            .map_err(lapin_error)?;
        let publisher = connection.create_channel().await.map_err(lapin_error)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(lapin_error)?;
        let link = Link {
            connection,
            publisher,
            confirm_timeout: config.confirm_timeout,
            delays: Mutex::new(HashMap::new()),
        };
        link.with_channel(|channel| async move { topology.declare_exchanges(&channel).await })
            .await?;
        Ok(link)
    }

    pub(crate) fn usable(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }

    /// Runs declarations on a short-lived channel of their own: a refused declaration closes
    /// its channel, and that must not take the publishing channel down with it.
    pub(crate) async fn with_channel<F, Fut>(&self, declare: F) -> Result<(), BusError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<(), BusError>>,
    {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(lapin_error)?;
        let result = declare(channel.clone()).await;
        if channel.status().connected() {
            // Only the result matters; a failed close just leaves the channel to the broker.
            let _ = channel.close(200, "declared".into()).await;
        }
        result
    }

    /// Publishes a persistent, mandatory message and waits for the broker's confirm. An
    /// unroutable message comes back as `Unroutable`, a nack as `Nacked`, anything else
    /// (connection lost, no confirm in time) as `Unavailable`: then the message may or may
    /// not have been stored.
    pub(crate) async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BusError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = self
            .publisher
            .basic_publish(
                short(exchange)?,
                short(routing_key)?,
                options,
                payload,
                properties,
            )
            .await
            .map_err(unconfirmed)?;
        let confirmation = tokio::time::timeout(self.confirm_timeout, confirm)
            .await
            .map_err(|_| {
                BusError::Unavailable(format!(
                    "no publisher confirm within {:?}",
                    self.confirm_timeout
                ))
            })?
            .map_err(unconfirmed)?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(BusError::Unroutable(routing_key.into())),
            Confirmation::Nack(_) => Err(BusError::Nacked),
            // The channel is put in confirm mode before the link is used, so this means a
            // broken invariant; treat it like any unconfirmed publish.
            Confirmation::NotRequested => Err(BusError::Unavailable(
                "the publishing channel is not in confirm mode".into(),
            )),
        }
    }

    /// Declares the delay queue for `delay_ms` unless this link did so recently enough.
    pub(crate) async fn ensure_delay_queue(
        &self,
        topology: &Topology,
        delay_ms: u64,
        force: bool,
    ) -> Result<(), BusError> {
        let fresh = self
            .delays
            .lock()
            .map(|declared| {
                declared
                    .get(&delay_ms)
                    .is_some_and(|at| at.elapsed() < Topology::delay_redeclare_after(delay_ms))
            })
            .unwrap_or(false);
        if fresh && !force {
            return Ok(());
        }
        let declared_at = Instant::now();
        self.with_channel(
            |channel| async move { topology.declare_delay(&channel, delay_ms).await },
        )
        .await?;
        debug!(delay_ms, "declared delay queue");
        if let Ok(mut declared) = self.delays.lock() {
            declared.insert(delay_ms, declared_at);
        }
        Ok(())
    }

    /// Closes the connection politely; unacknowledged deliveries go back to their queues.
    pub(crate) async fn close(&self) {
        if self.connection.status().connected() {
            let close = self.connection.close(200, "shutting down".into());
            // A broker that does not answer must not hold up shutdown or a reconnect.
            let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
        }
    }
}

/// Any failure to publish (even a channel closed by the broker) leaves the message
/// unconfirmed, and a new link may well take it: retryable.
fn unconfirmed(error: lapin::Error) -> BusError {
    BusError::Unavailable(error.to_string())
}
