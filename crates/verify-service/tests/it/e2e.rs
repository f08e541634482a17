//! The acceptance walk-through against the real binary: `verify-gateway` started as a user
//! would (`cargo run`), called through server reflection with `buf curl` (no compiled stubs),
//! the code read from the sandbox inbox over HTTP.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct KillOnDrop(Child, PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn buf() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/node_modules/.bin/buf");
    assert!(
        path.exists(),
        "buf is missing at {}: run `cargo xtask tools` first",
        path.display()
    );
    path
}

/// Calls a method through server reflection; returns (exit ok, stdout JSON or error text).
fn buf_curl(grpc: u16, method: &str, body: &str) -> (bool, serde_json::Value) {
    let out = Command::new(buf())
        .args([
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--reflect-protocol",
            "grpc-v1",
            "-d",
            body,
        ])
        .arg(format!(
            "http://127.0.0.1:{grpc}/verify.v1.VerifyService/{method}"
        ))
        .output()
        .expect("buf runs");
    let text = if out.status.success() {
        out.stdout
    } else {
        out.stderr
    };
    let value = serde_json::from_slice(&text)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&text).into_owned()));
    (out.status.success(), value)
}

#[tokio::test]
async fn binary_serves_reflection_and_the_documented_walkthrough() {
    let grpc = free_port();
    let sandbox = free_port();
    let data = std::env::temp_dir().join(format!("vg-e2e-{}", uuid::Uuid::new_v4()));
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_verify-gateway"))
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--sandbox-addr", &format!("127.0.0.1:{sandbox}")])
        .args(["--webhooks-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data)
        .env_remove("TWILIO_ACCOUNT_SID")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let _guard = KillOnDrop(child, data);
    let http = reqwest::Client::new();
    let scenarios_url = format!("http://127.0.0.1:{sandbox}/sandbox/scenarios");
    loop {
        let up = tokio::net::TcpStream::connect(("127.0.0.1", grpc))
            .await
            .is_ok()
            && http.get(&scenarios_url).send().await.is_ok();
        if up {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let grpc_port = grpc;
    let (ok, started) = tokio::task::spawn_blocking(move || {
        buf_curl(
            grpc_port,
            "StartVerification",
            r#"{"purpose":"login","to":"(415) 555-2671","default_region":"US","channel":"CHANNEL_SMS"}"#,
        )
    })
    .await
    .expect("join");
    assert!(ok, "{started}");
    let v = &started["verification"];
    assert_eq!(v["status"], "VERIFICATION_STATUS_PENDING", "{started}");
    let id = v["id"].as_str().expect("id").to_owned();

    let inbox: serde_json::Value = http
        .get(format!(
            "http://127.0.0.1:{sandbox}/sandbox/messages?to=%2B14155552671"
        ))
        .send()
        .await
        .expect("inbox")
        .json()
        .await
        .expect("json");
    let code = inbox[0]["code"].as_str().expect("code").to_owned();
    assert_eq!(inbox[0]["channel"], "sms");

    let wrong = crate::harness::wrong(&code);
    let body = format!(r#"{{"id":"{id}","code":"{wrong}"}}"#);
    let (ok, bad) = tokio::task::spawn_blocking(move || buf_curl(grpc, "CheckVerification", &body))
        .await
        .expect("join");
    assert!(ok, "{bad}");
    assert_eq!(
        bad.get("valid"),
        None,
        "false is omitted in proto JSON: {bad}"
    );
    assert_eq!(bad["verification"]["attemptsLeft"], 2, "{bad}");

    let body = format!(r#"{{"id":"{id}","code":"{code}"}}"#);
    let (ok, good) =
        tokio::task::spawn_blocking(move || buf_curl(grpc, "CheckVerification", &body))
            .await
            .expect("join");
    assert!(ok, "{good}");
    assert_eq!(good["valid"], true, "{good}");
    assert_eq!(
        good["verification"]["status"],
        "VERIFICATION_STATUS_APPROVED"
    );

    let (ok, invalid) = tokio::task::spawn_blocking(move || {
        buf_curl(
            grpc,
            "StartVerification",
            r#"{"purpose":"login","to":"not a number"}"#,
        )
    })
    .await
    .expect("join");
    assert!(!ok);
    let text = invalid.to_string();
    assert_eq!(invalid["code"], "invalid_argument", "{text}");
    assert!(text.contains("invalid `to`"), "{text}");
    assert_eq!(
        invalid["details"][0]["type"], "google.rpc.BadRequest",
        "{text}"
    );
}

/// The binary on a non-loopback address without callers: it refuses to start, naming the
/// settings; with `auth.insecure_no_callers` it serves, with a warning.
#[tokio::test]
async fn binary_refuses_an_open_address_without_callers_unless_told_to() {
    let data = std::env::temp_dir().join(format!("vg-open-{}", uuid::Uuid::new_v4()));
    let gateway = |grpc: u16| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_verify-gateway"));
        command
            .args(["--grpc-addr", &format!("0.0.0.0:{grpc}")])
            .args(["--sandbox-addr", "127.0.0.1:0"])
            .args(["--webhooks-addr", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data)
            .env_remove("TWILIO_ACCOUNT_SID")
            .env_remove("DATABASE_URL")
            .env_remove("VERIFY_AUTH__INSECURE_NO_CALLERS")
            .env("VERIFY_LOG__FILTER", "warn");
        command
    };

    let refused = tokio::task::spawn_blocking({
        let mut command = gateway(free_port());
        move || {
            command
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
        }
    })
    .await
    .expect("join")
    .expect("binary runs");
    assert!(!refused.status.success(), "started open to anyone");
    let said = String::from_utf8_lossy(&refused.stderr);
    for needle in [
        "would answer anyone",
        "0.0.0.0",
        "[callers.<name>]",
        "auth.insecure_no_callers",
        "VERIFY_AUTH__INSECURE_NO_CALLERS",
    ] {
        assert!(said.contains(needle), "{needle} missing in: {said}");
    }

    let grpc = free_port();
    let log = data.join("output.log");
    std::fs::create_dir_all(&data).expect("data dir");
    let file = std::fs::File::create(&log).expect("log file");
    let child = gateway(grpc)
        .env("VERIFY_AUTH__INSECURE_NO_CALLERS", "true")
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .spawn()
        .expect("binary starts");
    let _guard = KillOnDrop(child, data.clone());
    let started = Instant::now();
    let channel = loop {
        let endpoint = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{grpc}"))
            .expect("uri");
        if let Ok(channel) = endpoint.connect().await {
            break channel;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("serving");
    // The warning is logged as the server starts; give the writer a moment.
    let warned = loop {
        let logged = std::fs::read_to_string(&log).expect("log");
        if logged.contains("served without callers to anyone")
            || started.elapsed() > Duration::from_secs(20)
        {
            break logged;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        warned.contains("served without callers to anyone") && warned.contains("WARN"),
        "no warning: {warned}"
    );
}
