//! Keyed rate limits (per IP, per destination, per identity, per prefix, cooldowns) in two
//! layers, so that several replicas enforce one limit and floods never reach the database.
//!
//! # The algorithm
//!
//! Both layers run the same GCRA (generic cell rate algorithm, see
//! [`domain::abuse::gcra`]): a [`Quota`](domain::abuse::Quota) of `limit` per `period`
//! lets a burst of `limit` through, then one more every `period / limit`. Each key holds
//! one timestamp, its theoretical arrival time (TAT); an event is allowed when pushing the
//! TAT one interval further keeps it within one period of now. A refusal says exactly how
//! long to wait. Time is the caller's `now` in both layers (the in-process layer never
//! reads a clock; it keeps the latest `now` it was given, so it never runs backwards).
//!
//! # The two layers
//!
//! [`Limiter::take`] asks the **in-process layer** first: one `governor` keyed limiter per
//! distinct quota, keyed by the request's key and driven by the caller's `now`. A key it
//! refuses is refused there and then, without a database round trip: that is the cheap
//! first line that keeps floods off the database. The keys it allows go, in one call, to
//! the **shared layer**, a [`RateLimitStore`] (PostgreSQL or SQLite, in the `storage`
//! crate), whose state every replica shares and which is authoritative.
//! [`Limiter::peek`] asks only the shared layer.
//!
//! [`Limiter::take`] treats keys independently, as [`RateLimitStore::take`] does: when a
//! request names several keys and one is refused, the others are still taken. The hot
//! paths instead split the layers: [`Limiter::take_local`] asks the in-process layer, and
//! the keys it allows are taken by the store in the same transaction as the write they
//! guard (`VerificationStore::insert_limited` / `update_limited`), all of them or none;
//! [`LocalVerdict::merge`] joins the two answers. Keys are opaque strings; [`ip_key`]
//! builds the canonical form of a client address.
//!
//! # The approximation
//!
//! The in-process layer counts only this replica's attempts, including attempts the shared
//! layer then refused or never answered (a store error), so under contention it can refuse
//! a little earlier than the shared limit alone would. It is also stricter by under
//! `limit` milliseconds when `period` is not a multiple of `limit` (governor's burst is
//! whole intervals). It never lets through more than the shared layer allows: every allowed
//! key was allowed by the shared layer too.
//!
//! # Bounded memory
//!
//! Attackers rotate addresses and numbers, so the set of keys is unbounded while the memory
//! is not. [`LocalSettings::max_keys`] bounds the keys the in-process layer holds over all
//! quotas. When a call takes the count past it, stale keys (whose state is that of a key
//! never seen) are evicted; if that does not bring the count down to three quarters of the
//! bound, the largest quotas forget their keys entirely. Forgetting is safe because the
//! shared layer still holds the real state; the only cost is more store calls until the
//! local layer has relearnt the busy keys. [`Limiter::housekeeping`] runs the same eviction
//! on a schedule. While calls run concurrently the count can pass the bound by the keys of
//! the calls in flight.

mod keys;
mod local;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::abuse::{LimitDecision, LimitRequest, RateLimitStore};
use domain::ports::StoreError;

pub use keys::ip_key;
pub use local::LocalSettings;

use local::LocalLayer;

/// The decision about one requested key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDecision {
    pub request: LimitRequest,
    pub decision: LimitDecision,
    /// Refused by this replica's in-process layer, without asking the shared store.
    pub local: bool,
}

/// The answer to one [`Limiter::take`]: a decision per requested key, in the order of the
/// requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    decisions: Vec<KeyDecision>,
}

impl Verdict {
    pub fn new(decisions: Vec<KeyDecision>) -> Self {
        Verdict { decisions }
    }

    /// Whether every key allowed the event.
    pub fn allowed(&self) -> bool {
        self.decisions.iter().all(|d| d.decision.allowed)
    }

    /// The refusal that matters and its index in the requests: the one with the longest
    /// `retry_after` (the first in request order among equals), since the event cannot
    /// happen before it ends.
    pub fn first_refusal(&self) -> Option<(usize, &KeyDecision)> {
        self.decisions
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.decision.allowed)
            .reduce(|best, d| {
                if d.1.decision.retry_after > best.1.decision.retry_after {
                    d
                } else {
                    best
                }
            })
    }

    /// How long until the event could be allowed; zero when it was.
    pub fn retry_after(&self) -> Duration {
        self.first_refusal()
            .map_or(Duration::ZERO, |(_, d)| d.decision.retry_after)
    }

    /// The smallest `remaining` over all keys: how many more events are allowed right now
    /// (what a caller reports as attempts left); 0 when refused, `u32::MAX` when no key was
    /// asked about.
    pub fn remaining(&self) -> u32 {
        self.decisions
            .iter()
            .map(|d| d.decision.remaining)
            .min()
            .unwrap_or(u32::MAX)
    }

    pub fn decisions(&self) -> &[KeyDecision] {
        &self.decisions
    }

    pub fn into_decisions(self) -> Vec<KeyDecision> {
        self.decisions
    }
}

/// What the in-process layer decided about a call's keys ([`Limiter::take_local`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalVerdict {
    requests: Vec<LimitRequest>,
    decisions: Vec<LimitDecision>,
    forward: Vec<LimitRequest>,
}

impl LocalVerdict {
    /// The requests the in-process layer allowed, in order: what the shared layer decides.
    pub fn forward(&self) -> &[LimitRequest] {
        &self.forward
    }

    /// The in-process layer's decision about each request, in order.
    pub fn decisions(&self) -> &[LimitDecision] {
        &self.decisions
    }

    /// The verdict when the in-process layer refused a key: every key's local decision
    /// (those it allowed as allowed, with their local `remaining`). `None` when it refused
    /// none.
    pub fn refused(&self) -> Option<Verdict> {
        if self.decisions.iter().all(|d| d.allowed) {
            return None;
        }
        Some(Verdict {
            decisions: self
                .requests
                .iter()
                .zip(&self.decisions)
                .map(|(request, decision)| KeyDecision {
                    request: request.clone(),
                    decision: *decision,
                    local: !decision.allowed,
                })
                .collect(),
        })
    }

    /// The verdict over both layers, given the shared layer's decisions about
    /// [`LocalVerdict::forward`] (in its order): a key refused locally carries the local
    /// `retry_after` and `remaining` 0; a key allowed by both carries the shared decision,
    /// its `remaining` lowered to the local one if that is smaller. A store that answered
    /// a different number of decisions is an error (fail closed).
    pub fn merge(self, shared: Vec<LimitDecision>) -> Result<Verdict, StoreError> {
        check_len(&shared, self.forward.len())?;
        let mut shared = shared.into_iter();
        let mut decisions = Vec::with_capacity(self.requests.len());
        for (request, local) in self.requests.into_iter().zip(self.decisions) {
            let decision = if local.allowed {
                let mut decision = shared
                    .next()
                    .ok_or_else(|| wrong_len(0, self.forward.len()))?;
                decision.remaining = decision.remaining.min(local.remaining);
                KeyDecision {
                    request,
                    decision,
                    local: false,
                }
            } else {
                KeyDecision {
                    request,
                    decision: local,
                    local: true,
                }
            };
            decisions.push(decision);
        }
        Ok(Verdict { decisions })
    }
}

/// The two-layer limiter; one per process, shared by reference.
pub struct Limiter {
    local: LocalLayer,
    shared: Arc<dyn RateLimitStore>,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("local", &self.local)
            .field("shared", &self.shared)
            .finish()
    }
}

impl Limiter {
    pub fn new(shared: Arc<dyn RateLimitStore>, settings: LocalSettings) -> Self {
        Limiter {
            local: LocalLayer::new(settings),
            shared,
        }
    }

    /// Takes one event from every requested key: first from the in-process layer, then,
    /// for the keys it allowed, from the shared store in one call. A key refused locally
    /// carries the local `retry_after` and `remaining` 0. A key allowed by both carries the
    /// shared decision, its `remaining` lowered to the local one if that is smaller.
    ///
    /// Fails (closed) when the store cannot answer; callers then send nothing.
    pub async fn take(
        &self,
        requests: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Verdict, StoreError> {
        let local = self.take_local(requests, now);
        let shared = if local.forward.is_empty() {
            Vec::new()
        } else {
            self.shared.take(&local.forward, now).await?
        };
        local.merge(shared)
    }

    /// The in-process layer of [`Limiter::take`] alone: it takes one event from every key
    /// it allows and says which requests the shared layer must still decide. The caller
    /// takes those itself, in the same transaction as the write they guard
    /// (`VerificationStore::insert_limited`), and merges the answer with
    /// [`LocalVerdict::merge`]. When [`LocalVerdict::refused`], nothing should go to the
    /// shared layer: the start is refused as it stands.
    pub fn take_local(&self, requests: &[LimitRequest], now: DateTime<Utc>) -> LocalVerdict {
        let decisions = self.local.take(requests, now);
        let forward = requests
            .iter()
            .zip(&decisions)
            .filter(|(_, d)| d.allowed)
            .map(|(r, _)| r.clone())
            .collect();
        LocalVerdict {
            requests: requests.to_vec(),
            decisions,
            forward,
        }
    }

    /// What the shared layer would answer to [`Limiter::take`], without taking anything: a
    /// decision per request, in order. The in-process layer is not asked: it only
    /// pre-filters takes.
    pub async fn peek(
        &self,
        requests: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Vec<LimitDecision>, StoreError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let decisions = self.shared.peek(requests, now).await?;
        check_len(&decisions, requests.len())?;
        Ok(decisions)
    }

    /// Evicts the in-process keys that hold no information any more, and enforces the
    /// bound; returns how many keys were dropped. Run it every few seconds or minutes; the
    /// bound holds without it. Time is the latest `now` any call passed (without calls the
    /// keys do not change either). The shared store's own purge
    /// ([`RateLimitStore::purge_limits`]) is separate.
    pub fn housekeeping(&self) -> usize {
        self.local.housekeeping()
    }

    /// How many keys the in-process layer holds over all quotas, for metrics.
    pub fn local_keys(&self) -> usize {
        self.local.keys()
    }
}

/// A store that answers a different number of decisions than keys asked about is broken;
/// failing closed is the only safe reading.
fn check_len(decisions: &[LimitDecision], asked: usize) -> Result<(), StoreError> {
    if decisions.len() == asked {
        Ok(())
    } else {
        Err(wrong_len(decisions.len(), asked))
    }
}

fn wrong_len(answered: usize, asked: usize) -> StoreError {
    StoreError::Unavailable(format!(
        "the rate-limit store answered {answered} decisions for {asked} keys"
    ))
}

#[cfg(test)]
mod tests;
