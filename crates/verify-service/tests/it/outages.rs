//! Twilio failing under the gateway: a Twilio of the test's own, a real HTTP server whose
//! creates answer slowly, fail with a 5xx after acting, or refuse with 429s (Twilio's rate
//! limit 20429, its send limit 60203), and whose checks fail with 5xx for as long as the
//! test says. It counts what it was asked and what it sent, so no test takes a second send
//! for granted. Every test runs on SQLite and on PostgreSQL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// How the stand-in answers one create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    /// 201 with a new verification: a code is sent.
    Sent,
    /// A code is sent, but the answer is 503 / 20500.
    SentThenFails,
    /// A code is sent and the 201 comes after this long.
    SentSlowly(Duration),
    /// 429 / 20429 with `Retry-After: 1`: Twilio's rate limit; nothing is sent.
    RateLimited,
    /// 429 / 60203: the destination's send limit at Twilio; nothing is sent.
    MaxSendAttempts,
}

/// How the stand-in answers.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Checks answered 503 / 20500 before they are answered at all.
    pub failing_checks: usize,
    /// The answers to the first creates, in order; every later create is [`Create::Sent`].
    pub creates: Vec<Create>,
    /// How long every create that sends takes besides, as a slow Twilio would.
    pub create_latency: Duration,
}

/// A Twilio Verify of the test's own: every create that sends makes a verification with a
/// SID of its own; a check of `123456`, by SID or by `To`, approves, any other code is
/// wrong. It counts what it was asked and, per destination, the codes it sent.
pub struct FlakyTwilio {
    base_url: String,
    /// Create requests, whatever they were answered.
    pub creates: Arc<AtomicUsize>,
    /// Codes sent, per `To`: creates that acted, answered or not.
    pub sent: Arc<Mutex<HashMap<String, usize>>>,
    pub checks: Arc<AtomicUsize>,
    pub checks_by_to: Arc<AtomicUsize>,
}

fn verification(sid: &str, to: &str, status: &str) -> serde_json::Value {
    json!({
        "sid": sid, "service_sid": SERVICE_SID, "account_sid": ACCOUNT_SID,
        "to": to, "channel": "sms", "status": status, "valid": status == "approved",
        "date_created": "2026-12-06T10:00:00Z", "date_updated": "2026-12-06T10:00:00Z",
    })
}

fn twilio_error(status: StatusCode, code: u32, message: &str) -> axum::response::Response {
    let mut response = (
        status,
        axum::Json(json!({
            "code": code, "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        })),
    )
        .into_response();
    if code == 20429 {
        response
            .headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    }
    response
}

fn server_error() -> axum::response::Response {
    twilio_error(
        StatusCode::SERVICE_UNAVAILABLE,
        20500,
        "Internal server error",
    )
}

impl FlakyTwilio {
    pub async fn start(behaviour: Behaviour) -> FlakyTwilio {
        let (creates, checks, checks_by_to) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let sent: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let failing_checks = behaviour.failing_checks;
        let behaviour = Arc::new(behaviour);
        let (asked, sent_to) = (Arc::clone(&creates), Arc::clone(&sent));
        let seen = Arc::clone(&checks);
        let by_to = Arc::clone(&checks_by_to);
        let app = Router::new()
            .route(
                "/v2/Services/{service}/Verifications",
                post(
                    move |axum::Form(form): axum::Form<HashMap<String, String>>| {
                        let n = asked.fetch_add(1, Ordering::SeqCst);
                        let answer = behaviour.creates.get(n).copied().unwrap_or(Create::Sent);
                        let latency = behaviour.create_latency;
                        let sent_to = Arc::clone(&sent_to);
                        async move {
                            let to = form.get("To").cloned().unwrap_or_default();
                            match answer {
                                Create::RateLimited => {
                                    return twilio_error(
                                        StatusCode::TOO_MANY_REQUESTS,
                                        20429,
                                        "Too many requests",
                                    );
                                }
                                Create::MaxSendAttempts => {
                                    return twilio_error(
                                        StatusCode::TOO_MANY_REQUESTS,
                                        60203,
                                        "Max send attempts reached",
                                    );
                                }
                                Create::Sent | Create::SentThenFails | Create::SentSlowly(_) => {}
                            }
                            *sent_to
                                .lock()
                                .expect("not poisoned")
                                .entry(to.clone())
                                .or_default() += 1;
                            tokio::time::sleep(latency).await;
                            if let Create::SentSlowly(delay) = answer {
                                tokio::time::sleep(delay).await;
                            }
                            if answer == Create::SentThenFails {
                                return server_error();
                            }
                            let sid = format!("VE{n:032x}");
                            (
                                StatusCode::CREATED,
                                axum::Json(verification(&sid, &to, "pending")),
                            )
                                .into_response()
                        }
                    },
                ),
            )
            .route(
                "/v2/Services/{service}/Verifications/{sid}",
                post(
                    |axum::extract::Path((_, sid)): axum::extract::Path<(String, String)>| async move {
                        axum::Json(verification(&sid, "+14155552671", "canceled"))
                    },
                ),
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
                            let sid = form
                                .get("VerificationSid")
                                .cloned()
                                .unwrap_or_else(|| format!("VE{:032x}", 0));
                            let to = form.get("To").cloned().unwrap_or_default();
                            if n < failing_checks {
                                server_error()
                            } else if form.get("Code").map(String::as_str) == Some("123456") {
                                axum::Json(verification(&sid, &to, "approved")).into_response()
                            } else {
                                axum::Json(verification(&sid, &to, "pending")).into_response()
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
            sent,
            checks,
            checks_by_to,
        }
    }

    /// Codes sent to `to`.
    pub fn sent_to(&self, to: &str) -> usize {
        self.sent
            .lock()
            .expect("not poisoned")
            .get(to)
            .copied()
            .unwrap_or(0)
    }

    /// Codes sent, to anyone.
    pub fn sent_total(&self) -> usize {
        self.sent.lock().expect("not poisoned").values().sum()
    }

    /// A gateway on `backend` that calls this Twilio; `twilio` are more lines of its
    /// `[twilio]` table (the timeout is 500 ms unless they say otherwise), `toml` the rest.
    pub async fn gateway(&self, backend: Backend, twilio: &str, toml: &str) -> Harness {
        self.gateway_at(backend_url(backend).await, twilio, toml)
            .await
    }

    /// [`FlakyTwilio::gateway`] on the database at `database_url` (`None`: SQLite in the
    /// gateway's data directory).
    pub async fn gateway_at(
        &self,
        database_url: Option<String>,
        twilio: &str,
        toml: &str,
    ) -> Harness {
        let env = TwilioEnv {
            account_sid: Some(ACCOUNT_SID.into()),
            auth_token: Some("test-auth-token".into()),
            verify_service_sid: Some(SERVICE_SID.into()),
            ..TwilioEnv::default()
        };
        let timeout = if twilio.contains("timeout_ms") {
            ""
        } else {
            "timeout_ms = 500\n"
        };
        // With Twilio, keys are configured: the gateway makes none of its own.
        let toml = format!(
            "[twilio]\nbase_url = \"{}\"\n{timeout}{twilio}\n\
             [keys]\nblind_index_key = \"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\"\n\
             encryption_keys = \"k1:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=\"\n{toml}",
            self.base_url
        );
        Harness::start_at(database_url, &toml, &env).await
    }
}

/// Where a gateway on `backend` keeps its data: `None` is SQLite in its data directory.
async fn backend_url(backend: Backend) -> Option<String> {
    match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(crate::harness::fresh_postgres_database().await),
    }
}

pub fn start_with_key(to: &str, key: &str) -> pb::StartVerificationRequest {
    pb::StartVerificationRequest {
        purpose: "login".into(),
        to: to.into(),
        channel: pb::Channel::Sms.into(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

/// `ErrorInfo` of an error status; every error of the gateway carries one.
fn error_info(status: &tonic::Status) -> tonic_types::ErrorInfo {
    status
        .get_error_details()
        .error_info()
        .cloned()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"))
}

/// One `#[tokio::test]` per backend for each `async fn name(backend: Backend)`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::harness::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::harness::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_backends!(
    an_unconfirmed_create_keeps_its_key_and_is_never_sent_twice,
    a_start_after_an_unconfirmed_send_sends_again_and_learns_the_id,
    a_check_twilio_did_not_answer_costs_no_attempt,
    a_retry_while_a_slow_create_is_in_flight_sends_nothing_and_then_answers_it,
    a_slow_create_that_times_out_is_answered_to_its_key_without_a_second_send,
    a_429_the_adapter_retried_sends_once,
    twilio_rate_limiting_is_resource_exhausted_with_retry_info_and_frees_the_key,
    twilio_max_send_attempts_is_resource_exhausted_and_its_key_sends_nothing_more,
);

const TO: &str = "+14155552671";

/// A create Twilio answered with a 5xx may have sent the code: the key stays bound to the
/// verification, a retry with it answers with it and sends nothing, and the code checks
/// by destination.
async fn an_unconfirmed_create_keeps_its_key_and_is_never_sent_twice(backend: Backend) {
    let twilio = FlakyTwilio::start(Behaviour {
        creates: vec![Create::SentThenFails],
        ..Behaviour::default()
    })
    .await;
    let h = twilio.gateway(backend, "", "").await;
    let failed = h
        .start_req(start_with_key(TO, "order-7"))
        .await
        .expect_err("Twilio answered 503");
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    let info = error_info(&failed);
    assert_eq!(info.reason, "SEND_UNCONFIRMED");
    let id = info.metadata["verification_id"].clone();

    let replayed = h
        .start_req(start_with_key(TO, "order-7"))
        .await
        .expect("the retry answers with the verification");
    assert_eq!(replayed.id, id);
    assert_eq!(replayed.status(), pb::VerificationStatus::Pending);
    assert_eq!(replayed.delivery_status, "unconfirmed");
    assert_eq!(
        twilio.creates.load(Ordering::SeqCst),
        1,
        "asked nothing again"
    );
    assert_eq!(twilio.sent_to(TO), 1, "sent nothing again");

    // The code did arrive: the check names the verification by destination.
    let checked = h.check(&id, "123456").await.expect("check");
    assert!(checked.valid, "{checked:?}");
    assert_eq!(twilio.checks_by_to.load(Ordering::SeqCst), 1);
    h.shutdown().await;
}

/// A create that timed out leaves no provider id; a new start to the number (no key) is an
/// explicit ask to send again: it resends and learns the id, where before every start to
/// the number was ABORTED until the verification expired.
async fn a_start_after_an_unconfirmed_send_sends_again_and_learns_the_id(backend: Backend) {
    let twilio = FlakyTwilio::start(Behaviour {
        creates: vec![Create::SentSlowly(Duration::from_secs(2))],
        ..Behaviour::default()
    })
    .await;
    let h = twilio.gateway(backend, "", "").await;
    let timed_out = h
        .start_sms(TO)
        .await
        .expect_err("Twilio did not answer in time");
    assert_eq!(timed_out.code(), Code::Unavailable, "{timed_out:?}");
    let again = h.start_sms(TO).await.expect("a new start sends again");
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
async fn a_check_twilio_did_not_answer_costs_no_attempt(backend: Backend) {
    let twilio = FlakyTwilio::start(Behaviour {
        failing_checks: 2,
        ..Behaviour::default()
    })
    .await;
    let h = twilio
        .gateway(backend, "", "[purposes.login]\nmax_checks = 2\n")
        .await;
    let started = h.start_sms(TO).await.expect("start");
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

/// A retry with the key while Twilio is still working on a slow create sends nothing: it is
/// told the first request is in progress (ABORTED, with RetryInfo); once the create is
/// answered, the key answers with its verification.
async fn a_retry_while_a_slow_create_is_in_flight_sends_nothing_and_then_answers_it(
    backend: Backend,
) {
    let twilio = FlakyTwilio::start(Behaviour {
        creates: vec![Create::SentSlowly(Duration::from_secs(1))],
        ..Behaviour::default()
    })
    .await;
    let h = twilio.gateway(backend, "timeout_ms = 5000", "").await;
    let first = {
        let client = h.client.clone();
        tokio::spawn(async move {
            let mut client = client;
            client
                .start_verification(start_with_key(TO, "order-8"))
                .await
                .map(|r| r.into_inner().verification.expect("verification"))
        })
    };
    crate::harness::eventually(Duration::from_secs(10), "the create reaches Twilio", || {
        let creates = Arc::clone(&twilio.creates);
        async move { creates.load(Ordering::SeqCst) == 1 }
    })
    .await;

    let in_flight = h
        .start_req(start_with_key(TO, "order-8"))
        .await
        .expect_err("the first request is still waiting for Twilio");
    assert_eq!(in_flight.code(), Code::Aborted, "{in_flight:?}");
    assert_eq!(error_info(&in_flight).reason, "IDEMPOTENCY_KEY_IN_PROGRESS");
    assert!(
        in_flight.get_error_details().retry_info().is_some(),
        "{in_flight:?}"
    );

    let sent = first
        .await
        .expect("join")
        .expect("the slow create succeeds");
    let replayed = h
        .start_req(start_with_key(TO, "order-8"))
        .await
        .expect("the key answers with the verification");
    assert_eq!(replayed.id, sent.id);
    assert_eq!(replayed.delivery_status, "", "confirmed");
    assert_eq!(twilio.creates.load(Ordering::SeqCst), 1, "asked once");
    assert_eq!(twilio.sent_to(TO), 1, "sent once");
    h.shutdown().await;
}

/// A create slower than the gateway's Twilio timeout may have sent the code: the start is
/// UNAVAILABLE (`SEND_UNCONFIRMED`), and a retry with its key, even while Twilio is still
/// working on the first, answers with the same verification and sends nothing.
async fn a_slow_create_that_times_out_is_answered_to_its_key_without_a_second_send(
    backend: Backend,
) {
    let twilio = FlakyTwilio::start(Behaviour {
        creates: vec![Create::SentSlowly(Duration::from_secs(2))],
        ..Behaviour::default()
    })
    .await;
    let h = twilio.gateway(backend, "", "").await;
    let timed_out = h
        .start_req(start_with_key(TO, "order-9"))
        .await
        .expect_err("Twilio did not answer within 500 ms");
    assert_eq!(timed_out.code(), Code::Unavailable, "{timed_out:?}");
    let info = error_info(&timed_out);
    assert_eq!(info.reason, "SEND_UNCONFIRMED");
    assert!(
        timed_out.get_error_details().retry_info().is_some(),
        "{timed_out:?}"
    );
    for _ in 0..2 {
        let replayed = h
            .start_req(start_with_key(TO, "order-9"))
            .await
            .expect("the retry answers with the verification");
        assert_eq!(replayed.id, info.metadata["verification_id"]);
        assert_eq!(replayed.status(), pb::VerificationStatus::Pending);
        assert_eq!(replayed.delivery_status, "unconfirmed");
    }
    assert_eq!(twilio.creates.load(Ordering::SeqCst), 1, "asked once");
    assert_eq!(twilio.sent_to(TO), 1, "sent once");
    h.shutdown().await;
}

/// Twilio never processes a 429, so the adapter repeats the create after `Retry-After`:
/// the start succeeds with one code sent, and its key answers it without another.
async fn a_429_the_adapter_retried_sends_once(backend: Backend) {
    let twilio = FlakyTwilio::start(Behaviour {
        creates: vec![Create::RateLimited],
        ..Behaviour::default()
    })
    .await;
    let h = twilio.gateway(backend, "max_retries = 2", "").await;
    let sent = h
        .start_req(start_with_key(TO, "order-10"))
        .await
        .expect("the repeated create succeeds");
    assert_eq!(sent.status(), pb::VerificationStatus::Pending);
    assert_eq!(
        twilio.creates.load(Ordering::SeqCst),
        2,
        "a 429, then a 201"
    );
    let replayed = h
        .start_req(start_with_key(TO, "order-10"))
        .await
        .expect("the key answers with the verification");
    assert_eq!(replayed.id, sent.id);
    assert_eq!(
        twilio.creates.load(Ordering::SeqCst),
        2,
        "asked nothing again"
    );
    assert_eq!(twilio.sent_to(TO), 1, "sent once");
    h.shutdown().await;
}

/// A 429 (20429) the adapter does not wait out is RESOURCE_EXHAUSTED with Twilio's code and
/// RetryInfo, as the README's error table says. Nothing was sent, so the key is free: the
/// retry with it sends once, and the next one answers that verification.
async fn twilio_rate_limiting_is_resource_exhausted_with_retry_info_and_frees_the_key(
    backend: Backend,
) {
    let twilio = FlakyTwilio::start(Behaviour {
        creates: vec![Create::RateLimited],
        ..Behaviour::default()
    })
    .await;
    let h = twilio.gateway(backend, "max_retries = 0", "").await;
    let limited = h
        .start_req(start_with_key(TO, "order-11"))
        .await
        .expect_err("Twilio answered 429");
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    let info = error_info(&limited);
    assert_eq!(info.reason, "TWILIO_20429");
    assert_eq!(info.metadata["twilio_code"], "20429");
    let retry = limited
        .get_error_details()
        .retry_info()
        .cloned()
        .expect("RetryInfo");
    assert_eq!(
        retry.retry_delay,
        Some(Duration::from_secs(1)),
        "Retry-After"
    );
    assert_eq!(twilio.sent_total(), 0);

    let sent = h
        .start_req(start_with_key(TO, "order-11"))
        .await
        .expect("the key was freed: the retry sends");
    assert_eq!(sent.status(), pb::VerificationStatus::Pending);
    let replayed = h
        .start_req(start_with_key(TO, "order-11"))
        .await
        .expect("the key answers with the verification sent");
    assert_eq!(replayed.id, sent.id);
    assert_eq!(twilio.creates.load(Ordering::SeqCst), 2);
    assert_eq!(twilio.sent_to(TO), 1, "sent once");
    h.shutdown().await;
}

/// Twilio's send limit (60203) is a verdict, not a rate limit: RESOURCE_EXHAUSTED with
/// Twilio's code and no RetryInfo, not repeated by the adapter; the key keeps the failed
/// verification, so a retry with it answers that and asks Twilio nothing.
async fn twilio_max_send_attempts_is_resource_exhausted_and_its_key_sends_nothing_more(
    backend: Backend,
) {
    let twilio = FlakyTwilio::start(Behaviour {
        creates: vec![Create::MaxSendAttempts],
        ..Behaviour::default()
    })
    .await;
    let h = twilio.gateway(backend, "max_retries = 2", "").await;
    let refused = h
        .start_req(start_with_key(TO, "order-12"))
        .await
        .expect_err("Twilio answered 60203");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let info = error_info(&refused);
    assert_eq!(info.reason, "TWILIO_60203");
    assert_eq!(info.metadata["twilio_code"], "60203");
    assert!(
        refused.get_error_details().retry_info().is_none(),
        "retrying does not help: {refused:?}"
    );
    assert_eq!(twilio.creates.load(Ordering::SeqCst), 1, "not repeated");

    let replayed = h
        .start_req(start_with_key(TO, "order-12"))
        .await
        .expect("the key answers with the failed verification");
    assert_eq!(replayed.status(), pb::VerificationStatus::Failed);
    assert_eq!(replayed.failure_code, 60203);
    assert_eq!(
        twilio.creates.load(Ordering::SeqCst),
        1,
        "asked nothing again"
    );
    assert_eq!(twilio.sent_total(), 0);
    h.shutdown().await;
}
