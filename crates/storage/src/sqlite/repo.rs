//! What the SQLite store does, over its [`Engine`]: the statements of `crate::sql` (and
//! the few spelled for SQLite below) run as writer jobs or reads, with the rules the
//! PostgreSQL store keeps in `crate::repo`, `crate::messages` and `crate::abuse`. The
//! decisions made from what a statement returned (GCRA, blocks, counter sums, row
//! conversion) are those modules' own functions, so the two stores compute them once.
//!
//! Every write is one job, so it is atomic on its own and runs while no other writer can
//! change the rows it reads: a collision is read back in the same job, and no retry loop
//! is needed where PostgreSQL's `READ COMMITTED` needs one.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::abuse::{
    Block, BlockAdded, BlockKind, BlockTarget, CountAdd, CountQuery, Counts, FlushMark,
    LimitDecision, LimitRequest, Signals,
};
use domain::delivery::DeliveryReport;
use domain::events::{Claim, DedupeError, Envelope, MessageId};
use domain::ports::{Inserted, Limited, OutboxMessage, Recorded, StoreError};
use domain::{
    DestinationHash, IdempotencyKey, Purpose, Verification, VerificationId, VerificationStatus,
};
use rusqlite::Connection;

use super::engine::{Engine, control, execute, query, query_opt, store_error};
use super::rows;
use crate::abuse::{
    BlockWrite, PURGE_BATCH, bucket_of, counts_input, decide, decide_taken, flushed_seq, mark_seq,
    peek_decisions, peek_input, sorted_blocks,
};
use crate::messages::{QUARANTINED, claimed_messages, lease_millis, truncate_error};
use crate::row::{BlockRow, CountsRow, EnvelopeRow, ReportRow, VerificationRow, to_millis};
use crate::sql::{self, outbox_columns};

/// Now on SQLite's clock, in milliseconds since the Unix epoch (julianday arithmetic, which
/// every SQLite version has). One statement sees one value.
macro_rules! now_millis {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    };
}

/// Leases due outbox rows (see `crate::repo::Dialect::CLAIM_OUTBOX`). SQLite has no row
/// locks: the claim runs in the writer's transaction, so a concurrent claim starts after
/// this one committed and finds the rows leased.
pub(crate) const CLAIM_OUTBOX: &str = concat!(
    "UPDATE outbox SET next_attempt_at = $2 WHERE id IN (",
    "SELECT id FROM outbox WHERE published_at IS NULL AND next_attempt_at <= $1",
    " ORDER BY next_attempt_at, id LIMIT $3)",
    " RETURNING ",
    outbox_columns!()
);

/// The ids come as a JSON array, which `json_each` turns into rows.
const MARK_PUBLISHED: &str = "UPDATE outbox SET published_at = $2 \
     WHERE published_at IS NULL AND id IN (SELECT value FROM json_each($1))";

const CLAIM_MESSAGE: &str = sql::claim_message!(now_millis!());

const COMPLETE_MESSAGE: &str = sql::complete_message!(now_millis!());

/// Takes one event from the key `$2` (with its quota's interval `$3` and period `$4`) at
/// `$1` (now, in milliseconds): the step of [`domain::abuse::gcra`] as one upsert. The
/// writer runs it once per key, statements being cheap in process, rather than parsing a
/// JSON list. (PostgreSQL's copy of this step is the function `take_rate_limits` of its
/// migration 0005.)
///
/// A new key's first event is always allowed (its interval, `period / limit`, is at most
/// the period) and stores `now + interval`. A stored key decides at `at`, the later of
/// `now` and the latest time it was taken at (`latest_ms`, migration 0009: takes can reach
/// the writer out of the order of their stamps): it computes
/// `new_tat = max(tat, at) + interval` and is allowed when `new_tat - at <= period`; then
/// `tat` becomes `new_tat`, else it stays. Every `SET` expression reads the row as it was
/// before the statement, so `allowed`, `tat` and `latest_ms` decide on the same old row.
/// Returns `key, tat, allowed, at`; from the stored `tat` the caller recovers the old one
/// (`tat - interval` when allowed, `tat` when not) to compute the rest of the decision
/// with `gcra` itself. `WHERE true` keeps SQLite from reading `ON CONFLICT` as a join's
/// `ON`.
const TAKE_LIMIT: &str = "INSERT INTO rate_limits \
     (key, tat, interval_ms, period_ms, allowed, latest_ms) \
     SELECT $2, $1 + $3, $3, $4, TRUE, $1 WHERE true \
     ON CONFLICT (key) DO UPDATE SET \
     tat = CASE WHEN max(rate_limits.tat, rate_limits.latest_ms, $1) + excluded.interval_ms \
     - max(rate_limits.latest_ms, $1) <= excluded.period_ms \
     THEN max(rate_limits.tat, rate_limits.latest_ms, $1) + excluded.interval_ms \
     ELSE rate_limits.tat END, \
     allowed = max(rate_limits.tat, rate_limits.latest_ms, $1) + excluded.interval_ms \
     - max(rate_limits.latest_ms, $1) <= excluded.period_ms, \
     latest_ms = max(rate_limits.latest_ms, $1), \
     interval_ms = excluded.interval_ms, period_ms = excluded.period_ms \
     RETURNING key, tat, allowed, latest_ms";

pub(crate) const READ_LIMITS: &str =
    sql::read_limits!("(SELECT json_extract(value, '$.key') AS key FROM json_each($1)) AS input");

const ADD_COUNTS: &str = sql::add_counts!(
    "(SELECT json_extract(value, '$.key') AS key,
      json_extract(value, '$.attempts') AS attempts,
      json_extract(value, '$.approved') AS approved
      FROM json_each($2)) AS input"
);

/// The statements of a purge that walks a table's primary key (`key`, text) in slices.
pub(crate) struct Slices {
    /// The key that ends a slice: the one `$2` rows on from the first key after `$1`;
    /// none when fewer rows are left.
    pub(crate) end: &'static str,
    /// Deletes what is due by `$3` among the keys after `$1` up to `$2`.
    pub(crate) delete: &'static str,
    /// Deletes what is due by `$2` among every key after `$1`: the last slice.
    pub(crate) delete_rest: &'static str,
}

/// Counter buckets starting at or before the bound.
pub(crate) const COUNTS_SLICES: Slices = Slices {
    end: "SELECT key FROM risk_counters WHERE key > $1 ORDER BY key, bucket LIMIT 1 OFFSET $2",
    delete: "DELETE FROM risk_counters WHERE key > $1 AND key <= $2 AND bucket <= $3",
    delete_rest: "DELETE FROM risk_counters WHERE key > $1 AND bucket <= $2",
};

/// Limiter rows whose theoretical arrival time is at or before the bound: they hold no
/// information.
pub(crate) const LIMITS_SLICES: Slices = Slices {
    end: "SELECT key FROM rate_limits WHERE key > $1 ORDER BY key LIMIT 1 OFFSET $2",
    delete: "DELETE FROM rate_limits WHERE key > $1 AND key <= $2 AND tat <= $3",
    delete_rest: "DELETE FROM rate_limits WHERE key > $1 AND tat <= $2",
};

/// The sums of one counter (`$1`) over the buckets from `$2` on: one range of the primary
/// key, both sums in one pass (`sql::read_counts!` reads a JSON list of such queries).
pub(crate) const READ_COUNT: &str = "SELECT COALESCE(SUM(attempts), 0), COALESCE(SUM(approved), 0) \
     FROM risk_counters WHERE key = $1 AND bucket >= $2";

/// The block in force at `$3` on one target (`$1` kind, `$2` value), by the primary key.
pub(crate) const ACTIVE_BLOCK: &str = concat!(
    "SELECT ",
    sql::block_columns!(),
    " FROM risk_blocks WHERE kind = $1 AND value = $2 AND expires_at > $3"
);

/// The store's operations on one database. Cloning shares the engine.
#[derive(Debug, Clone)]
pub(crate) struct SqliteRepo {
    pub(crate) engine: Arc<Engine>,
}

/// Reads the verification a statement returns, if any, and converts it.
fn fetch_verification(
    conn: &Connection,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Option<Verification>, StoreError> {
    query_opt(conn, sql, args, rows::verification)?
        .map(Verification::try_from)
        .transpose()
        .map_err(StoreError::from)
}

/// Writes `row` unless a unique index holds it already; returns whether it did.
fn insert_row(conn: &Connection, row: &VerificationRow) -> Result<bool, StoreError> {
    Ok(query_opt(conn, sql::INSERT, &rows::insert_args(row), |_| Ok(()))?.is_some())
}

/// Writes `row` if it still has `expected`; returns whether it did.
fn update_row(conn: &Connection, row: &VerificationRow, expected: i64) -> Result<bool, StoreError> {
    Ok(query_opt(
        conn,
        sql::UPDATE,
        &rows::update_args(row, &expected),
        |_| Ok(()),
    )?
    .is_some())
}

/// [`crate::repo::Repo::insert`]'s rules in one job: the writer's transaction holds the
/// database, so a row that refused the insert is read back unchanged.
fn insert_in(conn: &Connection, verification: &Verification) -> Result<Inserted, StoreError> {
    let row = VerificationRow::from(verification);
    if insert_row(conn, &row)? {
        return Ok(Inserted::Created);
    }
    if let Some(key) = verification.idempotency_key()
        && let Some(existing) = fetch_verification(
            conn,
            sql::FIND_BY_IDEMPOTENCY_KEY,
            &[
                &verification.purpose().as_str(),
                &verification.owner(),
                &key.as_str(),
            ],
        )?
    {
        tracing::debug!(existing_id = %existing.id(), "idempotency key already used");
        return Ok(Inserted::Existing(Box::new(existing)));
    }
    if verification.status() == VerificationStatus::Pending
        && let Some(mut pending) = fetch_verification(
            conn,
            sql::PENDING_SLOT,
            &[
                &verification.purpose().as_str(),
                &verification.destination_hash().as_str(),
            ],
        )?
    {
        let read_at = i64::from(pending.version());
        if !pending.expire_if_due(verification.created_at()) {
            return Ok(Inserted::Pending(Box::new(pending)));
        }
        // The pending one is past its expiry: it gives up the slot in this same job.
        if !update_row(conn, &VerificationRow::from(&pending), read_at)? || !insert_row(conn, &row)?
        {
            return Err(StoreError::Unavailable(format!(
                "verification {} collided with a row that changed under the write lock",
                verification.id()
            )));
        }
        tracing::debug!(expired_id = %pending.id(), "expired the previous pending verification");
        return Ok(Inserted::Created);
    }
    // Ids are fresh UUIDv7s: a reused one is a bug, and answering with the stored row
    // would hand one caller another's verification.
    Err(StoreError::Unavailable(format!(
        "verification {} already exists",
        verification.id()
    )))
}

/// [`crate::repo::Repo::update`]'s rules: the optimistic write, or why it did not happen.
fn update_in(
    conn: &Connection,
    row: &VerificationRow,
    id: VerificationId,
    expected: i64,
) -> Result<(), StoreError> {
    // The writer holds the database: the row read here is the row the update replaces.
    let Some(stored) = query_opt(conn, sql::GET, &[&row.id], rows::verification)? else {
        return Err(StoreError::NotFound(id));
    };
    if stored.version != expected {
        tracing::debug!(
            stored_version = stored.version,
            "optimistic update lost to a newer write"
        );
        return Err(StoreError::Conflict(id));
    }
    // Only the columns the transition changed are written: SQLite rewrites the entry of
    // every index whose columns a statement sets, changed or not, and each index page
    // touched is a page the commit writes. A start's send touches the provider id's index
    // and a claimed check no index at all, instead of all four.
    let old = rows::mutable_columns(&stored);
    let new = rows::mutable_columns(row);
    let mut set = String::new();
    let mut args: Vec<&dyn rusqlite::ToSql> = vec![&row.id, &expected];
    for ((name, before), (_, after)) in old.iter().zip(&new) {
        let changed = match (before.to_sql(), after.to_sql()) {
            (Ok(before), Ok(after)) => before != after,
            _ => true,
        };
        if changed {
            if !set.is_empty() {
                set.push_str(", ");
            }
            args.push(*after);
            set.push_str(&format!("{name} = ${}", args.len()));
        }
    }
    if set.is_empty() {
        return Ok(());
    }
    let statement = format!("UPDATE verifications SET {set} WHERE id = $1 AND version = $2");
    match execute(conn, &statement, &args)? {
        1 => Ok(()),
        _ => Err(StoreError::Conflict(id)),
    }
}

/// The JSON array SQLite's `json_each` reads as a list of ids.
fn id_list(ids: &[i64]) -> String {
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    format!("[{}]", ids.join(","))
}

/// What an outbox claim found: the messages, or the first corrupt row it set aside.
enum Claimed {
    Messages(Vec<OutboxMessage>),
    Corrupt(String),
}

fn dedupe_error(error: StoreError) -> DedupeError {
    DedupeError(error.to_string())
}

impl SqliteRepo {
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.engine
            .read(|conn| query_opt(conn, "SELECT 1", &[], |r| r.get::<_, i64>(0)).map(drop))
            .await
    }

    // Verifications.

    pub(crate) async fn insert(&self, verification: &Verification) -> Result<Inserted, StoreError> {
        let verification = verification.clone();
        self.engine
            .write(move |conn| insert_in(conn, &verification))
            .await
    }

    pub(crate) async fn insert_limited(
        &self,
        verification: &Verification,
        limits: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Limited<Inserted>, StoreError> {
        let verification = verification.clone();
        let limits = limits.to_vec();
        self.engine
            .write(move |conn| limited(conn, &limits, now, |conn| insert_in(conn, &verification)))
            .await
    }

    pub(crate) async fn update_limited(
        &self,
        verification: &Verification,
        expected_version: u32,
        limits: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Limited<()>, StoreError> {
        let row = VerificationRow::from(verification);
        let id = verification.id();
        let limits = limits.to_vec();
        self.engine
            .write(move |conn| {
                limited(conn, &limits, now, |conn| {
                    update_in(conn, &row, id, i64::from(expected_version))
                })
            })
            .await
    }

    pub(crate) async fn get(
        &self,
        id: &VerificationId,
    ) -> Result<Option<Verification>, StoreError> {
        let id = id.to_string();
        self.engine
            .read(move |conn| fetch_verification(conn, sql::GET, &[&id]))
            .await
    }

    pub(crate) async fn find_by_provider_sid(
        &self,
        provider_sid: &str,
    ) -> Result<Option<Verification>, StoreError> {
        let sid = provider_sid.to_owned();
        self.engine
            .read(move |conn| fetch_verification(conn, sql::FIND_BY_PROVIDER_SID, &[&sid]))
            .await
    }

    pub(crate) async fn find_by_idempotency_key(
        &self,
        purpose: &Purpose,
        owner: &str,
        key: &IdempotencyKey,
    ) -> Result<Option<Verification>, StoreError> {
        let (purpose, owner, key) = (
            purpose.as_str().to_owned(),
            owner.to_owned(),
            key.as_str().to_owned(),
        );
        self.engine
            .read(move |conn| {
                fetch_verification(
                    conn,
                    sql::FIND_BY_IDEMPOTENCY_KEY,
                    &[&purpose, &owner, &key],
                )
            })
            .await
    }

    pub(crate) async fn find_pending(
        &self,
        purpose: &Purpose,
        destination: &DestinationHash,
        now: DateTime<Utc>,
    ) -> Result<Option<Verification>, StoreError> {
        let purpose = purpose.as_str().to_owned();
        let destination = destination.as_str().to_owned();
        let now = to_millis(now);
        self.engine
            .read(move |conn| {
                fetch_verification(conn, sql::FIND_PENDING, &[&purpose, &destination, &now])
            })
            .await
    }

    pub(crate) async fn update(
        &self,
        verification: &Verification,
        expected_version: u32,
    ) -> Result<(), StoreError> {
        let row = VerificationRow::from(verification);
        let id = verification.id();
        self.engine
            .write(move |conn| update_in(conn, &row, id, i64::from(expected_version)))
            .await
    }

    pub(crate) async fn list_sealed_with_other_key(
        &self,
        current_key_id: &str,
        limit: u32,
    ) -> Result<Vec<Verification>, StoreError> {
        self.list(sql::SEALED_WITH_OTHER_KEY, current_key_id.to_owned(), limit)
            .await
    }

    pub(crate) async fn list_unconfirmed(
        &self,
        created_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Verification>, StoreError> {
        self.list(sql::UNCONFIRMED, to_millis(created_before), limit)
            .await
    }

    /// The verifications `statement` lists, whose parameters are `first` and the limit.
    async fn list(
        &self,
        statement: &'static str,
        first: impl rusqlite::ToSql + Send + 'static,
        limit: u32,
    ) -> Result<Vec<Verification>, StoreError> {
        let limit = i64::from(limit);
        let rows = self
            .engine
            .read(move |conn| query(conn, statement, &[&first, &limit], rows::verification))
            .await?;
        crate::row::verifications(rows)
    }

    // Delivery reports, the outbox and the dedupe memory.

    pub(crate) async fn record_report(
        &self,
        report: &DeliveryReport,
        event: &Envelope,
        now: DateTime<Utc>,
    ) -> Result<Recorded, StoreError> {
        let envelope = EnvelopeRow::try_from(event)?;
        let report = ReportRow::new(report, now, event.message_id);
        let message_id = event.message_id;
        let now = to_millis(now);
        self.engine
            .write(move |conn| {
                // The report first: a duplicate stops before the outbox is touched.
                let new = query_opt(
                    conn,
                    sql::INSERT_REPORT,
                    &rows::report_args(&report),
                    |_| Ok(()),
                )?;
                if new.is_none() {
                    return Ok(Recorded::Duplicate);
                }
                let queued = query_opt(
                    conn,
                    sql::ENQUEUE,
                    &rows::envelope_args(&envelope, &now),
                    |_| Ok(()),
                )?;
                if queued.is_none() {
                    // A publisher reused a message id: recording the report without its
                    // event would lose the event (the job's error rolls the report back).
                    return Err(StoreError::Unavailable(format!(
                        "outbox message {message_id} already exists"
                    )));
                }
                Ok(Recorded::New)
            })
            .await
    }

    pub(crate) async fn enqueue(
        &self,
        envelope: &Envelope,
        now: DateTime<Utc>,
    ) -> Result<Recorded, StoreError> {
        let row = EnvelopeRow::try_from(envelope)?;
        let now = to_millis(now);
        self.engine
            .write(move |conn| {
                let queued =
                    query_opt(conn, sql::ENQUEUE, &rows::envelope_args(&row, &now), |_| {
                        Ok(())
                    })?;
                Ok(if queued.is_some() {
                    Recorded::New
                } else {
                    Recorded::Duplicate
                })
            })
            .await
    }

    pub(crate) async fn claim_outbox(
        &self,
        limit: u32,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = to_millis(now);
        let until = now.saturating_add(lease_millis(lease));
        let limit = i64::from(limit);
        let claimed = self
            .engine
            .write(move |conn| {
                control(conn, "SAVEPOINT claim").map_err(store_error)?;
                let found = query(conn, CLAIM_OUTBOX, &[&now, &until, &limit], rows::outbox)?;
                let (messages, corrupt) = claimed_messages(found);
                if corrupt.is_empty() {
                    control(conn, "RELEASE claim").map_err(store_error)?;
                    return Ok(Claimed::Messages(messages));
                }
                // A row that cannot be read back would come back in every batch and stall
                // the relay: the claim is undone, the row set aside (never due again, its
                // `last_error` saying why), and this claim fails once.
                control(conn, "ROLLBACK TO claim")
                    .and_then(|()| control(conn, "RELEASE claim"))
                    .map_err(store_error)?;
                for (id, problem) in &corrupt {
                    tracing::error!(outbox_id = id, %problem, "outbox message is corrupt; set aside");
                    let error = truncate_error(&format!("corrupt: {problem}"));
                    execute(conn, sql::RETRY_LATER, &[id, &QUARANTINED, &error])?;
                }
                Ok(Claimed::Corrupt(corrupt[0].1.to_string()))
            })
            .await?;
        match claimed {
            Claimed::Messages(messages) => Ok(messages),
            Claimed::Corrupt(problem) => Err(StoreError::Corrupt(problem)),
        }
    }

    pub(crate) async fn mark_published(
        &self,
        ids: &[i64],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = id_list(ids);
        let now = to_millis(now);
        self.engine
            .write(move |conn| execute(conn, MARK_PUBLISHED, &[&ids, &now]).map(drop))
            .await
    }

    pub(crate) async fn retry_later(
        &self,
        id: i64,
        at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), StoreError> {
        let at = to_millis(at);
        let error = truncate_error(error);
        self.engine
            .write(move |conn| execute(conn, sql::RETRY_LATER, &[&id, &at, &error]).map(drop))
            .await
    }

    pub(crate) async fn set_aside(&self, id: i64, error: &str) -> Result<(), StoreError> {
        let error = truncate_error(error);
        self.engine
            .write(move |conn| {
                execute(conn, sql::RETRY_LATER, &[&id, &QUARANTINED, &error]).map(drop)
            })
            .await
    }

    pub(crate) async fn count_set_aside(&self) -> Result<u64, StoreError> {
        let counts = self
            .engine
            .read(move |conn| {
                query(conn, sql::COUNT_SET_ASIDE, &[&QUARANTINED], |row| {
                    row.get::<_, i64>(0)
                })
            })
            .await?;
        Ok(counts
            .first()
            .map_or(0, |&count| u64::try_from(count).unwrap_or(0)))
    }

    /// Deletes in batches, one job each, until a batch comes back short.
    async fn purge_batches(&self, statement: &'static str, bound: i64) -> Result<u64, StoreError> {
        let batch = i64::from(PURGE_BATCH);
        let mut purged = 0;
        loop {
            let deleted = self
                .engine
                .write(move |conn| execute(conn, statement, &[&bound, &batch]))
                .await?;
            purged += deleted;
            if deleted < u64::from(PURGE_BATCH) {
                return Ok(purged);
            }
        }
    }

    pub(crate) async fn purge_published(
        &self,
        older_than: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let batch = i64::from(PURGE_BATCH);
        let older_than = to_millis(older_than);
        let mut purged = 0;
        loop {
            // `RETURNING` makes it a query: the ids deleted are counted.
            let ids = self
                .engine
                .write(move |conn| {
                    query(conn, sql::PURGE_PUBLISHED, &[&older_than, &batch], |r| {
                        r.get::<_, i64>(0)
                    })
                })
                .await?;
            purged += ids.len() as u64;
            if ids.len() < PURGE_BATCH as usize {
                return Ok(purged);
            }
        }
    }

    pub(crate) async fn claim_message(
        &self,
        consumer: &str,
        message_id: MessageId,
        lease: Duration,
    ) -> Result<Claim, DedupeError> {
        let consumer = consumer.to_owned();
        let message_id = message_id.to_string();
        let lease = lease_millis(lease);
        self.engine
            .write(move |conn| {
                let acquired = query_opt(
                    conn,
                    CLAIM_MESSAGE,
                    &[&consumer, &message_id, &lease],
                    |r| r.get::<_, String>(0),
                )?;
                if acquired.is_some() {
                    return Ok(Claim::Acquired);
                }
                // Done, or another holder's lease still runs.
                let state = query_opt(conn, sql::MESSAGE_STATE, &[&consumer, &message_id], |r| {
                    r.get::<_, String>(0)
                })?;
                Ok(match state.as_deref() {
                    Some("done") => Claim::Done,
                    _ => Claim::Busy,
                })
            })
            .await
            .map_err(dedupe_error)
    }

    pub(crate) async fn complete_message(
        &self,
        consumer: &str,
        message_id: MessageId,
    ) -> Result<(), DedupeError> {
        let (consumer, message_id) = (consumer.to_owned(), message_id.to_string());
        self.engine
            .write(move |conn| execute(conn, COMPLETE_MESSAGE, &[&consumer, &message_id]).map(drop))
            .await
            .map_err(dedupe_error)
    }

    pub(crate) async fn release_message(
        &self,
        consumer: &str,
        message_id: MessageId,
    ) -> Result<(), DedupeError> {
        let (consumer, message_id) = (consumer.to_owned(), message_id.to_string());
        self.engine
            .write(move |conn| {
                execute(conn, sql::RELEASE_MESSAGE, &[&consumer, &message_id]).map(drop)
            })
            .await
            .map_err(dedupe_error)
    }

    // Abuse protection: limits, counters, blocks.

    pub(crate) async fn take_limits(
        &self,
        requests: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Vec<LimitDecision>, StoreError> {
        let requests = requests.to_vec();
        self.engine
            .write(move |conn| take_limits_in(conn, &requests, now))
            .await
    }

    pub(crate) async fn peek_limits(
        &self,
        requests: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Vec<LimitDecision>, StoreError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let input = peek_input(requests);
        let found = self
            .engine
            .read(move |conn| query(conn, READ_LIMITS, &[&input], rows::limit))
            .await?;
        Ok(peek_decisions(requests, found, to_millis(now)))
    }

    /// Deletes the limiter rows whose `tat` has passed, in slices of the primary key (`tat`
    /// is not indexed, see migration 0006).
    pub(crate) async fn purge_limits(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.purge_in_slices(&LIMITS_SLICES, to_millis(now)).await
    }

    /// Walks a table's primary key in slices of about [`PURGE_BATCH`] rows, deleting in each
    /// what `bound` makes due: one writer job per slice, so a purge of a large table never
    /// holds the writer for long, and no scan of the whole table runs in one job.
    async fn purge_in_slices(
        &self,
        slices: &'static Slices,
        bound: i64,
    ) -> Result<u64, StoreError> {
        let skip = i64::from(PURGE_BATCH) - 1;
        let mut purged = 0;
        // Every key sorts after the empty string.
        let mut after = String::new();
        loop {
            let from = std::mem::take(&mut after);
            let (deleted, end) = self
                .engine
                .write(move |conn| {
                    let end: Option<String> =
                        query_opt(conn, slices.end, &[&from, &skip], |row| row.get(0))?;
                    let deleted = match &end {
                        Some(end) => execute(conn, slices.delete, &[&from, end, &bound])?,
                        None => execute(conn, slices.delete_rest, &[&from, &bound])?,
                    };
                    Ok((deleted, end))
                })
                .await?;
            purged += deleted;
            match end {
                Some(end) => after = end,
                None => return Ok(purged),
            }
        }
    }

    pub(crate) async fn add_counts(
        &self,
        adds: &[CountAdd],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let Some(input) = counts_input(adds) else {
            return Ok(());
        };
        let bucket = bucket_of(now);
        self.engine
            .write(move |conn| execute(conn, ADD_COUNTS, &[&bucket, &input]).map(drop))
            .await
    }

    pub(crate) async fn read_counts(
        &self,
        queries: &[CountQuery],
    ) -> Result<Vec<Counts>, StoreError> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let queries = queries.to_vec();
        self.engine
            .read(move |conn| read_counts_in(conn, &queries))
            .await
    }

    /// Counters and blocks in one read transaction.
    pub(crate) async fn read_signals(
        &self,
        queries: &[CountQuery],
        targets: &[BlockTarget],
        now: DateTime<Utc>,
    ) -> Result<(Vec<Counts>, Vec<Block>), StoreError> {
        let signals = self.read_signals_marked(queries, targets, now, "").await?;
        Ok((signals.counts, signals.blocks))
    }

    /// Counters, blocks and `replica`'s last write of counters, in one read transaction.
    pub(crate) async fn read_signals_marked(
        &self,
        queries: &[CountQuery],
        targets: &[BlockTarget],
        now: DateTime<Utc>,
        replica: &str,
    ) -> Result<Signals, StoreError> {
        let queries = queries.to_vec();
        let targets = targets.to_vec();
        let replica = replica.to_owned();
        self.engine
            .read(move |conn| {
                // One read transaction: the counters and blocks of one moment. (A read
                // that runs as a writer job, on an in-memory database, is in one already.)
                let own = conn.is_autocommit();
                if own {
                    control(conn, "BEGIN").map_err(store_error)?;
                }
                let counts = read_counts_in(conn, &queries)?;
                let blocks = active_blocks_in(conn, &targets, now)?;
                let flushed = if replica.is_empty() {
                    0
                } else {
                    query_opt(conn, sql::FLUSHED, &[&replica], |row| row.get::<_, i64>(0))?
                        .map(flushed_seq)
                        .transpose()?
                        .unwrap_or(0)
                };
                if own {
                    control(conn, "COMMIT").map_err(store_error)?;
                }
                Ok(Signals {
                    counts,
                    blocks,
                    flushed,
                })
            })
            .await
    }

    /// [`Repo::add_counts`] and the replica's mark, in one write.
    pub(crate) async fn add_counts_marked(
        &self,
        adds: &[CountAdd],
        now: DateTime<Utc>,
        mark: &FlushMark,
    ) -> Result<(), StoreError> {
        let input = counts_input(adds);
        let bucket = bucket_of(now);
        let (replica, seq, at) = (mark.replica.clone(), mark_seq(mark)?, to_millis(now));
        self.engine
            .write(move |conn| {
                if let Some(input) = input {
                    execute(conn, ADD_COUNTS, &[&bucket, &input])?;
                }
                execute(conn, sql::MARK_FLUSH, &[&replica, &seq, &at]).map(drop)
            })
            .await
    }

    /// Deletes the counter buckets that ended by `older_than`, in slices of the primary
    /// key (the table has no index by minute, see migration 0008).
    pub(crate) async fn purge_counts(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        // A bucket ends a minute after it starts: those starting at or before this one
        // ended at or before `older_than`.
        let bucket = i64::try_from(domain::abuse::COUNTER_BUCKET.as_millis()).unwrap_or(i64::MAX);
        let last = to_millis(older_than).saturating_sub(bucket);
        let purged = self.purge_in_slices(&COUNTS_SLICES, last).await?;
        let older_than = to_millis(older_than);
        self.engine
            .write(move |conn| execute(conn, sql::PURGE_FLUSHES, &[&older_than]))
            .await?;
        Ok(purged)
    }

    pub(crate) async fn purge_blocks(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        self.purge_batches(sql::PURGE_BLOCKS, to_millis(older_than))
            .await
    }

    pub(crate) async fn add_block(&self, block: &Block) -> Result<BlockAdded, StoreError> {
        let row = BlockRow::from(block);
        let source = block.source;
        let target = block.target.to_string();
        self.engine
            .write(move |conn| {
                let inserted =
                    query_opt(conn, sql::INSERT_BLOCK, &rows::block_args(&row), |_| Ok(()))?;
                if inserted.is_some() {
                    return Ok(BlockAdded::New);
                }
                let held = query_opt(
                    conn,
                    sql::block_state!(),
                    &[&row.kind, &row.value],
                    rows::held_block,
                )?
                .ok_or_else(|| {
                    StoreError::Unavailable(format!(
                        "the block on {target} vanished while it was added to"
                    ))
                })?;
                Ok(match decide(held, &row, source) {
                    BlockWrite::Exempt => BlockAdded::Exempt,
                    BlockWrite::Extend { expires_at } => {
                        if expires_at != held.expires_at {
                            execute(
                                conn,
                                sql::EXTEND_BLOCK,
                                &[&row.kind, &row.value, &expires_at],
                            )?;
                        }
                        BlockAdded::Extended
                    }
                    BlockWrite::Replace => {
                        execute(conn, sql::REPLACE_BLOCK, &rows::block_args(&row))?;
                        BlockAdded::New
                    }
                })
            })
            .await
    }

    pub(crate) async fn active_blocks(
        &self,
        targets: &[BlockTarget],
        now: DateTime<Utc>,
    ) -> Result<Vec<Block>, StoreError> {
        let targets = targets.to_vec();
        self.engine
            .read(move |conn| active_blocks_in(conn, &targets, now))
            .await
    }

    pub(crate) async fn list_blocks(
        &self,
        kind: Option<BlockKind>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Block>, StoreError> {
        let kind = kind.map(|k| k.as_str().to_owned());
        let now = to_millis(now);
        let limit = i64::from(limit);
        let found = self
            .engine
            .read(move |conn| query(conn, sql::LIST_BLOCKS, &[&now, &kind, &limit], rows::block))
            .await?;
        crate::abuse::blocks(found)
    }

    pub(crate) async fn lift_block(
        &self,
        target: &BlockTarget,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let kind = target.kind.as_str().to_owned();
        let value = target.value.clone();
        let now = to_millis(now);
        self.engine
            .write(move |conn| {
                Ok(query_opt(conn, sql::LIFT_BLOCK, &[&kind, &value, &now], |_| Ok(()))?.is_some())
            })
            .await
    }
}

/// Takes one event from each of `limits` and, when all allow it, runs `write`; when one
/// refuses, undoes the takes (a savepoint inside the job) and writes nothing.
fn limited<T>(
    conn: &Connection,
    limits: &[LimitRequest],
    now: DateTime<Utc>,
    write: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<Limited<T>, StoreError> {
    if limits.is_empty() {
        return Ok(Limited::Done {
            decisions: Vec::new(),
            outcome: write(conn)?,
        });
    }
    control(conn, "SAVEPOINT limits").map_err(store_error)?;
    let decisions = take_limits_in(conn, limits, now)?;
    if decisions.iter().any(|d| !d.allowed) {
        control(conn, "ROLLBACK TO limits")
            .and_then(|()| control(conn, "RELEASE limits"))
            .map_err(store_error)?;
        return Ok(Limited::Refused(decisions));
    }
    control(conn, "RELEASE limits").map_err(store_error)?;
    // A failed write returns its error: the job's own savepoint then undoes the takes too.
    let outcome = write(conn)?;
    Ok(Limited::Done { decisions, outcome })
}

/// Takes one event from each request, in request order, one statement per key: a key
/// named twice is taken twice, the second time after the first, as `RateLimitStore::take`
/// promises.
fn take_limits_in(
    conn: &Connection,
    requests: &[LimitRequest],
    now: DateTime<Utc>,
) -> Result<Vec<LimitDecision>, StoreError> {
    let now_ms = to_millis(now);
    requests
        .iter()
        .map(|request| {
            let interval = request.quota.emission_interval_ms();
            let period = request.quota.period_ms();
            let row = query_opt(
                conn,
                TAKE_LIMIT,
                &[&now_ms, &request.key, &interval, &period],
                rows::taken,
            )?
            .ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "taking `{}` returned no state for it",
                    request.key
                ))
            })?;
            decide_taken(request, &row)
        })
        .collect()
}

/// The sums of each query over its window, one range of the primary key each.
fn read_counts_in(conn: &Connection, queries: &[CountQuery]) -> Result<Vec<Counts>, StoreError> {
    let mut counts = Vec::with_capacity(queries.len());
    for (i, q) in queries.iter().enumerate() {
        let since = bucket_of(q.since);
        let sums = query_opt(conn, READ_COUNT, &[&q.key, &since], |r| {
            Ok(CountsRow {
                i: i64::try_from(i).unwrap_or(i64::MAX),
                attempts: r.get(0)?,
                approved: r.get(1)?,
            })
        })?;
        counts.push(match sums {
            Some(row) => Counts::try_from(&row)?,
            None => Counts::default(),
        });
    }
    Ok(counts)
}

/// The blocks in force at `now` on the distinct `targets`, by target.
fn active_blocks_in(
    conn: &Connection,
    targets: &[BlockTarget],
    now: DateTime<Utc>,
) -> Result<Vec<Block>, StoreError> {
    let now = to_millis(now);
    let distinct: std::collections::BTreeSet<&BlockTarget> = targets.iter().collect();
    let mut found = Vec::new();
    for target in distinct {
        found.extend(query_opt(
            conn,
            ACTIVE_BLOCK,
            &[&target.kind.as_str(), &target.value, &now],
            rows::block,
        )?);
    }
    sorted_blocks(found)
}
