//! What only the PostgreSQL store has: URL handling, the session settings it asks the
//! server for, and migrations run by several replicas at once.

use domain::ports::{Inserted, StoreError, VerificationStore};

use super::harness::PgDatabase;
use crate::fixtures::{self, bare, full};
use crate::lane::Batch;
use crate::postgres::{Reads, Updates};
use crate::row::VerificationRow;
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
        assert_eq!(stores[2].get(&v.id).await?, Some(v));
        for store in stores {
            store.close().await;
        }
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
                next.sends += 1;
                next.provider_sid = Some(format!("VE{:032x}", u128::from(v.version) + 7));
                next.version = v.version + 1;
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
                    before.version + 5
                } else {
                    before.version
                };
                (VerificationRow::from(next), i64::from(expected))
            })
            .collect();
        let written = Updates(store.pool().clone()).run(&inputs).await?;
        assert_eq!(written, vec![true, true, false, true]);
        for (i, v) in stored.iter().enumerate() {
            let want = if i == 2 { v } else { &moved_on[i] };
            assert_eq!(store.get(&v.id).await?.as_ref(), Some(want), "row {i}");
        }

        // A batch of reads: each id gets its row, an id asked twice gets it twice, and an
        // unknown id gets nothing.
        let ids = [
            stored[0].id.to_string(),
            fixtures::id(99).to_string(),
            stored[2].id.to_string(),
            stored[0].id.to_string(),
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
                next.sends = sends;
                next.version = v.version + 1;
                let expected = v.version;
                writers.push(tokio::spawn(async move {
                    (next.id, store.update(&next, expected).await)
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
            let now = store.get(&v.id).await?.expect("stored");
            assert_eq!(now.version, v.version + 1);
        }
        store.close().await;
        Ok(())
    })
    .await
}
