//! Shutdown, health and the server's bounds on calls: SIGTERM turns health NOT_SERVING and
//! the binary exits within its grace even with a `Health/Watch` stream open; a call still
//! running after the grace does not hold the exit; health follows the database through an
//! outage and back; a call slower than the request timeout is ended by the server.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use verify_service::app::Gateway;
use verify_service::config::{self, Overrides, TwilioEnv};

use crate::harness::{Backend, Harness, eventually};

pub const VERIFY_SERVICE: &str = "verify.v1.VerifyService";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

pub async fn health_of(channel: &Channel, service: &str) -> Option<ServingStatus> {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status())
}

fn status_of(response: &HealthCheckResponse) -> ServingStatus {
    response.status()
}

/// The binary, with a `Health/Watch` stream open: SIGTERM turns the watched status
/// NOT_SERVING and the process exits within its shutdown grace, though the stream would
/// never end on its own.
#[tokio::test]
async fn sigterm_turns_health_not_serving_and_exits_within_the_grace_despite_a_watch() {
    const GRACE: Duration = Duration::from_secs(2);
    let grpc = free_port();
    let data = std::env::temp_dir().join(format!("vg-sigterm-{}", uuid::Uuid::new_v4()));
    let child = Command::new(env!("CARGO_BIN_EXE_verify-gateway"))
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--sandbox-addr", "127.0.0.1:0"])
        .args(["--webhooks-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data)
        .env_remove("TWILIO_ACCOUNT_SID")
        .env_remove("DATABASE_URL")
        .env(
            "VERIFY_SERVER__SHUTDOWN_GRACE_SECONDS",
            GRACE.as_secs().to_string(),
        )
        .env("VERIFY_LOG__FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let mut child = ExitOnDrop(child, data);

    let started = Instant::now();
    let channel = loop {
        let endpoint = Channel::from_shared(format!("http://127.0.0.1:{grpc}")).expect("uri");
        if let Ok(channel) = endpoint.connect().await {
            break channel;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest::default())
        .await
        .expect("watch opens")
        .into_inner();
    let first = watch
        .message()
        .await
        .expect("first status")
        .expect("a status");
    assert_eq!(status_of(&first), ServingStatus::Serving);
    // Everything the stream says until it ends.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(status)) = watch.message().await {
            let _ = seen_tx.send(status_of(&status));
        }
    });

    let terminated = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success(), "SIGTERM sent");
    let exit = loop {
        if let Some(status) = child.0.try_wait().expect("child state") {
            break status;
        }
        assert!(
            terminated.elapsed() < GRACE + Duration::from_secs(5),
            "still running {:?} after SIGTERM, with a grace of {GRACE:?}",
            terminated.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exits cleanly: {exit}");
    let mut statuses = Vec::new();
    while let Ok(status) = seen.try_recv() {
        statuses.push(status);
    }
    assert!(
        statuses.contains(&ServingStatus::NotServing),
        "the watch saw NOT_SERVING before the end: {statuses:?}"
    );
}

struct ExitOnDrop(std::process::Child, std::path::PathBuf);

impl Drop for ExitOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// A Twilio that takes every request and never answers, counting the requests.
async fn silent_twilio() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut counted_once = false;
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if !counted_once {
                        counted_once = true;
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), requests)
}

/// A call still waiting on Twilio when the grace runs out does not hold the shutdown: the
/// server cuts its connection and `run` returns.
#[tokio::test]
async fn a_call_still_running_after_the_grace_does_not_hold_the_shutdown() {
    let (twilio_url, requests) = silent_twilio().await;
    let twilio = TwilioEnv {
        account_sid: Some("AC00000000000000000000000000000001".into()),
        auth_token: Some("test-auth-token".into()),
        verify_service_sid: Some("VA00000000000000000000000000000001".into()),
        ..TwilioEnv::default()
    };
    let toml = format!(
        "[server]\nshutdown_grace_seconds = 1\nrequest_timeout_seconds = 300\n\
         [twilio]\nbase_url = \"{twilio_url}\"\ntimeout_ms = 120000\n\
         [keys]\nblind_index_key = \"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\"\n\
         encryption_keys = \"k1:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=\"\n"
    );
    let harness = Harness::start_against(Backend::Sqlite, &toml, &twilio).await;
    let client = harness.client.clone();
    let call = tokio::spawn(async move {
        let mut client = client;
        client
            .start_verification(proto::verify::v1::StartVerificationRequest {
                purpose: "login".into(),
                to: "+14155552671".into(),
                channel: proto::verify::v1::Channel::Sms.into(),
                ..Default::default()
            })
            .await
    });
    eventually(Duration::from_secs(10), "the start reaches Twilio", || {
        let requests = Arc::clone(&requests);
        async move { requests.load(Ordering::SeqCst) > 0 }
    })
    .await;

    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(6), harness.shutdown())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the gateway still runs {:?} after shutdown began, with a grace of 1 s",
                stopping.elapsed()
            )
        });
    let answer = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the call ends with its connection")
        .expect("join");
    assert!(answer.is_err(), "cut off, not answered: {answer:?}");
}

/// A TCP proxy to PostgreSQL the test can take down: down, it closes every connection it
/// forwards and holds new ones without an answer; up, it forwards again.
struct DatabaseProxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
}

impl DatabaseProxy {
    async fn start(upstream: SocketAddr) -> DatabaseProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (up, is_up) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut is_up = is_up.clone();
                tokio::spawn(async move {
                    if !*is_up.borrow_and_update() {
                        // Held without an answer until the proxy is up again, then dropped.
                        let _ = is_up.wait_for(|up| *up).await;
                        return;
                    }
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = is_up.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        DatabaseProxy { addr, up }
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// gRPC health and the embedded receiver's `/readyz` follow the database: NOT_SERVING and
/// 503 while it does not answer, SERVING and 200 again once it does.
#[tokio::test]
async fn health_follows_the_database_through_an_outage() {
    let direct = crate::harness::fresh_postgres_database().await;
    let mut url = url::Url::parse(&direct).expect("database URL");
    let upstream = tokio::net::lookup_host((
        url.host_str().expect("host").to_owned(),
        url.port().unwrap_or(5432),
    ))
    .await
    .expect("resolves")
    .next()
    .expect("an address");
    let proxy = DatabaseProxy::start(upstream).await;
    url.set_host(Some("127.0.0.1")).expect("host");
    url.set_port(Some(proxy.addr.port())).expect("port");

    let data_dir = std::env::temp_dir().join(format!("vg-health-{}", uuid::Uuid::new_v4()));
    let overrides = Overrides {
        grpc_addr: Some("127.0.0.1:0".parse().expect("addr")),
        sandbox_addr: Some("127.0.0.1:0".parse().expect("addr")),
        webhooks_addr: Some("127.0.0.1:0".parse().expect("addr")),
        data_dir: Some(data_dir.clone()),
        database_url: Some(url.to_string()),
        ..Overrides::default()
    };
    let settings = config::load_from_str(
        "[server]\ndatabase_ping_interval_ms = 200\ndatabase_ping_timeout_ms = 500",
        &overrides,
        &TwilioEnv::default(),
    )
    .expect("settings");
    let gateway = Gateway::bind(&settings).await.expect("gateway binds");
    let grpc = gateway.grpc_addr().expect("grpc addr");
    let readyz = format!(
        "http://{}/readyz",
        gateway.webhooks_addr().expect("the embedded receiver runs")
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gateway.run(async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{grpc}"))
        .expect("uri")
        .connect()
        .await
        .expect("connects");
    let http = reqwest::Client::new();
    let all = |want: ServingStatus, ready: u16| {
        let channel = channel.clone();
        let http = http.clone();
        let readyz = readyz.clone();
        async move {
            health_of(&channel, "").await == Some(want)
                && health_of(&channel, VERIFY_SERVICE).await == Some(want)
                && http
                    .get(&readyz)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == ready)
        }
    };

    eventually(Duration::from_secs(10), "SERVING and ready", || {
        all(ServingStatus::Serving, 200)
    })
    .await;
    proxy.set_up(false);
    eventually(
        Duration::from_secs(10),
        "NOT_SERVING and not ready while the database is away",
        || all(ServingStatus::NotServing, 503),
    )
    .await;
    proxy.set_up(true);
    eventually(
        Duration::from_secs(15),
        "SERVING and ready once the database is back",
        || all(ServingStatus::Serving, 200),
    )
    .await;

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("stops")
        .expect("join")
        .expect("the gateway ran cleanly");
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// A call slower than `server.request_timeout_seconds` is ended by the server rather than
/// left to hang: the sandbox's `slow` number answers after 5 s, the timeout is 1 s.
#[tokio::test]
async fn a_call_slower_than_the_request_timeout_is_ended_by_the_server() {
    let h = Harness::start_with(Backend::Sqlite, "[server]\nrequest_timeout_seconds = 1").await;
    let slow = h.scenario("slow").await;
    let began = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(20), h.start_sms(&slow))
        .await
        .expect("answered at all");
    let status = answer.expect_err("ended by the request timeout");
    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "ended by the 1 s timeout, not by the sandbox's 5 s answer: {:?}",
        began.elapsed()
    );
    h.shutdown().await;
}
