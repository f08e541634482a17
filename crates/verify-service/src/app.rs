//! Start-up composition: builds the adapters from settings, binds the listeners and runs the
//! embedded sandbox and the gRPC server until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Settings, Upstream};
use crate::keys;
use crate::service::{SystemClock, VerifyCore};

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
        let store = storage::SqliteStore::connect(&settings.database_url)
            .await
            .context("opening the store")?;
        store.migrate().await.context("migrating the store")?;

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
            Arc::new(store),
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
