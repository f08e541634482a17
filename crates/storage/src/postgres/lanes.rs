//! The verification statements that concurrent requests share on PostgreSQL (see
//! [`crate::lane`]): the insert of many starts guarded by their limits, an optimistic
//! update of many rows, and a read of many rows by id, each with its inputs as arrays, one
//! element per call.

use std::collections::{HashMap, HashSet};

use domain::abuse::{BlockTarget, CountQuery};
use domain::ports::StoreError;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions};
use sqlx::query::Query;
use sqlx::{FromRow, PgPool, Postgres, Row};

use crate::abuse::{count_queries_input, targets_input};
use crate::error::{read_error, unavailable};
use crate::lane::{Batch, GuardedInsert, GuardedUpdate, Lane, Lanes, SignalsRead};
use crate::repo::Dialect;
use crate::row::{GuardedRow, SignalRow, VerificationRow, bind_insert, bind_update};
use crate::sql::{self, columns};

/// Starts of one insert statement at most: each start's takes are a subtransaction, and a
/// backend tracks 64 of them without overflowing its cache (see migration 0008). One
/// statement at a time, as for updates; and every start takes the country's limit, whose
/// row lock one statement holds until it commits anyway.
const INSERTS_IN_FLIGHT: usize = 1;
const INSERTS_PER_BATCH: usize = 32;

/// Batches of updates that may run at once, and the calls in each at most. One at a time
/// makes the largest batches: in runs of 5,000 flows at concurrency 32 one in flight gave
/// 932-990 flows/s, two 842-911 and four 803-828, with CPU per flow in that order. A batch
/// waiting for a row lock holds the lane back; locks on verifications are held for one
/// statement or one short transaction, and the statement timeout bounds any wait.
const UPDATES_IN_FLIGHT: usize = 1;
const UPDATES_PER_BATCH: usize = 64;

/// Reads of signals: one at a time, of any number of starts (each a handful of counters
/// and blocks).
const SIGNALS_IN_FLIGHT: usize = 1;
const SIGNALS_PER_BATCH: usize = 64;

/// The same for reads, which never wait for a lock.
const READS_IN_FLIGHT: usize = 1;
const READS_PER_BATCH: usize = 64;

/// Updates guarded by limits (a check's claim): one at a time, as for plain updates; each
/// call's takes are a subtransaction, so at most 32 per statement, as for inserts.
const GUARDED_UPDATES_IN_FLIGHT: usize = 1;
const GUARDED_UPDATES_PER_BATCH: usize = 32;

/// Connections of the lanes' pool: one per batch the lanes may run at once.
const LANE_CONNECTIONS: u32 = (INSERTS_IN_FLIGHT
    + UPDATES_IN_FLIGHT
    + GUARDED_UPDATES_IN_FLIGHT
    + SIGNALS_IN_FLIGHT
    + READS_IN_FLIGHT) as u32;

/// The columns of many verifications as the start of an `unnest`: `$1` to `$27`, the
/// columns of [`crate::sql::columns!`] in its order, each an array with one element per row
/// ([`Columns::bind`]). Each statement adds its own arrays (`$28`, `$29`) and closes it.
macro_rules! unnest_columns {
    () => {
        "unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[], \
         $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[], \
         $13::bigint[], $14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[], \
         $18::bigint[], $19::bigint[], $20::bigint[], $21::boolean[], $22::text[], \
         $23::text[], $24::text[], $25::text[], $26::text[], $27::text[]"
    };
}

/// [`crate::sql::UPDATE`] for many rows: `$1` to `$27` the rows ([`unnest_columns!`]),
/// `$28` the versions they must still have. Returns the ids written; a row whose version
/// moved on is not written, as alone. The id, purpose and creation time are not written,
/// as alone.
///
/// Each row is found by its own lookup of the primary key (a lateral subquery with `LIMIT
/// 1`, which the planner cannot turn into a join) and then updated by its tuple id, which
/// the lanes' sessions reach by a TID scan whatever the table's size (see [`connect`]). A
/// row another transaction updates between the lookup and the update is re-checked by
/// PostgreSQL on its new version, whose tuple id differs, so it is not written: its
/// version has moved on.
pub(crate) const UPDATE_MANY: &str = concat!(
    "WITH t AS MATERIALIZED (SELECT u.*, r.tid FROM ",
    unnest_columns!(),
    ", $28::bigint[]) AS u(",
    columns!(),
    ", expected_version)",
    " CROSS JOIN LATERAL (SELECT ctid AS tid FROM verifications",
    " WHERE id = u.id AND version = u.expected_version LIMIT 1) AS r)",
    " UPDATE verifications AS v SET",
    set_from!("t"),
    " FROM t WHERE v.ctid = t.tid",
    " RETURNING v.id"
);

/// The columns an update writes ([`crate::sql::update_set!`]), each from the column of
/// that name of the row source `$t`.
macro_rules! set_from {
    ($t:literal) => {
        concat!(
            " channel = ",
            $t,
            ".channel, status = ",
            $t,
            ".status,",
            " provider_sid = ",
            $t,
            ".provider_sid,",
            " destination_ciphertext = ",
            $t,
            ".destination_ciphertext,",
            " destination_key_id = ",
            $t,
            ".destination_key_id,",
            " destination_hash = ",
            $t,
            ".destination_hash, to_masked = ",
            $t,
            ".to_masked,",
            " identity = ",
            $t,
            ".identity, sends = ",
            $t,
            ".sends, checks = ",
            $t,
            ".checks,",
            " max_sends = ",
            $t,
            ".max_sends, max_checks = ",
            $t,
            ".max_checks,",
            " failure_code = ",
            $t,
            ".failure_code, updated_at = ",
            $t,
            ".updated_at,",
            " expires_at = ",
            $t,
            ".expires_at, version = ",
            $t,
            ".version,",
            " idempotency_key = ",
            $t,
            ".idempotency_key,",
            " allow_fallback = ",
            $t,
            ".allow_fallback,",
            " channels_tried = ",
            $t,
            ".channels_tried,",
            " fallback_reason = ",
            $t,
            ".fallback_reason,",
            " delivery_status = ",
            $t,
            ".delivery_status,",
            " trace_parent = ",
            $t,
            ".trace_parent, risk = ",
            $t,
            ".risk"
        )
    };
}
use set_from;

/// [`crate::repo::Dialect::UPDATE_LIMITED`] for many updates (a check's claim with its
/// limits): `$1` to `$27` the rows ([`unnest_columns!`]), `$28` the versions they must still
/// have, `$29` their times (now, in milliseconds), `$30` their takes (each one round, as
/// JSON). As alone, each update first locks its row at its expected version; only the
/// updates whose row was locked take their limits, in the calls' order and each all or
/// none (`take_rate_limits_many`, migration 0008), and only those whose limits all allowed
/// write their row. Returns a row per locked update, in order: `i` (its place among the
/// inputs, from 1) and the columns of [`GuardedRow`]; an update with no row returned did
/// not find its row at its version and took nothing.
pub(crate) const UPDATE_LIMITED_MANY: &str = concat!(
    "WITH u AS MATERIALIZED (SELECT * FROM ",
    unnest_columns!(),
    ", $28::bigint[], $29::bigint[], $30::text[]) WITH ORDINALITY AS u(",
    columns!(),
    ", expected_version, now_ms, take, n)),",
    " locked AS MATERIALIZED (SELECT l.n, l.tid, row_number() OVER (ORDER BY l.n) AS k",
    " FROM (SELECT u.n, r.tid FROM u CROSS JOIN LATERAL (SELECT ctid AS tid FROM verifications",
    " WHERE id = u.id AND version = u.expected_version LIMIT 1 FOR UPDATE) AS r) AS l),",
    " taken AS MATERIALIZED (SELECT locked.n, t.taken_keys, t.taken_tats, t.taken_allowed,",
    " t.taken_at, t.all_allowed FROM take_rate_limits_many(",
    "ARRAY(SELECT u.now_ms FROM locked JOIN u ON u.n = locked.n ORDER BY locked.k),",
    " ARRAY(SELECT u.take FROM locked JOIN u ON u.n = locked.n ORDER BY locked.k)) AS t",
    " JOIN locked ON locked.k = t.i),",
    " written AS (UPDATE verifications AS v SET",
    set_from!("u"),
    " FROM u JOIN locked ON locked.n = u.n JOIN taken ON taken.n = u.n",
    " WHERE v.ctid = locked.tid AND taken.all_allowed RETURNING u.n)",
    " SELECT taken.n::int AS i, taken.taken_keys, taken.taken_tats, taken.taken_allowed,",
    " taken.taken_at, EXISTS (SELECT 1 FROM written WHERE written.n = taken.n) AS written",
    " FROM taken ORDER BY taken.n"
);

/// [`crate::repo::Dialect::INSERT_LIMITED`] for many starts: `$1` to `$27` the rows
/// ([`unnest_columns!`]), `$28` their times (now, in milliseconds), `$29` their takes
/// (each one round, as JSON). The takes run first, start by start
/// (`take_rate_limits_many`, migration 0008), then every start whose limits all allowed is
/// inserted, in the starts' order, `ON CONFLICT DO NOTHING` (a start that meets a row, an
/// earlier start's of the same statement included, writes nothing and keeps its takes, as
/// alone). Returns one row per start, in order: `i` and the columns of [`GuardedRow`].
pub(crate) const INSERT_MANY: &str = concat!(
    "WITH taken AS MATERIALIZED",
    " (SELECT * FROM take_rate_limits_many($28::bigint[], $29::text[])),",
    " written AS (INSERT INTO verifications (",
    columns!(),
    ") SELECT u.id, u.purpose, u.channel, u.status, u.provider_sid, u.destination_ciphertext,",
    " u.destination_key_id, u.destination_hash, u.to_masked, u.identity, u.idempotency_key,",
    " u.sends, u.checks, u.max_sends, u.max_checks, u.failure_code, u.created_at,",
    " u.updated_at, u.expires_at, u.version, u.allow_fallback, u.channels_tried,",
    " u.fallback_reason, u.delivery_status, u.trace_parent, u.risk, u.owner FROM ",
    unnest_columns!(),
    ") WITH ORDINALITY AS u(",
    columns!(),
    ", i)",
    " JOIN taken ON taken.i = u.i WHERE taken.all_allowed ORDER BY u.i",
    " ON CONFLICT DO NOTHING RETURNING id)",
    " SELECT taken.i, taken.taken_keys, taken.taken_tats, taken.taken_allowed, taken.taken_at,",
    " EXISTS (SELECT 1 FROM written WHERE written.id = ($1::text[])[taken.i]) AS written",
    " FROM taken ORDER BY taken.i"
);

/// [`crate::sql::GET`] for many ids: `$1` the ids; each looked up by the primary key on
/// its own, as in [`UPDATE_MANY`].
pub(crate) const GET_MANY: &str = concat!(
    "SELECT r.* FROM unnest($1::text[]) AS u(id)",
    " CROSS JOIN LATERAL (SELECT ",
    columns!(),
    " FROM verifications WHERE id = u.id LIMIT 1) AS r"
);

/// The lanes' pool: one connection per lane (each runs one batch at a time), opened on
/// first use, with sequential scans disabled.
///
/// A lane's statements find every row by its primary key or its tuple id, and are prepared
/// once per connection; after a few runs PostgreSQL may settle on a generic plan, costed
/// with the table's size at that moment. Planned while the table was small (a fresh
/// database, the first minutes of a deployment), the update of many rows by tuple id
/// hash-joined the batch with a scan of the whole table, and the cached plan kept doing
/// so as the table grew (at 10,000 rows a third of the batches read it all). With
/// sequential scans disabled the planner takes a path that uses the key or the tuple id
/// whatever the table's size; these statements have one for every table they touch.
pub(crate) fn connect(options: PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(LANE_CONNECTIONS)
        .acquire_timeout(super::ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .connect_lazy_with(options.options([("enable_seqscan", "off")]))
}

/// Starts the lanes of `pool` on the current runtime.
pub(crate) fn spawn(pool: &PgPool) -> Lanes {
    Lanes {
        insert: Lane::spawn(
            "insert",
            Inserts(pool.clone()),
            INSERTS_IN_FLIGHT,
            INSERTS_PER_BATCH,
        ),
        update: Lane::spawn(
            "update",
            Updates(pool.clone()),
            UPDATES_IN_FLIGHT,
            UPDATES_PER_BATCH,
        ),
        guarded_update: Lane::spawn(
            "guarded update",
            GuardedUpdates(pool.clone()),
            GUARDED_UPDATES_IN_FLIGHT,
            GUARDED_UPDATES_PER_BATCH,
        ),
        get: Lane::spawn(
            "read",
            Reads(pool.clone()),
            READS_IN_FLIGHT,
            READS_PER_BATCH,
        ),
        signals: Lane::spawn(
            "signals",
            Signals(pool.clone()),
            SIGNALS_IN_FLIGHT,
            SIGNALS_PER_BATCH,
        ),
    }
}

/// Reads of scoring's signals. A batch is one [`Dialect::READ_SIGNALS`] over the calls'
/// queries one after the other (numbered on: a call's `i` plus the queries before it),
/// the union of their targets at the earliest of their times, and their one replica; each
/// call then gets its queries' sums (numbered as its own), the flush mark, and the blocks
/// on its own targets still in force at its own time, so what a call reads is what it
/// would have read alone.
pub(crate) struct Signals(pub(crate) PgPool);

impl Signals {
    async fn read(
        &self,
        queries: &[CountQuery],
        targets: &[BlockTarget],
        now_ms: i64,
        replica: &str,
    ) -> Result<Vec<SignalRow>, StoreError> {
        sqlx::query_as(Postgres::READ_SIGNALS)
            .bind(now_ms)
            .bind(targets_input(targets).unwrap_or_else(|| "[]".to_owned()))
            .bind(count_queries_input(queries))
            .bind(replica.to_owned())
            .fetch_all(&self.0)
            .await
            .map_err(read_error)
    }
}

impl Batch for Signals {
    type Input = SignalsRead;
    type Output = Vec<SignalRow>;

    /// One replica per batch: the flush mark read is that replica's.
    fn admits(&self, inputs: &[SignalsRead], next: &SignalsRead) -> bool {
        inputs.iter().all(|input| input.replica == next.replica)
    }

    async fn run(&self, inputs: &[SignalsRead]) -> Result<Vec<Vec<SignalRow>>, StoreError> {
        let mut queries = Vec::new();
        let mut firsts = Vec::with_capacity(inputs.len());
        for input in inputs {
            firsts.push(queries.len());
            queries.extend(input.queries.iter().cloned());
        }
        let targets: Vec<BlockTarget> = inputs
            .iter()
            .flat_map(|input| input.targets.iter().cloned())
            .collect();
        let earliest = inputs.iter().map(|input| input.now_ms).min().unwrap_or(0);
        let replica = inputs.first().map_or("", |input| input.replica.as_str());
        let rows = self.read(&queries, &targets, earliest, replica).await?;

        let mut outputs: Vec<Vec<SignalRow>> = inputs.iter().map(|_| Vec::new()).collect();
        for row in rows {
            match row.i {
                // The flush mark, the same for every call.
                Some(-1) => {
                    for output in &mut outputs {
                        output.push(row.clone());
                    }
                }
                // A query's sums: to the call it came from, numbered as that call's own.
                Some(i) => {
                    let i = usize::try_from(i).map_err(|_| {
                        StoreError::Unavailable(format!("counter sums for unknown query {i}"))
                    })?;
                    let call = firsts
                        .partition_point(|&first| first <= i)
                        .saturating_sub(1);
                    let mut own = row;
                    own.i = i64::try_from(i - firsts[call]).ok();
                    outputs[call].push(own);
                }
                // A block: to every call that asked about its target and is before its end.
                None => {
                    for (input, output) in inputs.iter().zip(&mut outputs) {
                        let asked = input.targets.iter().any(|target| {
                            row.kind.as_deref() == Some(target.kind.as_str())
                                && row.value.as_deref() == Some(target.value.as_str())
                        });
                        if asked && row.expires_at.is_some_and(|end| end > input.now_ms) {
                            output.push(row.clone());
                        }
                    }
                }
            }
        }
        Ok(outputs)
    }

    async fn run_one(&self, input: &SignalsRead) -> Result<Vec<SignalRow>, StoreError> {
        self.read(&input.queries, &input.targets, input.now_ms, &input.replica)
            .await
    }
}

/// Starts' inserts guarded by their limits.
pub(crate) struct Inserts(pub(crate) PgPool);

/// A row of [`INSERT_MANY`] or [`UPDATE_LIMITED_MANY`].
#[derive(FromRow)]
struct InsertedRow {
    i: i32,
    #[sqlx(flatten)]
    guarded: GuardedRow,
}

impl Batch for Inserts {
    type Input = GuardedInsert;
    type Output = GuardedRow;

    fn admits(&self, _: &[GuardedInsert], _: &GuardedInsert) -> bool {
        true
    }

    async fn run(&self, inputs: &[GuardedInsert]) -> Result<Vec<GuardedRow>, StoreError> {
        let query =
            Columns::of(inputs.iter().map(|input| &input.row)).bind(sqlx::query(INSERT_MANY));
        let rows = bind_takes(
            query,
            inputs.iter().map(|input| (input.now_ms, &input.take)),
        )
        .fetch_all(&self.0)
        .await
        .map_err(unavailable)?;
        let mut guarded = Vec::with_capacity(rows.len());
        for (n, row) in (1..).zip(&rows) {
            let row = InsertedRow::from_row(row).map_err(read_error)?;
            if row.i != n {
                return Err(StoreError::Unavailable(format!(
                    "a batch of inserts returned start {} in place {n}",
                    row.i
                )));
            }
            guarded.push(row.guarded);
        }
        Ok(guarded)
    }

    async fn run_one(&self, input: &GuardedInsert) -> Result<GuardedRow, StoreError> {
        let row = bind_insert(sqlx::query(Postgres::INSERT_LIMITED), input.row.clone())
            .bind(input.now_ms)
            .bind(input.take.clone())
            .fetch_one(&self.0)
            .await
            .map_err(unavailable)?;
        GuardedRow::from_row(&row).map_err(read_error)
    }
}

/// Optimistic updates of verifications.
pub(crate) struct Updates(pub(crate) PgPool);

impl Batch for Updates {
    type Input = (VerificationRow, i64);
    type Output = bool;

    /// One update per row and batch: of two updates of one row, the second must see the
    /// first's outcome (and in one statement PostgreSQL would write the row once).
    fn admits(&self, inputs: &[Self::Input], next: &Self::Input) -> bool {
        inputs.iter().all(|(row, _)| row.id != next.0.id)
    }

    async fn run(&self, inputs: &[Self::Input]) -> Result<Vec<bool>, StoreError> {
        let expected: Vec<i64> = inputs.iter().map(|(_, version)| *version).collect();
        let rows = Columns::of(inputs.iter().map(|(row, _)| row))
            .bind(sqlx::query(UPDATE_MANY))
            .bind(expected)
            .fetch_all(&self.0)
            .await
            .map_err(unavailable)?;
        let written: Vec<String> = rows
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(read_error)?;
        let written: HashSet<&str> = written.iter().map(String::as_str).collect();
        Ok(inputs
            .iter()
            .map(|(row, _)| written.contains(row.id.as_str()))
            .collect())
    }

    async fn run_one(&self, (row, expected_version): &Self::Input) -> Result<bool, StoreError> {
        let written = bind_update(sqlx::query(sql::UPDATE), row.clone(), *expected_version)
            .fetch_optional(&self.0)
            .await
            .map_err(unavailable)?;
        Ok(written.is_some())
    }
}

/// Optimistic updates guarded by limits (a check's claim).
pub(crate) struct GuardedUpdates(pub(crate) PgPool);

impl Batch for GuardedUpdates {
    type Input = GuardedUpdate;
    type Output = Option<GuardedRow>;

    /// One update per row and batch, as for plain updates.
    fn admits(&self, inputs: &[GuardedUpdate], next: &GuardedUpdate) -> bool {
        inputs.iter().all(|input| input.row.id != next.row.id)
    }

    async fn run(&self, inputs: &[GuardedUpdate]) -> Result<Vec<Option<GuardedRow>>, StoreError> {
        let expected: Vec<i64> = inputs.iter().map(|input| input.expected_version).collect();
        let query = Columns::of(inputs.iter().map(|input| &input.row))
            .bind(sqlx::query(UPDATE_LIMITED_MANY))
            .bind(expected);
        let rows = bind_takes(
            query,
            inputs.iter().map(|input| (input.now_ms, &input.take)),
        )
        .fetch_all(&self.0)
        .await
        .map_err(unavailable)?;
        let mut outcomes: Vec<Option<GuardedRow>> = inputs.iter().map(|_| None).collect();
        for row in &rows {
            let row = InsertedRow::from_row(row).map_err(read_error)?;
            let slot = usize::try_from(row.i)
                .ok()
                .and_then(|i| i.checked_sub(1))
                .and_then(|i| outcomes.get_mut(i))
                .ok_or_else(|| {
                    StoreError::Unavailable(format!(
                        "a batch of guarded updates returned update {} of {}",
                        row.i,
                        inputs.len()
                    ))
                })?;
            *slot = Some(row.guarded);
        }
        Ok(outcomes)
    }

    async fn run_one(&self, input: &GuardedUpdate) -> Result<Option<GuardedRow>, StoreError> {
        let row = bind_update(
            sqlx::query(Postgres::UPDATE_LIMITED),
            input.row.clone(),
            input.expected_version,
        )
        .bind(input.now_ms)
        .bind(input.take.clone())
        .fetch_optional(&self.0)
        .await
        .map_err(unavailable)?;
        row.map(|row| GuardedRow::from_row(&row).map_err(read_error))
            .transpose()
    }
}

/// Reads of verifications by id.
pub(crate) struct Reads(pub(crate) PgPool);

impl Batch for Reads {
    type Input = String;
    type Output = Option<VerificationRow>;

    fn admits(&self, _: &[String], _: &String) -> bool {
        true
    }

    async fn run(&self, ids: &[String]) -> Result<Vec<Option<VerificationRow>>, StoreError> {
        let rows: Vec<VerificationRow> = sqlx::query_as(GET_MANY)
            .bind(ids)
            .fetch_all(&self.0)
            .await
            .map_err(read_error)?;
        let mut by_id: HashMap<String, VerificationRow> =
            rows.into_iter().map(|row| (row.id.clone(), row)).collect();
        // An id asked for twice gets the row twice; the last asker takes it from the map.
        let mut outcomes: Vec<Option<VerificationRow>> = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            let again = ids[i + 1..].contains(id);
            outcomes.push(if again {
                by_id.get(id).cloned()
            } else {
                by_id.remove(id)
            });
        }
        Ok(outcomes)
    }

    async fn run_one(&self, id: &String) -> Result<Option<VerificationRow>, StoreError> {
        sqlx::query_as(sql::GET)
            .bind(id)
            .fetch_optional(&self.0)
            .await
            .map_err(read_error)
    }
}

/// Binds the next two parameters to the calls' takes: their times (now, in milliseconds)
/// and their inputs of `take_rate_limits` (JSON), one element per call.
fn bind_takes<'q, 'a>(
    query: Query<'q, Postgres, PgArguments>,
    takes: impl Iterator<Item = (i64, &'a String)>,
) -> Query<'q, Postgres, PgArguments> {
    let (times, inputs): (Vec<i64>, Vec<String>) =
        takes.map(|(at, take)| (at, take.clone())).unzip();
    query.bind(times).bind(inputs)
}

/// The columns of many verifications, one array per column, one element per row: the
/// parameters of [`INSERT_MANY`] and [`UPDATE_MANY`].
#[derive(Default)]
struct Columns {
    id: Vec<String>,
    purpose: Vec<String>,
    channel: Vec<String>,
    status: Vec<String>,
    provider_sid: Vec<Option<String>>,
    destination_ciphertext: Vec<Vec<u8>>,
    destination_key_id: Vec<String>,
    destination_hash: Vec<String>,
    to_masked: Vec<String>,
    identity: Vec<Option<String>>,
    idempotency_key: Vec<Option<String>>,
    sends: Vec<i64>,
    checks: Vec<i64>,
    max_sends: Vec<i64>,
    max_checks: Vec<i64>,
    failure_code: Vec<Option<i64>>,
    created_at: Vec<i64>,
    updated_at: Vec<i64>,
    expires_at: Vec<i64>,
    version: Vec<i64>,
    allow_fallback: Vec<bool>,
    channels_tried: Vec<String>,
    fallback_reason: Vec<Option<String>>,
    delivery_status: Vec<Option<String>>,
    trace_parent: Vec<Option<String>>,
    risk: Vec<Option<String>>,
    owner: Vec<String>,
}

impl Columns {
    fn of<'a>(rows: impl Iterator<Item = &'a VerificationRow>) -> Columns {
        let mut c = Columns::default();
        for row in rows {
            let row = row.clone();
            c.id.push(row.id);
            c.purpose.push(row.purpose);
            c.channel.push(row.channel);
            c.status.push(row.status);
            c.provider_sid.push(row.provider_sid);
            c.destination_ciphertext.push(row.destination_ciphertext);
            c.destination_key_id.push(row.destination_key_id);
            c.destination_hash.push(row.destination_hash);
            c.to_masked.push(row.to_masked);
            c.identity.push(row.identity);
            c.idempotency_key.push(row.idempotency_key);
            c.sends.push(row.sends);
            c.checks.push(row.checks);
            c.max_sends.push(row.max_sends);
            c.max_checks.push(row.max_checks);
            c.failure_code.push(row.failure_code);
            c.created_at.push(row.created_at);
            c.updated_at.push(row.updated_at);
            c.expires_at.push(row.expires_at);
            c.version.push(row.version);
            c.allow_fallback.push(row.allow_fallback);
            c.channels_tried.push(row.channels_tried);
            c.fallback_reason.push(row.fallback_reason);
            c.delivery_status.push(row.delivery_status);
            c.trace_parent.push(row.trace_parent);
            c.risk.push(row.risk);
            c.owner.push(row.owner);
        }
        c
    }

    /// Binds every column as `$1` to `$27` ([`unnest_columns!`]), in the order of
    /// [`crate::sql::columns!`].
    fn bind(self, query: Query<'_, Postgres, PgArguments>) -> Query<'_, Postgres, PgArguments> {
        query
            .bind(self.id)
            .bind(self.purpose)
            .bind(self.channel)
            .bind(self.status)
            .bind(self.provider_sid)
            .bind(self.destination_ciphertext)
            .bind(self.destination_key_id)
            .bind(self.destination_hash)
            .bind(self.to_masked)
            .bind(self.identity)
            .bind(self.idempotency_key)
            .bind(self.sends)
            .bind(self.checks)
            .bind(self.max_sends)
            .bind(self.max_checks)
            .bind(self.failure_code)
            .bind(self.created_at)
            .bind(self.updated_at)
            .bind(self.expires_at)
            .bind(self.version)
            .bind(self.allow_fallback)
            .bind(self.channels_tried)
            .bind(self.fallback_reason)
            .bind(self.delivery_status)
            .bind(self.trace_parent)
            .bind(self.risk)
            .bind(self.owner)
    }
}
