//! The SQLite store: the embedded mode's durable record, in one local file, with its
//! dedupe memory ([`SqliteDedupeStore`]).

use std::str::FromStr;
use std::time::Duration;

use sqlx::Sqlite;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};

use crate::error::StorageError;
use crate::repo::{Dialect, Repo, delegate_store};
use crate::sql::{self, outbox_columns};

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

/// [`domain::ports::VerificationStore`], [`domain::ports::DeliveryReportStore`],
/// [`domain::ports::Outbox`], [`domain::abuse::RateLimitStore`] and
/// [`domain::abuse::RiskStore`] on SQLite. Cloning is cheap and shares the pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    repo: Repo<Sqlite>,
}

/// [`domain::events::DedupeStore`] on SQLite, sharing its [`SqliteStore`]'s pool: every
/// process on the database file dedupes together, and handled ids survive restarts. Made
/// by [`SqliteStore::dedupe_store`].
#[derive(Debug, Clone)]
pub struct SqliteDedupeStore {
    repo: Repo<Sqlite>,
    lease: Duration,
}

/// Now on SQLite's clock, in milliseconds since the Unix epoch (julianday arithmetic, which
/// every SQLite version has). One statement sees one value.
macro_rules! now_millis {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    };
}

impl Dialect for Sqlite {
    /// `IMMEDIATE` takes the write lock at `BEGIN` (waiting up to the busy timeout), so an
    /// insert that collides reads the rows it collided with before any other writer can
    /// change them, and the transaction never has to upgrade a read snapshot to a write,
    /// which fails at once with `SQLITE_BUSY_SNAPSHOT` instead of waiting.
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";

    /// SQLite has no row locks: the claim runs under the write lock of
    /// [`Dialect::BEGIN_WRITE`], so a concurrent claim starts after this one committed and
    /// finds the rows leased.
    const CLAIM_OUTBOX: &'static str = concat!(
        "UPDATE outbox SET next_attempt_at = $2 WHERE id IN (",
        "SELECT id FROM outbox WHERE published_at IS NULL AND next_attempt_at <= $1",
        " ORDER BY next_attempt_at, id LIMIT $3)",
        " RETURNING ",
        outbox_columns!()
    );

    /// The ids come as a JSON array, which `json_each` turns into rows.
    const MARK_PUBLISHED: &'static str = "UPDATE outbox SET published_at = $2 \
         WHERE published_at IS NULL AND id IN (SELECT value FROM json_each($1))";

    const CLAIM_MESSAGE: &'static str = sql::claim_message!(now_millis!());

    const COMPLETE_MESSAGE: &'static str = sql::complete_message!(now_millis!());

    /// `max` with two arguments is SQLite's scalar maximum.
    const TAKE_LIMITS: &'static str = sql::take_limits!(
        "(SELECT json_extract(value, '$.key') AS key,
          json_extract(value, '$.interval_ms') AS interval_ms,
          json_extract(value, '$.period_ms') AS period_ms
          FROM json_each($2)) AS input",
        "max"
    );

    const READ_LIMITS: &'static str = sql::read_limits!(
        "(SELECT json_extract(value, '$.key') AS key FROM json_each($1)) AS input"
    );

    const ADD_COUNTS: &'static str = sql::add_counts!(
        "(SELECT json_extract(value, '$.key') AS key,
          json_extract(value, '$.attempts') AS attempts,
          json_extract(value, '$.approved') AS approved
          FROM json_each($2)) AS input"
    );

    const READ_COUNTS: &'static str = sql::read_counts!(
        "(SELECT json_extract(value, '$.i') AS i,
          json_extract(value, '$.key') AS key,
          json_extract(value, '$.since') AS since
          FROM json_each($1)) AS input"
    );

    /// SQLite's planner looks each target up in the primary key.
    const ACTIVE_BLOCKS: &'static str = concat!(
        "SELECT ",
        sql::block_columns!(),
        " FROM risk_blocks WHERE expires_at > $1 AND (kind, value) IN (",
        "SELECT json_extract(value, '$.kind'), json_extract(value, '$.value')",
        " FROM json_each($2))"
    );

    /// SQLite has no row locks: [`Dialect::BEGIN_WRITE`] holds the database's write lock.
    const LOCK_BLOCK: &'static str = sql::block_state!();

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    /// A JSON array of the ids, e.g. `[1,2,3]`.
    type IdList = String;

    fn id_list(ids: &[i64]) -> String {
        let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
        format!("[{}]", ids.join(","))
    }
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
        self.repo.ping().await
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

    /// Applies the migrations up to `version` only, for tests that need an older schema.
    #[cfg(test)]
    pub(crate) async fn migrate_to(&self, version: i64) -> Result<(), StorageError> {
        MIGRATOR
            .run_to(version, &self.repo.pool)
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
