//! Key rotation on both backends: a new key encrypts new rows, old rows stay readable, and
//! `verify-gateway reencrypt` moves old rows to the new key so the old one can be retired.

use base64::Engine;
use proto::verify::v1 as pb;

use crate::harness::fresh_postgres_database;
use crate::replicas::{replica, standalone_sandbox};

const TO: &str = "+14155552690";

fn b64(bytes: [u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The `[keys]` table for `encryption_keys` (first = current) and a fixed blind-index key.
fn keys_toml(encryption_keys: &str) -> String {
    format!(
        "[keys]\nblind_index_key = \"{}\"\nencryption_keys = \"{encryption_keys}\"\n",
        b64([3u8; 32])
    )
}

async fn inbox_len(sandbox: &str) -> usize {
    inbox_len_of(sandbox, TO).await
}

async fn inbox_len_of(sandbox: &str, to: &str) -> usize {
    let to = to.replace('+', "%2B");
    let messages: Vec<serde_json::Value> =
        reqwest::get(format!("{sandbox}/sandbox/messages?to={to}"))
            .await
            .expect("inbox")
            .json()
            .await
            .expect("json");
    messages.len()
}

async fn start(
    client: &mut pb::verify_service_client::VerifyServiceClient<tonic::transport::Channel>,
) -> pb::Verification {
    start_to(client, TO).await
}

async fn start_to(
    client: &mut pb::verify_service_client::VerifyServiceClient<tonic::transport::Channel>,
    to: &str,
) -> pb::Verification {
    client
        .start_verification(pb::StartVerificationRequest {
            purpose: "login".into(),
            to: to.into(),
            channel: pb::Channel::Sms.into(),
            ..Default::default()
        })
        .await
        .expect("start")
        .into_inner()
        .verification
        .expect("verification")
}

/// How many rows are sealed with a key other than `current`.
async fn rows_not_under(database_url: &str, current: &str) -> usize {
    let database = storage::Database::open(database_url).await.expect("open");
    let rows = database
        .verifications()
        .list_sealed_with_other_key(current, 100)
        .await
        .expect("list");
    database.close().await;
    rows.len()
}

/// Opens the stored destination of `id` with exactly the keys in `encryption_keys`.
async fn open_stored(database_url: &str, id: &str, encryption_keys: &str) -> Option<String> {
    let keys = verify_service::keys::parse(&b64([3u8; 32]), encryption_keys).expect("keys");
    let database = storage::Database::open(database_url).await.expect("open");
    let id: domain::VerificationId = id.parse().expect("id");
    let row = database
        .verifications()
        .get(&id)
        .await
        .expect("read")
        .expect("row exists");
    database.close().await;
    keys.keyring
        .open(row.destination(), &row.id())
        .ok()
        .map(|d| d.expose().to_owned())
}

async fn rotate_on(database_url: String) {
    let (sandbox, stop_sandbox) = standalone_sandbox().await;
    let k1 = format!("k1:{}", b64([11u8; 32]));
    let k2 = format!("k2:{}", b64([22u8; 32]));

    // Before the rotation: k1 seals the row.
    let before = replica(&database_url, &sandbox, &keys_toml(&k1)).await;
    let first = start(&mut before.client.clone()).await;
    before.shutdown().await;
    assert_eq!(rows_not_under(&database_url, "k2").await, 1);
    assert_eq!(
        open_stored(&database_url, &first.id, &k1).await.as_deref(),
        Some(TO)
    );
    assert_eq!(
        open_stored(&database_url, &first.id, &k2).await,
        None,
        "sealed with k1"
    );

    // k2 prepended: the old row stays readable and the verification keeps working.
    let during = replica(&database_url, &sandbox, &keys_toml(&format!("{k2},{k1}"))).await;
    let resent = start(&mut during.client.clone()).await;
    assert_eq!(resent.id, first.id, "a resend on the pending verification");
    assert_eq!(inbox_len(&sandbox).await, 2);
    during.shutdown().await;

    // The command re-encrypts what k1 sealed.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_verify-gateway"))
        .args(["reencrypt", "--batch", "1"])
        .env("DATABASE_URL", &database_url)
        .env("VERIFY_KEYS__BLIND_INDEX_KEY", b64([3u8; 32]))
        .env("VERIFY_KEYS__ENCRYPTION_KEYS", format!("{k2},{k1}"))
        .env("VERIFY_LOG__FORMAT", "json")
        .env_remove("AMQP_URL")
        .output()
        .expect("verify-gateway runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("\"rewritten\":1"), "{stdout}");
    assert_eq!(rows_not_under(&database_url, "k2").await, 0);
    // k1 can be retired: k2 alone opens the row now.
    assert_eq!(
        open_stored(&database_url, &first.id, &k2).await.as_deref(),
        Some(TO)
    );

    // With k1 retired the verification still works.
    let after = replica(&database_url, &sandbox, &keys_toml(&k2)).await;
    let again = start(&mut after.client.clone()).await;
    assert_eq!(again.id, first.id);
    assert_eq!(inbox_len(&sandbox).await, 3);
    after.shutdown().await;
    let _ = stop_sandbox.send(());
}

#[tokio::test]
async fn rotation_on_sqlite() {
    let file = std::env::temp_dir().join(format!("vg-rot-{}.db", uuid::Uuid::new_v4()));
    rotate_on(format!("sqlite://{}?mode=rwc", file.display())).await;
    remove_sqlite(&file);
}

#[tokio::test]
async fn rotation_on_postgres() {
    rotate_on(fresh_postgres_database().await).await;
}

/// Someone who can write the database but holds no key copies one verification's sealed
/// destination into another's row: the other verification's code must not go to the first
/// one's number. The copy does not open there (it is bound to its own row), so a resend
/// goes to the number its caller gives.
async fn copied_ciphertext_on(database_url: String) {
    const OTHER: &str = "+14155552691";
    let (sandbox, stop_sandbox) = standalone_sandbox().await;
    let k1 = format!("k1:{}", b64([11u8; 32]));
    let gateway = replica(&database_url, &sandbox, &keys_toml(&k1)).await;
    let first = start_to(&mut gateway.client.clone(), TO).await;
    let second = start_to(&mut gateway.client.clone(), OTHER).await;
    gateway.shutdown().await;

    let database = storage::Database::open(&database_url).await.expect("open");
    let store = database.verifications();
    let read = |id: &str| {
        let id: domain::VerificationId = id.parse().expect("id");
        let store = store.clone();
        async move { store.get(&id).await.expect("read").expect("row exists") }
    };
    let source = read(&first.id).await;
    let mut target = read(&second.id).await;
    target.reseal(source.destination().clone());
    store.update(&mut target).await.expect("written");
    database.close().await;
    assert_eq!(open_stored(&database_url, &second.id, &k1).await, None);

    let gateway = replica(&database_url, &sandbox, &keys_toml(&k1)).await;
    let resent = start_to(&mut gateway.client.clone(), OTHER).await;
    assert_eq!(resent.id, second.id, "a resend on the pending verification");
    assert_eq!(inbox_len_of(&sandbox, TO).await, 1, "nothing more to {TO}");
    assert_eq!(inbox_len_of(&sandbox, OTHER).await, 2);
    gateway.shutdown().await;
    let _ = stop_sandbox.send(());
}

#[tokio::test]
async fn a_copied_ciphertext_does_not_open_in_another_row_on_sqlite() {
    let file = std::env::temp_dir().join(format!("vg-copy-{}.db", uuid::Uuid::new_v4()));
    copied_ciphertext_on(format!("sqlite://{}?mode=rwc", file.display())).await;
    remove_sqlite(&file);
}

#[tokio::test]
async fn a_copied_ciphertext_does_not_open_in_another_row_on_postgres() {
    copied_ciphertext_on(fresh_postgres_database().await).await;
}

/// Removes a test's SQLite database and its WAL and shared-memory files.
fn remove_sqlite(file: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut path = file.as_os_str().to_owned();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }
}
