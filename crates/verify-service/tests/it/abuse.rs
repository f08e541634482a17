//! Abuse protection through the real gateway: rate limits answered with RetryInfo and
//! QuotaFailure, fraud scoring refusing before anything reaches the sandbox and recording
//! why, shadow mode, the provider's verdicts fed back as blocks, and AdminService.

use proto::verify::admin::v1 as admin;
use proto::verify::admin::v1::admin_service_client::AdminServiceClient;
use proto::verify::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{Backend, Harness, wrong};
use crate::on_both_backends;

/// A GB premium-rate number (libphonenumber: PREMIUM_RATE).
const PREMIUM: &str = "+449098700001";

fn sms(to: &str) -> pb::StartVerificationRequest {
    pb::StartVerificationRequest {
        purpose: "login".into(),
        to: to.into(),
        channel: pb::Channel::Sms.into(),
        ..Default::default()
    }
}

async fn admin_client(h: &Harness) -> AdminServiceClient<tonic::transport::Channel> {
    AdminServiceClient::connect(format!("http://{}", h.grpc_addr))
        .await
        .expect("admin client connects")
}

on_both_backends!(
    premium_rate_numbers_are_blocked_before_the_provider,
    fraud_guard_verdicts_block_the_range_until_an_operator_lifts_it,
);

async fn premium_rate_numbers_are_blocked_before_the_provider(h: Harness) {
    let status = h.start_req(sms(PREMIUM)).await.expect_err("blocked");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "FRAUD_BLOCKED");
    assert_eq!(info.metadata["decision"], "block");
    assert!(
        info.metadata["reasons"].contains("NUMBER_TYPE_BLOCKED"),
        "{:?}",
        info.metadata
    );
    assert!(status.message().contains("premium"), "{}", status.message());
    assert!(
        !status.message().contains("9098700001"),
        "the reason never holds the number: {}",
        status.message()
    );
    // Nothing reached the provider; the refusal is on record with its reasons.
    assert!(h.inbox(PREMIUM).await.is_empty(), "nothing was sent");
    let v = h
        .get(&info.metadata["verification_id"])
        .await
        .expect("the blocked start is recorded");
    assert_eq!(v.status(), pb::VerificationStatus::Blocked);
    assert_eq!(v.sends_left, 0);
    let risk = v.risk.expect("the assessment is recorded");
    assert_eq!(risk.decision(), pb::RiskDecision::Block);
    assert!(!risk.shadow);
    assert!(
        risk.reasons
            .iter()
            .any(|r| r.code == "NUMBER_TYPE_BLOCKED" && r.message.contains("premium"))
    );
    // A check on it is refused as on any verification that is not pending.
    let err = h.check(&v.id, "123456").await.expect_err("not checkable");
    assert_eq!(err.code(), Code::FailedPrecondition);
    h.shutdown().await;
}

async fn fraud_guard_verdicts_block_the_range_until_an_operator_lifts_it(h: Harness) {
    let guarded = h.scenario("fraud_guard_60410").await;
    let err = h
        .start_req(sms(&guarded))
        .await
        .expect_err("Twilio refuses");
    assert_eq!(err.code(), Code::PermissionDenied);
    let details = err.get_error_details();
    assert_eq!(details.error_info().expect("info").reason, "TWILIO_60410");

    // The verdict blocked the number's range: the operator sees it...
    let range = "+141555";
    let mut admin = admin_client(&h).await;
    let blocks = admin
        .list_blocks(admin::ListBlocksRequest {
            kind: admin::BlockKind::Prefix.into(),
            page_size: 0,
        })
        .await
        .expect("list")
        .into_inner()
        .blocks;
    let block = blocks
        .iter()
        .find(|b| b.value == range)
        .unwrap_or_else(|| panic!("the range is blocked: {blocks:?}"));
    assert_eq!(block.source(), admin::BlockSource::Provider);
    assert_eq!(block.reason, "TWILIO_60410");

    // ...and another number of the range is refused without asking Twilio.
    let neighbour = "+14155552690";
    let err = h
        .start_req(sms(neighbour))
        .await
        .expect_err("range blocked");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.get_error_details().error_info().expect("info").reason,
        "FRAUD_BLOCKED"
    );
    assert!(h.inbox(neighbour).await.is_empty());

    // Lifted, the range works again.
    let lifted = admin
        .lift_block(admin::LiftBlockRequest {
            kind: admin::BlockKind::Prefix.into(),
            value: range.into(),
        })
        .await
        .expect("lift")
        .into_inner();
    assert!(lifted.lifted);
    h.start_req(sms(neighbour))
        .await
        .expect("sent after the lift");
    assert_eq!(h.inbox(neighbour).await.len(), 1);

    // Bad admin input names the field.
    let err = admin
        .lift_block(admin::LiftBlockRequest {
            kind: admin::BlockKind::Prefix.into(),
            value: "4155".into(),
        })
        .await
        .expect_err("not a range");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.get_details_bad_request()
            .expect("BadRequest")
            .field_violations[0]
            .field,
        "value"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn operators_block_and_the_block_holds() {
    let h = Harness::start().await;
    let mut admin = admin_client(&h).await;
    let block = admin
        .create_block(admin::CreateBlockRequest {
            kind: admin::BlockKind::Country.into(),
            value: "de".into(),
            detail: "no customers in Germany yet".into(),
            duration: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        })
        .await
        .expect("create")
        .into_inner()
        .block
        .expect("block");
    assert_eq!(block.value, "DE");
    assert_eq!(block.source(), admin::BlockSource::Operator);
    let err = h
        .start_req(sms("+491701234567"))
        .await
        .expect_err("country blocked");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("no customers in Germany yet") || err.message().contains("DE"),
        "the operator's reason is readable: {}",
        err.message()
    );
    h.shutdown().await;
}

#[tokio::test]
async fn shadow_mode_records_the_decision_and_sends() {
    let h = Harness::start_with(Backend::Sqlite, "[fraud]\nmode = \"shadow\"\n").await;
    let v = h.start_req(sms(PREMIUM)).await.expect("shadow mode sends");
    assert_eq!(v.status(), pb::VerificationStatus::Pending);
    let risk = v.risk.expect("scored");
    assert_eq!(risk.decision(), pb::RiskDecision::Block);
    assert!(risk.shadow);
    assert_eq!(h.inbox(PREMIUM).await.len(), 1, "sent despite the decision");
    h.shutdown().await;
}

#[tokio::test]
async fn limits_answer_with_retry_info_and_the_quota_that_refused() {
    let h = Harness::start_with(
        Backend::Sqlite,
        "[rate_limits]\nsend_per_destination = \"2/10m\"\ncheck_cooldown_seconds = 30\n",
    )
    .await;
    let to = "+14155552681";
    let mut client = h.client.clone();
    let first = client
        .start_verification(sms(to))
        .await
        .expect("first")
        .into_inner();
    assert_eq!(first.starts_left, 1, "one more start is allowed");
    let second = client
        .start_verification(sms(to))
        .await
        .expect("second")
        .into_inner();
    assert_eq!(second.starts_left, 0);
    let refused = client
        .start_verification(sms(to))
        .await
        .expect_err("over the limit");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    let details = refused.get_error_details();
    let quota = details.quota_failure().expect("QuotaFailure");
    assert_eq!(quota.violations[0].subject, "send_per_destination");
    assert!(quota.violations[0].description.contains("2 per 10 minutes"));
    let retry = details
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(
        (1..=300).contains(&retry.as_secs()),
        "one send frees up in 5 minutes: {retry:?}"
    );
    assert!(
        !refused.message().contains("5552681"),
        "{}",
        refused.message()
    );
    assert_eq!(h.inbox(to).await.len(), 2, "two sends, no third");

    // A wrong code starts the cooldown; the right one must wait for it.
    let id = first.verification.expect("v").id;
    let code = h.latest_code(to).await;
    let checked = h.check(&id, &wrong(&code)).await.expect("wrong code");
    assert!(!checked.valid);
    assert_eq!(checked.attempts_left, 2);
    let cooling = h.check(&id, &code).await.expect_err("cooldown");
    assert_eq!(cooling.code(), Code::ResourceExhausted);
    assert_eq!(
        cooling
            .get_error_details()
            .quota_failure()
            .expect("quota")
            .violations[0]
            .subject,
        "check_cooldown"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn the_check_limit_per_verification_is_taken_only_when_it_can_refuse() {
    let checks_limited = "SELECT COUNT(*) FROM rate_limits WHERE key LIKE 'check:%:ver:%'";
    // The default, 30 checks per verification, is more than `max_checks` (3): it could
    // never refuse, so nothing is taken or stored for it.
    let h = Harness::start_on(Backend::Sqlite).await;
    let to = "+14155552684";
    let id = h.start_sms(to).await.expect("sent").id;
    let code = h.latest_code(to).await;
    let checked = h.check(&id, &wrong(&code)).await.expect("wrong code");
    assert_eq!(checked.attempts_left, 2);
    assert!(h.check(&id, &code).await.expect("right code").valid);
    assert_eq!(h.count(checks_limited).await, 0);
    h.shutdown().await;

    // Below `max_checks` the limit is what ends the checks.
    let h = Harness::start_with(
        Backend::Sqlite,
        "[rate_limits]\ncheck_per_identity = \"2/10m\"\n",
    )
    .await;
    let id = h.start_sms(to).await.expect("sent").id;
    let code = h.latest_code(to).await;
    let first = h.check(&id, &wrong(&code)).await.expect("first check");
    assert_eq!(first.attempts_left, 1, "the limit leaves one of the three");
    h.check(&id, &wrong(&code)).await.expect("second check");
    let refused = h.check(&id, &code).await.expect_err("third check");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(
        refused
            .get_error_details()
            .quota_failure()
            .expect("quota")
            .violations[0]
            .subject,
        "check_per_identity"
    );
    assert_eq!(h.count(checks_limited).await, 1);
    h.shutdown().await;
}

/// Guessing on one number does not restart with each new verification: every check of
/// every verification to it counts against `check_per_destination`, and other numbers
/// keep theirs.
#[tokio::test]
async fn guesses_on_one_destination_are_limited_across_its_verifications() {
    let h = Harness::start_with(
        Backend::Sqlite,
        "[rate_limits]\ncheck_per_destination = \"4/1d\"\n",
    )
    .await;
    let to = "+14155552695";
    let first = h.start_sms(to).await.expect("sent").id;
    let code = h.latest_code(to).await;
    for _ in 0..3 {
        h.check(&first, &wrong(&code)).await.expect("a wrong guess");
    }
    let ended = h.get(&first).await.expect("get");
    assert_eq!(ended.status(), pb::VerificationStatus::MaxAttemptsReached);

    // A new verification to the same number: one guess is left of the four.
    let second = h.start_sms(to).await.expect("sent again").id;
    assert_ne!(second, first);
    let code = h.latest_code(to).await;
    h.check(&second, &wrong(&code))
        .await
        .expect("the fourth guess");
    let refused = h
        .check(&second, &code)
        .await
        .expect_err("a fifth guess on the number");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        refused
            .get_error_details()
            .quota_failure()
            .expect("quota")
            .violations[0]
            .subject,
        "check_per_destination"
    );

    // Another number is not affected.
    let other = "+14155552696";
    let id = h.start_sms(other).await.expect("sent").id;
    let code = h.latest_code(other).await;
    assert!(h.check(&id, &code).await.expect("check").valid);
    h.shutdown().await;
}

#[tokio::test]
async fn metrics_count_decisions_and_refusals() {
    let h = Harness::start_with(
        Backend::Sqlite,
        "[rate_limits]\nsend_per_destination = \"1/10m\"\n",
    )
    .await;
    h.start_req(sms(PREMIUM)).await.expect_err("blocked");
    h.start_req(sms("+14155552683")).await.expect("sent");
    h.start_req(sms("+14155552683")).await.expect_err("limited");
    let text = h
        .http
        .get(&h.metrics)
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("text");
    for line in [
        r#"verify_fraud_decisions_total{decision="block",country="GB",mode="enforce"} 1"#,
        r#"verify_fraud_decisions_total{decision="allow",country="US",mode="enforce"} 1"#,
        r#"verify_fraud_reasons_total{reason="NUMBER_TYPE_BLOCKED",decision="block"} 1"#,
        // The in-process layer refuses it before the database is asked.
        r#"verify_rate_limit_refusals_total{limit="send_per_destination",layer="local"} 1"#,
        r#"verify_send_attempts_total{country="US"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn admin_service_needs_its_token_when_one_is_set() {
    let token = "an-admin-token-of-some-length";
    let h = Harness::start_with(Backend::Sqlite, &format!("[admin]\ntoken = \"{token}\"\n")).await;
    let mut admin = admin_client(&h).await;
    let err = admin
        .list_blocks(admin::ListBlocksRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut request = tonic::Request::new(admin::ListBlocksRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    admin.list_blocks(request).await.expect("with the token");
    h.shutdown().await;
}

/// Starts refused by one limit take from none of the others: a flood of starts to one
/// number, refused by its own limit, leaves its range and its country to everyone else.
/// Scoring runs in shadow mode, so only the limits refuse.
async fn refused_starts_take_nothing_from_other_limits(backend: Backend) {
    let h = Harness::start_with(
        backend,
        "[rate_limits]\nsend_per_destination = \"3/10m\"\nsend_per_range = \"10/10m\"\n\
         send_per_country = \"20/10m\"\n[fraud]\nmode = \"shadow\"\n",
    )
    .await;
    let flooded = "+14155552691";
    // A send and two resends, then well past the destination's limit, and past the
    // range's and the country's too.
    for i in 0..40 {
        match h.start_req(sms(flooded)).await {
            Ok(_) => assert!(i < 3, "start {i} to the flooded number was allowed"),
            Err(refused) => {
                assert!(i >= 3, "start {i}: {refused:?}");
                assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
                let details = refused.get_error_details();
                let quota = details.quota_failure().expect("QuotaFailure");
                assert_eq!(quota.violations[0].subject, "send_per_destination");
            }
        }
    }
    // Another number of the range (the same number without its last five digits) ...
    let neighbour = "+14155553692";
    h.start_req(sms(neighbour))
        .await
        .expect("the range lost nothing to the refused starts");
    // ... and a number of another range of the country are still served.
    let elsewhere = "+12125552693";
    h.start_req(sms(elsewhere))
        .await
        .expect("the country lost nothing to the refused starts");
    assert_eq!(h.inbox(neighbour).await.len(), 1);
    assert_eq!(h.inbox(elsewhere).await.len(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn refused_starts_take_nothing_from_other_limits_on_sqlite() {
    refused_starts_take_nothing_from_other_limits(Backend::Sqlite).await;
}

#[tokio::test]
async fn refused_starts_take_nothing_from_other_limits_on_postgres() {
    refused_starts_take_nothing_from_other_limits(Backend::Postgres).await;
}

/// A start scoring refuses sends nothing: it takes from its sender's limits (here the
/// client IP's), which bound how often anyone may ask, but not from its range's, so an
/// attacker's refused starts leave the range's sends to its real users.
async fn starts_scoring_refuses_spend_only_their_senders_limits(backend: Backend) {
    let h = Harness::start_with(
        backend,
        "[rate_limits]\nsend_per_range = \"3/10m\"\nsend_per_client_ip = \"6/10m\"\n",
    )
    .await;
    let mut admin = admin_client(&h).await;
    let range = admin::CreateBlockRequest {
        kind: admin::BlockKind::Prefix.into(),
        value: "+4474001".into(),
        detail: "under attack".into(),
        duration: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
    };
    admin
        .create_block(range.clone())
        .await
        .expect("block the range");
    let attacker = |i: u32| pb::StartVerificationRequest {
        client_ip: "198.51.100.7".into(),
        ..sms(&format!("+4474001{:05}", 23_450 + i))
    };
    // Six refusals by the range's block: twice the range's limit, all the IP's.
    for i in 0..6 {
        let refused = h
            .start_req(attacker(i))
            .await
            .expect_err("the range is blocked");
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "start {i}: {refused:?}"
        );
    }
    // The seventh is refused by the IP's limit: refused starts count for their sender.
    let limited = h.start_req(attacker(6)).await.expect_err("the IP is spent");
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    let details = limited.get_error_details();
    let quota = details.quota_failure().expect("QuotaFailure");
    assert_eq!(quota.violations[0].subject, "send_per_client_ip");
    // Once the block is lifted, the range's three sends are all there.
    admin
        .lift_block(admin::LiftBlockRequest {
            kind: range.kind,
            value: range.value.clone(),
        })
        .await
        .expect("lift the block");
    for i in 0..3 {
        let to = format!("+4474001{:05}", 67_890 + i);
        h.start_req(sms(&to))
            .await
            .unwrap_or_else(|e| panic!("send {i} to the range: {e:?}"));
        assert_eq!(h.inbox(&to).await.len(), 1);
    }
    let spent = h
        .start_req(sms("+447400199999"))
        .await
        .expect_err("the range's limit holds");
    assert_eq!(spent.code(), Code::ResourceExhausted, "{spent:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn starts_scoring_refuses_spend_only_their_senders_limits_on_sqlite() {
    starts_scoring_refuses_spend_only_their_senders_limits(Backend::Sqlite).await;
}

#[tokio::test]
async fn starts_scoring_refuses_spend_only_their_senders_limits_on_postgres() {
    starts_scoring_refuses_spend_only_their_senders_limits(Backend::Postgres).await;
}

/// The embedded default (fraud scoring enforced) against its own sandbox: the scenario
/// numbers, a block of sequential numbers whose codes are never entered, can be tried
/// again and again without scoring blocking their range, which also holds the README's
/// example number. Limits still apply to them.
#[tokio::test]
async fn scenario_numbers_can_be_tried_again_and_again_in_the_embedded_default() {
    let h = Harness::start().await;
    let mut admin = admin_client(&h).await;
    let names = ["delivered", "undelivered_30003", "landline_30006", "silent"];
    let mut numbers = Vec::new();
    for name in names {
        numbers.push(h.scenario(name).await);
    }
    let mut sent = 0;
    for round in 0..4 {
        for to in &numbers {
            match h.start_req(sms(to)).await {
                Ok(v) => {
                    sent += 1;
                    assert!(v.risk.is_none(), "round {round}: {to} was scored: {v:?}");
                    // A new verification next round, as a developer trying again starts.
                    h.client
                        .clone()
                        .cancel_verification(pb::CancelVerificationRequest { id: v.id })
                        .await
                        .expect("cancelled");
                }
                Err(status) => {
                    // Only a limit may refuse a start here, never scoring.
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                }
            }
        }
    }
    assert!(sent >= numbers.len() * 2, "only {sent} starts were sent");
    let blocks = admin
        .list_blocks(admin::ListBlocksRequest {
            kind: admin::BlockKind::Unspecified.into(),
            page_size: 0,
        })
        .await
        .expect("list")
        .into_inner()
        .blocks;
    assert!(blocks.is_empty(), "nothing blocked: {blocks:?}");
    // The README's example number, in the same range, is scored as usual and sent.
    let example = h
        .start_req(sms("+14155552671"))
        .await
        .expect("the example number is sent");
    assert_eq!(
        example.risk.map(|r| r.decision()),
        Some(pb::RiskDecision::Allow)
    );
    h.shutdown().await;
}

/// A client network whose users walk away from the step-ups they are asked is blocked; one
/// whose users pass them (and start again with `step_up_completed`) never is. Tuned low so
/// that a few starts tell: two unconverted sends step a network up, three step-ups asked
/// and none completed block it.
async fn a_network_that_walks_away_from_its_step_ups_is_blocked(backend: Backend) {
    let h = Harness::start_with(
        backend,
        "[fraud.network_conversion]\ntiers = [[2, 5, 60]]\n\
         [fraud.network_step_ups]\ntiers = [[3, 20, 100]]\n",
    )
    .await;
    // Each start a new number in its own range, from its own address of the network: no
    // signal but the network's sees anything.
    let start = |network: &str, i: u32, step_up_completed: bool| pb::StartVerificationRequest {
        client_ip: format!("{network}.{}", 10 + i),
        step_up_completed,
        ..sms(&format!("+4477{:03}{:05}", 100 + i, 23_456 + i))
    };
    let walker = "198.51.100";
    for i in 0..2 {
        h.start_req(start(walker, i, false))
            .await
            .unwrap_or_else(|e| panic!("start {i} is sent: {e:?}"));
    }
    for i in 2..5 {
        let refused = h
            .start_req(start(walker, i, false))
            .await
            .expect_err("a step-up");
        assert_eq!(
            refused.code(),
            Code::FailedPrecondition,
            "start {i}: {refused:?}"
        );
    }
    let blocked = h
        .start_req(start(walker, 5, false))
        .await
        .expect_err("blocked");
    assert_eq!(blocked.code(), Code::PermissionDenied, "{blocked:?}");
    let details = blocked.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert!(
        info.metadata["reasons"].contains("NETWORK_STEP_UPS_IGNORED"),
        "{:?}",
        info.metadata
    );
    // The network itself is blocked: even a start that passed a step-up is refused.
    let after = h
        .start_req(start(walker, 6, true))
        .await
        .expect_err("blocked");
    assert_eq!(after.code(), Code::PermissionDenied, "{after:?}");
    let mut admin = admin_client(&h).await;
    let blocks = admin
        .list_blocks(admin::ListBlocksRequest::default())
        .await
        .expect("list blocks")
        .into_inner();
    assert!(
        blocks
            .blocks
            .iter()
            .any(|b| b.value == "198.51.100.0/24" && b.reason == "NETWORK_STEP_UPS_IGNORED"),
        "{blocks:?}"
    );

    // Users who pass their step-ups keep their network open.
    let passer = "203.0.113";
    for i in 0..8 {
        let to = start(passer, 20 + i, false);
        match h.start_req(to.clone()).await {
            Ok(_) => {}
            Err(refused) => {
                assert_eq!(
                    refused.code(),
                    Code::FailedPrecondition,
                    "start {i}: {refused:?}"
                );
                h.start_req(pb::StartVerificationRequest {
                    step_up_completed: true,
                    ..to
                })
                .await
                .unwrap_or_else(|e| panic!("start {i} after its step-up: {e:?}"));
            }
        }
    }
    h.shutdown().await;
}

#[tokio::test]
async fn a_network_that_walks_away_from_its_step_ups_is_blocked_on_sqlite() {
    a_network_that_walks_away_from_its_step_ups_is_blocked(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_network_that_walks_away_from_its_step_ups_is_blocked_on_postgres() {
    a_network_that_walks_away_from_its_step_ups_is_blocked(Backend::Postgres).await;
}

/// Shadow mode asks nobody to step up and sends every start, so a shadow step-up's code
/// entered is what counts as the step-up completed: a network that never enters the codes
/// of its stepped-up starts gets the block enforce mode would impose (recorded in shadow),
/// one whose users enter them does not. Tuned as above.
async fn in_shadow_mode_step_ups_complete_by_their_codes(backend: Backend) {
    let h = Harness::start_with(
        backend,
        "[fraud]\nmode = \"shadow\"\n\
         [fraud.network_conversion]\ntiers = [[2, 5, 60]]\n\
         [fraud.network_step_ups]\ntiers = [[3, 20, 100]]\n",
    )
    .await;
    let number = |i: u32| format!("+4477{:03}{:05}", 100 + i, 23_456 + i);
    let start = |network: &str, i: u32| pb::StartVerificationRequest {
        client_ip: format!("{network}.{}", 10 + i),
        ..sms(&number(i))
    };
    let decision = |v: &pb::Verification| {
        let risk = v.risk.as_ref().expect("scored");
        assert!(risk.shadow, "{risk:?}");
        (
            risk.decision(),
            risk.reasons.first().map(|r| r.code.clone()),
        )
    };
    let walker = "198.51.100";
    let mut decisions = Vec::new();
    for i in 0..6 {
        let v = h
            .start_req(start(walker, i))
            .await
            .unwrap_or_else(|e| panic!("shadow mode sends start {i}: {e:?}"));
        decisions.push(decision(&v));
    }
    let step_up = (
        pb::RiskDecision::StepUp,
        Some("NETWORK_LOW_CONVERSION".to_owned()),
    );
    assert_eq!(
        decisions,
        [
            (pb::RiskDecision::Allow, None),
            (pb::RiskDecision::Allow, None),
            step_up.clone(),
            step_up.clone(),
            step_up.clone(),
            (
                pb::RiskDecision::Block,
                Some("NETWORK_STEP_UPS_IGNORED".to_owned())
            ),
        ]
    );
    let mut admin = admin_client(&h).await;
    let blocks = admin
        .list_blocks(admin::ListBlocksRequest::default())
        .await
        .expect("list blocks")
        .into_inner();
    assert!(
        blocks.blocks.iter().any(|b| b.value == "198.51.100.0/24"
            && b.reason == "NETWORK_STEP_UPS_IGNORED"
            && b.shadow),
        "{blocks:?}"
    );

    // Users who enter the codes of their stepped-up starts keep their network open.
    let passer = "203.0.113";
    let mut stepped_up = 0;
    for i in 20..28 {
        let v = h
            .start_req(start(passer, i))
            .await
            .unwrap_or_else(|e| panic!("shadow mode sends start {i}: {e:?}"));
        let (d, reason) = decision(&v);
        assert_ne!(d, pb::RiskDecision::Block, "start {i}: {reason:?}");
        if d == pb::RiskDecision::StepUp {
            stepped_up += 1;
            let code = h.latest_code(&number(i)).await;
            let checked = h.check(&v.id, &code).await.expect("check");
            assert!(checked.valid, "start {i}");
        }
    }
    assert!(stepped_up >= 3, "{stepped_up} starts stepped up");
    h.shutdown().await;
}

#[tokio::test]
async fn in_shadow_mode_step_ups_complete_by_their_codes_on_sqlite() {
    in_shadow_mode_step_ups_complete_by_their_codes(Backend::Sqlite).await;
}

#[tokio::test]
async fn in_shadow_mode_step_ups_complete_by_their_codes_on_postgres() {
    in_shadow_mode_step_ups_complete_by_their_codes(Backend::Postgres).await;
}
