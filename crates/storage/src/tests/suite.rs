//! The store suite: every test here is a body over a [`TestDb`], and [`both_backends!`] runs
//! each body once on SQLite (`suite::sqlite::<name>`) and once on PostgreSQL
//! (`suite::postgres::<name>`), each on a fresh database (fully migrated, or at the schema
//! named after `@`). What the ports promise must hold on both, so a test belongs here unless
//! it is about one backend's own machinery. The abuse protection ports have theirs in
//! `abuse`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use domain::abuse::{
    Block, BlockAdded, BlockKind, BlockSource, BlockTarget, CountAdd, LimitRequest, Quota,
    RiskDecision,
};
use domain::delivery::{DeliveryStatus, FallbackReason};
use domain::events::{Claim, DedupeStore};
use domain::ports::{Inserted, OutboxMessage, Recorded, StoreError, VerificationStore};
use domain::{Channel, IdempotencyKey, Purpose, Verification, VerificationId, VerificationStatus};
use sqlx::Postgres;

// `both_backends!` names the harness `super::super::harness` from the modules it declares;
// this makes that path work for the ones declared in `abuse` too.
use super::harness;
use super::harness::{Backend, Bind, TABLES, TestDb};
use crate::fixtures::{self, at, bare, envelope, full, message_id, report, unbound};
use crate::repo::Dialect;
use crate::row::VerificationRow;
use crate::sql;

/// The schema a test of [`both_backends!`] starts from: the latest unless it names one.
macro_rules! schema {
    () => {
        super::super::harness::Schema::Latest
    };
    ($schema:ident) => {
        super::super::harness::Schema::$schema
    };
}

/// Declares `sqlite` and `postgres` modules with one `#[tokio::test]` per listed body; a
/// body listed as `name @ Schema` starts from that [`Schema`] instead of the latest.
/// Multi-threaded, so concurrent tests really run tasks in parallel.
macro_rules! both_backends {
    ($($test:ident $(@ $schema:ident)?),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() -> anyhow::Result<()> {
                    super::super::harness::run(
                        super::super::harness::Backend::Sqlite,
                        schema!($($schema)?),
                        stringify!($test),
                        super::$test,
                    )
                    .await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() -> anyhow::Result<()> {
                    super::super::harness::run(
                        super::super::harness::Backend::Postgres,
                        schema!($($schema)?),
                        stringify!($test),
                        super::$test,
                    )
                    .await
                }
            )*
        }
    };
}

mod abuse;
mod limited;

both_backends!(
    migrating_again_changes_nothing,
    schema_is_exactly_the_documented_columns,
    schema_refuses_values_outside_the_domain,
    round_trip_keeps_every_field,
    reused_idempotency_key_returns_the_first_and_writes_nothing,
    reused_id_is_an_error_not_an_idempotent_hit,
    concurrent_inserts_with_one_key_create_exactly_one,
    live_pending_destination_is_returned_and_nothing_written,
    expired_pending_destination_is_expired_and_replaced,
    idempotency_key_is_decided_before_the_pending_destination,
    concurrent_inserts_for_one_destination_create_exactly_one,
    concurrent_replacements_of_an_expired_pending_create_exactly_one,
    update_writes_every_mutable_field,
    update_is_optimistic,
    find_pending_returns_the_live_one,
    find_by_idempotency_key_matches_purpose_owner_and_key,
    list_sealed_with_other_key_lists_old_keys_oldest_first,
    list_sealed_with_other_key_drains_by_rewriting,
    list_unconfirmed_lists_pending_rows_without_a_provider_id_oldest_first,
    corrupt_rows_are_errors_not_panics,
    no_plaintext_destination_reaches_the_database,
    lookups_use_their_indexes,
    fallback_fields_round_trip_in_every_form,
    rows_from_before_delivery_reports_get_the_defaults @ BeforeDeliveryReports,
    rows_from_before_abuse_protection_keep_every_field @ BeforeAbuse,
    ciphertexts_sealed_before_the_binding_open_until_resealed @ BeforeBinding,
    blocked_verifications_round_trip_with_their_risk,
    find_by_provider_sid_returns_the_newest_holder,
    a_report_is_recorded_once_with_its_event,
    a_reused_message_id_records_nothing,
    concurrent_reports_with_one_key_record_exactly_one,
    outbox_claims_lease_retry_and_publish,
    dead_letters_are_set_aside_and_counted,
    outbox_enqueue_is_idempotent_on_the_message_id,
    concurrent_claimers_never_share_a_message,
    corrupt_outbox_rows_are_set_aside,
    purge_deletes_published_rows_before_the_cutoff,
    history_past_the_retention_is_purged,
    dedupe_claims_are_acquired_then_busy_then_done,
    expired_dedupe_leases_are_reclaimed,
    concurrent_dedupe_claims_acquire_exactly_once,
);

/// A pending verification for `purpose` and the test phone number, created at `created`
/// and expiring at `expires` (seconds after the fixtures' epoch).
fn pending(n: u128, purpose: &str, created: i64, expires: i64) -> Verification {
    let mut v = bare(n, purpose, &fixtures::phone());
    v.record_mut().created_at = at(created);
    v.record_mut().updated_at = at(created);
    v.record_mut().expires_at = at(expires);
    v
}

/// Inserts `v` and insists it was created.
async fn create(store: &dyn VerificationStore, v: &Verification) -> anyhow::Result<()> {
    let inserted = store.insert(v).await?;
    ensure!(
        inserted == Inserted::Created,
        "{} was not created: {inserted:?}",
        v.id()
    );
    Ok(())
}

async fn migrating_again_changes_nothing(db: Arc<TestDb>) -> anyhow::Result<()> {
    let store = db.port();
    let v = full(1, "login", Some("order-42"), &fixtures::phone());
    create(&*store, &v).await?;
    // Every restart migrates; applied migrations must be skipped, data untouched.
    db.migrate().await?;
    db.migrate().await?;
    assert_eq!(db.count_rows().await?, 1);
    assert_eq!(store.get(&v.id()).await?, Some(v));
    Ok(())
}

async fn schema_is_exactly_the_documented_columns(db: Arc<TestDb>) -> anyhow::Result<()> {
    // A new column must be added here on purpose; this list is the proof that no code and
    // no plaintext destination is ever stored.
    let expected = [
        "id",
        "purpose",
        "channel",
        "status",
        "provider_sid",
        "destination_ciphertext",
        "destination_key_id",
        "destination_hash",
        "to_masked",
        "identity",
        "idempotency_key",
        "sends",
        "checks",
        "max_sends",
        "max_checks",
        "failure_code",
        "created_at",
        "updated_at",
        "expires_at",
        "version",
        "allow_fallback",
        "channels_tried",
        "fallback_reason",
        "delivery_status",
        "trace_parent",
        "risk",
        "owner",
    ];
    assert_eq!(db.columns("verifications").await?, expected);
    // Reports carry no destination and no message body.
    let reports = [
        "id",
        "dedupe_key",
        "provider_sid",
        "message_sid",
        "channel",
        "status",
        "error_code",
        "occurred_at",
        "received_at",
        "message_id",
    ];
    assert_eq!(db.columns("delivery_reports").await?, reports);
    let outbox = [
        "id",
        "message_id",
        "kind",
        "version",
        "occurred_at",
        "headers",
        "payload",
        "created_at",
        "published_at",
        "attempts",
        "last_error",
        "next_attempt_at",
    ];
    assert_eq!(db.columns("outbox").await?, outbox);
    let processed = [
        "consumer",
        "message_id",
        "state",
        "lease_until",
        "claimed_at",
        "completed_at",
    ];
    assert_eq!(db.columns("processed_messages").await?, processed);
    // Limiter and scoring state: keys and targets name destinations only by their hash.
    let limits = [
        "key",
        "tat",
        "interval_ms",
        "period_ms",
        "allowed",
        "latest_ms",
    ];
    assert_eq!(db.columns("rate_limits").await?, limits);
    let counters = ["key", "bucket", "attempts", "approved"];
    assert_eq!(db.columns("risk_counters").await?, counters);
    let blocks = [
        "kind",
        "value",
        "reason",
        "detail",
        "source",
        "shadow",
        "created_at",
        "expires_at",
        "lifted_at",
    ];
    assert_eq!(db.columns("risk_blocks").await?, blocks);
    Ok(())
}

async fn schema_refuses_values_outside_the_domain(db: Arc<TestDb>) -> anyhow::Result<()> {
    type Corrupt = fn(&mut VerificationRow);
    let cases: [(&str, Corrupt); 18] = [
        ("risk", |r| r.risk = Some("not json".into())),
        ("risk", |r| r.risk = Some("[]".into())),
        ("risk", |r| r.risk = Some("\"block\"".into())),
        ("trace_parent", |r| r.trace_parent = Some(String::new())),
        ("delivery_status", |r| {
            r.delivery_status = Some("lost".into())
        }),
        ("delivery_status", |r| {
            r.delivery_status = Some("DELIVERED".into())
        }),
        ("fallback_reason", |r| {
            r.fallback_reason = Some("because".into())
        }),
        ("status", |r| r.status = "lost".into()),
        ("channel", |r| r.channel = "pigeon".into()),
        ("sends", |r| r.sends = -1),
        ("checks", |r| r.checks = -1),
        ("max_sends", |r| r.max_sends = -1),
        ("max_checks", |r| r.max_checks = -1),
        ("failure_code", |r| r.failure_code = Some(-1)),
        ("version", |r| r.version = -1),
        ("idempotency_key", |r| {
            r.idempotency_key = Some(String::new())
        }),
        ("owner", |r| r.owner = "Check Out".into()),
        ("owner", |r| r.owner = "a".repeat(65)),
    ];
    for (n, (column, corrupt)) in (100..).zip(cases) {
        let mut row = VerificationRow::from(&bare(n, "login", &fixtures::phone()));
        corrupt(&mut row);
        let result = db.insert_raw(row).await;
        ensure!(result.is_err(), "a bad `{column}` must be refused");
    }
    assert_eq!(db.count_rows().await?, 0);
    Ok(())
}

async fn round_trip_keeps_every_field(db: Arc<TestDb>) -> anyhow::Result<()> {
    let store = db.port();
    let phone = full(1, "login", Some("order-42"), &fixtures::phone());
    let email = bare(2, "signup", &fixtures::email());
    for v in [&phone, &email] {
        create(&*store, v).await?;
    }
    assert_eq!(store.get(&phone.id()).await?.as_ref(), Some(&phone));
    assert_eq!(store.get(&email.id()).await?.as_ref(), Some(&email));
    assert_eq!(store.get(&fixtures::id(3)).await?, None);
    // The start's trace context comes back as written, and its absence as absence.
    let got = store.get(&phone.id()).await?.context("stored")?;
    assert_eq!(got.trace_parent(), Some(fixtures::TRACE_PARENT));
    let got = store.get(&email.id()).await?.context("stored")?;
    assert_eq!(got.trace_parent(), None);
    Ok(())
}

async fn reused_idempotency_key_returns_the_first_and_writes_nothing(
    db: Arc<TestDb>,
) -> anyhow::Result<()> {
    let store = db.port();
    let first = full(1, "login", Some("order-42"), &fixtures::phone());
    create(&*store, &first).await?;

    let second = full(2, "login", Some("order-42"), &fixtures::email());
    assert_eq!(
        store.insert(&second).await?,
        Inserted::Existing(Box::new(first.clone()))
    );
    assert_eq!(store.get(&second.id()).await?, None);
    assert_eq!(store.get(&first.id()).await?.as_ref(), Some(&first));
    assert_eq!(db.count_rows().await?, 1);

    // The key is scoped to the purpose and the owner, and verifications without a key
    // never collide on it (pending ones for other destinations, so the pending rule stays
    // out of the way).
    let other_purpose = full(3, "signup", Some("order-42"), &fixtures::phone());
    create(&*store, &other_purpose).await?;
    let mut other_owner = full(6, "login", Some("order-42"), &fixtures::phone());
    other_owner.record_mut().owner = "billing".into();
    create(&*store, &other_owner).await?;
    let mut no_owner = full(7, "login", Some("order-42"), &fixtures::phone());
    no_owner.record_mut().owner = String::new();
    create(&*store, &no_owner).await?;
    create(&*store, &bare(4, "login", &fixtures::phone())).await?;
    create(&*store, &bare(5, "login", &fixtures::email())).await?;
    assert_eq!(db.count_rows().await?, 6);
    Ok(())
}

async fn reused_id_is_an_error_not_an_idempotent_hit(db: Arc<TestDb>) -> anyhow::Result<()> {
    let store = db.port();
    let v = bare(1, "login", &fixtures::phone());
    create(&*store, &v).await?;

    // Same id, fresh key, not pending: only the primary key collides.
    let mut again = full(1, "login", Some("fresh-key"), &fixtures::phone());
    again.record_mut().id = v.id();
    let error = store.insert(&again).await.expect_err("duplicate id");
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");

    // Same id, pending for another destination: likewise.
    let mut pending_again = bare(2, "signup", &fixtures::email());
    pending_again.record_mut().id = v.id();
    let error = store
        .insert(&pending_again)
        .await
        .expect_err("duplicate id");
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");

    assert_eq!(store.get(&v.id()).await?.as_ref(), Some(&v));
    assert_eq!(db.count_rows().await?, 1);
    Ok(())
}

/// Runs `inserts` concurrently, alternating between two stores with pools of their own, and
/// returns the ids created and the verifications the others were answered with.
async fn insert_concurrently(
    db: &TestDb,
    inserts: Vec<Verification>,
) -> anyhow::Result<(Vec<VerificationId>, Vec<Inserted>)> {
    let stores = [db.port(), db.replica().await?];
    let tasks: Vec<_> = inserts
        .into_iter()
        .zip(stores.iter().cycle())
        .map(|(v, store)| {
            let store = Arc::clone(store);
            tokio::spawn(async move { store.insert(&v).await.map(|r| (v.id(), r)) })
        })
        .collect();
    let mut created = Vec::new();
    let mut others = Vec::new();
    for task in tasks {
        match task.await?? {
            (id, Inserted::Created) => created.push(id),
            (_, other) => others.push(other),
        }
    }
    Ok((created, others))
}

async fn concurrent_inserts_with_one_key_create_exactly_one(db: Arc<TestDb>) -> anyhow::Result<()> {
    let inserts = (1..=20)
        .map(|n| full(n, "login", Some("double-click"), &fixtures::phone()))
        .collect();
    let (created, others) = insert_concurrently(&db, inserts).await?;
    assert_eq!(created.len(), 1, "exactly one insert may win");
    assert_eq!(others.len(), 19);
    for other in others {
        let Inserted::Existing(first) = other else {
            panic!("a loser must see the winner by key, got {other:?}");
        };
        assert_eq!(first.id(), created[0], "every loser must see the winner");
    }
    assert_eq!(db.count_rows().await?, 1);
    Ok(())
}

async fn live_pending_destination_is_returned_and_nothing_written(
    db: Arc<TestDb>,
) -> anyhow::Result<()> {
    let store = db.port();
    let first = pending(1, "login", 0, 600);
    create(&*store, &first).await?;

    // Any time before the first one's expiry, even the last millisecond of it.
    for (n, created) in [(2, 10), (3, 599)] {
        let second = pending(n, "login", created, created + 600);
        assert_eq!(
            store.insert(&second).await?,
            Inserted::Pending(Box::new(first.clone()))
        );
        assert_eq!(store.get(&second.id()).await?, None);
    }
    assert_eq!(store.get(&first.id()).await?.as_ref(), Some(&first));

    // The slot is per purpose and destination, and only pending rows take it.
    create(&*store, &pending(4, "signup", 10, 600)).await?;
    let mut email = bare(5, "login", &fixtures::email());
    email.record_mut().created_at = at(10);
    create(&*store, &email).await?;
    let mut failed = pending(6, "login", 10, 600);
    failed.record_mut().status = VerificationStatus::Failed;
    create(&*store, &failed).await?;
    assert_eq!(db.count_rows().await?, 4);

    // Once the first one is no longer pending, the slot is free.
    let mut approved = first.clone();
    approved.record_mut().status = VerificationStatus::Approved;
    approved.record_mut().updated_at = at(20);
    approved.record_mut().version = 1;
    store.update(&mut approved).await?;
    create(&*store, &pending(7, "login", 30, 630)).await?;
    assert_eq!(db.count_rows().await?, 5);
    Ok(())
}

async fn expired_pending_destination_is_expired_and_replaced(
    db: Arc<TestDb>,
) -> anyhow::Result<()> {
    let store = db.port();
    let old = pending(1, "login", 0, 600);
    create(&*store, &old).await?;

    // Created exactly at the old one's expiry: `expires_at <= now` counts as expired.
    let new = pending(2, "login", 600, 1200);
    create(&*store, &new).await?;
    assert_eq!(store.get(&new.id()).await?.as_ref(), Some(&new));

    let mut expected = old.clone();
    expected.record_mut().status = VerificationStatus::Expired;
    expected.record_mut().updated_at = new.created_at();
    expected.record_mut().version = old.version() + 1;
    assert_eq!(store.get(&old.id()).await?, Some(expected));

    // And the new one now holds the slot.
    assert_eq!(
        store.insert(&pending(3, "login", 601, 1201)).await?,
        Inserted::Pending(Box::new(new.clone()))
    );
    assert_eq!(db.count_rows().await?, 2);
    Ok(())
}

async fn idempotency_key_is_decided_before_the_pending_destination(
    db: Arc<TestDb>,
) -> anyhow::Result<()> {
    let store = db.port();
    let mut first = pending(1, "login", 0, 600);
    first.record_mut().idempotency_key = Some(IdempotencyKey::parse("order-42")?);
    create(&*store, &first).await?;

    // Colliding on both the key and the pending slot is a replay, not a resend.
    let mut retry = pending(2, "login", 5, 605);
    retry.record_mut().idempotency_key = first.idempotency_key().cloned();
    assert_eq!(
        store.insert(&retry).await?,
        Inserted::Existing(Box::new(first.clone()))
    );

    // With the key past the first one's expiry: still a replay, and the first one stays.
    let mut late = pending(3, "login", 700, 1300);
    late.record_mut().idempotency_key = first.idempotency_key().cloned();
    assert_eq!(
        store.insert(&late).await?,
        Inserted::Existing(Box::new(first.clone()))
    );
    assert_eq!(store.get(&first.id()).await?.as_ref(), Some(&first));

    // Another key on the same destination meets the pending slot.
    let mut other_key = pending(4, "login", 5, 605);
    other_key.record_mut().idempotency_key = Some(IdempotencyKey::parse("order-43")?);
    assert_eq!(
        store.insert(&other_key).await?,
        Inserted::Pending(Box::new(first.clone()))
    );
    assert_eq!(db.count_rows().await?, 1);
    Ok(())
}

async fn concurrent_inserts_for_one_destination_create_exactly_one(
    db: Arc<TestDb>,
) -> anyhow::Result<()> {
    let inserts = (1..=20).map(|n| pending(n, "login", 0, 600)).collect();
    let (created, others) = insert_concurrently(&db, inserts).await?;
    assert_eq!(created.len(), 1, "exactly one insert may win: {created:?}");
    assert_eq!(others.len(), 19);
    for other in others {
        let Inserted::Pending(live) = other else {
            panic!("a loser must see the pending winner, got {other:?}");
        };
        assert_eq!(live.id(), created[0], "every loser must see the winner");
    }
    assert_eq!(db.count_rows().await?, 1);
    Ok(())
}

async fn concurrent_replacements_of_an_expired_pending_create_exactly_one(
    db: Arc<TestDb>,
) -> anyhow::Result<()> {
    let store = db.port();
    let old = pending(100, "login", 0, 600);
    create(&*store, &old).await?;

    let inserts = (1..=20).map(|n| pending(n, "login", 700, 1300)).collect();
    let (created, others) = insert_concurrently(&db, inserts).await?;
    assert_eq!(created.len(), 1, "exactly one insert may win: {created:?}");
    for other in others {
        let Inserted::Pending(live) = other else {
            panic!("a loser must see the pending winner, got {other:?}");
        };
        assert_eq!(live.id(), created[0], "every loser must see the winner");
    }
    // The old one was expired exactly once.
    let expired = store.get(&old.id()).await?.context("still stored")?;
    assert_eq!(expired.status(), VerificationStatus::Expired);
    assert_eq!(expired.version(), old.version() + 1);
    assert_eq!(db.count_rows().await?, 2);
    Ok(())
}

async fn update_writes_every_mutable_field(db: Arc<TestDb>) -> anyhow::Result<()> {
    let store = db.port();
    let v = bare(1, "login", &fixtures::phone());
    create(&*store, &v).await?;

    let mut changed = store.get(&v.id()).await?.context("just inserted")?;
    changed.record_mut().channel = Channel::Whatsapp;
    changed.record_mut().status = VerificationStatus::Failed;
    changed.record_mut().provider_sid = Some("VEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into());
    changed.record_mut().destination =
        fixtures::keyring().seal(&fixtures::phone(), &v.id(), [42; 12]);
    changed.record_mut().to_masked = "+1415***0000".into();
    changed.record_mut().identity = Some("user-9".into());
    changed.record_mut().idempotency_key = Some(IdempotencyKey::parse("late-key")?);
    changed.record_mut().sends = 2;
    changed.record_mut().checks = 3;
    changed.record_mut().max_sends = 9;
    changed.record_mut().max_checks = 8;
    changed.record_mut().failure_code = Some(60410);
    changed.record_mut().updated_at = at(30);
    changed.record_mut().expires_at = at(900);
    changed.record_mut().allow_fallback = true;
    changed.record_mut().channels_tried = vec![Channel::Sms, Channel::Whatsapp];
    changed.record_mut().fallback_reason = Some(FallbackReason::NoDeliveryReport);
    changed.record_mut().delivery_status = Some(DeliveryStatus::Queued);
    changed.record_mut().trace_parent =
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    changed.record_mut().risk = Some(fixtures::risk(RiskDecision::Block, false));
    changed.record_mut().version = 1;
    store.update(&mut changed).await?;
    assert_eq!(store.get(&v.id()).await?.as_ref(), Some(&changed));

    // Clearing the key releases it (the service does so past the idempotency window).
    let key = IdempotencyKey::parse("late-key")?;
    assert_eq!(
        store
            .find_by_idempotency_key(changed.purpose(), "", &key)
            .await?
            .as_ref(),
        Some(&changed)
    );
    let mut released = changed.clone();
    released.record_mut().idempotency_key = None;
    released.record_mut().version = 2;
    store.update(&mut released).await?;
    assert_eq!(
        store
            .find_by_idempotency_key(changed.purpose(), "", &key)
            .await?,
        None
    );
    assert_eq!(store.get(&v.id()).await?, Some(released));
    Ok(())
}

async fn update_is_optimistic(db: Arc<TestDb>) -> anyhow::Result<()> {
    let store = db.port();
    let v = bare(1, "login", &fixtures::phone());
    create(&*store, &v).await?;

    // Two requests read version 0; the first to write wins.
    let mut winner = store.get(&v.id()).await?.context("inserted")?;
    let mut loser = winner.clone();
    winner.mark_sent("VE1".into(), at(1));
    store.update(&mut winner).await?;

    loser.begin_check(at(2))?;
    assert_eq!(
        store.update(&mut loser).await,
        Err(StoreError::Conflict(v.id()))
    );
    assert_eq!(store.get(&v.id()).await?.as_ref(), Some(&winner));

    // Re-reading and retrying, as the port asks, succeeds.
    let mut retry = store.get(&v.id()).await?.context("still there")?;
    retry.begin_check(at(3))?;
    store.update(&mut retry).await?;
    assert_eq!(store.get(&v.id()).await?, Some(retry));

    let mut never_stored = bare(2, "login", &fixtures::phone());
    assert_eq!(
        store.update(&mut never_stored).await,
        Err(StoreError::NotFound(never_stored.id()))
    );
    assert_eq!(db.count_rows().await?, 1);
    Ok(())
}

async fn find_pending_returns_the_live_one(db: Arc<TestDb>) -> anyhow::Result<()> {
    let store = db.port();
    let hash = fixtures::blind_index().hash(&fixtures::phone());
    let login = Purpose::parse("login")?;
    let now = at(100);

    let mut finished = pending(1, "login", 0, 600);
    finished.record_mut().status = VerificationStatus::Approved;
    let live = pending(2, "login", 10, 600);
    let other_purpose = pending(3, "signup", 40, 600);
    let lapsed = pending(4, "recovery", 20, 50);
    let expires_now = pending(5, "reset", 30, 100);
    let mut other_destination = bare(6, "login", &fixtures::email());
    other_destination.record_mut().created_at = at(60);
    for v in [
        &finished,
        &live,
        &other_purpose,
        &lapsed,
        &expires_now,
        &other_destination,
    ] {
        create(&*store, v).await?;
    }

    assert_eq!(
        store.find_pending(&login, &hash, now).await?.as_ref(),
        Some(&live)
    );
    assert_eq!(
        store
            .find_pending(&Purpose::parse("signup")?, &hash, now)
            .await?
            .as_ref(),
        Some(&other_purpose)
    );
    // At its expiry a pending verification is no longer live.
    assert_eq!(store.find_pending(&login, &hash, at(600)).await?, None);
    assert_eq!(
        store
            .find_pending(&Purpose::parse("recovery")?, &hash, now)
            .await?,
        None
    );
    assert_eq!(
        store
            .find_pending(&Purpose::parse("reset")?, &hash, now)
            .await?,
        None
    );
    assert_eq!(
        store
            .find_pending(&Purpose::parse("other")?, &hash, now)
            .await?,
        None
    );
    Ok(())
}

async fn find_by_idempotency_key_matches_purpose_owner_and_key(
    db: Arc<TestDb>,
) -> anyhow::Result<()> {
    let store = db.port();
    let v = full(1, "login", Some("order-42"), &fixtures::phone());
    create(&*store, &v).await?;
    let key = IdempotencyKey::parse("order-42")?;
    let login = Purpose::parse("login")?;
    assert_eq!(
        store
            .find_by_idempotency_key(&login, "checkout", &key)
            .await?,
        Some(v)
    );
    for (purpose, owner, key) in [
        ("signup", "checkout", "order-42"),
        ("login", "billing", "order-42"),
        ("login", "", "order-42"),
        ("login", "checkout", "order-43"),
    ] {
        assert_eq!(
            store
                .find_by_idempotency_key(
                    &Purpose::parse(purpose)?,
                    owner,
                    &IdempotencyKey::parse(key)?
                )
                .await?,
            None,
            "{purpose} {owner:?} {key}"
        );
    }
    Ok(())
}

/// A finished verification sealed with `key_id`, created at `created`.
fn sealed_with(n: u128, key_id: &str, created: i64) -> Verification {
    let mut v = full(n, "login", None, &fixtures::phone());
    let nonce = [u8::try_from(n % 251).unwrap_or(0); 12];
    v.record_mut().destination =
        fixtures::keyring_with(key_id).seal(&fixtures::phone(), &v.id(), nonce);
    v.record_mut().created_at = at(created);
    v.record_mut().updated_at = at(created);
    v
}

async fn list_sealed_with_other_key_lists_old_keys_oldest_first(
    db: Arc<TestDb>,
) -> anyhow::Result<()> {
    let store = db.port();
    // The current key is `k1`; `k0` sorts below it and `k2` above, so both ranges of the
    // query are exercised. Inserted out of age order on purpose.
    let rows = [
        sealed_with(1, "k0", 50),
        sealed_with(2, "k1", 10),
        sealed_with(3, "k2", 20),
        sealed_with(4, "k0", 30),
        sealed_with(5, "k1", 5),
        sealed_with(6, "k2", 40),
        sealed_with(7, "k0", 30),
    ];
    for v in &rows {
        create(&*store, v).await?;
    }
    let ids = |list: &[Verification]| list.iter().map(|v| v.id()).collect::<Vec<_>>();

    let all = store.list_sealed_with_other_key("k1", 100).await?;
    // Oldest first; equal ages in id order.
    assert_eq!(
        ids(&all),
        [3, 4, 7, 6, 1].map(fixtures::id),
        "rows sealed with k0 and k2"
    );
    // Returned whole, ready to be re-sealed and written back.
    assert_eq!(all.first(), Some(&rows[2]));

    let batch = store.list_sealed_with_other_key("k1", 2).await?;
    assert_eq!(batch.len(), 2);
    assert!(batch.iter().all(|v| v.destination().key_id != "k1"));
    assert_eq!(store.list_sealed_with_other_key("k1", 0).await?, []);

    // Another current key lists the others.
    let ids_k0: HashSet<_> = ids(&store.list_sealed_with_other_key("k0", 100).await?)
        .into_iter()
        .collect();
    assert_eq!(ids_k0, [2, 3, 5, 6].map(fixtures::id).into_iter().collect());
    assert_eq!(
        ids(&store.list_sealed_with_other_key("k9", 100).await?).len(),
        rows.len()
    );
    Ok(())
}

async fn list_unconfirmed_lists_pending_rows_without_a_provider_id_oldest_first(
    db: Arc<TestDb>,
) -> anyhow::Result<()> {
    let store = db.port();
    // One purpose each, so the pending rows do not share a destination's pending slot.
    let unconfirmed = |n: u128, purpose: &str, created: i64| pending(n, purpose, created, 600);
    let later = unconfirmed(1, "login", 10);
    let older = unconfirmed(2, "signup", 5);
    let same_age = unconfirmed(3, "reset", 5);
    let too_young = unconfirmed(4, "pay", 30);
    let mut sent = unconfirmed(5, "invite", 1);
    sent.mark_sent("VE1".into(), at(1));
    let mut over = unconfirmed(6, "delete", 2);
    over.mark_failed(Some(60200), at(2));
    for v in [&later, &older, &same_age, &too_young, &sent, &over] {
        create(&*store, v).await?;
    }
    let ids = |list: &[Verification]| list.iter().map(|v| v.id()).collect::<Vec<_>>();

    // Oldest first, equal ages in id order; sent, ended and younger rows are left out.
    let listed = store.list_unconfirmed(at(20), 10).await?;
    assert_eq!(ids(&listed), [2, 3, 1].map(fixtures::id));
    // Returned whole, ready for a transition and an update at their version.
    assert_eq!(listed.first(), Some(&older));
    assert_eq!(
        ids(&store.list_unconfirmed(at(20), 2).await?),
        [2, 3].map(fixtures::id)
    );
    assert_eq!(store.list_unconfirmed(at(20), 0).await?, []);
    assert_eq!(
        store.list_unconfirmed(at(5), 10).await?,
        [],
        "strictly before"
    );

    // Settled rows drop out of the list: one learns its id, one ends as never sent.
    let mut confirmed = older.clone();
    assert!(confirmed.confirm_sent("VE2".into(), at(21)));
    store.update(&mut confirmed).await?;
    let mut ended = same_age.clone();
    assert!(ended.mark_never_sent(at(21)));
    store.update(&mut ended).await?;
    assert_eq!(
        ids(&store.list_unconfirmed(at(40), 10).await?),
        [1, 4].map(fixtures::id)
    );
    Ok(())
}

async fn list_sealed_with_other_key_drains_by_rewriting(db: Arc<TestDb>) -> anyhow::Result<()> {
    let store = db.port();
    let current = fixtures::keyring();
    let old = fixtures::keyring_with("k0");
    for n in 1..=7 {
        let mut v = sealed_with(n, "k0", i64::try_from(n)?);
        // Every status is rotated, pending ones included (on purposes of their own).
        if n % 2 == 0 {
            v = pending(n, &format!("p{n}"), i64::try_from(n)?, 600);
            v.record_mut().destination = old.seal(&fixtures::phone(), &v.id(), [1; 12]);
        }
        create(&*store, &v).await?;
    }

    // What a rotation command does: re-seal each listed row and write it back.
    let mut rewritten = 0;
    loop {
        let batch = store
            .list_sealed_with_other_key(current.current_id(), 3)
            .await?;
        if batch.is_empty() {
            break;
        }
        ensure!(rewritten < 7, "the list must shrink as rows are rewritten");
        for mut v in batch {
            let destination = old.open(v.destination(), &v.id())?;
            v.record_mut().destination = current.seal(&destination, &v.id(), [2; 12]);
            v.record_mut().version += 1;
            store.update(&mut v).await?;
            rewritten += 1;
        }
    }
    assert_eq!(rewritten, 7);
    for n in 1..=7 {
        let v = store.get(&fixtures::id(n)).await?.context("stored")?;
        assert_eq!(current.open(v.destination(), &v.id())?, fixtures::phone());
    }
    Ok(())
}

async fn corrupt_rows_are_errors_not_panics(db: Arc<TestDb>) -> anyhow::Result<()> {
    let store = db.port();
    let unknown_status = bare(1, "login", &fixtures::phone());
    let mut row = VerificationRow::from(&unknown_status);
    row.status = "lost".into();
    db.insert_corrupt(row).await?;
    let error = store.get(&unknown_status.id()).await.expect_err("corrupt");
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");

    let foreign_id = bare(2, "signup", &fixtures::phone());
    let mut row = VerificationRow::from(&foreign_id);
    row.id = "VE0123".into();
    db.insert_corrupt(row).await?;
    let error = store
        .find_pending(foreign_id.purpose(), foreign_id.destination_hash(), at(1))
        .await
        .expect_err("corrupt");
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");

    // An insert that has to read the corrupt row it collided with reports it too.
    let error = store
        .insert(&bare(3, "signup", &fixtures::phone()))
        .await
        .expect_err("corrupt");
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");

    let mut row = VerificationRow::from(&sealed_with(4, "k0", 1));
    row.sends = -3;
    db.insert_corrupt(row).await?;
    let error = store
        .list_sealed_with_other_key("k1", 10)
        .await
        .expect_err("corrupt");
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");

    // The fallback columns, each named in the error.
    type Break = fn(&mut VerificationRow);
    let cases: [(&str, Break); 7] = [
        ("risk", |r| r.risk = Some("{\"decision\":\"block\"".into())),
        ("risk", |r| {
            r.risk = Some(r#"{"decision":"deny","score":1,"shadow":false,"reasons":[]}"#.into())
        }),
        ("channels_tried", |r| r.channels_tried = "sms,pigeon".into()),
        ("channels_tried", |r| r.channels_tried = "sms,".into()),
        ("fallback_reason", |r| {
            r.fallback_reason = Some("delivery_failed:lost".into())
        }),
        ("fallback_reason", |r| {
            r.fallback_reason = Some("delivery_failed:failed:-1".into())
        }),
        ("delivery_status", |r| {
            r.delivery_status = Some("lost".into())
        }),
    ];
    for (n, (column, corrupt)) in (10..).zip(cases) {
        let v = full(n, "login", None, &fixtures::phone());
        let mut row = VerificationRow::from(&v);
        corrupt(&mut row);
        db.insert_corrupt(row).await?;
        let error = store.get(&v.id()).await.expect_err("corrupt");
        let StoreError::Corrupt(message) = &error else {
            panic!("expected Corrupt for `{column}`, got {error:?}");
        };
        assert!(message.contains(column), "{message}");
    }
    Ok(())
}

async fn no_plaintext_destination_reaches_the_database(db: Arc<TestDb>) -> anyhow::Result<()> {
    let store = db.port();
    let phone = full(1, "login", Some("k-phone"), &fixtures::phone());
    let mut email = full(2, "login", Some("k-email"), &fixtures::email());
    email.record_mut().identity = Some("user-8".into());
    let pending_phone = bare(3, "signup", &fixtures::phone());
    for v in [&phone, &email, &pending_phone] {
        create(&*store, v).await?;
    }
    // A stored destination still opens with the keyring: it is sealed, not lost.
    let stored = store.get(&email.id()).await?.context("inserted")?;
    assert_eq!(
        fixtures::keyring().open(stored.destination(), &stored.id())?,
        fixtures::email()
    );

    // The message side too: a report, its event, another event and a consumer's claim.
    let database = db.database();
    let recorded = database
        .delivery_reports()
        .record_report(&report("ce:1"), &envelope(1), at(10))
        .await?;
    ensure!(recorded == Recorded::New);
    database.outbox().enqueue(&envelope(2), at(10)).await?;
    let dedupe = database.dedupe_store(Duration::from_secs(60));
    dedupe
        .claim("verify-service.fallback", message_id(1))
        .await?;
    // And abuse protection's state, keyed by the destination's hash.
    let hash = fixtures::blind_index().hash(&fixtures::phone());
    let quota = Quota::parse("3/10m")?;
    let key = format!("send:login:dest:{}", hash.as_str());
    let taken = database
        .rate_limits()
        .take(&[LimitRequest { key, quota }], at(10))
        .await?;
    ensure!(taken[0].allowed);
    let risk = database.risk_store();
    let counted = CountAdd {
        key: format!("dest:{}", hash.as_str()),
        attempts: 1,
        approved: 0,
    };
    risk.add_counts(&[counted], at(10)).await?;
    let block = Block {
        target: BlockTarget {
            kind: BlockKind::Destination,
            value: hash.as_str().to_owned(),
        },
        reason: "TWILIO_60410".into(),
        detail: "the provider's fraud guard refused the number".into(),
        source: BlockSource::Provider,
        shadow: false,
        created_at: at(10),
        expires_at: at(3610),
    };
    ensure!(risk.add_block(&block).await? == BlockAdded::New);

    let mut cells = Vec::new();
    for table in TABLES {
        let table_cells = db.cells(table).await?;
        ensure!(
            !table_cells.is_empty(),
            "the scan must see the rows of {table}"
        );
        cells.extend(table_cells);
    }
    ensure!(cells.len() >= 3 * 17, "the scan must see the rows");
    let contains = |haystack: &[u8], needle: &str| {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    };
    let secrets = ["4155552671", fixtures::EMAIL, "jane.doe"];
    for cell in &cells {
        for secret in secrets {
            assert!(
                !contains(cell, secret),
                "a column holds `{secret}`: {:?}",
                String::from_utf8_lossy(cell)
            );
        }
    }
    // The scan does see text columns: the masks are there.
    assert!(cells.iter().any(|c| contains(c, "+1415***2671")));
    assert!(cells.iter().any(|c| contains(c, "j***@example.com")));
    Ok(())
}

async fn lookups_use_their_indexes(db: Arc<TestDb>) -> anyhow::Result<()> {
    let (text, int) = (Bind::Text("login"), Bind::Int(0));
    let cases = [
        (
            sql::FIND_PENDING,
            vec![text, Bind::Text("ab"), int],
            "verifications_one_pending_per_destination",
        ),
        (
            sql::PENDING_SLOT,
            vec![text, Bind::Text("ab")],
            "verifications_one_pending_per_destination",
        ),
        (
            sql::FIND_BY_IDEMPOTENCY_KEY,
            vec![text, Bind::Text("checkout"), Bind::Text("order-42")],
            "verifications_purpose_owner_idempotency_key",
        ),
        (
            sql::SEALED_WITH_OTHER_KEY,
            vec![Bind::Text("k1"), Bind::Int(100)],
            "verifications_by_key_id",
        ),
        (
            sql::FIND_BY_PROVIDER_SID,
            vec![Bind::Text("VE1")],
            "verifications_by_provider_sid",
        ),
        (
            sql::UNCONFIRMED,
            vec![int, Bind::Int(100)],
            "verifications_unconfirmed",
        ),
        (
            match db.backend() {
                Backend::Sqlite => crate::sqlite::CLAIM_OUTBOX,
                Backend::Postgres => <Postgres as Dialect>::CLAIM_OUTBOX,
            },
            vec![int, Bind::Int(30), Bind::Int(10)],
            "outbox_due",
        ),
        (
            sql::PURGE_PUBLISHED,
            vec![int, Bind::Int(1000)],
            "outbox_published",
        ),
    ];
    for (statement, binds, index) in cases {
        let plan = db.plan(statement, &binds).await?;
        assert!(plan.contains(index), "{statement}\n→ {plan}");
    }
    // The reconciliation's list is read from its partial index in the order it asks for,
    // so a batch stops after `limit` entries and sorts nothing.
    let plan = db.plan(sql::UNCONFIRMED, &[int, Bind::Int(100)]).await?;
    assert!(!plan.contains("SCAN verifications"), "{plan}");
    if db.backend() == Backend::Sqlite {
        assert!(
            plan.contains(
                "SEARCH verifications USING INDEX verifications_unconfirmed (created_at<?)"
            ),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    } else {
        assert!(
            plan.contains("Index Scan using verifications_unconfirmed"),
            "{plan}"
        );
        assert!(!plan.contains("Sort  ("), "{plan}");
    }
    // Each range of the key rotation list is read from the index in the order it asks for,
    // so a batch stops after `limit` entries per range: only the outer ordering of the (at
    // most twice `limit`) rows the ranges returned sorts anything, and nothing scans the
    // table.
    let plan = db
        .plan(
            sql::SEALED_WITH_OTHER_KEY,
            &[Bind::Text("k1"), Bind::Int(100)],
        )
        .await?;
    assert!(!plan.contains("SCAN verifications"), "{plan}");
    if db.backend() == Backend::Sqlite {
        for range in ["(destination_key_id<?)", "(destination_key_id>?)"] {
            let search =
                format!("SEARCH verifications USING INDEX verifications_by_key_id {range}");
            assert!(plan.contains(&search), "{plan}");
        }
        // The inner `ORDER BY`s are the index's: a co-routine (a range) sorts nothing, the
        // temporary B-trees sort each side's results for the compound's outer `ORDER BY`.
        for range in ["below", "above"] {
            let inner = plan
                .split(&format!("CO-ROUTINE {range}; "))
                .nth(1)
                .and_then(|rest| rest.split(&format!("SCAN {range}")).next())
                .with_context(|| format!("no co-routine {range}: {plan}"))?;
            assert!(!inner.contains("TEMP B-TREE"), "{plan}");
        }
    } else {
        assert_eq!(
            plan.matches("Index Scan using verifications_by_key_id")
                .count(),
            2,
            "{plan}"
        );
        assert_eq!(plan.matches("Sort  (").count(), 1, "{plan}");
    }
    Ok(())
}

async fn fallback_fields_round_trip_in_every_form(db: Arc<TestDb>) -> anyhow::Result<()> {
    let store = db.port();
    let v = bare(1, "login", &fixtures::phone());
    create(&*store, &v).await?;

    let reasons = [
        None,
        Some(FallbackReason::NoDeliveryReport),
        Some(FallbackReason::DeliveryFailed {
            status: DeliveryStatus::Failed,
            error_code: None,
        }),
        Some(FallbackReason::DeliveryFailed {
            status: DeliveryStatus::Undelivered,
            error_code: Some(30008),
        }),
        Some(FallbackReason::DeliveryFailed {
            status: DeliveryStatus::Undelivered,
            error_code: Some(u32::MAX),
        }),
    ];
    let statuses = std::iter::once(None).chain(DeliveryStatus::ALL.map(Some));
    let channel_lists = [
        vec![],
        vec![Channel::Sms],
        Channel::ALL.to_vec(),
        vec![Channel::Call, Channel::Sms, Channel::Call],
    ];
    let mut current = v;
    let cases = reasons
        .into_iter()
        .cycle()
        .zip(statuses)
        .zip(channel_lists.into_iter().cycle());
    for ((reason, status), channels) in cases {
        let mut next = current.clone();
        next.record_mut().fallback_reason = reason;
        next.record_mut().delivery_status = status;
        next.record_mut().channels_tried = channels;
        next.record_mut().allow_fallback = !current.allow_fallback();
        next.record_mut().version += 1;
        store.update(&mut next).await?;
        assert_eq!(store.get(&next.id()).await?.as_ref(), Some(&next));
        current = next;
    }
    Ok(())
}

async fn rows_from_before_delivery_reports_get_the_defaults(db: Arc<TestDb>) -> anyhow::Result<()> {
    // Rows as the previous release wrote them: pending, finished on another channel, sent.
    let pending = bare(1, "login", &fixtures::phone());
    let mut finished = full(2, "login", Some("order-42"), &fixtures::email());
    finished.record_mut().status = VerificationStatus::Approved;
    let mut sent = bare(3, "signup", &fixtures::phone());
    sent.record_mut().channel = Channel::Call;
    sent.record_mut().provider_sid = Some("VEold".into());
    for v in [&pending, &finished, &sent] {
        db.insert_before_delivery_reports(VerificationRow::from(v))
            .await?;
    }

    db.migrate().await?;
    let store = db.port();
    for old in [&pending, &finished, &sent] {
        let mut expected = unbound(old.clone());
        expected.record_mut().allow_fallback = false;
        expected.record_mut().channels_tried = vec![old.channel()];
        expected.record_mut().fallback_reason = None;
        expected.record_mut().delivery_status = None;
        expected.record_mut().trace_parent = None;
        expected.record_mut().risk = None;
        expected.record_mut().owner = String::new();
        // Not a transition: the version and `updated_at` stay.
        assert_eq!(store.get(&old.id()).await?, Some(expected));
    }
    // The new index answers for old rows, and the new tables are there.
    assert_eq!(
        store.find_by_provider_sid("VEold").await?.map(|v| v.id()),
        Some(sent.id())
    );
    let recorded = db
        .database()
        .delivery_reports()
        .record_report(&report("ce:1"), &envelope(1), at(10))
        .await?;
    assert_eq!(recorded, Recorded::New);
    // And new rows keep what they are given.
    let mut new = full(4, "signup", None, &fixtures::email());
    new.record_mut().allow_fallback = true;
    new.record_mut().status = VerificationStatus::Blocked;
    create(&*store, &new).await?;
    assert_eq!(store.get(&new.id()).await?, Some(new));
    Ok(())
}

async fn find_by_provider_sid_returns_the_newest_holder(db: Arc<TestDb>) -> anyhow::Result<()> {
    let store = db.port();
    let with_sid = |n: u128, purpose: &str, sid: Option<&str>, created: i64| {
        let mut v = full(n, purpose, None, &fixtures::phone());
        v.record_mut().provider_sid = sid.map(str::to_owned);
        v.record_mut().created_at = at(created);
        v
    };
    // Twilio hands one verification id to starts for one destination in one Verify
    // Service, whichever of our purposes asked.
    let older = with_sid(1, "login", Some("VEshared"), 10);
    let newer = with_sid(2, "signup", Some("VEshared"), 20);
    let tied_low = with_sid(3, "reset", Some("VEtied"), 30);
    let tied_high = with_sid(4, "recovery", Some("VEtied"), 30);
    let other = with_sid(5, "other", Some("VEother"), 40);
    let none = with_sid(6, "none", None, 50);
    for v in [&newer, &older, &tied_high, &tied_low, &other, &none] {
        create(&*store, v).await?;
    }
    assert_eq!(store.find_by_provider_sid("VEshared").await?, Some(newer));
    assert_eq!(store.find_by_provider_sid("VEtied").await?, Some(tied_high));
    assert_eq!(store.find_by_provider_sid("VEother").await?, Some(other));
    assert_eq!(store.find_by_provider_sid("VEunknown").await?, None);
    assert_eq!(store.find_by_provider_sid("").await?, None);
    // The sid is written by `update` once the provider accepted the send.
    let mut sent = none.clone();
    sent.mark_sent("VEnew".into(), at(60));
    store.update(&mut sent).await?;
    assert_eq!(store.find_by_provider_sid("VEnew").await?, Some(sent));
    Ok(())
}

/// A destination as the releases before the binding sealed it, for [`fixtures::phone`]
/// with [`fixtures::keyring`]'s key `k1` and the nonce `[1; 12]`: AES-256-GCM with the key
/// id alone as associated data (computed with another AES-GCM implementation).
const SEALED_BEFORE_BINDING: [u8; 46] = [
    // the nonce
    0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01,
    // the sealed text and its tag
    0x06, 0x89, 0xe6, 0xd9, 0xf5, 0x85, 0xc7, 0x3f, 0xe5, 0xe5, 0xe9, 0x14, 0x45, 0x02, 0x42, 0x07,
    0x9f, 0xca, 0x33, 0xbf, 0x80, 0x2f, 0x77, 0xc9, 0x26, 0x84, 0x37, 0xf4, 0x08, 0x93, 0x07, 0x56,
    0xfd, 0xa7,
];

async fn ciphertexts_sealed_before_the_binding_open_until_resealed(
    db: Arc<TestDb>,
) -> anyhow::Result<()> {
    let mut old = full(1, "login", None, &fixtures::phone());
    old.record_mut().destination.ciphertext = SEALED_BEFORE_BINDING.to_vec();
    let mut another = bare(2, "signup", &fixtures::phone());
    another.record_mut().destination.ciphertext = SEALED_BEFORE_BINDING.to_vec();
    for v in [&old, &another] {
        db.insert_raw(VerificationRow::from(v)).await?;
    }

    db.migrate().await?;
    let store = db.port();
    let keyring = fixtures::keyring();
    for v in [&old, &another] {
        let stored = store.get(&v.id()).await?.context("kept")?;
        assert_eq!(stored, unbound(v.clone()));
        // Still readable, with the key id alone as associated data.
        assert_eq!(
            keyring.open(stored.destination(), &stored.id())?,
            fixtures::phone()
        );
    }
    // Listed as not sealed with the current key, though that key made them: re-sealing
    // binds them, as `verify-gateway reencrypt` does.
    let listed = store.list_sealed_with_other_key("k1", 10).await?;
    assert_eq!(
        listed.iter().map(|v| v.id()).collect::<HashSet<_>>(),
        [old.id(), another.id()].into_iter().collect()
    );
    for mut v in listed {
        let destination = keyring.open(v.destination(), &v.id())?;
        v.record_mut().destination = keyring.seal(&destination, &v.id(), [2; 12]);
        v.record_mut().version += 1;
        store.update(&mut v).await?;
    }
    assert_eq!(store.list_sealed_with_other_key("k1", 10).await?, []);
    let first = store.get(&old.id()).await?.context("kept")?;
    let second = store.get(&another.id()).await?.context("kept")?;
    assert_eq!(first.destination().key_id, "k1");
    assert_eq!(
        keyring.open(first.destination(), &first.id())?,
        fixtures::phone()
    );
    // Bound now: the first row's ciphertext does not open as the second's.
    assert!(keyring.open(first.destination(), &second.id()).is_err());
    // Migrating again leaves re-sealed rows alone.
    db.migrate().await?;
    assert_eq!(store.get(&old.id()).await?.as_ref(), Some(&first));
    Ok(())
}

async fn rows_from_before_abuse_protection_keep_every_field(db: Arc<TestDb>) -> anyhow::Result<()> {
    // Rows as the previous release wrote them (no risk, no owner): finished with every
    // field set, pending, and sealed for an email.
    let without_risk = |mut v: Verification| {
        v.record_mut().risk = None;
        v.record_mut().owner = String::new();
        v
    };
    let finished = without_risk(full(1, "login", Some("order-42"), &fixtures::phone()));
    let pending = bare(2, "login", &fixtures::phone());
    let mut email = without_risk(full(3, "signup", Some("order-43"), &fixtures::email()));
    email.record_mut().status = VerificationStatus::Approved;
    for v in [&finished, &pending, &email] {
        db.insert_before_abuse(VerificationRow::from(v)).await?;
    }

    // On SQLite the migration rebuilds the table: every row and rule must survive it.
    db.migrate().await?;
    let store = db.port();
    // Sealed before ciphertexts were bound to their rows (see `bound_before`).
    let (finished, pending, email) = (unbound(finished), unbound(pending), unbound(email));
    for v in [&finished, &pending, &email] {
        assert_eq!(store.get(&v.id()).await?.as_ref(), Some(v));
    }
    assert_eq!(
        store.insert(&bare(4, "login", &fixtures::phone())).await?,
        Inserted::Pending(Box::new(pending.clone()))
    );
    assert_eq!(
        store
            .insert(&without_risk(full(
                5,
                "login",
                Some("order-42"),
                &fixtures::email()
            )))
            .await?,
        Inserted::Existing(Box::new(finished.clone()))
    );
    assert_eq!(
        store
            .find_by_provider_sid(fixtures::PROVIDER_SID)
            .await?
            .map(|v| v.id()),
        Some(email.id())
    );
    assert_eq!(
        store
            .list_sealed_with_other_key("k9", 10)
            .await?
            .into_iter()
            .map(|v| v.id())
            .collect::<HashSet<_>>(),
        [finished.id(), pending.id(), email.id()]
            .into_iter()
            .collect()
    );
    // New rows may be blocked and carry their assessment.
    let mut blocked = full(6, "reset", None, &fixtures::phone());
    blocked.record_mut().status = VerificationStatus::Blocked;
    create(&*store, &blocked).await?;
    assert_eq!(store.get(&blocked.id()).await?, Some(blocked));
    assert_eq!(db.count_rows().await?, 4);
    Ok(())
}

async fn blocked_verifications_round_trip_with_their_risk(db: Arc<TestDb>) -> anyhow::Result<()> {
    let store = db.port();
    let mut blocked = bare(1, "login", &fixtures::phone());
    blocked.record_mut().status = VerificationStatus::Blocked;
    blocked.record_mut().risk = Some(fixtures::risk(RiskDecision::Block, false));
    create(&*store, &blocked).await?;
    assert_eq!(store.get(&blocked.id()).await?.as_ref(), Some(&blocked));
    let stored = db
        .text(&format!(
            "SELECT risk FROM verifications WHERE id = '{}'",
            blocked.id()
        ))
        .await?
        .context("risk stored")?;
    let json: serde_json::Value = serde_json::from_str(&stored)?;
    assert_eq!(json["decision"], "block");
    assert_eq!(json["score"], 85);
    assert_eq!(json["shadow"], false);
    assert_eq!(json["reasons"][0]["code"], "PREMIUM_RATE_NUMBER");
    assert_eq!(json["reasons"][1]["weight"], 25);

    // A blocked start takes no pending slot: a later start for the destination is sent.
    let mut allowed = bare(2, "login", &fixtures::phone());
    allowed.record_mut().risk = Some(fixtures::risk(RiskDecision::Allow, true));
    create(&*store, &allowed).await?;
    let hash = fixtures::blind_index().hash(&fixtures::phone());
    assert_eq!(
        store.find_pending(allowed.purpose(), &hash, at(1)).await?,
        Some(allowed.clone())
    );
    // The assessment is written by updates too, and can be cleared.
    let mut rescored = allowed.clone();
    rescored.record_mut().risk = Some(fixtures::risk(RiskDecision::StepUp, false));
    rescored.record_mut().version += 1;
    store.update(&mut rescored).await?;
    assert_eq!(store.get(&allowed.id()).await?.as_ref(), Some(&rescored));
    let mut cleared = rescored.clone();
    cleared.record_mut().risk = None;
    cleared.record_mut().version += 1;
    store.update(&mut cleared).await?;
    assert_eq!(store.get(&allowed.id()).await?, Some(cleared));
    Ok(())
}

/// The delivery report with `key`, as stored: every column but the id.
async fn stored_report(db: &TestDb, key: &str) -> anyhow::Result<Vec<Option<String>>> {
    let columns = [
        "dedupe_key",
        "provider_sid",
        "message_sid",
        "channel",
        "status",
        "CAST(error_code AS TEXT)",
        "CAST(occurred_at AS TEXT)",
        "CAST(received_at AS TEXT)",
        "message_id",
    ];
    let mut values = Vec::new();
    for column in columns {
        let select = format!("SELECT {column} FROM delivery_reports WHERE dedupe_key = '{key}'");
        let value = db.text(&select).await?;
        values.push(value);
    }
    Ok(values)
}

async fn a_report_is_recorded_once_with_its_event(db: Arc<TestDb>) -> anyhow::Result<()> {
    let database = db.database();
    let reports = database.delivery_reports();
    let outbox = database.outbox();

    let first = report("ce:1");
    assert_eq!(
        reports.record_report(&first, &envelope(1), at(10)).await?,
        Recorded::New
    );
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        stored_report(&db, "ce:1").await?,
        [
            some("ce:1"),
            some(fixtures::PROVIDER_SID),
            some("SM0123456789abcdef0123456789abcdef"),
            some("sms"),
            some("undelivered"),
            some("30003"),
            Some(crate::row::to_millis(at(5)).to_string()),
            Some(crate::row::to_millis(at(10)).to_string()),
            Some(message_id(1).to_string()),
        ]
    );
    // The event is due at once, whole.
    let claimed = outbox.claim(10, at(10), Duration::from_secs(30)).await?;
    assert_eq!(
        claimed,
        [OutboxMessage {
            id: claimed[0].id,
            envelope: envelope(1),
            attempts: 0,
        }]
    );

    // The same report again (a retried callback) with a fresh event writes neither.
    assert_eq!(
        reports.record_report(&first, &envelope(2), at(11)).await?,
        Recorded::Duplicate
    );
    // A report with only what a status callback gives is recorded too.
    let mut bare_report = report("ms:SM1:failed");
    bare_report.provider_sid = None;
    bare_report.message_sid = None;
    bare_report.channel = None;
    bare_report.error_code = None;
    bare_report.status = DeliveryStatus::Failed;
    assert_eq!(
        reports
            .record_report(&bare_report, &envelope(3), at(12))
            .await?,
        Recorded::New
    );
    assert_eq!(db.count("delivery_reports").await?, 2);
    assert_eq!(db.count("outbox").await?, 2);
    let due = outbox.claim(10, at(100), Duration::from_secs(30)).await?;
    let ids: Vec<_> = due.iter().map(|m| m.envelope.message_id).collect();
    assert_eq!(ids, [message_id(1), message_id(3)], "never message 2");
    Ok(())
}

async fn a_reused_message_id_records_nothing(db: Arc<TestDb>) -> anyhow::Result<()> {
    let database = db.database();
    let reports = database.delivery_reports();
    database.outbox().enqueue(&envelope(1), at(0)).await?;
    // A new report whose event reuses a queued message id: recording the report alone
    // would lose its event, so nothing is recorded.
    let error = reports
        .record_report(&report("ce:2"), &envelope(1), at(10))
        .await
        .expect_err("reused message id");
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert_eq!(db.count("delivery_reports").await?, 0);
    assert_eq!(db.count("outbox").await?, 1);
    // With a fresh id it goes through.
    assert_eq!(
        reports
            .record_report(&report("ce:2"), &envelope(2), at(10))
            .await?,
        Recorded::New
    );
    Ok(())
}

async fn concurrent_reports_with_one_key_record_exactly_one(db: Arc<TestDb>) -> anyhow::Result<()> {
    let stores = [
        db.database().delivery_reports(),
        db.replica_database().await?.delivery_reports(),
    ];
    let tasks: Vec<_> = (1..=20)
        .zip(stores.iter().cycle())
        .map(|(n, store)| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                store
                    .record_report(&report("ce:same"), &envelope(n), at(10))
                    .await
            })
        })
        .collect();
    let mut new = 0;
    for task in tasks {
        match task.await?? {
            Recorded::New => new += 1,
            Recorded::Duplicate => {}
        }
    }
    assert_eq!(new, 1, "exactly one recorder may win");
    assert_eq!(db.count("delivery_reports").await?, 1);
    assert_eq!(db.count("outbox").await?, 1);
    Ok(())
}

/// The message ids of `messages`, in order.
fn message_ids(messages: &[OutboxMessage]) -> Vec<domain::events::MessageId> {
    messages.iter().map(|m| m.envelope.message_id).collect()
}

async fn dead_letters_are_set_aside_and_counted(db: Arc<TestDb>) -> anyhow::Result<()> {
    let outbox = db.database().outbox();
    let lease = Duration::from_secs(30);
    for n in 1..=3 {
        outbox.enqueue(&envelope(n), at(1)).await?;
    }
    assert_eq!(outbox.count_set_aside().await?, 0);
    let claimed = outbox.claim(10, at(10), lease).await?;
    assert_eq!(claimed.len(), 3);
    outbox
        .set_aside(claimed[0].id, "given up after 2880 attempts")
        .await?;
    outbox.mark_published(&[claimed[1].id], at(11)).await?;
    // A published message is not set aside after the fact.
    outbox.set_aside(claimed[1].id, "late").await?;
    outbox.set_aside(999_999, "unknown").await?;
    assert_eq!(outbox.count_set_aside().await?, 1);
    // Never due again, however late, while the third comes back when its lease ends.
    let later = outbox.claim(10, at(i64::from(u32::MAX)), lease).await?;
    assert_eq!(message_ids(&later), [message_id(3)]);
    let last_error = db
        .text(&format!(
            "SELECT last_error FROM outbox WHERE id = {}",
            claimed[0].id
        ))
        .await?;
    assert_eq!(last_error.as_deref(), Some("given up after 2880 attempts"));
    assert_eq!(
        db.scalar(&format!(
            "SELECT attempts FROM outbox WHERE id = {}",
            claimed[0].id
        ))
        .await?,
        1
    );
    Ok(())
}

async fn outbox_claims_lease_retry_and_publish(db: Arc<TestDb>) -> anyhow::Result<()> {
    let outbox = db.database().outbox();
    let lease = Duration::from_secs(30);
    for n in 1..=4 {
        let queued_at = at(i64::try_from(n)?);
        assert_eq!(
            outbox.enqueue(&envelope(n), queued_at).await?,
            Recorded::New
        );
    }
    // Nothing is due before it was queued, and a limit of zero claims nothing.
    assert_eq!(outbox.claim(10, at(0), lease).await?, []);
    assert_eq!(outbox.claim(0, at(10), lease).await?, []);

    // Oldest first, up to the limit; claimed messages are leased.
    let first = outbox.claim(2, at(10), lease).await?;
    assert_eq!(message_ids(&first), [message_id(1), message_id(2)]);
    assert!(first.iter().all(|m| m.attempts == 0));
    let second = outbox.claim(10, at(10), lease).await?;
    assert_eq!(message_ids(&second), [message_id(3), message_id(4)]);
    assert_eq!(outbox.claim(10, at(39), lease).await?, []);

    // Published messages are never claimed again; marking twice changes nothing.
    outbox.mark_published(&[first[0].id], at(20)).await?;
    outbox
        .mark_published(&[first[0].id, 999_999], at(25))
        .await?;
    outbox.mark_published(&[], at(25)).await?;
    let published_at = db
        .scalar(&format!(
            "SELECT published_at FROM outbox WHERE id = {}",
            first[0].id
        ))
        .await?;
    assert_eq!(published_at, crate::row::to_millis(at(20)));

    // A failed attempt counts and waits until it is due again.
    outbox
        .retry_later(first[1].id, at(100), "broker unavailable")
        .await?;
    // The lease of the first batch ended at 40: the other batch is due again, not the retry.
    let again = outbox.claim(10, at(40), lease).await?;
    assert_eq!(message_ids(&again), [message_id(3), message_id(4)]);
    outbox
        .mark_published(&again.iter().map(|m| m.id).collect::<Vec<_>>(), at(41))
        .await?;
    assert_eq!(outbox.claim(10, at(99), lease).await?, []);
    let retried = outbox.claim(10, at(100), lease).await?;
    assert_eq!(message_ids(&retried), [message_id(2)]);
    assert_eq!(retried[0].attempts, 1);
    let last_error = db
        .text(&format!(
            "SELECT last_error FROM outbox WHERE id = {}",
            retried[0].id
        ))
        .await?;
    assert_eq!(last_error.as_deref(), Some("broker unavailable"));
    // Errors are stored cut to a bounded length.
    outbox
        .retry_later(retried[0].id, at(200), &"e".repeat(5000))
        .await?;
    let stored_len = db
        .scalar(&format!(
            "SELECT CAST(length(last_error) AS BIGINT) FROM outbox WHERE id = {}",
            retried[0].id
        ))
        .await?;
    assert_eq!(stored_len, 1000);
    let retried = outbox.claim(10, at(200), lease).await?;
    assert_eq!(retried[0].attempts, 2);
    outbox.mark_published(&[retried[0].id], at(201)).await?;
    // A retry of a published message changes nothing.
    outbox.retry_later(retried[0].id, at(300), "late").await?;
    assert_eq!(outbox.claim(10, at(1000), lease).await?, []);
    let attempts = db
        .scalar(&format!(
            "SELECT attempts FROM outbox WHERE id = {}",
            retried[0].id
        ))
        .await?;
    assert_eq!(attempts, 2);
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
            .await?,
        0
    );
    Ok(())
}

async fn outbox_enqueue_is_idempotent_on_the_message_id(db: Arc<TestDb>) -> anyhow::Result<()> {
    let outbox = db.database().outbox();
    assert_eq!(outbox.enqueue(&envelope(1), at(0)).await?, Recorded::New);
    // The same message again (a publisher retrying) is queued once.
    let mut again = envelope(1);
    again.payload = b"{}".to_vec();
    assert_eq!(outbox.enqueue(&again, at(5)).await?, Recorded::Duplicate);
    assert_eq!(db.count("outbox").await?, 1);
    // Headers and payload come back as they went in; no headers is an empty object.
    let mut plain = envelope(2);
    plain.headers.clear();
    plain.payload = vec![0, 159, 146, 150];
    outbox.enqueue(&plain, at(1)).await?;
    let claimed = outbox.claim(10, at(10), Duration::from_secs(1)).await?;
    let envelopes: Vec<_> = claimed.into_iter().map(|m| m.envelope).collect();
    assert_eq!(envelopes, [envelope(1), plain]);
    Ok(())
}

async fn concurrent_claimers_never_share_a_message(db: Arc<TestDb>) -> anyhow::Result<()> {
    let outboxes = [
        db.database().outbox(),
        db.replica_database().await?.outbox(),
    ];
    const MESSAGES: u128 = 60;
    for n in 1..=MESSAGES {
        outboxes[0].enqueue(&envelope(n), at(0)).await?;
    }
    // Eight relays on two replicas, each claiming small batches until nothing is left.
    let relays: Vec<_> = (0..8)
        .zip(outboxes.iter().cycle())
        .map(|(_, outbox)| {
            let outbox = Arc::clone(outbox);
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let batch = outbox.claim(3, at(10), Duration::from_secs(60)).await?;
                    if batch.is_empty() {
                        return Ok::<_, StoreError>(mine);
                    }
                    mine.extend(batch.into_iter().map(|m| m.envelope.message_id));
                }
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for relay in relays {
        claimed.extend(relay.await??);
    }
    // Whatever a relay gave up on because others held the rows was claimed by those.
    claimed.extend(message_ids(
        &outboxes[0]
            .claim(1000, at(10), Duration::from_secs(60))
            .await?,
    ));
    let distinct: HashSet<_> = claimed.iter().copied().collect();
    assert_eq!(distinct.len(), claimed.len(), "a message was claimed twice");
    assert_eq!(claimed.len(), usize::try_from(MESSAGES)?);
    Ok(())
}

async fn corrupt_outbox_rows_are_set_aside(db: Arc<TestDb>) -> anyhow::Result<()> {
    let outbox = db.database().outbox();
    outbox.enqueue(&envelope(1), at(0)).await?;
    // Rows a damaged database or a hand edit could hold, each breaking one column.
    let insert = |message_id: &str, kind: &str, headers: &str, created: i64| {
        format!(
            "INSERT INTO outbox (message_id, kind, version, occurred_at, headers, payload, \
             created_at, next_attempt_at, attempts) \
             VALUES ('{message_id}', '{kind}', 1, 0, '{headers}', {payload}, {created}, 0, 0)",
            payload = match db.backend() {
                Backend::Sqlite => "X'00'",
                Backend::Postgres => "'\\x00'::bytea",
            }
        )
    };
    db.execute(&insert("not-a-uuid", "delivery.failed", "{}", -3))
        .await?;
    db.execute(&insert(
        &message_id(7).to_string(),
        "Delivery Failed",
        "{}",
        -2,
    ))
    .await?;
    db.execute(&insert(
        &message_id(8).to_string(),
        "delivery.failed",
        "[1]",
        -1,
    ))
    .await?;

    // The claim that meets them fails once, naming a row and column...
    let error = outbox
        .claim(10, at(10), Duration::from_secs(30))
        .await
        .expect_err("corrupt rows");
    let StoreError::Corrupt(message) = &error else {
        panic!("expected Corrupt, got {error:?}");
    };
    assert!(
        message.contains("outbox message") && message.contains("message_id"),
        "{message}"
    );
    // ...and sets them aside with the reason, so the relay goes on with the others.
    let claimed = outbox.claim(10, at(10), Duration::from_secs(30)).await?;
    assert_eq!(message_ids(&claimed), [message_id(1)]);
    assert_eq!(
        outbox.claim(10, at(1_000_000), Duration::ZERO).await?.len(),
        1
    );
    let set_aside = db
        .scalar("SELECT COUNT(*) FROM outbox WHERE last_error LIKE 'corrupt: %'")
        .await?;
    assert_eq!(set_aside, 3);
    for column in ["column `kind`", "column `headers`"] {
        let count = db
            .scalar(&format!(
                "SELECT COUNT(*) FROM outbox WHERE last_error LIKE '%{column}%'"
            ))
            .await?;
        assert_eq!(count, 1, "{column}");
    }
    Ok(())
}

async fn purge_deletes_published_rows_before_the_cutoff(db: Arc<TestDb>) -> anyhow::Result<()> {
    let outbox = db.database().outbox();
    // More than one purge batch of old published rows.
    const OLD: u128 = 2100;
    for n in 1..=OLD + 3 {
        outbox.enqueue(&envelope(n), at(0)).await?;
    }
    let mut ids = Vec::new();
    loop {
        let batch = outbox.claim(500, at(1), Duration::from_secs(60)).await?;
        if batch.is_empty() {
            break;
        }
        ids.extend(batch.iter().map(|m| m.id));
    }
    ensure!(ids.len() == usize::try_from(OLD + 3)?);
    let (old, recent) = ids.split_at(usize::try_from(OLD)?);
    outbox.mark_published(old, at(10)).await?;
    outbox.mark_published(&recent[..2], at(100)).await?;
    // `recent[2]` stays unpublished.

    assert_eq!(outbox.purge_published(at(10)).await?, 0, "strictly before");
    assert_eq!(outbox.purge_published(at(11)).await?, u64::try_from(OLD)?);
    assert_eq!(outbox.purge_published(at(11)).await?, 0);
    assert_eq!(db.count("outbox").await?, 3);
    assert_eq!(outbox.purge_published(at(1_000_000)).await?, 2);
    // An unpublished message is never purged, however old.
    assert_eq!(db.count("outbox").await?, 1);
    Ok(())
}

/// A verification id made at `t`, as the service makes them (UUIDv7).
fn id_made_at(t: chrono::DateTime<chrono::Utc>) -> anyhow::Result<VerificationId> {
    let millis = u64::try_from(t.timestamp_millis())?;
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        millis / 1000,
        u32::try_from(millis % 1000)? * 1_000_000,
    );
    Ok(VerificationId::from_uuid(uuid::Uuid::new_v7(ts)))
}

async fn history_past_the_retention_is_purged(db: Arc<TestDb>) -> anyhow::Result<()> {
    let store = db.port();
    let day = 86_400;
    let made = |n: u128, purpose: &str, created: i64, status: VerificationStatus| {
        let mut v = bare(n, purpose, &fixtures::phone());
        v.record_mut().id = id_made_at(at(created))?;
        v.record_mut().status = status;
        v.record_mut().created_at = at(created);
        v.record_mut().updated_at = at(created);
        v.record_mut().expires_at = at(created + 600);
        anyhow::Ok(v)
    };
    // Before the cutoff (day 30): over, or pending past its expiry (purged); pending with
    // an expiry still ahead (kept). After it: kept whatever its state.
    let old_done = made(1, "login", 0, VerificationStatus::Approved)?;
    let old_expired = made(2, "signup", 0, VerificationStatus::Pending)?;
    let mut old_live = made(3, "payment", 0, VerificationStatus::Pending)?;
    old_live.record_mut().expires_at = at(40 * day);
    let new_done = made(4, "login", 31 * day, VerificationStatus::Failed)?;
    for v in [&old_done, &old_expired, &old_live, &new_done] {
        create(&*store, v).await?;
    }
    let reports = db.database().delivery_reports();
    reports
        .record_report(&report("ce:old"), &envelope(1), at(day))
        .await?;
    reports
        .record_report(&report("ce:new"), &envelope(2), at(31 * day))
        .await?;

    let purged = db
        .database()
        .purge_history(at(30 * day), at(35 * day))
        .await?;
    assert_eq!(
        (purged.verifications, purged.delivery_reports),
        (2, 1),
        "{purged:?}"
    );
    assert_eq!(store.get(&old_done.id()).await?, None);
    assert_eq!(store.get(&old_expired.id()).await?, None);
    assert!(store.get(&old_live.id()).await?.is_some(), "still pending");
    assert!(
        store.get(&new_done.id()).await?.is_some(),
        "within the retention"
    );
    assert_eq!(db.count("delivery_reports").await?, 1);
    // Again: nothing more to do.
    let again = db
        .database()
        .purge_history(at(30 * day), at(35 * day))
        .await?;
    assert_eq!(again, storage_purged(0, 0, 0));

    // Handled messages are finished on the database's clock: a cutoff ahead of it takes
    // them, one behind it does not; one still in progress is kept.
    let dedupe = db.database().dedupe_store(Duration::from_secs(60));
    dedupe.claim("consumer", message_id(7)).await?;
    dedupe.complete("consumer", message_id(7)).await?;
    dedupe.claim("consumer", message_id(8)).await?;
    let now = chrono::Utc::now();
    let behind = db
        .database()
        .purge_history(now - chrono::Duration::hours(1), now)
        .await?;
    assert_eq!(behind.processed_messages, 0);
    let ahead = db
        .database()
        .purge_history(now + chrono::Duration::hours(1), now)
        .await?;
    assert_eq!(ahead.processed_messages, 1);
    assert_eq!(db.count("processed_messages").await?, 1);
    Ok(())
}

fn storage_purged(
    verifications: u64,
    delivery_reports: u64,
    processed_messages: u64,
) -> crate::Purged {
    crate::Purged {
        verifications,
        delivery_reports,
        processed_messages,
    }
}

async fn dedupe_claims_are_acquired_then_busy_then_done(db: Arc<TestDb>) -> anyhow::Result<()> {
    let lease = Duration::from_secs(60);
    let dedupe = db.database().dedupe_store(lease);
    let replica = db.replica_database().await?.dedupe_store(lease);
    let consumer = "verify-service.fallback";
    let id = message_id(1);

    assert_eq!(dedupe.claim(consumer, id).await?, Claim::Acquired);
    assert_eq!(dedupe.claim(consumer, id).await?, Claim::Busy);
    assert_eq!(replica.claim(consumer, id).await?, Claim::Busy);
    // Ids are per consumer.
    assert_eq!(dedupe.claim("audit", id).await?, Claim::Acquired);

    // A failed attempt gives the id back for the redelivery.
    dedupe.release(consumer, id).await?;
    assert_eq!(replica.claim(consumer, id).await?, Claim::Acquired);
    replica.complete(consumer, id).await?;
    for store in [&dedupe, &replica] {
        assert_eq!(store.claim(consumer, id).await?, Claim::Done);
    }
    // Completing twice, or releasing a completed id, changes nothing.
    dedupe.complete(consumer, id).await?;
    dedupe.release(consumer, id).await?;
    assert_eq!(dedupe.claim(consumer, id).await?, Claim::Done);

    // Completing an id nobody claimed (the claim's row lost) records it done too; releasing
    // one nobody claimed is nothing.
    dedupe.complete(consumer, message_id(2)).await?;
    assert_eq!(dedupe.claim(consumer, message_id(2)).await?, Claim::Done);
    dedupe.release(consumer, message_id(3)).await?;
    assert_eq!(
        dedupe.claim(consumer, message_id(3)).await?,
        Claim::Acquired
    );
    assert_eq!(db.count("processed_messages").await?, 4);
    Ok(())
}

async fn expired_dedupe_leases_are_reclaimed(db: Arc<TestDb>) -> anyhow::Result<()> {
    let database = db.database();
    let short = database.dedupe_store(Duration::from_millis(200));
    let long = database.dedupe_store(Duration::from_secs(60));
    let consumer = "verify-service.fallback";
    let id = message_id(1);

    // A holder that died: its lease ends and another delivery takes the id over.
    assert_eq!(short.claim(consumer, id).await?, Claim::Acquired);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(long.claim(consumer, id).await?, Claim::Acquired);
    // The new holder's lease runs now.
    assert_eq!(short.claim(consumer, id).await?, Claim::Busy);
    long.complete(consumer, id).await?;
    // A completed id stays done however long ago it was claimed.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(short.claim(consumer, id).await?, Claim::Done);
    // A zero lease never holds.
    let none = database.dedupe_store(Duration::ZERO);
    assert_eq!(none.claim(consumer, message_id(2)).await?, Claim::Acquired);
    assert_eq!(none.claim(consumer, message_id(2)).await?, Claim::Acquired);
    Ok(())
}

async fn concurrent_dedupe_claims_acquire_exactly_once(db: Arc<TestDb>) -> anyhow::Result<()> {
    let lease = Duration::from_secs(60);
    let stores: [Arc<dyn DedupeStore>; 2] = [
        db.database().dedupe_store(lease),
        db.replica_database().await?.dedupe_store(lease),
    ];
    let tasks: Vec<_> = (0..20)
        .zip(stores.iter().cycle())
        .map(|(_, store)| {
            let store = Arc::clone(store);
            tokio::spawn(async move { store.claim("verify-service.fallback", message_id(1)).await })
        })
        .collect();
    let mut acquired = 0;
    for task in tasks {
        match task.await?? {
            Claim::Acquired => acquired += 1,
            Claim::Busy => {}
            Claim::Done => panic!("nobody completed it"),
        }
    }
    assert_eq!(acquired, 1, "exactly one delivery may handle the message");
    Ok(())
}
