//! No raw phone number, email address or code ever reaches a log line: the logs of full
//! start/check flows are captured at TRACE level and searched for them.

use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use proto::verify::v1 as pb;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::harness::{Harness, wrong};

/// Every log line of this test binary, written by a global subscriber at TRACE level for
/// the gateway's crates: the raw writer, not telemetry's redacting one, so this tests what
/// the code itself logs.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

static LOGS: OnceLock<Capture> = OnceLock::new();

/// Every span of this test binary as OpenTelemetry exports it: the same global subscriber
/// carries telemetry's OpenTelemetry layer (a process has one global subscriber), with an
/// in-memory exporter. `trace_context` reads it.
static SPANS: OnceLock<(SdkTracerProvider, InMemorySpanExporter)> = OnceLock::new();

/// Installs the capturing subscriber once for the whole test binary.
pub fn capture_logs() {
    LOGS.get_or_init(|| {
        let capture = Capture::default();
        let writer = capture.clone();
        let (provider, _) = SPANS.get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = telemetry::trace::simple_provider("verify-gateway-it", exporter.clone());
            (provider, exporter)
        });
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_filter(EnvFilter::new("debug,verify_service=trace,twilio=trace,twilio_sandbox=trace,storage=trace,domain=trace,policy=trace"));
        let subscriber = tracing_subscriber::registry()
            .with(logs)
            .with(telemetry::trace::layer(provider));
        // Another subscriber can only be there if a test installed one; then this test
        // would find no lines and fail on its first assertion.
        let _ = tracing::subscriber::set_global_default(subscriber);
        capture
    });
}

/// The spans exported so far, by every test of this binary.
pub fn spans() -> Vec<SpanData> {
    let (_, exporter) = SPANS.get().expect("capture_logs ran in Harness::start");
    exporter.get_finished_spans().expect("in-memory spans")
}

pub fn logs() -> String {
    let capture = LOGS.get().expect("capture_logs ran in Harness::start");
    String::from_utf8_lossy(&capture.0.lock().expect("lock")).into_owned()
}

#[tokio::test]
async fn logs_of_full_flows_carry_no_pii() {
    let h = Harness::start().await;
    let v = h.start_sms("(415) 555-2678").await.expect("start");
    let code = h.latest_code("+14155552678").await;
    let bad = wrong(&code);
    assert!(!h.check(&v.id, &bad).await.expect("check").valid);
    assert!(h.check(&v.id, &code).await.expect("check").valid);
    let email = h
        .start_req(pb::StartVerificationRequest {
            purpose: "login".into(),
            to: "jane.secret@example.com".into(),
            ..Default::default()
        })
        .await
        .expect("email start");
    let email_code = h.latest_code("jane.secret@example.com").await;
    assert!(h.check(&email.id, &email_code).await.expect("check").valid);
    let err = h.start_sms("+1 415 555 2679 x12").await;
    assert!(err.is_err());
    // Abuse protection's refusals: a blocked premium-rate number, and a destination over
    // its rate limit. Neither the answers nor the logs may hold the numbers.
    let blocked = h
        .start_sms("+449098700077")
        .await
        .expect_err("premium rate is blocked");
    assert!(
        !format!("{blocked:?}").contains("9098700077"),
        "{blocked:?}"
    );
    // Five starts pass the limit (the fourth and fifth meet max_sends instead).
    for _ in 0..5 {
        let _ = h.start_sms("+14155553699").await;
    }
    let limited = h
        .start_sms("+14155553699")
        .await
        .expect_err("over the destination limit");
    assert_eq!(limited.code(), tonic::Code::ResourceExhausted);
    assert!(
        limited.message().contains("send_per_destination"),
        "{limited:?}"
    );
    assert!(!format!("{limited:?}").contains("5553699"), "{limited:?}");
    h.shutdown().await;

    let logs = logs();
    assert!(logs.contains("verify.start"), "spans are logged: {logs}");
    assert!(logs.contains("verify.check"), "spans are logged");
    assert!(logs.contains("+1415***2678"), "the mask is what is logged");
    for secret in [
        "4155552678",
        "555-2678",
        "4155552679",
        "9098700077",
        "4155553699",
        "555-3699",
        "jane.secret",
        twilio_sandbox::DEV_AUTH_TOKEN,
    ] {
        if let Some(at) = logs.find(secret) {
            let line = logs[..at].rsplit('\n').next().unwrap_or_default();
            panic!("`{secret}` appears in the logs: {line}{secret}…");
        }
    }
    // Codes are digits: a code counts only as a number of its own, not as the digits inside
    // a longer one (a timestamp's microseconds may well be `503554`).
    for code in [code.as_str(), bad.as_str(), email_code.as_str()] {
        if let Some(at) = find_number(&logs, code) {
            let line = logs[..at].rsplit('\n').next().unwrap_or_default();
            panic!("the code `{code}` appears in the logs: {line}{code}…");
        }
    }
}

/// Where `digits` occurs in `text` as a number of its own: no digit right before or after
/// it, and not the fraction of a decimal number (`04.503554` in a timestamp).
fn find_number(text: &str, digits: &str) -> Option<usize> {
    text.match_indices(digits).map(|(at, _)| at).find(|&at| {
        let mut before = text[..at].chars().rev();
        let (b1, b2) = (before.next(), before.next());
        let after = text[at + digits.len()..].chars().next();
        let digit = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
        let fraction = b1 == Some('.') && digit(b2);
        !digit(b1) && !fraction && !digit(after)
    })
}

#[test]
fn codes_are_found_as_numbers_of_their_own() {
    assert_eq!(find_number("code=503554 ok", "503554"), Some(5));
    assert_eq!(find_number("\"503554\"", "503554"), Some(1));
    assert_eq!(find_number("02:19:04.503554Z", "503554"), None);
    assert_eq!(find_number("sent. 503554.", "503554"), Some(6));
    assert_eq!(find_number("1503554", "503554"), None);
}
