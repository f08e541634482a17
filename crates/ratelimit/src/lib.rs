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
//! long to wait. Time is the caller's `now` in both layers, in whole milliseconds (the
//! in-process layer never reads a clock; it keeps the latest `now` it was given, so it never
//! runs backwards), and both run the same arithmetic, so they agree exactly on one key.
//!
//! # The two layers
//!
//! [`Limiter::take`] asks the **in-process layer** first: each key's TAT in a sharded map in
//! memory (one entry per key and quota), decided by [`domain::abuse::gcra`] at the
//! caller's `now`. A key it refuses is refused there and then, without a database round
//! trip: that is the cheap first line that keeps floods off the database. When it allows
//! every key, they go, in one call, to the **shared layer**, a [`RateLimitStore`]
//! (PostgreSQL or SQLite, in the `storage` crate), whose state every replica shares and
//! which is authoritative. [`Limiter::peek`] asks only the shared layer.
//!
//! # All of a request's keys or none
//!
//! A request names several keys (a start: its destination, client IP, identity, range and
//! country), and a refused request takes from none of them, so that refusals of one key
//! cost the others nothing: a flood of starts to one number, refused by its own limit, must
//! not use up its range's or its country's limit for everyone else. The in-process layer
//! locks the shards of all of a request's keys, decides them all, and stores the new TATs
//! only when every key allowed the event. The hot paths split the layers:
//! [`Limiter::take_local`] asks the in-process layer, and the keys it took are taken by the
//! store in the same transaction as the write they guard
//! (`VerificationStore::insert_limited` / `update_limited`), all of them or none;
//! [`Limiter::settle`] joins the two answers and, when the shared layer refused, gives the
//! in-process takes back ([`Limiter::give_back`]: each key's TAT moves back one interval,
//! never below that of a key never seen). [`Limiter::take`] does the same with
//! [`RateLimitStore::take`], whose keys are independent of each other: there, a request
//! the shared layer refuses still takes the keys the store allowed, so it is meant for
//! requests of one key (the check cooldown). Keys are opaque strings; [`ip_key`] builds the
//! canonical form of a client address.
//!
//! # The approximation
//!
//! The in-process layer counts only this replica's attempts. It also counts attempts the
//! shared layer never answered (a store error, a write abandoned after a conflict), since
//! they may have been taken there, so under contention it can refuse a little earlier than
//! the shared limit alone would. A take given back while other takes of the key happened
//! after it is undone by one interval, which GCRA cannot always tell apart from a later
//! event, so this replica may then allow one event more than it would have: the shared
//! layer still decides it. It never lets through more than the shared layer allows: every
//! allowed key was allowed by the shared layer too.
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

/// What the in-process layer decided about a call's keys ([`Limiter::take_local`]): it took
/// all of them or, when one refused, none.
#[derive(Debug, PartialEq, Eq)]
pub struct LocalVerdict {
    requests: Vec<LimitRequest>,
    decisions: Vec<LimitDecision>,
}

impl LocalVerdict {
    /// Whether the in-process layer allowed (and took) every key.
    fn taken(&self) -> bool {
        self.decisions.iter().all(|d| d.allowed)
    }

    /// The requests the shared layer must still decide, in order: all of them when the
    /// in-process layer allowed every one, none when it refused one.
    pub fn forward(&self) -> &[LimitRequest] {
        if self.taken() { &self.requests } else { &[] }
    }

    /// The in-process layer's decision about each request, in order. When one refused, the
    /// others say what they would have allowed; nothing was taken from them.
    pub fn decisions(&self) -> &[LimitDecision] {
        &self.decisions
    }

    /// The verdict when the in-process layer refused a key: every key's local decision
    /// (those it would have allowed as allowed, with their local `remaining`). `None` when
    /// it refused none.
    pub fn refused(&self) -> Option<Verdict> {
        if self.taken() {
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
    /// [`LocalVerdict::forward`] (in its order): when the in-process layer refused, its
    /// [`LocalVerdict::refused`] verdict; otherwise each key carries the shared decision,
    /// its `remaining` lowered to the local one if that is smaller. A store that answered
    /// a different number of decisions is an error (fail closed). This does not give back
    /// the in-process takes of a request the shared layer refused: [`Limiter::settle`] does.
    pub fn merge(self, shared: Vec<LimitDecision>) -> Result<Verdict, StoreError> {
        check_len(&shared, self.forward().len())?;
        if let Some(verdict) = self.refused() {
            return Ok(verdict);
        }
        let decisions = self
            .requests
            .into_iter()
            .zip(self.decisions)
            .zip(shared)
            .map(|((request, local), mut decision)| {
                decision.remaining = decision.remaining.min(local.remaining);
                KeyDecision {
                    request,
                    decision,
                    local: false,
                }
            })
            .collect();
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

    /// Takes one event from every requested key: first from the in-process layer, all of
    /// them or none; then, when it allowed them all, from the shared store in one call. A
    /// key refused locally carries the local `retry_after` and `remaining` 0, and nothing
    /// reaches the store. A key allowed by both carries the shared decision, its
    /// `remaining` lowered to the local one if that is smaller. When the store refuses a
    /// key, the in-process takes are given back; the store's own takes of the other keys
    /// stand ([`RateLimitStore::take`] decides each key alone), so a request of several
    /// keys that must be taken all or none goes through `take_local` and the store's
    /// transaction instead.
    ///
    /// Fails (closed) when the store cannot answer; callers then send nothing.
    pub async fn take(
        &self,
        requests: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Verdict, StoreError> {
        let local = self.take_local(requests, now);
        let shared = if local.forward().is_empty() {
            Vec::new()
        } else {
            self.shared.take(local.forward(), now).await?
        };
        self.settle(local, shared)
    }

    /// The in-process layer of [`Limiter::take`] alone: it takes one event from every key
    /// if each allows it, and none otherwise, and says which requests the shared layer must
    /// still decide. The caller takes those itself, in the same transaction as the write
    /// they guard (`VerificationStore::insert_limited`), and settles the answer with
    /// [`Limiter::settle`]. When [`LocalVerdict::refused`], nothing was taken and nothing
    /// should go to the shared layer: the request is refused as it stands.
    pub fn take_local(&self, requests: &[LimitRequest], now: DateTime<Utc>) -> LocalVerdict {
        LocalVerdict {
            requests: requests.to_vec(),
            decisions: self.local.take(requests, now),
        }
    }

    /// The verdict over both layers ([`LocalVerdict::merge`]), given the shared layer's
    /// decisions about [`LocalVerdict::forward`]; when the shared layer refused a key, the
    /// in-process layer gets back what `local` took, since the shared layer took nothing
    /// (or, for [`RateLimitStore::take`], not all). A store that answered the wrong number
    /// of decisions is an error, and the takes stand: what it took is unknown.
    pub fn settle(
        &self,
        local: LocalVerdict,
        shared: Vec<LimitDecision>,
    ) -> Result<Verdict, StoreError> {
        let taken = local.taken();
        let verdict = local.merge(shared)?;
        if taken && !verdict.allowed() {
            let requests: Vec<LimitRequest> = verdict
                .decisions()
                .iter()
                .map(|d| d.request.clone())
                .collect();
            self.local.give_back(&requests);
        }
        Ok(verdict)
    }

    /// Gives back what [`Limiter::take_local`] took for `local`, when the request it
    /// guarded did not happen for another reason than a limit (scoring could not be read,
    /// say): each key's TAT moves back one interval, never below that of a key never seen.
    /// A refused `local` took nothing and gives nothing back.
    pub fn give_back(&self, local: LocalVerdict) {
        self.local.give_back(local.forward());
    }

    /// Keeps of what [`Limiter::take_local`] took for `local` only the requests `keep`
    /// names, in their order, and gives the others back: for a request that turned out to
    /// need fewer limits than it took (a start scoring refused, which sends nothing, keeps
    /// only its sender's). A refused `local` took nothing and is returned as it is.
    pub fn retain(
        &self,
        local: LocalVerdict,
        keep: impl Fn(&LimitRequest) -> bool,
    ) -> LocalVerdict {
        if !local.taken() {
            return local;
        }
        let mut kept = LocalVerdict {
            requests: Vec::with_capacity(local.requests.len()),
            decisions: Vec::with_capacity(local.decisions.len()),
        };
        let mut back = Vec::new();
        for (request, decision) in local.requests.into_iter().zip(local.decisions) {
            if keep(&request) {
                kept.requests.push(request);
                kept.decisions.push(decision);
            } else {
                back.push(request);
            }
        }
        self.local.give_back(&back);
        kept
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
