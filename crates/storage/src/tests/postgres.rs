//! What only the PostgreSQL store has: URL handling, the session settings it asks the
//! server for, and migrations run by several replicas at once.

use domain::abuse::{
    Block, BlockKind, BlockSource, BlockTarget, CountAdd, CountQuery, LimitRequest, Quota,
    RiskStore,
};
use domain::ports::{Inserted, StoreError, VerificationStore};
use domain::{Destination, PhoneNumber};

use super::harness::{self, PgDatabase};
use crate::abuse::{rounds, take_input};
use crate::fixtures::at;
use crate::fixtures::{self, bare, full};
use crate::lane::Batch;
use crate::lane::{GuardedInsert, GuardedUpdate, SignalsRead};
use crate::postgres::{
    GET_MANY, GuardedUpdates, INSERT_MANY, Inserts, Reads, Signals, UPDATE_LIMITED_MANY,
    UPDATE_MANY, Updates,
};
use crate::row::VerificationRow;
use crate::row::to_millis;
use crate::{PostgresStore, StorageError};
use testkit::{NOT_REACHABLE, postgres_server_url};

/// Runs `body` on a fresh, empty (unmigrated) database and drops it afterwards.
async fn with_database<F, Fut>(body: F) -> anyhow::Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let database = PgDatabase::create("t").await?;
    let outcome = tokio::spawn(body(database.url.clone())).await;
    database.drop_database().await;
    match outcome {
        Ok(result) => result,
        Err(error) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(error) => Err(error.into()),
        },
    }
}

#[tokio::test]
async fn the_test_server_is_configured() {
    // Not a skip in disguise: this fails with the instruction when there is no server.
    let url = postgres_server_url().expect(NOT_REACHABLE);
    assert!(url.starts_with("postgres"), "{url}");
}

#[tokio::test]
async fn bad_urls_are_refused() {
    let error = PostgresStore::connect("postgres://127.0.0.1:5432/db?sslmode=sideways")
        .await
        .expect_err("unknown sslmode");
    assert!(matches!(error, StorageError::InvalidUrl(_)), "{error:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_connect_error_without_the_password() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let error = PostgresStore::connect("postgres://gateway:s3cret@127.0.0.1:1/verify")
        .await
        .expect_err("nothing listens on port 1");
    assert!(matches!(error, StorageError::Connect(_)), "{error:?}");
    assert!(!format!("{error:#}").contains("s3cret"), "{error:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_carry_the_gateway_settings() -> anyhow::Result<()> {
    with_database(|url| async move {
        let store = PostgresStore::connect(&url).await?;
        store.migrate().await?;
        let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
            .fetch_one(store.pool())
            .await?;
        assert_eq!(timeout, "5s");
        let name: String = sqlx::query_scalar("SHOW application_name")
            .fetch_one(store.pool())
            .await?;
        assert_eq!(name, "verify-gateway");

        // A name in the URL is kept.
        let named = PostgresStore::connect(&format!("{url}?application_name=replica-7")).await?;
        let name: String = sqlx::query_scalar("SHOW application_name")
            .fetch_one(named.pool())
            .await?;
        assert_eq!(name, "replica-7");
        named.close().await;
        store.close().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_migrating_at_once_all_succeed() -> anyhow::Result<()> {
    with_database(|url| async move {
        let mut stores = Vec::new();
        for _ in 0..4 {
            stores.push(PostgresStore::connect(&url).await?);
        }
        let migrations: Vec<_> = stores
            .iter()
            .cloned()
            .map(|store| tokio::spawn(async move { store.migrate().await }))
            .collect();
        for migration in migrations {
            migration.await??;
        }
        let applied: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(stores[0].pool())
                .await?;
        let shipped = std::fs::read_dir(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations/postgres"),
        )?
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
        assert_eq!(applied, i64::try_from(shipped)?);

        // Every replica sees the one schema.
        let v = full(1, "login", Some("order-42"), &fixtures::phone());
        assert_eq!(stores[1].insert(&v).await?, Inserted::Created);
        assert_eq!(stores[2].get(&v.id()).await?, Some(v));
        for store in stores {
            store.close().await;
        }
        Ok(())
    })
    .await
}

/// The table's files and its indexes', by name: a migration that rewrote the table or
/// rebuilt an index gives it a new file.
async fn files_of_verifications(store: &PostgresStore) -> anyhow::Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT relname::text, pg_relation_filenode(oid)::bigint FROM pg_class \
         WHERE oid = 'verifications'::regclass \
            OR oid IN (SELECT indexrelid FROM pg_index \
                       WHERE indrelid = 'verifications'::regclass) \
         ORDER BY relname",
    )
    .fetch_all(store.pool())
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_move_to_domains_without_rewriting_the_table() -> anyhow::Result<()> {
    with_database(|url| async move {
        let store = PostgresStore::connect(&url).await?;
        store.migrate_to(8).await?;
        let mut kept = full(1, "login", Some("order-42"), &fixtures::phone());
        kept.record_mut().owner = String::new();
        crate::row::bind_insert(
            sqlx::query(harness::INSERT_BEFORE_OWNER),
            VerificationRow::from(&kept),
        )
        .execute(store.pool())
        .await?;
        let before = files_of_verifications(&store).await?;
        assert_eq!(
            before.len(),
            6,
            "the table and its five indexes: {before:?}"
        );

        store.migrate_to(9).await?;
        // The table keeps its file, and so does every index but the one of pending rows,
        // over the column `status` (partial indexes over a column that changes type are
        // rebuilt).
        let after = files_of_verifications(&store).await?;
        let moved: Vec<_> = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a)
            .map(|(b, _)| b.0.as_str())
            .collect();
        assert_eq!(moved, ["verifications_one_pending_per_destination"]);
        store.migrate().await?;
        let kept = fixtures::unbound(kept);
        assert_eq!(store.get(&kept.id()).await?.as_ref(), Some(&kept));
        let table_checks: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_constraint \
             WHERE conrelid = 'verifications'::regclass AND contype = 'c'",
        )
        .fetch_one(store.pool())
        .await?;
        // The length checks of `id`, `purpose` and `idempotency_key` stay on the table.
        assert_eq!(table_checks, 3);
        // Thirteen columns carry a domain (twelve since this migration, `owner` since the
        // next), each domain one validated CHECK.
        let (columns, unvalidated): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE NOT c.convalidated) \
             FROM pg_attribute a JOIN pg_constraint c ON c.contypid = a.atttypid \
             WHERE a.attrelid = 'verifications'::regclass AND c.contype = 'c'",
        )
        .fetch_one(store.pool())
        .await?;
        assert_eq!((columns, unvalidated), (13, 0));

        // The batched update refuses what the table refused: a status outside the domain
        // fails the statement, and the row stays as it was.
        let mut bad = VerificationRow::from(&kept);
        bad.status = "lost".into();
        let refused = Updates(store.lane_pool().clone())
            .run(&[(bad, i64::from(kept.version()))])
            .await
            .expect_err("a status outside the domain");
        assert!(
            matches!(&refused, StoreError::Unavailable(message)
                if message.contains("verification_status_check")),
            "{refused:?}"
        );
        assert_eq!(store.get(&kept.id()).await?, Some(kept));
        store.close().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_updates_writes_each_row_at_its_expected_version_only() -> anyhow::Result<()> {
    with_database(|url| async move {
        let store = PostgresStore::connect(&url).await?;
        store.migrate().await?;
        let stored: Vec<_> = ["login", "signup", "reset", "payout"]
            .iter()
            .zip(1..)
            .map(|(purpose, n)| bare(n, purpose, &fixtures::phone()))
            .collect();
        for v in &stored {
            assert_eq!(store.insert(v).await?, Inserted::Created);
        }
        let moved_on: Vec<_> = stored
            .iter()
            .map(|v| {
                let mut next = v.clone();
                next.record_mut().sends += 1;
                next.record_mut().provider_sid =
                    Some(format!("VE{:032x}", u128::from(v.version()) + 7));
                next.record_mut().version = v.version() + 1;
                next
            })
            .collect();
        // The third update expects a version its row never had.
        let inputs: Vec<_> = moved_on
            .iter()
            .zip(&stored)
            .enumerate()
            .map(|(i, (next, before))| {
                let expected = if i == 2 {
                    before.version() + 5
                } else {
                    before.version()
                };
                (VerificationRow::from(next), i64::from(expected))
            })
            .collect();
        let written = Updates(store.pool().clone()).run(&inputs).await?;
        assert_eq!(written, vec![true, true, false, true]);
        for (i, v) in stored.iter().enumerate() {
            let want = if i == 2 { v } else { &moved_on[i] };
            assert_eq!(store.get(&v.id()).await?.as_ref(), Some(want), "row {i}");
        }

        // A batch of reads: each id gets its row, an id asked twice gets it twice, and an
        // unknown id gets nothing.
        let ids = [
            stored[0].id().to_string(),
            fixtures::id(99).to_string(),
            stored[2].id().to_string(),
            stored[0].id().to_string(),
        ];
        let rows = Reads(store.pool().clone()).run(&ids).await?;
        let read: Vec<Option<domain::Verification>> = rows
            .into_iter()
            .map(|row| row.map(domain::Verification::try_from).transpose())
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)?;
        assert_eq!(
            read,
            vec![
                Some(moved_on[0].clone()),
                None,
                Some(stored[2].clone()),
                Some(moved_on[0].clone())
            ]
        );
        store.close().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_each_get_their_own_outcome() -> anyhow::Result<()> {
    with_database(|url| async move {
        let store = PostgresStore::connect(&url).await?;
        store.migrate().await?;
        // Forty rows, each updated by two concurrent writers expecting the same version:
        // through the lanes, exactly one of each pair wins and the other is told it lost.
        let mut stored = Vec::new();
        for n in 1..=40u128 {
            let v = bare(n, &format!("purpose{n}"), &fixtures::phone());
            store.insert(&v).await?;
            stored.push(v);
        }
        let mut writers = Vec::new();
        for v in &stored {
            for sends in [1, 2] {
                let store = store.clone();
                let mut next = v.clone();
                next.record_mut().sends = sends;
                next.record_mut().version = v.version() + 1;
                writers.push(tokio::spawn(async move {
                    (next.id(), store.update(&mut next).await)
                }));
            }
        }
        let mut won = std::collections::HashMap::new();
        for writer in writers {
            let (id, outcome) = writer.await?;
            match outcome {
                Ok(()) => *won.entry(id).or_insert(0) += 1,
                Err(StoreError::Conflict(lost)) => assert_eq!(lost, id),
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(won.len(), 40);
        assert!(won.values().all(|&n| n == 1), "{won:?}");
        for v in &stored {
            let now = store.get(&v.id()).await?.expect("stored");
            assert_eq!(now.version(), v.version() + 1);
        }
        store.close().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_statements_find_each_row_by_its_primary_key_in_any_cached_plan()
-> anyhow::Result<()> {
    with_database(|url| async move {
        let store = PostgresStore::connect(&url).await?;
        store.migrate().await?;
        // A fresh table, small and never analysed: a scan of it looks cheaper than index
        // lookups, and a join of the table with the arrays was planned as one.
        sqlx::query(
            "INSERT INTO verifications (id, purpose, channel, status, destination_ciphertext, \
             destination_key_id, destination_hash, to_masked, sends, checks, max_sends, \
             max_checks, created_at, updated_at, expires_at, version, channels_tried) \
             SELECT 'ver_' || n, 'login', 'sms', 'approved', '\\x00', 'k1', md5(n::text), \
             '+1******00', 1, 1, 3, 5, n, n, n, 1, 'sms' FROM generate_series(1, 300) AS n",
        )
        .execute(store.pool())
        .await?;
        // The plan a session of the lanes caches for every later call, whatever the arrays
        // hold.
        let mut conn = store.lane_pool().acquire().await?;
        conn.close_on_drop();
        sqlx::query("SET plan_cache_mode = force_generic_plan")
            .execute(&mut *conn)
            .await?;
        for (name, statement, parameters, must) in [
            (
                "update_many",
                UPDATE_MANY,
                28,
                &[
                    "Index Scan using verifications_pkey",
                    "Tid Scan on verifications",
                ][..],
            ),
            (
                "get_many",
                GET_MANY,
                1,
                &["Index Scan using verifications_pkey"][..],
            ),
            (
                "update_limited_many",
                UPDATE_LIMITED_MANY,
                30,
                &[
                    "Index Scan using verifications_pkey",
                    "Tid Scan on verifications",
                ][..],
            ),
            // The insert reads no verification: only its conflict check probes the indexes.
            (
                "insert_many",
                INSERT_MANY,
                29,
                &["Insert on verifications"][..],
            ),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "PREPARE {name} AS {statement}"
            )))
            .execute(&mut *conn)
            .await?;
            let nulls = vec!["NULL"; parameters].join(", ");
            let lines: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "EXPLAIN EXECUTE {name}({nulls})"
            )))
            .fetch_all(&mut *conn)
            .await?;
            let plan = lines.join("; ");
            for step in must {
                assert!(plan.contains(step), "{name}: {plan}");
            }
            assert!(
                !plan.contains("Seq Scan on verifications"),
                "{name}: {plan}"
            );
        }
        drop(conn);
        store.close().await;
        Ok(())
    })
    .await
}

/// A start's guarded insert of verification `n` to the `n`th test number (or to the
/// number of `to`), under `limits` given as `(key, quota)`.
fn guarded(n: u128, to: u32, limits: &[(&str, &str)]) -> GuardedInsert {
    let destination = Destination::Phone(
        PhoneNumber::parse(&format!("+1415555{:04}", 1000 + to), None).expect("valid number"),
    );
    GuardedInsert {
        row: VerificationRow::from(&bare(n, "login", &destination)),
        now_ms: to_millis(at(0)),
        take: take_of(limits),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_guarded_inserts_takes_and_writes_each_start_as_alone() -> anyhow::Result<()> {
    with_database(|url| async move {
        let store = PostgresStore::connect(&url).await?;
        store.migrate().await?;
        let inputs = [
            // Allowed and written.
            guarded(1, 1, &[("shared", "2/10m"), ("own:1", "1/10m")]),
            // Allowed, and meets the first one's pending row: keeps its takes, writes nothing.
            guarded(2, 1, &[("shared", "2/10m"), ("own:2", "1/10m")]),
            // The shared limit is used up by the two before it: takes nothing, writes nothing.
            guarded(3, 3, &[("own:3", "1/10m"), ("shared", "2/10m")]),
            // Allowed and written.
            guarded(4, 4, &[("own:4", "1/10m")]),
        ];
        let outcomes = Inserts(store.pool().clone()).run(&inputs).await?;
        let written: Vec<bool> = outcomes.iter().map(|g| g.written).collect();
        assert_eq!(written, vec![true, false, false, true]);
        let allowed: Vec<bool> = outcomes
            .iter()
            .map(|g| g.taken_allowed.iter().all(|&a| a))
            .collect();
        assert_eq!(allowed, vec![true, true, false, true]);
        for (n, stored) in [(1, true), (2, false), (3, false), (4, true)] {
            assert_eq!(
                store.get(&fixtures::id(n)).await?.is_some(),
                stored,
                "verification {n}"
            );
        }
        let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM rate_limits ORDER BY key")
            .fetch_all(store.pool())
            .await?;
        // The refused start's own key was taken and undone with the refusal.
        assert_eq!(keys, vec!["own:1", "own:2", "own:4", "shared"]);
        store.close().await;
        Ok(())
    })
    .await
}

/// The take of `limits` (as `(key, quota)`) as one round of JSON input.
fn take_of(limits: &[(&str, &str)]) -> String {
    let requests: Vec<LimitRequest> = limits
        .iter()
        .map(|(key, quota)| LimitRequest {
            key: (*key).to_owned(),
            quota: Quota::parse(quota).expect("valid quota"),
        })
        .collect();
    let round = rounds(&requests).pop().unwrap_or_default();
    take_input(&requests, &round)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_guarded_updates_takes_and_writes_each_update_as_alone() -> anyhow::Result<()> {
    with_database(|url| async move {
        let store = PostgresStore::connect(&url).await?;
        store.migrate().await?;
        let stored: Vec<_> = (1..=4u128)
            .map(|n| bare(n, &format!("purpose{n}"), &fixtures::phone()))
            .collect();
        for v in &stored {
            assert_eq!(store.insert(v).await?, Inserted::Created);
        }
        let claimed: Vec<_> = stored
            .iter()
            .map(|v| {
                let mut next = v.clone();
                next.record_mut().checks += 1;
                next.record_mut().version = v.version() + 1;
                next
            })
            .collect();
        let update = |i: usize, expected: u32, limits: &[(&str, &str)]| GuardedUpdate {
            row: VerificationRow::from(&claimed[i]),
            expected_version: i64::from(expected),
            now_ms: to_millis(at(0)),
            take: take_of(limits),
        };
        let inputs = [
            // At its version and allowed: written.
            update(
                0,
                stored[0].version(),
                &[("shared", "2/10m"), ("own:1", "1/10m")],
            ),
            // Not at its version: takes nothing, writes nothing.
            update(
                1,
                stored[1].version() + 5,
                &[("shared", "2/10m"), ("own:2", "1/10m")],
            ),
            // At its version, the second take of the shared limit: written.
            update(
                2,
                stored[2].version(),
                &[("own:3", "1/10m"), ("shared", "2/10m")],
            ),
            // The shared limit is used up: its own take is undone, nothing written.
            update(
                3,
                stored[3].version(),
                &[("own:4", "1/10m"), ("shared", "2/10m")],
            ),
        ];
        let outcomes = GuardedUpdates(store.pool().clone()).run(&inputs).await?;
        let seen: Vec<Option<(bool, bool)>> = outcomes
            .iter()
            .map(|g| {
                g.as_ref()
                    .map(|g| (g.taken_allowed.iter().all(|&a| a), g.written))
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                Some((true, true)),
                None,
                Some((true, true)),
                Some((false, false))
            ]
        );
        for (i, v) in stored.iter().enumerate() {
            let want = if i == 0 || i == 2 { &claimed[i] } else { v };
            assert_eq!(store.get(&v.id()).await?.as_ref(), Some(want), "row {i}");
        }
        let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM rate_limits ORDER BY key")
            .fetch_all(store.pool())
            .await?;
        assert_eq!(keys, vec!["own:1", "own:3", "shared"]);

        // Alone, the update not at its version finds no row either.
        let lone = GuardedUpdates(store.pool().clone());
        let again = lone.run_one(&inputs[1]).await?;
        assert!(again.is_none(), "{again:?}");
        store.close().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_signal_reads_gives_each_read_what_it_reads_alone() -> anyhow::Result<()> {
    with_database(|url| async move {
        let store = PostgresStore::connect(&url).await?;
        store.migrate().await?;
        let add = |key: &str, attempts| CountAdd {
            key: key.to_owned(),
            attempts,
            approved: 1,
        };
        store
            .add_counts(&[add("country:US", 9), add("prefix:+141555", 3)], at(0))
            .await?;
        let ip = BlockTarget {
            kind: BlockKind::Ip,
            value: "203.0.113.7".into(),
        };
        let country = BlockTarget {
            kind: BlockKind::Country,
            value: "GB".into(),
        };
        for (target, ends) in [(&ip, 15), (&country, 3600)] {
            store
                .add_block(&Block {
                    target: target.clone(),
                    reason: "R".into(),
                    detail: "d".into(),
                    source: BlockSource::Operator,
                    shadow: false,
                    created_at: at(0),
                    expires_at: at(ends),
                })
                .await?;
        }
        let query = |key: &str| CountQuery {
            key: key.to_owned(),
            since: at(-60),
        };
        let reads = [
            SignalsRead {
                queries: vec![query("country:US"), query("prefix:+141555")],
                targets: vec![ip.clone()],
                now_ms: to_millis(at(10)),
                replica: "r1".into(),
            },
            // No queries of its own: the numbering of the next read's must not shift.
            SignalsRead {
                queries: Vec::new(),
                targets: vec![country.clone()],
                now_ms: to_millis(at(10)),
                replica: "r1".into(),
            },
            // Past the end of the block on the IP, which the first read still sees.
            SignalsRead {
                queries: vec![query("prefix:+141555")],
                targets: vec![ip.clone(), country.clone()],
                now_ms: to_millis(at(20)),
                replica: "r1".into(),
            },
        ];
        let signals = Signals(store.pool().clone());
        let together = signals.run(&reads).await?;
        assert_eq!(together.len(), reads.len());
        let sorted = |mut rows: Vec<crate::row::SignalRow>| {
            rows.sort_by_key(|row| format!("{row:?}"));
            rows
        };
        for (read, rows) in reads.iter().zip(together) {
            let alone = signals.run_one(read).await?;
            assert_eq!(sorted(rows), sorted(alone), "{read:?}");
        }
        // What each read saw, in the terms of the rows.
        let alone = signals.run_one(&reads[2]).await?;
        let blocks: Vec<_> = alone.iter().filter_map(|row| row.value.clone()).collect();
        assert_eq!(blocks, vec!["GB".to_owned()]);
        let sums: Vec<_> = alone
            .iter()
            .filter(|row| row.i == Some(0))
            .filter_map(|row| row.attempts)
            .collect();
        assert_eq!(sums, vec![3]);
        store.close().await;
        Ok(())
    })
    .await
}
