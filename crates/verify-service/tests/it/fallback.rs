//! Delivery-aware fallback end to end in the embedded gateway, on SQLite and PostgreSQL: the
//! sandbox posts signed Verify Events to the embedded webhook receiver, which stores them
//! and publishes them on the in-process bus; the gateway's consumer falls back from SMS to a
//! voice call when the SMS is undelivered or no report arrives in time.

use std::time::{Duration, Instant};

use proto::verify::v1 as pb;

use crate::harness::Harness;
use crate::on_both_backends;

/// Silence is declared after 1 s, so the tests stay short.
const CONFIG: &str = "[purposes.login]\nfallback_after_seconds = 1\n";

async fn start(h: &Harness, to: &str, allow_fallback: bool) -> pb::Verification {
    h.start_req(pb::StartVerificationRequest {
        purpose: "login".into(),
        to: to.into(),
        channel: pb::Channel::Sms.into(),
        allow_fallback,
        ..Default::default()
    })
    .await
    .expect("start")
}

/// The channels of the messages the sandbox "sent" to `to`, oldest first.
async fn sent_channels(h: &Harness, to: &str) -> Vec<String> {
    let mut channels: Vec<String> = h
        .inbox(to)
        .await
        .iter()
        .filter_map(|m| m["channel"].as_str().map(str::to_owned))
        .collect();
    channels.reverse();
    channels
}

/// Polls until the sandbox has sent a call to `to`; returns how long that took.
async fn wait_for_call(h: &Harness, to: &str, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if sent_channels(h, to).await.iter().any(|c| c == "call") {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

async fn undelivered_sms_falls_back_to_a_call(h: Harness) {
    let to = h.scenario("undelivered_30003").await;
    let v = start(&h, &to, true).await;
    assert!(v.allow_fallback);
    let took = wait_for_call(&h, &to, Duration::from_secs(2))
        .await
        .expect("a call within 2 seconds of the start");
    eprintln!("undelivered_30003: call placed {took:?} after the start");
    assert_eq!(sent_channels(&h, &to).await, ["sms", "call"]);

    let got = h.get(&v.id).await.expect("get");
    assert_eq!(got.channel(), pb::Channel::Call);
    assert_eq!(
        got.channels_tried,
        [i32::from(pb::Channel::Sms), i32::from(pb::Channel::Call)]
    );
    assert_eq!(got.fallback_reason, "undelivered_30003");
    assert_eq!(got.sends_left, 1, "the fallback counts as a send");
    assert_eq!(got.status(), pb::VerificationStatus::Pending);

    // The call's code approves the verification.
    let code = h.latest_code(&to).await;
    let checked = h.check(&v.id, &code).await.expect("check");
    assert!(checked.valid);

    // Once the call is delivered nothing else happens: one SMS, one call.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sent_channels(&h, &to).await, ["sms", "call"]);
    h.shutdown().await;
}

async fn silence_falls_back_after_the_timeout(h: Harness) {
    let to = h.scenario("silent").await;
    let v = start(&h, &to, true).await;
    let took = wait_for_call(&h, &to, Duration::from_secs(5))
        .await
        .expect("a call after fallback_after_seconds");
    eprintln!("silent: call placed {took:?} after the start (fallback_after_seconds = 1)");
    assert!(
        took >= Duration::from_millis(900),
        "not before the timeout: {took:?}"
    );
    let got = h.get(&v.id).await.expect("get");
    assert_eq!(got.channel(), pb::Channel::Call);
    assert_eq!(got.fallback_reason, "no_delivery_report");
    h.shutdown().await;
}

async fn delivered_sms_never_falls_back(h: Harness) {
    let to = h.scenario("delivered").await;
    let v = start(&h, &to, true).await;
    // Past the silence timeout and the report: still only the SMS.
    assert_eq!(wait_for_call(&h, &to, Duration::from_secs(3)).await, None);
    let got = h.get(&v.id).await.expect("get");
    assert_eq!(got.channel(), pb::Channel::Sms);
    assert_eq!(got.delivery_status, "delivered");
    assert_eq!(got.fallback_reason, "");
    assert_eq!(sent_channels(&h, &to).await, ["sms"]);
    h.shutdown().await;
}

async fn no_fallback_without_consent(h: Harness) {
    let to = h.scenario("undelivered_30003").await;
    let v = start(&h, &to, false).await;
    assert_eq!(wait_for_call(&h, &to, Duration::from_secs(3)).await, None);
    let got = h.get(&v.id).await.expect("get");
    assert_eq!(got.channel(), pb::Channel::Sms);
    assert_eq!(got.delivery_status, "undelivered");
    assert_eq!(got.fallback_reason, "");
    h.shutdown().await;
}

async fn no_fallback_after_approval(h: Harness) {
    let to = h.scenario("silent").await;
    let v = start(&h, &to, true).await;
    let code = h.latest_code(&to).await;
    assert!(h.check(&v.id, &code).await.expect("check").valid);
    // The silence check fires for an approved verification: nothing happens.
    assert_eq!(wait_for_call(&h, &to, Duration::from_secs(3)).await, None);
    h.shutdown().await;
}

on_both_backends!(
    config = super::CONFIG;
    undelivered_sms_falls_back_to_a_call,
    silence_falls_back_after_the_timeout,
    delivered_sms_never_falls_back,
    no_fallback_without_consent,
    no_fallback_after_approval,
);
