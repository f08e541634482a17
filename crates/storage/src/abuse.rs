//! Abuse protection's shared state, generic over the database like the verifications in
//! `repo`: the rate limiter's GCRA state ([`domain::abuse::RateLimitStore`]), and fraud
//! scoring's windowed counters and blocks ([`domain::abuse::RiskStore`]).
//!
//! The arithmetic of a take is [`gcra`]'s: the database applies its step in one upsert per
//! key (PostgreSQL's function `take_rate_limits`, SQLite's `TAKE_LIMIT` statement), and the
//! decision is then computed by `gcra` itself from the state the upsert returns, so there
//! is one copy of the maths.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use domain::abuse::{
    Block, BlockAdded, BlockKind, BlockSource, BlockTarget, COUNTER_BUCKET, CountAdd, CountQuery,
    Counts, FlushMark, LimitDecision, LimitRequest, Signals, gcra,
};
use domain::ports::StoreError;
use serde_json::{Value, json};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, FromRow, IntoArguments, Type};

use crate::error::{read_error, unavailable};
use crate::lane::SignalsRead;
use crate::repo::{Dialect, Repo};
use crate::row::{
    BlockRow, CountsRow, HeldBlock, LimitRow, Signal, SignalRow, TakenRow, bind_block, to_millis,
};
use crate::sql;

/// One counter bucket in milliseconds (a minute: the cast cannot truncate).
const BUCKET_MS: i64 = COUNTER_BUCKET.as_millis() as i64;

/// How many counter buckets one statement of a purge deletes (as for the outbox: few round
/// trips, no statement holding many row locks).
pub(crate) const PURGE_BATCH: u32 = 1000;

/// The start of the counter bucket `at` falls in, in milliseconds.
pub(crate) fn bucket_of(at: DateTime<Utc>) -> i64 {
    to_millis(at).div_euclid(BUCKET_MS) * BUCKET_MS
}

/// `requests` split into rounds of distinct keys, each sorted by key, as positions into
/// `requests`: a key named twice is taken once in the first round and once more in the
/// second, as two calls would. One upsert cannot change a row twice, and keys in one order
/// keep concurrent upserts from deadlocking.
pub(crate) fn rounds(requests: &[LimitRequest]) -> Vec<Vec<usize>> {
    let mut rounds: Vec<BTreeMap<&str, usize>> = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        let free = rounds
            .iter()
            .position(|round| !round.contains_key(request.key.as_str()));
        match free {
            Some(r) => {
                rounds[r].insert(&request.key, i);
            }
            None => rounds.push(BTreeMap::from([(request.key.as_str(), i)])),
        }
    }
    rounds
        .into_iter()
        .map(|round| round.into_values().collect())
        .collect()
}

/// The JSON input of one round of a take (`Dialect::TAKE_LIMITS`): the keys of `round`, each
/// with its quota's interval and period.
pub(crate) fn take_input(requests: &[LimitRequest], round: &[usize]) -> String {
    let input: Vec<_> = round
        .iter()
        .map(|&i| {
            let quota = &requests[i].quota;
            json!({
                "key": requests[i].key,
                "interval_ms": quota.emission_interval_ms(),
                "period_ms": quota.period_ms(),
            })
        })
        .collect();
    Value::Array(input).to_string()
}

/// Turns the rows one round of a take returned into the decisions of its requests, each
/// computed by `gcra` from the state the upsert left (one copy of the maths).
pub(crate) fn decide_round(
    requests: &[LimitRequest],
    round: &[usize],
    rows: Vec<TakenRow>,
    decisions: &mut [Option<LimitDecision>],
) -> Result<(), StoreError> {
    let mut taken: HashMap<String, TakenRow> =
        rows.into_iter().map(|row| (row.key.clone(), row)).collect();
    for &i in round {
        let request = &requests[i];
        let row = taken.remove(&request.key).ok_or_else(|| {
            StoreError::Unavailable(format!("taking `{}` returned no state for it", request.key))
        })?;
        decisions[i] = Some(decide_taken(request, &row)?);
    }
    Ok(())
}

/// The decision of one take from the state its upsert left, computed by `gcra` (one copy
/// of the maths) at the time the upsert decided at.
pub(crate) fn decide_taken(
    request: &LimitRequest,
    row: &TakenRow,
) -> Result<LimitDecision, StoreError> {
    // The `tat` before this take: an allowed take added one interval to `max(tat, at)`,
    // which is all `gcra` reads of it; a refused one changed nothing.
    let before = if row.allowed {
        row.tat - request.quota.emission_interval_ms()
    } else {
        row.tat
    };
    let (decision, _) = gcra(Some(before), row.at, &request.quota);
    if decision.allowed != row.allowed {
        return Err(StoreError::Corrupt(format!(
            "rate limit `{}`: the stored decision ({}) disagrees with gcra at tat {}",
            request.key, row.allowed, row.tat
        )));
    }
    Ok(decision)
}

/// The decisions of every round, in request order.
pub(crate) fn collect_decisions(
    decisions: Vec<Option<LimitDecision>>,
) -> Result<Vec<LimitDecision>, StoreError> {
    // Every request is in exactly one round.
    decisions
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            StoreError::Unavailable("a rate limit request was left undecided".to_owned())
        })
}

/// A stored flush number as the domain's.
pub(crate) fn flushed_seq(seq: i64) -> Result<u64, StoreError> {
    u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("a negative flush number ({seq})")))
}

/// A flush mark's number as stored.
pub(crate) fn mark_seq(mark: &FlushMark) -> Result<i64, StoreError> {
    i64::try_from(mark.seq)
        .map_err(|_| StoreError::Unavailable(format!("flush number {} out of range", mark.seq)))
}

/// The JSON input of a peek (`sql::read_limits!`).
pub(crate) fn peek_input(requests: &[LimitRequest]) -> String {
    let input: Vec<_> = requests.iter().map(|r| json!({"key": r.key})).collect();
    Value::Array(input).to_string()
}

/// What a take would decide for each request, from the stored states.
pub(crate) fn peek_decisions(
    requests: &[LimitRequest],
    rows: Vec<LimitRow>,
    now_ms: i64,
) -> Vec<LimitDecision> {
    let mut states: HashMap<String, (Option<i64>, i64)> = rows
        .into_iter()
        .map(|row| (row.key, (row.tat, row.latest_ms.unwrap_or(0))))
        .collect();
    // A key named twice answers as `take` would: the second time after the first, and
    // each at the later of now and the key's latest take.
    requests
        .iter()
        .map(|request| {
            let (tat, latest) = states.entry(request.key.clone()).or_default();
            let (decision, new_tat) = gcra(*tat, now_ms.max(*latest), &request.quota);
            if new_tat.is_some() {
                *tat = new_tat;
            }
            decision
        })
        .collect()
}

/// The JSON input of `sql::add_counts!`: one row per key, in key order; `None` when there
/// is nothing to add.
pub(crate) fn counts_input(adds: &[CountAdd]) -> Option<String> {
    if adds.is_empty() {
        return None;
    }
    let mut sums: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for add in adds {
        let sum = sums.entry(&add.key).or_default();
        sum.0 += u64::from(add.attempts);
        sum.1 += u64::from(add.approved);
    }
    let input: Vec<_> = sums
        .into_iter()
        .map(|(key, (attempts, approved))| {
            json!({"key": key, "attempts": attempts, "approved": approved})
        })
        .collect();
    Some(Value::Array(input).to_string())
}

/// The JSON input of `sql::read_counts!`.
pub(crate) fn count_queries_input(queries: &[CountQuery]) -> String {
    let input: Vec<_> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| json!({"i": i, "key": q.key, "since": bucket_of(q.since)}))
        .collect();
    Value::Array(input).to_string()
}

/// The sums of `len` queries from the rows `sql::read_counts!` returned.
pub(crate) fn counts_from_rows(len: usize, rows: &[CountsRow]) -> Result<Vec<Counts>, StoreError> {
    let mut counts = vec![Counts::default(); len];
    for row in rows {
        let slot = usize::try_from(row.i)
            .ok()
            .and_then(|i| counts.get_mut(i))
            .ok_or_else(|| {
                StoreError::Unavailable(format!("counter sums for unknown query {}", row.i))
            })?;
        *slot = Counts::try_from(row)?;
    }
    Ok(counts)
}

/// The JSON input of an active-blocks read: the distinct targets; `None` for none.
pub(crate) fn targets_input(targets: &[BlockTarget]) -> Option<String> {
    if targets.is_empty() {
        return None;
    }
    let distinct: BTreeSet<&BlockTarget> = targets.iter().collect();
    let input: Vec<_> = distinct
        .into_iter()
        .map(|t| json!({"kind": t.kind.as_str(), "value": t.value}))
        .collect();
    Some(Value::Array(input).to_string())
}

/// The rows as blocks, sorted by target.
pub(crate) fn sorted_blocks(rows: Vec<BlockRow>) -> Result<Vec<Block>, StoreError> {
    let mut active = blocks(rows)?;
    active.sort_by(|a, b| a.target.cmp(&b.target));
    Ok(active)
}

/// What adding a block does to the block held on its target (the target has a row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockWrite {
    /// Nothing: an operator lifted a block there recently ([`BlockAdded::Exempt`]).
    Exempt,
    /// The held block is in force and now ends at `expires_at` ([`BlockAdded::Extended`]).
    Extend { expires_at: i64 },
    /// The new block replaces the held one ([`BlockAdded::New`]).
    Replace,
}

/// Decides what `block` does to `held`, the block its target has, as [`BlockAdded`]
/// documents; the points it leaves open are decided here:
///
/// - A scoring block inside an operator's exemption is refused even when another block is
///   in force there (the operator judged the target legitimate; it stays blocked by that
///   other block, not extended by scoring).
/// - Shadow and enforced blocks do not mix, since shadow verdicts must never be enforced:
///   an enforced block over a shadow one replaces it (`New`, the first enforced block),
///   and a shadow block over an enforced one leaves its end as it is (`Extended`).
pub(crate) fn decide(held: HeldBlock, block: &BlockRow, source: BlockSource) -> BlockWrite {
    let now = block.created_at;
    let duration = block.expires_at.saturating_sub(block.created_at);
    if source == BlockSource::Scoring
        && held
            .lifted_at
            .is_some_and(|lifted_at| now.saturating_sub(lifted_at) < duration)
    {
        return BlockWrite::Exempt;
    }
    if held.expires_at <= now {
        return BlockWrite::Replace;
    }
    match (held.shadow, block.shadow) {
        (true, false) => BlockWrite::Replace,
        (false, true) => BlockWrite::Extend {
            expires_at: held.expires_at,
        },
        _ => BlockWrite::Extend {
            expires_at: held.expires_at.max(block.expires_at),
        },
    }
}

impl<DB> Repo<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    <DB as Database>::Arguments: IntoArguments<DB>,
    TakenRow: for<'r> FromRow<'r, DB::Row>,
    LimitRow: for<'r> FromRow<'r, DB::Row>,
    CountsRow: for<'r> FromRow<'r, DB::Row>,
    BlockRow: for<'r> FromRow<'r, DB::Row>,
    SignalRow: for<'r> FromRow<'r, DB::Row>,
    HeldBlock: for<'r> FromRow<'r, DB::Row>,
    for<'t> String: Encode<'t, DB> + Decode<'t, DB> + Type<DB>,
    for<'t> Option<String>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Decode<'t, DB> + Type<DB>,
    for<'t> bool: Encode<'t, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    #[tracing::instrument(
        level = "debug",
        name = "storage.limits.take",
        skip_all,
        fields(keys = requests.len())
    )]
    pub(crate) async fn take_limits(
        &self,
        requests: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Vec<LimitDecision>, StoreError> {
        // Outside a transaction each round's upsert commits on its own, as one statement.
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        Self::take_in(&mut conn, requests, now).await
    }

    /// [`Repo::take_limits`] on `conn`, inside the transaction it may have open.
    pub(crate) async fn take_in(
        conn: &mut DB::Connection,
        requests: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Vec<LimitDecision>, StoreError> {
        let now_ms = to_millis(now);
        let mut decisions = vec![None; requests.len()];
        for round in rounds(requests) {
            let rows: Vec<TakenRow> = sqlx::query_as(DB::TAKE_LIMITS)
                .bind(now_ms)
                .bind(take_input(requests, &round))
                .fetch_all(&mut *conn)
                .await
                .map_err(unavailable)?;
            decide_round(requests, &round, rows, &mut decisions)?;
        }
        collect_decisions(decisions)
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.limits.peek",
        skip_all,
        fields(keys = requests.len())
    )]
    pub(crate) async fn peek_limits(
        &self,
        requests: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Vec<LimitDecision>, StoreError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<LimitRow> = sqlx::query_as(DB::READ_LIMITS)
            .bind(peek_input(requests))
            .fetch_all(&self.pool)
            .await
            .map_err(read_error)?;
        Ok(peek_decisions(requests, rows, to_millis(now)))
    }

    #[tracing::instrument(level = "debug", name = "storage.limits.purge", skip_all)]
    pub(crate) async fn purge_limits(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let result = sqlx::query(sql::PURGE_LIMITS)
            .bind(to_millis(now))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(DB::rows_affected(&result))
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.counters.add",
        skip_all,
        fields(keys = adds.len())
    )]
    pub(crate) async fn add_counts(
        &self,
        adds: &[CountAdd],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        Self::add_counts_in(&self.pool, adds, now).await
    }

    /// [`Repo::add_counts`] on `executor` (a pool, or a transaction's connection).
    async fn add_counts_in<'c, E>(
        executor: E,
        adds: &[CountAdd],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>
    where
        E: Executor<'c, Database = DB>,
    {
        let Some(input) = counts_input(adds) else {
            return Ok(());
        };
        sqlx::query(DB::ADD_COUNTS)
            .bind(bucket_of(now))
            .bind(input)
            .execute(executor)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.counters.read",
        skip_all,
        fields(keys = queries.len())
    )]
    pub(crate) async fn read_counts(
        &self,
        queries: &[CountQuery],
    ) -> Result<Vec<Counts>, StoreError> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<CountsRow> = sqlx::query_as(DB::READ_COUNTS)
            .bind(count_queries_input(queries))
            .fetch_all(&self.pool)
            .await
            .map_err(read_error)?;
        counts_from_rows(queries.len(), &rows)
    }

    /// Counters and blocks read in one statement.
    pub(crate) async fn read_signals(
        &self,
        queries: &[CountQuery],
        targets: &[BlockTarget],
        now: DateTime<Utc>,
    ) -> Result<(Vec<Counts>, Vec<Block>), StoreError> {
        if queries.is_empty() && targets.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        // No replica is named by the empty string (the column's CHECK).
        let signals = self.read_signals_marked(queries, targets, now, "").await?;
        Ok((signals.counts, signals.blocks))
    }

    /// Counters, blocks and `replica`'s last write of counters, in one statement.
    #[tracing::instrument(
        level = "debug",
        name = "storage.signals.read",
        skip_all,
        fields(keys = queries.len(), targets = targets.len())
    )]
    pub(crate) async fn read_signals_marked(
        &self,
        queries: &[CountQuery],
        targets: &[BlockTarget],
        now: DateTime<Utc>,
        replica: &str,
    ) -> Result<Signals, StoreError> {
        // One statement with the reads of concurrent starts (the `signals` lane).
        let rows = self
            .lanes
            .signals
            .call(SignalsRead {
                queries: queries.to_vec(),
                targets: targets.to_vec(),
                now_ms: to_millis(now),
                replica: replica.to_owned(),
            })
            .await?;
        let (mut sums, mut blocks, mut flushed) = (Vec::new(), Vec::new(), 0);
        for row in rows {
            match Signal::try_from(row)? {
                Signal::Counts(row) => sums.push(row),
                Signal::Block(row) => blocks.push(row),
                Signal::Flushed(seq) => flushed = flushed_seq(seq)?,
            }
        }
        Ok(Signals {
            counts: counts_from_rows(queries.len(), &sums)?,
            blocks: sorted_blocks(blocks)?,
            flushed,
        })
    }

    /// [`Repo::add_counts`] and the replica's mark, in one transaction.
    #[tracing::instrument(
        level = "debug",
        name = "storage.counters.add_marked",
        skip_all,
        fields(keys = adds.len())
    )]
    pub(crate) async fn add_counts_marked(
        &self,
        adds: &[CountAdd],
        now: DateTime<Utc>,
        mark: &FlushMark,
    ) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin_with(DB::BEGIN_WRITE)
            .await
            .map_err(unavailable)?;
        Self::add_counts_in(&mut *tx, adds, now).await?;
        sqlx::query(sql::MARK_FLUSH)
            .bind(mark.replica.clone())
            .bind(mark_seq(mark)?)
            .bind(to_millis(now))
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    #[tracing::instrument(level = "debug", name = "storage.counters.purge", skip_all)]
    pub(crate) async fn purge_counts(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        // A bucket ends a minute after it starts: those starting at or before this one
        // ended at or before `older_than`.
        let last = to_millis(older_than).saturating_sub(BUCKET_MS);
        let mut purged = 0;
        loop {
            let result = sqlx::query(sql::PURGE_COUNTS)
                .bind(last)
                .bind(i64::from(PURGE_BATCH))
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            let deleted = DB::rows_affected(&result);
            purged += deleted;
            if deleted < u64::from(PURGE_BATCH) {
                break;
            }
        }
        sqlx::query(sql::PURGE_FLUSHES)
            .bind(to_millis(older_than))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(purged)
    }

    pub(crate) async fn purge_blocks(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut purged = 0;
        loop {
            let result = sqlx::query(sql::PURGE_BLOCKS)
                .bind(to_millis(older_than))
                .bind(i64::from(PURGE_BATCH))
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            let deleted = DB::rows_affected(&result);
            purged += deleted;
            if deleted < u64::from(PURGE_BATCH) {
                return Ok(purged);
            }
        }
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.blocks.add",
        skip_all,
        fields(kind = %block.target.kind, source = block.source.as_str(), shadow = block.shadow)
    )]
    pub(crate) async fn add_block(&self, block: &Block) -> Result<BlockAdded, StoreError> {
        let row = BlockRow::from(block);
        let mut tx = self
            .pool
            .begin_with(DB::BEGIN_WRITE)
            .await
            .map_err(unavailable)?;
        // The first block on a target inserts its row. `ON CONFLICT DO NOTHING` waits for a
        // concurrent inserter of the same target (PostgreSQL) or runs after it (SQLite's
        // write lock), so one of them inserts and the others go on to the row it wrote.
        let inserted = bind_block(sqlx::query(sql::INSERT_BLOCK), row.clone())
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
        if inserted.is_some() {
            tx.commit().await.map_err(unavailable)?;
            return Ok(BlockAdded::New);
        }
        let held: Option<HeldBlock> = sqlx::query_as(DB::LOCK_BLOCK)
            .bind(row.kind.clone())
            .bind(row.value.clone())
            .fetch_optional(&mut *tx)
            .await
            .map_err(read_error)?;
        // Rows of `risk_blocks` are never deleted, so the row that refused the insert is
        // there; its absence means someone deleted it by hand meanwhile.
        let held = held.ok_or_else(|| {
            StoreError::Unavailable(format!(
                "the block on {} vanished while it was added to",
                block.target
            ))
        })?;
        let outcome = match decide(held, &row, block.source) {
            BlockWrite::Exempt => BlockAdded::Exempt,
            BlockWrite::Extend { expires_at } => {
                if expires_at != held.expires_at {
                    sqlx::query(sql::EXTEND_BLOCK)
                        .bind(row.kind)
                        .bind(row.value)
                        .bind(expires_at)
                        .execute(&mut *tx)
                        .await
                        .map_err(unavailable)?;
                }
                BlockAdded::Extended
            }
            BlockWrite::Replace => {
                bind_block(sqlx::query(sql::REPLACE_BLOCK), row)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                BlockAdded::New
            }
        };
        tx.commit().await.map_err(unavailable)?;
        tracing::debug!(?outcome, "block added");
        Ok(outcome)
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.blocks.active",
        skip_all,
        fields(targets = targets.len())
    )]
    pub(crate) async fn active_blocks(
        &self,
        targets: &[BlockTarget],
        now: DateTime<Utc>,
    ) -> Result<Vec<Block>, StoreError> {
        let Some(input) = targets_input(targets) else {
            return Ok(Vec::new());
        };
        let rows: Vec<BlockRow> = sqlx::query_as(DB::ACTIVE_BLOCKS)
            .bind(to_millis(now))
            .bind(input)
            .fetch_all(&self.pool)
            .await
            .map_err(read_error)?;
        sorted_blocks(rows)
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.blocks.list",
        skip_all,
        fields(limit = limit)
    )]
    pub(crate) async fn list_blocks(
        &self,
        kind: Option<BlockKind>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Block>, StoreError> {
        let rows: Vec<BlockRow> = sqlx::query_as(sql::LIST_BLOCKS)
            .bind(to_millis(now))
            .bind(kind.map(|k| k.as_str().to_owned()))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(read_error)?;
        blocks(rows)
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.blocks.lift",
        skip_all,
        fields(kind = %target.kind)
    )]
    pub(crate) async fn lift_block(
        &self,
        target: &BlockTarget,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let lifted = sqlx::query(sql::LIFT_BLOCK)
            .bind(target.kind.as_str().to_owned())
            .bind(target.value.clone())
            .bind(to_millis(now))
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(lifted.is_some())
    }
}

/// The rows as blocks; a row that does not convert fails the whole read.
pub(crate) fn blocks(rows: Vec<BlockRow>) -> Result<Vec<Block>, StoreError> {
    rows.into_iter()
        .map(|row| Block::try_from(row).map_err(StoreError::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use domain::abuse::Quota;

    use super::*;
    use crate::fixtures::at;

    fn request(key: &str) -> LimitRequest {
        LimitRequest {
            key: key.to_owned(),
            quota: Quota::parse("1/m").expect("quota"),
        }
    }

    #[test]
    fn rounds_take_each_key_once_in_key_order() {
        let check = |keys: &[&str], expected: &[&[usize]]| {
            let requests: Vec<_> = keys.iter().map(|k| request(k)).collect();
            assert_eq!(rounds(&requests), expected, "{keys:?}");
        };
        check(&[], &[]);
        check(&["b", "a", "c"], &[&[1, 0, 2]]);
        check(&["a", "b", "a", "a"], &[&[0, 1], &[2], &[3]]);
        check(&["x", "y", "y", "x"], &[&[0, 1], &[3, 2]]);
    }

    #[test]
    fn buckets_start_on_the_minute() {
        let start = bucket_of(at(0));
        assert_eq!(start % 60_000, 0);
        assert!(to_millis(at(0)) - start < 60_000);
        assert_eq!(
            bucket_of(DateTime::from_timestamp_millis(start).expect("time")),
            start
        );
        assert_eq!(
            bucket_of(DateTime::from_timestamp_millis(start - 1).expect("time")),
            start - 60_000
        );
        assert_eq!(
            bucket_of(DateTime::from_timestamp_millis(-1).expect("time")),
            -60_000
        );
    }

    fn held(expires_at: i64, shadow: bool, lifted_at: Option<i64>) -> HeldBlock {
        HeldBlock {
            expires_at,
            shadow,
            lifted_at,
        }
    }

    fn new(created_at: i64, expires_at: i64, shadow: bool) -> BlockRow {
        BlockRow {
            kind: "ip".into(),
            value: "203.0.113.7".into(),
            reason: "R".into(),
            detail: "d".into(),
            source: "scoring".into(),
            shadow,
            created_at,
            expires_at,
        }
    }

    #[test]
    fn block_decisions() {
        use BlockSource::{Operator, Provider, Scoring};
        use BlockWrite::{Exempt, Extend, Replace};
        let cases = [
            // In force: the later end, or the end it has.
            (
                held(100, false, None),
                new(10, 50, false),
                Scoring,
                Extend { expires_at: 100 },
            ),
            (
                held(100, false, None),
                new(10, 150, false),
                Provider,
                Extend { expires_at: 150 },
            ),
            (
                held(100, true, None),
                new(10, 150, true),
                Scoring,
                Extend { expires_at: 150 },
            ),
            // Ended (at or before now): replaced.
            (held(10, false, None), new(10, 50, false), Scoring, Replace),
            // Shadow and enforced do not mix.
            (held(100, true, None), new(10, 50, false), Provider, Replace),
            (
                held(100, false, None),
                new(10, 150, true),
                Scoring,
                Extend { expires_at: 100 },
            ),
            // Lifted less than the new block's duration ago: scoring is refused, even over
            // a block in force; the others are not.
            (held(5, false, Some(5)), new(10, 50, false), Scoring, Exempt),
            (
                held(100, false, Some(5)),
                new(10, 50, false),
                Scoring,
                Exempt,
            ),
            (
                held(5, false, Some(5)),
                new(10, 50, false),
                Operator,
                Replace,
            ),
            (
                held(5, false, Some(5)),
                new(10, 50, false),
                Provider,
                Replace,
            ),
            (
                held(5, false, Some(5)),
                new(45, 85, false),
                Scoring,
                Replace,
            ),
            (held(5, false, Some(5)), new(44, 84, false), Scoring, Exempt),
        ];
        for (held, block, source, expected) in cases {
            assert_eq!(decide(held, &block, source), expected, "{held:?} {block:?}");
        }
    }
}
