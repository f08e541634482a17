//! The suite of the abuse protection ports, on both backends like the rest of `suite`: the
//! rate limiter against [`gcra`] itself and under concurrent takes from two pools, fraud
//! scoring's counters and its blocks.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, ensure};
use chrono::{DateTime, TimeDelta, Utc};
use domain::abuse::{
    Block, BlockAdded, BlockKind, BlockSource, BlockTarget, COUNTER_BUCKET, CountAdd, CountQuery,
    Counts, LimitDecision, LimitRequest, Quota, RateLimitStore, RiskStore, gcra,
};
use domain::ports::StoreError;

use super::super::harness::{Backend, TestDb};
use crate::fixtures::at;
use crate::row::to_millis;

both_backends!(
    takes_and_peeks_agree_with_gcra,
    a_take_stamped_before_its_keys_latest_is_decided_at_the_latest,
    concurrent_takes_of_one_key_allow_exactly_the_limit,
    concurrent_takes_of_shared_keys_in_any_order_never_deadlock,
    keys_of_one_call_are_independent,
    purge_forgets_keys_whose_tat_has_passed,
    counters_sum_the_minutes_of_their_window,
    concurrent_counter_adds_all_count,
    purge_deletes_counter_buckets_that_ended,
    blocks_are_new_extended_or_exempt,
    purge_deletes_blocks_that_ended_and_were_not_lifted_since,
    shadow_verdicts_are_never_enforced,
    active_and_listed_blocks_are_those_in_force,
    concurrent_adds_of_one_block_create_it_once,
    corrupt_block_rows_are_errors,
    abuse_lookups_use_their_indexes,
);

fn quota(raw: &str) -> Quota {
    Quota::parse(raw).expect("test quota is valid")
}

fn request(key: &str, quota: Quota) -> LimitRequest {
    LimitRequest {
        key: key.to_owned(),
        quota,
    }
}

/// `at(0)` plus `ms` milliseconds.
fn at_ms(ms: i64) -> DateTime<Utc> {
    at(0) + TimeDelta::milliseconds(ms)
}

/// The limiter as `gcra` alone computes it: what every store must answer.
#[derive(Debug, Default)]
struct Model {
    tats: HashMap<String, i64>,
}

impl Model {
    fn take(&mut self, request: &LimitRequest, now: DateTime<Utc>) -> LimitDecision {
        let tat = self.tats.get(&request.key).copied();
        let (decision, new_tat) = gcra(tat, to_millis(now), &request.quota);
        if let Some(new_tat) = new_tat {
            self.tats.insert(request.key.clone(), new_tat);
        }
        decision
    }

    fn peek(&self, request: &LimitRequest, now: DateTime<Utc>) -> LimitDecision {
        let tat = self.tats.get(&request.key).copied();
        gcra(tat, to_millis(now), &request.quota).0
    }
}

async fn takes_and_peeks_agree_with_gcra(db: Arc<TestDb>) -> anyhow::Result<()> {
    let limits = db.database().rate_limits();
    // Bursts and sustained rates, and an interval that does not divide its period
    // (90 s / 7 = 12 857 ms), each under a key of its own, all taken in every call.
    let requests: Vec<LimitRequest> = ["3/10m", "1/s", "7/90s", "10/m", "100/h"]
        .iter()
        .map(|raw| request(&format!("gcra:{raw}"), quota(raw)))
        .collect();
    let mut model = Model::default();
    // Times that repeat, creep by a millisecond, sit on interval boundaries, and jump past
    // whole periods; from a fixed-seed generator so a failure reproduces.
    let mut now = 0_i64;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut allowed = 0;
    let mut refused = 0;
    for step in 0..300 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        now += match seed % 10 {
            0..=2 => 0,
            3 => 1,
            4 => 999,
            5 => 12_857,
            6 => 200_000,
            7 => i64::try_from(seed % 5_000)?,
            8 => i64::try_from(seed % 60_000)?,
            _ => 3_600_000,
        };
        let t = at_ms(now);
        let peeked = limits.peek(&requests, t).await?;
        let expected: Vec<_> = requests.iter().map(|r| model.peek(r, t)).collect();
        assert_eq!(peeked, expected, "peek at step {step}, {now} ms");
        let taken = limits.take(&requests, t).await?;
        let expected: Vec<_> = requests.iter().map(|r| model.take(r, t)).collect();
        assert_eq!(taken, expected, "take at step {step}, {now} ms");
        allowed += taken.iter().filter(|d| d.allowed).count();
        refused += taken.iter().filter(|d| !d.allowed).count();
    }
    // The sequence exercised both answers, many times.
    ensure!(
        allowed > 100 && refused > 100,
        "{allowed} allowed, {refused} refused"
    );
    // Peeking took nothing, and an empty call is nothing.
    assert_eq!(limits.take(&[], at(0)).await?, []);
    assert_eq!(limits.peek(&[], at(0)).await?, []);
    Ok(())
}

async fn a_take_stamped_before_its_keys_latest_is_decided_at_the_latest(
    db: Arc<TestDb>,
) -> anyhow::Result<()> {
    // Requests are stamped when they arrive and take their limits later, so takes of one
    // key can reach the store out of the order of their stamps: here two at 1 000 ms, then
    // one stamped a millisecond before them.
    let limits = db.database().rate_limits();
    let shared = request("send:login:dest:late", quota("3/10m"));
    let latest = at_ms(1_000);
    let mut model = Model::default();
    for _ in 0..2 {
        assert_eq!(
            limits.take(std::slice::from_ref(&shared), latest).await?,
            [model.take(&shared, latest)]
        );
    }
    // Decided at the first two's time, as if it had arrived in order: the third of three
    // at one instant is allowed (at its own stamp GCRA would refuse it a millisecond of
    // burst), and its retry time counts from 1 000 ms.
    let late = limits
        .take(std::slice::from_ref(&shared), at_ms(999))
        .await?;
    let expected = model.take(&shared, latest);
    ensure!(expected.allowed && expected.remaining == 0, "{expected:?}");
    assert_eq!(late, [expected]);
    // A peek stamped earlier answers at the latest take's time too.
    assert_eq!(
        limits
            .peek(std::slice::from_ref(&shared), at_ms(500))
            .await?,
        [model.peek(&shared, latest)]
    );
    // Takes stamped after it are decided at their own time again.
    let next = at_ms(1_000 + 200_000);
    assert_eq!(
        limits.take(std::slice::from_ref(&shared), next).await?,
        [model.take(&shared, next)]
    );
    Ok(())
}

async fn concurrent_takes_of_one_key_allow_exactly_the_limit(
    db: Arc<TestDb>,
) -> anyhow::Result<()> {
    // Two replicas' pools, forty requests at the same instant for one key limited to 3.
    let stores: [Arc<dyn RateLimitStore>; 2] = [
        db.database().rate_limits(),
        db.replica_database().await?.rate_limits(),
    ];
    let shared = request("send:login:ip:203.0.113.0", quota("3/10m"));
    let now = at(0);
    let tasks: Vec<_> = (0..40)
        .zip(stores.iter().cycle())
        .map(|(_, store)| {
            let store = Arc::clone(store);
            let shared = shared.clone();
            tokio::spawn(async move { store.take(&[shared], now).await })
        })
        .collect();
    let mut decisions = Vec::new();
    for task in tasks {
        decisions.extend(task.await??);
    }
    let mut remaining: Vec<_> = decisions
        .iter()
        .filter(|d| d.allowed)
        .map(|d| d.remaining)
        .collect();
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        [0, 1, 2],
        "exactly the limit is allowed, once each"
    );
    // Every refusal waits for the one interval the burst used up beyond the period.
    for refused in decisions.iter().filter(|d| !d.allowed) {
        assert_eq!(refused.retry_after, std::time::Duration::from_secs(200));
        assert_eq!(refused.remaining, 0);
    }
    assert!(!stores[0].peek(&[shared], now).await?[0].allowed);
    Ok(())
}

async fn concurrent_takes_of_shared_keys_in_any_order_never_deadlock(
    db: Arc<TestDb>,
) -> anyhow::Result<()> {
    // Calls naming the same keys in different orders (an IP, a destination and a purpose
    // key per start), as concurrent starts do: each key still allows exactly its limit,
    // and no call fails on a lock cycle.
    let stores: [Arc<dyn RateLimitStore>; 2] = [
        db.database().rate_limits(),
        db.replica_database().await?.rate_limits(),
    ];
    let keys = ["ip:203.0.113.0", "dest:ab12", "purpose:login"];
    let orders = [[0, 1, 2], [2, 1, 0], [1, 0, 2], [2, 0, 1]];
    let now = at(0);
    let tasks: Vec<_> = (0..40)
        .zip(stores.iter().cycle())
        .map(|(n, store)| {
            let store = Arc::clone(store);
            let requests: Vec<_> = orders[n % orders.len()]
                .iter()
                .map(|&k| request(keys[k], quota("5/h")))
                .collect();
            tokio::spawn(async move {
                let decisions = store.take(&requests, now).await?;
                Ok::<_, StoreError>(requests.into_iter().zip(decisions).collect::<Vec<_>>())
            })
        })
        .collect();
    let mut allowed: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        for (request, decision) in task.await?? {
            if decision.allowed {
                *allowed.entry(request.key).or_default() += 1;
            }
        }
    }
    for key in keys {
        assert_eq!(allowed.get(key), Some(&5), "{key}: {allowed:?}");
    }
    Ok(())
}

async fn keys_of_one_call_are_independent(db: Arc<TestDb>) -> anyhow::Result<()> {
    let limits = db.database().rate_limits();
    let one = quota("1/m");
    let two = quota("2/m");
    let now = at(0);
    // One key refused does not refuse the others, and the answers come in request order
    // (not key order).
    let first = limits
        .take(
            &[request("z", one), request("a", two), request("m", one)],
            now,
        )
        .await?;
    assert_eq!(
        first.iter().map(|d| d.allowed).collect::<Vec<_>>(),
        [true, true, true]
    );
    assert_eq!(
        first.iter().map(|d| d.remaining).collect::<Vec<_>>(),
        [0, 1, 0]
    );
    let second = limits
        .take(
            &[request("z", one), request("a", two), request("new", one)],
            now,
        )
        .await?;
    assert_eq!(
        second.iter().map(|d| d.allowed).collect::<Vec<_>>(),
        [false, true, true]
    );
    // A key named twice in one call is taken twice, as by two calls, and peek answers
    // the same way without taking.
    let twice = [
        request("twice", two),
        request("other", two),
        request("twice", two),
    ];
    let peeked = limits.peek(&twice, now).await?;
    let taken = limits.take(&twice, now).await?;
    assert_eq!(peeked, taken);
    assert_eq!(
        taken
            .iter()
            .map(|d| (d.allowed, d.remaining))
            .collect::<Vec<_>>(),
        [(true, 1), (true, 1), (true, 0)]
    );
    let thrice = limits.take(&[request("twice", two)], now).await?;
    assert!(!thrice[0].allowed);
    assert_eq!(db.count("rate_limits").await?, 6);
    Ok(())
}

async fn purge_forgets_keys_whose_tat_has_passed(db: Arc<TestDb>) -> anyhow::Result<()> {
    let limits = db.database().rate_limits();
    // After one take at `at(0)`, each key's tat is one interval later: 1 s and 200 s.
    let short = request("short", quota("1/s"));
    let long = request("long", quota("3/10m"));
    limits.take(&[short.clone(), long.clone()], at(0)).await?;
    assert_eq!(limits.purge_limits(at_ms(999)).await?, 0);
    assert_eq!(limits.purge_limits(at_ms(1000)).await?, 1, "at its tat");
    assert_eq!(db.count("rate_limits").await?, 1);
    // A forgotten key starts afresh, as `gcra` says of a tat that has passed.
    let again = limits
        .take(std::slice::from_ref(&short), at_ms(1000))
        .await?;
    assert_eq!(again[0], gcra(None, to_millis(at_ms(1000)), &short.quota).0);
    // A refused take stores nothing: it does not keep a key alive.
    limits.take(&[long.clone(), long.clone()], at(0)).await?;
    assert!(!limits.take(std::slice::from_ref(&long), at(0)).await?[0].allowed);
    assert_eq!(limits.purge_limits(at(599)).await?, 1, "`short`");
    assert_eq!(
        limits.purge_limits(at(600)).await?,
        1,
        "`long`, 3 × 200 s on"
    );
    assert_eq!(db.count("rate_limits").await?, 0);
    assert_eq!(limits.purge_limits(at(10_000)).await?, 0);

    // More keys than one purge batch, half of them due: every due one goes, wherever it
    // sorts, and the others stay.
    let many: Vec<_> = (0..2500)
        .map(|n| {
            let q = if n % 2 == 0 { "1/s" } else { "3/10m" };
            request(&format!("k{n:04}"), quota(q))
        })
        .collect();
    limits.take(&many, at(20_000)).await?;
    assert_eq!(limits.purge_limits(at(20_001)).await?, 1250);
    assert_eq!(db.count("rate_limits").await?, 1250);
    Ok(())
}

/// The start of the minute `at(0)` falls in, plus `minutes` and `secs`.
fn minute(minutes: i64, secs: i64) -> DateTime<Utc> {
    let bucket = i64::try_from(COUNTER_BUCKET.as_millis()).expect("a minute");
    let start = to_millis(at(0)).div_euclid(bucket) * bucket;
    DateTime::from_timestamp_millis(start).expect("valid time")
        + TimeDelta::minutes(minutes)
        + TimeDelta::seconds(secs)
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

fn counts(attempts: u64, approved: u64) -> Counts {
    Counts { attempts, approved }
}

async fn counters_sum_the_minutes_of_their_window(db: Arc<TestDb>) -> anyhow::Result<()> {
    let risk = db.database().risk_store();
    let (gb, prefix) = ("country:GB", "prefix:+4479111");
    risk.add_counts(&[add(gb, 2, 1)], minute(0, 5)).await?;
    // A key twice in one call adds both.
    risk.add_counts(
        &[add(gb, 1, 1), add(prefix, 4, 4), add(gb, 0, 0)],
        minute(0, 59),
    )
    .await?;
    risk.add_counts(&[add(gb, 3, 0)], minute(1, 0)).await?;
    risk.add_counts(&[add(gb, 1, 0)], minute(5, 30)).await?;
    risk.add_counts(&[], minute(5, 30)).await?;
    assert_eq!(db.count("risk_counters").await?, 4);

    let read = risk
        .read_counts(&[
            // A window includes the whole minute it starts in...
            query(gb, minute(0, 59)),
            query(gb, minute(1, 0)),
            query(gb, minute(1, 1)),
            // ...and sums nothing before it.
            query(gb, minute(2, 0)),
            query(gb, minute(5, 59)),
            query(gb, minute(6, 0)),
            query(prefix, minute(0, 0)),
            query(prefix, minute(1, 0)),
            query("country:FR", minute(-100, 0)),
            // The same query twice answers twice.
            query(gb, minute(0, 59)),
        ])
        .await?;
    assert_eq!(
        read,
        [
            counts(7, 2),
            counts(4, 0),
            counts(4, 0),
            counts(1, 0),
            counts(1, 0),
            counts(0, 0),
            counts(4, 4),
            counts(0, 0),
            counts(0, 0),
            counts(7, 2),
        ]
    );
    assert_eq!(risk.read_counts(&[]).await?, []);
    Ok(())
}

async fn concurrent_counter_adds_all_count(db: Arc<TestDb>) -> anyhow::Result<()> {
    let stores: [Arc<dyn RiskStore>; 2] = [
        db.database().risk_store(),
        db.replica_database().await?.risk_store(),
    ];
    let tasks: Vec<_> = (0..40_u32)
        .zip(stores.iter().cycle())
        .map(|(n, store)| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                // Every add touches the shared key, in one of two orders with another.
                let mut adds = vec![
                    add("ipfan:203.0.113.7", 1, n % 2),
                    add(&format!("k{n}"), 1, 0),
                ];
                if n % 3 == 0 {
                    adds.reverse();
                }
                store.add_counts(&adds, minute(0, 1)).await
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let read = stores[0]
        .read_counts(&[query("ipfan:203.0.113.7", minute(0, 0))])
        .await?;
    assert_eq!(read, [counts(40, 20)]);
    assert_eq!(db.count("risk_counters").await?, 41);
    Ok(())
}

async fn purge_deletes_counter_buckets_that_ended(db: Arc<TestDb>) -> anyhow::Result<()> {
    let risk = db.database().risk_store();
    // More than one purge batch in the first minute, then one key a minute.
    let many: Vec<_> = (0..2100)
        .map(|n| add(&format!("ipfan:{n}"), 1, 0))
        .collect();
    risk.add_counts(&many, minute(0, 10)).await?;
    for m in 1..=3 {
        risk.add_counts(&[add("country:GB", 1, 1)], minute(m, 0))
            .await?;
    }
    // Minute 0 ends where minute 1 starts: not before.
    assert_eq!(risk.purge_counts(minute(0, 59)).await?, 0);
    assert_eq!(risk.purge_counts(minute(1, 0)).await?, 2100);
    assert_eq!(risk.purge_counts(minute(1, 0)).await?, 0);
    assert_eq!(risk.purge_counts(minute(3, 0)).await?, 2);
    // What a window starting at the cut-off reads is kept.
    let read = risk
        .read_counts(&[query("country:GB", minute(3, 0))])
        .await?;
    assert_eq!(read, [counts(1, 1)]);
    assert_eq!(db.count("risk_counters").await?, 1);
    Ok(())
}

fn target(kind: BlockKind, value: &str) -> BlockTarget {
    BlockTarget {
        kind,
        value: value.to_owned(),
    }
}

/// A block on `target` by `source` from `from` to `until` (seconds after `at(0)`).
fn block(target: &BlockTarget, source: BlockSource, from: i64, until: i64) -> Block {
    Block {
        target: target.clone(),
        reason: format!("{}_{from}", source.as_str().to_uppercase()),
        detail: format!("imposed at {from} until {until}"),
        source,
        shadow: false,
        created_at: at(from),
        expires_at: at(until),
    }
}

fn shadow(mut block: Block) -> Block {
    block.shadow = true;
    block
}

/// The one block in force on `target` at `now`, if any.
async fn in_force(
    risk: &dyn RiskStore,
    target: &BlockTarget,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<Block>> {
    let mut active = risk
        .active_blocks(std::slice::from_ref(target), now)
        .await?;
    ensure!(active.len() <= 1, "one block per target: {active:?}");
    Ok(active.pop())
}

async fn purge_deletes_blocks_that_ended_and_were_not_lifted_since(
    db: Arc<TestDb>,
) -> anyhow::Result<()> {
    use BlockSource::{Operator, Scoring};
    let risk = db.database().risk_store();
    let ended = target(BlockKind::Ip, "203.0.113.7");
    let running = target(BlockKind::Prefix, "+4479111");
    let lifted = target(BlockKind::Country, "GB");
    risk.add_block(&block(&ended, Scoring, 0, 100)).await?;
    risk.add_block(&block(&running, Scoring, 0, 10_000)).await?;
    risk.add_block(&block(&lifted, Operator, 0, 10_000)).await?;
    assert!(risk.lift_block(&lifted, at(500)).await?);

    assert_eq!(risk.purge_blocks(at(100)).await?, 0, "ends exactly then");
    assert_eq!(risk.purge_blocks(at(400)).await?, 1, "the ended one");
    assert_eq!(db.count("risk_blocks").await?, 2);
    // The lifted one is kept while its lift is recent: it carries the exemption.
    assert_eq!(risk.purge_blocks(at(500)).await?, 0);
    assert_eq!(risk.purge_blocks(at(501)).await?, 1);
    assert!(in_force(&*risk, &running, at(501)).await?.is_some());
    assert_eq!(db.count("risk_blocks").await?, 1);
    Ok(())
}

async fn blocks_are_new_extended_or_exempt(db: Arc<TestDb>) -> anyhow::Result<()> {
    use BlockSource::{Operator, Provider, Scoring};
    let risk = db.database().risk_store();
    let prefix = target(BlockKind::Prefix, "+4479111");

    let first = block(&prefix, Scoring, 0, 3600);
    assert_eq!(risk.add_block(&first).await?, BlockAdded::New);
    assert_eq!(in_force(&*risk, &prefix, at(1)).await?, Some(first.clone()));

    // While it is in force, later blocks extend it to the later end and change nothing
    // else (reason, detail, source, start); an earlier end changes nothing at all.
    assert_eq!(
        risk.add_block(&block(&prefix, Provider, 10, 1800)).await?,
        BlockAdded::Extended
    );
    assert_eq!(
        in_force(&*risk, &prefix, at(11)).await?,
        Some(first.clone())
    );
    assert_eq!(
        risk.add_block(&block(&prefix, Operator, 20, 7200)).await?,
        BlockAdded::Extended
    );
    let mut extended = first.clone();
    extended.expires_at = at(7200);
    assert_eq!(in_force(&*risk, &prefix, at(21)).await?, Some(extended));

    // An operator lifts it: it is no longer in force, and lifting again finds nothing.
    assert!(risk.lift_block(&prefix, at(100)).await?);
    assert!(!risk.lift_block(&prefix, at(101)).await?);
    assert_eq!(in_force(&*risk, &prefix, at(100)).await?, None);

    // Scoring may not impose a block again for as long as the new block would last...
    assert_eq!(
        risk.add_block(&block(&prefix, Scoring, 200, 3800)).await?,
        BlockAdded::Exempt
    );
    assert_eq!(in_force(&*risk, &prefix, at(200)).await?, None);
    // ...while the provider and operators always may.
    let provider = block(&prefix, Provider, 300, 900);
    assert_eq!(risk.add_block(&provider).await?, BlockAdded::New);
    assert_eq!(
        in_force(&*risk, &prefix, at(300)).await?,
        Some(provider.clone())
    );
    // A scoring block inside the exemption neither adds nor extends, even over a block in
    // force.
    assert_eq!(
        risk.add_block(&block(&prefix, Scoring, 400, 4000)).await?,
        BlockAdded::Exempt
    );
    assert_eq!(in_force(&*risk, &prefix, at(400)).await?, Some(provider));
    // The exemption is measured against the new block's duration: a 10-minute block 900 s
    // after the lift is past it, a one-hour block only from 3700 s on.
    assert_eq!(in_force(&*risk, &prefix, at(900)).await?, None, "expired");
    let short = block(&prefix, Scoring, 1000, 1600);
    assert_eq!(risk.add_block(&short).await?, BlockAdded::New);
    assert!(risk.lift_block(&prefix, at(1100)).await?);
    assert_eq!(
        risk.add_block(&block(&prefix, Scoring, 4699, 8299)).await?,
        BlockAdded::Exempt,
        "3599 s after the second lift"
    );
    let later = block(&prefix, Scoring, 4700, 8300);
    assert_eq!(risk.add_block(&later).await?, BlockAdded::New);
    assert_eq!(in_force(&*risk, &prefix, at(4700)).await?, Some(later));

    // Lifts and exemptions are per target.
    let other = target(BlockKind::Prefix, "+4479112");
    assert_eq!(
        risk.add_block(&block(&other, Scoring, 200, 3800)).await?,
        BlockAdded::New
    );
    assert!(
        !risk
            .lift_block(&target(BlockKind::Country, "GB"), at(200))
            .await?
    );
    assert_eq!(db.count("risk_blocks").await?, 2);
    Ok(())
}

async fn shadow_verdicts_are_never_enforced(db: Arc<TestDb>) -> anyhow::Result<()> {
    use BlockSource::{Provider, Scoring};
    let risk = db.database().risk_store();
    let ip = target(BlockKind::Ip, "203.0.113.7");

    // A shadow block is in force as a record: listed and returned, marked shadow.
    let recorded = shadow(block(&ip, Scoring, 0, 600));
    assert_eq!(risk.add_block(&recorded).await?, BlockAdded::New);
    assert_eq!(in_force(&*risk, &ip, at(1)).await?, Some(recorded.clone()));
    assert_eq!(
        risk.list_blocks(None, at(1), 10).await?,
        std::slice::from_ref(&recorded)
    );
    // Shadow over shadow extends like any block.
    assert_eq!(
        risk.add_block(&shadow(block(&ip, Scoring, 5, 700))).await?,
        BlockAdded::Extended
    );

    // The first enforced block replaces the shadow record rather than extend it, so the
    // shadow verdict's end is never enforced...
    let enforced = block(&ip, Provider, 10, 300);
    assert_eq!(risk.add_block(&enforced).await?, BlockAdded::New);
    assert_eq!(in_force(&*risk, &ip, at(10)).await?, Some(enforced.clone()));
    // ...and a shadow block over an enforced one leaves its end where it is.
    assert_eq!(
        risk.add_block(&shadow(block(&ip, Scoring, 20, 900)))
            .await?,
        BlockAdded::Extended
    );
    assert_eq!(in_force(&*risk, &ip, at(20)).await?, Some(enforced.clone()));
    // Enforced over enforced extends.
    assert_eq!(
        risk.add_block(&block(&ip, Scoring, 30, 400)).await?,
        BlockAdded::Extended
    );
    let mut extended = enforced;
    extended.expires_at = at(400);
    assert_eq!(in_force(&*risk, &ip, at(399)).await?, Some(extended));
    assert_eq!(in_force(&*risk, &ip, at(400)).await?, None);
    Ok(())
}

async fn active_and_listed_blocks_are_those_in_force(db: Arc<TestDb>) -> anyhow::Result<()> {
    use BlockSource::{Operator, Provider, Scoring};
    let risk = db.database().risk_store();
    let prefix = block(&target(BlockKind::Prefix, "+4479111"), Scoring, 0, 100);
    let country = block(&target(BlockKind::Country, "GB"), Operator, 10, 1000);
    let destination = shadow(block(
        &target(BlockKind::Destination, &"ab".repeat(32)),
        Scoring,
        20,
        1000,
    ));
    let expired = block(&target(BlockKind::Ip, "203.0.113.7"), Provider, 30, 40);
    let lifted = block(
        &target(BlockKind::Ip, "2001:db8:1:2::/64"),
        Scoring,
        40,
        1000,
    );
    for b in [&prefix, &country, &destination, &expired, &lifted] {
        assert_eq!(risk.add_block(b).await?, BlockAdded::New);
    }
    assert!(risk.lift_block(&lifted.target, at(45)).await?);

    let targets = [&expired, &lifted, &destination, &country, &prefix].map(|b| b.target.clone());
    let mut unknown = targets.to_vec();
    unknown.push(target(BlockKind::Country, "FR"));
    let mut active = risk.active_blocks(&unknown, at(50)).await?;
    active.sort_by(|a, b| a.target.cmp(&b.target));
    let mut expected = vec![prefix.clone(), country.clone(), destination.clone()];
    expected.sort_by(|a, b| a.target.cmp(&b.target));
    assert_eq!(active, expected);
    assert_eq!(risk.active_blocks(&[], at(50)).await?, []);
    // A block is in force until its end, not at it.
    assert_eq!(
        in_force(&*risk, &prefix.target, at_ms(99_749)).await?,
        Some(prefix.clone())
    );
    assert_eq!(in_force(&*risk, &prefix.target, at(100)).await?, None);

    // Listed newest first, cut at the limit, of one kind or all.
    let all = risk.list_blocks(None, at(50), 10).await?;
    assert_eq!(all, [destination.clone(), country.clone(), prefix.clone()]);
    assert_eq!(
        risk.list_blocks(None, at(50), 2).await?,
        [destination.clone(), country.clone()]
    );
    assert_eq!(risk.list_blocks(None, at(50), 0).await?, []);
    assert_eq!(
        risk.list_blocks(Some(BlockKind::Country), at(50), 10)
            .await?,
        std::slice::from_ref(&country)
    );
    assert_eq!(risk.list_blocks(Some(BlockKind::Ip), at(50), 10).await?, []);
    assert_eq!(
        risk.list_blocks(None, at(100), 10).await?,
        [destination, country]
    );
    assert_eq!(risk.list_blocks(None, at(1000), 10).await?, []);
    Ok(())
}

async fn concurrent_adds_of_one_block_create_it_once(db: Arc<TestDb>) -> anyhow::Result<()> {
    let stores: [Arc<dyn RiskStore>; 2] = [
        db.database().risk_store(),
        db.replica_database().await?.risk_store(),
    ];
    let country = target(BlockKind::Country, "NG");
    let tasks: Vec<_> = (0..20_i64)
        .zip(stores.iter().cycle())
        .map(|(n, store)| {
            let store = Arc::clone(store);
            // The same verdict reached by every replica at once, some a little longer.
            let b = block(&country, BlockSource::Scoring, 0, 3600 + n);
            tokio::spawn(async move { store.add_block(&b).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await??);
    }
    let count = |outcome| outcomes.iter().filter(|&&o| o == outcome).count();
    assert_eq!(count(BlockAdded::New), 1, "{outcomes:?}");
    assert_eq!(count(BlockAdded::Extended), 19, "{outcomes:?}");
    let held = in_force(&*stores[0], &country, at(0))
        .await?
        .context("in force")?;
    assert_eq!(held.expires_at, at(3619), "the latest end of all");
    assert_eq!(db.count("risk_blocks").await?, 1);
    Ok(())
}

async fn corrupt_block_rows_are_errors(db: Arc<TestDb>) -> anyhow::Result<()> {
    let shadow_false = match db.backend() {
        Backend::Sqlite => "0",
        Backend::Postgres => "false",
    };
    // A start no clock can represent, as a hand edit could leave.
    db.execute(&format!(
        "INSERT INTO risk_blocks (kind, value, reason, detail, source, shadow, created_at, \
         expires_at) VALUES ('country', 'GB', 'R', 'd', 'operator', {shadow_false}, \
         {}, {})",
        i64::MAX,
        to_millis(at(1000))
    ))
    .await?;
    let risk = db.database().risk_store();
    let error = risk
        .list_blocks(None, at(0), 10)
        .await
        .expect_err("corrupt");
    let StoreError::Corrupt(message) = &error else {
        panic!("expected Corrupt, got {error:?}");
    };
    assert!(
        message.contains("block row `country GB`") && message.contains("created_at"),
        "{message}"
    );
    let error = risk
        .active_blocks(&[target(BlockKind::Country, "GB")], at(0))
        .await
        .expect_err("corrupt");
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
    // The schema refuses kinds and sources the domain does not have.
    for (kind, source) in [("Country", "operator"), ("country", "robot")] {
        let insert = format!(
            "INSERT INTO risk_blocks (kind, value, reason, detail, source, shadow, \
             created_at, expires_at) VALUES ('{kind}', 'FR', 'R', 'd', '{source}', \
             {shadow_false}, 0, 1)"
        );
        ensure!(db.execute(&insert).await.is_err(), "{kind} {source}");
    }
    Ok(())
}

async fn abuse_lookups_use_their_indexes(db: Arc<TestDb>) -> anyhow::Result<()> {
    use sqlx::Postgres;

    use super::super::harness::Bind;
    use crate::repo::Dialect;
    use crate::sql;
    // The purge of counters: on PostgreSQL the oldest minutes along their index; on SQLite
    // (no such index) slices of the primary key.
    let purge_counts = match db.backend() {
        Backend::Postgres => vec![(
            sql::PURGE_COUNTS,
            vec![Bind::Int(0), Bind::Int(1000)],
            "risk_counters_by_bucket",
        )],
        Backend::Sqlite => [crate::sqlite::COUNTS_SLICES, crate::sqlite::LIMITS_SLICES]
            .into_iter()
            .flat_map(|slices| {
                [
                    (
                        slices.end,
                        vec![Bind::Text(""), Bind::Int(999)],
                        "USING PRIMARY KEY (key>?)",
                    ),
                    (
                        slices.delete,
                        vec![Bind::Text("a"), Bind::Text("b"), Bind::Int(0)],
                        "USING PRIMARY KEY (key>? AND key<?)",
                    ),
                    (
                        slices.delete_rest,
                        vec![Bind::Text("a"), Bind::Int(0)],
                        "USING PRIMARY KEY (key>?)",
                    ),
                ]
            })
            .collect(),
    };
    // Every kind: the range of blocks in force.
    let list_blocks = (
        sql::LIST_BLOCKS,
        vec![Bind::Int(0), Bind::Null, Bind::Int(10)],
        "risk_blocks_by_expiry",
    );
    for (statement, binds, index) in purge_counts.into_iter().chain([list_blocks]) {
        let plan = db.plan(statement, &binds).await?;
        assert!(plan.contains(index), "{statement}\n→ {plan}");
    }
    // One kind: that range, or the kind's range of the primary key; never the table.
    let plan = db
        .plan(
            sql::LIST_BLOCKS,
            &[Bind::Int(0), Bind::Text("ip"), Bind::Int(10)],
        )
        .await?;
    let by_index = match db.backend() {
        Backend::Sqlite => !plan.contains("SCAN risk_blocks"),
        Backend::Postgres => plan.contains("Index Scan") && !plan.contains("Seq Scan"),
    };
    assert!(by_index, "{plan}");

    // Reads of many keys probe the primary key once per key: on PostgreSQL through a JSON
    // parameter, in a plan that cannot become a hash of the whole table; on SQLite one
    // statement per key.
    let read_json = match db.backend() {
        Backend::Sqlite => [
            (
                crate::sqlite::READ_LIMITS,
                vec![Bind::Text(r#"[{"key":"k"}]"#)],
                "rate_limits",
            ),
            (
                crate::sqlite::READ_COUNT,
                vec![Bind::Text("k"), Bind::Int(0)],
                "risk_counters",
            ),
            (
                crate::sqlite::ACTIVE_BLOCK,
                vec![Bind::Text("ip"), Bind::Text("v"), Bind::Int(0)],
                "risk_blocks",
            ),
        ],
        Backend::Postgres => [
            (
                <Postgres as Dialect>::READ_LIMITS,
                vec![Bind::Text(r#"[{"key":"k"}]"#)],
                "rate_limits",
            ),
            (
                <Postgres as Dialect>::READ_COUNTS,
                vec![Bind::Text(r#"[{"i":0,"key":"k","since":0}]"#)],
                "risk_counters",
            ),
            (
                <Postgres as Dialect>::ACTIVE_BLOCKS,
                vec![Bind::Int(0), Bind::Text(r#"[{"kind":"ip","value":"v"}]"#)],
                "risk_blocks",
            ),
        ],
    };
    for (statement, binds, table) in read_json {
        let plan = db.plan(statement, &binds).await?;
        let probes = match db.backend() {
            Backend::Sqlite => plan.contains("USING PRIMARY KEY"),
            Backend::Postgres => {
                plan.contains(&format!("Index Scan using {table}_pkey"))
                    && plan.contains("= input.")
                    && !plan.contains("Hash")
            }
        };
        assert!(probes, "{statement}\n→ {plan}");
    }
    Ok(())
}
