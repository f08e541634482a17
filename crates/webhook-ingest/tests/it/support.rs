//! Test support: webhook-ingest started on port 0 over a PostgreSQL database of its own and a
//! RabbitMQ exchange of its own, a recording consumer subscribed on that exchange, requests
//! signed by Twilio's own twilio-python, and polling with a deadline.

// Shared with the `broker_outage` test binary, which uses only part of it.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use chrono::Utc;
use domain::events::{
    Delivery, Envelope, EventBus, EventHandler, EventKind, HandlerError, MessageId, Subscription,
};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use messaging::{Idempotent, IdempotentStats, MemoryDedupeStore, RabbitBus, RabbitConfig};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use webhook_ingest::{Connections, DEFAULT_LIMITS, Ingest, Limits, Settings};

/// The Auth Token the test servers check signatures with.
pub const AUTH_TOKEN: &str = "wi-test-auth-token-0123456789abcdef";

/// The event kind of the barrier messages [`Harness::barrier`] publishes.
const BARRIER: &str = "test.barrier";

/// The recording consumer's subscription; bound to the reports and to the barrier.
const RECORDER_QUEUE: &str = "recorder";

/// How long a single poll may wait, unless a test says otherwise.
pub const WITHIN: Duration = Duration::from_secs(20);

/// Settings for a server on a free loopback port that checks signatures against its own
/// address (the URL the test posts to), trusting no proxy.
pub fn settings() -> Settings {
    Settings {
        addr: "127.0.0.1:0".parse().expect("a socket address"),
        public_base_url: None,
        auth_token: SecretString::from(AUTH_TOKEN),
        trusted_proxies: Vec::new(),
    }
}

/// Waits until `probe` returns `Some`, trying every 50 ms; fails the test after `within`
/// with `what` and the last value seen (for the message).
pub async fn poll<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?} (last seen: {last})")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// An HTTP client for loopback that no proxy setting of the environment redirects.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("an HTTP client")
}

/// A status and the body read as JSON (`Value::Null` when it is not JSON).
pub async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("a readable body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub async fn get(url: &str) -> (u16, Value) {
    answer(http().get(url).send().await.expect("request answered")).await
}

/// What a recording consumer has seen: every delivery as it arrived, and the ones its
/// idempotent wrapper let through to the handler.
#[derive(Debug, Default)]
pub struct Seen {
    raw: Mutex<Vec<Delivery>>,
    handled: Mutex<Vec<Delivery>>,
    changed: Notify,
}

impl Seen {
    /// Every `delivery.reported` delivery, redeliveries included.
    pub fn raw_reports(&self) -> Vec<Delivery> {
        reports(&self.raw.lock().expect("not poisoned"))
    }

    /// The `delivery.reported` messages the consumer handled (each id at most once).
    pub fn handled_reports(&self) -> Vec<Delivery> {
        reports(&self.handled.lock().expect("not poisoned"))
    }

    fn saw(&self, id: MessageId) -> bool {
        self.raw
            .lock()
            .expect("not poisoned")
            .iter()
            .any(|d| d.envelope.message_id == id)
    }
}

/// Deliveries in a form fit for a failure message: id, attempt and payload as text.
pub fn describe(deliveries: &[Delivery]) -> String {
    deliveries
        .iter()
        .map(|d| {
            format!(
                "\n  {} {} (attempt {}): {}",
                d.envelope.kind,
                d.envelope.message_id,
                d.attempt,
                String::from_utf8_lossy(&d.envelope.payload)
            )
        })
        .collect()
}

fn reports(deliveries: &[Delivery]) -> Vec<Delivery> {
    deliveries
        .iter()
        .filter(|d| d.envelope.kind == domain::delivery::DELIVERY_REPORTED)
        .cloned()
        .collect()
}

/// Records each delivery, then hands it to the idempotent consumer.
#[derive(Debug)]
struct Tap {
    seen: Arc<Seen>,
    next: Arc<Idempotent>,
}

#[async_trait]
impl EventHandler for Tap {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        self.seen
            .raw
            .lock()
            .expect("not poisoned")
            .push(delivery.clone());
        let outcome = self.next.handle(delivery).await;
        self.seen.changed.notify_waiters();
        outcome
    }
}

/// The handler behind the dedupe: what a real consumer of the reports would run.
#[derive(Debug)]
struct Sink {
    seen: Arc<Seen>,
}

#[async_trait]
impl EventHandler for Sink {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        self.seen
            .handled
            .lock()
            .expect("not poisoned")
            .push(delivery.clone());
        Ok(())
    }
}

/// A running webhook-ingest and everything it was given, with the means to look at what it
/// did: the database through a pool of the test's own, the bus through the recorder.
#[derive(Debug)]
pub struct Harness {
    /// Where the server listens: `http://127.0.0.1:<port>`.
    pub base: String,
    /// The base URL signatures are checked against (see `Ingest::public_base_url`).
    pub public_base: String,
    /// The test's own pool on the server's database.
    pub pool: PgPool,
    /// The server's database handle (a clone sharing its pool), to see it closed.
    pub database: storage::Database,
    pub bus: Arc<RabbitBus>,
    pub seen: Arc<Seen>,
    consumer: Arc<Idempotent>,
    /// What the test created and must remove; taken by [`Harness::finish`], else removed
    /// when the harness is dropped (a failed test).
    leftovers: Option<Leftovers>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Harness {
    /// A server with [`settings`].
    pub async fn start() -> Harness {
        Harness::start_with(settings()).await
    }

    /// A server with `settings` and the default limits on clients.
    pub async fn start_with(settings: Settings) -> Harness {
        Harness::start_within(settings, DEFAULT_LIMITS).await
    }

    /// A migrated database of its own, a bus on an exchange of its own with the recorder
    /// subscribed (so every report is routable from the start), and the server running
    /// within `limits`.
    pub async fn start_within(settings: Settings, limits: Limits) -> Harness {
        let pg = testkit::PgDatabase::create("wi")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let database = storage::Database::open(&pg.url)
            .await
            .unwrap_or_else(|e| panic!("opening {}: {e}", pg.url));
        database.migrate().await.expect("migrations apply");
        let pool = PgPool::connect(&pg.url).await.expect("a test pool");

        let exchange = format!("test.wi.{}.events", uuid::Uuid::new_v4().simple());
        let mut config = RabbitConfig::new(SecretString::from(amqp_url()), exchange);
        config.connection_name = "webhook-ingest-tests".into();
        let bus = Arc::new(RabbitBus::connect(config).await.unwrap_or_else(|e| {
            panic!("RabbitMQ does not answer ({e}): {}", testkit::NOT_REACHABLE)
        }));
        let seen = Arc::new(Seen::default());
        let consumer = Arc::new(Idempotent::new(
            RECORDER_QUEUE,
            Arc::new(Sink {
                seen: Arc::clone(&seen),
            }),
            Arc::new(MemoryDedupeStore::new(10_000, Duration::from_secs(60))),
        ));
        let subscription = Subscription {
            queue: RECORDER_QUEUE.into(),
            bindings: vec![
                domain::delivery::DELIVERY_REPORTED.as_str().into(),
                BARRIER.into(),
            ],
            // One at a time, so deliveries reach the handler in queue order and a barrier
            // comes after everything published before it.
            prefetch: 1,
            max_attempts: 5,
            retry_delay: Duration::from_millis(200),
        };
        bus.subscribe(
            subscription.clone(),
            Arc::new(Tap {
                seen: Arc::clone(&seen),
                next: Arc::clone(&consumer),
            }),
        )
        .await
        .expect("the recorder subscribes");

        let connections =
            Connections::owned(database.clone(), messaging::Bus::rabbit(Arc::clone(&bus)));
        let ingest = Ingest::bind(&settings, connections)
            .await
            .expect("webhook-ingest binds")
            .with_limits(limits);
        let port = ingest.local_addr().expect("a local address").port();
        let base = format!("http://127.0.0.1:{port}");
        let public_base = ingest.public_base_url().to_owned();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ingest.run(async {
            let _ = stopped.await;
        }));
        let leftovers = Leftovers::new(&bus, &subscription, pg);
        Harness {
            base,
            public_base,
            pool,
            database,
            bus,
            seen,
            consumer,
            leftovers: Some(leftovers),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Drops the server's database under it (the test's pool goes too).
    pub async fn drop_database(&self) {
        if let Some(leftovers) = &self.leftovers {
            leftovers.database.drop_database().await;
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base)
    }

    pub fn consumer_stats(&self) -> IdempotentStats {
        self.consumer.stats()
    }

    /// POSTs a Verify Events body signed over `signed`.
    pub async fn post_events(&self, signed: &Signed, body: &str) -> (u16, Value) {
        let request = http()
            .post(self.url(&signed.path_and_query(&self.public_base)))
            .header("content-type", "application/json")
            .header("X-Twilio-Signature", &signed.signature)
            .body(body.to_owned());
        answer(request.send().await.expect("request answered")).await
    }

    /// Signs `body` with twilio-python as Twilio signs Verify Events to this server and
    /// POSTs it.
    pub async fn post_signed_events(&self, body: &str) -> (u16, Value) {
        let signed = sign_json(
            AUTH_TOKEN,
            &format!("{}{}", self.public_base, webhook_ingest::VERIFY_EVENTS_PATH),
            body,
        );
        self.post_events(&signed, body).await
    }

    pub async fn count(&self, table: Table) -> i64 {
        let sql = match table {
            Table::DeliveryReports => "SELECT count(*) FROM delivery_reports",
            Table::Outbox => "SELECT count(*) FROM outbox",
        };
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect("count rows")
    }

    /// Outbox rows not yet published.
    pub async fn unpublished(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&self.pool)
            .await
            .expect("count unpublished rows")
    }

    /// Waits until every outbox row is published.
    pub async fn all_published(&self, within: Duration) {
        poll("every outbox row published", within, || async {
            match self.unpublished().await {
                0 => Ok(()),
                n => Err(format!("{n} unpublished")),
            }
        })
        .await;
    }

    /// Every cell of both tables as text (the outbox payload decoded), for looking for what
    /// must not be stored.
    pub async fn all_cells(&self) -> String {
        let reports: Vec<String> = sqlx::query_scalar("SELECT r::text FROM delivery_reports r")
            .fetch_all(&self.pool)
            .await
            .expect("read delivery_reports");
        let outbox: Vec<String> =
            sqlx::query_scalar("SELECT o::text || convert_from(o.payload, 'UTF8') FROM outbox o")
                .fetch_all(&self.pool)
                .await
                .expect("read outbox");
        [reports, outbox].concat().join("\n")
    }

    /// Publishes a barrier message and waits until the recorder got it. The recorder takes
    /// one message at a time in queue order, so after this every message published before
    /// the barrier has reached it, and a second copy of one would have too.
    pub async fn barrier(&self) {
        let id = MessageId::from_uuid(uuid::Uuid::now_v7());
        let envelope = Envelope::new(
            id,
            EventKind::parse(BARRIER).expect("a valid kind"),
            1,
            Utc::now(),
            b"{}".to_vec(),
        );
        poll("the barrier published", WITHIN, || async {
            self.bus.publish(&envelope).await.map_err(|e| e.to_string())
        })
        .await;
        let deadline = Instant::now() + WITHIN;
        loop {
            let changed = self.seen.changed.notified();
            if self.seen.saw(id) {
                return;
            }
            assert!(Instant::now() < deadline, "the barrier did not arrive");
            let _ = tokio::time::timeout(Duration::from_millis(100), changed).await;
        }
    }

    /// Waits until the consumer handled `n` reports, then puts up a barrier so any copy
    /// beyond them would be seen too, and returns the handled reports.
    pub async fn handled_reports(&self, n: usize, within: Duration) -> Vec<Delivery> {
        poll("reports handled", within, || async {
            match self.seen.handled_reports().len() {
                m if m >= n => Ok(()),
                m => Err(format!("{m} of {n}")),
            }
        })
        .await;
        self.barrier().await;
        self.seen.handled_reports()
    }

    /// Stops the server and checks it stopped cleanly, then removes the exchange, queues and
    /// database of the test.
    pub async fn finish(mut self) {
        self.stop_server().await;
        self.cleanup().await;
    }

    /// Stops the server gracefully; it must return promptly and without error.
    pub async fn stop_server(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("webhook-ingest stops within 30 s")
                .expect("the server task joins")
                .expect("webhook-ingest ran without error");
        }
    }

    async fn cleanup(mut self) {
        // The server closed the bus; closing again is harmless.
        self.bus.close().await;
        self.pool.close().await;
        let leftovers = self.leftovers.take().expect("cleaned up once");
        if let Err(error) = leftovers.remove().await {
            panic!("cleaning up after the test: {error:#}");
        }
    }
}

impl Drop for Harness {
    /// A test that failed before [`Harness::finish`] still removes its exchanges, queues
    /// and database, best effort. Its runtime is unwinding, so on a thread of its own.
    fn drop(&mut self) {
        let Some(leftovers) = self.leftovers.take() else {
            return;
        };
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(leftovers.remove())
        });
        match cleanup.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("could not clean up after a failed test: {error:#}"),
            Err(_) => eprintln!("cleaning up after a failed test panicked"),
        }
    }
}

/// The broker objects and the database a harness created.
#[derive(Debug)]
struct Leftovers {
    queues: Vec<String>,
    exchanges: Vec<String>,
    database: testkit::PgDatabase,
}

impl Leftovers {
    /// The recorder's queues and the bus's exchanges, named as the bus names them.
    fn new(bus: &RabbitBus, subscription: &Subscription, database: testkit::PgDatabase) -> Self {
        let topology = bus.topology();
        Leftovers {
            queues: vec![
                topology.queue(&subscription.queue),
                topology.retry_queue(&subscription.queue, subscription.retry_delay),
                topology.dead_letter_queue(&subscription.queue),
            ],
            exchanges: vec![
                topology.exchange().to_owned(),
                topology.dead_letter_exchange(),
                topology.delay_exchange(),
            ],
            database,
        }
    }

    async fn remove(self) -> anyhow::Result<()> {
        // The database first: it goes even when the broker does not answer.
        self.database.drop_database().await;
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .with_context(|| format!("RabbitMQ does not answer: {}", testkit::NOT_REACHABLE))?;
        let channel = connection.create_channel().await?;
        for queue in &self.queues {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .with_context(|| format!("deleting queue {queue}"))?;
        }
        for exchange in &self.exchanges {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .with_context(|| format!("deleting exchange {exchange}"))?;
        }
        connection.close(200, "test done".into()).await?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Table {
    DeliveryReports,
    Outbox,
}

pub fn amqp_url() -> String {
    testkit::amqp_url().unwrap_or_else(|e| panic!("{e:#}"))
}

/// A URL and the `X-Twilio-Signature` twilio-python computed for a request to it.
#[derive(Debug, Clone, Deserialize)]
pub struct Signed {
    /// The URL signed: for a JSON body, the given URL with `bodySHA256` appended.
    pub url: String,
    pub signature: String,
}

impl Signed {
    /// The path and query of the signed URL, which starts with `public_base`.
    pub fn path_and_query(&self, public_base: &str) -> String {
        self.url
            .strip_prefix(public_base)
            .unwrap_or_else(|| panic!("`{}` is not under `{public_base}`", self.url))
            .to_owned()
    }
}

#[derive(Debug, Serialize)]
struct SignRequest<'a> {
    token: &'a str,
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a [(String, String)]>,
}

/// Signs as Twilio does, with the official twilio-python `RequestValidator`, and checks that
/// its `validate` accepts the result: a JSON body gets `bodySHA256=<compute_hash(body)>`
/// appended to the URL and the signature covers the URL alone; form params are signed as
/// `compute_signature(url, params)` (one value per name, as Twilio's callbacks have).
const SIGN_PY: &str = r#"
import json, sys
from twilio.request_validator import RequestValidator
out = []
for req in json.load(sys.stdin):
    v = RequestValidator(req["token"])
    url = req["url"]
    if "body" in req:
        body = req["body"]
        url += ("&" if "?" in url else "?") + "bodySHA256=" + v.compute_hash(body)
        sig = v.compute_signature(url, {})
        assert v.validate(url, body, sig), "twilio-python refuses its own JSON signature"
    else:
        params = dict(req["params"])
        assert len(params) == len(req["params"]), "one value per name"
        sig = v.compute_signature(url, params)
        assert v.validate(url, params, sig), "twilio-python refuses its own form signature"
    out.append({"url": url, "signature": sig})
json.dump(out, sys.stdout)
"#;

/// The Python of the venv `cargo xtask tools` creates, with twilio 9.13.0 in it.
fn python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask tools` (it installs twilio-python, which signs the \
         test webhooks)",
        python.display()
    );
    python
}

fn run_python(requests: &[SignRequest<'_>]) -> Vec<Signed> {
    let mut child = Command::new(python())
        .args(["-c", SIGN_PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    let input = serde_json::to_vec(requests).expect("JSON");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &input)
        .expect("write to python");
    let output = child.wait_with_output().expect("python runs");
    assert!(
        output.status.success(),
        "twilio-python signing failed (run `cargo xtask tools` if twilio is missing): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("python prints the signatures")
}

/// Signs a JSON body posted to `url` (without `bodySHA256`) with `token`.
pub fn sign_json(token: &str, url: &str, body: &str) -> Signed {
    sign_json_all(token, url, &[body])
        .pop()
        .expect("one signature")
}

/// Signs several JSON bodies posted to `url` in one run of Python.
pub fn sign_json_all(token: &str, url: &str, bodies: &[&str]) -> Vec<Signed> {
    let requests: Vec<_> = bodies
        .iter()
        .map(|body| SignRequest {
            token,
            url,
            body: Some(body),
            params: None,
        })
        .collect();
    run_python(&requests)
}

/// Signs a form post of `params` to `url` with `token`.
pub fn sign_form(token: &str, url: &str, params: &[(String, String)]) -> Signed {
    run_python(&[SignRequest {
        token,
        url,
        body: None,
        params: Some(params),
    }])
    .pop()
    .expect("one signature")
}

/// The E.164 destination every test body carries (in `to`), which must be stored nowhere.
pub const DESTINATION: &str = "+14155550108";

/// A Verify message status CloudEvent with the destination in it.
pub fn message_event(id: &str, verification: &str, status: &str, error_code: &str) -> Value {
    serde_json::json!({
        "specversion": "1.0",
        "type": format!("com.twilio.accountsecurity.verify.message.{}", status.to_lowercase()),
        "source": format!("/v2/Services/VA0/Verifications/{verification}"),
        "id": id,
        "dataschema": "https://events-schemas.twilio.com/AccountSecurity.MessageStatusEvent/2",
        "datacontenttype": "application/json",
        "time": "2026-11-26T09:59:58.120Z",
        "data": {
            "created_at": "2026-11-26T09:59:58Z",
            "account_sid": "AC00000000000000000000000000000000",
            "service_sid": "VA00000000000000000000000000000000",
            "verification_sid": verification,
            "attempt_sid": format!("VL{verification}"),
            "error_code": error_code,
            "channel": "sms",
            "message_status": status,
            "has_fallback": false,
            "is_fallback": false,
            "mcc": "310",
            "mnc": "260",
            "to": DESTINATION,
            "number_segments": 1
        }
    })
}
