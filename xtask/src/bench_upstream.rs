//! A fixed-answer Twilio Verify for `bench flows` and `bench memory`, served by xtask on
//! loopback so that the gateway's process holds the gateway alone: the embedded sandbox
//! would add its inbox and its CPU to the figures. It answers as the shared yardstick's
//! nginx upstream does: a create is `201` with a pending verification under a fresh `VE…`
//! SID, a check is `200` approved, whatever was asked; everything else is Twilio's 404.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::serve::ListenerExt;

/// The account the gateway is configured with; the upstream checks no credentials.
const ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
/// The Verify service the gateway is configured with, and every answer names.
const SERVICE_SID: &str = "VA00000000000000000000000000000000";

/// The upstream, serving until it is dropped.
#[derive(Debug)]
pub(crate) struct FixedUpstream {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FixedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FixedUpstream {
    /// The environment that points a gateway at this upstream, as the yardstick's
    /// `compare.sh` sets it: Twilio credentials (so the embedded sandbox is not the
    /// upstream), the base URL override, and the sandbox explicitly off.
    pub(crate) fn gateway_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TWILIO_ACCOUNT_SID", ACCOUNT_SID.to_owned()),
            ("TWILIO_AUTH_TOKEN", "x".to_owned()),
            ("TWILIO_VERIFY_SERVICE_SID", SERVICE_SID.to_owned()),
            (
                "VERIFY_TWILIO__BASE_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("VERIFY_SANDBOX__MODE", "off".to_owned()),
            // Without the sandbox the gateway makes no keys of its own: fixed ones, for
            // benchmarks only.
            (
                "VERIFY_KEYS__BLIND_INDEX_KEY",
                "YmVuY2gtYmxpbmQtaW5kZXgta2V5LTAxMjM0NTY3ODk=".to_owned(),
            ),
            (
                "VERIFY_KEYS__ENCRYPTION_KEYS",
                "bench:YmVuY2gtZW5jcnlwdGlvbi1rZXktMDEyMzQ1Njc4OSE=".to_owned(),
            ),
        ]
    }
}

/// Binds a free loopback port and serves on xtask's runtime.
pub(crate) async fn start() -> anyhow::Result<FixedUpstream> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the fixed upstream")?;
    let port = listener.local_addr()?.port();
    // Twilio's answers are small and the gateway waits for each one: Nagle's algorithm
    // would only add delay, and nginx turns it off too.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = Router::new()
        .route("/v2/Services/{service}/Verifications", post(create))
        .route("/v2/Services/{service}/VerificationCheck", post(check))
        .fallback(not_found)
        .with_state(Arc::new(AtomicU64::new(seed())));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("the fixed upstream stopped: {e}");
        }
    });
    Ok(FixedUpstream { port, task })
}

/// A different starting point per run, so SIDs do not repeat between runs either.
fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// The splitmix64 finaliser: a bijection on `u64`, so distinct counters give distinct SIDs
/// that still look random, as Twilio's do (rows then spread over the SID index as in
/// production, not appended at its end).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `VE` and 32 hex digits, the shape the gateway's adapter checks, fresh for every call.
fn fresh_sid(next: &AtomicU64) -> String {
    let n = next.fetch_add(1, Ordering::Relaxed);
    format!("VE{:016x}{:016x}", mix(n), mix(!n))
}

fn json(status: StatusCode, body: String) -> impl IntoResponse {
    (status, [(CONTENT_TYPE, "application/json")], body)
}

/// `POST /v2/Services/{ServiceSid}/Verifications`. The form is read (so the connection is
/// reused cleanly) but not looked at: the answer is always a pending SMS verification.
async fn create(State(next): State<Arc<AtomicU64>>, _form: Bytes) -> impl IntoResponse {
    let sid = fresh_sid(&next);
    json(
        StatusCode::CREATED,
        format!(
            r#"{{"sid":"{sid}","service_sid":"{SERVICE_SID}","account_sid":"{ACCOUNT_SID}","to":"+14155552671","channel":"sms","status":"pending","valid":false,"lookup":{{}},"amount":null,"payee":null,"send_code_attempts":[{{"time":"2026-11-25T20:00:00Z","channel":"SMS","attempt_sid":"VL0123456789abcdef0123456789abcdef"}}],"date_created":"2026-11-25T20:00:00Z","date_updated":"2026-11-25T20:00:00Z","sna":null,"url":"https://verify.twilio.com/v2/Services/{SERVICE_SID}/Verifications/{sid}"}}"#
        ),
    )
}

/// `POST /v2/Services/{ServiceSid}/VerificationCheck`: every code is the right one.
async fn check(State(next): State<Arc<AtomicU64>>, _form: Bytes) -> impl IntoResponse {
    let sid = fresh_sid(&next);
    json(
        StatusCode::OK,
        format!(
            r#"{{"sid":"{sid}","service_sid":"{SERVICE_SID}","account_sid":"{ACCOUNT_SID}","to":"+14155552671","channel":"sms","status":"approved","valid":true,"amount":null,"payee":null,"date_created":"2026-11-25T20:00:00Z","date_updated":"2026-11-25T20:00:05Z","sna_attempts_error_codes":[]}}"#
        ),
    )
}

/// Anything else (a fetch, a cancel) is Twilio's not-found error, so a benchmark that
/// reaches it shows up as failed calls instead of answers the gateway cannot read.
async fn not_found() -> impl IntoResponse {
    json(
        StatusCode::NOT_FOUND,
        r#"{"code":20404,"message":"The requested resource was not found","more_info":"https://www.twilio.com/docs/errors/20404","status":404}"#
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_have_twilios_shape_and_do_not_repeat() {
        let next = AtomicU64::new(u64::MAX - 2);
        let sids: Vec<String> = (0..5).map(|_| fresh_sid(&next)).collect();
        for sid in &sids {
            assert_eq!(sid.len(), 34, "{sid}");
            assert!(sid.starts_with("VE"), "{sid}");
            assert!(sid[2..].bytes().all(|b| b.is_ascii_hexdigit()), "{sid}");
        }
        let distinct: std::collections::BTreeSet<&String> = sids.iter().collect();
        assert_eq!(distinct.len(), sids.len());
    }
}
