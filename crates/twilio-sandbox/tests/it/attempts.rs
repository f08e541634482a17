//! `GET /v2/Attempts`: the sandbox's own send attempts in Twilio's list body, within the
//! filters the gateway's reconciliation uses, behind Basic auth, and Twilio's 400 for a
//! malformed filter.

use reqwest::{Method, StatusCode};
use serde_json::Value;
use twilio_sandbox::{DEV_ACCOUNT_SID, DEV_SERVICE_SID};

use crate::support::{TestSandbox, start_dev};

/// `GET /v2/Attempts` with `query` (pairs, encoded here) and the dev credentials.
async fn list(
    sandbox: &TestSandbox,
    query: &[(&str, &str)],
) -> anyhow::Result<crate::support::Answer> {
    let query = serde_urlencoded::to_string(query)?;
    sandbox
        .send(sandbox.authed(Method::GET, &format!("/v2/Attempts?{query}")))
        .await
}

fn field<'a>(attempts: &'a Value, key: &str) -> Vec<&'a str> {
    attempts
        .as_array()
        .map(|list| list.iter().filter_map(|a| a[key].as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn attempts_are_listed_within_the_filters() -> anyhow::Result<()> {
    let sandbox = start_dev().await?;
    let to = "+14155552671";
    let first = sandbox.create(to, "sms").await?;
    let resent = sandbox.create(to, "call").await?;
    let other = sandbox.create("+14155552672", "sms").await?;
    let sid = first.str("sid").to_owned();
    assert_eq!(resent.str("sid"), sid, "a resend is the same verification");

    let all = list(&sandbox, &[]).await?;
    assert_eq!(all.status, StatusCode::OK, "{all:?}");
    assert_eq!(all.body["attempts"].as_array().map(Vec::len), Some(3));
    let meta = &all.body["meta"];
    assert_eq!(meta["key"], "attempts");
    assert_eq!(
        (meta["page"].as_u64(), meta["page_size"].as_u64()),
        (Some(0), Some(50))
    );
    assert_eq!(
        meta["url"],
        format!("{}/v2/Attempts?PageSize=50&Page=0", sandbox.base)
    );
    assert!(meta["next_page_url"].is_null() && meta["previous_page_url"].is_null());

    let mine = list(
        &sandbox,
        &[
            ("VerifyServiceSid", DEV_SERVICE_SID),
            ("ChannelData.To", to),
        ],
    )
    .await?;
    let attempts = &mine.body["attempts"];
    assert_eq!(
        field(attempts, "verification_sid"),
        [sid.as_str(), sid.as_str()]
    );
    // Newest first: the call, then the SMS; each the attempt its verification lists.
    assert_eq!(field(attempts, "channel"), ["call", "sms"]);
    let sent: Vec<&str> = resent.body["send_code_attempts"]
        .as_array()
        .map(|list| {
            list.iter()
                .rev()
                .filter_map(|a| a["attempt_sid"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(field(attempts, "sid"), sent);
    let one = &attempts[0];
    assert_eq!(one["account_sid"], DEV_ACCOUNT_SID);
    assert_eq!(one["service_sid"], DEV_SERVICE_SID);
    assert_eq!(one["conversion_status"], "unconverted");
    assert_eq!(one["channel_data"]["to"], to);
    assert_eq!(
        one["url"],
        format!("{}/v2/Attempts/{}", sandbox.base, sent[0])
    );
    assert_ne!(other.str("sid"), sid);

    // `DateCreatedAfter` in Twilio's form: nothing was made after a minute from now, all
    // after a minute ago.
    let later = (chrono::Utc::now() + chrono::Duration::minutes(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let earlier = (chrono::Utc::now() - chrono::Duration::minutes(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let none = list(
        &sandbox,
        &[("ChannelData.To", to), ("DateCreatedAfter", &later)],
    )
    .await?;
    assert_eq!(none.body["attempts"], serde_json::json!([]));
    let both = list(
        &sandbox,
        &[("ChannelData.To", to), ("DateCreatedAfter", &earlier)],
    )
    .await?;
    assert_eq!(both.body["attempts"].as_array().map(Vec::len), Some(2));

    let page = list(&sandbox, &[("PageSize", "1")]).await?;
    assert_eq!(page.body["attempts"].as_array().map(Vec::len), Some(1));
    assert_eq!(page.body["meta"]["page_size"], 1);
    // A well-formed service the sandbox does not have holds no attempts.
    let elsewhere = list(
        &sandbox,
        &[("VerifyServiceSid", "VAffffffffffffffffffffffffffffffff")],
    )
    .await?;
    assert_eq!(elsewhere.body["attempts"], serde_json::json!([]));
    Ok(())
}

#[tokio::test]
async fn attempts_need_auth_and_well_formed_filters() -> anyhow::Result<()> {
    let sandbox = start_dev().await?;
    let anonymous = sandbox
        .send(sandbox.client.get(sandbox.url("/v2/Attempts")))
        .await?;
    anonymous.assert_error(401, 20003, "Authenticate");
    for (key, value) in [
        ("VerifyServiceSid", "VA123"),
        ("VerifyServiceSid", "VE0123456789abcdef0123456789abcdef"),
        ("DateCreatedAfter", "yesterday"),
        ("DateCreatedAfter", "2026-13-01T00:00:00Z"),
        ("PageSize", "0"),
        ("PageSize", "1001"),
        ("PageSize", "many"),
    ] {
        list(&sandbox, &[(key, value)]).await?.assert_error(
            400,
            60200,
            &format!("Invalid parameter: {key}"),
        );
    }
    Ok(())
}
