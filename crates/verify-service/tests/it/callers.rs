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

fn start_for(to: &str, identity: &str, key: &str) -> pb::StartVerificationRequest {
    pb::StartVerificationRequest {
        identity: identity.into(),
        idempotency_key: key.into(),
        ..start("login", to)
    }
}

/// A verification is its starter's: another caller's Get, Check and Cancel are answered
/// exactly as for an unknown id and change nothing, and neither another caller nor the
/// same caller for another user is ever given its id for the same number.
async fn a_caller_reaches_only_its_own_verifications(backend: Backend) {
    let h = Harness::start_with(backend, &config()).await;
    let mut c = h.client.clone();
    let to = "+14155552666";
    let mine = c
        .start_verification(with_token(
            start_for(to, "user-a", "order-1"),
            Some(CHECKOUT_TOKEN),
        ))
        .await
        .expect("checkout's start")
        .into_inner()
        .verification
        .expect("verification");
    let code = h.latest_code(to).await;

    // What an id nobody started answers, for comparison (the message names the id).
    let unknown = "ver_0190a5b2c3d47e8f9a0b1c2d3e4f5a6b";
    let as_unknown =
        |status: &tonic::Status, id: &str| (status.code(), status.message().replace(id, "<id>"));
    let unknown_get = c
        .get_verification(with_token(
            pb::GetVerificationRequest { id: unknown.into() },
            Some(SIGNUP_TOKEN),
        ))
        .await
        .expect_err("unknown id");
    assert_eq!(unknown_get.code(), Code::NotFound, "{unknown_get:?}");
    let expected = as_unknown(&unknown_get, unknown);

    let get = c
        .get_verification(with_token(
            pb::GetVerificationRequest {
                id: mine.id.clone(),
            },
            Some(SIGNUP_TOKEN),
        ))
        .await
        .expect_err("another caller's get");
    assert_eq!(as_unknown(&get, &mine.id), expected, "{get:?}");
    // The right code, from another caller: not found, and no attempt is spent.
    let check = c
        .check_verification(with_token(
            pb::CheckVerificationRequest {
                id: mine.id.clone(),
                code: code.clone(),
            },
            Some(SIGNUP_TOKEN),
        ))
        .await
        .expect_err("another caller's check");
    assert_eq!(as_unknown(&check, &mine.id), expected, "{check:?}");
    let cancel = c
        .cancel_verification(with_token(
            pb::CancelVerificationRequest {
                id: mine.id.clone(),
            },
            Some(SIGNUP_TOKEN),
        ))
        .await
        .expect_err("another caller's cancel");
    assert_eq!(as_unknown(&cancel, &mine.id), expected, "{cancel:?}");

    // Starts to the same number by another caller, and by the same caller for another
    // user, are refused and send nothing; the same idempotency key of another caller is
    // another request.
    for (token, request) in [
        (SIGNUP_TOKEN, start_for(to, "user-a", "order-1")),
        (SIGNUP_TOKEN, start_for(to, "", "")),
        (CHECKOUT_TOKEN, start_for(to, "user-b", "order-2")),
        (CHECKOUT_TOKEN, start_for(to, "", "")),
    ] {
        let busy = c
            .start_verification(with_token(request.clone(), Some(token)))
            .await
            .expect_err("the destination is another's");
        assert_eq!(busy.code(), Code::FailedPrecondition, "{busy:?}");
        assert_eq!(reason(&busy), "DESTINATION_BUSY");
        assert!(!busy.message().contains(&mine.id), "{busy:?}");
    }
    assert_eq!(h.inbox(to).await.len(), 1, "nothing more was sent");
    let theirs = c
        .start_verification(with_token(
            start_for("+14155552677", "user-a", "order-1"),
            Some(SIGNUP_TOKEN),
        ))
        .await
        .expect("signup's own start with the same key")
        .into_inner()
        .verification
        .expect("verification");
    assert_ne!(theirs.id, mine.id);

    // The owner still has it untouched, its retry is answered with it, and its code works.
    let kept = c
        .get_verification(with_token(
            pb::GetVerificationRequest {
                id: mine.id.clone(),
            },
            Some(CHECKOUT_TOKEN),
        ))
        .await
        .expect("the owner's get")
        .into_inner()
        .verification
        .expect("verification");
    assert_eq!(kept.status, i32::from(pb::VerificationStatus::Pending));
    assert_eq!(kept.attempts_left, mine.attempts_left);
    let retried = c
        .start_verification(with_token(
            start_for(to, "user-a", "order-1"),
            Some(CHECKOUT_TOKEN),
        ))
        .await
        .expect("the owner's retry")
        .into_inner()
        .verification
        .expect("verification");
    assert_eq!(retried.id, mine.id);
    let checked = c
        .check_verification(with_token(
            pb::CheckVerificationRequest {
                id: mine.id.clone(),
                code,
            },
            Some(CHECKOUT_TOKEN),
        ))
        .await
        .expect("the owner's check")
        .into_inner();
    assert!(checked.valid);
    h.shutdown().await;
}

#[tokio::test]
async fn a_caller_reaches_only_its_own_verifications_on_sqlite() {
    a_caller_reaches_only_its_own_verifications(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_caller_reaches_only_its_own_verifications_on_postgres() {
    a_caller_reaches_only_its_own_verifications(Backend::Postgres).await;
}
