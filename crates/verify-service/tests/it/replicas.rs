//! Two verify-service instances on one PostgreSQL database behave as one service: state that
//! must hold across replicas lives in the database, not in process memory.

use std::sync::Arc;

use base64::Engine;
use proto::verify::v1 as pb;
use proto::verify::v1::verify_service_client::VerifyServiceClient;
use tokio::sync::oneshot;
use tonic::Code;
use verify_service::app::Gateway;
use verify_service::config::{self, Overrides, TwilioEnv};

use crate::harness::fresh_postgres_database;

pub struct Replica {
    pub client: VerifyServiceClient<tonic::transport::Channel>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Its data directory, removed once it stopped.
    data_dir: std::path::PathBuf,
}

impl Replica {
    /// Stops it and waits until in-flight work is done and its connections are closed.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("replica task")
            .expect("replica ran cleanly");
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Starts a sandbox of its own on a free port; returns its base URL and its stop switch.
pub async fn standalone_sandbox() -> (String, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let sandbox = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(twilio_sandbox::serve(
        listener,
        twilio_sandbox::Sandbox::new(twilio_sandbox::SandboxConfig::dev()),
        async {
            let _ = stopped.await;
        },
    ));
    (sandbox, stop)
}

/// Starts a gateway on `database_url` that sends to the sandbox at `sandbox` (not its own).
pub async fn replica(database_url: &str, sandbox: &str, extra_toml: &str) -> Replica {
    let toml = format!(
        "[sandbox]\nmode = \"off\"\n[twilio]\nbase_url = \"{sandbox}\"\nmax_retries = 0\n{extra_toml}"
    );
    let env = TwilioEnv {
        account_sid: Some(twilio_sandbox::DEV_ACCOUNT_SID.into()),
        auth_token: Some(twilio_sandbox::DEV_AUTH_TOKEN.into()),
        verify_service_sid: Some(twilio_sandbox::DEV_SERVICE_SID.into()),
        ..TwilioEnv::default()
    };
    let data_dir = std::env::temp_dir().join(format!("vg-rep-{}", uuid::Uuid::new_v4()));
    let overrides = Overrides {
        grpc_addr: Some("127.0.0.1:0".parse().expect("addr")),
        webhooks_addr: Some("127.0.0.1:0".parse().expect("addr")),
        database_url: Some(database_url.to_owned()),
        data_dir: Some(data_dir.clone()),
        ..Overrides::default()
    };
    let settings = config::load_from_str(&toml, &overrides, &env).expect("settings");
    let gateway = Gateway::bind(&settings).await.expect("replica binds");
    assert!(
        gateway.sandbox_addr().is_none(),
        "replicas share one sandbox"
    );
    let addr = gateway.grpc_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(gateway.run(async {
        let _ = stopped.await;
    }));
    Replica {
        client: VerifyServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect"),
        stop,
        task,
        data_dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_send_once_for_one_idempotency_key() {
    let (sandbox, stop_sandbox) = standalone_sandbox().await;

    let b64 = base64::engine::general_purpose::STANDARD;
    let keys = format!(
        "[keys]\nblind_index_key = \"{}\"\nencryption_keys = \"k1:{}\"\n",
        b64.encode([7u8; 32]),
        b64.encode([9u8; 32])
    );
    let database_url = fresh_postgres_database().await;
    let a = replica(&database_url, &sandbox, &keys).await;
    let b = replica(&database_url, &sandbox, &keys).await;

    let clients = Arc::new([a.client.clone(), b.client.clone()]);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut client = clients[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            client
                .start_verification(pb::StartVerificationRequest {
                    purpose: "login".into(),
                    to: "+14155552680".into(),
                    channel: pb::Channel::Sms.into(),
                    idempotency_key: "signup-7".into(),
                    ..Default::default()
                })
                .await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut in_progress = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(r) => {
                ids.insert(r.into_inner().verification.expect("v").id);
            }
            Err(s) if s.code() == Code::Aborted => in_progress += 1,
            Err(s) => panic!("unexpected error: {s:?}"),
        }
    }
    assert_eq!(
        ids.len(),
        1,
        "every answer names the same verification: {ids:?}"
    );

    let inbox: Vec<serde_json::Value> =
        reqwest::get(format!("{sandbox}/sandbox/messages?to=%2B14155552680"))
            .await
            .expect("inbox")
            .json()
            .await
            .expect("json");
    assert_eq!(
        inbox.len(),
        1,
        "exactly one request reached the sandbox ({in_progress} callers were told to retry)"
    );

    // Replica B answers for what replica A recorded, and a check on B approves it.
    let id = ids.into_iter().next().expect("one id");
    let code = inbox[0]["code"].as_str().expect("code").to_owned();
    let mut b_client = b.client.clone();
    let checked = b_client
        .check_verification(pb::CheckVerificationRequest { id, code })
        .await
        .expect("check on the other replica")
        .into_inner();
    assert!(checked.valid);
    a.shutdown().await;
    b.shutdown().await;
    let _ = stop_sandbox.send(());
}

/// The acceptance case of the shared limiter: a per-destination limit of 3, ten concurrent
/// starts spread over two replicas on one database, no idempotency key: three sends reach
/// the sandbox and seven callers are refused with the limit that refused them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_enforce_one_destination_limit() {
    let (sandbox, stop_sandbox) = standalone_sandbox().await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let toml = format!(
        "[keys]\nblind_index_key = \"{}\"\nencryption_keys = \"k1:{}\"\n\
         [rate_limits]\nsend_per_destination = \"3/10m\"\n",
        b64.encode([7u8; 32]),
        b64.encode([9u8; 32])
    );
    let database_url = fresh_postgres_database().await;
    let a = replica(&database_url, &sandbox, &toml).await;
    let b = replica(&database_url, &sandbox, &toml).await;
    let to = "+14155552682";

    let clients = [a.client.clone(), b.client.clone()];
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut client = clients[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            client
                .start_verification(pb::StartVerificationRequest {
                    purpose: "login".into(),
                    to: to.into(),
                    channel: pb::Channel::Sms.into(),
                    ..Default::default()
                })
                .await
        }));
    }
    let (mut sent, mut limited) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => sent += 1,
            Err(s) if s.code() == Code::ResourceExhausted => {
                use tonic_types::StatusExt;
                let quota = s.get_details_quota_failure().expect("QuotaFailure");
                assert_eq!(quota.violations[0].subject, "send_per_destination");
                limited += 1;
            }
            Err(s) => panic!("unexpected error: {s:?}"),
        }
    }
    let inbox: Vec<serde_json::Value> =
        reqwest::get(format!("{sandbox}/sandbox/messages?to=%2B14155552682"))
            .await
            .expect("inbox")
            .json()
            .await
            .expect("json");
    assert_eq!(
        (sent, limited),
        (3, 7),
        "three starts pass the shared limit"
    );
    assert_eq!(inbox.len(), 3, "three sends reached the sandbox");
    a.shutdown().await;
    b.shutdown().await;
    let _ = stop_sandbox.send(());
}
