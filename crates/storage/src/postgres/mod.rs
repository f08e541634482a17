//! The PostgreSQL store: the distributed mode's durable record, shared by every replica,
//! with its dedupe memory ([`PostgresDedupeStore`]).

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgQueryResult};
use sqlx::{ConnectOptions, PgPool, Postgres};
use tracing::log::LevelFilter;

use chrono::{DateTime, Utc};
use domain::ports::StoreError;

use crate::abuse::PURGE_BATCH;
use crate::error::{StorageError, unavailable};
use crate::repo::{Dialect, Repo, delegate_store};
use crate::retention::{Purged, in_batches};
use crate::row::to_millis;
use crate::sql::{self, outbox_columns};

mod lanes;

/// The batched statements, for the tests that run them directly.
#[cfg(test)]
pub(crate) use lanes::{
    GET_MANY, GuardedUpdates, INSERT_MANY, Inserts, Reads, Signals, UPDATE_LIMITED_MANY,
    UPDATE_MANY, Updates,
};

/// The PostgreSQL schema, embedded in the binary so a deployment needs no files beside it.
static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/postgres");

/// Connections per process, besides the lanes' four (`lanes::connect`). Every store call is
/// one short statement or a transaction of a few indexed statements, so a handful of
/// connections serve many concurrent requests; with several replicas the total (20 each)
/// must stay well below the server's `max_connections` (100 by default).
const MAX_CONNECTIONS: u32 = 16;

/// How long a request waits for a free connection; past it the store reports itself
/// unavailable and the caller fails closed rather than queueing without bound.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The server cancels a statement running longer than this (`statement_timeout`), so a
/// lock held elsewhere or a stuck server costs a request an error, not a connection held
/// forever. Migrations are exempt: building an index on a large table may take longer.
const STATEMENT_TIMEOUT: &str = "5s";

/// [`domain::ports::VerificationStore`], [`domain::ports::DeliveryReportStore`],
/// [`domain::ports::Outbox`], [`domain::abuse::RateLimitStore`] and
/// [`domain::abuse::RiskStore`] on PostgreSQL. Cloning is cheap and shares the pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    repo: Repo<Postgres>,
    /// The lanes' own connections (see [`lanes::connect`]).
    lane_pool: PgPool,
}

/// [`domain::events::DedupeStore`] on PostgreSQL, sharing its [`PostgresStore`]'s pool:
/// consumers on every replica dedupe together, and handled ids survive restarts. Made by
/// [`PostgresStore::dedupe_store`].
#[derive(Debug, Clone)]
pub struct PostgresDedupeStore {
    repo: Repo<Postgres>,
    lease: Duration,
}

/// Now on the server's clock, in milliseconds since the Unix epoch: the statement's start,
/// so one statement sees one value, and every replica the same clock.
macro_rules! now_millis {
    () => {
        "(extract(epoch FROM statement_timestamp()) * 1000)::bigint"
    };
}

/// The blocks in force at `$1` on the targets of `$2` ([`Dialect::ACTIVE_BLOCKS`]).
macro_rules! active_blocks {
    () => {
        concat!(
            "SELECT b.* FROM json_to_recordset($2::json) AS input(kind text, value text)",
            " CROSS JOIN LATERAL (SELECT ",
            sql::block_columns!(),
            " FROM risk_blocks",
            " WHERE kind = input.kind AND value = input.value AND expires_at > $1 LIMIT 1) AS b"
        )
    };
}

impl Dialect for Postgres {
    /// `READ COMMITTED` (PostgreSQL's default, named so a server configured otherwise does
    /// not change it): each statement sees the latest commits, which is what the re-read
    /// after a collision needs, and `INSERT … ON CONFLICT` waits for a concurrent inserter
    /// of the same key to finish before deciding. Stricter levels would only turn those
    /// waits into serialization failures to retry.
    const BEGIN_WRITE: &'static str = "BEGIN ISOLATION LEVEL READ COMMITTED";

    /// `FOR UPDATE SKIP LOCKED` locks the rows it picks and passes over rows a concurrent
    /// claim holds, so relays on several replicas take disjoint batches without waiting for
    /// each other; a row a concurrent claim leased and committed meanwhile is re-checked
    /// against `next_attempt_at <= $1` on its new version and dropped. The locking select is
    /// a CTE because a CTE with row locks is evaluated once, never inlined.
    const CLAIM_OUTBOX: &'static str = concat!(
        "WITH due AS (",
        "SELECT id FROM outbox WHERE published_at IS NULL AND next_attempt_at <= $1",
        " ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED)",
        " UPDATE outbox SET next_attempt_at = $2 WHERE id IN (SELECT id FROM due)",
        " RETURNING ",
        outbox_columns!()
    );

    /// The ids come as a `BIGINT[]`.
    const MARK_PUBLISHED: &'static str = "UPDATE outbox SET published_at = $2 \
         WHERE published_at IS NULL AND id = ANY($1)";

    /// A concurrent claim of the same new id waits for this one's insert to commit, then
    /// finds the lease running and returns nothing.
    const CLAIM_MESSAGE: &'static str = sql::claim_message!(now_millis!());

    const COMPLETE_MESSAGE: &'static str = sql::complete_message!(now_millis!());

    /// The take is the server-side function `take_rate_limits` (migrations 0005 and 0007), the one
    /// copy of its upsert here; this is it without `all_or_none`, one row per key.
    const TAKE_LIMITS: &'static str = "SELECT k.key, k.tat, k.allowed, k.at \
         FROM take_rate_limits($1, $2::json, FALSE) AS t, \
         unnest(t.taken_keys, t.taken_tats, t.taken_allowed, t.taken_at) \
         AS k(key, tat, allowed, at)";

    /// One statement, so one round trip, and the limits' rows are locked for server time
    /// only: the takes, all or none, then the insert when they were all allowed. The
    /// function runs once, in the CTE (a CTE calling a volatile function is evaluated once,
    /// never inlined).
    const INSERT_LIMITED: &'static str = concat!(
        "WITH taken AS (SELECT take_rate_limits($28, $29::json, TRUE) AS t),",
        " written AS (INSERT INTO verifications (",
        sql::columns!(),
        ") SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,",
        " $18, $19, $20, $21, $22, $23, $24, $25, $26, $27",
        " FROM taken WHERE (taken.t).all_allowed",
        " ON CONFLICT DO NOTHING RETURNING id)",
        " SELECT (t).taken_keys, (t).taken_tats, (t).taken_allowed, (t).taken_at,",
        " EXISTS (SELECT 1 FROM written) AS written FROM taken"
    );

    /// One statement, as [`Dialect::INSERT_LIMITED`]. The row is locked first, if it
    /// still has the expected version, and the limits are taken only then (a function in
    /// the select list of an empty `target` is never called): a lost update takes nothing.
    /// The update then finds the row it locked unchanged.
    const UPDATE_LIMITED: &'static str = concat!(
        "WITH target AS (SELECT id FROM verifications WHERE id = $1 AND version = $2",
        " FOR UPDATE),",
        " taken AS (SELECT take_rate_limits($26, $27::json, TRUE) AS t FROM target),",
        " written AS (UPDATE verifications SET ",
        sql::update_set!(),
        " FROM taken WHERE verifications.id = $1 AND verifications.version = $2",
        " AND (taken.t).all_allowed RETURNING verifications.id)",
        " SELECT (t).taken_keys, (t).taken_tats, (t).taken_allowed, (t).taken_at,",
        " EXISTS (SELECT 1 FROM written) AS written FROM taken"
    );

    const READ_LIMITS: &'static str =
        sql::read_limits!("json_to_recordset($1::json) AS input(key text)");

    const ADD_COUNTS: &'static str = sql::add_counts!(
        "json_to_recordset($2::json) AS input(key text, attempts bigint, approved bigint)"
    );

    const READ_COUNTS: &'static str =
        sql::read_counts!("json_to_recordset($1::json) AS input(i bigint, key text, since bigint)");

    /// A lookup per target (see `sql` for why not a join): `LIMIT 1`, which the primary
    /// key implies anyway, keeps the planner from flattening the lateral subquery into one.
    const ACTIVE_BLOCKS: &'static str = active_blocks!();

    /// [`Dialect::READ_COUNTS`] (`$3`), [`Dialect::ACTIVE_BLOCKS`] (`$1`, `$2`) and
    /// [`crate::sql::FLUSHED`] (`$4`, as a row with `i = -1` and the number in
    /// `attempts`) as one statement, one round trip: a start reads them before it is
    /// scored.
    const READ_SIGNALS: &'static str = concat!(
        "SELECT c.i, c.attempts, c.approved, NULL::text AS kind, NULL::text AS value,",
        " NULL::text AS reason, NULL::text AS detail, NULL::text AS source,",
        " NULL::boolean AS shadow, NULL::bigint AS created_at, NULL::bigint AS expires_at",
        " FROM (",
        sql::read_counts!("json_to_recordset($3::json) AS input(i bigint, key text, since bigint)"),
        ") AS c UNION ALL",
        " SELECT NULL, NULL, NULL, b.kind, b.value, b.reason, b.detail, b.source, b.shadow,",
        " b.created_at, b.expires_at FROM (",
        active_blocks!(),
        ") AS b UNION ALL",
        " SELECT -1, f.seq, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL",
        " FROM risk_flushes AS f WHERE f.replica = $4"
    );

    /// Waits for a concurrent writer of the row to finish, then holds it until commit; in
    /// `READ COMMITTED` the row read is its latest committed version.
    const LOCK_BLOCK: &'static str = concat!(sql::block_state!(), " FOR UPDATE");

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    type IdList = Vec<i64>;

    fn id_list(ids: &[i64]) -> Vec<i64> {
        ids.to_vec()
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`, with any of
    /// libpq's URL parameters sqlx understands). One connection is opened now, so a wrong
    /// URL or an unreachable server is reported here rather than on the first request.
    /// Call [`PostgresStore::migrate`] before use.
    ///
    /// TLS follows libpq's `sslmode` (rustls, with the Mozilla root certificates unless
    /// `sslrootcert` names a CA file): `verify-full` checks the certificate and host name,
    /// `require` encrypts without checking, `prefer` (the default) tries TLS first.
    pub async fn connect(url: &str) -> Result<PostgresStore, StorageError> {
        let mut options = PgConnectOptions::from_str(url)
            .map_err(StorageError::InvalidUrl)?
            .options([("statement_timeout", STATEMENT_TIMEOUT)])
            // sqlx would log every statement at DEBUG, and decides whether to by asking the
            // `log` and `tracing` filters after each one (then, when either says yes,
            // summarises the SQL): about 1.5% of a request's CPU for a line nobody reads.
            // Statements slower than a second are still logged, as warnings.
            .log_statements(LevelFilter::Off);
        if options.get_application_name().is_none() {
            // Names the gateway's sessions in `pg_stat_activity`.
            options = options.application_name("verify-gateway");
        }
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // sqlx would otherwise ping every connection on every checkout, one extra round
            // trip per request; a connection that died meanwhile fails its statement instead,
            // which the caller treats like any unavailable store (fail closed) and the pool
            // then replaces.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(StorageError::Connect)?;
        let lane_pool = lanes::connect(options);
        Ok(PostgresStore {
            repo: Repo::new(lanes::spawn(&lane_pool), pool),
            lane_pool,
        })
    }

    /// Brings the schema up to date. Safe to run on every start and from several replicas at
    /// once: sqlx holds an advisory lock while migrating, and applied migrations are skipped.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        // On a connection of its own without the statement timeout (of two `-c` settings
        // the later wins), which then closes instead of going on to serve requests.
        let options = (*self.repo.pool.connect_options())
            .clone()
            .options([("statement_timeout", "0")]);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(StorageError::Connect)?;
        let migrated = MIGRATOR.run(&pool).await;
        pool.close().await;
        migrated.map_err(StorageError::Migrate)
    }

    /// Takes a connection from the pool and pings the server over it.
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.repo.ping().await
    }

    /// Deletes what is older than `before`: see [`crate::Database::purge_history`].
    pub async fn purge_history(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Purged, StoreError> {
        let pool = &self.repo.pool;
        let batch = i64::from(PURGE_BATCH);
        let (bound, now, before) = (
            crate::retention::first_id_kept(before),
            to_millis(now),
            to_millis(before),
        );
        let deleted = |ids: Vec<sqlx::postgres::PgRow>| ids.len();
        // The purges whose parameters are the time bound and the batch.
        let older_than = |statement: &'static str| {
            in_batches(move || async move {
                sqlx::query(statement)
                    .bind(before)
                    .bind(batch)
                    .fetch_all(pool)
                    .await
                    .map(deleted)
                    .map_err(unavailable)
            })
        };
        Ok(Purged {
            verifications: in_batches(|| async {
                sqlx::query(sql::PURGE_VERIFICATIONS)
                    .bind(&bound)
                    .bind(now)
                    .bind(batch)
                    .fetch_all(pool)
                    .await
                    .map(deleted)
                    .map_err(unavailable)
            })
            .await?,
            delivery_reports: older_than(sql::PURGE_REPORTS).await?,
            processed_messages: older_than(sql::PURGE_PROCESSED).await?,
        })
    }

    /// The dedupe memory of message consumers on this database: a claim holds for `lease`
    /// (capped at a hundred years) unless completed or released first, after which another
    /// delivery of the message may claim it. Leases run on the server's clock, so replicas'
    /// clocks need not agree.
    pub fn dedupe_store(&self, lease: Duration) -> PostgresDedupeStore {
        PostgresDedupeStore {
            repo: self.repo.clone(),
            lease,
        }
    }

    /// Waits for in-flight statements and closes every connection.
    pub async fn close(&self) {
        self.repo.pool.close().await;
        self.lane_pool.close().await;
    }

    /// The pool, for tests that look at the database behind the store's back.
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &sqlx::PgPool {
        &self.repo.pool
    }

    /// The lanes' pool, for tests of the plans their sessions cache.
    #[cfg(test)]
    pub(crate) fn lane_pool(&self) -> &sqlx::PgPool {
        &self.lane_pool
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

delegate_store!(PostgresStore, PostgresDedupeStore);
