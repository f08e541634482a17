//! The SQLite store: the embedded mode's durable record, in one local file.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Sqlite;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::error::StorageError;
use crate::repo::{Dialect, Repo, delegate_store};

/// The SQLite schema, embedded in the binary so the embedded mode needs no files beside it.
static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// SQLite takes one writer at a time; a few connections let reads proceed beside it (WAL)
/// without holding many idle file handles.
const MAX_CONNECTIONS: u32 = 4;

/// How long a statement waits for another connection's write lock before giving up. Writes
/// here are a statement or a transaction of a few indexed statements, so a wait this long
/// means something is wrong.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request waits for a free connection; past it the store reports itself
/// unavailable and the caller fails closed rather than queueing without bound.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// [`domain::ports::VerificationStore`] on SQLite. Cloning is cheap and shares the pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    repo: Repo<Sqlite>,
}

impl Dialect for Sqlite {
    /// `IMMEDIATE` takes the write lock at `BEGIN` (waiting up to the busy timeout), so an
    /// insert that collides reads the rows it collided with before any other writer can
    /// change them, and the transaction never has to upgrade a read snapshot to a write,
    /// which fails at once with `SQLITE_BUSY_SNAPSHOT` instead of waiting.
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
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
        Ok(SqliteStore {
            repo: Repo::new(pool),
        })
    }

    /// Brings the schema up to date. Safe to run on every start and from several processes:
    /// applied migrations are skipped.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        MIGRATOR
            .run(&self.repo.pool)
            .await
            .map_err(StorageError::Migrate)
    }

    /// Takes a connection from the pool and pings the server over it.
    pub async fn ping(&self) -> Result<(), StorageError> {
        use sqlx::Connection;
        let mut connection = self
            .repo
            .pool
            .acquire()
            .await
            .map_err(StorageError::Unavailable)?;
        connection.ping().await.map_err(StorageError::Unavailable)
    }

    /// Waits for in-flight statements and closes every connection, so the WAL is
    /// checkpointed into the database file before the process exits.
    pub async fn close(&self) {
        self.repo.pool.close().await;
    }

    /// The pool, for tests that look at the database behind the store's back.
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &sqlx::SqlitePool {
        &self.repo.pool
    }
}

/// Whether `url` names an in-memory database (`sqlite::memory:`, `:memory:` or
/// `mode=memory`), which needs a pool of its own shape.
fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

delegate_store!(SqliteStore);
