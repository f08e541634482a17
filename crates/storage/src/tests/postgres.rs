//! What only the PostgreSQL store has: URL handling, the session settings it asks the
//! server for, and migrations run by several replicas at once.

use domain::ports::{Inserted, VerificationStore};

use super::harness::PgDatabase;
use crate::fixtures::{self, full};
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
