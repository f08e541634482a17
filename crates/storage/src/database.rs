//! [`Database`]: the store a URL names, opened, migrated, probed and closed the same way
//! whichever backend it is, so each service composes it without knowing the backend.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::abuse::{RateLimitStore, RiskStore};
use domain::events::DedupeStore;
use domain::ports::{DeliveryReportStore, Outbox, StoreError, VerificationStore};

use crate::error::StorageError;
use crate::postgres::PostgresStore;
use crate::sqlite::SqliteStore;

/// SQLite (the embedded mode) or PostgreSQL (shared by replicas), chosen by URL scheme.
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Database {
    /// Opens `sqlite:…` or `postgres://…` / `postgresql://…`. Nothing is migrated here:
    /// call [`Database::migrate`] (or let a separate migration step do it).
    pub async fn open(url: &str) -> Result<Database, StorageError> {
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Database::Sqlite(SqliteStore::connect(url).await?)),
            "postgres" | "postgresql" => Ok(Database::Postgres(PostgresStore::connect(url).await?)),
            other => Err(StorageError::UnsupportedScheme(other.to_owned())),
        }
    }

    /// Which backend this is, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    }

    /// Brings the schema of this backend up to date; safe to run concurrently.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        match self {
            Database::Sqlite(s) => s.migrate().await,
            Database::Postgres(s) => s.migrate().await,
        }
    }

    /// One round trip to the database, for readiness probes.
    pub async fn ping(&self) -> Result<(), StorageError> {
        match self {
            Database::Sqlite(s) => s.ping().await,
            Database::Postgres(s) => s.ping().await,
        }
    }

    /// Deletes the history older than `before`: verifications created before it that are
    /// over (a pending one only once past its expiry at `now`), delivery reports received
    /// before it and the consumers' memory of messages they finished before it. In
    /// batches of a thousand rows, each its own statement, so nothing waits long behind it.
    pub async fn purge_history(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<crate::Purged, StoreError> {
        match self {
            Database::Sqlite(s) => s.purge_history(before, now).await,
            Database::Postgres(s) => s.purge_history(before, now).await,
        }
    }

    /// The verification store port over this database (sharing its pool).
    pub fn verifications(&self) -> Arc<dyn VerificationStore> {
        match self {
            Database::Sqlite(s) => Arc::new(s.clone()),
            Database::Postgres(s) => Arc::new(s.clone()),
        }
    }

    /// The delivery report port over this database (sharing its pool).
    pub fn delivery_reports(&self) -> Arc<dyn DeliveryReportStore> {
        match self {
            Database::Sqlite(s) => Arc::new(s.clone()),
            Database::Postgres(s) => Arc::new(s.clone()),
        }
    }

    /// The transactional outbox over this database (sharing its pool), for the relays
    /// that publish it and for events queued without a delivery report.
    pub fn outbox(&self) -> Arc<dyn Outbox> {
        match self {
            Database::Sqlite(s) => Arc::new(s.clone()),
            Database::Postgres(s) => Arc::new(s.clone()),
        }
    }

    /// The rate limiter's state over this database (sharing its pool): every process on
    /// the database enforces one limit per key.
    pub fn rate_limits(&self) -> Arc<dyn RateLimitStore> {
        match self {
            Database::Sqlite(s) => Arc::new(s.clone()),
            Database::Postgres(s) => Arc::new(s.clone()),
        }
    }

    /// Fraud scoring's counters and blocks over this database (sharing its pool).
    pub fn risk_store(&self) -> Arc<dyn RiskStore> {
        match self {
            Database::Sqlite(s) => Arc::new(s.clone()),
            Database::Postgres(s) => Arc::new(s.clone()),
        }
    }

    /// The dedupe memory of message consumers over this database (sharing its pool), with
    /// claims that hold for `lease` unless completed or released first. Every process on
    /// the database dedupes together.
    pub fn dedupe_store(&self, lease: Duration) -> Arc<dyn DedupeStore> {
        match self {
            Database::Sqlite(s) => Arc::new(s.dedupe_store(lease)),
            Database::Postgres(s) => Arc::new(s.dedupe_store(lease)),
        }
    }

    /// How much work the store did since it opened: SQLite counts its own transactions;
    /// on PostgreSQL the server does (`pg_stat_database`), so this is `None`.
    pub fn counts(&self) -> Option<crate::StoreCounts> {
        match self {
            Database::Sqlite(s) => Some(s.counts()),
            Database::Postgres(_) => None,
        }
    }

    /// Waits for in-flight statements and closes every connection.
    pub async fn close(&self) {
        match self {
            Database::Sqlite(s) => s.close().await,
            Database::Postgres(s) => s.close().await,
        }
    }
}
