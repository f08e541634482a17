//! The in-process layer: each key's GCRA state ([`domain::abuse::gcra`]) in a sharded map
//! bounded in keys, driven by the caller's clock. A call takes all of its keys or none.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::abuse::{LimitDecision, LimitRequest, Quota, gcra};

/// How the in-process layer is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalSettings {
    /// The most keys the in-process layer holds, over all quotas together. Past it, stale
    /// keys are evicted, and if that is not enough the largest quotas forget their keys.
    /// A key costs roughly 100 bytes plus its length. 0 turns the in-process layer off:
    /// every key goes to the shared layer.
    pub max_keys: usize,
}

/// Eviction triggered by the bound must bring the count down to this share of it
/// (numerator over 4), so the next full sweep is at least a quarter of the bound of new keys
/// away. Without the margin, a layer full of fresh keys would sweep on every new key.
const LOW_WATER_QUARTERS: usize = 3;

/// Shards of the key map. A call locks the shards of its keys (a handful) for the few
/// hundred nanoseconds its arithmetic takes; with this many, calls about different keys
/// rarely meet on a lock, and calls about one key (a country's) must be serialised anyway.
const SHARDS: usize = 64;

/// What the layer answers for a key it does not limit.
const UNLIMITED: LimitDecision = LimitDecision {
    allowed: true,
    remaining: u32::MAX,
    retry_after: Duration::ZERO,
};

/// One shard: each quota's keys and their TAT in milliseconds since the Unix epoch. Keyed
/// by quota first, so a lookup borrows the request's key instead of building one.
type Shard = HashMap<Quota, HashMap<String, i64>>;

pub(crate) struct LocalLayer {
    max_keys: usize,
    /// The latest `now` any call passed, in milliseconds since the Unix epoch: the layer's
    /// time, which only moves forward (concurrent callers with slightly different clocks
    /// see the latest).
    latest_ms: AtomicI64,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Keys held over all shards, changed under the lock of the shard that changed.
    keys: AtomicUsize,
    /// Held by whoever sweeps; others skip rather than wait.
    sweeping: Mutex<()>,
}

impl fmt::Debug for LocalLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLayer")
            .field("max_keys", &self.max_keys)
            .field("keys", &self.keys())
            .finish_non_exhaustive()
    }
}

/// The shards a call's keys live in, locked in ascending shard order (so two calls never
/// wait on each other crosswise), and which shard each request's key is in.
struct Locked<'a> {
    guards: Vec<(usize, MutexGuard<'a, Shard>)>,
    shard_of: Vec<usize>,
}

impl Locked<'_> {
    fn shard(&mut self, request: usize) -> &mut Shard {
        let shard = self.shard_of[request];
        let at = self
            .guards
            .binary_search_by_key(&shard, |(index, _)| *index)
            .unwrap_or_else(|at| at);
        // Every request's shard was locked, so the search finds it.
        &mut self.guards[at].1
    }
}

impl LocalLayer {
    pub(crate) fn new(settings: LocalSettings) -> Self {
        LocalLayer {
            max_keys: settings.max_keys,
            latest_ms: AtomicI64::new(i64::MIN),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            hasher: RandomState::new(),
            keys: AtomicUsize::new(0),
            sweeping: Mutex::new(()),
        }
    }

    /// Takes one event from every request's key if every one allows it, and nothing from
    /// any of them otherwise. A key named twice is taken twice, the second time after the
    /// first. Returns a decision per request, in order: a refused one says when to retry;
    /// when some key refused, the others' decisions say what they would have allowed. An
    /// allowed request's `remaining` is what this layer alone would still allow
    /// (`u32::MAX` when the layer is off).
    pub(crate) fn take(&self, requests: &[LimitRequest], now: DateTime<Utc>) -> Vec<LimitDecision> {
        if self.max_keys == 0 {
            return requests.iter().map(|_| UNLIMITED).collect();
        }
        let now = self.advance_to(now);
        let mut locked = self.lock(requests);
        // The TATs this call would store, in request order; a later request about the same
        // key starts from the earlier one's.
        let mut taken: Vec<(usize, i64)> = Vec::with_capacity(requests.len());
        let mut decisions = Vec::with_capacity(requests.len());
        for (index, request) in requests.iter().enumerate() {
            let earlier = taken
                .iter()
                .rev()
                .find(|(other, _)| requests[*other] == *request)
                .map(|(_, tat)| *tat);
            let tat = earlier.or_else(|| {
                locked
                    .shard(index)
                    .get(&request.quota)
                    .and_then(|keys| keys.get(&request.key))
                    .copied()
            });
            let (decision, new_tat) = gcra(tat, now, &request.quota);
            if let Some(new_tat) = new_tat {
                taken.push((index, new_tat));
            }
            decisions.push(decision);
        }
        if decisions.iter().all(|d| d.allowed) {
            for (index, tat) in taken {
                let request = &requests[index];
                let keys = locked.shard(index).entry(request.quota).or_default();
                if keys.insert(request.key.clone(), tat).is_none() {
                    self.keys.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        drop(locked);
        if self.keys() > self.max_keys {
            self.sweep(self.max_keys / 4 * LOW_WATER_QUARTERS);
        }
        decisions
    }

    /// Gives back one event to every request's key, as if a [`LocalLayer::take`] of them
    /// that allowed them all had not happened: each key's TAT moves back one interval, and a
    /// key that comes back to the state of a key never seen (a TAT at or before the layer's
    /// time) is dropped. A key the layer no longer holds (evicted meanwhile) has nothing to
    /// give back.
    pub(crate) fn give_back(&self, requests: &[LimitRequest]) {
        if self.max_keys == 0 || requests.is_empty() {
            return;
        }
        let now = self.latest_ms.load(Ordering::Acquire);
        let mut locked = self.lock(requests);
        for (index, request) in requests.iter().enumerate() {
            let shard = locked.shard(index);
            let Some(keys) = shard.get_mut(&request.quota) else {
                continue;
            };
            let Some(tat) = keys.get_mut(&request.key) else {
                continue;
            };
            let back = tat.saturating_sub(request.quota.emission_interval_ms());
            if back > now {
                *tat = back;
            } else {
                keys.remove(&request.key);
                self.keys.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Moves the layer's time to `now` unless it is already later; returns the layer's time.
    fn advance_to(&self, now: DateTime<Utc>) -> i64 {
        let now = now.timestamp_millis();
        self.latest_ms.fetch_max(now, Ordering::AcqRel).max(now)
    }

    fn shard_index(&self, request: &LimitRequest) -> usize {
        let mut hasher = self.hasher.build_hasher();
        request.quota.hash(&mut hasher);
        request.key.hash(&mut hasher);
        // The remainder is below SHARDS: it fits.
        usize::try_from(hasher.finish() % SHARDS as u64).unwrap_or(0)
    }

    fn lock(&self, requests: &[LimitRequest]) -> Locked<'_> {
        let shard_of: Vec<usize> = requests.iter().map(|r| self.shard_index(r)).collect();
        let mut order = shard_of.clone();
        order.sort_unstable();
        order.dedup();
        let guards = order
            .into_iter()
            .map(|index| (index, lock(&self.shards[index])))
            .collect();
        Locked { guards, shard_of }
    }

    /// Keys held over all quotas (an estimate while other calls run).
    pub(crate) fn keys(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    /// Evicts stale keys, then makes sure no more than `max_keys` remain. Returns how many
    /// keys were dropped.
    pub(crate) fn housekeeping(&self) -> usize {
        self.sweep(self.max_keys)
    }

    /// Drops every stale key (one whose state is that of a key never seen), then, while
    /// more than `target` keys remain, forgets the largest quota's keys altogether. That is
    /// safe because this layer is only a pre-filter: the shared layer still holds the
    /// authoritative state. Returns how many keys were dropped; does nothing when another
    /// sweep is running.
    fn sweep(&self, target: usize) -> usize {
        let _sweeping = match self.sweeping.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return 0,
        };
        let now = self.latest_ms.load(Ordering::Acquire);
        let mut dropped = 0;
        let mut held: HashMap<Quota, usize> = HashMap::new();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            shard.retain(|quota, keys| {
                let before = keys.len();
                keys.retain(|_, tat| *tat > now);
                // Give memory back after a flood, without rehashing a map that is in use.
                if keys.capacity() > 2 * keys.len().max(16) {
                    keys.shrink_to_fit();
                }
                dropped += before - keys.len();
                *held.entry(*quota).or_default() += keys.len();
                !keys.is_empty()
            });
        }
        self.keys.fetch_sub(dropped, Ordering::Relaxed);

        let mut total: usize = held.values().sum();
        let mut held: Vec<(usize, Quota)> = held.into_iter().map(|(q, n)| (n, q)).collect();
        held.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        let mut forget = Vec::new();
        for (len, quota) in held {
            if total <= target {
                break;
            }
            forget.push(quota);
            total = total.saturating_sub(len);
        }
        if forget.is_empty() {
            return dropped;
        }
        for shard in self.shards.iter() {
            // The forgotten maps are freed outside the shard's lock.
            let forgotten: Vec<HashMap<String, i64>> = {
                let mut shard = lock(shard);
                let forgotten: Vec<_> = forget.iter().filter_map(|q| shard.remove(q)).collect();
                let n: usize = forgotten.iter().map(HashMap::len).sum();
                self.keys.fetch_sub(n, Ordering::Relaxed);
                dropped += n;
                forgotten
            };
            drop(forgotten);
        }
        dropped
    }
}

/// A poisoned shard is still consistent: every change to it is a single map operation.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
