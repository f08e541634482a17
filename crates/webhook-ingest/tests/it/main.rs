//! webhook-ingest over real HTTP, on the real PostgreSQL and RabbitMQ of `cargo xtask deps up`
//! (a database and an exchange per test): the process around its connections here, the
//! webhooks themselves in `webhooks`, clients too slow or too many in `slow_clients`. Requests are signed by Twilio's twilio-python from the
//! venv of `cargo xtask tools`.
//!
//! Stopping the broker is tested in the `broker_outage` binary, so it disturbs none of these.

mod killed;
mod slow_clients;
mod support;
mod webhooks;

use secrecy::SecretString;
use support::{Harness, get, settings};
use webhook_ingest::{Connections, Ingest, Settings};

#[tokio::test]
async fn serves_health_and_readiness_then_stops_gracefully() {
    let mut harness = Harness::start().await;
    let base = harness.base.clone();

    let (status, body) = get(&format!("{base}/healthz")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["database"], "ok");
    assert_eq!(body["broker"], "ok");

    // The database goes away under the running process: not ready once the periodic ping
    // finds it gone (within 5 s), but still alive.
    harness.drop_database().await;
    let body = support::poll("/readyz turns 503", support::WITHIN, || {
        let readyz = format!("{base}/readyz");
        async move {
            match get(&readyz).await {
                (503, body) => Ok(body),
                (status, body) => Err(format!("{status} {body}")),
            }
        }
    })
    .await;
    assert_eq!(body["status"], "unavailable");
    assert!(
        body["database"]
            .as_str()
            .is_some_and(|d| d.starts_with("unavailable")),
        "{body}"
    );
    assert_eq!(body["broker"], "ok", "{body}");
    let (status, _) = get(&format!("{base}/healthz")).await;
    assert_eq!(status, 200);

    // Shutdown: `run` returns Ok promptly, having closed the listener and what it owns.
    harness.stop_server().await;
    assert!(
        support::http()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err(),
        "the listener is closed after shutdown"
    );
    assert!(
        !harness.bus.is_connected(),
        "the server closed its RabbitMQ connection"
    );
    assert!(
        harness.database.ping().await.is_err(),
        "the server closed its database pool"
    );
    harness.finish().await;
}

/// Each case spoils one setting of a valid set; the error must name what is wrong.
#[tokio::test]
async fn bad_settings_are_refused_before_connecting() {
    let good = Settings {
        public_base_url: Some("https://webhooks.example.com".parse().expect("url")),
        ..settings()
    };
    good.validate().expect("valid");
    // A database and a bus that need no server: `bind` must refuse before using them.
    let database = storage::Database::open("sqlite::memory:")
        .await
        .expect("in-memory SQLite");
    let connections = Connections::shared(database.clone(), messaging::Bus::in_process());

    type Spoil = fn(&mut Settings);
    let cases: [(&str, Spoil); 7] = [
        ("http(s) URL", |s| {
            s.public_base_url = Some("ftp://example.com".parse().expect("url"));
        }),
        ("http(s) URL", |s| {
            s.public_base_url = Some("mailto:ops@example.com".parse().expect("url"));
        }),
        ("query", |s| {
            s.public_base_url = Some("https://example.com/?a=b".parse().expect("url"));
        }),
        ("fragment", |s| {
            s.public_base_url = Some("https://example.com/#top".parse().expect("url"));
        }),
        ("TWILIO_AUTH_TOKEN", |s| {
            s.auth_token = SecretString::from("REPLACE_ME");
        }),
        ("TWILIO_AUTH_TOKEN", |s| {
            s.auth_token = SecretString::from("")
        }),
        ("TWILIO_AUTH_TOKEN", |s| {
            s.auth_token = SecretString::from(" \t ");
        }),
    ];
    for (expected, spoil) in cases {
        let mut bad = good.clone();
        spoil(&mut bad);
        let error = bad.validate().expect_err(expected).to_string();
        assert!(
            error.contains(expected),
            "`{error}` should mention {expected}"
        );
        let error = Ingest::bind(&bad, connections.clone())
            .await
            .expect_err("bind validates")
            .to_string();
        assert!(
            error.contains(expected),
            "`{error}` should mention {expected}"
        );
    }
    database.close().await;

    // `connect` refuses a broker URL that is not AMQP before it opens anything (the database
    // URL names no server, so reaching it would be a different error).
    for amqp in ["http://127.0.0.1:5672", "rabbitmq://localhost", ""] {
        let error = webhook_ingest::connect(
            "postgres://nobody@127.0.0.1:1/none",
            false,
            SecretString::from(amqp),
        )
        .await
        .expect_err("not an AMQP URL")
        .to_string();
        assert!(error.contains("amqp://"), "`{error}` for `{amqp}`");
    }
}

#[test]
fn the_binary_says_what_is_missing() {
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[
                ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
                ("WEBHOOK_PUBLIC_BASE_URL", "https://webhooks.example.com"),
                ("TWILIO_AUTH_TOKEN", "token"),
            ],
            "set AMQP_URL",
        ),
        (
            &[
                ("WEBHOOK_PUBLIC_BASE_URL", "https://webhooks.example.com"),
                ("TWILIO_AUTH_TOKEN", "token"),
                ("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
            ],
            "set DATABASE_URL",
        ),
        (
            &[
                ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
                ("TWILIO_AUTH_TOKEN", "token"),
                ("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
            ],
            "set WEBHOOK_PUBLIC_BASE_URL",
        ),
        (
            &[
                ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
                ("WEBHOOK_PUBLIC_BASE_URL", "https://webhooks.example.com"),
                ("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
            ],
            "TWILIO_AUTH_TOKEN is not set",
        ),
    ];
    for (env, expected) in cases {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_webhook-ingest"))
            .arg("serve")
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .expect("binary runs");
        assert!(!output.status.success(), "{expected}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in: {stderr}"
        );
    }
}
