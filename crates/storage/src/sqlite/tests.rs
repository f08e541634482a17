//! Tests of the SQLite store against real databases: a fresh file per test where several
//! connections matter, a single-connection in-memory database elsewhere.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, ensure};
use domain::{Channel, VerificationStatus};
use sqlx::{AssertSqlSafe, Row};

use super::*;
use crate::fixtures::{self, at, bare, full};

/// A database file in the temp directory, removed (with its WAL files) when dropped.
#[derive(Debug)]
struct TempDb {
    path: PathBuf,
}

impl TempDb {
    fn new(test: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!(
            "verify-gateway-storage-{test}-{}-{nanos}-{}.db",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        TempDb {
            path: std::env::temp_dir().join(name),
        }
    }

    fn url(&self) -> String {
        format!("sqlite://{}?mode=rwc", self.path.display())
    }

    fn files(&self) -> [PathBuf; 3] {
        let with = |suffix: &str| {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            PathBuf::from(p)
        };
        [self.path.clone(), with("-wal"), with("-shm")]
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for file in self.files() {
            // The WAL files may never have existed; a leftover file in /tmp is harmless.
            let _ = std::fs::remove_file(file);
        }
    }
}

async fn file_store(test: &str) -> anyhow::Result<(TempDb, SqliteStore)> {
    let db = TempDb::new(test);
    let store = SqliteStore::connect(&db.url()).await?;
    store.migrate().await?;
    Ok((db, store))
}

async fn memory_store() -> anyhow::Result<SqliteStore> {
    let store = SqliteStore::connect("sqlite::memory:").await?;
    store.migrate().await?;
    Ok(store)
}

async fn count_rows(store: &SqliteStore) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM verifications")
        .fetch_one(&store.pool)
        .await?)
}

/// Writes `row` as it is, bypassing the store, to plant rows the store would never write.
async fn insert_raw(store: &SqliteStore, row: VerificationRow) -> Result<(), sqlx::Error> {
    bind_insert(sqlx::query(sql::INSERT), row)
        .execute(&store.pool)
        .await
        .map(drop)
}

#[tokio::test]
async fn connect_creates_the_file_with_wal_and_foreign_keys() -> anyhow::Result<()> {
    let db = TempDb::new("connect");
    ensure!(!db.path.exists());
    let store = SqliteStore::connect(&db.url()).await?;
    ensure!(db.path.exists(), "the database file must be created");

    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&store.pool)
        .await?;
    assert_eq!(journal, "wal");
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&store.pool)
        .await?;
    assert_eq!(foreign_keys, 1);
    let busy_timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&store.pool)
        .await?;
    assert_eq!(busy_timeout, 5000);

    // Migrating twice is how every restart behaves.
    store.migrate().await?;
    store.migrate().await?;
    assert_eq!(count_rows(&store).await?, 0);
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
async fn schema_is_exactly_the_documented_columns() -> anyhow::Result<()> {
    let store = memory_store().await?;
    let columns: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_table_info('verifications') ORDER BY cid")
            .fetch_all(&store.pool)
            .await?;
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
    ];
    assert_eq!(columns, expected);
    Ok(())
}

#[tokio::test]
async fn schema_refuses_values_outside_the_domain() -> anyhow::Result<()> {
    let store = memory_store().await?;
    type Corrupt = fn(&mut VerificationRow);
    let cases: [(&str, Corrupt); 9] = [
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
    ];
    for (n, (column, corrupt)) in (100..).zip(cases) {
        let mut row = VerificationRow::from(&bare(n, "login", &fixtures::phone()));
        corrupt(&mut row);
        let result = insert_raw(&store, row).await;
        ensure!(result.is_err(), "a bad `{column}` must be refused");
    }
    assert_eq!(count_rows(&store).await?, 0);
    Ok(())
}

#[tokio::test]
async fn round_trip_keeps_every_field() -> anyhow::Result<()> {
    let store = memory_store().await?;
    let phone = full(1, "login", Some("order-42"), &fixtures::phone());
    let email = bare(2, "signup", &fixtures::email());
    for v in [&phone, &email] {
        assert_eq!(store.insert(v).await?, Inserted::Created);
    }
    assert_eq!(store.get(&phone.id).await?.as_ref(), Some(&phone));
    assert_eq!(store.get(&email.id).await?.as_ref(), Some(&email));
    assert_eq!(store.get(&fixtures::id(3)).await?, None);
    Ok(())
}

#[tokio::test]
async fn reused_idempotency_key_returns_the_first_and_writes_nothing() -> anyhow::Result<()> {
    let store = memory_store().await?;
    let first = full(1, "login", Some("order-42"), &fixtures::phone());
    assert_eq!(store.insert(&first).await?, Inserted::Created);

    let second = full(2, "login", Some("order-42"), &fixtures::email());
    assert_eq!(
        store.insert(&second).await?,
        Inserted::Existing(Box::new(first.clone()))
    );
    assert_eq!(store.get(&second.id).await?, None);
    assert_eq!(store.get(&first.id).await?.as_ref(), Some(&first));
    assert_eq!(count_rows(&store).await?, 1);

    // The key is scoped to the purpose, and verifications without a key never collide.
    let other_purpose = full(3, "signup", Some("order-42"), &fixtures::phone());
    assert_eq!(store.insert(&other_purpose).await?, Inserted::Created);
    for n in [4, 5] {
        assert_eq!(
            store.insert(&bare(n, "login", &fixtures::phone())).await?,
            Inserted::Created
        );
    }
    assert_eq!(count_rows(&store).await?, 4);
    Ok(())
}

#[tokio::test]
async fn reused_id_is_an_error_not_an_idempotent_hit() -> anyhow::Result<()> {
    let store = memory_store().await?;
    let v = bare(1, "login", &fixtures::phone());
    store.insert(&v).await?;
    let mut again = full(1, "login", Some("fresh-key"), &fixtures::phone());
    again.id = v.id;
    let error = store.insert(&again).await.expect_err("duplicate id");
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert_eq!(store.get(&v.id).await?.as_ref(), Some(&v));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_inserts_with_one_key_create_exactly_one() -> anyhow::Result<()> {
    let (_db, store) = file_store("concurrent").await?;
    let tasks: Vec<_> = (1..=20)
        .map(|n| {
            let store = store.clone();
            let v = full(n, "login", Some("double-click"), &fixtures::phone());
            tokio::spawn(async move { store.insert(&v).await.map(|r| (v.id, r)) })
        })
        .collect();
    let mut created = Vec::new();
    let mut existing = Vec::new();
    for task in tasks {
        match task.await?? {
            (id, Inserted::Created) => created.push(id),
            (_, Inserted::Existing(first)) => existing.push(first.id),
        }
    }
    assert_eq!(created.len(), 1, "exactly one insert may win");
    assert_eq!(existing.len(), 19);
    assert!(
        existing.iter().all(|id| *id == created[0]),
        "every loser must see the winner"
    );
    assert_eq!(count_rows(&store).await?, 1);
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn update_writes_every_mutable_field() -> anyhow::Result<()> {
    let store = memory_store().await?;
    let v = bare(1, "login", &fixtures::phone());
    store.insert(&v).await?;

    let mut changed = store.get(&v.id).await?.context("just inserted")?;
    changed.channel = Channel::Whatsapp;
    changed.status = VerificationStatus::Failed;
    changed.provider_sid = Some("VEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into());
    changed.destination = fixtures::keyring().seal(&fixtures::phone(), [42; 12]);
    changed.to_masked = "+1415***0000".into();
    changed.identity = Some("user-9".into());
    changed.sends = 2;
    changed.checks = 3;
    changed.max_sends = 9;
    changed.max_checks = 8;
    changed.failure_code = Some(60410);
    changed.updated_at = at(30);
    changed.expires_at = at(900);
    changed.version = 1;
    store.update(&changed, 0).await?;
    assert_eq!(store.get(&v.id).await?, Some(changed));
    Ok(())
}

#[tokio::test]
async fn update_is_optimistic() -> anyhow::Result<()> {
    let store = memory_store().await?;
    let v = bare(1, "login", &fixtures::phone());
    store.insert(&v).await?;

    // Two requests read version 0; the first to write wins.
    let mut winner = store.get(&v.id).await?.context("inserted")?;
    let mut loser = winner.clone();
    winner.mark_sent("VE1".into(), at(1));
    store.update(&winner, 0).await?;

    loser.begin_check(at(2))?;
    assert_eq!(
        store.update(&loser, 0).await,
        Err(StoreError::Conflict(v.id))
    );
    assert_eq!(store.get(&v.id).await?.as_ref(), Some(&winner));

    // Re-reading and retrying, as the port asks, succeeds.
    let mut retry = store.get(&v.id).await?.context("still there")?;
    let read_at = retry.version;
    retry.begin_check(at(3))?;
    store.update(&retry, read_at).await?;
    assert_eq!(store.get(&v.id).await?, Some(retry));

    let never_stored = bare(2, "login", &fixtures::phone());
    assert_eq!(
        store.update(&never_stored, 0).await,
        Err(StoreError::NotFound(never_stored.id))
    );
    assert_eq!(count_rows(&store).await?, 1);
    Ok(())
}

#[tokio::test]
async fn find_pending_returns_the_newest_live_one() -> anyhow::Result<()> {
    let store = memory_store().await?;
    let phone = fixtures::phone();
    let hash = fixtures::blind_index().hash(&phone);
    let login = Purpose::parse("login")?;
    let now = at(100);

    let pending = |n: u128, purpose: &str, created: i64, expires: i64| {
        let mut v = bare(n, purpose, &phone);
        v.created_at = at(created);
        v.updated_at = at(created);
        v.expires_at = at(expires);
        v
    };
    let older = pending(1, "login", 0, 600);
    let newest = pending(2, "login", 10, 600);
    let expired = pending(3, "login", 20, 50);
    let expires_now = pending(4, "login", 30, 100);
    let other_purpose = pending(5, "signup", 40, 600);
    let mut approved = pending(6, "login", 50, 600);
    approved.status = VerificationStatus::Approved;
    let mut other_destination = bare(7, "login", &fixtures::email());
    other_destination.created_at = at(60);
    for v in [
        &older,
        &newest,
        &expired,
        &expires_now,
        &other_purpose,
        &approved,
        &other_destination,
    ] {
        store.insert(v).await?;
    }

    assert_eq!(
        store.find_pending(&login, &hash, now).await?.as_ref(),
        Some(&newest)
    );
    assert_eq!(
        store
            .find_pending(&Purpose::parse("signup")?, &hash, now)
            .await?
            .as_ref(),
        Some(&other_purpose)
    );
    assert_eq!(store.find_pending(&login, &hash, at(600)).await?, None);
    assert_eq!(
        store
            .find_pending(&Purpose::parse("recovery")?, &hash, now)
            .await?,
        None
    );
    Ok(())
}

#[tokio::test]
async fn find_by_idempotency_key_matches_purpose_and_key() -> anyhow::Result<()> {
    let store = memory_store().await?;
    let v = full(1, "login", Some("order-42"), &fixtures::phone());
    store.insert(&v).await?;
    let key = IdempotencyKey::parse("order-42")?;
    let login = Purpose::parse("login")?;
    assert_eq!(store.find_by_idempotency_key(&login, &key).await?, Some(v));
    assert_eq!(
        store
            .find_by_idempotency_key(&Purpose::parse("signup")?, &key)
            .await?,
        None
    );
    assert_eq!(
        store
            .find_by_idempotency_key(&login, &IdempotencyKey::parse("order-43")?)
            .await?,
        None
    );
    Ok(())
}

#[tokio::test]
async fn corrupt_rows_are_errors_not_panics() -> anyhow::Result<()> {
    let store = memory_store().await?;
    // The in-memory store has one connection, so this pragma covers the raw inserts below;
    // it is the only way to plant the rows a damaged or hand-edited database could hold.
    sqlx::query("PRAGMA ignore_check_constraints = ON")
        .execute(&store.pool)
        .await?;

    let unknown_status = bare(1, "login", &fixtures::phone());
    let mut row = VerificationRow::from(&unknown_status);
    row.status = "lost".into();
    insert_raw(&store, row).await?;
    let error = store.get(&unknown_status.id).await.expect_err("corrupt");
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");

    let foreign_id = bare(2, "signup", &fixtures::phone());
    let mut row = VerificationRow::from(&foreign_id);
    row.id = "VE0123".into();
    insert_raw(&store, row).await?;
    let error = store
        .find_pending(&foreign_id.purpose, &foreign_id.destination_hash, at(1))
        .await
        .expect_err("corrupt");
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
    Ok(())
}

#[tokio::test]
async fn no_plaintext_destination_reaches_the_database() -> anyhow::Result<()> {
    let (db, store) = file_store("plaintext").await?;
    let phone = full(1, "login", Some("k-phone"), &fixtures::phone());
    let mut email = full(2, "login", Some("k-email"), &fixtures::email());
    email.identity = Some("user-8".into());
    store.insert(&phone).await?;
    store.insert(&email).await?;
    // A stored destination still opens with the keyring: it is sealed, not lost.
    let stored = store.get(&email.id).await?.context("inserted")?;
    assert_eq!(
        fixtures::keyring().open(&stored.destination)?,
        fixtures::email()
    );

    // Every column of every row, as the bytes SQLite holds (numbers as their text).
    let columns: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_table_info('verifications')")
            .fetch_all(&store.pool)
            .await?;
    let mut cells: Vec<Vec<u8>> = Vec::new();
    for column in &columns {
        let select = format!("SELECT CAST(\"{column}\" AS BLOB) AS cell FROM verifications");
        for row in sqlx::query(AssertSqlSafe(select))
            .fetch_all(&store.pool)
            .await?
        {
            let cell: Option<Vec<u8>> = row.try_get("cell")?;
            cells.extend(cell);
        }
    }
    ensure!(cells.len() >= 2 * 17, "the scan must see the rows");
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

    // And the files themselves, after the WAL is checkpointed on close.
    store.close().await;
    for file in db.files() {
        if let Ok(bytes) = std::fs::read(&file) {
            for secret in secrets {
                assert!(
                    !contains(&bytes, secret),
                    "{} holds `{secret}`",
                    file.display()
                );
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn lookups_use_their_indexes() -> anyhow::Result<()> {
    let store = memory_store().await?;
    let plan = |statement: &'static str| {
        let store = store.clone();
        async move {
            let explain = format!("EXPLAIN QUERY PLAN {statement}");
            let rows = sqlx::query(AssertSqlSafe(explain))
                .bind("login")
                .bind("ab")
                .bind(0_i64)
                .fetch_all(&store.pool)
                .await?;
            rows.iter()
                .map(|row| row.try_get::<String, _>("detail"))
                .collect::<Result<Vec<_>, _>>()
                .map(|details| details.join("; "))
        }
    };
    let pending = plan(sql::FIND_PENDING).await?;
    assert!(
        pending.contains("verifications_pending_by_destination"),
        "{pending}"
    );
    let by_key = plan(sql::FIND_BY_IDEMPOTENCY_KEY).await?;
    assert!(
        by_key.contains("verifications_purpose_idempotency_key"),
        "{by_key}"
    );
    Ok(())
}
