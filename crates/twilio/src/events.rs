//! Twilio's delivery reports, read into [`domain::delivery::DeliveryReport`]s:
//!
//! - **Verify Events** (Event Streams webhook sink): a JSON array of CloudEvents 1.0. Message
//!   status events (`com.twilio.accountsecurity.verify.message.*`, data with
//!   `message_status`, `error_code`, `verification_sid`, `channel`, …) become reports; other
//!   event types (verification status changes) are skipped.
//! - **Programmable Messaging status callbacks**: form fields `MessageSid`, `MessageStatus`,
//!   `ErrorCode`, …, for messages sent through Programmable Messaging. They name no Verify
//!   verification.
//!
//! Only final statuses (`delivered`, `read`, `undelivered`, `failed`) become reports:
//! `queued` and `sent` say the provider took the message, which the gateway already knows
//! from its own request, and storing them would double the work per send for nothing.
//!
//! The wire shapes stay in this module; a report carries no destination (`to` is read past,
//! never kept), so storing it stores no personal data.

use chrono::{DateTime, Utc};
use domain::Channel;
use domain::delivery::{DeliveryReport, DeliveryStatus};
use serde::Deserialize;

/// The prefix of Verify message status event types.
const MESSAGE_EVENT_PREFIX: &str = "com.twilio.accountsecurity.verify.message.";

/// Why a webhook body could not be read. The message names what is wrong, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventsError {
    #[error("the body is not a JSON array of CloudEvents: {0}")]
    NotCloudEvents(String),
    #[error("the status callback has no `{0}`")]
    MissingField(&'static str),
    #[error("the status callback's `{0}` is malformed")]
    MalformedField(&'static str),
}

#[derive(Debug, Deserialize)]
struct CloudEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    data: Option<MessageData>,
}

/// The fields of a message status event the gateway reads. Numbers may come as strings or
/// numbers; unknown fields (including `to`) are ignored.
#[derive(Debug, Default, Deserialize)]
struct MessageData {
    #[serde(default)]
    verification_sid: Option<String>,
    #[serde(default)]
    attempt_sid: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    message_status: Option<String>,
    #[serde(default)]
    error_code: Option<serde_json::Value>,
    #[serde(default)]
    created_at: Option<String>,
}

/// What a Verify Events body held.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyEvents {
    /// One report per message status event with a status the gateway knows.
    pub reports: Vec<DeliveryReport>,
    /// Events that are not message status reports (verification status changes, statuses
    /// such as `ACCEPTED`), counted for logs.
    pub skipped: usize,
}

/// Reads a Verify Events body. `received_at` stands in for an event without a usable time.
pub fn parse_verify_events(
    body: &[u8],
    received_at: DateTime<Utc>,
) -> Result<VerifyEvents, EventsError> {
    let events: Vec<CloudEvent> = serde_json::from_slice(body).map_err(not_cloud_events)?;
    let mut out = VerifyEvents::default();
    for event in events {
        match message_report(&event, received_at) {
            Some(report) => out.reports.push(report),
            None => out.skipped += 1,
        }
    }
    Ok(out)
}

/// Where and how the body is wrong, without serde's own message: a type error there quotes
/// the value it met (`invalid type: string "+14155552671"`), which may be a phone number
/// or anything else a sender put in, and this message reaches logs and the answer.
fn not_cloud_events(e: serde_json::Error) -> EventsError {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "unreadable",
        Category::Syntax => "not valid JSON",
        Category::Data => "JSON of the wrong shape",
        Category::Eof => "cut short",
    };
    EventsError::NotCloudEvents(format!("{what} at line {} column {}", e.line(), e.column()))
}

fn message_report(event: &CloudEvent, received_at: DateTime<Utc>) -> Option<DeliveryReport> {
    if !event.kind.starts_with(MESSAGE_EVENT_PREFIX) || event.id.trim().is_empty() {
        return None;
    }
    let data = event.data.as_ref()?;
    // The status in the data is authoritative; the type's suffix names it too.
    let status = data
        .message_status
        .as_deref()
        .and_then(DeliveryStatus::parse)
        .or_else(|| DeliveryStatus::parse(&event.kind[MESSAGE_EVENT_PREFIX.len()..]))
        .filter(|status| status.is_final())?;
    let occurred_at = [event.time.as_deref(), data.created_at.as_deref()]
        .into_iter()
        .flatten()
        .find_map(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or(received_at, |t| t.with_timezone(&Utc));
    Some(DeliveryReport {
        dedupe_key: format!("ce:{}", event.id.trim()),
        provider_sid: non_empty(data.verification_sid.as_deref()),
        message_sid: non_empty(data.attempt_sid.as_deref()),
        channel: data
            .channel
            .as_deref()
            .and_then(|c| c.parse::<Channel>().ok()),
        status,
        error_code: data.error_code.as_ref().and_then(error_code),
        occurred_at,
    })
}

/// `""`, `null` → none; `"30003"` or `30003` → 30003.
fn error_code(value: &serde_json::Value) -> Option<u32> {
    match value {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|code| *code != 0)
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Reads a Programmable Messaging status callback from its form fields. `Ok(None)` for a
/// status the gateway does not act on (`accepted`, `queued`, `sending`, `sent`, …).
pub fn parse_message_status(
    params: &[(String, String)],
    received_at: DateTime<Utc>,
) -> Result<Option<DeliveryReport>, EventsError> {
    let field = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    };
    let sid = field("MessageSid")
        .or_else(|| field("SmsSid"))
        .ok_or(EventsError::MissingField("MessageSid"))?;
    if !sid.bytes().all(|b| b.is_ascii_alphanumeric()) || sid.len() > 64 {
        return Err(EventsError::MalformedField("MessageSid"));
    }
    let raw_status = field("MessageStatus")
        .or_else(|| field("SmsStatus"))
        .ok_or(EventsError::MissingField("MessageStatus"))?;
    let Some(status) = DeliveryStatus::parse(raw_status).filter(|s| s.is_final()) else {
        return Ok(None);
    };
    let error_code = match field("ErrorCode") {
        None => None,
        Some(raw) => Some(
            raw.parse::<u32>()
                .map_err(|_| EventsError::MalformedField("ErrorCode"))?,
        )
        .filter(|c| *c != 0),
    };
    let whatsapp = field("ChannelPrefix").is_some_and(|p| p.eq_ignore_ascii_case("whatsapp"))
        || field("From").is_some_and(|f| f.starts_with("whatsapp:"));
    Ok(Some(DeliveryReport {
        dedupe_key: format!("ms:{sid}:{status}"),
        provider_sid: None,
        message_sid: Some(sid.to_owned()),
        channel: Some(if whatsapp {
            Channel::Whatsapp
        } else {
            Channel::Sms
        }),
        status,
        error_code,
        occurred_at: received_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
            .expect("valid")
            .with_timezone(&Utc)
    }

    const BATCH: &str = r#"[
      {"specversion":"1.0","type":"com.twilio.accountsecurity.verify.message.undelivered",
       "source":"/v2/Services/VA0/Verifications/VE1","id":"EZ1",
       "dataschema":"https://events-schemas.twilio.com/AccountSecurity.MessageStatusEvent/2",
       "datacontenttype":"application/json","time":"2026-11-26T09:59:58.120Z",
       "data":{"created_at":"2026-11-26T09:59:58Z","account_sid":"AC0","service_sid":"VA0",
               "verification_sid":"VE1","attempt_sid":"VL1","error_code":"30003",
               "channel":"sms","message_status":"UNDELIVERED","has_fallback":false,
               "is_fallback":false,"mcc":"310","mnc":"260","to":"+14155550108",
               "number_segments":1}},
      {"specversion":"1.0","type":"com.twilio.accountsecurity.verify.message.delivered",
       "id":"EZ2","datacontenttype":"2026-11-26T09:59:59Z",
       "data":{"verification_sid":"VE2","channel":"call","message_status":"DELIVERED",
               "error_code":""}},
      {"specversion":"1.0","type":"com.twilio.accountsecurity.verify.verification.approved",
       "id":"EZ3","data":{"verification_sid":"VE1","verification_status":"APPROVED"}},
      {"specversion":"1.0","type":"com.twilio.accountsecurity.verify.message.accepted",
       "id":"EZ4","data":{"verification_sid":"VE1","message_status":"ACCEPTED"}},
      {"specversion":"1.0","type":"com.twilio.accountsecurity.verify.message.sent",
       "id":"EZ5","data":{"verification_sid":"VE1","channel":"sms","message_status":"SENT"}}
    ]"#;

    #[test]
    fn verify_events_become_reports_without_the_destination() {
        let parsed = parse_verify_events(BATCH.as_bytes(), now()).expect("parses");
        assert_eq!(
            parsed.skipped, 3,
            "the verification event, the unknown status and `sent`"
        );
        let [failed, delivered] = parsed.reports.as_slice() else {
            panic!("two reports: {parsed:?}");
        };
        assert_eq!(failed.dedupe_key, "ce:EZ1");
        assert_eq!(failed.provider_sid.as_deref(), Some("VE1"));
        assert_eq!(failed.message_sid.as_deref(), Some("VL1"));
        assert_eq!(failed.channel, Some(Channel::Sms));
        assert_eq!(failed.status, DeliveryStatus::Undelivered);
        assert_eq!(failed.error_code, Some(30003));
        assert!(failed.warrants_fallback());
        assert_eq!(
            failed.occurred_at.to_rfc3339(),
            "2026-11-26T09:59:58.120+00:00"
        );
        assert!(!format!("{failed:?}").contains("4155550108"));

        assert_eq!(delivered.channel, Some(Channel::Call));
        assert_eq!(delivered.status, DeliveryStatus::Delivered);
        assert_eq!(delivered.error_code, None);
        // No usable time (a timestamp in datacontenttype, as in some of Twilio's examples).
        assert_eq!(delivered.occurred_at, now());
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        for body in [
            &b""[..],
            b"{}",
            b"[1]",
            b"[{\"type\":\"x\"}]",
            b"\xff\xfe",
            b"[{\"id\":\"a\",\"type\":\"t\",\"data\":\"x\"}]",
        ] {
            assert!(parse_verify_events(body, now()).is_err(), "{body:?}");
        }
        assert_eq!(
            parse_verify_events(b"[]", now()),
            Ok(VerifyEvents::default())
        );
        // A numeric error code and a missing data object.
        let odd = br#"[{"id":"E","type":"com.twilio.accountsecurity.verify.message.failed",
                        "data":{"error_code":30008}},
                       {"id":"F","type":"com.twilio.accountsecurity.verify.message.failed"}]"#;
        let parsed = parse_verify_events(odd, now()).expect("parses");
        assert_eq!(parsed.reports.len(), 1);
        assert_eq!(parsed.reports[0].status, DeliveryStatus::Failed);
        assert_eq!(parsed.reports[0].error_code, Some(30008));
        assert_eq!(parsed.skipped, 1);
    }

    #[test]
    fn a_malformed_body_is_described_without_its_values() {
        // A string where an object belongs: serde's own message quotes it.
        let body = br#"[{"id":"E","type":"com.twilio.accountsecurity.verify.message.failed",
                        "data":"+14155552671"}]"#;
        let serde_says = serde_json::from_slice::<Vec<CloudEvent>>(body)
            .expect_err("wrong shape")
            .to_string();
        assert!(serde_says.contains("4155552671"), "{serde_says}");
        let error = parse_verify_events(body, now()).expect_err("wrong shape");
        let message = error.to_string();
        assert!(!message.contains("4155552671"), "{message}");
        assert!(message.contains("wrong shape at line"), "{message}");
        let cut = parse_verify_events(br#"[{"id":"+14155552671"#, now()).expect_err("cut");
        assert!(!cut.to_string().contains("4155552671"), "{cut}");
    }

    fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn status_callbacks_become_reports() {
        let report = parse_message_status(
            &form(&[
                ("MessageSid", "SM1"),
                ("MessageStatus", "undelivered"),
                ("ErrorCode", "30006"),
                ("To", "+14155550109"),
                ("From", "+15005550006"),
            ]),
            now(),
        )
        .expect("valid")
        .expect("a report");
        assert_eq!(report.dedupe_key, "ms:SM1:undelivered");
        assert_eq!(report.message_sid.as_deref(), Some("SM1"));
        assert_eq!(report.provider_sid, None);
        assert_eq!(report.channel, Some(Channel::Sms));
        assert_eq!(report.error_code, Some(30006));

        let whatsapp = parse_message_status(
            &form(&[
                ("SmsSid", "SM2"),
                ("SmsStatus", "read"),
                ("ChannelPrefix", "whatsapp"),
            ]),
            now(),
        )
        .expect("valid")
        .expect("a report");
        assert_eq!(whatsapp.channel, Some(Channel::Whatsapp));
        assert_eq!(whatsapp.status, DeliveryStatus::Read);

        for status in ["sending", "queued", "sent"] {
            let not_final = form(&[("MessageSid", "SM3"), ("MessageStatus", status)]);
            assert_eq!(
                parse_message_status(&not_final, now()),
                Ok(None),
                "{status}"
            );
        }
    }

    #[test]
    fn bad_status_callbacks_name_the_field() {
        let cases = [
            (form(&[("MessageStatus", "sent")]), "MessageSid"),
            (form(&[("MessageSid", "SM1")]), "MessageStatus"),
            (
                form(&[("MessageSid", "SM 1"), ("MessageStatus", "sent")]),
                "MessageSid",
            ),
            (
                form(&[
                    ("MessageSid", "SM1"),
                    ("MessageStatus", "failed"),
                    ("ErrorCode", "x"),
                ]),
                "ErrorCode",
            ),
        ];
        for (params, field) in cases {
            let error = parse_message_status(&params, now()).expect_err(field);
            assert!(error.to_string().contains(field), "{error}");
        }
    }
}
