//! Callers: a VerifyService call is answered only for a configured caller, named by its
//! bearer token, and a start only for the purposes that caller may use.

use proto::verify::v1 as pb;
use tonic::{Code, Request};

use crate::harness::{Backend, Harness};

const CHECKOUT_TOKEN: &str = "checkout-token-0123456789abcdef";
const SIGNUP_TOKEN: &str = "signup-token-0123456789abcdef";

fn sha256_hex(token: &str) -> String {
    hex::encode(verify_service::auth::token_digest(token))
}

fn config() -> String {
    format!(
        "[purposes.payment]\nchannels = [\"sms\"]\nmax_sends = 3\nmax_checks = 3\n\
         code_ttl_seconds = 600\nidempotency_window_seconds = 600\n\
         [callers.checkout]\ntoken_sha256 = \"{}\"\npurposes = [\"login\", \"payment\"]\n\
         trusted_step_up = true\n\
         [callers.signup]\ntoken_sha256 = \"{}\"\npurposes = [\"login\"]\n",
        sha256_hex(CHECKOUT_TOKEN),
        sha256_hex(SIGNUP_TOKEN)
    )
}

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
    }
    request
}

fn start(purpose: &str, to: &str) -> pb::StartVerificationRequest {
    pb::StartVerificationRequest {
        purpose: purpose.into(),
        to: to.into(),
        channel: pb::Channel::Sms.into(),
        ..Default::default()
    }
}

fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

#[tokio::test]
async fn only_configured_callers_are_answered() {
    let h = Harness::start_with(Backend::Sqlite, &config()).await;
    let mut c = h.client.clone();

    let none = c
        .start_verification(with_token(start("login", "+14155552611"), None))
        .await
        .expect_err("no token");
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    assert_eq!(reason(&none), "CREDENTIALS_MISSING");

    let wrong = c
        .start_verification(with_token(start("login", "+14155552611"), Some("guess")))
        .await
        .expect_err("wrong token");
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    assert_eq!(reason(&wrong), "CREDENTIALS_UNKNOWN");
    // The configured digest itself is not a token.
    let digest = c
        .start_verification(with_token(
            start("login", "+14155552611"),
            Some(&sha256_hex(CHECKOUT_TOKEN)),
        ))
        .await
        .expect_err("the digest as token");
    assert_eq!(digest.code(), Code::Unauthenticated);
    // Nothing was sent for the refused calls.
    assert!(h.inbox("+14155552611").await.is_empty());

    let started = c
        .start_verification(with_token(
            start("login", "+14155552611"),
            Some(CHECKOUT_TOKEN),
        ))
        .await
        .expect("a caller's start")
        .into_inner()
        .verification
        .expect("verification");

    // Reads, checks and cancels need a caller too.
    let id = started.id.clone();
    let get = c
        .get_verification(with_token(
            pb::GetVerificationRequest { id: id.clone() },
            None,
        ))
        .await
        .expect_err("get without a token");
    assert_eq!(get.code(), Code::Unauthenticated);
    let check = c
        .check_verification(with_token(
            pb::CheckVerificationRequest {
                id: id.clone(),
                code: "123456".into(),
            },
            None,
        ))
        .await
        .expect_err("check without a token");
    assert_eq!(check.code(), Code::Unauthenticated);
    let cancel = c
        .cancel_verification(with_token(
            pb::CancelVerificationRequest { id: id.clone() },
            Some("guess"),
        ))
        .await
        .expect_err("cancel with a wrong token");
    assert_eq!(cancel.code(), Code::Unauthenticated);
    let code = h.latest_code("+14155552611").await;
    let checked = c
        .check_verification(with_token(
            pb::CheckVerificationRequest { id, code },
            Some(CHECKOUT_TOKEN),
        ))
        .await
        .expect("the caller's check")
        .into_inner();
    assert!(checked.valid);

    // Probes stay open.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", h.grpc_addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health needs no caller");
    h.shutdown().await;
}

#[tokio::test]
async fn a_caller_starts_only_its_purposes_and_asserts_a_step_up_only_when_trusted() {
    let h = Harness::start_with(Backend::Sqlite, &config()).await;
    let mut c = h.client.clone();

    let denied = c
        .start_verification(with_token(
            start("payment", "+14155552622"),
            Some(SIGNUP_TOKEN),
        ))
        .await
        .expect_err("signup may not use payment");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(reason(&denied), "PURPOSE_NOT_ALLOWED");
    assert!(h.inbox("+14155552622").await.is_empty());
    c.start_verification(with_token(
        start("payment", "+14155552622"),
        Some(CHECKOUT_TOKEN),
    ))
    .await
    .expect("checkout may");

    let stepped = |to: &str| pb::StartVerificationRequest {
        step_up_completed: true,
        ..start("login", to)
    };
    let untrusted = c
        .start_verification(with_token(stepped("+14155552633"), Some(SIGNUP_TOKEN)))
        .await
        .expect_err("signup may not assert a step-up");
    assert_eq!(untrusted.code(), Code::PermissionDenied, "{untrusted:?}");
    assert_eq!(reason(&untrusted), "STEP_UP_NOT_TRUSTED");
    assert!(h.inbox("+14155552633").await.is_empty());
    c.start_verification(with_token(stepped("+14155552633"), Some(CHECKOUT_TOKEN)))
        .await
        .expect("checkout is trusted with step-ups");
    h.shutdown().await;
}

#[tokio::test]
async fn every_call_leaves_one_audit_line_without_destination_or_code() {
    let h = Harness::start_with(Backend::Sqlite, &config()).await;
    let mut c = h.client.clone();
    let started = c
        .start_verification(with_token(
            start("payment", "+14155552644"),
            Some(CHECKOUT_TOKEN),
        ))
        .await
        .expect("start")
        .into_inner()
        .verification
        .expect("verification");
    let code = h.latest_code("+14155552644").await;
    c.check_verification(with_token(
        pb::CheckVerificationRequest {
            id: started.id.clone(),
            code: code.clone(),
        },
        Some(CHECKOUT_TOKEN),
    ))
    .await
    .expect("check");
    let denied = c
        .get_verification(with_token(
            pb::GetVerificationRequest {
                id: started.id.clone(),
            },
            None,
        ))
        .await
        .expect_err("no caller");
    assert_eq!(denied.code(), Code::Unauthenticated);
    h.shutdown().await;

    let logs = crate::redaction::logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(" audit: ") && l.contains(&started.id))
        .collect();
    assert_eq!(lines.len(), 3, "one line per call: {lines:#?}");
    let expect = [
        (
            "StartVerification",
            "caller=\"checkout\"",
            "code=Ok",
            "status=\"pending\"",
        ),
        (
            "CheckVerification",
            "caller=\"checkout\"",
            "code=Ok",
            "status=\"approved\"",
        ),
        (
            "GetVerification",
            "caller=\"\"",
            "code=Unauthenticated",
            "status=\"\"",
        ),
    ];
    for (line, (rpc, caller, code_field, status)) in lines.iter().zip(expect) {
        let rpc_field = format!("rpc=\"{rpc}\"");
        for needle in [rpc_field.as_str(), caller, code_field, status] {
            assert!(line.contains(needle), "{needle} missing in {line}");
        }
        if rpc != "GetVerification" {
            assert!(line.contains("purpose=payment"), "{line}");
        }
        assert!(
            !line.contains("4155552644") && !line.contains(&code),
            "{line}"
        );
    }
}
