//! Fraud scoring's counters, added in memory and written to the shared store in batches.
//!
//! Counters are statistics, not limits: a start needs to see roughly how many attempts a
//! range or a country had, not to win a race for the last event. So each start and each
//! approval adds to a map in this process, and a flush every [`FLUSH_EVERY`] writes the
//! whole map to the store in one statement per minute bucket (usually one), instead of a
//! write per request. Reads add this replica's unflushed counts to what the store holds,
//! so a replica always sees its own traffic at once; another replica's traffic shows once
//! that replica flushed: counters are at most one flush interval (plus the write's own
//! time) behind across replicas. Rate limits, which must be exact across replicas, do not
//! go through here.
//!
//! A read never sees a flushed batch twice or not at all: flushes and reads are ordered by
//! a gate, so a read sees a batch either in memory (before its flush) or in the store
//! (after). When the store cannot take a flush, the counts stay in memory and the next
//! flush tries again; past [`MAX_PENDING_KEYS`] distinct keys new counts are dropped (and
//! logged), so a long outage cannot grow memory without bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::abuse::{
    Block, BlockAdded, BlockKind, BlockTarget, COUNTER_BUCKET, CountAdd, CountQuery, Counts,
    RiskStore,
};
use domain::ports::StoreError;

/// How often the counts in memory are written to the store: the bound on how far one
/// replica's counters lag behind another's.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// The most distinct keys held in memory between flushes.
const MAX_PENDING_KEYS: usize = 200_000;

/// One minute bucket in milliseconds.
const BUCKET_MS: i64 = COUNTER_BUCKET.as_millis() as i64;

fn bucket_of(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis().div_euclid(BUCKET_MS) * BUCKET_MS
}

/// Unflushed sums: per key, the minutes it was added to.
type Pending = HashMap<String, Vec<(i64, Sums)>>;

/// Attempts and approvals not yet flushed.
#[derive(Debug, Default, Clone, Copy)]
struct Sums {
    attempts: u64,
    approved: u64,
}

/// The sums of `key` in `bucket`, made when missing.
fn slot(pending: &mut Pending, key: String, bucket: i64) -> &mut Sums {
    let buckets = pending.entry(key).or_default();
    let at = match buckets.iter().position(|(b, _)| *b == bucket) {
        Some(at) => at,
        None => {
            buckets.push((bucket, Sums::default()));
            buckets.len() - 1
        }
    };
    &mut buckets[at].1
}

/// A [`RiskStore`] whose counter adds are buffered in memory (see the module docs);
/// everything else goes straight to the store underneath.
#[derive(Debug)]
pub struct BufferedCounters {
    inner: Arc<dyn RiskStore>,
    /// Unflushed sums by key, then by bucket start in milliseconds (one or two minutes
    /// between flushes).
    pending: Mutex<Pending>,
    /// Held shared by reads and exclusively by a flush (see the module docs).
    gate: tokio::sync::RwLock<()>,
}

impl BufferedCounters {
    pub fn new(inner: Arc<dyn RiskStore>) -> Self {
        BufferedCounters {
            inner,
            pending: Mutex::new(HashMap::new()),
            gate: tokio::sync::RwLock::new(()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while holding the map leaves plain sums behind: still usable.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes every buffered count to the store; what it cannot write stays buffered.
    /// Returns how many (key, minute) sums were written.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let _gate = self.gate.write().await;
        let taken = std::mem::take(&mut *self.pending());
        if taken.is_empty() {
            return Ok(0);
        }
        let mut by_bucket: HashMap<i64, Vec<CountAdd>> = HashMap::new();
        for (key, buckets) in &taken {
            for (bucket, sums) in buckets {
                by_bucket.entry(*bucket).or_default().push(CountAdd {
                    key: key.clone(),
                    attempts: u32::try_from(sums.attempts).unwrap_or(u32::MAX),
                    approved: u32::try_from(sums.approved).unwrap_or(u32::MAX),
                });
            }
        }
        let mut written = 0;
        let mut failed: Option<StoreError> = None;
        for (bucket, adds) in by_bucket {
            let Some(at) = DateTime::from_timestamp_millis(bucket) else {
                continue;
            };
            match self.inner.add_counts(&adds, at).await {
                Ok(()) => written += adds.len(),
                Err(e) => {
                    // Back into memory, added to whatever arrived meanwhile.
                    let mut pending = self.pending();
                    for add in adds {
                        let sums = slot(&mut pending, add.key, bucket);
                        sums.attempts += u64::from(add.attempts);
                        sums.approved += u64::from(add.approved);
                    }
                    failed = Some(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    /// This replica's unflushed sums for each query's window.
    fn local_sums(&self, queries: &[CountQuery]) -> Vec<Sums> {
        let pending = self.pending();
        if pending.is_empty() {
            return vec![Sums::default(); queries.len()];
        }
        queries
            .iter()
            .map(|q| {
                let since = bucket_of(q.since);
                pending
                    .get(&q.key)
                    .into_iter()
                    .flatten()
                    .filter(|(bucket, _)| *bucket >= since)
                    .fold(Sums::default(), |acc, (_, s)| Sums {
                        attempts: acc.attempts + s.attempts,
                        approved: acc.approved + s.approved,
                    })
            })
            .collect()
    }

    fn with_local(&self, queries: &[CountQuery], mut counts: Vec<Counts>) -> Vec<Counts> {
        for (count, local) in counts.iter_mut().zip(self.local_sums(queries)) {
            count.attempts += local.attempts;
            count.approved += local.approved;
        }
        counts
    }
}

#[async_trait]
impl RiskStore for BufferedCounters {
    async fn add_counts(&self, adds: &[CountAdd], now: DateTime<Utc>) -> Result<(), StoreError> {
        let bucket = bucket_of(now);
        let mut pending = self.pending();
        let mut dropped = 0;
        for add in adds {
            if !pending.contains_key(&add.key) && pending.len() >= MAX_PENDING_KEYS {
                dropped += 1;
                continue;
            }
            let sums = slot(&mut pending, add.key.clone(), bucket);
            sums.attempts += u64::from(add.attempts);
            sums.approved += u64::from(add.approved);
        }
        if dropped > 0 {
            tracing::warn!(
                keys = pending.len(),
                dropped,
                "scoring counters are not reaching the store; dropping counts of new keys"
            );
        }
        Ok(())
    }

    async fn read_counts(&self, queries: &[CountQuery]) -> Result<Vec<Counts>, StoreError> {
        let _gate = self.gate.read().await;
        let counts = self.inner.read_counts(queries).await?;
        Ok(self.with_local(queries, counts))
    }

    async fn read_signals(
        &self,
        queries: &[CountQuery],
        targets: &[BlockTarget],
        now: DateTime<Utc>,
    ) -> Result<(Vec<Counts>, Vec<Block>), StoreError> {
        let _gate = self.gate.read().await;
        let (counts, blocks) = self.inner.read_signals(queries, targets, now).await?;
        Ok((self.with_local(queries, counts), blocks))
    }

    async fn purge_counts(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.purge_counts(older_than).await
    }

    async fn purge_blocks(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.purge_blocks(older_than).await
    }

    async fn add_block(&self, block: &Block) -> Result<BlockAdded, StoreError> {
        self.inner.add_block(block).await
    }

    async fn active_blocks(
        &self,
        targets: &[BlockTarget],
        now: DateTime<Utc>,
    ) -> Result<Vec<Block>, StoreError> {
        self.inner.active_blocks(targets, now).await
    }

    async fn list_blocks(
        &self,
        kind: Option<BlockKind>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Block>, StoreError> {
        self.inner.list_blocks(kind, now, limit).await
    }

    async fn lift_block(
        &self,
        target: &BlockTarget,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.inner.lift_block(target, now).await
    }
}

/// Flushes `counters` every [`FLUSH_EVERY`] until `shutdown`, then once more.
pub async fn flush_periodically(
    counters: Arc<BufferedCounters>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = counters.flush().await {
            tracing::warn!(error = %e, "flushing scoring counters failed; kept for the next flush");
        }
    }
    if let Err(e) = counters.flush().await {
        tracing::warn!(error = %e, "the last flush of scoring counters failed; they are lost");
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0)
            .single()
            .expect("test time is valid")
    }

    fn add(key: &str, attempts: u32, approved: u32) -> CountAdd {
        CountAdd {
            key: key.to_owned(),
            attempts,
            approved,
        }
    }

    fn query(key: &str, since: DateTime<Utc>) -> CountQuery {
        CountQuery {
            key: key.to_owned(),
            since,
        }
    }

    async fn store() -> anyhow::Result<storage::Database> {
        let database = storage::Database::open("sqlite::memory:").await?;
        database.migrate().await?;
        Ok(database)
    }

    #[tokio::test]
    async fn counts_are_read_at_once_and_written_once_by_the_flush() -> anyhow::Result<()> {
        let database = store().await?;
        let inner = database.risk_store();
        let buffered = BufferedCounters::new(Arc::clone(&inner));
        buffered
            .add_counts(
                &[add("prefix:+141555", 1, 0), add("country:US", 1, 0)],
                at(0),
            )
            .await?;
        buffered
            .add_counts(&[add("prefix:+141555", 1, 1)], at(70))
            .await?;
        let queries = [
            query("prefix:+141555", at(-600)),
            query("country:US", at(-600)),
            // A window that starts after the first minute sees only the second.
            query("prefix:+141555", at(65)),
        ];
        let expect = |attempts: &[u64], approved: &[u64]| -> Vec<Counts> {
            attempts
                .iter()
                .zip(approved)
                .map(|(&attempts, &approved)| Counts { attempts, approved })
                .collect()
        };
        let want = expect(&[2, 1, 1], &[1, 0, 1]);
        assert_eq!(buffered.read_counts(&queries).await?, want);
        assert_eq!(
            inner.read_counts(&queries).await?,
            expect(&[0, 0, 0], &[0, 0, 0]),
            "nothing reached the store before the flush"
        );

        assert_eq!(buffered.flush().await?, 3, "three (key, minute) sums");
        assert_eq!(inner.read_counts(&queries).await?, want);
        assert_eq!(
            buffered.read_counts(&queries).await?,
            want,
            "flushed counts are read once"
        );
        let (counts, blocks) = buffered.read_signals(&queries, &[], at(80)).await?;
        assert_eq!((counts, blocks), (want, Vec::new()));
        assert_eq!(buffered.flush().await?, 0, "nothing left to flush");
        Ok(())
    }

    #[tokio::test]
    async fn counts_a_failed_flush_could_not_write_stay_for_the_next() -> anyhow::Result<()> {
        let database = store().await?;
        let buffered = BufferedCounters::new(database.risk_store());
        buffered
            .add_counts(&[add("country:US", 2, 1)], at(0))
            .await?;
        database.close().await;
        assert!(buffered.flush().await.is_err(), "the store is closed");
        let pending = buffered.local_sums(&[query("country:US", at(-60))]);
        assert_eq!((pending[0].attempts, pending[0].approved), (2, 1));
        Ok(())
    }

    #[tokio::test]
    async fn memory_is_bounded_when_the_store_never_takes_a_flush() -> anyhow::Result<()> {
        let database = store().await?;
        let buffered = BufferedCounters::new(database.risk_store());
        let adds: Vec<CountAdd> = (0..MAX_PENDING_KEYS + 10)
            .map(|i| add(&format!("ipfan:{i}"), 1, 0))
            .collect();
        buffered.add_counts(&adds, at(0)).await?;
        assert_eq!(buffered.pending().len(), MAX_PENDING_KEYS);
        // Keys already held still count.
        buffered.add_counts(&[add("ipfan:0", 1, 0)], at(0)).await?;
        let sums = buffered.local_sums(&[query("ipfan:0", at(-60))]);
        assert_eq!(sums[0].attempts, 2);
        Ok(())
    }
}
