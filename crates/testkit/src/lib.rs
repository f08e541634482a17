//! Test support shared by the crates whose tests need the real PostgreSQL and RabbitMQ that
//! `cargo xtask deps up` runs: where they are, and a PostgreSQL database of its own per test.
//!
//! A test that needs them and cannot reach them fails with the command to run; it never
//! skips. Only ever a dev-dependency (the tidy test checks). A test that stops PostgreSQL
//! runs a [`PrivatePostgres`] of its own.

mod private_postgres;

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

pub use private_postgres::{PrivatePostgres, StopMode};

/// What a test says when PostgreSQL or RabbitMQ is missing; CI must never pass without them.
pub const NOT_REACHABLE: &str = "run `cargo xtask deps up` (PostgreSQL and RabbitMQ on loopback)";

/// How long finding out that a server is not there may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A variable from the environment, else from `<workspace root>/.tools/deps.env`, which
/// `cargo xtask deps up` writes.
pub fn deps_var(name: &str) -> Option<String> {
    if let Ok(value) = std::env::var(name)
        && !value.trim().is_empty()
    {
        return Some(value);
    }
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/deps.env");
    let prefix = format!("{name}=");
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find_map(|line| line.trim().strip_prefix(&prefix).map(str::to_owned))
}

/// The PostgreSQL server: a `postgres://` `DATABASE_URL` from the environment, else the
/// one in `.tools/deps.env`.
pub fn postgres_server_url() -> anyhow::Result<String> {
    let is_postgres =
        |url: &str| url.starts_with("postgres://") || url.starts_with("postgresql://");
    if let Ok(url) = std::env::var("DATABASE_URL")
        && is_postgres(&url)
    {
        return Ok(url);
    }
    // The environment may name SQLite (the embedded default); the file names the server.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/deps.env");
    std::fs::read_to_string(&file)
        .ok()
        .and_then(|text| {
            text.lines()
                .filter_map(|line| line.trim().strip_prefix("DATABASE_URL="))
                .find(|url| is_postgres(url))
                .map(str::to_owned)
        })
        .with_context(|| format!("PostgreSQL: no DATABASE_URL and none in {}", file.display()))
        .context(NOT_REACHABLE)
}

/// The RabbitMQ broker: `AMQP_URL`.
pub fn amqp_url() -> anyhow::Result<String> {
    deps_var("AMQP_URL")
        .context("RabbitMQ: AMQP_URL is not set")
        .context(NOT_REACHABLE)
}

/// The `ctl` script of the throwaway broker: `$RABBITMQ_CTL rabbitmqctl stop_app`.
pub fn rabbitmq_ctl() -> anyhow::Result<String> {
    deps_var("RABBITMQ_CTL")
        .context("RabbitMQ: RABBITMQ_CTL is not set")
        .context(NOT_REACHABLE)
}

/// Runs `$RABBITMQ_CTL rabbitmqctl <action>` (`stop_app`, `start_app`) off the async
/// threads; panics with the reason when it cannot run or fails.
pub async fn rabbitmqctl(action: &'static str) {
    let ctl = rabbitmq_ctl().unwrap_or_else(|e| panic!("{e:#}"));
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&ctl)
            .args(["rabbitmqctl", "-q", action])
            .status()
    })
    .await
    .expect("rabbitmqctl task")
    .unwrap_or_else(|error| panic!("cannot run `$RABBITMQ_CTL rabbitmqctl {action}`: {error}"));
    assert!(status.success(), "`rabbitmqctl {action}` failed: {status}");
}

/// A connection to the server's own database, for creating and dropping test databases.
async fn admin(url: &str) -> anyhow::Result<PgConnection> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(error)) => Err(anyhow::Error::new(error)
            .context("PostgreSQL does not answer")
            .context(NOT_REACHABLE)),
        Err(_) => Err(
            anyhow::anyhow!("PostgreSQL: no answer in {CONNECT_TIMEOUT:?}").context(NOT_REACHABLE),
        ),
    }
}

/// A database of its own on the test server; [`PgDatabase::drop_database`] removes it.
#[derive(Debug)]
pub struct PgDatabase {
    admin_url: String,
    name: String,
    /// The URL of the new database.
    pub url: String,
}

impl PgDatabase {
    /// `CREATE DATABASE <prefix>_<uuid>` on the server of [`postgres_server_url`].
    pub async fn create(prefix: &str) -> anyhow::Result<PgDatabase> {
        let admin_url = postgres_server_url()?;
        let mut conn = admin(&admin_url).await?;
        // Hex digits only after a fixed prefix: no quoting, within PostgreSQL's 63 bytes.
        let prefix: String = prefix
            .chars()
            .filter(|c| c.is_ascii_lowercase() || *c == '_')
            .take(16)
            .collect();
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating database {name}"))?;
        conn.close().await?;
        let mut url = url::Url::parse(&admin_url).context("DATABASE_URL is not a URL")?;
        url.set_path(&format!("/{name}"));
        Ok(PgDatabase {
            admin_url,
            name,
            url: url.into(),
        })
    }

    /// Best effort: a database left behind on the throwaway server costs only disk.
    pub async fn drop_database(&self) {
        let result = async {
            let mut conn = admin(&self.admin_url).await?;
            // FORCE ends sessions a failed test may have left open (PostgreSQL 13+).
            let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            sqlx::raw_sql(AssertSqlSafe(drop))
                .execute(&mut conn)
                .await?;
            conn.close().await?;
            anyhow::Ok(())
        }
        .await;
        if let Err(error) = result {
            eprintln!("could not drop test database {}: {error:#}", self.name);
        }
    }
}
