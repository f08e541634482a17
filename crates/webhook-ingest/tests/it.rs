//! webhook-ingest as a process around its connections: health, readiness that follows the
//! database, graceful shutdown, and settings refused before anything is connected. Runs on
//! the real PostgreSQL and RabbitMQ of `cargo xtask deps up`.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use tokio::sync::oneshot;
use webhook_ingest::{Ingest, Settings};

fn settings(database_url: &str) -> Settings {
    Settings {
        addr: "127.0.0.1:0".parse().expect("addr"),
        public_base_url: "http://127.0.0.1:8080".parse().expect("url"),
        auth_token: SecretString::from("test-auth-token"),
        database_url: database_url.to_owned(),
        amqp_url: SecretString::from(testkit::amqp_url().unwrap_or_else(|e| panic!("{e:#}"))),
        migrate_on_start: true,
    }
}

async fn get(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("request answered");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

#[tokio::test]
async fn serves_health_and_readiness_then_stops_gracefully() {
    let database = testkit::PgDatabase::create("wi")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let ingest = Ingest::bind(&settings(&database.url)).await.expect("binds");
    let base = format!("http://{}", ingest.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(ingest.run(async {
        let _ = stopped.await;
    }));

    let (status, body) = get(&format!("{base}/healthz")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["database"], "ok");
    assert_eq!(body["broker"], "ok");

    // The database goes away under the running process: not ready, but still alive.
    database.drop_database().await;
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert!(
        body["database"]
            .as_str()
            .is_some_and(|d| d.starts_with("unavailable")),
        "{body}"
    );
    assert_eq!(body["broker"], "ok");
    let (status, _) = get(&format!("{base}/healthz")).await;
    assert_eq!(status, 200);

    stop.send(()).expect("server still running");
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("shuts down promptly")
        .expect("task joins")
        .expect("serves without error");
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "the listener is closed after shutdown"
    );
}

#[tokio::test]
async fn bad_settings_are_refused_before_connecting() {
    let good = Settings {
        addr: "127.0.0.1:0".parse().expect("addr"),
        public_base_url: "https://webhooks.example.com".parse().expect("url"),
        auth_token: SecretString::from("token"),
        database_url: "postgres://nobody@127.0.0.1:1/none".into(),
        amqp_url: SecretString::from("amqp://guest:guest@127.0.0.1:1/%2f"),
        migrate_on_start: false,
    };
    good.validate().expect("valid");
    type Spoil = fn(&mut Settings);
    let cases: [(&str, Spoil); 4] = [
        ("http(s) URL", |s| {
            s.public_base_url = "ftp://example.com".parse().expect("url")
        }),
        ("query", |s| {
            s.public_base_url = "https://example.com/?a=b".parse().expect("url")
        }),
        ("TWILIO_AUTH_TOKEN", |s| {
            s.auth_token = SecretString::from("REPLACE_ME")
        }),
        ("amqp://", |s| {
            s.amqp_url = SecretString::from("http://127.0.0.1:5672")
        }),
    ];
    for (expected, change) in cases {
        let mut bad = good.clone();
        change(&mut bad);
        let error = Ingest::bind(&bad).await.expect_err(expected).to_string();
        assert!(
            error.contains(expected),
            "`{error}` should mention {expected}"
        );
    }
}

#[test]
fn the_binary_says_what_is_missing() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_webhook-ingest"))
        .arg("serve")
        .env_clear()
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("WEBHOOK_PUBLIC_BASE_URL", "https://webhooks.example.com")
        .env("TWILIO_AUTH_TOKEN", "token")
        .output()
        .expect("binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("set AMQP_URL"), "{stderr}");
}
