//! Tests of the two-layer composition, against in-memory stores (the real stores are
//! tested in the storage crate).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use chrono::TimeZone;
use domain::abuse::{Quota, gcra};

use super::*;

/// The shared layer's contract over a map: [`gcra`] per key, counting calls and recording
/// the keys asked about.
#[derive(Debug, Default)]
struct GcraStore {
    tats: Mutex<HashMap<String, i64>>,
    takes: AtomicUsize,
    asked: Mutex<Vec<Vec<String>>>,
    down: bool,
}

impl GcraStore {
    fn down() -> Self {
        GcraStore {
            down: true,
            ..GcraStore::default()
        }
    }

    fn takes(&self) -> usize {
        self.takes.load(Ordering::SeqCst)
    }

    fn last_asked(&self) -> Vec<String> {
        self.asked
            .lock()
            .expect("test lock")
            .last()
            .cloned()
            .unwrap_or_default()
    }

    fn decide(
        &self,
        requests: &[LimitRequest],
        now: DateTime<Utc>,
        store: bool,
    ) -> Result<Vec<LimitDecision>, StoreError> {
        if self.down {
            return Err(StoreError::Unavailable("test store is down".to_owned()));
        }
        let now = now.timestamp_millis();
        let mut tats = self.tats.lock().expect("test lock");
        Ok(requests
            .iter()
            .map(|r| {
                let (decision, new_tat) = gcra(tats.get(&r.key).copied(), now, &r.quota);
                if let (true, Some(tat)) = (store, new_tat) {
                    tats.insert(r.key.clone(), tat);
                }
                decision
            })
            .collect())
    }
}

#[async_trait]
impl RateLimitStore for GcraStore {
    async fn take(
        &self,
        requests: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Vec<LimitDecision>, StoreError> {
        self.takes.fetch_add(1, Ordering::SeqCst);
        self.asked
            .lock()
            .expect("test lock")
            .push(requests.iter().map(|r| r.key.clone()).collect());
        self.decide(requests, now, true)
    }

    async fn peek(
        &self,
        requests: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Vec<LimitDecision>, StoreError> {
        self.decide(requests, now, false)
    }

    async fn purge_limits(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let now = now.timestamp_millis();
        let mut tats = self.tats.lock().expect("test lock");
        let before = tats.len();
        tats.retain(|_, tat| *tat > now);
        Ok((before - tats.len()) as u64)
    }
}

/// A store that allows everything and remembers nothing: the verdict then shows the local
/// layer alone, and memory figures are the local layer's.
#[derive(Debug, Default)]
struct AllowAll;

#[async_trait]
impl RateLimitStore for AllowAll {
    async fn take(
        &self,
        requests: &[LimitRequest],
        _now: DateTime<Utc>,
    ) -> Result<Vec<LimitDecision>, StoreError> {
        Ok(requests
            .iter()
            .map(|_| LimitDecision {
                allowed: true,
                remaining: u32::MAX,
                retry_after: Duration::ZERO,
            })
            .collect())
    }

    async fn peek(
        &self,
        requests: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Vec<LimitDecision>, StoreError> {
        self.take(requests, now).await
    }

    async fn purge_limits(&self, _now: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(0)
    }
}

fn q(raw: &str) -> Quota {
    Quota::parse(raw).expect("test quota")
}

fn req(key: &str, quota: &str) -> LimitRequest {
    LimitRequest {
        key: key.to_owned(),
        quota: q(quota),
    }
}

/// `ms` milliseconds after a fixed instant.
fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_700_000_000_000 + ms)
        .single()
        .expect("test instant")
}

fn settings(max_keys: usize) -> LocalSettings {
    LocalSettings { max_keys }
}

fn limiter(store: &Arc<GcraStore>, max_keys: usize) -> Limiter {
    Limiter::new(
        Arc::clone(store) as Arc<dyn RateLimitStore>,
        settings(max_keys),
    )
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[tokio::test]
async fn local_layer_refuses_without_asking_the_store() {
    let store = Arc::new(GcraStore::default());
    let limiter = limiter(&store, 100);
    let send = [req("send:login:ip:203.0.113.7", "3/10m")];

    let mut remaining = Vec::new();
    for _ in 0..3 {
        let verdict = limiter.take(&send, at(0)).await.expect("take");
        assert!(verdict.allowed());
        assert!(!verdict.decisions()[0].local);
        remaining.push(verdict.remaining());
    }
    assert_eq!(remaining, [2, 1, 0]);
    assert_eq!(store.takes(), 3);

    for (now, wait) in [(0, 200_000), (1_000, 199_000), (199_999, 1)] {
        let verdict = limiter.take(&send, at(now)).await.expect("take");
        let (index, refusal) = verdict.first_refusal().expect("refused");
        assert_eq!(index, 0);
        assert!(refusal.local);
        assert_eq!(refusal.decision.retry_after, Duration::from_millis(wait));
        assert_eq!(verdict.retry_after(), Duration::from_millis(wait));
        assert_eq!(verdict.remaining(), 0);
    }
    assert_eq!(store.takes(), 3, "local refusals never reach the store");

    // One interval after the burst, exactly one more is allowed, by both layers.
    let verdict = limiter.take(&send, at(200_000)).await.expect("take");
    assert!(verdict.allowed());
    assert_eq!(verdict.remaining(), 0);
    assert_eq!(store.takes(), 4);
}

#[tokio::test]
async fn replicas_share_one_limit_through_the_store() {
    let store = Arc::new(GcraStore::default());
    let (a, b) = (limiter(&store, 100), limiter(&store, 100));
    let send = [req("send:login:to:abc123", "3/10m")];

    assert_eq!(a.take(&send, at(0)).await.expect("take").remaining(), 2);
    assert_eq!(a.take(&send, at(0)).await.expect("take").remaining(), 1);
    // B's own layer has seen nothing (2 left after this one); the shared layer says 0.
    let third = b.take(&send, at(0)).await.expect("take");
    assert!(third.allowed());
    assert_eq!(third.remaining(), 0);

    for replica in [&a, &b] {
        let verdict = replica.take(&send, at(10_000)).await.expect("take");
        let (_, refusal) = verdict.first_refusal().expect("refused");
        assert!(!refusal.local);
        assert_eq!(refusal.decision.retry_after, secs(190));
        assert_eq!(verdict.remaining(), 0);
    }
    assert_eq!(store.takes(), 5);
}

#[tokio::test]
async fn a_key_refused_locally_takes_nothing_from_the_others() {
    let store = Arc::new(GcraStore::default());
    let limiter = limiter(&store, 100);
    let send = [req("to", "1/1m"), req("range", "5/1m"), req("cc", "100/1d")];

    assert!(limiter.take(&send, at(0)).await.expect("take").allowed());
    assert_eq!(store.last_asked(), ["to", "range", "cc"]);

    // The destination refuses: nothing reaches the store, and the range and the country
    // lose nothing, however often it is tried.
    for i in 0..50 {
        let verdict = limiter.take(&send, at(i)).await.expect("take");
        let local: Vec<_> = verdict.decisions().iter().map(|d| d.local).collect();
        assert_eq!(local, [true, false, false]);
        assert_eq!(
            verdict.first_refusal().map(|(_, d)| d.request.key.as_str()),
            Some("to")
        );
        // The others say what they would have allowed, as if this were the second take.
        let remaining: Vec<_> = verdict
            .decisions()
            .iter()
            .map(|d| d.decision.remaining)
            .collect();
        assert_eq!(remaining, [0, 3, 98]);
    }
    assert_eq!(store.takes(), 1);

    // Another destination of the range still has the range's four other starts.
    for i in 0..4 {
        let other = [
            req(&format!("to:{i}"), "1/1m"),
            send[1].clone(),
            send[2].clone(),
        ];
        let verdict = limiter.take(&other, at(100)).await.expect("take");
        assert!(verdict.allowed(), "start {i}");
    }
    let fifth = [req("to:5", "1/1m"), send[1].clone(), send[2].clone()];
    let verdict = limiter.take(&fifth, at(100)).await.expect("take");
    assert_eq!(
        verdict
            .first_refusal()
            .map(|(_, d)| (d.request.key.as_str(), d.local)),
        Some(("range", true))
    );
    // The country counted the five starts that happened, no more.
    let local = limiter.take_local(&[req("cc", "100/1d")], at(100));
    assert_eq!(local.decisions()[0].remaining, 94);
}

#[tokio::test]
async fn a_key_named_twice_is_taken_twice_or_not_at_all() {
    let store = Arc::new(GcraStore::default());
    let limiter = limiter(&store, 100);
    let twice = [req("ip", "3/1m"), req("ip", "3/1m")];
    let local = limiter.take_local(&twice, at(0));
    let remaining: Vec<_> = local.decisions().iter().map(|d| d.remaining).collect();
    assert_eq!(remaining, [2, 1]);
    // One event is left: asking for two refuses the second, and the first is not taken.
    let local = limiter.take_local(&twice, at(0));
    assert!(local.refused().is_some());
    assert!(local.forward().is_empty());
    let once = limiter.take_local(&twice[..1], at(0));
    assert_eq!(once.decisions()[0].remaining, 0);
    assert!(once.refused().is_none());
}

#[tokio::test]
async fn a_shared_refusal_gives_the_local_takes_back() {
    let store = Arc::new(GcraStore::default());
    let (a, b) = (limiter(&store, 100), limiter(&store, 100));
    let to = req("to", "2/10m");
    let range = req("range", "3/10m");
    let cc = req("cc", "100/1d");

    // Replica B uses up the destination in the shared layer.
    for _ in 0..2 {
        assert!(
            b.take(std::slice::from_ref(&to), at(0))
                .await
                .expect("take")
                .allowed()
        );
    }
    // Replica A has seen nothing: its layer allows all three, the shared layer refuses
    // (the store's transaction takes none of them), and A gives its own takes back.
    let send = [to.clone(), range.clone(), cc.clone()];
    for i in 0..10 {
        let local = a.take_local(&send, at(1_000 + i));
        assert!(local.refused().is_none());
        let shared = store
            .peek(local.forward(), at(1_000 + i))
            .await
            .expect("peek");
        assert!(!shared[0].allowed);
        let verdict = a.settle(local, shared).expect("settle");
        assert_eq!(
            verdict
                .first_refusal()
                .map(|(_, d)| (d.request.key.as_str(), d.local)),
            Some(("to", false))
        );
    }
    // A's range and country are as if nothing had happened: the range's full burst is left.
    let local = a.take_local(&[range.clone(), cc.clone()], at(2_000));
    let remaining: Vec<_> = local.decisions().iter().map(|d| d.remaining).collect();
    assert_eq!(remaining, [2, 99]);
    // Giving back never goes below a key never seen, and forgets the key.
    a.give_back(local);
    assert_eq!(a.local_keys(), 0);
    a.give_back(a.take_local(std::slice::from_ref(&range), at(2_000)));
    a.give_back(a.take_local(std::slice::from_ref(&range), at(2_000)));
    assert_eq!(a.local_keys(), 0);
    let local = a.take_local(std::slice::from_ref(&range), at(2_000));
    assert_eq!(local.decisions()[0].remaining, 2);

    // `take` gives back too: the shared refusal of one key leaves A's local state untouched.
    let verdict = a
        .take(std::slice::from_ref(&to), at(3_000))
        .await
        .expect("take");
    assert!(!verdict.allowed());
    assert!(!verdict.decisions()[0].local);
    let local = a.take_local(std::slice::from_ref(&to), at(3_000));
    assert_eq!(local.decisions()[0].remaining, 1);
}

#[tokio::test]
async fn a_give_back_moves_the_key_back_one_interval() {
    let store = Arc::new(GcraStore::default());
    let limiter = limiter(&store, 100);
    let range = [req("range", "5/10m")];
    for _ in 0..5 {
        limiter.take_local(&range, at(0));
    }
    // Used up: the next event is two minutes away.
    let refused = limiter.take_local(&range, at(0));
    assert_eq!(refused.decisions()[0].retry_after, secs(120));
    // A take given back frees one event now; giving back a refused take changes nothing.
    limiter.give_back(refused);
    let local = limiter.take_local(&range, at(0));
    assert!(!local.decisions()[0].allowed);
    let taken = limiter.take_local(&range, at(120_000));
    assert!(taken.refused().is_none());
    limiter.give_back(taken);
    let again = limiter.take_local(&range, at(120_000));
    assert!(again.refused().is_none());
    assert_eq!(again.decisions()[0].remaining, 0);
}

#[tokio::test]
async fn retain_gives_back_what_is_not_kept() {
    let store = Arc::new(GcraStore::default());
    let limiter = limiter(&store, 100);
    let (ip, range) = (req("ip", "5/10m"), req("range", "5/10m"));
    let both = [ip.clone(), range.clone()];
    let local = limiter.take_local(&both, at(0));
    let kept = limiter.retain(local, |r| r.key == "ip");
    assert_eq!(kept.forward(), std::slice::from_ref(&ip));
    assert_eq!(kept.decisions().len(), 1);
    assert_eq!(kept.decisions()[0].remaining, 4);
    // The range's take was given back, the IP's stands.
    let after = limiter.take_local(&both, at(0));
    let remaining: Vec<u32> = after.decisions().iter().map(|d| d.remaining).collect();
    assert_eq!(remaining, [3, 4]);
    // A refused verdict took nothing, and retaining it gives nothing back.
    for _ in 0..3 {
        limiter.take_local(std::slice::from_ref(&ip), at(0));
    }
    let refused = limiter.take_local(&both, at(0));
    assert!(refused.refused().is_some());
    let refused = limiter.retain(refused, |_| false);
    assert!(refused.refused().is_some());
    assert_eq!(refused.decisions().len(), 2);
    let range_left = limiter.take_local(std::slice::from_ref(&range), at(0));
    assert_eq!(range_left.decisions()[0].remaining, 3);
}

/// Many threads taking overlapping sets of keys at one instant: each key allows at most
/// its quota, and every key counts exactly the takes that were allowed as a whole.
#[test]
fn concurrent_takes_of_overlapping_keys_never_pass_a_quota() {
    const THREADS: usize = 8;
    const TAKES: usize = 2_000;
    let limiter = Limiter::new(Arc::new(AllowAll), settings(100_000));
    let allowed: Vec<AtomicUsize> = (0..THREADS).map(|_| AtomicUsize::new(0)).collect();
    std::thread::scope(|scope| {
        for (thread, allowed) in allowed.iter().enumerate() {
            let limiter = &limiter;
            scope.spawn(move || {
                for i in 0..TAKES {
                    // One country, four ranges, sixteen destinations per range; the
                    // threads walk them in different orders.
                    let range = (i + thread) % 4;
                    let to = (i * 7 + thread) % 16;
                    let requests = [
                        req(&format!("to:{range}:{to}"), "3/1h"),
                        req(&format!("range:{range}"), "20/1h"),
                        req("cc", "70/1h"),
                    ];
                    if limiter.take_local(&requests, at(0)).refused().is_none() {
                        allowed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let allowed: usize = allowed.iter().map(|a| a.load(Ordering::SeqCst)).sum();
    // Four ranges of 20 would allow 80; the country stops at 70, and takes stopped by a
    // destination or a range take nothing from it.
    assert_eq!(allowed, 70);
    let left = |request: LimitRequest| {
        let local = limiter.take_local(&[request], at(0));
        let decision = local.decisions()[0];
        if decision.allowed {
            decision.remaining + 1
        } else {
            0
        }
    };
    assert_eq!(left(req("cc", "70/1h")), 0);
    let mut ranges = 0;
    for range in 0..4 {
        let range_left = left(req(&format!("range:{range}"), "20/1h"));
        let mut tos = 0;
        for to in 0..16 {
            let to_left = left(req(&format!("to:{range}:{to}"), "3/1h"));
            tos += 3 - to_left;
        }
        // The range counted exactly the starts its destinations counted.
        assert_eq!(20 - range_left, tos, "range {range}");
        ranges += tos;
    }
    assert_eq!(ranges, 70);
}

#[tokio::test]
async fn verdict_names_the_longest_refusal() {
    let store = Arc::new(GcraStore::default());
    let limiter = limiter(&store, 100);
    let ip = req("ip", "1/1m");
    let to = req("to", "3/10m");
    let id = req("id", "10/1h");
    limiter
        .take(std::slice::from_ref(&ip), at(0))
        .await
        .expect("take");
    for _ in 0..3 {
        limiter
            .take(std::slice::from_ref(&to), at(0))
            .await
            .expect("take");
    }

    let verdict = limiter
        .take(&[ip.clone(), to.clone(), id.clone()], at(0))
        .await
        .expect("take");
    assert!(!verdict.allowed());
    let (index, refusal) = verdict.first_refusal().expect("refused");
    assert_eq!(index, 1);
    assert_eq!(refusal.request, to);
    assert_eq!(refusal.decision.retry_after, secs(200));
    assert_eq!(verdict.retry_after(), secs(200));
    assert_eq!(verdict.remaining(), 0);
    let keys: Vec<_> = verdict.decisions().iter().map(|d| &d.request).collect();
    assert_eq!(keys, [&ip, &to, &id]);
    assert_eq!(verdict.decisions()[2].decision.remaining, 9);
}

#[test]
fn verdict_summaries() {
    fn check(decisions: &[(bool, u32, u64)], refusal: Option<usize>, remaining: u32) {
        let verdict = Verdict::new(
            decisions
                .iter()
                .enumerate()
                .map(|(i, &(allowed, remaining, retry_s))| KeyDecision {
                    request: req(&i.to_string(), "5/1m"),
                    decision: LimitDecision {
                        allowed,
                        remaining,
                        retry_after: secs(retry_s),
                    },
                    local: false,
                })
                .collect(),
        );
        let index = verdict.first_refusal().map(|(index, d)| {
            assert_eq!(d.request.key, index.to_string());
            index
        });
        assert_eq!(index, refusal, "{decisions:?}");
        let wait = refusal.map_or(0, |i| decisions[i].2);
        assert_eq!(verdict.retry_after(), secs(wait), "{decisions:?}");
        assert_eq!(verdict.remaining(), remaining, "{decisions:?}");
        assert_eq!(verdict.allowed(), refusal.is_none(), "{decisions:?}");
    }

    check(&[], None, u32::MAX);
    check(&[(true, 4, 0)], None, 4);
    check(&[(true, 4, 0), (true, 1, 0), (true, 9, 0)], None, 1);
    check(&[(true, 4, 0), (false, 0, 30)], Some(1), 0);
    check(
        &[(false, 0, 30), (false, 0, 90), (false, 0, 60)],
        Some(1),
        0,
    );
    // Equal waits: the first in request order.
    check(&[(true, 2, 0), (false, 0, 60), (false, 0, 60)], Some(1), 0);
}

#[tokio::test]
async fn peek_asks_only_the_shared_layer_and_takes_nothing() {
    let store = Arc::new(GcraStore::default());
    let limiter = limiter(&store, 100);
    let check = [req("check:id:u1", "2/1m")];

    let peeked = limiter.peek(&check, at(0)).await.expect("peek");
    assert!(peeked[0].allowed);
    assert_eq!(peeked[0].remaining, 1);
    assert_eq!(limiter.local_keys(), 0);

    limiter.take(&check, at(0)).await.expect("take");
    limiter.take(&check, at(0)).await.expect("take");
    let peeked = limiter.peek(&check, at(0)).await.expect("peek");
    assert!(!peeked[0].allowed);
    assert_eq!(peeked[0].retry_after, secs(30));
    assert_eq!(store.takes(), 2);
    assert!(limiter.peek(&[], at(0)).await.expect("peek").is_empty());
}

#[test]
fn the_limiter_can_be_shared_across_tasks() {
    fn shared<T: Send + Sync>(_: &T) {}
    fn sendable<T: Send>(_: T) {}
    let limiter = Limiter::new(Arc::new(AllowAll), settings(10));
    shared(&limiter);
    sendable(limiter.take(&[], at(0)));
    sendable(limiter.peek(&[], at(0)));
}

#[tokio::test]
async fn an_unavailable_store_fails_closed() {
    let store = Arc::new(GcraStore::down());
    let limiter = limiter(&store, 100);
    let send = [req("ip", "5/1m")];
    assert!(matches!(
        limiter.take(&send, at(0)).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(limiter.peek(&send, at(0)).await.is_err());
}

/// The local layer against the shared arithmetic on one key, over an irregular sequence of
/// events: both run [`gcra`] in whole milliseconds, so they agree exactly.
#[tokio::test]
async fn local_layer_agrees_with_the_shared_arithmetic() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |bound: i64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        i64::try_from((seed >> 33) % u64::try_from(bound).expect("positive")).expect("small")
    };
    for raw in ["3/10m", "5/1m", "10/1s", "1/1s", "7/10m", "20/1h", "6/7s"] {
        let quota = q(raw);
        let interval = quota.emission_interval_ms();
        let limiter = Limiter::new(Arc::new(AllowAll), settings(10));
        let request = [LimitRequest {
            key: "k".to_owned(),
            quota,
        }];
        let (mut now, mut tat) = (0_i64, None);
        let (mut allowed, mut refused) = (0, 0);
        for _ in 0..2_000 {
            // Mostly bursts and short gaps, sometimes a long pause.
            now += match next(20) {
                0..=9 => 0,
                10..=18 => next(interval),
                _ => next(quota.period_ms()),
            };
            let verdict = limiter.take(&request, at(now)).await.expect("take");
            let local = verdict.decisions()[0].decision;
            let (shared, new_tat) = gcra(tat, now, &quota);
            assert_eq!(local, shared, "{raw} at {now}");
            if shared.allowed {
                allowed += 1;
                tat = new_tat;
            } else {
                refused += 1;
            }
        }
        assert!(
            allowed > 100 && refused > 100,
            "{raw}: {allowed} / {refused}"
        );
    }
}

#[tokio::test]
async fn a_zero_bound_turns_the_local_layer_off() {
    let store = Arc::new(GcraStore::default());
    let limiter = limiter(&store, 0);
    let send = [req("ip", "1/1m")];
    for _ in 0..3 {
        limiter.take(&send, at(0)).await.expect("take");
    }
    assert_eq!(store.takes(), 3);
    assert_eq!(limiter.local_keys(), 0);
    let verdict = limiter.take(&send, at(0)).await.expect("take");
    assert_eq!(verdict.first_refusal().map(|(_, d)| d.local), Some(false));
}

#[tokio::test]
async fn the_bound_holds_and_stale_keys_go_first() {
    let store = Arc::new(GcraStore::default());
    let limiter = limiter(&store, 10);

    // Nine keys that are stale two seconds later.
    for i in 0..9 {
        limiter
            .take(&[req(&format!("cold:{i}"), "1/1s")], at(0))
            .await
            .expect("take");
    }
    // A hot key, exhausted: the local layer refuses it.
    let hot = [req("hot", "5/10m")];
    for _ in 0..5 {
        assert!(
            limiter
                .take(&hot, at(10_000))
                .await
                .expect("take")
                .allowed()
        );
    }
    assert_eq!(limiter.local_keys(), 10);
    // One more key passes the bound: the stale ones are evicted, the hot key stays.
    limiter
        .take(&[req("cold:new", "1/1s")], at(10_000))
        .await
        .expect("take");
    assert_eq!(limiter.local_keys(), 2);
    let verdict = limiter.take(&hot, at(10_000)).await.expect("take");
    assert_eq!(verdict.first_refusal().map(|(_, d)| d.local), Some(true));

    // Fresh keys only: eviction frees nothing, so the layer forgets and stays bounded.
    for i in 0..1_000 {
        limiter
            .take(&[req(&format!("flood:{i}"), "5/10m")], at(20_000))
            .await
            .expect("take");
        assert!(limiter.local_keys() <= 10, "after {i}");
    }

    // Housekeeping drops what has gone stale by the latest call's time.
    let held = limiter.local_keys();
    assert!(held > 0);
    assert_eq!(limiter.housekeeping(), 0);
    limiter
        .take(&[req("late", "5/10m")], at(3_600_000))
        .await
        .expect("take");
    assert_eq!(limiter.housekeeping(), held);
    assert_eq!(limiter.local_keys(), 1);
}

/// Resident set size in bytes, from `/proc/self/statm` (pages of 4 KiB); `None` off Linux.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "n/a".to_owned(),
        |b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    )
}

/// A million distinct keys (an attacker rotating addresses and numbers) never make the
/// local layer hold more than its bound. Prints the figures; asserts none of them but the
/// bound.
#[tokio::test]
async fn a_million_distinct_keys_stay_within_the_bound() {
    const BOUND: usize = 100_000;
    const TAKES: usize = 500_000;
    let limiter = Limiter::new(Arc::new(AllowAll), settings(BOUND));
    let rss_before = rss_bytes();

    let mut most = 0;
    let mut rss_peak = rss_before;
    for i in 0..TAKES {
        // Two new keys per take, one a millisecond: the per-IP key is never stale within
        // the run (the layer must forget), the per-destination key is stale after 40 s
        // (eviction suffices).
        let requests = [
            req(
                &format!(
                    "send:login:ip:10.{}.{}.{}",
                    i >> 16,
                    (i >> 8) & 255,
                    i & 255
                ),
                "5/10m",
            ),
            req(&format!("send:login:to:{i:016x}"), "3/1m"),
        ];
        let now = at(i64::try_from(i).expect("small"));
        assert!(limiter.take(&requests, now).await.expect("take").allowed());
        let held = limiter.local_keys();
        assert!(held <= BOUND, "{held} keys held after take {i}");
        most = most.max(held);
        if i % 50_000 == 0 {
            rss_peak = rss_peak.max(rss_bytes());
        }
    }
    let held = limiter.local_keys();
    let rss_after = rss_bytes();
    drop(limiter);
    let rss_dropped = rss_bytes();
    println!(
        "{} distinct keys through the limiter (bound {BOUND}): at most {most} held, {held} at \
         the end; RSS before {}, peak {}, after {}, after dropping the limiter {}",
        TAKES * 2,
        mib(rss_before),
        mib(rss_peak.max(rss_after)),
        mib(rss_after),
        mib(rss_dropped),
    );
}
