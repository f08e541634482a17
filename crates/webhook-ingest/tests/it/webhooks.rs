//! The webhooks: signed Verify Events and status callbacks are stored once, without the
//! destination, and published once; altered, unsigned, oversized or malformed ones are
//! refused and store nothing; the signed URL comes from trusted proxies only.

use std::collections::BTreeSet;

use domain::delivery::DeliveryReport;
use serde_json::{Value, json};
use sqlx::Row;
use webhook_ingest::{MAX_BODY_BYTES, MESSAGE_STATUS_PATH, Settings, VERIFY_EVENTS_PATH};

use crate::support::{
    AUTH_TOKEN, DESTINATION, Harness, Signed, Table, WITHIN, answer, describe, http, message_event,
    settings, sign_form, sign_json,
};

/// The destination without its `+`, in case something stored it reformatted.
const DESTINATION_DIGITS: &str = "4155550108";

fn assert_no_destination(text: &str) {
    assert!(
        !text.contains(DESTINATION) && !text.contains(DESTINATION_DIGITS),
        "the destination is stored: {text}"
    );
}

/// The rows of `delivery_reports`, each as JSON, by dedupe key.
async fn report_rows(harness: &Harness) -> Vec<Value> {
    sqlx::query(
        "SELECT dedupe_key, provider_sid, message_sid, channel, status, error_code, message_id \
         FROM delivery_reports ORDER BY dedupe_key",
    )
    .fetch_all(&harness.pool)
    .await
    .expect("read delivery_reports")
    .iter()
    .map(|row| {
        json!({
            "dedupe_key": row.get::<String, _>("dedupe_key"),
            "provider_sid": row.get::<Option<String>, _>("provider_sid"),
            "message_sid": row.get::<Option<String>, _>("message_sid"),
            "channel": row.get::<Option<String>, _>("channel"),
            "status": row.get::<String, _>("status"),
            "error_code": row.get::<Option<i64>, _>("error_code"),
            "message_id": row.get::<String, _>("message_id"),
        })
    })
    .collect()
}

/// The outbox rows as (message id, kind, version, payload as JSON), by message id.
async fn outbox_rows(harness: &Harness) -> Vec<(String, String, i64, Value)> {
    sqlx::query("SELECT message_id, kind, version, payload FROM outbox ORDER BY message_id")
        .fetch_all(&harness.pool)
        .await
        .expect("read outbox")
        .iter()
        .map(|row| {
            let payload: Vec<u8> = row.get("payload");
            (
                row.get("message_id"),
                row.get("kind"),
                row.get("version"),
                serde_json::from_slice(&payload).expect("the payload is JSON"),
            )
        })
        .collect()
}

#[tokio::test]
async fn verify_events_signed_by_twilio_python_are_stored_and_published() {
    let harness = Harness::start().await;
    let body = json!([
        message_event("EZ0001", "VE0001", "UNDELIVERED", "30003"),
        message_event("EZ0002", "VE0002", "DELIVERED", ""),
        {
            "specversion": "1.0",
            "type": "com.twilio.accountsecurity.verify.verification.approved",
            "id": "EZ0003",
            "data": {"verification_sid": "VE0001", "verification_status": "APPROVED",
                     "to": DESTINATION}
        },
        message_event("EZ0004", "VE0001", "ACCEPTED", ""),
    ])
    .to_string();
    assert!(body.contains(DESTINATION), "the test posts a destination");

    let (status, answer) = harness.post_signed_events(&body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"stored": 2, "duplicates": 0, "skipped": 2}),
        "two message status events; a verification event and an unknown status skipped"
    );

    let reports = report_rows(&harness).await;
    let outbox = outbox_rows(&harness).await;
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert_eq!(outbox.len(), 2, "{outbox:?}");
    let expected = [
        ("ce:EZ0001", "VE0001", "undelivered", Some(30003)),
        ("ce:EZ0002", "VE0002", "delivered", None),
    ];
    for (row, (key, verification, status, error_code)) in reports.iter().zip(expected) {
        assert_eq!(row["dedupe_key"], key, "{row}");
        assert_eq!(row["provider_sid"], verification, "{row}");
        assert_eq!(row["message_sid"], format!("VL{verification}"), "{row}");
        assert_eq!(row["channel"], "sms", "{row}");
        assert_eq!(row["status"], status, "{row}");
        assert_eq!(row["error_code"], json!(error_code), "{row}");
        // Each report has its outbox message, written in the same transaction.
        let (_, kind, version, payload) = outbox
            .iter()
            .find(|(id, ..)| *id == row["message_id"])
            .unwrap_or_else(|| panic!("no outbox row for {row}"));
        assert_eq!((kind.as_str(), *version), ("delivery.reported", 1));
        assert_eq!(payload["dedupe_key"], key);
    }
    assert_no_destination(&harness.all_cells().await);

    // The relay publishes both; the consumer receives each exactly once, as the report.
    harness.all_published(WITHIN).await;
    let handled = harness.handled_reports(2, WITHIN).await;
    let raw = harness.seen.raw_reports();
    assert_eq!(raw.len(), 2, "deliveries: {}", describe(&raw));
    assert_eq!(handled.len(), 2);
    let published: BTreeSet<String> = outbox.iter().map(|(id, ..)| id.clone()).collect();
    let received: BTreeSet<String> = raw
        .iter()
        .map(|d| d.envelope.message_id.to_string())
        .collect();
    assert_eq!(received, published, "one message per outbox row, same ids");
    for (key, verification, status, error_code) in expected {
        let delivery = raw
            .iter()
            .find(|d| {
                serde_json::from_slice::<Value>(&d.envelope.payload).expect("JSON")["dedupe_key"]
                    == key
            })
            .unwrap_or_else(|| panic!("no delivery of {key}"));
        assert_eq!(delivery.envelope.kind.as_str(), "delivery.reported");
        assert_eq!(delivery.envelope.version, 1);
        let text = String::from_utf8(delivery.envelope.payload.clone()).expect("UTF-8");
        assert_no_destination(&text);
        let payload: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(payload["provider_sid"], verification, "{payload}");
        assert_eq!(payload["status"], status, "{payload}");
        assert_eq!(payload["error_code"], json!(error_code), "{payload}");
        assert_eq!(payload["channel"], "sms", "{payload}");
        let report: DeliveryReport = serde_json::from_value(payload).expect("a DeliveryReport");
        assert_eq!(
            report.occurred_at.to_rfc3339(),
            "2026-11-26T09:59:58.120+00:00"
        );
    }
    harness.finish().await;
}

/// One request to the Verify Events endpoint: where to, which headers, what body.
struct Attempt {
    what: &'static str,
    path_and_query: String,
    headers: Vec<(&'static str, String)>,
    body: String,
    status: u16,
    /// The `code` of the JSON error body (`None`: not checked).
    code: Option<&'static str>,
}

#[tokio::test]
async fn altered_unsigned_oversized_or_malformed_requests_store_nothing() {
    let harness = Harness::start().await;
    let url = format!("{}{VERIFY_EVENTS_PATH}", harness.public_base);
    let body = json!([message_event("EZ0100", "VE0100", "DELIVERED", "")]).to_string();
    let good = sign_json(AUTH_TOKEN, &url, &body);
    let good_path = good.path_and_query(&harness.public_base);
    let signature = |signed: &Signed| vec![("X-Twilio-Signature", signed.signature.clone())];

    let other_body = json!([message_event("EZ0100", "VE0100", "FAILED", "30008")]).to_string();
    let other_token = sign_json("another-accounts-auth-token", &url, &body);
    let malformed = r#"[{"id":"EZ0101","type":"#;
    let malformed_signed = sign_json(AUTH_TOKEN, &url, malformed);
    let not_events = r#"{"id":"EZ0102"}"#;
    let not_events_signed = sign_json(AUTH_TOKEN, &url, not_events);
    // Valid JSON, validly signed, one byte over the limit.
    let mut oversized = body.clone();
    oversized.push_str(&" ".repeat(MAX_BODY_BYTES + 1 - oversized.len()));
    let oversized_signed = sign_json(AUTH_TOKEN, &url, &oversized);

    let attempts = [
        Attempt {
            what: "body changed after signing",
            path_and_query: good_path.clone(),
            headers: signature(&good),
            body: other_body,
            status: 403,
            code: Some("body_hash_mismatch"),
        },
        Attempt {
            what: "query changed after signing",
            path_and_query: format!("{good_path}&tenant=other"),
            headers: signature(&good),
            body: body.clone(),
            status: 403,
            code: Some("invalid_signature"),
        },
        Attempt {
            what: "signed with another token",
            path_and_query: other_token.path_and_query(&harness.public_base),
            headers: signature(&other_token),
            body: body.clone(),
            status: 403,
            code: Some("invalid_signature"),
        },
        Attempt {
            what: "signed with an unknown SharedKey",
            path_and_query: good_path.clone(),
            headers: vec![
                ("X-Twilio-Signature", good.signature.clone()),
                (
                    "X-Twilio-Webhooks-Signature-Settings",
                    "key=KS00000000000000000000000000000000,algorithm=HMAC_SHA1".into(),
                ),
            ],
            body: body.clone(),
            status: 403,
            code: Some("unknown_shared_key"),
        },
        Attempt {
            what: "no signature",
            path_and_query: good_path.clone(),
            headers: Vec::new(),
            body: body.clone(),
            status: 400,
            code: Some("missing_signature"),
        },
        Attempt {
            what: "a signature that is not base64",
            path_and_query: good_path.clone(),
            headers: vec![("X-Twilio-Signature", "not a signature!".into())],
            body: body.clone(),
            status: 400,
            code: Some("malformed_signature"),
        },
        Attempt {
            what: "a malformed signature settings header",
            path_and_query: good_path.clone(),
            headers: vec![
                ("X-Twilio-Signature", good.signature.clone()),
                ("X-Twilio-Webhooks-Signature-Settings", "key".into()),
            ],
            body: body.clone(),
            status: 400,
            code: Some("malformed_signature_settings"),
        },
        Attempt {
            what: "no bodySHA256 in the URL",
            path_and_query: VERIFY_EVENTS_PATH.into(),
            headers: signature(&good),
            body: body.clone(),
            status: 400,
            code: Some("missing_body_hash"),
        },
        Attempt {
            what: "an oversized body",
            path_and_query: oversized_signed.path_and_query(&harness.public_base),
            headers: signature(&oversized_signed),
            body: oversized,
            status: 413,
            code: Some("body_too_large"),
        },
        Attempt {
            what: "validly signed malformed JSON",
            path_and_query: malformed_signed.path_and_query(&harness.public_base),
            headers: signature(&malformed_signed),
            body: malformed.into(),
            status: 400,
            code: Some("malformed_body"),
        },
        Attempt {
            what: "validly signed JSON that is not a CloudEvents array",
            path_and_query: not_events_signed.path_and_query(&harness.public_base),
            headers: signature(&not_events_signed),
            body: not_events.into(),
            status: 400,
            code: Some("malformed_body"),
        },
    ];
    for attempt in attempts {
        let mut request = http()
            .post(harness.url(&attempt.path_and_query))
            .header("content-type", "application/json")
            .body(attempt.body);
        for (name, value) in attempt.headers {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: no answer: {e}", attempt.what));
        let (status, answer) = answer(response).await;
        assert_eq!(status, attempt.status, "{}: {answer}", attempt.what);
        if let Some(code) = attempt.code {
            assert_eq!(answer["code"], code, "{}: {answer}", attempt.what);
        }
        assert_eq!(
            (
                harness.count(Table::DeliveryReports).await,
                harness.count(Table::Outbox).await
            ),
            (0, 0),
            "{} stored something",
            attempt.what
        );
    }

    // The request as signed is accepted: the refusals were about what was changed.
    let (status, answer) = harness.post_events(&good, &body).await;
    assert_eq!((status, &answer["stored"]), (200, &json!(1)), "{answer}");
    assert_eq!(harness.count(Table::DeliveryReports).await, 1);
    assert_eq!(harness.count(Table::Outbox).await, 1);
    harness.finish().await;
}

#[tokio::test]
async fn an_event_posted_again_is_stored_and_published_once() {
    let harness = Harness::start().await;
    let url = format!("{}{VERIFY_EVENTS_PATH}", harness.public_base);

    // Twilio retrying one delivery: the same request five times, one after another.
    let body = json!([message_event("EZ0200", "VE0200", "UNDELIVERED", "30005")]).to_string();
    let signed = sign_json(AUTH_TOKEN, &url, &body);
    let mut answers = Vec::new();
    for _ in 0..5 {
        let (status, answer) = harness.post_events(&signed, &body).await;
        assert_eq!(status, 200, "{answer}");
        answers.push(answer);
    }
    let duplicate = json!({"stored": 0, "duplicates": 1, "skipped": 0});
    assert_eq!(
        answers,
        [
            json!({"stored": 1, "duplicates": 0, "skipped": 0}),
            duplicate.clone(),
            duplicate.clone(),
            duplicate.clone(),
            duplicate.clone(),
        ]
    );
    assert_eq!(harness.count(Table::DeliveryReports).await, 1);
    assert_eq!(harness.count(Table::Outbox).await, 1);

    // Five copies of another event at once: still one of them is stored.
    let body = json!([message_event("EZ0201", "VE0201", "DELIVERED", "")]).to_string();
    let signed = sign_json(AUTH_TOKEN, &url, &body);
    let mut posts = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let request = http()
            .post(harness.url(&signed.path_and_query(&harness.public_base)))
            .header("content-type", "application/json")
            .header("X-Twilio-Signature", &signed.signature)
            .body(body.clone());
        posts.spawn(async move { answer(request.send().await.expect("request answered")).await });
    }
    let answers = posts.join_all().await;
    let (mut stored, mut duplicates) = (0, 0);
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
        stored += answer["stored"].as_u64().expect("a count");
        duplicates += answer["duplicates"].as_u64().expect("a count");
    }
    assert_eq!((stored, duplicates), (1, 4), "{answers:?}");
    assert_eq!(harness.count(Table::DeliveryReports).await, 2);
    assert_eq!(harness.count(Table::Outbox).await, 2);

    harness.all_published(WITHIN).await;
    let handled = harness.handled_reports(2, WITHIN).await;
    let raw = harness.seen.raw_reports();
    assert_eq!(raw.len(), 2, "each event received once: {}", describe(&raw));
    assert_eq!(handled.len(), 2);
    let keys: BTreeSet<String> = raw
        .iter()
        .map(|d| {
            serde_json::from_slice::<Value>(&d.envelope.payload).expect("JSON")["dedupe_key"]
                .as_str()
                .expect("a key")
                .to_owned()
        })
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["ce:EZ0200".to_owned(), "ce:EZ0201".to_owned()])
    );
    harness.finish().await;
}

fn status_callback(sid: &str, status: &str, error_code: Option<&str>) -> Vec<(String, String)> {
    let mut params = vec![
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("ApiVersion", "2010-04-01"),
        ("From", "+15005550006"),
        ("MessageSid", sid),
        ("MessageStatus", status),
        ("MessagingServiceSid", "MG00000000000000000000000000000000"),
        ("SmsSid", sid),
        ("SmsStatus", status),
        ("To", DESTINATION),
    ];
    if let Some(code) = error_code {
        params.push(("ErrorCode", code));
        params.push(("RawDlrDoneDate", "2611260959"));
    }
    params
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test]
async fn status_callbacks_signed_by_twilio_python_are_stored() {
    let harness = Harness::start().await;
    let url = format!("{}{MESSAGE_STATUS_PATH}", harness.public_base);
    let post = |signed: &Signed, content_type: &'static str, body: String| {
        let request = http()
            .post(harness.url(&signed.path_and_query(&harness.public_base)))
            .header("content-type", content_type)
            .header("X-Twilio-Signature", signed.signature.clone())
            .body(body);
        async move { answer(request.send().await.expect("request answered")).await }
    };
    const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";

    let params = status_callback(
        "SM00000000000000000000000000000300",
        "undelivered",
        Some("30003"),
    );
    let form = serde_urlencoded::to_string(&params).expect("a form");
    let signed = sign_form(AUTH_TOKEN, &url, &params);
    let (status, answer) = post(&signed, FORM, form.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"stored": 1, "duplicates": 0, "skipped": 0}));
    let rows = report_rows(&harness).await;
    let [row] = rows.as_slice() else {
        panic!("one report: {rows:?}")
    };
    assert_eq!(
        row["dedupe_key"],
        "ms:SM00000000000000000000000000000300:undelivered"
    );
    assert_eq!(row["provider_sid"], Value::Null);
    assert_eq!(row["message_sid"], "SM00000000000000000000000000000300");
    assert_eq!(row["channel"], "sms");
    assert_eq!(row["status"], "undelivered");
    assert_eq!(row["error_code"], 30003);
    assert_eq!(harness.count(Table::Outbox).await, 1);
    assert_no_destination(&harness.all_cells().await);

    // The same signed form under another content type is refused and stores nothing.
    for content_type in ["application/json", "text/plain"] {
        let (status, answer) = post(&signed, content_type, form.clone()).await;
        assert_eq!(status, 400, "{content_type}: {answer}");
        assert_eq!(answer["code"], "unsupported_content_type", "{answer}");
    }
    // A status the gateway does not act on is accepted (Twilio would retry) and skipped.
    let sending = status_callback("SM00000000000000000000000000000301", "sending", None);
    let signed_sending = sign_form(AUTH_TOKEN, &url, &sending);
    let (status, answer) = post(
        &signed_sending,
        FORM,
        serde_urlencoded::to_string(&sending).expect("a form"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"stored": 0, "duplicates": 0, "skipped": 1}));
    // A form changed after signing is refused.
    let mut changed = params.clone();
    changed.retain(|(k, _)| k != "ErrorCode");
    let (status, answer) = post(
        &signed,
        FORM,
        serde_urlencoded::to_string(&changed).expect("a form"),
    )
    .await;
    assert_eq!(
        (status, &answer["code"]),
        (403, &json!("invalid_signature"))
    );
    assert_eq!(harness.count(Table::DeliveryReports).await, 1);
    assert_eq!(harness.count(Table::Outbox).await, 1);

    harness.all_published(WITHIN).await;
    let handled = harness.handled_reports(1, WITHIN).await;
    let raw = harness.seen.raw_reports();
    assert_eq!((raw.len(), handled.len()), (1, 1), "{}", describe(&raw));
    let text = String::from_utf8(raw[0].envelope.payload.clone()).expect("UTF-8");
    assert_no_destination(&text);
    let report: DeliveryReport = serde_json::from_str(&text).expect("a DeliveryReport");
    assert_eq!(
        report.message_sid.as_deref(),
        Some("SM00000000000000000000000000000300")
    );
    assert_eq!(report.error_code, Some(30003));
    assert_eq!(report.status.as_str(), "undelivered");
    harness.finish().await;
}

/// Posts one Verify Event signed over `https://public.example/…` through a "proxy" on
/// loopback that says so in `X-Forwarded-Proto` and `X-Forwarded-Host`; returns the status
/// and how many reports were stored.
async fn through_proxy(settings: Settings) -> (u16, Value, i64) {
    let harness = Harness::start_with(settings).await;
    let public = "https://public.example";
    let body = json!([message_event("EZ0400", "VE0400", "DELIVERED", "")]).to_string();
    let signed = sign_json(AUTH_TOKEN, &format!("{public}{VERIFY_EVENTS_PATH}"), &body);
    let response = http()
        .post(harness.url(&signed.path_and_query(public)))
        .header("content-type", "application/json")
        .header("X-Twilio-Signature", &signed.signature)
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "public.example")
        .body(body)
        .send()
        .await
        .expect("request answered");
    let (status, answer) = answer(response).await;
    let stored = harness.count(Table::DeliveryReports).await;
    harness.finish().await;
    (status, answer, stored)
}

#[tokio::test]
async fn the_public_url_comes_from_trusted_proxies_only() {
    let loopback: ipnet::IpNet = "127.0.0.1/32".parse().expect("a network");

    let (status, answer, stored) = through_proxy(Settings {
        trusted_proxies: vec![loopback],
        ..settings()
    })
    .await;
    assert_eq!((status, stored), (200, 1), "trusted proxy: {answer}");

    let (status, answer, stored) = through_proxy(settings()).await;
    assert_eq!((status, stored), (403, 0), "no trusted proxy: {answer}");
    assert_eq!(answer["code"], "invalid_signature");

    // Listening on every IPv6 and IPv4 address, the proxy's IPv4 address reaches the server
    // as `::ffff:127.0.0.1`; it is still the trusted 127.0.0.1.
    let (status, answer, stored) = through_proxy(Settings {
        addr: "[::]:0".parse().expect("a socket address"),
        trusted_proxies: vec![loopback],
        ..settings()
    })
    .await;
    assert_eq!((status, stored), (200, 1), "dual-stack listener: {answer}");

    // Without a proxy the configured public base URL counts, path prefix included.
    let harness = Harness::start_with(Settings {
        public_base_url: Some("https://hooks.example.com/twilio".parse().expect("a URL")),
        ..settings()
    })
    .await;
    assert_eq!(harness.public_base, "https://hooks.example.com/twilio");
    let (status, answer) = harness
        .post_signed_events(
            &json!([message_event("EZ0401", "VE0401", "DELIVERED", "")]).to_string(),
        )
        .await;
    assert_eq!(status, 200, "configured public base URL: {answer}");
    assert_eq!(harness.count(Table::DeliveryReports).await, 1);
    harness.finish().await;
}
