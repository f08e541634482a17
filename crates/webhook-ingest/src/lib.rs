//! webhook-ingest: the HTTP server that receives Twilio's webhooks (message status callbacks
//! and Verify Events), checks their signatures, drops duplicates, stores each event with an
//! outbox row and publishes it to RabbitMQ.
//!
//! This version is the process around that: settings, the database and broker connections,
//! `GET /healthz` (the process answers) and `GET /readyz` (the database and the broker answer
//! too, so a replica that could not store a webhook takes none), and a graceful shutdown that
//! finishes in-flight requests before closing the connections.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use secrecy::SecretString;
use serde_json::json;
use tokio::net::TcpListener;
use url::Url;

/// How long `/readyz` waits for the database before calling it unavailable; below the
/// probes' own timeouts, so a slow database reads as "not ready", not as a hung process.
const READY_DB_TIMEOUT: Duration = Duration::from_millis(1500);

/// What webhook-ingest needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the HTTP server listens.
    pub addr: SocketAddr,
    /// The public URL Twilio posts to (and signs over), e.g. `https://webhooks.example.com`.
    pub public_base_url: Url,
    /// The Twilio auth token webhooks are signed with.
    pub auth_token: SecretString,
    /// `postgres://…` in the distributed mode (`sqlite:…` works for trying it out).
    pub database_url: String,
    /// The RabbitMQ broker events are published to.
    pub amqp_url: SecretString,
    /// Apply the database migrations before serving; off where a separate step migrates.
    pub migrate_on_start: bool,
}

impl Settings {
    /// Checks what can be checked before connecting to anything.
    pub fn validate(&self) -> anyhow::Result<()> {
        use secrecy::ExposeSecret;
        if !matches!(self.public_base_url.scheme(), "http" | "https")
            || self.public_base_url.host().is_none()
        {
            anyhow::bail!(
                "the public base URL must be an http(s) URL with a host (got `{}`)",
                self.public_base_url
            );
        }
        if self.public_base_url.query().is_some() || self.public_base_url.fragment().is_some() {
            anyhow::bail!("the public base URL must not carry a query or a fragment");
        }
        let token = self.auth_token.expose_secret();
        if token.trim().is_empty() || token.contains("REPLACE_ME") {
            anyhow::bail!("TWILIO_AUTH_TOKEN is not set (webhook signatures are checked with it)");
        }
        let amqp = self.amqp_url.expose_secret();
        if !(amqp.starts_with("amqp://") || amqp.starts_with("amqps://")) {
            anyhow::bail!("the AMQP URL must start with amqp:// or amqps://");
        }
        Ok(())
    }
}

/// What the request handlers share.
#[derive(Debug)]
struct AppState {
    database: storage::Database,
    bus: messaging::RabbitBus,
    /// Set when shutdown begins: readiness turns false so traffic drains to other replicas.
    draining: AtomicBool,
}

/// A webhook-ingest whose listener is bound and whose connections are open.
#[derive(Debug)]
pub struct Ingest {
    listener: TcpListener,
    state: Arc<AppState>,
}

impl Ingest {
    /// Opens the database (migrating it unless told not to), connects to RabbitMQ and binds
    /// the listener. Fails when either dependency cannot be reached now: a replica that
    /// starts must be able to do its work.
    pub async fn bind(settings: &Settings) -> anyhow::Result<Ingest> {
        settings.validate()?;
        let database = storage::Database::open(&settings.database_url)
            .await
            .context("opening the database")?;
        if settings.migrate_on_start {
            database.migrate().await.context("migrating the database")?;
        }
        let mut config =
            messaging::RabbitConfig::new(settings.amqp_url.clone(), messaging::DEFAULT_EXCHANGE);
        config.connection_name = "webhook-ingest".into();
        let bus = messaging::RabbitBus::connect(config)
            .await
            .context("connecting to RabbitMQ")?;
        let listener = TcpListener::bind(settings.addr)
            .await
            .with_context(|| format!("binding {}", settings.addr))?;
        Ok(Ingest {
            listener,
            state: Arc::new(AppState {
                database,
                bus,
                draining: AtomicBool::new(false),
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets in-flight requests
    /// finish, and closes the broker and database connections.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = Arc::clone(&self.state);
        let drain = Arc::clone(&self.state);
        axum::serve(self.listener, router(state))
            .with_graceful_shutdown(async move {
                shutdown.await;
                drain.draining.store(true, Ordering::SeqCst);
                tracing::info!("shutting down: finishing in-flight requests");
            })
            .await
            .context("serving HTTP")?;
        self.state.bus.close().await;
        self.state.database.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Liveness: the process answers. Dependencies are not consulted, so an outage of the
/// database does not get every replica restarted.
async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the database answers a ping and the broker connection is up.
async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let database = match tokio::time::timeout(READY_DB_TIMEOUT, state.database.ping()).await {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => format!("unavailable: {e}"),
        Err(_) => "unavailable: no answer within 1.5 s".to_owned(),
    };
    let broker = if state.bus.is_connected() {
        "ok"
    } else {
        "unavailable: reconnecting"
    };
    let draining = state.draining.load(Ordering::SeqCst);
    let ready = database == "ok" && broker == "ok" && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else if draining { "draining" } else { "unavailable" },
        "database": database,
        "broker": broker,
    });
    (status, Json(body))
}
