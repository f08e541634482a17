//! The SQLite store: the embedded mode's durable record, in one local file.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::ports::{Inserted, StoreError, VerificationStore};
use domain::{DestinationHash, IdempotencyKey, Purpose, Verification, VerificationId};
use sqlx::Sqlite;
use sqlx::migrate::Migrator;
use sqlx::query::QueryAs;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

use crate::error::{StorageError, is_unique_violation, read_error, unavailable};
use crate::row::{VerificationRow, bind_insert, bind_update, to_millis};
use crate::sql;

/// The SQLite schema, embedded in the binary so the embedded mode needs no files beside it.
static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// SQLite takes one writer at a time; a few connections let reads proceed beside it (WAL)
/// without holding many idle file handles.
const MAX_CONNECTIONS: u32 = 4;

/// How long a statement waits for another connection's write lock before giving up. Writes
/// here are single short statements, so a wait this long means something is wrong.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request waits for a free connection; past it the store reports itself
/// unavailable and the caller fails closed rather than queueing without bound.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// [`VerificationStore`] on SQLite. Cloning is cheap and shares the pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
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

        let pool = if is_in_memory(url) {
            // An in-memory database lives only as long as a connection to it, and each
            // connection would otherwise see its own: keep exactly one, forever.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await
        } else {
            // WAL lets readers run beside the writer. With WAL, `NORMAL` sync never corrupts
            // the database and survives a process crash; only an OS crash or power cut can
            // lose the last commits, which the embedded mode accepts in exchange for not
            // paying an fsync on every write (production runs on PostgreSQL).
            SqlitePoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(
                    options
                        .journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal),
                )
                .await
        }
        .map_err(StorageError::Connect)?;
        Ok(SqliteStore { pool })
    }

    /// Brings the schema up to date. Safe to run on every start and from several processes:
    /// applied migrations are skipped.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(StorageError::Migrate)
    }

    /// Waits for in-flight statements and closes every connection, so the WAL is
    /// checkpointed into the database file before the process exits.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs a query for at most one verification and converts the row back.
    async fn fetch_one_verification(
        &self,
        query: QueryAs<'_, Sqlite, VerificationRow, SqliteArguments>,
    ) -> Result<Option<Verification>, StoreError> {
        let row = query.fetch_optional(&self.pool).await.map_err(read_error)?;
        row.map(Verification::try_from)
            .transpose()
            .map_err(StoreError::from)
    }
}

/// Whether `url` names an in-memory database (`sqlite::memory:`, `:memory:` or
/// `mode=memory`), which needs a pool of its own shape.
fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

#[async_trait]
impl VerificationStore for SqliteStore {
    #[tracing::instrument(
        name = "storage.insert",
        skip_all,
        fields(verification_id = %verification.id, purpose = %verification.purpose)
    )]
    async fn insert(&self, verification: &Verification) -> Result<Inserted, StoreError> {
        let row = VerificationRow::from(verification);
        let error = match bind_insert(sqlx::query(sql::INSERT), row)
            .execute(&self.pool)
            .await
        {
            Ok(_) => return Ok(Inserted::Created),
            Err(error) if is_unique_violation(&error) => error,
            Err(error) => return Err(unavailable(error)),
        };

        // The insert lost to a row that holds the same purpose and key (or, by a bug
        // elsewhere, the same id). Once the unique index refused us, that row is committed,
        // so reading it now sees it; nothing was written by this call.
        if let Some(key) = &verification.idempotency_key
            && let Some(existing) = self
                .find_by_idempotency_key(&verification.purpose, key)
                .await?
        {
            tracing::debug!(
                existing_id = %existing.id,
                "idempotency key already used; returning the first verification"
            );
            return Ok(Inserted::Existing(Box::new(existing)));
        }
        Err(StoreError::Unavailable(format!(
            "verification {} already exists ({error})",
            verification.id
        )))
    }

    #[tracing::instrument(name = "storage.get", skip_all, fields(verification_id = %id))]
    async fn get(&self, id: &VerificationId) -> Result<Option<Verification>, StoreError> {
        self.fetch_one_verification(sqlx::query_as(sql::GET).bind(id.to_string()))
            .await
    }

    #[tracing::instrument(
        name = "storage.find_by_idempotency_key",
        skip_all,
        fields(purpose = %purpose)
    )]
    async fn find_by_idempotency_key(
        &self,
        purpose: &Purpose,
        key: &IdempotencyKey,
    ) -> Result<Option<Verification>, StoreError> {
        self.fetch_one_verification(
            sqlx::query_as(sql::FIND_BY_IDEMPOTENCY_KEY)
                .bind(purpose.as_str().to_owned())
                .bind(key.as_str().to_owned()),
        )
        .await
    }

    #[tracing::instrument(
        name = "storage.find_pending",
        skip_all,
        fields(purpose = %purpose, destination_hash = destination.short())
    )]
    async fn find_pending(
        &self,
        purpose: &Purpose,
        destination: &DestinationHash,
        now: DateTime<Utc>,
    ) -> Result<Option<Verification>, StoreError> {
        self.fetch_one_verification(
            sqlx::query_as(sql::FIND_PENDING)
                .bind(purpose.as_str().to_owned())
                .bind(destination.as_str().to_owned())
                .bind(to_millis(now)),
        )
        .await
    }

    #[tracing::instrument(
        name = "storage.update",
        skip_all,
        fields(
            verification_id = %verification.id,
            expected_version = expected_version,
            version = verification.version
        )
    )]
    async fn update(
        &self,
        verification: &Verification,
        expected_version: u32,
    ) -> Result<(), StoreError> {
        let row = VerificationRow::from(verification);
        let done = bind_update(sqlx::query(sql::UPDATE), row, i64::from(expected_version))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        if done.rows_affected() > 0 {
            return Ok(());
        }

        // Nothing matched: either someone else moved the row on, or it was never there.
        let stored: Option<i64> = sqlx::query_scalar(sql::VERSION_OF)
            .bind(verification.id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(read_error)?;
        match stored {
            Some(stored_version) => {
                tracing::debug!(stored_version, "optimistic update lost to a newer write");
                Err(StoreError::Conflict(verification.id))
            }
            None => Err(StoreError::NotFound(verification.id)),
        }
    }
}

#[cfg(test)]
mod tests;
