//! What only the SQLite store has: its file, its pragmas, its in-memory mode, the bytes on
//! disk, and the migration that brought older embedded databases under the pending rule.

use anyhow::{Context, ensure};
use domain::ports::{Inserted, VerificationStore};
use domain::{Verification, VerificationStatus};

use super::harness::{
    INSERT_BEFORE_DELIVERY_REPORTS, TempFile, bind_insert_before_delivery_reports,
};
use crate::fixtures::{self, at, bare, full};
use crate::row::VerificationRow;
use crate::sqlite::CHECKPOINT_EVERY;
use crate::{SqliteStore, StorageError};

#[tokio::test]
async fn connect_creates_the_file_with_wal_and_foreign_keys() -> anyhow::Result<()> {
    let db = TempFile::new("connect");
    ensure!(!db.path.exists());
    let store = SqliteStore::connect(&db.url()).await?;
    ensure!(db.path.exists(), "the database file must be created");

    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(journal, "wal");
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(foreign_keys, 1);
    let busy_timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(busy_timeout, 5000);
    store.close().await;
    Ok(())
}

/// Commits reach the database file without a commit of the writer paying for it: the
/// checkpoint thread copies them out of the WAL within a few of its intervals (the
/// writer's own threshold, thousands of pages, is never reached here).
#[tokio::test]
async fn the_checkpoint_thread_copies_commits_into_the_file() -> anyhow::Result<()> {
    let db = TempFile::new("checkpoints");
    let store = SqliteStore::connect(&db.url()).await?;
    store.migrate().await?;
    let file_len = || std::fs::metadata(&db.path).map(|m| m.len());
    // The schema's pages are copied first.
    tokio::time::sleep(CHECKPOINT_EVERY * 3).await;
    let before = file_len()?;
    for n in 0..300u128 {
        let v = full(n + 1, "login", Some(&format!("k-{n}")), &fixtures::phone());
        store.insert(&v).await?;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while file_len()? <= before {
        ensure!(
            std::time::Instant::now() < deadline,
            "nothing was checkpointed into the file ({before} bytes)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn bad_urls_are_refused() {
    let error = SqliteStore::connect("sqlite://x.db?mode=sideways")
        .await
        .expect_err("unknown mode");
    assert!(matches!(error, StorageError::InvalidUrl(_)), "{error:?}");
}

#[tokio::test]
async fn in_memory_databases_work() -> anyhow::Result<()> {
    let store = SqliteStore::connect("sqlite::memory:").await?;
    store.migrate().await?;
    let v = full(1, "login", Some("order-42"), &fixtures::phone());
    assert_eq!(store.insert(&v).await?, Inserted::Created);
    assert_eq!(store.get(&v.id()).await?, Some(v));
    let pending = bare(2, "login", &fixtures::phone());
    assert_eq!(store.insert(&pending).await?, Inserted::Created);
    assert_eq!(
        store.insert(&bare(3, "login", &fixtures::phone())).await?,
        Inserted::Pending(Box::new(pending))
    );
    // Reads run as writer jobs there, inside the writer's transaction.
    let query = domain::abuse::CountQuery {
        key: "country:US".into(),
        since: at(-60),
    };
    let target = domain::abuse::BlockTarget {
        kind: domain::abuse::BlockKind::Country,
        value: "US".into(),
    };
    use domain::abuse::RiskStore;
    let (counts, blocks) = store.read_signals(&[query], &[target], at(0)).await?;
    assert_eq!((counts.len(), blocks.len()), (1, 0));
    Ok(())
}

#[tokio::test]
async fn no_plaintext_destination_reaches_the_files() -> anyhow::Result<()> {
    let db = TempFile::new("plaintext-files");
    let store = SqliteStore::connect(&db.url()).await?;
    store.migrate().await?;
    let mut email = full(2, "login", Some("k-email"), &fixtures::email());
    email.record_mut().identity = Some("user-8".into());
    for v in [
        full(1, "login", Some("k-phone"), &fixtures::phone()),
        email,
        bare(3, "signup", &fixtures::phone()),
    ] {
        assert_eq!(store.insert(&v).await?, Inserted::Created);
    }
    // After the WAL is checkpointed on close, and before (the WAL files themselves).
    let contains = |haystack: &[u8], needle: &str| {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    };
    let secrets = ["4155552671", fixtures::EMAIL, "jane.doe"];
    let scan = || -> anyhow::Result<usize> {
        let mut scanned = 0;
        for file in db.files() {
            if let Ok(bytes) = std::fs::read(&file) {
                scanned += 1;
                for secret in secrets {
                    ensure!(
                        !contains(&bytes, secret),
                        "{} holds `{secret}`",
                        file.display()
                    );
                }
            }
        }
        Ok(scanned)
    };
    ensure!(scan()? >= 1);
    store.close().await;
    ensure!(scan()? >= 1);
    Ok(())
}

/// Writes `v` as it is, as the code before the pending rule could (with the columns the
/// first release had).
async fn plant(store: &SqliteStore, v: &Verification) -> anyhow::Result<()> {
    let insert = sqlx::query(INSERT_BEFORE_DELIVERY_REPORTS);
    bind_insert_before_delivery_reports(insert, VerificationRow::from(v))
        .execute(store.pool())
        .await?;
    Ok(())
}

#[tokio::test]
async fn migration_keeps_only_the_newest_pending_per_destination() -> anyhow::Result<()> {
    // A database as the first release left it: only the first migration applied.
    let db = TempFile::new("pending-rule");
    let store = SqliteStore::connect(&db.url()).await?;
    store.migrate_to(1).await?;

    // Three pending for one purpose and destination (two with the same creation time),
    // one for another purpose, and a finished one.
    let at_secs = |n: u128, purpose: &str, created: i64| {
        let mut v = bare(n, purpose, &fixtures::phone());
        v.record_mut().created_at = at(created);
        v.record_mut().updated_at = at(created);
        v
    };
    let oldest = at_secs(1, "login", 0);
    let tied_low = at_secs(2, "login", 10);
    let newest = at_secs(3, "login", 10);
    let other_purpose = at_secs(4, "signup", 0);
    let mut finished = at_secs(5, "login", 20);
    finished.record_mut().status = VerificationStatus::Approved;
    for v in [&oldest, &tied_low, &newest, &other_purpose, &finished] {
        plant(&store, v).await?;
    }

    store.migrate().await?;
    for (v, expired) in [
        (&oldest, true),
        (&tied_low, true),
        (&newest, false),
        (&other_purpose, false),
        (&finished, false),
    ] {
        let now = store.get(&v.id()).await?.context("kept")?;
        if expired {
            assert_eq!(now.status(), VerificationStatus::Expired, "{}", v.id());
            assert_eq!(now.version(), v.version() + 1);
            ensure!(
                now.updated_at() > v.updated_at(),
                "updated_at is the migration's time"
            );
        } else {
            assert_eq!(now, fixtures::unbound(v.clone()));
        }
    }
    // And the rule now holds.
    assert_eq!(
        store.insert(&at_secs(6, "login", 30)).await?,
        Inserted::Pending(Box::new(fixtures::unbound(newest)))
    );
    store.close().await;
    Ok(())
}
