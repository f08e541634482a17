//! Start-up composition: builds the adapters from settings, binds the listeners and runs the
//! embedded sandbox and the gRPC server until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use domain::ports::VerificationStore;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Settings, Upstream};
use crate::keys;
use crate::service::{SystemClock, VerifyCore};

/// Opens the configured database, creating the data dir first when it is SQLite's home.
pub async fn open_database(settings: &Settings) -> anyhow::Result<storage::Database> {
    if settings.database_url.starts_with("sqlite:") {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
    }
    storage::Database::open(&settings.database_url)
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
                .open(&v.destination)
                .with_context(|| format!("opening the destination of {}", v.id))?;
            let mut nonce = [0u8; 12];
            rand::rng().fill_bytes(&mut nonce);
            let expected = v.version;
            v.destination = keyring.seal(&destination, nonce);
            v.version += 1;
            match store.update(&v, expected).await {
                Ok(()) => rewritten += 1,
                // Changed concurrently: the next batch lists it again if still old.
                Err(domain::ports::StoreError::Conflict(_)) => {}
                Err(e) => return Err(e).context("writing a re-encrypted row"),
            }
        }
    }
}

/// A gateway whose listeners are bound; `run` serves until shutdown.
#[derive(Debug)]
pub struct Gateway {
    core: VerifyCore,
    grpc: TcpListener,
    sandbox: Option<(TcpListener, twilio_sandbox::Sandbox)>,
    database: storage::Database,
    /// RabbitMQ in distributed mode; delivery events arrive over it.
    bus: Option<messaging::RabbitBus>,
}

impl Gateway {
    /// Opens the store (running migrations unless a separate step does), connects to
    /// RabbitMQ when configured, loads keys, binds the listeners.
    pub async fn bind(settings: &Settings) -> anyhow::Result<Gateway> {
        let keys = keys::load(&settings.keys, &settings.data_dir)?;
        let database = open_database(settings).await?;
        if settings.migrate_on_start {
            database.migrate().await.context("migrating the database")?;
        }
        let bus = match &settings.amqp_url {
            Some(url) => {
                let mut config =
                    messaging::RabbitConfig::new(url.clone(), messaging::DEFAULT_EXCHANGE);
                config.connection_name = "verify-service".into();
                Some(
                    messaging::RabbitBus::connect(config)
                        .await
                        .context("connecting to RabbitMQ")?,
                )
            }
            None => None,
        };

        let sandbox = match &settings.upstream {
            Upstream::Sandbox { addr } => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the sandbox on {addr}"))?;
                Some((
                    listener,
                    twilio_sandbox::Sandbox::new(twilio_sandbox::SandboxConfig::dev()),
                ))
            }
            Upstream::Twilio => None,
        };
        let mut twilio_config = settings.twilio.clone();
        if let Some((listener, _)) = &sandbox {
            let addr = listener.local_addr()?;
            twilio_config.base_url =
                Some(url::Url::parse(&format!("http://{addr}")).context("sandbox URL")?);
        }
        let provider =
            twilio::TwilioVerify::new(twilio_config).context("building the Twilio client")?;

        let core = VerifyCore::new(
            settings.policies.clone(),
            Arc::new(provider),
            database.verifications(),
            Arc::new(SystemClock),
            keys.blind_index,
            keys.keyring,
        );
        let grpc = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("binding gRPC on {}", settings.grpc_addr))?;
        Ok(Gateway {
            core,
            grpc,
            sandbox,
            database,
            bus,
        })
    }

    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    pub fn sandbox_addr(&self) -> Option<SocketAddr> {
        self.sandbox.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish, lets consumers
    /// ack what they hold, and closes the broker and database connections.
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
        let grpc_task = tokio::spawn(crate::server::serve(
            self.grpc,
            self.core,
            stopped(stop_rx.clone()),
        ));
        shutdown.await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
        grpc_task.await.context("gRPC task")??;
        if let Some(task) = sandbox_task {
            task.await.context("sandbox task")?.context("sandbox")?;
        }
        if let Some(bus) = &self.bus {
            bus.close().await;
        }
        self.database.close().await;
        Ok(())
    }
}
