//! Starts the embedded gateway on free ports with its own data directory, on SQLite or on a
//! fresh PostgreSQL database of the server `cargo xtask deps up` runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use proto::verify::v1 as pb;
use proto::verify::v1::verify_service_client::VerifyServiceClient;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use verify_service::app::Gateway;
use verify_service::config::{self, Overrides, TwilioEnv};

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates one `#[tokio::test]` per backend for each `async fn name(h: Harness)`.
#[macro_export]
macro_rules! on_both_backends {
    (config = $toml:expr; $($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::harness::Harness::start_with($crate::harness::Backend::Sqlite, $toml).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::harness::Harness::start_with($crate::harness::Backend::Postgres, $toml).await).await;
                }
            )*
        }
    };
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::harness::Harness::start_on($crate::harness::Backend::Sqlite).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::harness::Harness::start_on($crate::harness::Backend::Postgres).await).await;
                }
            )*
        }
    };
}

/// Creates a database of its own for one test and returns its URL. The throwaway server is
/// removed by `cargo xtask deps down`, so the database is not dropped here: a failed test
/// leaves its rows to look at.
pub async fn fresh_postgres_database() -> String {
    testkit::PgDatabase::create("vgit")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
        .url
}

pub struct Harness {
    pub client: VerifyServiceClient<Channel>,
    pub grpc_addr: SocketAddr,
    pub sandbox: String,
    pub http: reqwest::Client,
    pub data_dir: PathBuf,
    pub database_url: String,
    /// `http://…/metrics` of this gateway.
    pub metrics: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_on(Backend::Sqlite).await
    }

    pub async fn start_on(backend: Backend) -> Harness {
        Self::start_with(backend, "").await
    }

    /// Starts the gateway with `toml` layered over the shipped defaults.
    pub async fn start_with(backend: Backend, toml: &str) -> Harness {
        Self::start_against(backend, toml, &TwilioEnv::default()).await
    }

    /// [`Harness::start_with`] with Twilio credentials: the sandbox is off, and `toml` says
    /// where Twilio is (`[twilio] base_url`).
    pub async fn start_against(backend: Backend, toml: &str, twilio: &TwilioEnv) -> Harness {
        let database_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(fresh_postgres_database().await),
        };
        Self::start_at(database_url, toml, twilio).await
    }

    /// [`Harness::start_against`] on the database at `database_url`; `None` is SQLite in
    /// the gateway's data directory.
    pub async fn start_at(database_url: Option<String>, toml: &str, twilio: &TwilioEnv) -> Harness {
        crate::redaction::capture_logs();
        let data_dir = std::env::temp_dir().join(format!("vg-it-{}", uuid::Uuid::new_v4()));
        let database_url = database_url.unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                data_dir.join("verify-gateway.db").display()
            )
        });
        let overrides = Overrides {
            grpc_addr: Some("127.0.0.1:0".parse().expect("addr")),
            sandbox_addr: Some("127.0.0.1:0".parse().expect("addr")),
            webhooks_addr: Some("127.0.0.1:0".parse().expect("addr")),
            metrics_addr: Some("127.0.0.1:0".parse().expect("addr")),
            data_dir: Some(data_dir.clone()),
            database_url: Some(database_url.clone()),
            ..Overrides::default()
        };
        let settings = config::load_from_str(toml, &overrides, twilio).expect("settings");
        let gateway = Gateway::bind(&settings).await.expect("gateway binds");
        let grpc_addr = gateway.grpc_addr().expect("grpc addr");
        // Empty when the gateway calls a Twilio of the test's own.
        let sandbox = gateway
            .sandbox_addr()
            .map(|addr| format!("http://{addr}"))
            .unwrap_or_default();
        let metrics = format!(
            "http://{}/metrics",
            gateway.metrics_addr().expect("metrics are served")
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.run(async {
            let _ = stopped.await;
        }));
        let client = VerifyServiceClient::connect(format!("http://{grpc_addr}"))
            .await
            .expect("client connects");
        Harness {
            client,
            grpc_addr,
            sandbox,
            http: reqwest::Client::new(),
            data_dir,
            database_url,
            metrics,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the gateway and waits for it to finish in-flight work.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("gateway task")
                .expect("gateway ran cleanly");
        }
    }

    pub async fn start_sms(&self, to: &str) -> Result<pb::Verification, tonic::Status> {
        self.start_req(pb::StartVerificationRequest {
            purpose: "login".into(),
            to: to.into(),
            default_region: "US".into(),
            channel: pb::Channel::Sms.into(),
            ..Default::default()
        })
        .await
    }

    pub async fn start_req(
        &self,
        req: pb::StartVerificationRequest,
    ) -> Result<pb::Verification, tonic::Status> {
        let mut c = self.client.clone();
        Ok(c.start_verification(req)
            .await?
            .into_inner()
            .verification
            .expect("verification in response"))
    }

    pub async fn check(
        &self,
        id: &str,
        code: &str,
    ) -> Result<pb::CheckVerificationResponse, tonic::Status> {
        let mut c = self.client.clone();
        Ok(c.check_verification(pb::CheckVerificationRequest {
            id: id.into(),
            code: code.into(),
        })
        .await?
        .into_inner())
    }

    pub async fn get(&self, id: &str) -> Result<pb::Verification, tonic::Status> {
        let mut c = self.client.clone();
        Ok(
            c.get_verification(pb::GetVerificationRequest { id: id.into() })
                .await?
                .into_inner()
                .verification
                .expect("verification"),
        )
    }

    /// The sandbox inbox for `to`, newest first.
    pub async fn inbox(&self, to: &str) -> Vec<serde_json::Value> {
        let url = url::Url::parse_with_params(
            &format!("{}/sandbox/messages", self.sandbox),
            [("to", to)],
        )
        .expect("inbox URL");
        self.http
            .get(url)
            .send()
            .await
            .expect("inbox answers")
            .json()
            .await
            .expect("inbox is JSON")
    }

    pub async fn latest_code(&self, to: &str) -> String {
        let inbox = self.inbox(to).await;
        inbox
            .first()
            .and_then(|m| m["code"].as_str())
            .unwrap_or_else(|| panic!("no message for {to}: {inbox:?}"))
            .to_owned()
    }

    /// The sandbox's destination for a named scenario.
    pub async fn scenario(&self, name: &str) -> String {
        let all: serde_json::Value = self
            .http
            .get(format!("{}/sandbox/scenarios", self.sandbox))
            .send()
            .await
            .expect("scenarios answer")
            .json()
            .await
            .expect("scenarios are JSON");
        all[name]
            .as_str()
            .unwrap_or_else(|| panic!("no scenario {name} in {all}"))
            .to_owned()
    }

    /// Rows in the verifications table, read with plain SQL.
    pub async fn row_count(&self) -> i64 {
        self.count("SELECT COUNT(*) FROM verifications").await
    }

    /// Every verification as (id, idempotency key, status, Twilio id), read with plain SQL.
    pub async fn verifications(&self) -> Vec<(String, Option<String>, String, Option<String>)> {
        use sqlx::Connection;
        const SQL: &str =
            "SELECT id, idempotency_key, CAST(status AS TEXT), provider_sid FROM verifications";
        if self.database_url.starts_with("postgres") {
            let mut conn = sqlx::PgConnection::connect(&self.database_url)
                .await
                .expect("db opens");
            sqlx::query_as(SQL)
                .fetch_all(&mut conn)
                .await
                .expect("rows")
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&self.database_url)
                .await
                .expect("db opens");
            sqlx::query_as(SQL)
                .fetch_all(&mut conn)
                .await
                .expect("rows")
        }
    }

    /// The answer of one `SELECT COUNT(*) …`, run with plain SQL on either backend.
    pub async fn count(&self, count: &'static str) -> i64 {
        use sqlx::Connection;
        if self.database_url.starts_with("postgres") {
            let mut conn = sqlx::PgConnection::connect(&self.database_url)
                .await
                .expect("db opens");
            sqlx::query_scalar(count)
                .fetch_one(&mut conn)
                .await
                .expect("count")
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&self.database_url)
                .await
                .expect("db opens");
            sqlx::query_scalar(count)
                .fetch_one(&mut conn)
                .await
                .expect("count")
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Polls `probe` every 50 ms until it holds, failing with `what` after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !probe().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A wrong code for a given right one (same length, different digits).
pub fn wrong(code: &str) -> String {
    code.chars()
        .map(|c| match c.to_digit(10) {
            Some(d) => char::from_digit((d + 1) % 10, 10).unwrap_or('0'),
            None => c,
        })
        .collect()
}
