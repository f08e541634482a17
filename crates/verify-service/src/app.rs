//! Start-up composition: builds the adapters from settings, binds the listeners and runs the
//! embedded sandbox and the gRPC server until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use domain::ports::VerificationStore;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::abuse::AbuseGuard;
use crate::admin::AdminService;
use crate::config::{AdminAccess, Settings, Upstream};
use crate::metrics::Metrics;
use crate::service::{SystemClock, VerifyCore};
use crate::{fallback, keys};

/// Opens the configured database, creating the data dir first when it is SQLite's home.
pub async fn open_database(settings: &Settings) -> anyhow::Result<storage::Database> {
    use secrecy::ExposeSecret;
    let url = settings.database_url.expose_secret();
    if url.starts_with("sqlite:") {
        crate::data_dir::ensure_private(&settings.data_dir)?;
    }
    storage::Database::open(url)
        .await
        .context("opening the database")
}

/// Re-encrypts every stored destination sealed with an older key under the current key,
/// in batches; returns how many rows were rewritten. Safe to run while serving: each row is
/// written with its version checked, and a row changed meanwhile is simply read again.
pub async fn reencrypt(
    store: &dyn VerificationStore,
    keyring: &domain::Keyring,
    batch: u32,
) -> anyhow::Result<u64> {
    use rand::RngCore;
    let mut rewritten = 0u64;
    loop {
        let rows = store
            .list_sealed_with_other_key(keyring.current_id(), batch)
            .await
            .context("listing rows sealed with older keys")?;
        if rows.is_empty() {
            return Ok(rewritten);
        }
        for mut v in rows {
            let destination = keyring
                .open(v.destination(), &v.id())
                .with_context(|| format!("opening the destination of {}", v.id()))?;
            let mut nonce = [0u8; 12];
            rand::rng().fill_bytes(&mut nonce);
            v.reseal(keyring.seal(&destination, &v.id(), nonce));
            match store.update(&mut v).await {
                Ok(()) => rewritten += 1,
                // Changed concurrently: the next batch lists it again if still old.
                Err(domain::ports::StoreError::Conflict(_)) => {}
                Err(e) => return Err(e).context("writing a re-encrypted row"),
            }
        }
    }
}

/// How often limiter and scoring state is tidied.
const HOUSEKEEPING_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// How long scoring's counters are kept: longer than any signal's window (at most a week).
const COUNTERS_KEPT: chrono::Duration = chrono::Duration::days(8);

/// Counters are purged every this many housekeeping rounds (hourly): against eight days
/// kept an hour more is nothing, and on SQLite a purge walks the whole table.
const COUNTER_PURGE_ROUNDS: u32 = 60;

/// How long ended (or lifted) blocks are kept: for the record, and longer than any block
/// scoring imposes, so an operator's lift keeps exempting its target.
const BLOCKS_KEPT: chrono::Duration = chrono::Duration::days(30);

/// Evicts stale in-process limiter keys and, in the database, limiter rows that hold no
/// information, counter buckets past every window and (hourly) the history past
/// `retention`. Any replica may do it; the deletes are idempotent.
async fn housekeeping(
    abuse: Arc<AbuseGuard>,
    database: storage::Database,
    retention: std::time::Duration,
    metrics: Option<Arc<Metrics>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for round in 0u32.. {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        abuse.housekeeping();
        let now = chrono::Utc::now();
        if let Err(e) = database.rate_limits().purge_limits(now).await {
            tracing::warn!(error = %e, "purging rate-limit state failed");
        }
        if round % COUNTER_PURGE_ROUNDS == 0
            && let Err(e) = database
                .risk_store()
                .purge_counts(now - COUNTERS_KEPT)
                .await
        {
            tracing::warn!(error = %e, "purging scoring counters failed");
        }
        if let Err(e) = database.risk_store().purge_blocks(now - BLOCKS_KEPT).await {
            tracing::warn!(error = %e, "purging ended blocks failed");
        }
        if let Some(metrics) = &metrics {
            match database.outbox().count_set_aside().await {
                Ok(count) => metrics.set_outbox_dead_letters(count),
                Err(e) => tracing::warn!(error = %e, "counting the outbox's dead letters failed"),
            }
        }
        if round % COUNTER_PURGE_ROUNDS == 0 {
            match database.purge_history(now - retention, now).await {
                Ok(purged) if purged != storage::Purged::default() => tracing::info!(
                    verifications = purged.verifications,
                    delivery_reports = purged.delivery_reports,
                    processed_messages = purged.processed_messages,
                    "purged the history past the retention period"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purging the history failed"),
            }
        }
    }
}

/// A gateway whose listeners are bound; `run` serves until shutdown.
#[derive(Debug)]
pub struct Gateway {
    core: Arc<VerifyCore>,
    grpc: TcpListener,
    tls: Option<Arc<crate::tls::Certificates>>,
    callers: Option<Arc<crate::auth::Callers>>,
    /// VerifyService answers anyone beyond loopback, as configured: warned of hourly.
    insecure_no_callers: bool,
    /// `storage.retention_days`.
    retention: std::time::Duration,
    reconcile: crate::reconcile::Settings,
    sandbox: Option<(TcpListener, twilio_sandbox::Sandbox)>,
    webhooks: Option<webhook_ingest::Ingest>,
    database: storage::Database,
    bus: messaging::Bus,
    abuse: Arc<AbuseGuard>,
    counters: Arc<crate::counters::BufferedCounters>,
    admin: Option<crate::server::Admin>,
    metrics: Option<(TcpListener, Arc<Metrics>)>,
    server_limits: crate::server::Limits,
}

impl Gateway {
    /// Opens the store (running migrations unless a separate step does), connects the bus
    /// (RabbitMQ when configured, else in process), loads keys, binds the listeners and
    /// subscribes the delivery consumer.
    pub async fn bind(settings: &Settings) -> anyhow::Result<Gateway> {
        let insecure_no_callers = settings.open_to_anyone()?;
        if settings.server_limits.request_timeout <= settings.twilio.timeout {
            tracing::warn!(
                request_timeout_ms = settings.server_limits.request_timeout.as_millis() as u64,
                twilio_timeout_ms = settings.twilio.timeout.as_millis() as u64,
                "server.request_timeout_seconds is not above twilio.timeout_ms: a call cut off \
                 while Twilio works on it leaves its send or check unconfirmed"
            );
        }
        let keys = keys::load(&settings.keys, &settings.data_dir)?;
        // Certificates that do not load stop the start, before anything else is opened.
        let tls = settings
            .tls
            .clone()
            .map(crate::tls::Certificates::load)
            .transpose()?
            .map(Arc::new);
        // libphonenumber's metadata is loaded and its patterns compiled on first use, which
        // takes a noticeable moment (over a second in a debug build); pay it while starting,
        // not in the first caller's request.
        let _ = domain::PhoneNumber::parse("+14155552671", None);
        let database = open_database(settings).await?;
        if settings.migrate_on_start {
            database.migrate().await.context("migrating the database")?;
        }
        let bus = match &settings.amqp_url {
            Some(url) => {
                messaging::Bus::connect(url.clone(), &settings.amqp_exchange, "verify-service")
                    .await
                    .context("connecting to RabbitMQ")?
            }
            None => messaging::Bus::in_process(),
        };

        // The embedded webhook receiver, so delivery reports (and the fallback) work with no
        // other process.
        let webhooks = match &settings.webhooks {
            Some(w) => Some(
                webhook_ingest::Ingest::bind(
                    &webhook_ingest::Settings {
                        addr: w.addr,
                        public_base_url: w.public_base_url.clone(),
                        auth_token: w.auth_token.clone(),
                        trusted_proxies: Vec::new(),
                    },
                    webhook_ingest::Connections::shared(database.clone(), bus.clone()),
                )
                .await
                .context("starting the embedded webhook receiver")?
                // The same pings as gRPC health, so both answer alike.
                .with_database_ping(webhook_ingest::DatabasePing {
                    every: settings.server_limits.database_ping_every,
                    timeout: settings.server_limits.database_ping_timeout,
                }),
            ),
            None => None,
        };

        let sandbox = match &settings.upstream {
            Upstream::Sandbox { addr } => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the sandbox on {addr}"))?;
                let mut config = twilio_sandbox::SandboxConfig::dev();
                if let Some(webhooks) = &webhooks {
                    config.events_url = Some(
                        url::Url::parse(&format!(
                            "{}{}",
                            webhooks.public_base_url(),
                            webhook_ingest::VERIFY_EVENTS_PATH
                        ))
                        .context("the sandbox's events URL")?,
                    );
                }
                Some((listener, twilio_sandbox::Sandbox::new(config)))
            }
            Upstream::Twilio => None,
        };
        let mut twilio_config = settings.twilio.clone();
        if let Some((listener, _)) = &sandbox {
            let addr = listener.local_addr()?;
            twilio_config.base_url =
                Some(url::Url::parse(&format!("http://{addr}")).context("sandbox URL")?);
        }
        // Every Twilio request carries the trace context of the span it is made in.
        let provider = twilio::TwilioVerify::new(twilio_config)
            .context("building the Twilio client")?
            .with_request_headers(twilio::RequestHeaders::new(
                telemetry::trace::current_headers,
            ));

        let metrics = Arc::new(Metrics::new());
        let watched = database.clone();
        metrics.watch_store(move || watched.counts());
        let limiter = ratelimit::Limiter::new(
            database.rate_limits(),
            ratelimit::LocalSettings {
                max_keys: settings.local_max_keys,
            },
        );
        // Scoring's counters are added in memory and flushed in batches (`counters`).
        let counters = Arc::new(crate::counters::BufferedCounters::new(
            database.risk_store(),
        ));
        // The embedded sandbox's scenario numbers are for trying failures; scored, they
        // would soon block their range (see `AbuseGuard::leaving_unscored`).
        let scenario_numbers = sandbox
            .iter()
            .flat_map(|_| twilio_sandbox::scenarios())
            .filter_map(|(_, to)| domain::PhoneNumber::parse(to, None).ok())
            .map(domain::Destination::Phone);
        let abuse = Arc::new(
            AbuseGuard::new(
                limiter,
                Arc::clone(&counters) as Arc<dyn domain::abuse::RiskStore>,
                settings.fraud.clone(),
                keys.blind_index.clone(),
                Arc::clone(&metrics),
            )
            .leaving_unscored(scenario_numbers),
        );
        let clock: Arc<dyn domain::ports::Clock> = Arc::new(SystemClock);
        let admin = match &settings.admin {
            AdminAccess::Off => None,
            access => Some(crate::server::Admin {
                service: AdminService::new(
                    database.risk_store(),
                    Arc::clone(&clock),
                    Arc::clone(&metrics),
                ),
                token: match access {
                    AdminAccess::Token(token) => Some(token.clone()),
                    _ => None,
                },
            }),
        };
        let metrics_listener = match settings.metrics_addr {
            Some(addr) => Some(crate::metrics::bind(addr).await?),
            None => None,
        };
        let core = Arc::new(VerifyCore::new(
            settings.policies.clone(),
            Arc::new(provider),
            database.verifications(),
            clock,
            keys,
            bus.events(),
            Arc::clone(&abuse),
        ));
        let subscription = fallback::subscription();
        // Replicas on RabbitMQ dedupe together in the database; the in-process bus in
        // memory, which spares the single SQLite writer two writes per message.
        let dedupe = bus.dedupe_store(|lease| database.dedupe_store(lease));
        let consumer = messaging::Idempotent::new(
            subscription.queue.clone(),
            Arc::new(fallback::DeliveryHandler::new(Arc::clone(&core))),
            dedupe,
        );
        bus.events()
            .subscribe(subscription, Arc::new(consumer))
            .await
            .context("subscribing to delivery events")?;

        let grpc = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("binding gRPC on {}", settings.grpc_addr))?;
        Ok(Gateway {
            core,
            grpc,
            tls,
            callers: settings.callers.clone(),
            insecure_no_callers,
            retention: settings.retention,
            reconcile: settings.reconcile,
            sandbox,
            webhooks,
            database,
            bus,
            abuse,
            counters,
            admin,
            metrics: metrics_listener.map(|l| (l, metrics)),
            server_limits: settings.server_limits,
        })
    }

    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    pub fn sandbox_addr(&self) -> Option<SocketAddr> {
        self.sandbox.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Where the embedded webhook receiver listens, when it runs.
    pub fn webhooks_addr(&self) -> Option<SocketAddr> {
        self.webhooks.as_ref().and_then(|w| w.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then turns gRPC health NOT_SERVING, lets in-flight
    /// calls finish within the shutdown grace (cutting off what is still open after it),
    /// lets consumers ack what they hold, and closes the broker and database connections.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let sandbox_task = self.sandbox.map(|(listener, sandbox)| {
            tokio::spawn(twilio_sandbox::serve(
                listener,
                sandbox,
                stopped(stop_rx.clone()),
            ))
        });
        let webhooks_task = self
            .webhooks
            .map(|w| tokio::spawn(w.run(stopped(stop_rx.clone()))));
        let open_task = self.insecure_no_callers.then(|| {
            let addr = self.grpc.local_addr().ok();
            tokio::spawn(warn_open_hourly(addr, stopped(stop_rx.clone())))
        });
        let grpc_task = tokio::spawn(crate::server::serve(
            self.grpc,
            self.tls,
            self.callers,
            (*self.core).clone(),
            self.admin,
            self.server_limits,
            self.database.clone(),
            stopped(stop_rx.clone()),
        ));
        let watched = self
            .metrics
            .as_ref()
            .map(|(_, metrics)| Arc::clone(metrics));
        let metrics_task = self.metrics.map(|(listener, metrics)| {
            tokio::spawn(crate::metrics::serve(
                listener,
                metrics,
                stopped(stop_rx.clone()),
            ))
        });
        let housekeeping_task = tokio::spawn(housekeeping(
            Arc::clone(&self.abuse),
            self.database.clone(),
            self.retention,
            watched,
            stopped(stop_rx.clone()),
        ));
        let reconcile_task = tokio::spawn(crate::reconcile::run(
            Arc::clone(&self.core),
            self.reconcile,
            stopped(stop_rx.clone()),
        ));
        // Stopped only after the gRPC server, so the last flush holds every request's counts.
        let (flush_tx, flush_rx) = watch::channel(false);
        let flush_task = tokio::spawn(crate::counters::flush_periodically(
            Arc::clone(&self.counters),
            stopped(flush_rx),
        ));
        shutdown.await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
        grpc_task.await.context("gRPC task")??;
        if let Some(task) = open_task {
            task.await.context("open-port warning task")?;
        }
        let _ = flush_tx.send(true);
        flush_task.await.context("counter flush task")?;
        if let Some(task) = metrics_task {
            task.await.context("metrics task")??;
        }
        housekeeping_task.await.context("housekeeping task")?;
        reconcile_task.await.context("reconciliation task")?;
        if let Some(task) = webhooks_task {
            task.await.context("webhook task")?.context("webhooks")?;
        }
        if let Some(task) = sandbox_task {
            task.await.context("sandbox task")?.context("sandbox")?;
        }
        self.bus.close().await;
        self.database.close().await;
        Ok(())
    }
}

/// Warns, at start and every hour, that VerifyService answers whoever reaches it: a
/// setting that must not go unnoticed in a deployment's logs.
async fn warn_open_hourly(addr: Option<SocketAddr>, stopped: impl Future<Output = ()>) {
    tokio::pin!(stopped);
    loop {
        tracing::warn!(
            grpc_addr = ?addr,
            "VerifyService is served without callers to anyone who reaches it \
             (auth.insecure_no_callers = true): anyone can send SMS and calls at your cost"
        );
        tokio::select! {
            () = &mut stopped => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
        }
    }
}
