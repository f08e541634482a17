//! Tracing across the hops. A caller starts a verification with a `traceparent`; the SMS is
//! undelivered (or never reported), the report crosses webhook-ingest, its outbox and the
//! bus (in process, or RabbitMQ), and the consumer falls back to a call. The spans the
//! gateway exported (through telemetry's real OpenTelemetry layer, into an in-memory
//! exporter, see `redaction::capture_logs`) must show one trace: the caller's span -> the
//! gRPC request -> `verify.start` -> the Twilio request, and in the same trace
//! `verify.delivery` (or `verify.silence`) -> `verify.fallback` -> the Twilio request of the
//! call, linked to the trace of the message that triggered it.

use std::time::{Duration, Instant};

use opentelemetry_sdk::trace::SpanData;
use proto::verify::v1 as pb;
use proto::verify::v1::verify_service_client::VerifyServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::harness::{Backend, Harness};
use crate::redaction::spans;

// Tests of this binary run at once and export into one exporter: each has its own trace.
const SQLITE_TRACE: &str = "5b8aa5a2d2c872e8321cf37308d69df2";
const POSTGRES_TRACE: &str = "7c1f0e5d4b3a29181706f5e4d3c2b1a0";
const RABBIT_FAILURE_TRACE: &str = "0123456789abcdef0123456789abcdef";
const RABBIT_SILENCE_TRACE: &str = "fedcba9876543210fedcba9876543210";
/// The caller's span, the remote parent of the gateway's first span.
const CALLER_SPAN: &str = "051581bf3cb55c13";
/// How a root span's parent id prints.
const NO_PARENT: &str = "0000000000000000";

#[tokio::test]
async fn one_trace_from_start_to_fallback_on_sqlite() {
    embedded(Backend::Sqlite, SQLITE_TRACE).await;
}

#[tokio::test]
async fn one_trace_from_start_to_fallback_on_postgres() {
    embedded(Backend::Postgres, POSTGRES_TRACE).await;
}

/// The embedded gateway: webhook receiver and in-process bus in the gateway's process.
async fn embedded(backend: Backend, trace: &str) {
    let h = Harness::start_on(backend).await;
    let to = h.scenario("undelivered_30003").await;
    let v = start_traced(&h.client, &to, trace).await;
    let all = spans_with_fallback(trace).await;
    let start = started(&all, trace);

    // The start's context is stored with the verification (trace and span id only)...
    assert_eq!(
        stored_trace_parent(&h, &v.id).await,
        Some(format!("00-{trace}-{}-01", id_of(start)))
    );
    // ...so the consumer's work joins the start's trace, linked to the webhook request.
    fell_back_after_the_webhook(&all, trace, start);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_from_start_to_fallback_over_rabbitmq() {
    crate::redaction::capture_logs();
    let s = crate::distributed::stack().await;

    // A failure report: webhook-ingest's outbox row and the AMQP message carry the webhook
    // request's `traceparent`; the consumer joins the start's trace and links to it.
    let to = s.scenario("undelivered_30003").await;
    start_traced(&s.client, &to, RABBIT_FAILURE_TRACE).await;
    let all = spans_with_fallback(RABBIT_FAILURE_TRACE).await;
    let start = started(&all, RABBIT_FAILURE_TRACE);
    let webhook = fell_back_after_the_webhook(&all, RABBIT_FAILURE_TRACE, start);
    let relay = named(&all, &trace_of(webhook), "webhook.relay")
        .into_iter()
        .find(|s| parent_of(s) == id_of(webhook))
        .expect("a relay span in the webhook's trace");
    assert!(
        named(&all, &trace_of(webhook), "messaging.publish")
            .iter()
            .any(|s| parent_of(s) == id_of(relay)),
        "the publish to RabbitMQ runs in the webhook's trace"
    );

    // Silence: the delayed check travels through RabbitMQ's delay queue with the start's
    // `traceparent`; the check and its fallback are in the start's trace, linked to the span
    // that scheduled it (the start itself).
    let to = s.scenario("silent").await;
    start_traced(&s.client, &to, RABBIT_SILENCE_TRACE).await;
    let all = spans_with_fallback(RABBIT_SILENCE_TRACE).await;
    let start = started(&all, RABBIT_SILENCE_TRACE);
    let fallback = only(&all, RABBIT_SILENCE_TRACE, "verify.fallback");
    let silence = named(&all, RABBIT_SILENCE_TRACE, "verify.silence")
        .into_iter()
        .find(|s| id_of(s) == parent_of(fallback))
        .expect("verify.fallback is a child of a verify.silence");
    assert_eq!(parent_of(silence), id_of(start), "the stored start context");
    assert_eq!(
        linked(silence),
        [(RABBIT_SILENCE_TRACE.to_owned(), id_of(start))],
        "the check's envelope carried the start's traceparent"
    );
    assert_eq!(linked(fallback), linked(silence));
    s.shutdown().await;
}

/// Starts an SMS verification with fallback for `to`, as a caller in `trace` would.
async fn start_traced(
    client: &VerifyServiceClient<Channel>,
    to: &str,
    trace: &str,
) -> pb::Verification {
    let mut request = tonic::Request::new(pb::StartVerificationRequest {
        purpose: "login".into(),
        to: to.into(),
        channel: pb::Channel::Sms.into(),
        allow_fallback: true,
        ..Default::default()
    });
    let traceparent = format!("00-{trace}-{CALLER_SPAN}-01");
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(traceparent.as_str()).expect("ASCII"),
    );
    client
        .clone()
        .start_verification(request)
        .await
        .expect("start")
        .into_inner()
        .verification
        .expect("verification")
}

/// The start's spans: the gRPC request continues the caller's span, `verify.start` runs in
/// it, and the SMS's Twilio request in that. Returns `verify.start`.
fn started<'a>(all: &'a [SpanData], trace: &str) -> &'a SpanData {
    let server = only(all, trace, "verify.v1.VerifyService/StartVerification");
    assert_eq!(
        parent_of(server),
        CALLER_SPAN,
        "the caller's span is the parent"
    );
    assert!(server.parent_span_is_remote);
    let start = only(all, trace, "verify.start");
    assert_eq!(parent_of(start), id_of(server));
    let requests = named(all, trace, "twilio.create_verification");
    assert_eq!(requests.len(), 2, "the SMS and the call");
    assert!(
        requests.iter().any(|s| parent_of(s) == id_of(start)),
        "the SMS request is a child of verify.start"
    );
    start
}

/// The fallback after a failure report: `verify.delivery` is a child of `start`,
/// `verify.fallback` of `verify.delivery`, the call's Twilio request of the fallback; both
/// consumer spans link to the webhook request that brought the report, a root of its own
/// trace. Returns the webhook request's span.
fn fell_back_after_the_webhook<'a>(
    all: &'a [SpanData],
    trace: &str,
    start: &SpanData,
) -> &'a SpanData {
    let fallback = only(all, trace, "verify.fallback");
    let delivery = named(all, trace, "verify.delivery")
        .into_iter()
        .find(|s| id_of(s) == parent_of(fallback))
        .expect("verify.fallback is a child of a verify.delivery");
    assert_eq!(
        parent_of(delivery),
        id_of(start),
        "the consumer's span continues the stored start context"
    );
    assert!(
        named(all, trace, "twilio.create_verification")
            .iter()
            .any(|s| parent_of(s) == id_of(fallback)),
        "the call's request is a child of verify.fallback"
    );
    let links = linked(fallback);
    let [(link_trace, link_span)] = links.as_slice() else {
        panic!("one link expected: {links:?}");
    };
    assert_ne!(link_trace, trace, "the webhook has its own trace");
    assert_eq!(linked(delivery), links, "verify.delivery has the same link");
    let webhook = all
        .iter()
        .find(|s| {
            s.name == "webhook.verify_events"
                && &trace_of(s) == link_trace
                && &id_of(s) == link_span
        })
        .expect("the link points at a webhook request span");
    assert_eq!(
        parent_of(webhook),
        NO_PARENT,
        "the webhook request starts its trace"
    );
    webhook
}

/// Polls until the exported spans hold a `verify.fallback` of `trace`, a Twilio request
/// below it and the span it runs in (spans are exported as they end: the request's first,
/// then the fallback's, then its parent's, the consumer span that encloses it).
async fn spans_with_fallback(trace: &str) -> Vec<SpanData> {
    let started = Instant::now();
    loop {
        let all = spans();
        if let [fallback] = named(&all, trace, "verify.fallback").as_slice() {
            let (id, parent) = (id_of(fallback), parent_of(fallback));
            let request_ended = named(&all, trace, "twilio.create_verification")
                .iter()
                .any(|s| parent_of(s) == id);
            let parent_ended = all.iter().any(|s| id_of(s) == parent);
            if request_ended && parent_ended {
                return all;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no finished verify.fallback span in trace {trace}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn trace_of(span: &SpanData) -> String {
    span.span_context.trace_id().to_string()
}

fn id_of(span: &SpanData) -> String {
    span.span_context.span_id().to_string()
}

fn parent_of(span: &SpanData) -> String {
    span.parent_span_id.to_string()
}

/// The trace and span ids `span` links to.
fn linked(span: &SpanData) -> Vec<(String, String)> {
    span.links
        .iter()
        .map(|l| {
            let cx = &l.span_context;
            (cx.trace_id().to_string(), cx.span_id().to_string())
        })
        .collect()
}

/// The spans of `trace` named `name`.
fn named<'a>(all: &'a [SpanData], trace: &str, name: &str) -> Vec<&'a SpanData> {
    all.iter()
        .filter(|s| s.name == name && trace_of(s) == trace)
        .collect()
}

/// The one span of `trace` named `name`.
fn only<'a>(all: &'a [SpanData], trace: &str, name: &str) -> &'a SpanData {
    match named(all, trace, name).as_slice() {
        [one] => one,
        other => panic!(
            "expected one `{name}` in trace {trace}, found {}",
            other.len()
        ),
    }
}

/// The `trace_parent` column of verification `id`, read with plain SQL.
async fn stored_trace_parent(h: &Harness, id: &str) -> Option<String> {
    use sqlx::Connection;
    let query = "SELECT trace_parent FROM verifications WHERE id = $1";
    if h.database_url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(&h.database_url)
            .await
            .expect("db opens");
        sqlx::query_scalar(query)
            .bind(id)
            .fetch_one(&mut conn)
            .await
            .expect("row")
    } else {
        let mut conn = sqlx::SqliteConnection::connect(&h.database_url)
            .await
            .expect("db opens");
        sqlx::query_scalar(query)
            .bind(id)
            .fetch_one(&mut conn)
            .await
            .expect("row")
    }
}
