//! The `webhook-ingest` binary killed (SIGKILL) between storing a report and publishing it:
//! the broker is out of its reach (a gate of the test's own between the process and
//! RabbitMQ, so the shared broker stays up for every other test), the signed report is
//! stored with its outbox row, the process dies, and a new process on the same database
//! publishes the report once the broker is reachable again: exactly one message on the bus.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;
use sqlx::Connection as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use webhook_ingest::VERIFY_EVENTS_PATH;

use crate::support::{AUTH_TOKEN, WITHIN, amqp_url, answer, http, message_event, poll, sign_json};

/// A TCP gate to RabbitMQ: open, it forwards; closed, it cuts every connection it carries
/// and drops new ones at once, as a broker that is down refuses them.
struct BrokerGate {
    addr: SocketAddr,
    open: watch::Sender<bool>,
}

impl BrokerGate {
    async fn start(broker: SocketAddr) -> BrokerGate {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (open, is_open) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut is_open = is_open.clone();
                if !*is_open.borrow_and_update() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(broker).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = is_open.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        BrokerGate { addr, open }
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

/// The process, killed when dropped.
struct Ingest(Child);

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary on `database_url`, publishing through `amqp` to `exchange`, serving on `port`.
fn spawn_ingest(database_url: &str, amqp: &str, exchange: &str, port: u16) -> Ingest {
    let child = Command::new(env!("CARGO_BIN_EXE_webhook-ingest"))
        .env("DATABASE_URL", database_url)
        .env("AMQP_URL", amqp)
        .env("AMQP_EXCHANGE", exchange)
        .env("WEBHOOK_INGEST_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "WEBHOOK_PUBLIC_BASE_URL",
            format!("http://127.0.0.1:{port}"),
        )
        .env("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
        .env("VERIFY_LOG__FILTER", "warn")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("webhook-ingest starts");
    Ingest(child)
}

/// What the outbox holds: each row's message id, failed attempts and whether it was
/// published; read with plain SQL on either backend.
async fn outbox(database_url: &str) -> Vec<(String, i64, bool)> {
    const SQL: &str = "SELECT message_id, attempts, published_at FROM outbox ORDER BY id";
    let rows: Vec<(String, i64, Option<i64>)> = if database_url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(database_url)
            .await
            .expect("the database opens");
        sqlx::query_as(SQL)
            .fetch_all(&mut conn)
            .await
            .expect("outbox")
    } else {
        let mut conn = sqlx::SqliteConnection::connect(database_url)
            .await
            .expect("the database opens");
        sqlx::query_as(SQL)
            .fetch_all(&mut conn)
            .await
            .expect("outbox")
    };
    rows.into_iter()
        .map(|(id, attempts, published)| (id, attempts, published.is_some()))
        .collect()
}

/// Waits until `/readyz` reports the broker as `want` says.
async fn broker_is(base: &str, up: bool) {
    let readyz = format!("{base}/readyz");
    poll(&format!("/readyz to say broker up = {up}"), WITHIN, || {
        let readyz = readyz.clone();
        async move {
            // Refused until the process listens.
            let response = http()
                .get(&readyz)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            match answer(response).await {
                (200, body) if (body["broker"] == "ok") == up => Ok(()),
                (status, body) => Err(format!("{status} {body}")),
            }
        }
    })
    .await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_stored_before_a_kill_is_published_exactly_once_after_a_restart_on_postgres() {
    let database = testkit::PgDatabase::create("wikill")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    killed_between_storing_and_publishing(&database.url).await;
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_stored_before_a_kill_is_published_exactly_once_after_a_restart_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("wi-kill-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a data directory");
    let url = format!("sqlite://{}?mode=rwc", dir.join("webhooks.db").display());
    killed_between_storing_and_publishing(&url).await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn killed_between_storing_and_publishing(database_url: &str) {
    let broker_url = url::Url::parse(&amqp_url()).expect("AMQP_URL is a URL");
    let broker = tokio::net::lookup_host((
        broker_url.host_str().expect("a host").to_owned(),
        broker_url.port().unwrap_or(5672),
    ))
    .await
    .expect("the broker's host resolves")
    .next()
    .expect("an address");
    let gate = BrokerGate::start(broker).await;
    let mut gated = broker_url.clone();
    gated.set_host(Some("127.0.0.1")).expect("host");
    gated.set_port(Some(gate.addr.port())).expect("port");

    // The queue the report must arrive in, bound before anything is published; declared
    // straight on the broker, past the gate.
    let exchange = format!("test.wikill.{}.events", uuid::Uuid::new_v4().simple());
    let queue = format!("{exchange}.tap");
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ does not answer ({e}): {}", testkit::NOT_REACHABLE));
    let channel = connection.create_channel().await.expect("a channel");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the exchange");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("the queue");
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            domain::delivery::DELIVERY_REPORTED.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("the binding");
    let in_queue = || async {
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the queue is there")
            .message_count()
    };

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let first = spawn_ingest(database_url, gated.as_str(), &exchange, port);
    broker_is(&base, true).await;
    gate.set_open(false);
    broker_is(&base, false).await;

    let url = format!("{base}{VERIFY_EVENTS_PATH}");
    let body = json!([message_event(
        "EZkill0001",
        "VEkill0001",
        "UNDELIVERED",
        "30003"
    )])
    .to_string();
    let signed = sign_json(AUTH_TOKEN, &url, &body);
    let (status, stored) = answer(
        http()
            .post(&signed.url)
            .header("content-type", "application/json")
            .header("X-Twilio-Signature", &signed.signature)
            .body(body)
            .send()
            .await
            .expect("answered"),
    )
    .await;
    assert_eq!((status, &stored["stored"]), (200, &json!(1)), "{stored}");
    // The relay has tried and failed: the report waits in the outbox.
    let message_id = poll("a failed publishing attempt", WITHIN, || async {
        match outbox(database_url).await.as_slice() {
            [(id, attempts, false)] if *attempts >= 1 => Ok(id.clone()),
            rows => Err(format!("{rows:?}")),
        }
    })
    .await;

    drop(first); // SIGKILL: no shutdown, no last publish.
    assert!(
        matches!(outbox(database_url).await.as_slice(), [(_, _, false)]),
        "unpublished after the kill"
    );
    assert_eq!(in_queue().await, 0, "nothing reached the bus");

    gate.set_open(true);
    let second = spawn_ingest(database_url, gated.as_str(), &exchange, port);
    // A claim the killed relay held ends with its lease (30 s); otherwise it goes at once.
    poll("the report published", Duration::from_secs(45), || async {
        match outbox(database_url).await.as_slice() {
            [(_, _, true)] => Ok(()),
            rows => Err(format!("{rows:?}")),
        }
    })
    .await;
    // Published with confirms before it is marked: it is in the queue now.
    assert_eq!(in_queue().await, 1, "one message on the bus");
    let message = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("the message");
    assert_eq!(
        message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str()),
        Some(message_id.as_str()),
        "the outbox row's message"
    );
    assert!(
        String::from_utf8_lossy(&message.delivery.data).contains("VEkill0001"),
        "the report's verification"
    );

    // The second process stops cleanly and publishes nothing more.
    let kill = Command::new("kill")
        .args(["-TERM", &second.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    let mut second = second;
    poll("webhook-ingest to exit on SIGTERM", WITHIN, || {
        let exited = second.0.try_wait().expect("child state");
        async move { exited.map(|_| ()).ok_or_else(|| "running".to_owned()) }
    })
    .await;
    assert_eq!(in_queue().await, 0, "exactly once");
    assert!(matches!(
        outbox(database_url).await.as_slice(),
        [(_, _, true)]
    ));

    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("queue deleted");
    for name in [
        exchange.clone(),
        format!("{exchange}.dead"),
        format!("{exchange}.delay"),
    ] {
        channel
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .expect("exchange deleted");
    }
    connection
        .close(200, "test done".into())
        .await
        .expect("closes");
}
