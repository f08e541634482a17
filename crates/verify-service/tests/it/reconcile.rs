//! The reconciliation of unconfirmed sends, with a Twilio of the test's own: a create that
//! sends the code but answers 503 has its verification's SID learnt by the job, with no
//! user or caller doing anything; a create Twilio never acted on ends as never sent, so the
//! next start to the number sends afresh. On SQLite and on PostgreSQL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use proto::verify::v1 as pb;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;
use verify_service::config::TwilioEnv;

use crate::harness::{Backend, Harness};

const ACCOUNT_SID: &str = "AC00000000000000000000000000000002";
const SERVICE_SID: &str = "VA00000000000000000000000000000002";
/// The verification Twilio made for the create that answered 503.
const ACTED_SID: &str = "VE000000000000000000000000000000a1";
/// The verification of the start after the lost create.
const FRESH_SID: &str = "VE000000000000000000000000000000b2";
/// Twilio sends the code to this number but answers its first create with 503.
const ACTED_TO: &str = "+14155552671";
/// Twilio fails this number's first create before acting on it.
const LOST_TO: &str = "+14155552672";

const LEARNT: &str =
    "SELECT COUNT(*) FROM verifications WHERE provider_sid = 'VE000000000000000000000000000000a1'";

/// How long the job may take; it runs every 100 ms.
const WITHIN: Duration = Duration::from_secs(20);

/// What the stand-in has done.
#[derive(Default)]
struct Seen {
    creates: AtomicUsize,
    attempt_lists: AtomicUsize,
    checks_by_sid: AtomicUsize,
    checks_by_to: AtomicUsize,
    /// The lost number's first create was answered.
    lost_once: AtomicBool,
    /// The send attempts it made, per `To`: (verification SID, when).
    attempts: Mutex<HashMap<String, Vec<(String, String)>>>,
}

impl Seen {
    fn attempts_to(&self, to: &str) -> Vec<(String, String)> {
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(to)
            .cloned()
            .unwrap_or_default()
    }
}

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "code": code, "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        })),
    )
        .into_response()
}

fn verification(sid: &str, to: &str, status: &str) -> serde_json::Value {
    json!({
        "sid": sid, "service_sid": SERVICE_SID, "account_sid": ACCOUNT_SID,
        "to": to, "channel": "sms", "status": status, "valid": status == "approved",
        "date_created": "2026-12-06T10:00:00Z", "date_updated": "2026-12-06T10:00:00Z",
    })
}

async fn create(
    State(seen): State<Arc<Seen>>,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    seen.creates.fetch_add(1, Ordering::SeqCst);
    let to = form.get("To").cloned().unwrap_or_default();
    let earlier = seen.attempts_to(&to).len();
    // The first create of the lost number fails before Twilio acts on it.
    if to == LOST_TO && !seen.lost_once.swap(true, Ordering::SeqCst) {
        return twilio_error(
            StatusCode::SERVICE_UNAVAILABLE,
            20500,
            "Internal server error",
        );
    }
    let sid = if to == ACTED_TO { ACTED_SID } else { FRESH_SID };
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    seen.attempts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(to.clone())
        .or_default()
        .push((sid.to_owned(), now));
    if to == ACTED_TO && earlier == 0 {
        // The code is out, but the answer is lost.
        return twilio_error(
            StatusCode::SERVICE_UNAVAILABLE,
            20500,
            "Internal server error",
        );
    }
    (
        StatusCode::CREATED,
        axum::Json(verification(sid, &to, "pending")),
    )
        .into_response()
}

async fn list_attempts(
    State(seen): State<Arc<Seen>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    seen.attempt_lists.fetch_add(1, Ordering::SeqCst);
    if query.get("VerifyServiceSid").map(String::as_str) != Some(SERVICE_SID) {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            60200,
            "Invalid parameter: VerifyServiceSid",
        );
    }
    let to = query.get("ChannelData.To").cloned().unwrap_or_default();
    let attempts: Vec<serde_json::Value> = seen
        .attempts_to(&to)
        .into_iter()
        .rev()
        .enumerate()
        .map(|(n, (sid, at))| {
            json!({
                "sid": format!("VL{n:032x}"), "account_sid": ACCOUNT_SID,
                "service_sid": SERVICE_SID, "verification_sid": sid,
                "date_created": at, "date_updated": at,
                "conversion_status": "unconverted", "channel": "sms", "price": null,
                "channel_data": {"verification_sid": sid, "to": to},
                "url": format!("https://verify.twilio.com/v2/Attempts/VL{n:032x}"),
            })
        })
        .collect();
    axum::Json(json!({
        "attempts": attempts,
        "meta": {
            "key": "attempts", "page": 0, "page_size": 50,
            "first_page_url": "https://verify.twilio.com/v2/Attempts?PageSize=50&Page=0",
            "previous_page_url": null,
            "url": "https://verify.twilio.com/v2/Attempts?PageSize=50&Page=0",
            "next_page_url": null,
        },
    }))
    .into_response()
}

async fn check(
    State(seen): State<Arc<Seen>>,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    let sid = match form.get("VerificationSid") {
        Some(sid) => {
            seen.checks_by_sid.fetch_add(1, Ordering::SeqCst);
            sid.clone()
        }
        None => {
            seen.checks_by_to.fetch_add(1, Ordering::SeqCst);
            ACTED_SID.to_owned()
        }
    };
    let status = if form.get("Code").map(String::as_str) == Some("123456") {
        "approved"
    } else {
        "pending"
    };
    axum::Json(verification(&sid, ACTED_TO, status)).into_response()
}

/// The stand-in served on a free port, and the gateway in front of it on `backend`, its
/// reconciliation every 100 ms and ending a send Twilio holds no attempt of after 1 s.
async fn gateway(backend: Backend) -> (Harness, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/v2/Services/{service}/Verifications", post(create))
        .route("/v2/Services/{service}/VerificationCheck", post(check))
        .route("/v2/Attempts", get(list_attempts))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base_url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let twilio = TwilioEnv {
        account_sid: Some(ACCOUNT_SID.into()),
        auth_token: Some("test-auth-token".into()),
        verify_service_sid: Some(SERVICE_SID.into()),
        ..TwilioEnv::default()
    };
    let toml = format!(
        "[twilio]\nbase_url = \"{base_url}\"\ntimeout_ms = 500\n\
         [reconcile]\ninterval_ms = 100\nmin_age_ms = 0\ngive_up_after_seconds = 1\n\
         [keys]\nblind_index_key = \"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\"\n\
         encryption_keys = \"k1:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=\"\n"
    );
    (Harness::start_against(backend, &toml, &twilio).await, seen)
}

/// Polls `probe` every 50 ms until it holds, failing with `what` after [`WITHIN`].
async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WITHIN;
    while !probe().await {
        assert!(Instant::now() < deadline, "not within {WITHIN:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The id of the verification a start answered SEND_UNCONFIRMED for.
fn unconfirmed_id(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(info.reason, "SEND_UNCONFIRMED");
    info.metadata["verification_id"].clone()
}

async fn a_send_twilio_made_but_did_not_confirm_learns_its_sid(backend: Backend) {
    let (h, seen) = gateway(backend).await;
    let failed = h
        .start_sms(ACTED_TO)
        .await
        .expect_err("Twilio answered 503");
    let id = unconfirmed_id(&failed);

    eventually("the job learns the verification's SID", || async {
        h.count(LEARNT).await == 1
    })
    .await;
    let v = h.get(&id).await.expect("get");
    assert_eq!(v.status(), pb::VerificationStatus::Pending);
    assert_eq!(v.delivery_status, "", "confirmed now");
    assert!(seen.attempt_lists.load(Ordering::SeqCst) >= 1);
    assert_eq!(seen.creates.load(Ordering::SeqCst), 1, "nothing sent again");

    // The user's code is checked by the SID the job learnt, not by destination.
    let checked = h.check(&id, "123456").await.expect("check");
    assert!(checked.valid, "{checked:?}");
    assert_eq!(seen.checks_by_sid.load(Ordering::SeqCst), 1);
    assert_eq!(seen.checks_by_to.load(Ordering::SeqCst), 0);
    h.shutdown().await;
}

async fn a_send_twilio_never_got_ends_and_frees_the_number(backend: Backend) {
    let (h, seen) = gateway(backend).await;
    let failed = h.start_sms(LOST_TO).await.expect_err("Twilio answered 503");
    let id = unconfirmed_id(&failed);
    assert!(seen.attempts_to(LOST_TO).is_empty(), "nothing was sent");

    eventually("the job ends the verification as never sent", || async {
        h.get(&id)
            .await
            .is_ok_and(|v| v.status() == pb::VerificationStatus::Failed)
    })
    .await;
    let ended = h.get(&id).await.expect("get");
    assert_eq!(ended.failure_code, domain::NEVER_SENT);
    assert_eq!(ended.sends_left, 0);

    // The number is free: a new start is a new verification, sent and confirmed.
    let fresh = h.start_sms(LOST_TO).await.expect("a new start sends");
    assert_ne!(fresh.id, id);
    assert_eq!(fresh.status(), pb::VerificationStatus::Pending);
    assert_eq!(fresh.delivery_status, "");
    assert_eq!(seen.creates.load(Ordering::SeqCst), 2);
    assert_eq!(seen.attempts_to(LOST_TO).len(), 1);
    h.shutdown().await;
}

mod sqlite {
    use super::*;

    #[tokio::test]
    async fn a_send_twilio_made_but_did_not_confirm_learns_its_sid() {
        super::a_send_twilio_made_but_did_not_confirm_learns_its_sid(Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn a_send_twilio_never_got_ends_and_frees_the_number() {
        super::a_send_twilio_never_got_ends_and_frees_the_number(Backend::Sqlite).await;
    }
}

mod postgres {
    use super::*;

    #[tokio::test]
    async fn a_send_twilio_made_but_did_not_confirm_learns_its_sid() {
        super::a_send_twilio_made_but_did_not_confirm_learns_its_sid(Backend::Postgres).await;
    }

    #[tokio::test]
    async fn a_send_twilio_never_got_ends_and_frees_the_number() {
        super::a_send_twilio_never_got_ends_and_frees_the_number(Backend::Postgres).await;
    }
}
