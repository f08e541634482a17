//! Twilio's request forms and response bodies, private to the adapter and converted to the
//! domain's types here.
//!
//! Requests are forms with Twilio's PascalCase keys; responses are JSON with snake_case keys
//! (CONTRACT §1). Only the fields the gateway uses are read: in particular `to` is never
//! deserialised, so the destination cannot end up in a log through a `Debug` print.

use chrono::{DateTime, Utc};
use domain::ports::{ProviderCheck, ProviderStatus, ProviderVerification};
use domain::{Channel, Locale};
use serde::{Deserialize, Serialize};

use crate::{TwilioError, sid};

/// The body of `POST /v2/Services/{ServiceSid}/Verifications`.
#[derive(Serialize)]
pub(crate) struct CreateVerificationForm<'a> {
    #[serde(rename = "To")]
    pub to: &'a str,
    #[serde(rename = "Channel")]
    pub channel: &'a str,
    #[serde(rename = "Locale", skip_serializing_if = "Option::is_none")]
    pub locale: Option<&'a str>,
}

impl<'a> CreateVerificationForm<'a> {
    pub(crate) fn new(to: &'a str, channel: Channel, locale: Option<&'a Locale>) -> Self {
        CreateVerificationForm {
            to,
            channel: channel.as_str(),
            locale: locale.map(Locale::as_str),
        }
    }
}

/// The body of `POST /v2/Services/{ServiceSid}/VerificationCheck`: by verification SID, or
/// by the destination (Twilio then checks its pending verification for it).
#[derive(Serialize)]
pub(crate) struct VerificationCheckForm<'a> {
    #[serde(rename = "VerificationSid", skip_serializing_if = "Option::is_none")]
    pub verification_sid: Option<&'a str>,
    #[serde(rename = "To", skip_serializing_if = "Option::is_none")]
    pub to: Option<&'a str>,
    #[serde(rename = "Code")]
    pub code: &'a str,
}

/// The body of `POST /v2/Services/{ServiceSid}/Verifications/{Sid}`.
#[derive(Serialize)]
pub(crate) struct UpdateVerificationForm {
    #[serde(rename = "Status")]
    pub status: &'static str,
}

/// The cancel update: the only other value the spec allows, `approved`, is for PSD2 flows.
pub(crate) const CANCEL: UpdateVerificationForm = UpdateVerificationForm { status: "canceled" };

/// `verify.v2.service.verification`, the fields the gateway reads.
#[derive(Debug, Deserialize)]
pub(crate) struct Verification {
    sid: Option<String>,
    status: Option<String>,
    channel: Option<String>,
}

/// `verify.v2.service.verification_check`, the fields the gateway reads.
#[derive(Debug, Deserialize)]
pub(crate) struct VerificationCheck {
    sid: Option<String>,
    status: Option<String>,
    valid: Option<bool>,
}

impl TryFrom<Verification> for ProviderVerification {
    type Error = TwilioError;

    fn try_from(v: Verification) -> Result<Self, Self::Error> {
        let sid = v
            .sid
            .filter(|s| !s.is_empty())
            .ok_or_else(|| TwilioError::Decode("verification without `sid`".to_owned()))?;
        let status = parse_status(v.status)?;
        // Twilio may name channels the domain does not know (`auto`, `rbm`); the status is
        // what matters, so an unknown channel is dropped rather than refused.
        let channel = v.channel.and_then(|c| c.parse::<Channel>().ok());
        Ok(ProviderVerification {
            sid,
            status,
            channel,
        })
    }
}

impl TryFrom<VerificationCheck> for ProviderCheck {
    type Error = TwilioError;

    fn try_from(c: VerificationCheck) -> Result<Self, Self::Error> {
        let status = parse_status(c.status)?;
        // `valid` is legacy and nullable; the status is authoritative when it is absent.
        let valid = c.valid.unwrap_or(status == ProviderStatus::Approved);
        Ok(ProviderCheck {
            status,
            valid,
            sid: c.sid.filter(|s| !s.is_empty()),
        })
    }
}

/// `PageSize` of the attempts list: the filters leave a handful of attempts (one
/// destination, one service, minutes), so one page of Twilio's default size holds them all.
pub(crate) const ATTEMPTS_PAGE_SIZE: u32 = 50;

/// The body of `GET /v2/Attempts` (`ListVerificationAttemptResponse`): the attempts of the
/// page; `meta` is not read, as only the first page is.
#[derive(Debug, Deserialize)]
pub(crate) struct AttemptList {
    #[serde(default)]
    attempts: Vec<Attempt>,
}

/// `verify.v2.verification_attempt`, the fields the gateway reads (not `channel_data`,
/// which holds the destination).
#[derive(Debug, Deserialize)]
struct Attempt {
    sid: Option<String>,
    verification_sid: Option<String>,
    channel: Option<String>,
    date_created: Option<String>,
    conversion_status: Option<String>,
}

/// The attempt [`AttemptList::newest_sent`] picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SentAttempt {
    /// The attempt (`VL…`).
    pub sid: Option<String>,
    /// The verification it sent for (`VE…`).
    pub verification_sid: String,
    pub channel: Option<String>,
    /// `converted` (the code was checked right) or `unconverted`.
    pub conversion_status: Option<String>,
}

impl AttemptList {
    /// The newest attempt (by `date_created`) that names a verification: the send whose
    /// verification a record without its provider id is. Twilio's order of the list is not
    /// relied on; an attempt without a readable date counts as the oldest, one without a
    /// well-formed verification SID is skipped.
    pub(crate) fn newest_sent(self) -> Option<SentAttempt> {
        self.attempts
            .into_iter()
            .filter_map(|a| {
                let verification_sid = a.verification_sid.filter(|s| sid::is_sid(s, "VE"))?;
                let created = a
                    .date_created
                    .as_deref()
                    .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
                    .map(|d| d.with_timezone(&Utc));
                Some((
                    created,
                    SentAttempt {
                        sid: a.sid,
                        verification_sid,
                        channel: a.channel,
                        conversion_status: a.conversion_status,
                    },
                ))
            })
            .max_by_key(|(created, _)| *created)
            .map(|(_, attempt)| attempt)
    }
}

/// Reads a status leniently: unknown values are kept as `Other`, only a missing one is refused.
fn parse_status(raw: Option<String>) -> Result<ProviderStatus, TwilioError> {
    let raw = raw.ok_or_else(|| TwilioError::Decode("response without `status`".to_owned()))?;
    Ok(status_from_str(&raw))
}

fn status_from_str(raw: &str) -> ProviderStatus {
    match raw.to_ascii_lowercase().as_str() {
        "pending" => ProviderStatus::Pending,
        "approved" => ProviderStatus::Approved,
        "canceled" | "cancelled" => ProviderStatus::Canceled,
        "max_attempts_reached" => ProviderStatus::MaxAttemptsReached,
        "deleted" => ProviderStatus::Deleted,
        "failed" => ProviderStatus::Failed,
        "expired" => ProviderStatus::Expired,
        _ => ProviderStatus::Other(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, expected: ProviderStatus) {
        assert_eq!(status_from_str(raw), expected, "{raw}");
    }

    #[test]
    fn statuses_parse_leniently() {
        check("pending", ProviderStatus::Pending);
        check("approved", ProviderStatus::Approved);
        check("canceled", ProviderStatus::Canceled);
        check("max_attempts_reached", ProviderStatus::MaxAttemptsReached);
        check("deleted", ProviderStatus::Deleted);
        check("failed", ProviderStatus::Failed);
        check("expired", ProviderStatus::Expired);
        check("APPROVED", ProviderStatus::Approved);
        check("on_hold", ProviderStatus::Other("on_hold".to_owned()));
        check("", ProviderStatus::Other(String::new()));
    }

    #[test]
    fn verification_converts_from_the_spec_example() {
        let body = r#"{"sid":"VEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","service_sid":"VAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","account_sid":"ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","to":"+15017122661","channel":"sms","status":"pending","valid":false,"date_created":"2015-07-30T20:00:00Z","date_updated":"2015-07-30T20:00:00Z","lookup":{},"amount":null,"payee":null,"send_code_attempts":[{"time":"2015-07-30T20:00:00Z","channel":"SMS","attempt_sid":"VLaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}],"sna":null,"url":"https://verify.twilio.com/v2/Services/VAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/Verifications/VEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#;
        let wire: Verification = serde_json::from_str(body).expect("spec example parses");
        let v = ProviderVerification::try_from(wire).expect("converts");
        assert_eq!(v.sid, "VEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        assert_eq!(v.status, ProviderStatus::Pending);
        assert_eq!(v.channel, Some(Channel::Sms));
    }

    #[test]
    fn verification_without_sid_or_status_is_a_decode_error() {
        let no_sid: Verification = serde_json::from_str(r#"{"status":"pending"}"#).expect("parses");
        assert!(matches!(
            ProviderVerification::try_from(no_sid),
            Err(TwilioError::Decode(_))
        ));
        let no_status: Verification =
            serde_json::from_str(r#"{"sid":"VE1","status":null}"#).expect("parses");
        assert!(matches!(
            ProviderVerification::try_from(no_status),
            Err(TwilioError::Decode(_))
        ));
        let odd_channel: Verification =
            serde_json::from_str(r#"{"sid":"VE1","status":"pending","channel":"auto"}"#)
                .expect("parses");
        assert_eq!(
            ProviderVerification::try_from(odd_channel).map(|v| v.channel),
            Ok(None)
        );
    }

    #[test]
    fn check_uses_valid_and_falls_back_to_status() {
        let wrong: VerificationCheck =
            serde_json::from_str(r#"{"status":"pending","valid":false}"#).expect("parses");
        assert_eq!(
            ProviderCheck::try_from(wrong),
            Ok(ProviderCheck {
                status: ProviderStatus::Pending,
                valid: false,
                sid: None,
            })
        );
        let legacy_null: VerificationCheck =
            serde_json::from_str(r#"{"sid":"VE1","status":"approved","valid":null}"#)
                .expect("parses");
        assert_eq!(
            ProviderCheck::try_from(legacy_null),
            Ok(ProviderCheck {
                status: ProviderStatus::Approved,
                valid: true,
                sid: Some("VE1".into()),
            })
        );
    }

    fn newest(body: &str) -> Option<SentAttempt> {
        serde_json::from_str::<AttemptList>(body)
            .expect("parses")
            .newest_sent()
    }

    #[test]
    fn the_spec_examples_of_the_attempts_list_parse() {
        let example = r#"{"attempts":[{"sid":"VLaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","account_sid":"ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","service_sid":"VAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","verification_sid":"VEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","date_created":"2020-08-11T18:36:59Z","date_updated":"2020-08-11T18:37:00Z","conversion_status":"unconverted","channel":"sms","price":{"value":"0.005","currency":"usd"},"channel_data":{"verification_sid":"VEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","to":"+573003003030","status":"unconfirmed","message_status":"undelivered","error_code":"30008","country":"CO","code_length":6,"locale":"es","mcc":"732","mnc":"103","carrier":"Colombia Movil (Tigo)"},"url":"https://verify.twilio.com/v2/Attempts/VLaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}],"meta":{"key":"attempts","page":0,"page_size":50,"first_page_url":"https://verify.twilio.com/v2/Attempts?PageSize=50&Page=0","previous_page_url":null,"url":"https://verify.twilio.com/v2/Attempts?PageSize=50&Page=0","next_page_url":null}}"#;
        assert_eq!(
            newest(example),
            Some(SentAttempt {
                sid: Some("VLaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into()),
                verification_sid: "VEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
                channel: Some("sms".into()),
                conversion_status: Some("unconverted".into()),
            })
        );
        let empty = r#"{"attempts":[],"meta":{"key":"attempts","page":0,"page_size":50,"first_page_url":"https://verify.twilio.com/v2/Attempts?PageSize=50&Page=0","previous_page_url":null,"url":"https://verify.twilio.com/v2/Attempts?PageSize=50&Page=0","next_page_url":null}}"#;
        assert_eq!(newest(empty), None);
    }

    #[test]
    fn the_newest_attempt_with_a_verification_wins() {
        let ve = |n: u8| format!("VE{}", format!("{n:x}").repeat(32));
        let body = serde_json::json!({"attempts": [
            {"verification_sid": ve(1), "date_created": "2026-01-01T10:00:05Z"},
            {"verification_sid": ve(2), "date_created": "2026-01-01T10:00:09Z"},
            {"verification_sid": ve(3), "date_created": null},
            {"verification_sid": null, "date_created": "2026-01-01T10:00:30Z"},
            {"verification_sid": "VE-not-a-sid", "date_created": "2026-01-01T10:00:30Z"},
            {"verification_sid": ve(4), "date_created": "2026-01-01T10:00:07+00:00"},
        ]})
        .to_string();
        assert_eq!(newest(&body).map(|a| a.verification_sid), Some(ve(2)));
        assert_eq!(newest(r#"{"attempts":[{"date_created":null}]}"#), None);
        assert_eq!(newest("{}"), None);
    }

    #[test]
    fn forms_use_twilio_names() {
        let locale = Locale::parse("pt-BR").expect("valid locale");
        let form = CreateVerificationForm::new("+14155552671", Channel::Sms, Some(&locale));
        assert_eq!(
            serde_urlencoded::to_string(&form).expect("encodes"),
            "To=%2B14155552671&Channel=sms&Locale=pt-BR"
        );
        let form = CreateVerificationForm::new("a@b.co", Channel::Email, None);
        assert_eq!(
            serde_urlencoded::to_string(&form).expect("encodes"),
            "To=a%40b.co&Channel=email"
        );
        assert_eq!(
            serde_urlencoded::to_string(&CANCEL).expect("encodes"),
            "Status=canceled"
        );
    }
}
