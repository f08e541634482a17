//! The in-process layer: one governor keyed limiter per distinct quota, driven by the
//! caller's clock, holding a bounded number of keys.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, TryLockError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::abuse::{LimitDecision, LimitRequest, Quota};
use governor::RateLimiter;
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;

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

/// What the layer answers for a key it does not limit.
const UNLIMITED: LimitDecision = LimitDecision {
    allowed: true,
    remaining: u32::MAX,
    retry_after: Duration::ZERO,
};

type KeyedLimiter =
    RateLimiter<String, DashMapStateStore<String>, CallerClock, StateInformationMiddleware>;

/// governor's clock, set from the `now` callers pass, in nanoseconds since the Unix epoch.
/// It only moves forward: concurrent callers with slightly different clocks see the latest.
#[derive(Debug, Clone, Default)]
struct CallerClock(Arc<AtomicU64>);

impl CallerClock {
    fn advance_to(&self, now: DateTime<Utc>) {
        self.0.fetch_max(nanos_since_epoch(now), Ordering::AcqRel);
    }
}

impl Clock for CallerClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.0.load(Ordering::Acquire))
    }
}

fn nanos_since_epoch(now: DateTime<Utc>) -> u64 {
    match now.timestamp_nanos_opt() {
        Some(nanos) => u64::try_from(nanos).unwrap_or(0),
        // Out of the range of i64 nanoseconds (before 1677 or after 2262).
        None if now.timestamp() > 0 => u64::MAX,
        None => 0,
    }
}

/// The same GCRA in governor's terms: one cell every `period / limit` (whole milliseconds,
/// as the shared layer counts), bursts of `limit`. `None` cannot happen for a valid
/// [`Quota`] (its interval is at least a millisecond and its limit at least one); such a
/// quota would simply not be limited locally.
fn governor_quota(quota: &Quota) -> Option<governor::Quota> {
    let interval = u64::try_from(quota.emission_interval_ms()).ok()?;
    let burst = NonZeroU32::new(quota.limit())?;
    Some(governor::Quota::with_period(Duration::from_millis(interval))?.allow_burst(burst))
}

pub(crate) struct LocalLayer {
    clock: CallerClock,
    max_keys: usize,
    limiters: RwLock<HashMap<Quota, Arc<KeyedLimiter>>>,
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

impl LocalLayer {
    pub(crate) fn new(settings: LocalSettings) -> Self {
        LocalLayer {
            clock: CallerClock::default(),
            max_keys: settings.max_keys,
            limiters: RwLock::new(HashMap::new()),
            sweeping: Mutex::new(()),
        }
    }

    /// Takes one cell per request, in order; a refusal says when to retry and leaves
    /// nothing taken for that key. An allowed request's `remaining` is what this layer alone
    /// would still allow (`u32::MAX` if the quota is not limited locally).
    pub(crate) fn take(&self, requests: &[LimitRequest], now: DateTime<Utc>) -> Vec<LimitDecision> {
        if self.max_keys == 0 {
            return requests.iter().map(|_| UNLIMITED).collect();
        }
        self.clock.advance_to(now);
        let decisions = requests.iter().map(|r| self.take_one(r)).collect();
        if self.keys() > self.max_keys {
            self.sweep(self.max_keys / 4 * LOW_WATER_QUARTERS);
        }
        decisions
    }

    fn take_one(&self, request: &LimitRequest) -> LimitDecision {
        let Some(limiter) = self.limiter(&request.quota) else {
            return UNLIMITED;
        };
        match limiter.check_key(&request.key) {
            Ok(state) => LimitDecision {
                allowed: true,
                remaining: state.remaining_burst_capacity(),
                retry_after: Duration::ZERO,
            },
            Err(not_until) => LimitDecision {
                allowed: false,
                remaining: 0,
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    fn limiter(&self, quota: &Quota) -> Option<Arc<KeyedLimiter>> {
        if let Some(limiter) = self
            .limiters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(quota)
        {
            return Some(Arc::clone(limiter));
        }
        let governor_quota = governor_quota(quota)?;
        let mut limiters = self
            .limiters
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let limiter = limiters
            .entry(*quota)
            .or_insert_with(|| Arc::new(self.new_limiter(governor_quota)));
        Some(Arc::clone(limiter))
    }

    fn new_limiter(&self, quota: governor::Quota) -> KeyedLimiter {
        RateLimiter::dashmap_with_clock(quota, self.clock.clone()).with_middleware()
    }

    /// Keys held over all quotas (an estimate while other calls run).
    pub(crate) fn keys(&self) -> usize {
        self.limiters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|l| l.len())
            .sum()
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
        let limiters: Vec<(Quota, Arc<KeyedLimiter>)> = self
            .limiters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(quota, limiter)| (*quota, Arc::clone(limiter)))
            .collect();
        let before: usize = limiters.iter().map(|(_, l)| l.len()).sum();

        let mut held: Vec<(usize, Quota, Arc<KeyedLimiter>)> = limiters
            .into_iter()
            .map(|(quota, limiter)| {
                limiter.retain_recent();
                limiter.shrink_to_fit();
                (limiter.len(), quota, limiter)
            })
            .collect();
        let mut total: usize = held.iter().map(|(len, ..)| len).sum();

        held.sort_by_key(|(len, ..)| std::cmp::Reverse(*len));
        for (len, quota, old) in held {
            if total <= target {
                break;
            }
            self.reset(quota, &old);
            total = total.saturating_sub(len);
        }
        before.saturating_sub(total)
    }

    /// Replaces `quota`'s limiter with an empty one, unless it was replaced meanwhile.
    fn reset(&self, quota: Quota, old: &Arc<KeyedLimiter>) {
        let Some(governor_quota) = governor_quota(&quota) else {
            return;
        };
        let fresh = Arc::new(self.new_limiter(governor_quota));
        // The old map is freed when the last call using it ends, outside the lock.
        let _replaced = {
            let mut limiters = self
                .limiters
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            match limiters.get_mut(&quota) {
                Some(current) if Arc::ptr_eq(current, old) => {
                    Some(std::mem::replace(current, fresh))
                }
                _ => None,
            }
        };
    }
}
