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

/// The store named by a database URL.
#[derive(Debug)]
pub enum Store {
    Sqlite(storage::SqliteStore),
    Postgres(storage::PostgresStore),
}

/// Opens SQLite (`sqlite:…`) or PostgreSQL (`postgres://…`, `postgresql://…`).
pub async fn open_store(url: &str) -> anyhow::Result<Store> {
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        "sqlite" => Ok(Store::Sqlite(
            storage::SqliteStore::connect(url)
                .await
                .context("opening SQLite")?,
        )),
        "postgres" | "postgresql" => Ok(Store::Postgres(
            storage::PostgresStore::connect(url)
                .await
                .context("connecting to PostgreSQL")?,
        )),
        _ => anyhow::bail!(
            "database URL must start with sqlite:, postgres: or postgresql: (got `{scheme}:`)"
        ),
    }
}

impl Store {
    /// Applies the migrations of this kind of database (idempotent; PostgreSQL serialises
    /// concurrent migrators with an advisory lock).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Store::Sqlite(s) => s.migrate().await.context("migrating SQLite"),
            Store::Postgres(s) => s.migrate().await.context("migrating PostgreSQL"),
        }
    }

    pub fn into_port(self) -> Arc<dyn VerificationStore> {
        match self {
            Store::Sqlite(s) => Arc::new(s),
            Store::Postgres(s) => Arc::new(s),
        }
    }
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
}

impl Gateway {
    /// Opens the store (running migrations), loads keys, binds the listeners.
    pub async fn bind(settings: &Settings) -> anyhow::Result<Gateway> {
        let keys = keys::load(&settings.keys, &settings.data_dir)?;
        if settings.database_url.starts_with("sqlite:") {
            std::fs::create_dir_all(&settings.data_dir)
                .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
        }
        let store = open_store(&settings.database_url).await?;
        if settings.migrate_on_start {
            store.migrate().await?;
        }

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
            store.into_port(),
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
        })
    }

    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    pub fn sandbox_addr(&self) -> Option<SocketAddr> {
        self.sandbox.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
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
        Ok(())
    }
}
