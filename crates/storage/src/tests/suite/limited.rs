//! Writes guarded by rate limits ([`VerificationStore::insert_limited`] and
//! [`VerificationStore::update_limited`]) and the combined read of scoring's signals, on
//! both backends: a start or a check takes every limit and writes, or takes nothing and
//! writes nothing.

use std::sync::Arc;

use anyhow::ensure;
use domain::abuse::{
    Block, BlockKind, BlockSource, BlockTarget, CountAdd, CountQuery, FlushMark, LimitRequest,
    Quota,
};
use domain::ports::{Inserted, Limited, StoreError, VerificationStore};
use domain::{Destination, PhoneNumber, Verification, VerificationRecord};

use super::super::harness::TestDb;
use crate::fixtures::{at, bare};

both_backends!(
    a_refused_limit_takes_no_other_limit_and_inserts_nothing,
    a_limited_insert_that_finds_a_pending_one_still_takes,
    a_limited_update_that_conflicts_takes_nothing,
    a_key_named_twice_is_taken_twice_by_guarded_writes,
    concurrent_limited_inserts_allow_exactly_the_limit,
    concurrent_limited_updates_of_one_version_write_and_take_once,
    signals_read_together_equal_the_two_reads,
    a_replica_s_flush_marks_are_read_with_its_counts,
);

fn request(key: &str, quota: &str) -> LimitRequest {
    LimitRequest {
        key: key.to_owned(),
        quota: Quota::parse(quota).expect("test quota is valid"),
    }
}

/// The `n`th of some distinct US numbers.
fn number(n: u32) -> Destination {
    let raw = format!("+1415555{:04}", 1000 + n);
    Destination::Phone(PhoneNumber::parse(&raw, None).expect("test number is valid"))
}

async fn a_refused_limit_takes_no_other_limit_and_inserts_nothing(
    db: Arc<TestDb>,
) -> anyhow::Result<()> {
    let store = db.database().verifications();
    let limits = db.database().rate_limits();
    let narrow = request("send:login:ip:a", "1/m");
    let wide = request("send:login:cc:US", "3/m");
    let both = [wide.clone(), narrow.clone()];

    let first = bare(1, "login", &number(1));
    let Limited::Done { decisions, outcome } = store.insert_limited(&first, &both, at(0)).await?
    else {
        anyhow::bail!("the first start is within every limit");
    };
    assert_eq!(outcome, Inserted::Created);
    assert_eq!(decisions.len(), 2);
    assert_eq!((decisions[0].remaining, decisions[1].remaining), (2, 0));

    let second = bare(2, "login", &number(2));
    let Limited::Refused(decisions) = store.insert_limited(&second, &both, at(1)).await? else {
        anyhow::bail!("the narrow limit is used up");
    };
    ensure!(
        decisions[0].allowed && !decisions[1].allowed,
        "{decisions:?}"
    );
    assert_eq!(store.get(&second.id()).await?, None, "nothing inserted");
    // The wide limit was not charged for the refused start: two events are still left.
    let peeked = limits.peek(&[wide.clone(), wide], at(1)).await?;
    ensure!(peeked.iter().all(|d| d.allowed), "{peeked:?}");
    Ok(())
}

async fn a_limited_insert_that_finds_a_pending_one_still_takes(
    db: Arc<TestDb>,
) -> anyhow::Result<()> {
    let store = db.database().verifications();
    let limits = db.database().rate_limits();
    let per_destination = request("send:login:to:h", "2/m");
    let first = bare(1, "login", &number(1));
    store
        .insert_limited(&first, std::slice::from_ref(&per_destination), at(0))
        .await?;
    let again = bare(2, "login", &number(1));
    let Limited::Done { decisions, outcome } = store
        .insert_limited(&again, std::slice::from_ref(&per_destination), at(1))
        .await?
    else {
        anyhow::bail!("two sends are allowed");
    };
    assert_eq!(outcome, Inserted::Pending(Box::new(first)));
    assert_eq!(decisions[0].remaining, 0, "the resend is a send");
    ensure!(!limits.peek(&[per_destination], at(1)).await?[0].allowed);
    Ok(())
}

async fn a_limited_update_that_conflicts_takes_nothing(db: Arc<TestDb>) -> anyhow::Result<()> {
    let store = db.database().verifications();
    let limits = db.database().rate_limits();
    let checks = request("check:login:ver:x", "1/m");
    let mut v = bare(1, "login", &number(1));
    store.insert(&v).await?;
    v.record_mut().checks += 1;
    v.record_mut().version += 1;

    // A copy read at a version the row never had.
    let mut stale = Verification::restore(VerificationRecord {
        version: v.version() + 7,
        ..v.clone().into_record()
    });
    let stale = store
        .update_limited(&mut stale, std::slice::from_ref(&checks), at(1))
        .await;
    ensure!(
        matches!(stale, Err(StoreError::Conflict(id)) if id == v.id()),
        "{stale:?}"
    );
    ensure!(limits.peek(std::slice::from_ref(&checks), at(1)).await?[0].allowed);

    let done = store
        .update_limited(&mut v, std::slice::from_ref(&checks), at(1))
        .await?;
    ensure!(matches!(done, Limited::Done { .. }), "{done:?}");
    assert_eq!(store.get(&v.id()).await?, Some(v.clone()));

    v.record_mut().checks += 1;
    v.record_mut().version += 1;
    let refused = store
        .update_limited(&mut v, std::slice::from_ref(&checks), at(2))
        .await?;
    ensure!(matches!(refused, Limited::Refused(_)), "{refused:?}");
    let stored = store.get(&v.id()).await?.expect("stored");
    assert_eq!(stored.checks(), 1, "a refused update writes nothing");
    Ok(())
}

/// A key named twice is taken twice, as two calls would, by both guarded writes; a second
/// take the quota refuses leaves the first one's undone too.
async fn a_key_named_twice_is_taken_twice_by_guarded_writes(db: Arc<TestDb>) -> anyhow::Result<()> {
    let store = db.database().verifications();
    let limits = db.database().rate_limits();
    let sends = request("send:login:cc:US", "3/m");
    let twice = [sends.clone(), sends.clone()];

    let first = bare(1, "login", &number(1));
    let Limited::Done { decisions, outcome } = store.insert_limited(&first, &twice, at(0)).await?
    else {
        anyhow::bail!("two of three events are free");
    };
    assert_eq!(outcome, Inserted::Created);
    assert_eq!((decisions[0].remaining, decisions[1].remaining), (2, 1));

    let second = bare(2, "login", &number(2));
    let refused = store.insert_limited(&second, &twice, at(1)).await?;
    ensure!(matches!(refused, Limited::Refused(_)), "{refused:?}");
    assert_eq!(store.get(&second.id()).await?, None, "nothing inserted");
    // The refused start's first take of the key was undone with the second: one is left.
    let peeked = limits.peek(std::slice::from_ref(&sends), at(1)).await?;
    ensure!(peeked[0].allowed && peeked[0].remaining == 0, "{peeked:?}");

    let checks = request("check:login:ver:x", "2/m");
    let mut v = first;
    v.record_mut().checks += 1;
    v.record_mut().version += 1;
    let done = store
        .update_limited(&mut v, &[checks.clone(), checks.clone()], at(2))
        .await?;
    ensure!(matches!(done, Limited::Done { .. }), "{done:?}");
    assert_eq!(store.get(&v.id()).await?, Some(v.clone()));
    ensure!(
        !limits.peek(&[checks], at(2)).await?[0].allowed,
        "both taken"
    );
    Ok(())
}

/// Checks racing to claim one version of a verification from two replicas: one writes and
/// takes its limit, every other one finds the version gone and takes nothing.
async fn concurrent_limited_updates_of_one_version_write_and_take_once(
    db: Arc<TestDb>,
) -> anyhow::Result<()> {
    let stores: [Arc<dyn VerificationStore>; 2] = [
        db.database().verifications(),
        db.replica_database().await?.verifications(),
    ];
    let limits = db.database().rate_limits();
    let checks = request("check:login:to:h", "20/m");
    let v = bare(1, "login", &number(1));
    stores[0].insert(&v).await?;
    let tasks: Vec<_> = (0..10u32)
        .zip(stores.iter().cycle())
        .map(|(n, store)| {
            let store = Arc::clone(store);
            let limits = [checks.clone()];
            let mut claim = v.clone();
            claim.record_mut().checks = n + 1;
            claim.record_mut().version += 1;
            tokio::spawn(async move { store.update_limited(&mut claim, &limits, at(1)).await })
        })
        .collect();
    let (mut written, mut lost) = (0, 0);
    for task in tasks {
        match task.await? {
            Ok(Limited::Done { .. }) => written += 1,
            Err(StoreError::Conflict(_)) => lost += 1,
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    assert_eq!((written, lost), (1, 9));
    let peeked = limits.peek(std::slice::from_ref(&checks), at(1)).await?;
    assert_eq!(peeked[0].remaining, 18, "taken once, by the one that wrote");
    Ok(())
}

async fn concurrent_limited_inserts_allow_exactly_the_limit(db: Arc<TestDb>) -> anyhow::Result<()> {
    // Two replicas' pools, twenty starts to twenty numbers at once under one limit of 5.
    let stores: [Arc<dyn VerificationStore>; 2] = [
        db.database().verifications(),
        db.replica_database().await?.verifications(),
    ];
    let shared = request("send:login:range:+141555", "5/10m");
    let tasks: Vec<_> = (0..20u32)
        .zip(stores.iter().cycle())
        .map(|(n, store)| {
            let store = Arc::clone(store);
            let limits = [shared.clone()];
            let v = bare(u128::from(n) + 1, "login", &number(n));
            tokio::spawn(async move { store.insert_limited(&v, &limits, at(0)).await })
        })
        .collect();
    let (mut created, mut refused) = (0, 0);
    for task in tasks {
        match task.await?? {
            Limited::Done {
                outcome: Inserted::Created,
                ..
            } => created += 1,
            Limited::Refused(_) => refused += 1,
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    assert_eq!((created, refused), (5, 15));
    let mut stored = 0;
    for n in 0..20u32 {
        if stores[0]
            .get(&crate::fixtures::id(u128::from(n) + 1))
            .await?
            .is_some()
        {
            stored += 1;
        }
    }
    assert_eq!(stored, 5, "only the allowed starts are recorded");
    Ok(())
}

async fn signals_read_together_equal_the_two_reads(db: Arc<TestDb>) -> anyhow::Result<()> {
    let risk = db.database().risk_store();
    let add = |key: &str, attempts| CountAdd {
        key: key.to_owned(),
        attempts,
        approved: 1,
    };
    risk.add_counts(&[add("prefix:+141555", 3), add("country:US", 9)], at(0))
        .await?;
    let block = Block {
        target: BlockTarget {
            kind: BlockKind::Ip,
            value: "203.0.113.7".into(),
        },
        reason: "R".into(),
        detail: "d".into(),
        source: BlockSource::Operator,
        shadow: false,
        created_at: at(0),
        expires_at: at(3600),
    };
    risk.add_block(&block).await?;
    let queries = [
        CountQuery {
            key: "country:US".into(),
            since: at(-60),
        },
        CountQuery {
            key: "prefix:+141555".into(),
            since: at(-60),
        },
        CountQuery {
            key: "never".into(),
            since: at(-60),
        },
    ];
    let targets = [
        block.target.clone(),
        BlockTarget {
            kind: BlockKind::Country,
            value: "US".into(),
        },
    ];
    let (counts, blocks) = risk.read_signals(&queries, &targets, at(10)).await?;
    assert_eq!(counts, risk.read_counts(&queries).await?);
    assert_eq!(counts[0].attempts, 9);
    assert_eq!(blocks, risk.active_blocks(&targets, at(10)).await?);
    assert_eq!(blocks, vec![block]);
    let (none, no_blocks) = risk.read_signals(&[], &[], at(10)).await?;
    ensure!(none.is_empty() && no_blocks.is_empty());
    // Either half alone.
    let (only_counts, no_blocks) = risk.read_signals(&queries, &[], at(10)).await?;
    assert_eq!((only_counts, no_blocks), (counts, Vec::new()));
    let (no_counts, only_blocks) = risk.read_signals(&[], &targets, at(10)).await?;
    assert_eq!((no_counts, only_blocks), (Vec::new(), blocks));
    Ok(())
}

/// A write of buffered counts records its replica's mark in the same transaction, and a
/// read of signals returns the mark of the replica it names from the same snapshot.
async fn a_replica_s_flush_marks_are_read_with_its_counts(db: Arc<TestDb>) -> anyhow::Result<()> {
    let risk = db.database().risk_store();
    let queries = [CountQuery {
        key: "country:US".into(),
        since: at(-60),
    }];
    let mark = |replica: &str, seq| FlushMark {
        replica: replica.to_owned(),
        seq,
    };
    let read = |replica: &'static str| {
        let risk = Arc::clone(&risk);
        let queries = queries.clone();
        async move {
            risk.read_signals_marked(&queries, &[], at(10), replica)
                .await
        }
    };
    assert_eq!(read("r1").await?.flushed, 0, "no write yet");

    let adds = [CountAdd {
        key: "country:US".into(),
        attempts: 3,
        approved: 1,
    }];
    risk.add_counts_marked(&adds, at(0), &mark("r1", 1)).await?;
    let signals = read("r1").await?;
    assert_eq!((signals.flushed, signals.counts[0].attempts), (1, 3));
    risk.add_counts_marked(&[], at(1), &mark("r1", 2)).await?;
    risk.add_counts_marked(&adds, at(2), &mark("r2", 7)).await?;
    let signals = read("r1").await?;
    assert_eq!((signals.flushed, signals.counts[0].attempts), (2, 6));
    assert_eq!(read("r2").await?.flushed, 7);
    assert_eq!(
        read("r3").await?.flushed,
        0,
        "another replica's marks are its own"
    );

    // Marks go with old counters.
    risk.purge_counts(at(3600 * 24)).await?;
    assert_eq!(read("r1").await?.flushed, 0);
    Ok(())
}
