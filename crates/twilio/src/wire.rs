//! Twilio's request forms and response bodies, private to the adapter and converted to the
//! domain's types here.
//!
//! Requests are forms with Twilio's PascalCase keys; responses are JSON with snake_case keys
//! (CONTRACT §1). Only the fields the gateway uses are read: in particular `to` is never
//! deserialised, so the destination cannot end up in a log through a `Debug` print.

use domain::ports::{ProviderCheck, ProviderStatus, ProviderVerification};
use domain::{Channel, Locale};
use serde::{Deserialize, Serialize};

use crate::TwilioError;

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
