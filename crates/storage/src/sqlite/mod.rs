//! The SQLite store: the embedded mode's durable record, in one local file, with its
//! dedupe memory ([`SqliteDedupeStore`]). Statements run on the store's own [`engine`]
//! (rusqlite: one writer thread that commits concurrent writes together, reads on the
//! caller's thread); sqlx's migrator keeps the schema, as on PostgreSQL.

mod engine;
mod repo;
mod rows;

#[cfg(test)]
pub(crate) use engine::CHECKPOINT_EVERY;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use chrono::{DateTime, Utc};
use domain::ports::StoreError;

use crate::abuse::PURGE_BATCH;
use crate::error::StorageError;
use crate::repo::delegate_store;
use crate::retention::{Purged, in_batches};
use crate::row::to_millis;
use crate::sql;
use engine::query;
use engine::{BUSY_TIMEOUT, Engine, Location};
use repo::SqliteRepo;
/// The statements the planner tests read.
#[cfg(test)]
pub(crate) use repo::{
    ACTIVE_BLOCK, CLAIM_OUTBOX, COUNTS_SLICES, LIMITS_SLICES, READ_COUNT, READ_LIMITS,
};

/// The SQLite schema, embedded in the binary so the embedded mode needs no files beside it.
static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// How long the migrator waits for its connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// [`domain::ports::VerificationStore`], [`domain::ports::DeliveryReportStore`],
/// [`domain::ports::Outbox`], [`domain::abuse::RateLimitStore`] and
/// [`domain::abuse::RiskStore`] on SQLite. Cloning is cheap and shares the engine.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    repo: SqliteRepo,
    /// sqlx's view of the same database, for its migrator (and tests that look behind the
    /// store's back); it connects only when used.
    migrations: sqlx::SqlitePool,
}

/// [`domain::events::DedupeStore`] on SQLite, sharing its [`SqliteStore`]'s engine: every
/// process on the database file dedupes together, and handled ids survive restarts. Made
/// by [`SqliteStore::dedupe_store`].
#[derive(Debug, Clone)]
pub struct SqliteDedupeStore {
    repo: SqliteRepo,
    lease: Duration,
}

/// How much work a store did since it opened, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// Read transactions.
    pub reads: u64,
    /// Atomic writes (each one a transaction of its own to its caller).
    pub writes: u64,
    /// Commits: SQLite commits several concurrent writes at once.
    pub commits: u64,
}

impl SqliteStore {
    /// Opens the database at `url`: `sqlite://path/to/file.db?mode=rwc` (the file is created
    /// when missing) or `sqlite::memory:`. Call [`SqliteStore::migrate`] before use.
    pub async fn connect(url: &str) -> Result<SqliteStore, StorageError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(StorageError::InvalidUrl)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let name = options.get_filename().to_string_lossy().into_owned();
        let location = if is_in_memory(url) {
            // sqlx names it `file:sqlx-in-memory-N` in the shared cache: the engine opens
            // that same database, which lives as long as the engine's writer.
            Location::Memory(name)
        } else {
            Location::File(name)
        };
        let engine = tokio::task::spawn_blocking(move || Engine::start(location))
            .await
            .map_err(|e| StorageError::Open(e.to_string()))?
            .map_err(StorageError::Open)?;
        let options = if is_in_memory(url) {
            options
        } else {
            options
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
        };
        let migrations = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        Ok(SqliteStore {
            repo: SqliteRepo {
                engine: Arc::new(engine),
            },
            migrations,
        })
    }

    /// Brings the schema up to date. Safe to run on every start and from several processes:
    /// applied migrations are skipped.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        let migrated = MIGRATOR.run(&self.migrations).await;
        // The engine's connections cache the schema; they see the new one on their next
        // statement (SQLite re-prepares statements whose schema changed).
        migrated.map_err(StorageError::Migrate)
    }

    /// Deletes what is older than `before`: see [`crate::Database::purge_history`]. Each
    /// batch is one job of the writer, so no write waits behind the whole purge.
    pub async fn purge_history(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Purged, StoreError> {
        let batch = i64::from(PURGE_BATCH);
        let bound = crate::retention::first_id_kept(before);
        let (now, before) = (to_millis(now), to_millis(before));
        let engine = &self.repo.engine;
        Ok(Purged {
            verifications: in_batches(|| {
                let bound = bound.clone();
                engine.write(move |conn| {
                    query(
                        conn,
                        sql::PURGE_VERIFICATIONS,
                        &[&bound, &now, &batch],
                        |_| Ok(()),
                    )
                    .map(|rows| rows.len())
                })
            })
            .await?,
            delivery_reports: in_batches(|| {
                engine.write(move |conn| {
                    query(conn, sql::PURGE_REPORTS, &[&before, &batch], |_| Ok(()))
                        .map(|rows| rows.len())
                })
            })
            .await?,
            processed_messages: in_batches(|| {
                engine.write(move |conn| {
                    query(conn, sql::PURGE_PROCESSED, &[&before, &batch], |_| Ok(()))
                        .map(|rows| rows.len())
                })
            })
            .await?,
        })
    }

    /// Runs a trivial read, for readiness probes.
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.repo
            .ping()
            .await
            .map_err(|e| StorageError::NoAnswer(e.to_string()))
    }

    /// How much work the store did since it opened.
    pub fn counts(&self) -> StoreCounts {
        let counters = self.repo.engine.counters();
        StoreCounts {
            reads: counters.reads.load(Ordering::Relaxed),
            writes: counters.writes.load(Ordering::Relaxed),
            commits: counters.commits.load(Ordering::Relaxed),
        }
    }

    /// The dedupe memory of message consumers on this database: a claim holds for `lease`
    /// (capped at a hundred years) unless completed or released first, after which another
    /// delivery of the message may claim it. Leases run on SQLite's clock.
    pub fn dedupe_store(&self, lease: Duration) -> SqliteDedupeStore {
        SqliteDedupeStore {
            repo: self.repo.clone(),
            lease,
        }
    }

    /// Lets the queued writes finish and closes every connection, so the WAL is
    /// checkpointed into the database file before the process exits.
    pub async fn close(&self) {
        self.migrations.close().await;
        let engine = Arc::clone(&self.repo.engine);
        let _ = tokio::task::spawn_blocking(move || engine.close()).await;
    }

    /// The pool, for tests that look at the database behind the store's back.
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &sqlx::SqlitePool {
        &self.migrations
    }

    /// Applies the migrations up to `version` only, for tests that need an older schema.
    #[cfg(test)]
    pub(crate) async fn migrate_to(&self, version: i64) -> Result<(), StorageError> {
        MIGRATOR
            .run_to(version, &self.migrations)
            .await
            .map_err(StorageError::Migrate)
    }
}

/// Whether `url` names an in-memory database (`sqlite::memory:`, `:memory:` or
/// `mode=memory`), which needs a pool of its own shape.
fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

delegate_store!(SqliteStore, SqliteDedupeStore);
