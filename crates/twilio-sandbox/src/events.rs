//! Verify Events as Twilio's Event Streams webhook sink posts them: message-status
//! CloudEvents 1.0 in a JSON array, and `X-Twilio-Signature` computed over the URL with
//! `bodySHA256` appended. Written from the contract (CONTRACT.md §5 and §6), on purpose
//! without the gateway's own validator, because the sandbox plays Twilio's side.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use url::Url;

use crate::store::Channel;

/// The CloudEvents version of every event.
const SPEC_VERSION: &str = "1.0";
/// The schema of message-status events (version 2 added the optional `tags`).
pub(crate) const DATA_SCHEMA: &str =
    "https://events-schemas.twilio.com/AccountSecurity.MessageStatusEvent/2";
/// The media type of `data`, and of the request body.
pub(crate) const CONTENT_TYPE: &str = "application/json";
/// The header carrying the signature.
pub(crate) const SIGNATURE_HEADER: &str = "X-Twilio-Signature";
/// The query parameter Twilio appends to a JSON webhook's URL before signing it.
pub(crate) const BODY_HASH_PARAM: &str = "bodySHA256";

/// A message status as Verify message-status events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MessageStatus {
    /// The channel provider accepted the message; delivery is not confirmed yet.
    Sent,
    /// The provider confirmed delivery.
    Delivered,
    /// A delivery receipt said the message did not arrive (carrier 30xxx codes).
    Undelivered,
}

impl MessageStatus {
    /// The CloudEvent `type`.
    pub(crate) fn event_type(self) -> &'static str {
        match self {
            MessageStatus::Sent => "com.twilio.accountsecurity.verify.message.sent",
            MessageStatus::Delivered => "com.twilio.accountsecurity.verify.message.delivered",
            MessageStatus::Undelivered => "com.twilio.accountsecurity.verify.message.undelivered",
        }
    }

    /// `data.message_status`, upper-case as in Twilio's examples.
    pub(crate) fn wire(self) -> &'static str {
        match self {
            MessageStatus::Sent => "SENT",
            MessageStatus::Delivered => "DELIVERED",
            MessageStatus::Undelivered => "UNDELIVERED",
        }
    }

    /// The lower-case name the inbox shows, as Programmable Messaging spells statuses.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Undelivered => "undelivered",
        }
    }
}

/// How a send ends: its last status and, when it failed, Twilio's error code. A send that
/// ends `Sent` never gets a final report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) status: MessageStatus,
    pub(crate) error_code: Option<&'static str>,
}

impl Outcome {
    pub(crate) fn delivered() -> Self {
        Outcome {
            status: MessageStatus::Delivered,
            error_code: None,
        }
    }

    pub(crate) fn undelivered(error_code: &'static str) -> Self {
        Outcome {
            status: MessageStatus::Undelivered,
            error_code: Some(error_code),
        }
    }

    /// Whether a report follows the `sent` one.
    pub(crate) fn has_final_report(self) -> bool {
        self.status != MessageStatus::Sent
    }
}

/// Twilio's Verify Events cover the SMS, WhatsApp and Voice channels only; email and SNA
/// sends produce no message-status events.
pub(crate) fn reports_on(channel: Channel) -> bool {
    matches!(channel, Channel::Sms | Channel::Whatsapp | Channel::Call)
}

/// `data.channel`, upper-case as in Twilio's examples (`SMS`) and the Verify API's own
/// upper-case attempt channels (`CALL`).
pub(crate) fn channel_label(channel: Channel) -> &'static str {
    match channel {
        Channel::Sms => "SMS",
        Channel::Call => "CALL",
        Channel::Email => "EMAIL",
        Channel::Whatsapp => "WHATSAPP",
        Channel::Sna => "SNA",
    }
}

/// The error code as events carry it: the code, or `""` when there was no error.
pub(crate) fn error_code_label(error_code: Option<&'static str>) -> &'static str {
    error_code.unwrap_or("")
}

/// Everything one message-status event says.
#[derive(Debug, Clone)]
pub(crate) struct Report<'a> {
    pub(crate) account_sid: &'a str,
    pub(crate) service_sid: &'a str,
    pub(crate) verification_sid: &'a str,
    pub(crate) attempt_sid: &'a str,
    /// When the send attempt was made (`data.created_at`).
    pub(crate) attempt_time: DateTime<Utc>,
    pub(crate) channel: Channel,
    pub(crate) to: &'a str,
    pub(crate) status: MessageStatus,
    pub(crate) error_code: Option<&'static str>,
    /// When the status was reached (the CloudEvent `time`).
    pub(crate) time: DateTime<Utc>,
}

/// One CloudEvent, fields in the order of Twilio's documented example.
#[derive(Debug, Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    source: String,
    id: String,
    dataschema: &'static str,
    datacontenttype: &'static str,
    time: String,
    data: Data<'a>,
}

/// `AccountSecurity.MessageStatusEvent` data, fields in the order of Twilio's example.
#[derive(Debug, Serialize)]
struct Data<'a> {
    created_at: String,
    account_sid: &'a str,
    service_sid: &'a str,
    verification_sid: &'a str,
    attempt_sid: &'a str,
    error_code: &'static str,
    channel: &'static str,
    message_status: &'static str,
    has_fallback: bool,
    is_fallback: bool,
    mnc: &'static str,
    mcc: &'static str,
    to: &'a str,
    number_segments: u32,
}

/// An event ready to post: its id and the exact body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Encoded {
    pub(crate) id: String,
    pub(crate) body: Vec<u8>,
}

/// Event timestamps: RFC 3339 in UTC with milliseconds, as in Twilio's examples.
pub(crate) fn rfc3339_millis(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The id of the event reporting `status` for one send attempt: unique per event, the same
/// on every retry, and 64 hex digits like the ids in Twilio's example.
pub(crate) fn event_id(attempt_sid: &str, status: MessageStatus) -> String {
    hex::encode(Sha256::digest(
        format!("{attempt_sid}:{}", status.event_type()).as_bytes(),
    ))
}

/// The request body: a JSON array holding the one event, as a webhook sink posts batches.
pub(crate) fn encode(report: &Report<'_>) -> Result<Encoded, serde_json::Error> {
    let id = event_id(report.attempt_sid, report.status);
    let event = CloudEvent {
        specversion: SPEC_VERSION,
        kind: report.status.event_type(),
        source: format!(
            "/v1/Accounts/{}/Services/{}/Verifications/{}",
            report.account_sid, report.service_sid, report.verification_sid
        ),
        id: id.clone(),
        dataschema: DATA_SCHEMA,
        datacontenttype: CONTENT_TYPE,
        time: rfc3339_millis(&report.time),
        data: Data {
            created_at: rfc3339_millis(&report.attempt_time),
            account_sid: report.account_sid,
            service_sid: report.service_sid,
            verification_sid: report.verification_sid,
            attempt_sid: report.attempt_sid,
            error_code: error_code_label(report.error_code),
            channel: channel_label(report.channel),
            message_status: report.status.wire(),
            has_fallback: false,
            is_fallback: false,
            // The sandbox knows no carriers; real events name the handset's network.
            mnc: "",
            mcc: "",
            to: report.to,
            // A code fits one SMS segment; a voice call uses none.
            number_segments: u32::from(report.channel != Channel::Call),
        },
    };
    Ok(Encoded {
        id,
        body: serde_json::to_vec(&[event])?,
    })
}

/// The URL Twilio requests for a JSON body: the configured one with `bodySHA256=<lower-case
/// hex SHA-256 of the body>` appended to its query, any existing query kept byte for byte.
/// A fragment is dropped because it is never sent over HTTP.
pub(crate) fn signed_url(url: &Url, body: &[u8]) -> Url {
    let mut url = url.clone();
    url.set_fragment(None);
    let hash = hex::encode(Sha256::digest(body));
    url.query_pairs_mut().append_pair(BODY_HASH_PARAM, &hash);
    url
}

/// Computes `X-Twilio-Signature`: base64 of HMAC-SHA1 keyed with the auth token, over the
/// full URL (for JSON bodies nothing else is appended). Its `Debug` hides the key.
#[derive(Clone)]
pub(crate) struct Signer(Hmac<Sha1>);

impl Signer {
    pub(crate) fn new(auth_token: &str) -> Self {
        Signer(
            <Hmac<Sha1> as KeyInit>::new_from_slice(auth_token.as_bytes())
                .expect("HMAC takes a key of any length"),
        )
    }

    pub(crate) fn sign(&self, url: &str) -> String {
        let mut mac = self.0.clone();
        mac.update(url.as_bytes());
        STANDARD.encode(mac.finalize().into_bytes())
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signer([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// Twilio's own JSON-body vectors (twilio-python `test_validation_of_body_succeeds`,
    /// twilio-node `validation.spec.js`), as collected in CONTRACT.md's signature vectors.
    const VECTOR_BODY: &str = r#"{"property": "value", "boolean": true}"#;
    const VECTOR_BODY_SHA256: &str =
        "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";

    fn check_signing(configured: &str, expected_url: &str, expected_signature: &str) {
        let url = signed_url(
            &Url::parse(configured).expect("a valid URL"),
            VECTOR_BODY.as_bytes(),
        );
        assert_eq!(url.as_str(), expected_url);
        assert_eq!(Signer::new("12345").sign(url.as_str()), expected_signature);
    }

    #[test]
    fn signing_matches_twilio_vectors() {
        check_signing(
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            &format!("https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256={VECTOR_BODY_SHA256}"),
            "a9nBmqA0ju/hNViExpshrM61xv4=",
        );
        check_signing(
            "https://mycompany.com/myapp.php",
            &format!("https://mycompany.com/myapp.php?bodySHA256={VECTOR_BODY_SHA256}"),
            "y77kIzt2vzLz71DgmJGsen2scGs=",
        );
    }

    #[test]
    fn signed_url_keeps_the_query_and_drops_the_fragment() {
        let url = signed_url(
            &Url::parse("http://127.0.0.1:9000/hook?a=b%20c&x#frag").expect("a valid URL"),
            b"{}",
        );
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9000/hook?a=b%20c&x&bodySHA256=44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(
            format!("{:?}", Signer::new("secret-token")),
            "Signer([redacted])"
        );
    }

    fn at(millis: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0)
            .single()
            .expect("a valid fixed instant")
            + chrono::TimeDelta::milliseconds(i64::from(millis))
    }

    fn report(
        channel: Channel,
        status: MessageStatus,
        error_code: Option<&'static str>,
    ) -> Report<'static> {
        Report {
            account_sid: "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            service_sid: "VAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            verification_sid: "VEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            attempt_sid: "VLaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            attempt_time: at(0),
            channel,
            to: "+14155552671",
            status,
            error_code,
            time: at(250),
        }
    }

    #[test]
    fn event_body_is_byte_for_byte_the_documented_shape() {
        let encoded = encode(&report(
            Channel::Sms,
            MessageStatus::Undelivered,
            Some("30003"),
        ))
        .expect("encodes");
        let id = event_id(
            "VLaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            MessageStatus::Undelivered,
        );
        let expected = format!(
            r#"[{{"specversion":"1.0","type":"com.twilio.accountsecurity.verify.message.undelivered","source":"/v1/Accounts/ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/Services/VAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/Verifications/VEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","id":"{id}","dataschema":"https://events-schemas.twilio.com/AccountSecurity.MessageStatusEvent/2","datacontenttype":"application/json","time":"2026-01-01T12:00:00.250Z","data":{{"created_at":"2026-01-01T12:00:00.000Z","account_sid":"ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","service_sid":"VAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","verification_sid":"VEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","attempt_sid":"VLaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","error_code":"30003","channel":"SMS","message_status":"UNDELIVERED","has_fallback":false,"is_fallback":false,"mnc":"","mcc":"","to":"+14155552671","number_segments":1}}}}]"#
        );
        assert_eq!(String::from_utf8(encoded.body).expect("UTF-8"), expected);
        assert_eq!(encoded.id, id);
    }

    #[test]
    fn ids_are_hex_stable_and_distinct_per_event() {
        let sent = event_id("VL1", MessageStatus::Sent);
        assert_eq!(sent.len(), 64);
        assert!(
            sent.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(sent, event_id("VL1", MessageStatus::Sent));
        assert_ne!(sent, event_id("VL1", MessageStatus::Delivered));
        assert_ne!(sent, event_id("VL2", MessageStatus::Sent));
    }

    #[test]
    fn statuses_and_channels_are_named_like_twilio() {
        for (status, kind, wire) in [
            (
                MessageStatus::Sent,
                "com.twilio.accountsecurity.verify.message.sent",
                "SENT",
            ),
            (
                MessageStatus::Delivered,
                "com.twilio.accountsecurity.verify.message.delivered",
                "DELIVERED",
            ),
            (
                MessageStatus::Undelivered,
                "com.twilio.accountsecurity.verify.message.undelivered",
                "UNDELIVERED",
            ),
        ] {
            assert_eq!(status.event_type(), kind);
            assert_eq!(status.wire(), wire);
            assert_eq!(status.as_str(), wire.to_ascii_lowercase());
        }
        let call = encode(&report(Channel::Call, MessageStatus::Delivered, None)).expect("encodes");
        let json: serde_json::Value = serde_json::from_slice(&call.body).expect("JSON");
        assert_eq!(json[0]["data"]["channel"], "CALL");
        assert_eq!(json[0]["data"]["error_code"], "");
        assert_eq!(json[0]["data"]["number_segments"], 0);
        assert!(
            reports_on(Channel::Sms) && reports_on(Channel::Whatsapp) && reports_on(Channel::Call)
        );
        assert!(!reports_on(Channel::Email) && !reports_on(Channel::Sna));
    }
}
