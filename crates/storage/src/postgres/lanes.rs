//! The verification statements that concurrent requests share on PostgreSQL (see
//! [`crate::lane`]): an optimistic update of many rows, and a read of many rows by id, each
//! with its inputs as arrays, one element per call.

use std::collections::{HashMap, HashSet};

use domain::ports::StoreError;
use sqlx::PgPool;

use crate::error::{read_error, unavailable};
use crate::lane::{Batch, Lane};
use crate::row::{VerificationRow, bind_update};
use crate::sql::{self, columns};

/// Batches of updates that may run at once, and the calls in each at most. One at a time
/// makes the largest batches: in runs of 5,000 flows at concurrency 32 one in flight gave
/// 932-990 flows/s, two 842-911 and four 803-828, with CPU per flow in that order. A batch
/// waiting for a row lock holds the lane back; locks on verifications are held for one
/// statement or one short transaction, and the statement timeout bounds any wait.
const UPDATES_IN_FLIGHT: usize = 1;
const UPDATES_PER_BATCH: usize = 64;

/// The same for reads, which never wait for a lock.
const READS_IN_FLIGHT: usize = 1;
const READS_PER_BATCH: usize = 64;

/// [`crate::sql::UPDATE`] for many rows: `$1` the ids, `$2` the expected versions, `$3` to
/// `$25` the columns of [`crate::sql::update_set!`] in its order, each an array with one
/// element per row. Returns the ids written; a row whose version moved on is not written,
/// as alone.
///
/// Each row is found by its own lookup of the primary key (a lateral subquery with `LIMIT
/// 1`, which the planner cannot turn into a join) and then updated by its tuple id. A join
/// of the table with the arrays would leave the choice of path to the planner, and a plan
/// cached while the table was small scans the whole table. A row another transaction
/// updates between the lookup and the update is re-checked by PostgreSQL on its new
/// version, whose tuple id differs, so it is not written: its version has moved on.
const UPDATE_MANY: &str = "WITH t AS MATERIALIZED (SELECT u.*, r.tid \
     FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bytea[], \
     $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::bigint[], \
     $13::bigint[], $14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[], \
     $18::bigint[], $19::text[], $20::boolean[], $21::text[], $22::text[], $23::text[], \
     $24::text[], $25::text[]) \
     AS u(id, expected_version, channel, status, provider_sid, destination_ciphertext, \
     destination_key_id, destination_hash, to_masked, identity, sends, checks, max_sends, \
     max_checks, failure_code, updated_at, expires_at, version, idempotency_key, \
     allow_fallback, channels_tried, fallback_reason, delivery_status, trace_parent, risk) \
     CROSS JOIN LATERAL (SELECT ctid AS tid FROM verifications \
     WHERE id = u.id AND version = u.expected_version LIMIT 1) AS r) \
     UPDATE verifications AS v SET \
     channel = t.channel, status = t.status, provider_sid = t.provider_sid, \
     destination_ciphertext = t.destination_ciphertext, \
     destination_key_id = t.destination_key_id, destination_hash = t.destination_hash, \
     to_masked = t.to_masked, identity = t.identity, sends = t.sends, checks = t.checks, \
     max_sends = t.max_sends, max_checks = t.max_checks, failure_code = t.failure_code, \
     updated_at = t.updated_at, expires_at = t.expires_at, version = t.version, \
     idempotency_key = t.idempotency_key, allow_fallback = t.allow_fallback, \
     channels_tried = t.channels_tried, fallback_reason = t.fallback_reason, \
     delivery_status = t.delivery_status, trace_parent = t.trace_parent, risk = t.risk \
     FROM t WHERE v.ctid = t.tid \
     RETURNING v.id";

/// [`crate::sql::GET`] for many ids: `$1` the ids; each looked up by the primary key on
/// its own, as in [`UPDATE_MANY`].
const GET_MANY: &str = concat!(
    "SELECT r.* FROM unnest($1::text[]) AS u(id)",
    " CROSS JOIN LATERAL (SELECT ",
    columns!(),
    " FROM verifications WHERE id = u.id LIMIT 1) AS r"
);

/// The lanes of one store's pool.
#[derive(Debug, Clone)]
pub(crate) struct Lanes {
    /// An optimistic update: the row and the version it must still have; whether it was
    /// written.
    pub(crate) update: Lane<(VerificationRow, i64), bool>,
    /// A read by id.
    pub(crate) get: Lane<String, Option<VerificationRow>>,
}

impl Lanes {
    /// Starts the lanes' tasks on the current runtime.
    pub(crate) fn spawn(pool: &PgPool) -> Lanes {
        Lanes {
            update: Lane::spawn(
                "update",
                Updates(pool.clone()),
                UPDATES_IN_FLIGHT,
                UPDATES_PER_BATCH,
            ),
            get: Lane::spawn(
                "read",
                Reads(pool.clone()),
                READS_IN_FLIGHT,
                READS_PER_BATCH,
            ),
        }
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
        let columns = UpdateColumns::of(inputs);
        let written: Vec<String> = columns
            .bind(sqlx::query_scalar(UPDATE_MANY))
            .fetch_all(&self.0)
            .await
            .map_err(unavailable)?;
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

/// [`UPDATE_MANY`]'s parameters: one array per column, one element per row.
#[derive(Default)]
struct UpdateColumns {
    id: Vec<String>,
    expected_version: Vec<i64>,
    channel: Vec<String>,
    status: Vec<String>,
    provider_sid: Vec<Option<String>>,
    destination_ciphertext: Vec<Vec<u8>>,
    destination_key_id: Vec<String>,
    destination_hash: Vec<String>,
    to_masked: Vec<String>,
    identity: Vec<Option<String>>,
    sends: Vec<i64>,
    checks: Vec<i64>,
    max_sends: Vec<i64>,
    max_checks: Vec<i64>,
    failure_code: Vec<Option<i64>>,
    updated_at: Vec<i64>,
    expires_at: Vec<i64>,
    version: Vec<i64>,
    idempotency_key: Vec<Option<String>>,
    allow_fallback: Vec<bool>,
    channels_tried: Vec<String>,
    fallback_reason: Vec<Option<String>>,
    delivery_status: Vec<Option<String>>,
    trace_parent: Vec<Option<String>>,
    risk: Vec<Option<String>>,
}

impl UpdateColumns {
    fn of(inputs: &[(VerificationRow, i64)]) -> UpdateColumns {
        let mut c = UpdateColumns::default();
        for (row, expected_version) in inputs {
            let row = row.clone();
            c.id.push(row.id);
            c.expected_version.push(*expected_version);
            c.channel.push(row.channel);
            c.status.push(row.status);
            c.provider_sid.push(row.provider_sid);
            c.destination_ciphertext.push(row.destination_ciphertext);
            c.destination_key_id.push(row.destination_key_id);
            c.destination_hash.push(row.destination_hash);
            c.to_masked.push(row.to_masked);
            c.identity.push(row.identity);
            c.sends.push(row.sends);
            c.checks.push(row.checks);
            c.max_sends.push(row.max_sends);
            c.max_checks.push(row.max_checks);
            c.failure_code.push(row.failure_code);
            c.updated_at.push(row.updated_at);
            c.expires_at.push(row.expires_at);
            c.version.push(row.version);
            c.idempotency_key.push(row.idempotency_key);
            c.allow_fallback.push(row.allow_fallback);
            c.channels_tried.push(row.channels_tried);
            c.fallback_reason.push(row.fallback_reason);
            c.delivery_status.push(row.delivery_status);
            c.trace_parent.push(row.trace_parent);
            c.risk.push(row.risk);
        }
        c
    }

    fn bind<'q, O>(
        self,
        query: sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        query
            .bind(self.id)
            .bind(self.expected_version)
            .bind(self.channel)
            .bind(self.status)
            .bind(self.provider_sid)
            .bind(self.destination_ciphertext)
            .bind(self.destination_key_id)
            .bind(self.destination_hash)
            .bind(self.to_masked)
            .bind(self.identity)
            .bind(self.sends)
            .bind(self.checks)
            .bind(self.max_sends)
            .bind(self.max_checks)
            .bind(self.failure_code)
            .bind(self.updated_at)
            .bind(self.expires_at)
            .bind(self.version)
            .bind(self.idempotency_key)
            .bind(self.allow_fallback)
            .bind(self.channels_tried)
            .bind(self.fallback_reason)
            .bind(self.delivery_status)
            .bind(self.trace_parent)
            .bind(self.risk)
    }
}
