//! One fresh database per test, on either backend, and the raw access tests need behind the
//! store's back (counting rows, planting rows the store would refuse, reading every cell,
//! asking the planner).
//!
//! SQLite gets a new file in the temp directory (several connections, like the embedded
//! mode); PostgreSQL gets `CREATE DATABASE t_<uuid>` on the server `cargo xtask deps up`
//! runs ([`testkit::PgDatabase`]), dropped when the test ends, also when it panics.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use domain::ports::VerificationStore;
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Database as SqlxDatabase, Encode, Row, Type};

use crate::row::{VerificationRow, bind_insert};
use crate::{Database, PostgresStore, SqliteStore, sql};
pub(crate) use testkit::PgDatabase;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// The schema a test starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Schema {
    /// Every migration applied.
    Latest,
    /// The last schema before delivery reports (no fallback columns, no outbox): what a
    /// database written by the previous release holds.
    BeforeDeliveryReports,
    /// The last schema before abuse protection (no `risk`, no `blocked`, no limiter or
    /// scoring tables).
    BeforeAbuse,
    /// The last schema before destination ciphertexts were bound to their rows.
    BeforeBinding,
}

impl Schema {
    /// The last migration of this schema on `backend`, `None` for all.
    fn version(self, backend: Backend) -> Option<i64> {
        match (self, backend) {
            (Schema::Latest, _) => None,
            (Schema::BeforeDeliveryReports, Backend::Sqlite) => Some(3),
            (Schema::BeforeDeliveryReports, Backend::Postgres) => Some(1),
            (Schema::BeforeAbuse, Backend::Sqlite) => Some(5),
            (Schema::BeforeAbuse, Backend::Postgres) => Some(3),
            (Schema::BeforeBinding, _) => Some(10),
        }
    }
}

/// The tables whose every cell the plaintext scan reads.
pub(crate) const TABLES: [&str; 7] = [
    "verifications",
    "delivery_reports",
    "outbox",
    "processed_messages",
    "rate_limits",
    "risk_counters",
    "risk_blocks",
];

/// The insert of the release before abuse protection: every column of today but `risk` and
/// `owner`, so [`bind_insert`] binds `$1` to `$25` of it and the unused `risk` and `owner`
/// last (the caller makes sure they are the defaults, which that release could not write).
pub(crate) const INSERT_BEFORE_ABUSE: &str = "INSERT INTO verifications (\
     id, purpose, channel, status, provider_sid, destination_ciphertext, \
     destination_key_id, destination_hash, to_masked, identity, idempotency_key, sends, \
     checks, max_sends, max_checks, failure_code, created_at, updated_at, expires_at, version, \
     allow_fallback, channels_tried, fallback_reason, delivery_status, trace_parent) \
     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
     $19, $20, $21, $22, $23, $24, $25 WHERE $26 IS NULL AND $27 = ''";

/// The insert of the release before owners: every column of today but `owner`, so
/// [`bind_insert`] binds `$1` to `$26` of it and the unused `owner` last (which must be
/// empty, the default that release's rows get).
pub(crate) const INSERT_BEFORE_OWNER: &str = "INSERT INTO verifications (\
     id, purpose, channel, status, provider_sid, destination_ciphertext, \
     destination_key_id, destination_hash, to_masked, identity, idempotency_key, sends, \
     checks, max_sends, max_checks, failure_code, created_at, updated_at, expires_at, version, \
     allow_fallback, channels_tried, fallback_reason, delivery_status, trace_parent, risk) \
     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
     $19, $20, $21, $22, $23, $24, $25, $26 WHERE $27 = ''";

/// The insert of the first release, before the fallback columns: `$1` to `$20` as in
/// [`bind_insert_before_delivery_reports`].
pub(crate) const INSERT_BEFORE_DELIVERY_REPORTS: &str = "INSERT INTO verifications (\
     id, purpose, channel, status, provider_sid, destination_ciphertext, \
     destination_key_id, destination_hash, to_masked, identity, idempotency_key, sends, \
     checks, max_sends, max_checks, failure_code, created_at, updated_at, expires_at, version) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
     $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)";

/// Binds the columns `row` had before the fallback columns, as the previous release wrote.
pub(crate) fn bind_insert_before_delivery_reports<'q, DB>(
    query: Query<'q, DB, <DB as SqlxDatabase>::Arguments>,
    row: VerificationRow,
) -> Query<'q, DB, <DB as SqlxDatabase>::Arguments>
where
    DB: SqlxDatabase,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> Option<String>: Encode<'t, DB> + Type<DB>,
    for<'t> Vec<u8>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
{
    query
        .bind(row.id)
        .bind(row.purpose)
        .bind(row.channel)
        .bind(row.status)
        .bind(row.provider_sid)
        .bind(row.destination_ciphertext)
        .bind(row.destination_key_id)
        .bind(row.destination_hash)
        .bind(row.to_masked)
        .bind(row.identity)
        .bind(row.idempotency_key)
        .bind(row.sends)
        .bind(row.checks)
        .bind(row.max_sends)
        .bind(row.max_checks)
        .bind(row.failure_code)
        .bind(row.created_at)
        .bind(row.updated_at)
        .bind(row.expires_at)
        .bind(row.version)
}

/// A value bound to a statement whose plan a test asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Bind {
    Text(&'static str),
    Int(i64),
    /// A NULL text.
    Null,
}

/// A database file in the temp directory, removed (with its WAL files) when dropped.
#[derive(Debug)]
pub(crate) struct TempFile {
    pub(crate) path: PathBuf,
}

impl TempFile {
    pub(crate) fn new(test: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!(
            "verify-gateway-storage-{test}-{}-{nanos}-{}.db",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        TempFile {
            path: std::env::temp_dir().join(name),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("sqlite://{}?mode=rwc", self.path.display())
    }

    pub(crate) fn files(&self) -> [PathBuf; 3] {
        let with = |suffix: &str| {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            PathBuf::from(p)
        };
        [self.path.clone(), with("-wal"), with("-shm")]
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        for file in self.files() {
            // The WAL files may never have existed; a leftover file in /tmp is harmless.
            let _ = std::fs::remove_file(file);
        }
    }
}

/// A migrated store on a database of its own, with the raw access tests need.
#[derive(Debug)]
pub(crate) enum TestDb {
    Sqlite {
        store: SqliteStore,
        file: TempFile,
    },
    Postgres {
        store: PostgresStore,
        database: PgDatabase,
    },
}

impl TestDb {
    pub(crate) async fn new(
        backend: Backend,
        test: &str,
        schema: Schema,
    ) -> anyhow::Result<TestDb> {
        match backend {
            Backend::Sqlite => {
                let file = TempFile::new(test);
                let store = SqliteStore::connect(&file.url()).await?;
                match schema.version(backend) {
                    None => store.migrate().await?,
                    Some(version) => store.migrate_to(version).await?,
                }
                Ok(TestDb::Sqlite { store, file })
            }
            Backend::Postgres => {
                let database = PgDatabase::create("t").await?;
                let store = match PostgresStore::connect(&database.url).await {
                    Ok(store) => store,
                    Err(error) => {
                        database.drop_database().await;
                        return Err(error.into());
                    }
                };
                let migrated = match schema.version(backend) {
                    None => store.migrate().await,
                    Some(version) => store.migrate_to(version).await,
                };
                let db = TestDb::Postgres { store, database };
                if let Err(error) = migrated {
                    db.cleanup().await;
                    return Err(error.into());
                }
                Ok(db)
            }
        }
    }

    pub(crate) fn backend(&self) -> Backend {
        match self {
            TestDb::Sqlite { .. } => Backend::Sqlite,
            TestDb::Postgres { .. } => Backend::Postgres,
        }
    }

    /// The store under test, as services hold it.
    pub(crate) fn port(&self) -> Arc<dyn VerificationStore> {
        match self {
            TestDb::Sqlite { store, .. } => Arc::new(store.clone()),
            TestDb::Postgres { store, .. } => Arc::new(store.clone()),
        }
    }

    /// Another store on the same database with a pool of its own, as a second replica
    /// (or a second process on the same SQLite file) would have.
    pub(crate) async fn replica(&self) -> anyhow::Result<Arc<dyn VerificationStore>> {
        Ok(self.replica_database().await?.verifications())
    }

    /// The database under test as services compose it, sharing the store's pool.
    pub(crate) fn database(&self) -> Database {
        match self {
            TestDb::Sqlite { store, .. } => Database::Sqlite(store.clone()),
            TestDb::Postgres { store, .. } => Database::Postgres(store.clone()),
        }
    }

    /// The database as another replica opens it, with a pool of its own.
    pub(crate) async fn replica_database(&self) -> anyhow::Result<Database> {
        Ok(match self {
            TestDb::Sqlite { file, .. } => {
                Database::Sqlite(SqliteStore::connect(&file.url()).await?)
            }
            TestDb::Postgres { database, .. } => {
                Database::Postgres(PostgresStore::connect(&database.url).await?)
            }
        })
    }

    pub(crate) async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            TestDb::Sqlite { store, .. } => store.migrate().await?,
            TestDb::Postgres { store, .. } => store.migrate().await?,
        }
        Ok(())
    }

    /// Closes the pool and, on PostgreSQL, drops the database (the SQLite file goes when
    /// the `TestDb` is dropped).
    pub(crate) async fn cleanup(&self) {
        match self {
            TestDb::Sqlite { store, .. } => store.close().await,
            TestDb::Postgres { store, database } => {
                store.close().await;
                database.drop_database().await;
            }
        }
    }

    pub(crate) async fn count_rows(&self) -> anyhow::Result<i64> {
        self.count("verifications").await
    }

    /// The rows of `table`.
    pub(crate) async fn count(&self, table: &str) -> anyhow::Result<i64> {
        self.scalar(&format!("SELECT COUNT(*) FROM {table}")).await
    }

    /// The one integer `select` returns, for looking at rows behind the store's back.
    pub(crate) async fn scalar(&self, select: &str) -> anyhow::Result<i64> {
        let select = AssertSqlSafe(select.to_owned());
        Ok(match self {
            TestDb::Sqlite { store, .. } => {
                sqlx::query_scalar(select).fetch_one(store.pool()).await?
            }
            TestDb::Postgres { store, .. } => {
                sqlx::query_scalar(select).fetch_one(store.pool()).await?
            }
        })
    }

    /// The one text (or NULL) `select` returns, for looking at rows behind the store's back.
    pub(crate) async fn text(&self, select: &str) -> anyhow::Result<Option<String>> {
        let select = AssertSqlSafe(select.to_owned());
        Ok(match self {
            TestDb::Sqlite { store, .. } => {
                sqlx::query_scalar(select).fetch_one(store.pool()).await?
            }
            TestDb::Postgres { store, .. } => {
                sqlx::query_scalar(select).fetch_one(store.pool()).await?
            }
        })
    }

    /// Runs `statement` (no parameters) behind the store's back.
    pub(crate) async fn execute(&self, statement: &str) -> anyhow::Result<()> {
        let statement = AssertSqlSafe(statement.to_owned());
        match self {
            TestDb::Sqlite { store, .. } => sqlx::query(statement)
                .execute(store.pool())
                .await
                .map(drop)?,
            TestDb::Postgres { store, .. } => sqlx::query(statement)
                .execute(store.pool())
                .await
                .map(drop)?,
        }
        Ok(())
    }

    /// Writes `row` as the previous release did, without the fallback columns (on a
    /// database at [`Schema::BeforeDeliveryReports`]).
    pub(crate) async fn insert_before_delivery_reports(
        &self,
        row: VerificationRow,
    ) -> anyhow::Result<()> {
        match self {
            TestDb::Sqlite { store, .. } => {
                let insert = sqlx::query(INSERT_BEFORE_DELIVERY_REPORTS);
                bind_insert_before_delivery_reports(insert, row)
                    .execute(store.pool())
                    .await
                    .map(drop)?
            }
            TestDb::Postgres { store, .. } => {
                let insert = sqlx::query(INSERT_BEFORE_DELIVERY_REPORTS);
                bind_insert_before_delivery_reports(insert, row)
                    .execute(store.pool())
                    .await
                    .map(drop)?
            }
        }
        Ok(())
    }

    /// Writes `row` (without risk) as the release before abuse protection did, on a
    /// database at [`Schema::BeforeAbuse`].
    pub(crate) async fn insert_before_abuse(&self, row: VerificationRow) -> anyhow::Result<()> {
        anyhow::ensure!(row.risk.is_none(), "that release had no risk");
        anyhow::ensure!(row.owner.is_empty(), "that release had no owner");
        match self {
            TestDb::Sqlite { store, .. } => {
                bind_insert(sqlx::query(INSERT_BEFORE_ABUSE), row)
                    .execute(store.pool())
                    .await?;
            }
            TestDb::Postgres { store, .. } => {
                bind_insert(sqlx::query(INSERT_BEFORE_ABUSE), row)
                    .execute(store.pool())
                    .await?;
            }
        }
        Ok(())
    }

    /// Writes `row` as it is, bypassing the store but not the schema's constraints.
    pub(crate) async fn insert_raw(&self, row: VerificationRow) -> Result<(), sqlx::Error> {
        match self {
            TestDb::Sqlite { store, .. } => bind_insert(sqlx::query(sql::INSERT), row)
                .execute(store.pool())
                .await
                .map(drop),
            TestDb::Postgres { store, .. } => bind_insert(sqlx::query(sql::INSERT), row)
                .execute(store.pool())
                .await
                .map(drop),
        }
    }

    /// Writes `row` past the CHECK constraints too, as a damaged or hand-edited database
    /// could hold it.
    pub(crate) async fn insert_corrupt(&self, row: VerificationRow) -> anyhow::Result<()> {
        match self {
            TestDb::Sqlite { store, .. } => {
                // The pragma is per connection: set it, insert and reset on one connection.
                let mut conn = store.pool().acquire().await?;
                sqlx::query("PRAGMA ignore_check_constraints = ON")
                    .execute(&mut *conn)
                    .await?;
                let inserted = bind_insert(sqlx::query(sql::INSERT), row)
                    .execute(&mut *conn)
                    .await;
                sqlx::query("PRAGMA ignore_check_constraints = OFF")
                    .execute(&mut *conn)
                    .await?;
                inserted?;
            }
            TestDb::Postgres { store, .. } => {
                // PostgreSQL cannot switch CHECKs off, but this database is the test's own:
                // drop those of the table and of its columns' domains.
                let drops: Vec<String> = sqlx::query_scalar(
                    "SELECT format('ALTER TABLE verifications DROP CONSTRAINT %I', conname) \
                     FROM pg_constraint \
                     WHERE conrelid = 'verifications'::regclass AND contype = 'c' \
                     UNION ALL \
                     SELECT DISTINCT format('ALTER DOMAIN %s DROP CONSTRAINT %I', \
                                            c.contypid::regtype, c.conname) \
                     FROM pg_constraint c \
                     JOIN pg_attribute a ON a.atttypid = c.contypid \
                     WHERE a.attrelid = 'verifications'::regclass AND c.contype = 'c'",
                )
                .fetch_all(store.pool())
                .await?;
                for drop in drops {
                    sqlx::query(AssertSqlSafe(drop))
                        .execute(store.pool())
                        .await?;
                }
                bind_insert(sqlx::query(sql::INSERT), row)
                    .execute(store.pool())
                    .await?;
            }
        }
        Ok(())
    }

    /// The columns of `table`, in table order.
    pub(crate) async fn columns(&self, table: &str) -> anyhow::Result<Vec<String>> {
        Ok(match self {
            TestDb::Sqlite { store, .. } => {
                sqlx::query_scalar("SELECT name FROM pragma_table_info($1) ORDER BY cid")
                    .bind(table)
                    .fetch_all(store.pool())
                    .await?
            }
            TestDb::Postgres { store, .. } => {
                sqlx::query_scalar(
                    "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 \
                 ORDER BY ordinal_position",
                )
                .bind(table)
                .fetch_all(store.pool())
                .await?
            }
        })
    }

    /// Every non-NULL cell of every row of `table`, with plain SQL: on SQLite the bytes it
    /// holds (numbers as their text), on PostgreSQL each column cast to text, and `bytea`
    /// columns also as their raw bytes.
    pub(crate) async fn cells(&self, table: &str) -> anyhow::Result<Vec<Vec<u8>>> {
        let columns = self.columns(table).await?;
        anyhow::ensure!(!columns.is_empty(), "no table `{table}`");
        let mut cells = Vec::new();
        for column in &columns {
            match self {
                TestDb::Sqlite { store, .. } => {
                    let select = format!("SELECT CAST(\"{column}\" AS BLOB) AS cell FROM {table}");
                    for row in sqlx::query(AssertSqlSafe(select))
                        .fetch_all(store.pool())
                        .await?
                    {
                        let cell: Option<Vec<u8>> = row.try_get("cell")?;
                        cells.extend(cell);
                    }
                }
                TestDb::Postgres { store, .. } => {
                    let select = format!("SELECT \"{column}\"::text AS cell FROM {table}");
                    for row in sqlx::query(AssertSqlSafe(select))
                        .fetch_all(store.pool())
                        .await?
                    {
                        let cell: Option<String> = row.try_get("cell")?;
                        cells.extend(cell.map(String::into_bytes));
                    }
                    let is_bytea: bool = sqlx::query_scalar(
                        "SELECT data_type = 'bytea' FROM information_schema.columns \
                         WHERE table_schema = current_schema() \
                         AND table_name = $1 AND column_name = $2",
                    )
                    .bind(table)
                    .bind(column)
                    .fetch_one(store.pool())
                    .await?;
                    if is_bytea {
                        let select = format!("SELECT \"{column}\" AS cell FROM {table}");
                        for row in sqlx::query(AssertSqlSafe(select))
                            .fetch_all(store.pool())
                            .await?
                        {
                            let cell: Option<Vec<u8>> = row.try_get("cell")?;
                            cells.extend(cell);
                        }
                    }
                }
            }
        }
        Ok(cells)
    }

    /// The planner's plan for `statement` with `binds`, as one line of text. On PostgreSQL
    /// sequential scans, bitmap scans and sorts are priced out, so the plan shows whether
    /// an index can answer the statement in the order it asks for, not what is cheapest
    /// for the (empty) table of a test.
    pub(crate) async fn plan(&self, statement: &str, binds: &[Bind]) -> anyhow::Result<String> {
        match self {
            TestDb::Sqlite { store, .. } => {
                let mut query =
                    sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {statement}")));
                for bind in binds {
                    query = match *bind {
                        Bind::Text(text) => query.bind(text),
                        Bind::Int(int) => query.bind(int),
                        Bind::Null => query.bind(None::<String>),
                    };
                }
                let rows = query.fetch_all(store.pool()).await?;
                let details = rows
                    .iter()
                    .map(|row| row.try_get::<String, _>("detail"))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(details.join("; "))
            }
            TestDb::Postgres { store, .. } => {
                // One connection, so the setting covers the EXPLAIN; closed afterwards so
                // the setting never reaches another test statement.
                let mut conn = store.pool().acquire().await?;
                conn.close_on_drop();
                for knob in ["enable_seqscan", "enable_bitmapscan", "enable_sort"] {
                    sqlx::query(AssertSqlSafe(format!("SET {knob} = off")))
                        .execute(&mut *conn)
                        .await?;
                }
                let mut query = sqlx::query(AssertSqlSafe(format!("EXPLAIN {statement}")));
                for bind in binds {
                    query = match *bind {
                        Bind::Text(text) => query.bind(text),
                        Bind::Int(int) => query.bind(int),
                        Bind::Null => query.bind(None::<String>),
                    };
                }
                let rows = query.fetch_all(&mut *conn).await?;
                let lines = rows
                    .iter()
                    .map(|row| row.try_get::<String, _>(0))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(lines.join("; "))
            }
        }
    }
}

/// Runs `body` on a fresh database of `backend` at `schema` and cleans up afterwards, also
/// when the body fails or panics (it runs as its own task, so a panic arrives here as a
/// value).
pub(crate) async fn run<F, Fut>(
    backend: Backend,
    schema: Schema,
    test: &str,
    body: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Arc<TestDb>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let db = Arc::new(TestDb::new(backend, test, schema).await?);
    let outcome = tokio::spawn(body(Arc::clone(&db))).await;
    db.cleanup().await;
    match outcome {
        Ok(result) => result,
        Err(error) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(error) => Err(error.into()),
        },
    }
}
