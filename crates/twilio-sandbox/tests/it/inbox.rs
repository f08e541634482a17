//! The dev inbox: every send, newest first, filterable, bounded.

use reqwest::StatusCode;
use twilio_sandbox::DEV_SERVICE_SID;

use crate::support::{start, start_dev, test_config};

#[tokio::test]
async fn inbox_lists_every_send_newest_first() -> anyhow::Result<()> {
    let sandbox = start_dev().await?;
    let a = "+14155552691";
    let b = "user@example.com";
    let first = sandbox.create(a, "sms").await?;
    sandbox.create(b, "email").await?;
    sandbox
        .send(
            sandbox
                .authed(
                    reqwest::Method::POST,
                    &sandbox.service_path("/Verifications"),
                )
                .form(&[("To", a), ("Channel", "whatsapp"), ("Locale", "pt-BR")]),
        )
        .await?;

    let all = sandbox.inbox(None).await?;
    let order: Vec<(&str, &str)> = all
        .iter()
        .map(|m| {
            (
                m["to"].as_str().unwrap_or(""),
                m["channel"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(order, [(a, "whatsapp"), (b, "email"), (a, "sms")]);

    let newest = &all[0];
    let keys: Vec<&str> = newest
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort_unstable();
    assert_eq!(
        keys_sorted,
        [
            "attempt_sid",
            "channel",
            "code",
            "error_code",
            "locale",
            "sent_at",
            "service_sid",
            "status",
            "to",
            "verification_sid"
        ]
    );
    assert_eq!(newest["verification_sid"], first.body["sid"]);
    assert_eq!(
        all[2]["attempt_sid"],
        first.body["send_code_attempts"][0]["attempt_sid"]
    );
    assert_eq!(newest["service_sid"], DEV_SERVICE_SID);
    assert_eq!(newest["locale"], "pt-BR");
    assert!(all[2]["locale"].is_null());
    // A resend carries the same code.
    assert_eq!(newest["code"], all[2]["code"]);

    let only_a = sandbox.inbox(Some(a)).await?;
    assert_eq!(only_a.len(), 2);
    assert!(only_a.iter().all(|m| m["to"] == a));
    // A `+` typed unencoded in the query decodes to a space and is read back as `+`.
    let raw = sandbox
        .client
        .get(sandbox.url(&format!("/sandbox/messages?to={a}")))
        .send()
        .await?;
    assert_eq!(raw.status(), StatusCode::OK);
    let raw: Vec<serde_json::Value> = raw.json().await?;
    assert_eq!(raw.len(), 2);
    assert!(sandbox.inbox(Some("+14155550000")).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn inbox_keeps_only_the_newest_messages() -> anyhow::Result<()> {
    let mut config = test_config();
    config.inbox_capacity = 3;
    let sandbox = start(config).await?;
    let numbers = [
        "+14155552601",
        "+14155552602",
        "+14155552603",
        "+14155552604",
        "+14155552605",
    ];
    for to in numbers {
        sandbox.create(to, "sms").await?;
    }
    let kept: Vec<String> = sandbox
        .inbox(None)
        .await?
        .iter()
        .map(|m| m["to"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(kept, ["+14155552605", "+14155552604", "+14155552603"]);
    Ok(())
}
