//! The distributed mode's fallback: the sandbox posts signed Verify Events to a webhook-ingest
//! server on PostgreSQL and RabbitMQ, which publishes them through its outbox; a
//! verify-service replica on the same database consumes them from RabbitMQ and falls back.
//! Every component is a real server on real PostgreSQL and RabbitMQ; they share this test's
//! process only for convenience.

use std::time::{Duration, Instant};

use base64::Engine;
use proto::verify::v1 as pb;
use secrecy::SecretString;
use tokio::sync::oneshot;

use crate::harness::fresh_postgres_database;
use crate::replicas::replica;

/// The distributed stack, also used by `trace_context` to follow a trace over RabbitMQ.
pub(crate) struct Stack {
    sandbox: String,
    pub(crate) client: pb::verify_service_client::VerifyServiceClient<tonic::transport::Channel>,
    ingest_base: String,
    http: reqwest::Client,
    stops: Vec<oneshot::Sender<()>>,
    replica: crate::replicas::Replica,
}

pub(crate) async fn stack() -> Stack {
    let database_url = fresh_postgres_database().await;
    let amqp_url = testkit::amqp_url().unwrap_or_else(|e| panic!("{e:#}"));
    // An exchange of its own, so concurrent tests on the broker never see each other's events.
    let exchange = format!("test.{}.events", uuid::Uuid::new_v4().simple());
    let mut stops = Vec::new();

    let connections = webhook_ingest::connect_to(
        &database_url,
        true,
        SecretString::from(amqp_url.clone()),
        &exchange,
    )
    .await
    .expect("webhook-ingest connects");
    let ingest = webhook_ingest::Ingest::bind(
        &webhook_ingest::Settings {
            addr: "127.0.0.1:0".parse().expect("addr"),
            public_base_url: None,
            auth_token: SecretString::from(twilio_sandbox::DEV_AUTH_TOKEN),
            trusted_proxies: Vec::new(),
        },
        connections,
    )
    .await
    .expect("webhook-ingest binds");
    let ingest_base = ingest.public_base_url().to_owned();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(ingest.run(async {
        let _ = stopped.await;
    }));
    stops.push(stop);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let sandbox = format!("http://{}", listener.local_addr().expect("addr"));
    let mut config = twilio_sandbox::SandboxConfig::dev();
    config.events_url = Some(
        url::Url::parse(&format!(
            "{ingest_base}{}",
            webhook_ingest::VERIFY_EVENTS_PATH
        ))
        .expect("events URL"),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(twilio_sandbox::serve(
        listener,
        twilio_sandbox::Sandbox::new(config),
        async {
            let _ = stopped.await;
        },
    ));
    stops.push(stop);

    let b64 = base64::engine::general_purpose::STANDARD;
    let extra = format!(
        "[bus]\namqp_url = \"{amqp_url}\"\nexchange = \"{exchange}\"\n\
         [purposes.login]\nfallback_after_seconds = 1\n\
         [keys]\nblind_index_key = \"{}\"\nencryption_keys = \"k1:{}\"\n",
        b64.encode([5u8; 32]),
        b64.encode([6u8; 32])
    );
    let replica = replica(&database_url, &sandbox, &extra).await;
    Stack {
        sandbox,
        client: replica.client.clone(),
        ingest_base,
        http: reqwest::Client::new(),
        stops,
        replica,
    }
}

impl Stack {
    pub(crate) async fn scenario(&self, name: &str) -> String {
        let all: serde_json::Value = self
            .http
            .get(format!("{}/sandbox/scenarios", self.sandbox))
            .send()
            .await
            .expect("scenarios")
            .json()
            .await
            .expect("json");
        all[name].as_str().expect("scenario").to_owned()
    }

    async fn start(&self, to: &str) -> pb::Verification {
        self.client
            .clone()
            .start_verification(pb::StartVerificationRequest {
                purpose: "login".into(),
                to: to.into(),
                channel: pb::Channel::Sms.into(),
                allow_fallback: true,
                ..Default::default()
            })
            .await
            .expect("start")
            .into_inner()
            .verification
            .expect("verification")
    }

    async fn get(&self, id: &str) -> pb::Verification {
        self.client
            .clone()
            .get_verification(pb::GetVerificationRequest { id: id.into() })
            .await
            .expect("get")
            .into_inner()
            .verification
            .expect("verification")
    }

    /// The channels the sandbox "sent" to `to`, oldest first, with their verification SIDs.
    async fn sent(&self, to: &str) -> Vec<(String, String)> {
        let url = url::Url::parse_with_params(
            &format!("{}/sandbox/messages", self.sandbox),
            [("to", to)],
        )
        .expect("url");
        let inbox: Vec<serde_json::Value> = self
            .http
            .get(url)
            .send()
            .await
            .expect("inbox")
            .json()
            .await
            .expect("json");
        inbox
            .iter()
            .rev()
            .map(|m| {
                (
                    m["channel"].as_str().unwrap_or_default().to_owned(),
                    m["verification_sid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect()
    }

    async fn calls(&self, to: &str) -> usize {
        self.sent(to)
            .await
            .iter()
            .filter(|(c, _)| c == "call")
            .count()
    }

    pub(crate) async fn wait_for_calls(
        &self,
        to: &str,
        n: usize,
        within: Duration,
    ) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < within {
            if self.calls(to).await >= n {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Posts an `undelivered` 30003 Verify Event for `verification_sid`, signed as Twilio
    /// signs (with the sandbox's auth token), and returns the HTTP status.
    async fn post_undelivered(&self, event_id: &str, verification_sid: &str) -> u16 {
        let body = serde_json::to_vec(&serde_json::json!([{
            "specversion": "1.0",
            "type": "com.twilio.accountsecurity.verify.message.undelivered",
            "source": format!("/v2/Services/{}/Verifications/{verification_sid}", twilio_sandbox::DEV_SERVICE_SID),
            "id": event_id,
            "datacontenttype": "application/json",
            "time": chrono::Utc::now().to_rfc3339(),
            "data": {
                "verification_sid": verification_sid,
                "channel": "sms",
                "message_status": "UNDELIVERED",
                "error_code": "30003",
            },
        }]))
        .expect("json");
        let url = format!(
            "{}{}?bodySHA256={}",
            self.ingest_base,
            webhook_ingest::VERIFY_EVENTS_PATH,
            twilio::webhook::body_sha256_hex(&body)
        );
        let signature = twilio::webhook::sign::<&str, &str>(
            twilio::webhook::Algorithm::HmacSha1,
            &SecretString::from(twilio_sandbox::DEV_AUTH_TOKEN),
            &url,
            &[],
        );
        self.http
            .post(&url)
            .header("X-Twilio-Signature", signature)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .expect("webhook answers")
            .status()
            .as_u16()
    }

    pub(crate) async fn shutdown(self) {
        self.replica.shutdown().await;
        for stop in self.stops {
            let _ = stop.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fallback_over_rabbitmq_and_postgres() {
    let s = stack().await;

    // An undelivered SMS becomes a call within 2 seconds.
    let undelivered = s.scenario("undelivered_30003").await;
    let v = s.start(&undelivered).await;
    let took = s
        .wait_for_calls(&undelivered, 1, Duration::from_secs(2))
        .await
        .expect("a call within 2 seconds");
    eprintln!("distributed undelivered_30003: call placed {took:?} after the start");
    let got = s.get(&v.id).await;
    assert_eq!(got.channel(), pb::Channel::Call);
    assert_eq!(got.fallback_reason, "undelivered_30003");

    // Silence becomes a call after fallback_after_seconds.
    let silent = s.scenario("silent").await;
    let v = s.start(&silent).await;
    let took = s
        .wait_for_calls(&silent, 1, Duration::from_secs(5))
        .await
        .expect("a call after the silence timeout");
    eprintln!("distributed silent: call placed {took:?} after the start");
    assert_eq!(s.get(&v.id).await.fallback_reason, "no_delivery_report");
    s.client
        .clone()
        .cancel_verification(pb::CancelVerificationRequest { id: v.id.clone() })
        .await
        .expect("cancel");

    // A delivered SMS never falls back.
    let delivered = s.scenario("delivered").await;
    let v = s.start(&delivered).await;
    assert_eq!(
        s.wait_for_calls(&delivered, 1, Duration::from_secs(3))
            .await,
        None
    );
    assert_eq!(s.get(&v.id).await.delivery_status, "delivered");

    // One failure reported again and again: the same event five times at once (stored
    // once by webhook-ingest) and three copies with other event ids (each published): one
    // call, for the first report, before the silence timeout.
    let v = s.start(&silent).await;
    let sid = loop {
        let sent = s.sent(&silent).await;
        if let Some((_, sid)) = sent.last().filter(|(c, _)| c == "sms") {
            break sid.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let same = format!("EZ{}", uuid::Uuid::new_v4().simple());
    let statuses = futures::future::join_all((0..8).map(|i| {
        let id = if i < 5 {
            same.clone()
        } else {
            format!("EZ{}", uuid::Uuid::new_v4().simple())
        };
        let s = &s;
        let sid = sid.clone();
        async move { s.post_undelivered(&id, &sid).await }
    }))
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let calls_before = 1; // the silent number's first verification fell back once
    s.wait_for_calls(&silent, calls_before + 1, Duration::from_secs(2))
        .await
        .expect("the reported failure falls back");
    // Let every copy (and the silence check) be consumed, then count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.calls(&silent).await,
        calls_before + 1,
        "exactly one fallback"
    );
    let got = s.get(&v.id).await;
    assert_eq!(got.fallback_reason, "undelivered_30003");
    assert_eq!(got.sends_left, 1);
    s.shutdown().await;
}
