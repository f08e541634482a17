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
//! A read counts every count once, without waiting for a flush. Each store write of a
//! flush has a number (1, 2, … per replica, written one after another) and records it as
//! the replica's last in the same transaction as its counts
//! ([`RiskStore::add_counts_marked`]); its counts stay in memory, marked in flight, until it
//! returns. A read first notes what memory holds (the unflushed counts, the writes in
//! flight and the number the next write will get), then reads the store together with the
//! replica's last number ([`RiskStore::read_signals_marked`]): a write in flight whose
//! number the store shows is counted from the store, any other from memory. Should the
//! store show a write begun after the note (its counts were noted as unflushed), the read
//! starts over. When the store cannot take a write, its counts and those of the writes
//! after it go back to memory and the next flush tries again; past [`MAX_PENDING_KEYS`]
//! distinct keys new counts are dropped (and logged), so a long outage cannot grow memory
//! without bound.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::abuse::{
    Block, BlockAdded, BlockKind, BlockTarget, COUNTER_BUCKET, CountAdd, CountQuery, Counts,
    FlushMark, RiskStore, Signals,
};
use domain::ports::StoreError;

/// How often the counts in memory are written to the store: the bound on how far one
/// replica's counters lag behind another's.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// How many keys one store write of a flush takes.
const FLUSH_CHUNK: usize = 200;

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

impl std::ops::AddAssign for Sums {
    fn add_assign(&mut self, other: Sums) {
        self.attempts += other.attempts;
        self.approved += other.approved;
    }
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

/// What memory holds: the unflushed sums, the writes under way, the next write's number.
#[derive(Debug, Default)]
struct State {
    pending: Pending,
    /// Writes under way, by number, in number order: what each carries.
    in_flight: Vec<(u64, Pending)>,
    /// The number the next write gets (the first is 1: the store says 0 for none).
    next_seq: u64,
}

/// What a read noted of memory before it read the store.
struct Noted {
    pending: Vec<Sums>,
    in_flight: Vec<(u64, Vec<Sums>)>,
    next_seq: u64,
}

/// How often a read starts over because a write begun after its note was already in the
/// store; past it the read keeps what it got (which may count that write twice).
const READ_ATTEMPTS: u32 = 5;

/// A [`RiskStore`] whose counter adds are buffered in memory (see the module docs);
/// everything else goes straight to the store underneath.
#[derive(Debug)]
pub struct BufferedCounters {
    inner: Arc<dyn RiskStore>,
    /// This process's name in the store's flush marks.
    replica: String,
    state: Mutex<State>,
    /// One flush at a time, so writes reach the store in number order.
    flushing: tokio::sync::Mutex<()>,
}

impl BufferedCounters {
    pub fn new(inner: Arc<dyn RiskStore>) -> Self {
        BufferedCounters {
            inner,
            replica: uuid::Uuid::new_v4().simple().to_string(),
            state: Mutex::new(State {
                next_seq: 1,
                ..State::default()
            }),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the state leaves plain sums behind: still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes every buffered count to the store, in writes of at most [`FLUSH_CHUNK`]
    /// keys of one minute bucket, one after another, so the store's other writes run
    /// between them (on SQLite one write of all the keys counted in 250 ms held the writer
    /// for tens of milliseconds, and every start and check queued behind it). What cannot
    /// be written stays buffered. Returns how many (key, minute) sums were written.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let _one = self.flushing.lock().await;
        // Out of the unflushed sums and into the writes in flight in one step, so a read
        // finds every count in one place or the other.
        let writes: Vec<(u64, i64, Vec<CountAdd>)> = {
            let mut state = self.state();
            let taken = std::mem::take(&mut state.pending);
            // By bucket, then in key order, so the keys of one write sit together along the
            // table's primary key and share its pages: a write of keys in random order
            // dirtied about a page per key, each written to the WAL and the file.
            let mut by_bucket: BTreeMap<i64, BTreeMap<String, Sums>> = BTreeMap::new();
            for (key, buckets) in taken {
                for (bucket, sums) in buckets {
                    by_bucket
                        .entry(bucket)
                        .or_default()
                        .insert(key.clone(), sums);
                }
            }
            let mut writes = Vec::with_capacity(by_bucket.len());
            for (bucket, keys) in by_bucket {
                let mut keys = keys.into_iter().peekable();
                while keys.peek().is_some() {
                    let chunk: Vec<(String, Sums)> = keys.by_ref().take(FLUSH_CHUNK).collect();
                    let seq = state.next_seq;
                    state.next_seq += 1;
                    let adds = chunk
                        .iter()
                        .map(|(key, sums)| CountAdd {
                            key: key.clone(),
                            attempts: u32::try_from(sums.attempts).unwrap_or(u32::MAX),
                            approved: u32::try_from(sums.approved).unwrap_or(u32::MAX),
                        })
                        .collect();
                    let part = chunk
                        .into_iter()
                        .map(|(key, sums)| (key, vec![(bucket, sums)]))
                        .collect();
                    state.in_flight.push((seq, part));
                    writes.push((seq, bucket, adds));
                }
            }
            writes
        };
        let mut written = 0;
        for (seq, bucket, adds) in writes {
            let mark = FlushMark {
                replica: self.replica.clone(),
                seq,
            };
            let at = DateTime::from_timestamp_millis(bucket).unwrap_or_default();
            match self.inner.add_counts_marked(&adds, at, &mark).await {
                Ok(()) => {
                    written += adds.len();
                    self.state().in_flight.retain(|(s, _)| *s != seq);
                }
                Err(e) => {
                    // This write and the ones after it go back to memory unwritten, so
                    // the store's numbers never pass one it does not hold.
                    let mut state = self.state();
                    let unwritten: Vec<(u64, Pending)> = std::mem::take(&mut state.in_flight);
                    for (_, part) in unwritten {
                        for (key, buckets) in part {
                            for (bucket, sums) in buckets {
                                *slot(&mut state.pending, key.clone(), bucket) += sums;
                            }
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(written)
    }

    /// What memory holds of each query's window now.
    fn note(&self, queries: &[CountQuery]) -> Noted {
        let state = self.state();
        Noted {
            pending: sums_of(&state.pending, queries),
            in_flight: state
                .in_flight
                .iter()
                .map(|(seq, part)| (*seq, sums_of(part, queries)))
                .collect(),
            next_seq: state.next_seq,
        }
    }

    /// The store's counters and blocks with this replica's unflushed counts added, each
    /// once (see the module docs).
    async fn read_with_local(
        &self,
        queries: &[CountQuery],
        targets: &[BlockTarget],
        now: DateTime<Utc>,
    ) -> Result<(Vec<Counts>, Vec<Block>), StoreError> {
        let mut attempt = 1;
        loop {
            let noted = self.note(queries);
            let signals = self
                .inner
                .read_signals_marked(queries, targets, now, &self.replica)
                .await?;
            if signals.flushed >= noted.next_seq && attempt < READ_ATTEMPTS {
                attempt += 1;
                continue;
            }
            let mut counts = signals.counts;
            let unseen = noted
                .in_flight
                .iter()
                .filter(|(seq, _)| *seq > signals.flushed)
                .map(|(_, sums)| sums);
            for local in std::iter::once(&noted.pending).chain(unseen) {
                for (count, sums) in counts.iter_mut().zip(local) {
                    count.attempts += sums.attempts;
                    count.approved += sums.approved;
                }
            }
            return Ok((counts, signals.blocks));
        }
    }

    /// This replica's unflushed sums for each query's window (writes in flight included).
    #[cfg(test)]
    fn local_sums(&self, queries: &[CountQuery]) -> Vec<Sums> {
        let noted = self.note(queries);
        let mut sums = noted.pending;
        for (_, part) in noted.in_flight {
            for (total, s) in sums.iter_mut().zip(part) {
                *total += s;
            }
        }
        sums
    }
}

/// The sums `pending` holds for each query's window.
fn sums_of(pending: &Pending, queries: &[CountQuery]) -> Vec<Sums> {
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
                .fold(Sums::default(), |mut acc, (_, s)| {
                    acc += *s;
                    acc
                })
        })
        .collect()
}

#[async_trait]
impl RiskStore for BufferedCounters {
    async fn add_counts(&self, adds: &[CountAdd], now: DateTime<Utc>) -> Result<(), StoreError> {
        let bucket = bucket_of(now);
        let mut state = self.state();
        let pending = &mut state.pending;
        let mut dropped = 0;
        for add in adds {
            if !pending.contains_key(&add.key) && pending.len() >= MAX_PENDING_KEYS {
                dropped += 1;
                continue;
            }
            *slot(pending, add.key.clone(), bucket) += Sums {
                attempts: u64::from(add.attempts),
                approved: u64::from(add.approved),
            };
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
        // With no block targets the time only dates blocks: any will do.
        let (counts, _) = self.read_with_local(queries, &[], Utc::now()).await?;
        Ok(counts)
    }

    async fn read_signals(
        &self,
        queries: &[CountQuery],
        targets: &[BlockTarget],
        now: DateTime<Utc>,
    ) -> Result<(Vec<Counts>, Vec<Block>), StoreError> {
        self.read_with_local(queries, targets, now).await
    }

    async fn add_counts_marked(
        &self,
        adds: &[CountAdd],
        now: DateTime<Utc>,
        mark: &FlushMark,
    ) -> Result<(), StoreError> {
        self.inner.add_counts_marked(adds, now, mark).await
    }

    async fn read_signals_marked(
        &self,
        queries: &[CountQuery],
        targets: &[BlockTarget],
        now: DateTime<Utc>,
        replica: &str,
    ) -> Result<Signals, StoreError> {
        self.inner
            .read_signals_marked(queries, targets, now, replica)
            .await
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
    use anyhow::ensure;
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

    /// The real store, with each flush's write and each read held back a little, so reads
    /// land in every phase of a flush.
    #[derive(Debug)]
    struct SlowWrites(Arc<dyn RiskStore>);

    #[async_trait]
    impl RiskStore for SlowWrites {
        async fn add_counts(
            &self,
            adds: &[CountAdd],
            now: DateTime<Utc>,
        ) -> Result<(), StoreError> {
            self.0.add_counts(adds, now).await
        }
        async fn read_counts(&self, queries: &[CountQuery]) -> Result<Vec<Counts>, StoreError> {
            self.0.read_counts(queries).await
        }
        async fn purge_counts(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
            self.0.purge_counts(older_than).await
        }
        async fn add_block(&self, block: &Block) -> Result<BlockAdded, StoreError> {
            self.0.add_block(block).await
        }
        async fn active_blocks(
            &self,
            targets: &[BlockTarget],
            now: DateTime<Utc>,
        ) -> Result<Vec<Block>, StoreError> {
            self.0.active_blocks(targets, now).await
        }
        async fn add_counts_marked(
            &self,
            adds: &[CountAdd],
            now: DateTime<Utc>,
            mark: &FlushMark,
        ) -> Result<(), StoreError> {
            tokio::time::sleep(Duration::from_millis(3)).await;
            let written = self.0.add_counts_marked(adds, now, mark).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
            written
        }
        async fn read_signals_marked(
            &self,
            queries: &[CountQuery],
            targets: &[BlockTarget],
            now: DateTime<Utc>,
            replica: &str,
        ) -> Result<Signals, StoreError> {
            // Long enough for a flush begun meanwhile to be in the store by the read.
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.0
                .read_signals_marked(queries, targets, now, replica)
                .await
        }
        async fn list_blocks(
            &self,
            kind: Option<BlockKind>,
            now: DateTime<Utc>,
            limit: u32,
        ) -> Result<Vec<Block>, StoreError> {
            self.0.list_blocks(kind, now, limit).await
        }
        async fn purge_blocks(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
            self.0.purge_blocks(older_than).await
        }
        async fn lift_block(
            &self,
            target: &BlockTarget,
            now: DateTime<Utc>,
        ) -> Result<bool, StoreError> {
            self.0.lift_block(target, now).await
        }
    }

    /// Counts added, flushed and read all at once: every read sees each count added
    /// before it began, and none twice, whether the count is in memory, in a write under
    /// way or in the store. Reads never wait for a flush.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_beside_flushes_count_everything_once() -> anyhow::Result<()> {
        use std::sync::atomic::{AtomicU64, Ordering};
        let database = store().await?;
        let buffered = Arc::new(BufferedCounters::new(Arc::new(SlowWrites(
            database.risk_store(),
        ))));
        let added = Arc::new(AtomicU64::new(0));
        const ADDS: u64 = 300;
        let writer = tokio::spawn({
            let (buffered, added) = (Arc::clone(&buffered), Arc::clone(&added));
            async move {
                for n in 1..=ADDS {
                    buffered
                        .add_counts(&[add("country:US", 1, 0)], at(0))
                        .await?;
                    added.store(n, Ordering::SeqCst);
                    if n % 7 == 0 {
                        buffered.flush().await?;
                    } else {
                        // Unflushed counts build up between flushes.
                        tokio::time::sleep(Duration::from_micros(700)).await;
                    }
                }
                anyhow::Ok(())
            }
        });
        let q = [query("country:US", at(-60))];
        let mut reads = 0;
        while !writer.is_finished() {
            let before = added.load(Ordering::SeqCst);
            let seen = buffered.read_counts(&q).await?[0].attempts;
            let after = added.load(Ordering::SeqCst);
            ensure!(
                (before..=after).contains(&seen),
                "read {seen} with {before}..={after} added"
            );
            reads += 1;
        }
        writer.await??;
        ensure!(reads > 10, "only {reads} reads ran beside the flushes");
        buffered.flush().await?;
        assert_eq!(buffered.read_counts(&q).await?[0].attempts, ADDS);
        assert_eq!(
            database.risk_store().read_counts(&q).await?[0].attempts,
            ADDS
        );
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
        assert_eq!(buffered.state().pending.len(), MAX_PENDING_KEYS);
        // Keys already held still count.
        buffered.add_counts(&[add("ipfan:0", 1, 0)], at(0)).await?;
        let sums = buffered.local_sums(&[query("ipfan:0", at(-60))]);
        assert_eq!(sums[0].attempts, 2);
        Ok(())
    }
}
