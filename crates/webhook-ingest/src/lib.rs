//! webhook-ingest: the HTTP server that receives Twilio's webhooks, checks their signatures,
//! stores each delivery report once together with an outbox row, and publishes the outbox to
//! the event bus.
//!
//! - `POST /webhooks/twilio/verify-events`: Verify Events (a JSON array of CloudEvents),
//!   signed over the URL with `bodySHA256`.
//! - `POST /webhooks/twilio/message-status`: Programmable Messaging status callbacks (form).
//! - `GET /healthz` (the process answers), `GET /readyz` (the database answers too, so a
//!   replica that could not store a webhook takes none; the broker is reported, but a broker
//!   outage does not stop webhooks from being accepted into the outbox). The database is
//!   pinged every 5 s, within 1.5 s ([`DatabasePing`]), and `/readyz` answers the last
//!   ping's outcome: a probe costs the database nothing, however often it comes.
//!
//! A missing or malformed signature is 400, a wrong one 403, an oversized body 413, a
//! malformed one 400; none of them stores anything. A good request is answered 200 once its
//! reports are durably stored; the outbox relay then publishes them (publisher confirms), so
//! a report is never lost while the broker is down and is published once it is back. Twilio
//! retries; a report seen before (same CloudEvent id, or same `MessageSid` + status) is
//! stored and published once.
//!
//! Slow clients are cut off ([`http_listener`]): a request's headers must arrive within 10 s and
//! its body within 30 s more (408 past it, nothing stored), and at most 1,024 connections
//! are served at once ([`DEFAULT_LIMITS`]; [`Ingest::with_limits`] changes them).

mod relay;
mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use url::Url;

pub use http_listener::Limits;
pub use routes::{MAX_BODY_BYTES, MESSAGE_STATUS_PATH, VERIFY_EVENTS_PATH};

/// The receiver's limits on slow and numerous clients unless told otherwise: 10 s for a
/// request's headers (and for an idle keep-alive connection), 30 s for its body (Twilio's
/// batches are small, so this only ever cuts off a client that dribbles), and 1,024
/// connections at once.
pub const DEFAULT_LIMITS: Limits = Limits {
    header_timeout: Duration::from_secs(10),
    body_timeout: Duration::from_secs(30),
    max_connections: NonZeroUsize::new(1_024).expect("1,024 is not zero"),
};

/// Failed publishing attempts after which a stored report becomes a dead letter unless
/// told otherwise: with the relay's back-off capped at 30 s, about a day of broker outage.
pub const DEFAULT_OUTBOX_MAX_ATTEMPTS: u32 = 2_880;

/// How readiness follows the database: a ping every `every`, which fails when not answered
/// within `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabasePing {
    pub every: Duration,
    pub timeout: Duration,
}

/// Readiness pings the database every 5 s and waits 1.5 s for an answer: below the probes'
/// own timeouts, so a slow database reads as "not ready", not as a hung process.
pub const DEFAULT_DATABASE_PING: DatabasePing = DatabasePing {
    every: Duration::from_secs(5),
    timeout: Duration::from_millis(1500),
};

/// What webhook-ingest needs to know besides its connections.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the HTTP server listens.
    pub addr: SocketAddr,
    /// The public URL Twilio posts to (and signs over), e.g. `https://webhooks.example.com`;
    /// the request's path and query are appended to it. `None`: the server's own address
    /// (`http://127.0.0.1:8080`), right when the poster is on the same machine.
    pub public_base_url: Option<Url>,
    /// The Twilio auth token webhooks are signed with.
    pub auth_token: SecretString,
    /// Peers (reverse proxies) whose `X-Forwarded-Proto` / `X-Forwarded-Host` are believed
    /// when composing the signed URL; from anyone else those headers are ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Settings {
    /// Checks what can be checked before connecting to anything.
    pub fn validate(&self) -> anyhow::Result<()> {
        use secrecy::ExposeSecret;
        if let Some(base) = &self.public_base_url {
            if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
                anyhow::bail!(
                    "the public base URL must be an http(s) URL with a host (got `{base}`)"
                );
            }
            if base.query().is_some() || base.fragment().is_some() {
                anyhow::bail!("the public base URL must not carry a query or a fragment");
            }
        }
        let token = self.auth_token.expose_secret();
        if token.trim().is_empty() || token.contains("REPLACE_ME") {
            anyhow::bail!("TWILIO_AUTH_TOKEN is not set (webhook signatures are checked with it)");
        }
        Ok(())
    }
}

/// The database and the event bus webhook-ingest works with, and whether they are its own
/// to close when it stops.
#[derive(Debug, Clone)]
pub struct Connections {
    database: storage::Database,
    bus: messaging::Bus,
    owned: bool,
}

impl Connections {
    /// Connections of its own (the distributed mode's, from [`connect`]): closed when it
    /// stops.
    pub fn owned(database: storage::Database, bus: messaging::Bus) -> Self {
        Connections {
            database,
            bus,
            owned: true,
        }
    }

    /// Connections of the process around it (the embedded mode's): left open when it stops.
    pub fn shared(database: storage::Database, bus: messaging::Bus) -> Self {
        Connections {
            database,
            bus,
            owned: false,
        }
    }
}

/// Opens the database (migrating it when asked) and connects to RabbitMQ on the default
/// exchange: the distributed mode's connections. Fails when either cannot be reached now.
pub async fn connect(
    database_url: &str,
    migrate: bool,
    amqp_url: SecretString,
) -> anyhow::Result<Connections> {
    connect_to(database_url, migrate, amqp_url, messaging::DEFAULT_EXCHANGE).await
}

/// [`connect`] with the topic exchange named (it must match verify-service's).
pub async fn connect_to(
    database_url: &str,
    migrate: bool,
    amqp_url: SecretString,
    exchange: &str,
) -> anyhow::Result<Connections> {
    messaging::Bus::check_url(&amqp_url)?;
    let database = storage::Database::open(database_url)
        .await
        .context("opening the database")?;
    if migrate {
        database.migrate().await.context("migrating the database")?;
    }
    let bus = messaging::Bus::connect(amqp_url, exchange, "webhook-ingest")
        .await
        .context("connecting to RabbitMQ")?;
    Ok(Connections::owned(database, bus))
}

/// What the request handlers and the relay share.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) settings: Settings,
    /// The configured public base URL, or the bound address; without a trailing slash.
    pub(crate) public_base_url: String,
    pub(crate) validator: twilio::webhook::SignatureValidator,
    pub(crate) database: storage::Database,
    pub(crate) bus: messaging::Bus,
    /// The database and the bus are its own to close ([`Connections::owned`]).
    pub(crate) owns_connections: bool,
    /// Wakes the relay when a new report was stored, so it is published at once.
    pub(crate) stored: Notify,
    /// Set when shutdown begins: readiness turns false so traffic drains to other replicas.
    pub(crate) draining: AtomicBool,
    /// The outcome of the last database ping: `Err` holds why it failed.
    pub(crate) database_ready: std::sync::RwLock<Result<(), String>>,
}

/// Pings the database once, within `timeout`.
async fn ping(database: &storage::Database, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, database.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("unavailable: {e}")),
        Err(_) => Err(format!(
            "unavailable: no answer within {} ms",
            timeout.as_millis()
        )),
    }
}

/// Pings the database every `every` until `stop`, keeping the outcome for `/readyz`.
async fn follow_database(
    state: Arc<AppState>,
    every: DatabasePing,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let outcome = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            outcome = ping(&state.database, every.timeout) => outcome,
        };
        let mut last = state
            .database_ready
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (&*last, &outcome) {
            (Ok(()), Err(e)) => {
                tracing::warn!(database = %e, "not ready: the database does not answer")
            }
            (Err(_), Ok(())) => tracing::info!("ready: the database answers again"),
            _ => {}
        }
        *last = outcome;
    }
}

/// A webhook-ingest whose listener is bound.
#[derive(Debug)]
pub struct Ingest {
    listener: TcpListener,
    limits: Limits,
    database_ping: DatabasePing,
    outbox_max_attempts: u32,
    state: Arc<AppState>,
}

impl Ingest {
    /// Binds the listener and pings the database once, so readiness is known from the
    /// first request. The database must be migrated.
    pub async fn bind(settings: &Settings, connections: Connections) -> anyhow::Result<Ingest> {
        let Connections {
            database,
            bus,
            owned,
        } = connections;
        settings.validate()?;
        let listener = TcpListener::bind(settings.addr)
            .await
            .with_context(|| format!("binding {}", settings.addr))?;
        let public_base_url = match &settings.public_base_url {
            Some(base) => base.as_str().trim_end_matches('/').to_owned(),
            None => format!("http://{}", listener.local_addr()?),
        };
        let first_ping = ping(&database, DEFAULT_DATABASE_PING.timeout).await;
        Ok(Ingest {
            listener,
            limits: DEFAULT_LIMITS,
            database_ping: DEFAULT_DATABASE_PING,
            outbox_max_attempts: DEFAULT_OUTBOX_MAX_ATTEMPTS,
            state: Arc::new(AppState {
                settings: settings.clone(),
                public_base_url,
                validator: twilio::webhook::SignatureValidator::new(settings.auth_token.clone()),
                database,
                bus,
                owns_connections: owned,
                stored: Notify::new(),
                draining: AtomicBool::new(false),
                database_ready: std::sync::RwLock::new(first_ping),
            }),
        })
    }

    /// Pings the database for readiness as `ping` says instead of [`DEFAULT_DATABASE_PING`].
    #[must_use]
    pub fn with_database_ping(mut self, ping: DatabasePing) -> Ingest {
        self.database_ping = ping;
        self
    }

    /// Serves within `limits` instead of [`DEFAULT_LIMITS`].
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Ingest {
        self.limits = limits;
        self
    }

    /// Gives a stored report up as a dead letter after `attempts` failed publishing
    /// attempts (at least one) instead of [`DEFAULT_OUTBOX_MAX_ATTEMPTS`].
    #[must_use]
    pub fn with_outbox_max_attempts(mut self, attempts: u32) -> Ingest {
        self.outbox_max_attempts = attempts.max(1);
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The base URL signatures are checked against (no trailing slash); Verify Events go to
    /// this plus [`VERIFY_EVENTS_PATH`].
    pub fn public_base_url(&self) -> &str {
        &self.state.public_base_url
    }

    /// Serves and relays until `shutdown` resolves; then stops accepting, lets in-flight
    /// requests finish, lets the relay finish its batch, and closes what it owns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let relay = tokio::spawn(relay::run(
            Arc::clone(&self.state),
            self.outbox_max_attempts,
            stop_rx.clone(),
        ));
        let pinging = tokio::spawn(follow_database(
            Arc::clone(&self.state),
            self.database_ping,
            stop_rx,
        ));
        let drain = Arc::clone(&self.state);
        let served = http_listener::serve(
            self.listener,
            routes::router(Arc::clone(&self.state)),
            self.limits,
            async move {
                shutdown.await;
                drain.draining.store(true, Ordering::SeqCst);
                tracing::info!("shutting down: finishing in-flight requests");
            },
        )
        .await
        .context("serving HTTP");
        stop_tx.send_replace(true);
        if let Err(e) = relay.await {
            tracing::warn!(error = %e, "the outbox relay ended abnormally");
        }
        let _ = pinging.await;
        if self.state.owns_connections {
            // Distributed mode: the connections are ours to close. Embedded: the process's.
            self.state.bus.close().await;
            self.state.database.close().await;
        }
        tracing::info!("stopped");
        served
    }
}
