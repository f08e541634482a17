//! A local stand-in for Twilio Verify v2: the same paths, Basic auth, JSON bodies, error
//! codes and lifecycle limits, signed Verify Events reporting each message's delivery, an
//! inbox of the codes it "sent" and magic destinations that inject Twilio's failures.
//! Developers point an integration (or Twilio's own helper libraries) at it to try
//! everything without credentials.

mod auth;
mod config;
mod dispatch;
mod error;
mod events;
mod http;
mod scenario;
mod store;
mod wire;

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use config::{
    DEFAULT_DELIVERY_DELAY, DEFAULT_EVENT_RETRY_DELAY, DEFAULT_INBOX_CAPACITY, DEFAULT_LIMITS,
    DEFAULT_SLOW_DELAY, DEFAULT_VERIFICATION_TTL, DEV_ACCOUNT_SID, DEV_AUTH_TOKEN, DEV_SERVICE_SID,
    SandboxConfig, ServiceConfig,
};
pub use dispatch::{EVENT_POST_ATTEMPTS, EVENT_POST_TIMEOUT};
pub use http_listener::Limits;
pub use scenario::scenarios;

use auth::Credentials;
use dispatch::{Dispatcher, DispatcherConfig};
use store::{CODE_LENGTHS, MAX_VERIFICATIONS, Store};

/// A running sandbox's shared state; clones share it.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    account_sid: String,
    credentials: Credentials,
    services: Vec<ServiceConfig>,
    slow_delay: Duration,
    limits: Limits,
    started: DateTime<Utc>,
    store: Mutex<Store>,
    /// Posts Verify Events; `None` when no events URL is configured.
    events: Option<Dispatcher>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("account_sid", &self.inner.account_sid)
            .field("services", &self.inner.services)
            .field("slow_delay", &self.inner.slow_delay)
            .field("limits", &self.inner.limits)
            .field("events", &self.inner.events.is_some())
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// A sandbox with no verifications and an empty inbox. Service code lengths outside
    /// Twilio's 4 to 10 are clamped. With `events_url` set, every send is reported there
    /// by signed Verify Events, posted by background tasks: sends must then happen inside
    /// a Tokio runtime, as they do when the sandbox is served.
    pub fn new(config: SandboxConfig) -> Self {
        // libphonenumber loads its metadata on first use, slowly in a debug build: do it now
        // rather than in the first request.
        let _ = domain::PhoneNumber::parse("+14155552671", None);
        let services = config
            .services
            .into_iter()
            .map(|mut service| {
                let clamped = service
                    .code_length
                    .clamp(*CODE_LENGTHS.start(), *CODE_LENGTHS.end());
                if clamped != service.code_length {
                    tracing::warn!(
                        service_sid = %service.sid,
                        configured = service.code_length,
                        used = clamped,
                        "sandbox.config.code_length_clamped"
                    );
                    service.code_length = clamped;
                }
                service
            })
            .collect();
        let events = config.events_url.and_then(|url| {
            let dispatcher = Dispatcher::new(DispatcherConfig {
                url,
                account_sid: &config.account_sid,
                auth_token: &config.auth_token,
                delivery_delay: config.delivery_delay,
                retry_delay: config.event_retry_delay,
                log_capacity: config.inbox_capacity,
            });
            match dispatcher {
                Ok(dispatcher) => Some(dispatcher),
                Err(error) => {
                    // Only a broken TLS setup gets here; the API still works without events.
                    tracing::error!(%error, "sandbox.events.disabled");
                    None
                }
            }
        });
        Sandbox {
            inner: Arc::new(Inner {
                credentials: Credentials::new(
                    &config.account_sid,
                    &config.auth_token,
                    &config.api_keys,
                ),
                account_sid: config.account_sid,
                services,
                slow_delay: config.slow_delay,
                limits: config.limits,
                started: Utc::now(),
                store: Mutex::new(Store::new(
                    config.verification_ttl,
                    config.delivery_delay,
                    config.inbox_capacity,
                    MAX_VERIFICATIONS,
                )),
                events,
            }),
        }
    }

    /// The HTTP routes: Twilio Verify v2 under `/v2` and the dev helpers under `/sandbox`.
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }

    fn service(&self, sid: &str) -> Option<&ServiceConfig> {
        self.inner.services.iter().find(|s| s.sid == sid)
    }

    /// Runs `f` with the store locked. The lock is never held across an `.await`; a panic
    /// while it was held cannot leave a half-applied change, so a poisoned lock is reused.
    fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = self
            .inner
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut store)
    }
}

/// Serves `sandbox` on `listener` until `shutdown` completes, then drains open requests.
/// Clients slower than the configured [`SandboxConfig::limits`] are cut off.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sandbox: Sandbox,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "sandbox.listening");
    }
    let limits = sandbox.inner.limits;
    http_listener::serve(listener, sandbox.router(), limits, shutdown).await
}
