//! Magic destinations: listed without auth, each answering its Twilio failure.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::start_dev;

#[tokio::test]
async fn scenarios_are_listed_in_order_without_auth() -> anyhow::Result<()> {
    let sandbox = start_dev().await?;
    let response = sandbox
        .client
        .get(sandbox.url("/sandbox/scenarios"))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await?;
    let expected: Vec<String> = twilio_sandbox::scenarios()
        .into_iter()
        .map(|(name, to)| format!("\"{name}\":\"{to}\""))
        .collect();
    assert_eq!(text, format!("{{{}}}", expected.join(",")));
    for required in [
        "invalid_60200",
        "landline_60205",
        "fraud_guard_60410",
        "geo_blocked_60605",
        "server_error_500",
        "slow",
        "rate_limited_20429",
        "delivered",
        "undelivered_30003",
        "landline_30006",
        "silent",
    ] {
        assert!(
            text.contains(&format!("\"{required}\"")),
            "{required} missing: {text}"
        );
    }
    Ok(())
}

fn destination(name: &str) -> String {
    twilio_sandbox::scenarios()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, to)| to.to_owned())
        .unwrap_or_else(|| panic!("scenario {name} exists"))
}

#[tokio::test]
async fn each_failure_scenario_answers_its_error() -> anyhow::Result<()> {
    let sandbox = start_dev().await?;
    for (name, status, code, message) in [
        ("invalid_60200", 400, 60200, "Invalid parameter: To"),
        (
            "landline_60205",
            403,
            60205,
            "SMS is not supported by landline phone number",
        ),
        (
            "fraud_guard_60410",
            403,
            60410,
            "Verification delivery attempt blocked",
        ),
        (
            "geo_blocked_60605",
            403,
            60605,
            "The destination phone number has been blocked by Verify Geo-Permissions",
        ),
        ("rate_limited_20429", 429, 20429, "Too many requests"),
        ("server_error_500", 500, 20500, "Internal Server Error"),
    ] {
        let to = destination(name);
        let answer = sandbox.create(&to, "sms").await?;
        answer.assert_error(status, code, message);
        assert_eq!(
            answer.headers.get("retry-after").is_some(),
            status == 429,
            "{name}: Retry-After only on 429"
        );
        // Nothing was sent.
        assert!(sandbox.inbox(Some(&to)).await?.is_empty(), "{name}");
    }
    Ok(())
}

#[tokio::test]
async fn landline_accepts_calls() -> anyhow::Result<()> {
    let sandbox = start_dev().await?;
    let to = destination("landline_60205");
    let call = sandbox.create(&to, "call").await?;
    assert_eq!(call.status, StatusCode::CREATED, "{call:?}");
    assert_eq!(sandbox.inbox(Some(&to)).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn slow_answers_normally_after_the_delay() -> anyhow::Result<()> {
    let sandbox = start_dev().await?;
    let to = destination("slow");
    let started = Instant::now();
    let created = sandbox.create(&to, "sms").await?;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(created.status, StatusCode::CREATED);
    let code = sandbox.latest_code(&to).await?;
    let started = Instant::now();
    let approved = sandbox.check_to(&to, &code).await?;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(approved.str("status"), "approved");
    Ok(())
}

#[tokio::test]
async fn delivery_scenarios_are_accepted_on_every_phone_channel() -> anyhow::Result<()> {
    let sandbox = start_dev().await?;
    for (name, to) in [
        ("delivered", "+14155550107"),
        ("undelivered_30003", "+14155550108"),
        ("landline_30006", "+14155550109"),
        ("silent", "+14155550110"),
    ] {
        assert_eq!(destination(name), to);
        // They fail later, in the delivery reports; the API accepts every send.
        for channel in ["sms", "call", "whatsapp"] {
            let answer = sandbox.create(to, channel).await?;
            assert_eq!(
                answer.status,
                StatusCode::CREATED,
                "{name} {channel}: {answer:?}"
            );
        }
        assert_eq!(sandbox.inbox(Some(to)).await?.len(), 3, "{name}");
    }
    Ok(())
}

#[tokio::test]
async fn any_other_valid_destination_succeeds() -> anyhow::Result<()> {
    let sandbox = start_dev().await?;
    for to in ["+14155550199", "+442079460958", "+33612345678"] {
        let answer = sandbox.create(to, "sms").await?;
        assert_eq!(answer.status, StatusCode::CREATED, "{to}: {answer:?}");
    }
    Ok(())
}
