//! The verification flows end to end over gRPC, each on SQLite and on PostgreSQL.

use proto::verify::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{Harness, wrong};
use crate::on_both_backends;

async fn start_read_inbox_check_approves(h: Harness) {
    let v = h.start_sms("(415) 555-2671").await.expect("start");
    assert_eq!(v.status(), pb::VerificationStatus::Pending);
    assert_eq!(v.channel(), pb::Channel::Sms);
    assert_eq!(v.to_masked, "+1415***2671");
    assert_eq!(v.attempts_left, 3);
    assert!(v.id.starts_with("ver_"));
    let code = h.latest_code("+14155552671").await;
    assert_eq!(code.len(), 6);

    let bad = h
        .check(&v.id, &wrong(&code))
        .await
        .expect("wrong code is no error");
    assert!(!bad.valid);
    let after_bad = bad.verification.expect("verification");
    assert_eq!(after_bad.status(), pb::VerificationStatus::Pending);
    assert_eq!(after_bad.attempts_left, 2);

    let ok = h.check(&v.id, &code).await.expect("check");
    assert!(ok.valid);
    assert_eq!(
        ok.verification.expect("verification").status(),
        pb::VerificationStatus::Approved
    );
    let got = h.get(&v.id).await.expect("get");
    assert_eq!(got.status(), pb::VerificationStatus::Approved);
    assert_eq!(got.attempts_left, 0);
    h.shutdown().await;
}

async fn bad_input_is_invalid_argument_and_writes_nothing(h: Harness) {
    let err = h.start_sms("not a number").await.expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    let br = err.get_details_bad_request().expect("BadRequest details");
    assert_eq!(br.field_violations[0].field, "to");

    let err = h
        .start_req(pb::StartVerificationRequest {
            purpose: "signup".into(),
            to: "+14155552671".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown purpose refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("unknown purpose `signup`"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("login"),
        "names the configured purposes"
    );
    let br = err.get_details_bad_request().expect("BadRequest details");
    assert_eq!(br.field_violations[0].field, "purpose");

    for (req, field) in [
        (
            pb::StartVerificationRequest {
                purpose: "login".into(),
                to: "jane@example.com".into(),
                channel: pb::Channel::Sms.into(),
                ..Default::default()
            },
            "channel",
        ),
        (
            pb::StartVerificationRequest {
                purpose: "login".into(),
                to: "+14155552671".into(),
                channel: pb::Channel::Sna.into(),
                ..Default::default()
            },
            "channel",
        ),
        (
            pb::StartVerificationRequest {
                purpose: "login".into(),
                to: "+14155552671".into(),
                client_ip: "300.1.1.1".into(),
                ..Default::default()
            },
            "client_ip",
        ),
        (
            pb::StartVerificationRequest {
                purpose: "login".into(),
                to: "4155552671".into(),
                default_region: "XX".into(),
                ..Default::default()
            },
            "default_region",
        ),
        (
            pb::StartVerificationRequest {
                purpose: "login".into(),
                to: "+14155552671".into(),
                channel: 42,
                ..Default::default()
            },
            "channel",
        ),
    ] {
        let err = h.start_req(req).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        let br = err.get_details_bad_request().expect("BadRequest details");
        assert_eq!(br.field_violations[0].field, field);
    }
    let err = h.check("ver_nope", "123456").await.expect_err("bad id");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = h
        .check("ver_0000000000000000000000000000abcd", "12")
        .await
        .expect_err("bad code");
    assert_eq!(
        err.get_details_bad_request()
            .expect("details")
            .field_violations[0]
            .field,
        "code"
    );
    let err = h
        .get("ver_0000000000000000000000000000abcd")
        .await
        .expect_err("unknown id");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(h.row_count().await, 0, "nothing is written for bad input");
    assert!(h.inbox("+14155552671").await.is_empty(), "nothing is sent");
    h.shutdown().await;
}

async fn our_check_limit_ends_it_and_cancels_upstream(h: Harness) {
    let v = h.start_sms("+14155552672").await.expect("start");
    let code = h.latest_code("+14155552672").await;
    for left in [2, 1, 0] {
        let r = h.check(&v.id, &wrong(&code)).await.expect("wrong code");
        assert!(!r.valid);
        assert_eq!(r.verification.expect("v").attempts_left, left);
    }
    let got = h.get(&v.id).await.expect("get");
    assert_eq!(got.status(), pb::VerificationStatus::MaxAttemptsReached);
    let err = h.check(&v.id, &code).await.expect_err("no more checks");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Our limit (3) came before Twilio's (5), and the gateway canceled upstream.
    let sid = h.inbox("+14155552672").await[0]["verification_sid"]
        .as_str()
        .expect("sid")
        .to_owned();
    let upstream: serde_json::Value = h
        .http
        .get(format!(
            "{}/v2/Services/{}/Verifications/{sid}",
            h.sandbox,
            twilio_sandbox::DEV_SERVICE_SID
        ))
        .basic_auth(
            twilio_sandbox::DEV_ACCOUNT_SID,
            Some(twilio_sandbox::DEV_AUTH_TOKEN),
        )
        .send()
        .await
        .expect("fetch")
        .json()
        .await
        .expect("json");
    assert_eq!(upstream["status"], "canceled", "{upstream}");
    h.shutdown().await;
}

async fn idempotency_key_never_sends_twice(h: Harness) {
    let req = |to: &str| pb::StartVerificationRequest {
        purpose: "login".into(),
        to: to.into(),
        channel: pb::Channel::Sms.into(),
        idempotency_key: "order-42".into(),
        ..Default::default()
    };
    let first = h.start_req(req("+14155552673")).await.expect("first");
    let again = h.start_req(req("+14155552673")).await.expect("replay");
    assert_eq!(first.id, again.id);
    assert_eq!(h.inbox("+14155552673").await.len(), 1, "one send only");

    let other = h
        .start_req(req("+14155552674"))
        .await
        .expect_err("same key, other destination");
    assert_eq!(other.code(), Code::InvalidArgument);

    // Ten concurrent starts with one fresh key: one send.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut c = h.client.clone();
        tasks.push(tokio::spawn(async move {
            c.start_verification(pb::StartVerificationRequest {
                purpose: "login".into(),
                to: "+14155552675".into(),
                idempotency_key: "burst".into(),
                ..Default::default()
            })
            .await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(r) => {
                ids.insert(r.into_inner().verification.expect("v").id);
            }
            Err(s) => assert_eq!(
                s.code(),
                Code::Aborted,
                "only 'in progress' may fail: {s:?}"
            ),
        }
    }
    assert!(ids.len() <= 1, "{ids:?}");
    assert_eq!(h.inbox("+14155552675").await.len(), 1, "exactly one send");
    h.shutdown().await;
}

async fn resends_are_limited_to_three(h: Harness) {
    let first = h.start_sms("+14155552676").await.expect("send 1");
    assert_eq!(first.sends_left, 2);
    let second = h.start_sms("+14155552676").await.expect("send 2");
    assert_eq!(
        second.id, first.id,
        "a resend reuses the pending verification"
    );
    let third = h
        .start_req(pb::StartVerificationRequest {
            purpose: "login".into(),
            to: "+14155552676".into(),
            channel: pb::Channel::Call.into(),
            ..Default::default()
        })
        .await
        .expect("send 3 by call");
    assert_eq!(third.channel(), pb::Channel::Call);
    assert_eq!(third.sends_left, 0);
    let err = h
        .start_sms("+14155552676")
        .await
        .expect_err("fourth send refused");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.get_details_retry_info().is_some());
    assert_eq!(h.inbox("+14155552676").await.len(), 3);
    h.shutdown().await;
}

async fn twilio_verdicts_map_to_grpc_with_details(h: Harness) {
    for (scenario, code, twilio) in [
        ("invalid_60200", Code::InvalidArgument, "60200"),
        ("landline_60205", Code::FailedPrecondition, "60205"),
        ("fraud_guard_60410", Code::PermissionDenied, "60410"),
        ("geo_blocked_60605", Code::PermissionDenied, "60605"),
        ("server_error_500", Code::Unavailable, ""),
    ] {
        let to = h.scenario(scenario).await;
        let err = h.start_sms(&to).await.expect_err(scenario);
        assert_eq!(err.code(), code, "{scenario}: {err:?}");
        let info = err.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.domain, "verify-gateway");
        if !twilio.is_empty() {
            assert_eq!(
                info.metadata.get("twilio_code").map(String::as_str),
                Some(twilio)
            );
        }
        if code == Code::Unavailable {
            assert!(
                err.get_details_retry_info().is_some(),
                "{scenario} says when to retry"
            );
        }
    }
    h.shutdown().await;
}

async fn cancel_ends_a_verification(h: Harness) {
    let v = h.start_sms("+14155552677").await.expect("start");
    let mut c = h.client.clone();
    let canceled = c
        .cancel_verification(pb::CancelVerificationRequest { id: v.id.clone() })
        .await
        .expect("cancel")
        .into_inner()
        .verification
        .expect("v");
    assert_eq!(canceled.status(), pb::VerificationStatus::Canceled);
    let code = h.latest_code("+14155552677").await;
    let err = h.check(&v.id, &code).await.expect_err("canceled");
    assert_eq!(err.code(), Code::FailedPrecondition);
    h.shutdown().await;
}

async fn email_verifications_go_by_email(h: Harness) {
    let v = h
        .start_req(pb::StartVerificationRequest {
            purpose: "login".into(),
            to: "Jane.Doe@Example.com".into(),
            ..Default::default()
        })
        .await
        .expect("start by email");
    assert_eq!(v.channel(), pb::Channel::Email);
    assert_eq!(v.to_masked, "J***@example.com");
    let code = h.latest_code("Jane.Doe@example.com").await;
    assert!(h.check(&v.id, &code).await.expect("check").valid);
    h.shutdown().await;
}

/// One mailbox is one destination, however its address is written: the one-pending rule
/// and the per-destination limits see `Bob@…`, `bob@…` and `BOB+tag@…` as one.
async fn an_email_written_differently_is_the_same_destination(h: Harness) {
    let start = |to: &str| pb::StartVerificationRequest {
        purpose: "login".into(),
        to: to.into(),
        ..Default::default()
    };
    let first = h
        .start_req(start("Bob@Example.com"))
        .await
        .expect("first start");
    for again in ["bob@example.com", "BOB+login@example.com"] {
        let resent = h.start_req(start(again)).await.expect("a resend");
        assert_eq!(resent.id, first.id, "{again} started another verification");
    }
    // Past max_sends (3) for the one mailbox, however it is written.
    let refused = h
        .start_req(start("bob+other@EXAMPLE.com"))
        .await
        .expect_err("a fourth send to one mailbox");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // Every send went to the address the verification was started with.
    let code = h.latest_code("Bob@example.com").await;
    assert_eq!(h.inbox("Bob@example.com").await.len(), 3);
    assert!(h.check(&first.id, &code).await.expect("check").valid);
    h.shutdown().await;
}

/// The caller's `identity` is kept as a keyed hash: never in clear in the database, while a
/// start of the same identity still resends on its verification and another's is refused.
async fn identities_are_stored_as_keyed_hashes(h: Harness) {
    let start = |identity: &str| pb::StartVerificationRequest {
        purpose: "login".into(),
        to: "+14155552681".into(),
        identity: identity.into(),
        ..Default::default()
    };
    let first = h.start_req(start("user-secret-42")).await.expect("start");
    let again = h.start_req(start("user-secret-42")).await.expect("resend");
    assert_eq!(again.id, first.id, "the same identity resends on it");
    let other = h
        .start_req(start("someone-else"))
        .await
        .expect_err("another identity");
    assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
    assert_eq!(
        h.count("SELECT COUNT(*) FROM verifications WHERE identity IS NOT NULL")
            .await,
        1
    );
    assert_eq!(
        h.count(
            "SELECT COUNT(*) FROM verifications WHERE identity LIKE '%secret%' \
             OR identity LIKE '%user%'"
        )
        .await,
        0,
        "the identity is in clear"
    );
    h.shutdown().await;
}

/// The embedded store's directory is its owner's only: SQLite's files and the development
/// keys are in it.
#[tokio::test]
async fn the_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::start().await;
    let mode = std::fs::metadata(&h.data_dir)
        .expect("data dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    h.shutdown().await;
}

/// `StartVerificationRequest` with `to` as raw bytes, to send what no client library would.
#[derive(Clone, PartialEq, prost::Message)]
struct RawStart {
    #[prost(string, tag = "1")]
    purpose: String,
    #[prost(bytes = "vec", tag = "2")]
    to: Vec<u8>,
}

/// A request that does not decode (a string field that is not UTF-8) is the caller's
/// error, named by its field, and writes nothing.
async fn a_request_that_does_not_decode_is_invalid_argument(h: Harness) {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", h.grpc_addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let refused = grpc
        .unary(
            tonic::Request::new(RawStart {
                purpose: "login".into(),
                to: b"+1415\xff\xfe2671".to_vec(),
            }),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/verify.v1.VerifyService/StartVerification",
            ),
            proto::codec::ProtoCodec::<RawStart, pb::StartVerificationResponse>::default(),
        )
        .await
        .expect_err("not UTF-8");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("StartVerificationRequest.to"),
        "{refused:?}"
    );
    assert_eq!(h.row_count().await, 0);
    h.shutdown().await;
}

async fn health_is_served(h: Harness) {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", h.grpc_addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "verify.v1.VerifyService".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        r.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    h.shutdown().await;
}

on_both_backends!(
    start_read_inbox_check_approves,
    bad_input_is_invalid_argument_and_writes_nothing,
    our_check_limit_ends_it_and_cancels_upstream,
    idempotency_key_never_sends_twice,
    resends_are_limited_to_three,
    cancel_ends_a_verification,
    email_verifications_go_by_email,
    an_email_written_differently_is_the_same_destination,
    a_request_that_does_not_decode_is_invalid_argument,
    identities_are_stored_as_keyed_hashes,
    health_is_served,
);

/// Twilio's verdicts one after another on the sandbox's scenario numbers, with fraud scoring
/// off: with it on, the Fraud Guard verdict blocks the scenario numbers' range (as it
/// should), and the next scenario would be refused by the gateway before Twilio.
mod scoring_off {
    use super::*;

    on_both_backends!(
        config = "[fraud]\nmode = \"off\"\n";
        twilio_verdicts_map_to_grpc_with_details,
    );
}
