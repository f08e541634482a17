//! Verify Events: the sandbox driven over its REST API as the gateway drives it, a real
//! HTTP receiver recording what it posts: order, JSON, `bodySHA256`, signature, retries.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use twilio_sandbox::{DEV_ACCOUNT_SID, DEV_AUTH_TOKEN, DEV_SERVICE_SID, SandboxConfig};

use crate::receiver::{Captured, Receiver};
use crate::support::{TestSandbox, start, test_config};

const DELAY: Duration = Duration::from_millis(50);
const WAIT: Duration = Duration::from_secs(10);
const PREFIX: &str = "com.twilio.accountsecurity.verify.message.";

/// The dev config posting events to `receiver` at `path`, with short delays.
fn events_config(receiver: &Receiver, path: &str) -> SandboxConfig {
    let mut config = test_config();
    config.events_url = Some(receiver.url(path));
    config.delivery_delay = DELAY;
    config.event_retry_delay = Duration::from_millis(20);
    config
}

fn destination(name: &str) -> &'static str {
    twilio_sandbox::scenarios()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, to)| to)
        .unwrap_or_else(|| panic!("scenario {name} exists"))
}

/// What one event must say: (`type` suffix, `message_status`, `channel`, `error_code`).
type Expected = (&'static str, &'static str, &'static str, &'static str);

/// A send made through the API, and what its events must say.
struct Send {
    verification_sid: String,
    attempt_sid: String,
    to: &'static str,
    /// In posting order.
    expected: Vec<Expected>,
}

async fn send(
    sandbox: &TestSandbox,
    to: &'static str,
    channel: &str,
    final_report: Option<(&'static str, &'static str, &'static str)>,
) -> anyhow::Result<Send> {
    let answer = sandbox.create(to, channel).await?;
    assert_eq!(
        answer.status,
        StatusCode::CREATED,
        "{to} {channel}: {answer:?}"
    );
    let attempts = answer.body["send_code_attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let attempt_sid = attempts
        .last()
        .and_then(|a| a["attempt_sid"].as_str())
        .unwrap_or_default()
        .to_owned();
    let label = match channel {
        "sms" => "SMS",
        "call" => "CALL",
        "whatsapp" => "WHATSAPP",
        other => panic!("no events expected for {other}"),
    };
    let mut expected = vec![("sent", "SENT", label, "")];
    if let Some((kind, status, error_code)) = final_report {
        expected.push((kind, status, label, error_code));
    }
    Ok(Send {
        verification_sid: answer.str("sid").to_owned(),
        attempt_sid,
        to,
        expected,
    })
}

fn sorted_keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    keys
}

/// Whether `keys` appear in this order in the raw JSON text.
fn in_order(raw: &str, keys: &[&str]) -> bool {
    let positions: Vec<Option<usize>> = keys
        .iter()
        .map(|k| raw.find(&format!("\"{k}\":")))
        .collect();
    positions.iter().all(Option::is_some) && positions.windows(2).all(|w| w[0] < w[1])
}

/// Polls `GET /sandbox/events` until `done` holds for the records.
async fn records_when(
    sandbox: &TestSandbox,
    done: impl Fn(&[Value]) -> bool,
) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let records = sandbox.events(None).await?;
        if done(&records) {
            return Ok(records);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "records never settled: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks the envelope and every `data` field of one event against the send it reports.
fn check_event(event: &Value, send: &Send, expected: Expected) {
    let (kind, status, channel, error_code) = expected;
    assert_eq!(
        sorted_keys(event),
        [
            "data",
            "datacontenttype",
            "dataschema",
            "id",
            "source",
            "specversion",
            "time",
            "type"
        ],
        "{event}"
    );
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], format!("{PREFIX}{kind}"));
    assert_eq!(
        event["source"],
        format!(
            "/v1/Accounts/{DEV_ACCOUNT_SID}/Services/{DEV_SERVICE_SID}/Verifications/{}",
            send.verification_sid
        )
    );
    let id = event["id"].as_str().unwrap_or_default();
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(
        event["dataschema"],
        "https://events-schemas.twilio.com/AccountSecurity.MessageStatusEvent/2"
    );
    assert_eq!(event["datacontenttype"], "application/json");
    let time = event["time"].as_str().unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok(),
        "time {time:?}"
    );

    let data = &event["data"];
    assert_eq!(
        sorted_keys(data),
        [
            "account_sid",
            "attempt_sid",
            "channel",
            "created_at",
            "error_code",
            "has_fallback",
            "is_fallback",
            "mcc",
            "message_status",
            "mnc",
            "number_segments",
            "service_sid",
            "to",
            "verification_sid"
        ],
        "{data}"
    );
    let created_at = data["created_at"].as_str().unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created_at).is_ok(),
        "created_at {created_at:?}"
    );
    assert_eq!(data["account_sid"], DEV_ACCOUNT_SID);
    assert_eq!(data["service_sid"], DEV_SERVICE_SID);
    assert_eq!(data["verification_sid"], send.verification_sid.as_str());
    assert_eq!(data["attempt_sid"], send.attempt_sid.as_str());
    assert_eq!(data["error_code"], error_code);
    assert_eq!(data["channel"], channel);
    assert_eq!(data["message_status"], status);
    assert_eq!(data["has_fallback"], false);
    assert_eq!(data["is_fallback"], false);
    assert!(data["mnc"].is_string() && data["mcc"].is_string(), "{data}");
    assert_eq!(data["to"], send.to);
    assert_eq!(data["number_segments"], u64::from(channel != "CALL"));
}

#[tokio::test]
async fn every_send_is_reported_in_order_by_signed_events() -> anyhow::Result<()> {
    let receiver = Receiver::start(&[]).await?;
    let sandbox = start(events_config(&receiver, "/hooks/twilio?tenant=acme%20co")).await?;

    let delivered = Some(("delivered", "DELIVERED", ""));
    let sends = vec![
        send(&sandbox, "+14155552671", "sms", delivered).await?,
        send(&sandbox, destination("delivered"), "sms", delivered).await?,
        // Three sends of one verification: sms, then a call, then WhatsApp.
        send(
            &sandbox,
            destination("undelivered_30003"),
            "sms",
            Some(("undelivered", "UNDELIVERED", "30003")),
        )
        .await?,
        send(
            &sandbox,
            destination("undelivered_30003"),
            "call",
            delivered,
        )
        .await?,
        send(
            &sandbox,
            destination("undelivered_30003"),
            "whatsapp",
            Some(("undelivered", "UNDELIVERED", "30003")),
        )
        .await?,
        send(
            &sandbox,
            destination("landline_30006"),
            "sms",
            Some(("undelivered", "UNDELIVERED", "30006")),
        )
        .await?,
        send(&sandbox, destination("landline_30006"), "call", delivered).await?,
        send(&sandbox, destination("silent"), "sms", None).await?,
        send(&sandbox, destination("silent"), "call", delivered).await?,
    ];
    // Email is not covered by Twilio's Verify Events: it is sent, but never reported.
    let email = sandbox.create("user@example.com", "email").await?;
    assert_eq!(email.status, StatusCode::CREATED);

    let total: usize = sends.iter().map(|s| s.expected.len()).sum();
    assert_eq!(total, 17);
    receiver.wait_for(total, WAIT).await?;
    // Nothing more comes: no final report for `silent` SMS, nothing for email.
    tokio::time::sleep(DELAY * 6).await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), total);

    for request in &requests {
        assert!(
            request
                .url
                .contains("/hooks/twilio?tenant=acme%20co&bodySHA256=")
        );
        request.assert_signed(DEV_AUTH_TOKEN);
        // Fields come in the order of Twilio's example (serde_json's `Value` sorts them).
        let raw = String::from_utf8_lossy(&request.body);
        assert!(raw.starts_with("[{\"specversion\":\"1.0\","), "{raw}");
        assert!(
            in_order(
                &raw,
                &[
                    "specversion",
                    "type",
                    "source",
                    "id",
                    "dataschema",
                    "datacontenttype",
                    "time",
                    "data",
                    "created_at",
                    "account_sid",
                    "service_sid",
                    "verification_sid",
                    "attempt_sid",
                    "error_code",
                    "channel",
                    "message_status",
                    "has_fallback",
                    "is_fallback",
                    "mnc",
                    "mcc",
                    "to",
                    "number_segments"
                ]
            ),
            "{raw}"
        );
    }

    // Per verification, the events come in the order of the sends and their reports.
    let mut by_verification: BTreeMap<String, Vec<&Captured>> = BTreeMap::new();
    for request in &requests {
        let sid = request.event()["data"]["verification_sid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        by_verification.entry(sid).or_default().push(request);
    }
    assert_eq!(by_verification.len(), 5);
    for (sid, received) in &by_verification {
        let expected: Vec<(&Send, Expected)> = sends
            .iter()
            .filter(|s| &s.verification_sid == sid)
            .flat_map(|s| s.expected.iter().map(move |e| (s, *e)))
            .collect();
        assert_eq!(received.len(), expected.len(), "{sid}");
        for (request, (send, expected)) in received.iter().zip(&expected) {
            check_event(&request.event(), send, *expected);
        }
        // A final report comes at least the delivery delay after its `sent`.
        for pair in received.windows(2) {
            let (first, second) = (pair[0].event(), pair[1].event());
            if first["data"]["attempt_sid"] == second["data"]["attempt_sid"] {
                assert!(second.at_least_after(&first, DELAY), "{first} {second}");
                assert!(pair[1].at >= pair[0].at);
            }
        }
    }
    let ids: HashSet<String> = requests
        .iter()
        .map(|r| r.event()["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids.len(), total, "event ids are unique");

    // The log lists every post, newest first, each answered 200 at the first attempt.
    let records = sandbox.events(None).await?;
    assert_eq!(records.len(), total);
    for record in &records {
        for key in [
            "id",
            "type",
            "verification_sid",
            "attempt_sid",
            "to",
            "channel",
            "message_status",
            "error_code",
            "url",
            "time",
            "attempts",
            "last_http_status",
            "last_error",
            "delivered",
        ] {
            assert!(record.get(key).is_some(), "{key} missing: {record}");
        }
        assert_eq!(record["attempts"], 1, "{record}");
        assert_eq!(record["last_http_status"], 200, "{record}");
        assert!(record["last_error"].is_null(), "{record}");
        assert_eq!(record["delivered"], true, "{record}");
        let received = requests
            .iter()
            .find(|r| r.event()["id"] == record["id"])
            .unwrap_or_else(|| panic!("record of an event never received: {record}"));
        assert_eq!(record["url"], received.url.as_str());
        let event = received.event();
        assert_eq!(record["type"], event["type"]);
        assert_eq!(record["time"], event["time"]);
        for key in [
            "verification_sid",
            "attempt_sid",
            "to",
            "channel",
            "message_status",
            "error_code",
        ] {
            assert_eq!(record[key], event["data"][key], "{key}");
        }
    }
    let times: Vec<&str> = records
        .iter()
        .map(|r| r["time"].as_str().unwrap_or_default())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    let silent = &sends[7];
    let only_silent = sandbox.events(Some(&silent.verification_sid)).await?;
    assert_eq!(only_silent.len(), 3);
    assert!(
        only_silent
            .iter()
            .all(|r| r["verification_sid"] == silent.verification_sid.as_str())
    );

    // The inbox shows what each message ended with.
    let inbox = sandbox.inbox(None).await?;
    let status_of = |attempt_sid: &str| -> (Value, Value) {
        inbox
            .iter()
            .find(|m| m["attempt_sid"] == attempt_sid)
            .map(|m| (m["status"].clone(), m["error_code"].clone()))
            .unwrap_or_default()
    };
    for (send, status, error_code) in [
        (&sends[0], "delivered", Value::Null),
        (&sends[2], "undelivered", Value::from("30003")),
        (&sends[3], "delivered", Value::Null),
        (&sends[5], "undelivered", Value::from("30006")),
        (&sends[7], "sent", Value::Null),
        (&sends[8], "delivered", Value::Null),
    ] {
        assert_eq!(
            status_of(&send.attempt_sid),
            (Value::from(status), error_code),
            "{}",
            send.to
        );
    }
    assert_eq!(inbox[0]["channel"], "email");
    assert_eq!(inbox[0]["status"], "delivered");
    Ok(())
}

/// Event times as instants, to compare two events of one send.
trait EventTime {
    fn at_least_after(&self, earlier: &Value, gap: Duration) -> bool;
}

impl EventTime for Value {
    fn at_least_after(&self, earlier: &Value, gap: Duration) -> bool {
        let parse = |v: &Value| {
            v["time"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        };
        match (parse(earlier), parse(self)) {
            (Some(a), Some(b)) => (b - a).to_std().is_ok_and(|d| d >= gap),
            _ => false,
        }
    }
}

#[tokio::test]
async fn a_failed_post_is_retried_with_the_same_event() -> anyhow::Result<()> {
    let receiver = Receiver::start(&[StatusCode::INTERNAL_SERVER_ERROR]).await?;
    let sandbox = start(events_config(&receiver, "/events")).await?;
    let created = sandbox.create("+14155552672", "sms").await?;
    assert_eq!(created.status, StatusCode::CREATED);

    let requests = receiver.wait_for(3, WAIT).await?;
    let (first, retry, last) = (&requests[0], &requests[1], &requests[2]);
    for request in [first, retry, last] {
        request.assert_signed(DEV_AUTH_TOKEN);
    }
    // The retry is the same event, byte for byte, after the retry delay.
    assert_eq!(first.event()["type"], format!("{PREFIX}sent"));
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.url, first.url);
    assert_eq!(
        retry.header("x-twilio-signature"),
        first.header("x-twilio-signature")
    );
    assert!(retry.at.duration_since(first.at) >= Duration::from_millis(20));
    // Only then comes the final report.
    assert_eq!(last.event()["type"], format!("{PREFIX}delivered"));

    // The receiver may have the last post before the sandbox has recorded its answer.
    let records = records_when(&sandbox, |r| {
        r.len() == 2 && r.iter().all(|r| r["delivered"] == true)
    })
    .await?;
    let (delivered, sent) = (&records[0], &records[1]);
    assert_eq!(sent["id"], first.event()["id"]);
    assert_eq!(sent["attempts"], 2);
    assert_eq!(sent["last_http_status"], 200);
    assert_eq!(sent["delivered"], true);
    assert_eq!(delivered["message_status"], "DELIVERED");
    assert_eq!(delivered["attempts"], 1);
    Ok(())
}

#[tokio::test]
async fn a_receiver_that_keeps_failing_is_given_up_on_after_five_attempts() -> anyhow::Result<()> {
    let receiver = Receiver::start(&[StatusCode::SERVICE_UNAVAILABLE; 10]).await?;
    let sandbox = start(events_config(&receiver, "/events")).await?;
    sandbox.create("+14155552673", "call").await?;

    let requests = receiver.wait_for(10, WAIT).await?;
    let kinds: Vec<String> = requests
        .iter()
        .map(|r| {
            r.event()["type"]
                .as_str()
                .unwrap_or_default()
                .replace(PREFIX, "")
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "sent",
            "sent",
            "sent",
            "sent",
            "sent",
            "delivered",
            "delivered",
            "delivered",
            "delivered",
            "delivered"
        ]
    );
    // Waits double: 20, 40, 80, 160 ms.
    let gaps: Vec<Duration> = requests[..5]
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .collect();
    for (gap, min) in gaps.iter().zip([20, 40, 80, 160]) {
        assert!(*gap >= Duration::from_millis(min), "{gaps:?}");
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(receiver.requests().len(), 10, "no sixth attempt");
    let records = records_when(&sandbox, |r| {
        r.len() == 2 && r.iter().all(|r| r["attempts"] == 5)
    })
    .await?;
    for record in &records {
        assert_eq!(record["attempts"], 5, "{record}");
        assert_eq!(record["last_http_status"], 503, "{record}");
        assert_eq!(record["delivered"], false, "{record}");
    }
    Ok(())
}

#[tokio::test]
async fn connection_errors_are_retried_and_recorded() -> anyhow::Result<()> {
    // A port that was just free: nothing listens there.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = closed.local_addr()?;
    drop(closed);
    let mut config = test_config();
    config.events_url = Some(url::Url::parse(&format!("http://{addr}/events"))?);
    config.delivery_delay = DELAY;
    config.event_retry_delay = Duration::from_millis(10);
    let sandbox = start(config).await?;
    let created = sandbox.create("+14155552674", "sms").await?;
    assert_eq!(created.status, StatusCode::CREATED);

    let records = records_when(&sandbox, |r| {
        r.len() == 2 && r.iter().all(|r| r["attempts"] == 5)
    })
    .await?;
    for record in &records {
        assert_eq!(record["delivered"], false, "{record}");
        assert!(record["last_http_status"].is_null(), "{record}");
        let error = record["last_error"].as_str().unwrap_or_default();
        assert!(error.starts_with("connect"), "{error}");
        assert!(!error.contains(&addr.to_string()), "no URL in {error}");
    }
    assert_eq!(records[1]["message_status"], "SENT");
    assert_eq!(records[0]["message_status"], "DELIVERED");
    Ok(())
}

#[tokio::test]
async fn the_api_answer_never_waits_for_the_receiver() -> anyhow::Result<()> {
    let receiver = Receiver::start_stalling(Duration::from_secs(3)).await?;
    let sandbox = start(events_config(&receiver, "/slow")).await?;
    for to in ["+14155552675", "+14155552676"] {
        let started = Instant::now();
        let created = sandbox.create(to, "sms").await?;
        assert_eq!(created.status, StatusCode::CREATED);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    // The posts are under way all the same.
    receiver.wait_for(2, WAIT).await?;
    Ok(())
}

#[tokio::test]
async fn with_events_off_nothing_is_posted() -> anyhow::Result<()> {
    let receiver = Receiver::start(&[]).await?;
    // `dev()` keeps events off; the receiver exists but the sandbox is not told about it.
    let mut config = SandboxConfig::dev();
    assert!(config.events_url.is_none());
    config.delivery_delay = DELAY;
    let sandbox = start(config).await?;
    for name in ["delivered", "undelivered_30003", "landline_30006", "silent"] {
        for channel in ["sms", "call"] {
            let answer = sandbox.create(destination(name), channel).await?;
            assert_eq!(answer.status, StatusCode::CREATED, "{name} {channel}");
        }
    }
    sandbox.create("+14155552677", "whatsapp").await?;
    tokio::time::sleep(DELAY * 6).await;
    assert!(receiver.requests().is_empty());
    assert!(sandbox.events(None).await?.is_empty());
    // The inbox still tells what happened.
    let inbox = sandbox
        .inbox(Some(destination("undelivered_30003")))
        .await?;
    assert_eq!(inbox[0]["status"], "delivered", "the call");
    assert_eq!(inbox[1]["status"], "undelivered", "the SMS");
    assert_eq!(inbox[1]["error_code"], "30003");
    Ok(())
}
