//! Twilio failing under the gateway: a Twilio of the test's own, a real HTTP server that
//! answers creates and then fails checks with 5xx for as long as the test says.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use proto::verify::v1 as pb;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;
use verify_service::config::TwilioEnv;

use crate::harness::{Backend, Harness};

const ACCOUNT_SID: &str = "AC00000000000000000000000000000001";
const SERVICE_SID: &str = "VA00000000000000000000000000000001";
const VERIFICATION_SID: &str = "VE00000000000000000000000000000001";

/// How the stand-in answers.
#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// Checks answered 503 / 20500 before they are answered at all.
    failing_checks: usize,
    /// The first create acts (the verification exists) but answers 503 / 20500.
    first_create_fails: bool,
    /// The first create acts but answers only after this long.
    first_create_delay: Option<std::time::Duration>,
}

/// A Twilio Verify of the test's own: one verification (`VERIFICATION_SID`), created by
/// every create; a check of `123456`, by SID or by `To`, approves it, any other code is
/// wrong. It counts what it was asked.
struct FlakyTwilio {
    base_url: String,
    creates: Arc<AtomicUsize>,
    checks: Arc<AtomicUsize>,
    checks_by_to: Arc<AtomicUsize>,
}

fn verification(status: &str) -> serde_json::Value {
    json!({
        "sid": VERIFICATION_SID, "service_sid": SERVICE_SID, "account_sid": ACCOUNT_SID,
        "to": "+14155552671", "channel": "sms", "status": status, "valid": status == "approved",
        "date_created": "2026-12-06T10:00:00Z", "date_updated": "2026-12-06T10:00:00Z",
    })
}

fn server_error() -> axum::response::Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({
            "code": 20500, "message": "Internal server error",
            "more_info": "https://www.twilio.com/docs/errors/20500", "status": 503,
        })),
    )
        .into_response()
}

impl FlakyTwilio {
    async fn start(behaviour: Behaviour) -> FlakyTwilio {
        let (creates, checks, checks_by_to) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let created = Arc::clone(&creates);
        let seen = Arc::clone(&checks);
        let by_to = Arc::clone(&checks_by_to);
        let app = Router::new()
            .route(
                "/v2/Services/{service}/Verifications",
                post(move || {
                    let n = created.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n == 0 {
                            if let Some(delay) = behaviour.first_create_delay {
                                tokio::time::sleep(delay).await;
                            }
                            if behaviour.first_create_fails {
                                return server_error();
                            }
                        }
                        (StatusCode::CREATED, axum::Json(verification("pending"))).into_response()
                    }
                }),
            )
            .route(
                "/v2/Services/{service}/Verifications/{sid}",
                post(|| async { axum::Json(verification("canceled")) }),
            )
            .route(
                "/v2/Services/{service}/VerificationCheck",
                post(
                    move |axum::Form(form): axum::Form<HashMap<String, String>>| {
                        let n = seen.fetch_add(1, Ordering::SeqCst);
                        if form.contains_key("To") && !form.contains_key("VerificationSid") {
                            by_to.fetch_add(1, Ordering::SeqCst);
                        }
                        async move {
                            if n < behaviour.failing_checks {
                                server_error()
                            } else if form.get("Code").map(String::as_str) == Some("123456") {
                                axum::Json(verification("approved")).into_response()
                            } else {
                                axum::Json(verification("pending")).into_response()
                            }
                        }
                    },
                ),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base_url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        FlakyTwilio {
            base_url,
            creates,
            checks,
            checks_by_to,
        }
    }

    async fn gateway(&self, toml: &str) -> Harness {
        let twilio = TwilioEnv {
            account_sid: Some(ACCOUNT_SID.into()),
            auth_token: Some("test-auth-token".into()),
            verify_service_sid: Some(SERVICE_SID.into()),
            ..TwilioEnv::default()
        };
        // With Twilio, keys are configured: the gateway makes none of its own.
        let toml = format!(
            "[twilio]\nbase_url = \"{}\"\ntimeout_ms = 500\n\
             [keys]\nblind_index_key = \"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\"\n\
             encryption_keys = \"k1:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=\"\n{toml}",
            self.base_url
        );
        Harness::start_against(Backend::Sqlite, &toml, &twilio).await
    }
}

fn start_with_key(to: &str, key: &str) -> pb::StartVerificationRequest {
    pb::StartVerificationRequest {
        purpose: "login".into(),
        to: to.into(),
        channel: pb::Channel::Sms.into(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

/// A create Twilio answered with a 5xx may have sent the code: the key stays bound to the
/// verification, a retry with it answers with it and sends nothing, and the code checks
/// by destination.
#[tokio::test]
async fn an_unconfirmed_create_keeps_its_key_and_is_never_sent_twice() {
    let twilio = FlakyTwilio::start(Behaviour {
        first_create_fails: true,
        ..Behaviour::default()
    })
    .await;
    let h = twilio.gateway("").await;
    let failed = h
        .start_req(start_with_key("+14155552671", "order-7"))
        .await
        .expect_err("Twilio answered 503");
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    let info = failed
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(info.reason, "SEND_UNCONFIRMED");
    let id = info.metadata["verification_id"].clone();

    let replayed = h
        .start_req(start_with_key("+14155552671", "order-7"))
        .await
        .expect("the retry answers with the verification");
    assert_eq!(replayed.id, id);
    assert_eq!(replayed.status(), pb::VerificationStatus::Pending);
    assert_eq!(replayed.delivery_status, "unconfirmed");
    assert_eq!(
        twilio.creates.load(Ordering::SeqCst),
        1,
        "sent nothing again"
    );

    // The code did arrive: the check names the verification by destination.
    let checked = h.check(&id, "123456").await.expect("check");
    assert!(checked.valid, "{checked:?}");
    assert_eq!(twilio.checks_by_to.load(Ordering::SeqCst), 1);
    h.shutdown().await;
}

/// A create that timed out leaves no provider id; a new start to the number (no key) is an
/// explicit ask to send again: it resends and learns the id, where before every start to
/// the number was ABORTED until the verification expired.
#[tokio::test]
async fn a_start_after_an_unconfirmed_send_sends_again_and_learns_the_id() {
    let twilio = FlakyTwilio::start(Behaviour {
        first_create_delay: Some(std::time::Duration::from_secs(2)),
        ..Behaviour::default()
    })
    .await;
    let h = twilio.gateway("").await;
    let timed_out = h
        .start_sms("+14155552671")
        .await
        .expect_err("Twilio did not answer in time");
    assert_eq!(timed_out.code(), Code::Unavailable, "{timed_out:?}");
    let again = h
        .start_sms("+14155552671")
        .await
        .expect("a new start sends again");
    assert_eq!(again.delivery_status, "", "confirmed now");
    assert_eq!(again.sends_left, 1, "two of three sends used");
    assert_eq!(twilio.creates.load(Ordering::SeqCst), 2);
    let checked = h.check(&again.id, "123456").await.expect("check");
    assert!(checked.valid);
    assert_eq!(
        twilio.checks_by_to.load(Ordering::SeqCst),
        0,
        "checked by its id, learnt from the resend"
    );
    h.shutdown().await;
}

/// A check Twilio did not answer does not use up the user's attempt: after as many
/// outages as the verification has checks, the right code still approves it.
#[tokio::test]
async fn a_check_twilio_did_not_answer_costs_no_attempt() {
    let twilio = FlakyTwilio::start(Behaviour {
        failing_checks: 2,
        ..Behaviour::default()
    })
    .await;
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
