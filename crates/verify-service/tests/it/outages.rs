//! Twilio failing under the gateway: a Twilio of the test's own, a real HTTP server that
//! answers creates and then fails checks with 5xx for as long as the test says.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use proto::verify::v1 as pb;
use serde_json::json;
use tonic::Code;
use verify_service::config::TwilioEnv;

use crate::harness::{Backend, Harness};

const ACCOUNT_SID: &str = "AC00000000000000000000000000000001";
const SERVICE_SID: &str = "VA00000000000000000000000000000001";
const VERIFICATION_SID: &str = "VE00000000000000000000000000000001";

/// A Twilio Verify that creates every verification and answers the first
/// `failing_checks` checks with 503 / 20500, then approves.
struct FlakyTwilio {
    base_url: String,
    checks: Arc<AtomicUsize>,
}

impl FlakyTwilio {
    async fn start(failing_checks: usize) -> FlakyTwilio {
        let checks = Arc::new(AtomicUsize::new(0));
        let verification = |status: &str| {
            json!({
                "sid": VERIFICATION_SID, "service_sid": SERVICE_SID, "account_sid": ACCOUNT_SID,
                "to": "+14155552671", "channel": "sms", "status": status, "valid": status == "approved",
                "date_created": "2026-12-06T10:00:00Z", "date_updated": "2026-12-06T10:00:00Z",
            })
        };
        let created = verification("pending");
        let canceled = verification("canceled");
        let approved = verification("approved");
        let seen = Arc::clone(&checks);
        let app = Router::new()
            .route(
                "/v2/Services/{service}/Verifications",
                post(move || async move { (StatusCode::CREATED, axum::Json(created)) }),
            )
            .route(
                "/v2/Services/{service}/Verifications/{sid}",
                post(move || async move { axum::Json(canceled) }),
            )
            .route(
                "/v2/Services/{service}/VerificationCheck",
                post(move || {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n < failing_checks {
                            (
                                StatusCode::SERVICE_UNAVAILABLE,
                                axum::Json(json!({
                                    "code": 20500, "message": "Internal server error",
                                    "more_info": "https://www.twilio.com/docs/errors/20500",
                                    "status": 503,
                                })),
                            )
                                .into_response()
                        } else {
                            axum::Json(approved).into_response()
                        }
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base_url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        FlakyTwilio { base_url, checks }
    }

    async fn gateway(&self, toml: &str) -> Harness {
        let twilio = TwilioEnv {
            account_sid: Some(ACCOUNT_SID.into()),
            auth_token: Some("test-auth-token".into()),
            verify_service_sid: Some(SERVICE_SID.into()),
            ..TwilioEnv::default()
        };
        let toml = format!("[twilio]\nbase_url = \"{}\"\n{toml}", self.base_url);
        Harness::start_against(Backend::Sqlite, &toml, &twilio).await
    }
}

/// A check Twilio did not answer does not use up the user's attempt: after as many
/// outages as the verification has checks, the right code still approves it.
#[tokio::test]
async fn a_check_twilio_did_not_answer_costs_no_attempt() {
    let twilio = FlakyTwilio::start(2).await;
    let h = twilio.gateway("[purposes.login]\nmax_checks = 2\n").await;
    let started = h.start_sms("+14155552671").await.expect("start");
    assert_eq!(started.attempts_left, 2);
    for _ in 0..2 {
        let failed = h
            .check(&started.id, "123456")
            .await
            .expect_err("Twilio is down");
        assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
        let now = h.get(&started.id).await.expect("get");
        assert_eq!(
            (now.status, now.attempts_left),
            (i32::from(pb::VerificationStatus::Pending), 2),
            "the attempt was given back"
        );
    }
    let checked = h
        .check(&started.id, "123456")
        .await
        .expect("Twilio is back");
    assert!(checked.valid, "{checked:?}");
    assert_eq!(twilio.checks.load(Ordering::SeqCst), 3);
    h.shutdown().await;
}
