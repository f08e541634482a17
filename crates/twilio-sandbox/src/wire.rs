//! The JSON the sandbox answers with, field for field and in the order of Twilio's OpenAPI
//! examples (`createVerification`, `verificationChecks`, `fetchRecord`,
//! `listVerificationAttempts`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use crate::config::ServiceConfig;
use crate::store::{Attempt, Channel, Status, Verification};

/// Twilio's timestamp form: ISO-8601 in UTC to the second (`2015-07-30T20:00:00Z`).
pub(crate) fn iso8601(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(crate) fn serialize_iso8601<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&iso8601(t))
}

/// An always-empty JSON object (`lookup` is `{}` in Twilio's examples).
#[derive(Debug, Serialize)]
pub(crate) struct Empty {}

/// `verify.v2.service.verification`.
#[derive(Debug, Serialize)]
pub(crate) struct VerificationJson {
    sid: String,
    service_sid: String,
    account_sid: String,
    to: String,
    channel: &'static str,
    status: &'static str,
    valid: bool,
    date_created: String,
    date_updated: String,
    lookup: Empty,
    amount: Option<String>,
    payee: Option<String>,
    send_code_attempts: Vec<AttemptJson>,
    sna: Option<SnaJson>,
    url: String,
}

#[derive(Debug, Serialize)]
struct AttemptJson {
    time: String,
    channel: &'static str,
    attempt_sid: String,
}

#[derive(Debug, Serialize)]
struct SnaJson {
    url: String,
}

impl VerificationJson {
    pub(crate) fn new(v: &Verification, account_sid: &str, base_url: &str) -> Self {
        let url = format!(
            "{base_url}/v2/Services/{}/Verifications/{}",
            v.service_sid, v.sid
        );
        VerificationJson {
            sid: v.sid.clone(),
            service_sid: v.service_sid.clone(),
            account_sid: account_sid.to_owned(),
            to: v.to.clone(),
            channel: v.channel.as_str(),
            status: v.status.as_str(),
            valid: v.status == Status::Approved,
            date_created: iso8601(&v.created),
            date_updated: iso8601(&v.updated),
            lookup: Empty {},
            amount: v.amount.clone(),
            payee: v.payee.clone(),
            send_code_attempts: v
                .send_attempts
                .iter()
                .map(|a| AttemptJson {
                    time: iso8601(&a.time),
                    channel: crate::store::attempt_label(a.channel),
                    attempt_sid: a.attempt_sid.clone(),
                })
                .collect(),
            // SNA has no device here to open the link; the code is in the inbox like any other.
            sna: (v.channel == Channel::Sna).then(|| SnaJson {
                url: format!("{base_url}/sandbox/sna/{}", v.sid),
            }),
            url,
        }
    }
}

/// `verify.v2.service.verification_check`.
#[derive(Debug, Serialize)]
pub(crate) struct CheckJson {
    sid: String,
    service_sid: String,
    account_sid: String,
    to: String,
    channel: &'static str,
    status: &'static str,
    valid: bool,
    amount: Option<String>,
    payee: Option<String>,
    sna_attempts_error_codes: Vec<Empty>,
    date_created: String,
    date_updated: String,
}

impl CheckJson {
    pub(crate) fn new(v: &Verification, account_sid: &str) -> Self {
        CheckJson {
            sid: v.sid.clone(),
            service_sid: v.service_sid.clone(),
            account_sid: account_sid.to_owned(),
            to: v.to.clone(),
            channel: v.channel.as_str(),
            status: v.status.as_str(),
            valid: v.status == Status::Approved,
            amount: v.amount.clone(),
            payee: v.payee.clone(),
            sna_attempts_error_codes: Vec::new(),
            date_created: iso8601(&v.created),
            date_updated: iso8601(&v.updated),
        }
    }
}

/// `verify.v2.service`, with the sandbox's fixed settings.
#[derive(Debug, Serialize)]
pub(crate) struct ServiceJson {
    sid: String,
    account_sid: String,
    friendly_name: String,
    code_length: u8,
    lookup_enabled: bool,
    psd2_enabled: bool,
    skip_sms_to_landlines: bool,
    dtmf_input_required: bool,
    tts_name: Option<String>,
    do_not_share_warning_enabled: bool,
    custom_code_enabled: bool,
    push: PushJson,
    totp: TotpJson,
    whatsapp: WhatsappJson,
    passkeys: PasskeysJson,
    default_template_sid: Option<String>,
    verify_event_subscription_enabled: bool,
    date_created: String,
    date_updated: String,
    url: String,
    links: LinksJson,
}

#[derive(Debug, Serialize)]
struct PushJson {
    include_date: bool,
    apn_credential_sid: Option<String>,
    fcm_credential_sid: Option<String>,
}

#[derive(Debug, Serialize)]
struct TotpJson {
    issuer: Option<String>,
    time_step: Option<u32>,
    code_length: Option<u32>,
    skew: Option<u32>,
}

#[derive(Debug, Serialize)]
struct WhatsappJson {
    msg_service_sid: Option<String>,
    from: Option<String>,
}

#[derive(Debug, Serialize)]
struct PasskeysJson {
    relying_party: RelyingPartyJson,
    authenticator_attachment: Option<String>,
    discoverable_credentials: Option<String>,
    user_verification: Option<String>,
}

#[derive(Debug, Serialize)]
struct RelyingPartyJson {
    id: Option<String>,
    name: Option<String>,
    origins: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
struct LinksJson {
    verification_checks: String,
    verifications: String,
    rate_limits: String,
    messaging_configurations: String,
    entities: String,
    webhooks: String,
    access_tokens: String,
}

impl ServiceJson {
    pub(crate) fn new(
        service: &ServiceConfig,
        account_sid: &str,
        base_url: &str,
        created: &DateTime<Utc>,
    ) -> Self {
        let url = format!("{base_url}/v2/Services/{}", service.sid);
        ServiceJson {
            sid: service.sid.clone(),
            account_sid: account_sid.to_owned(),
            friendly_name: service.friendly_name.clone(),
            code_length: service.code_length,
            lookup_enabled: false,
            psd2_enabled: false,
            skip_sms_to_landlines: false,
            dtmf_input_required: false,
            tts_name: None,
            do_not_share_warning_enabled: false,
            custom_code_enabled: true,
            push: PushJson {
                include_date: false,
                apn_credential_sid: None,
                fcm_credential_sid: None,
            },
            totp: TotpJson {
                issuer: None,
                time_step: None,
                code_length: None,
                skew: None,
            },
            whatsapp: WhatsappJson {
                msg_service_sid: None,
                from: None,
            },
            passkeys: PasskeysJson {
                relying_party: RelyingPartyJson {
                    id: None,
                    name: None,
                    origins: None,
                },
                authenticator_attachment: None,
                discoverable_credentials: None,
                user_verification: None,
            },
            default_template_sid: None,
            verify_event_subscription_enabled: false,
            date_created: iso8601(created),
            date_updated: iso8601(created),
            links: LinksJson {
                verification_checks: format!("{url}/VerificationCheck"),
                verifications: format!("{url}/Verifications"),
                rate_limits: format!("{url}/RateLimits"),
                messaging_configurations: format!("{url}/MessagingConfigurations"),
                entities: format!("{url}/Entities"),
                webhooks: format!("{url}/Webhooks"),
                access_tokens: format!("{url}/AccessTokens"),
            },
            url,
        }
    }
}

/// `GET /v2/Services`: one page holding every service.
#[derive(Debug, Serialize)]
pub(crate) struct ServiceListJson {
    services: Vec<ServiceJson>,
    meta: MetaJson,
}

#[derive(Debug, Serialize)]
struct MetaJson {
    page: u32,
    page_size: usize,
    first_page_url: String,
    previous_page_url: Option<String>,
    url: String,
    next_page_url: Option<String>,
    key: &'static str,
}

impl MetaJson {
    /// The `meta` of a list answered in one page (CONTRACT §1, Pagination): the first page
    /// of `path`, with no previous or next one.
    fn one_page(base_url: &str, path: &str, page_size: usize, key: &'static str) -> Self {
        let url = format!("{base_url}{path}?PageSize={page_size}&Page=0");
        MetaJson {
            page: 0,
            page_size,
            first_page_url: url.clone(),
            previous_page_url: None,
            url,
            next_page_url: None,
            key,
        }
    }
}

impl ServiceListJson {
    pub(crate) fn new(services: Vec<ServiceJson>, base_url: &str) -> Self {
        ServiceListJson {
            services,
            meta: MetaJson::one_page(base_url, "/v2/Services", 50, "services"),
        }
    }
}

/// `GET /v2/Attempts` (`ListVerificationAttemptResponse`): the attempts of one page.
#[derive(Debug, Serialize)]
pub(crate) struct AttemptListJson {
    attempts: Vec<VerificationAttemptJson>,
    meta: MetaJson,
}

/// `verify.v2.verification_attempt`, in the order of the `listVerificationAttempts` example.
#[derive(Debug, Serialize)]
struct VerificationAttemptJson {
    sid: String,
    account_sid: String,
    service_sid: String,
    verification_sid: String,
    date_created: String,
    date_updated: String,
    conversion_status: &'static str,
    channel: &'static str,
    /// The sandbox charges nothing; the field is nullable ("may not be immediately
    /// available").
    price: Option<Empty>,
    channel_data: ChannelDataJson,
    url: String,
}

/// The part of `channel_data` the sandbox knows.
#[derive(Debug, Serialize)]
struct ChannelDataJson {
    verification_sid: String,
    to: String,
}

impl AttemptListJson {
    pub(crate) fn new(
        attempts: Vec<Attempt>,
        account_sid: &str,
        base_url: &str,
        page_size: usize,
    ) -> Self {
        let attempts = attempts
            .into_iter()
            .map(|a| VerificationAttemptJson {
                url: format!("{base_url}/v2/Attempts/{}", a.sid),
                account_sid: account_sid.to_owned(),
                service_sid: a.service_sid,
                date_created: iso8601(&a.created),
                date_updated: iso8601(&a.created),
                conversion_status: if a.converted {
                    "converted"
                } else {
                    "unconverted"
                },
                channel: a.channel.as_str(),
                price: None,
                channel_data: ChannelDataJson {
                    verification_sid: a.verification_sid.clone(),
                    to: a.to,
                },
                verification_sid: a.verification_sid,
                sid: a.sid,
            })
            .collect();
        AttemptListJson {
            attempts,
            meta: MetaJson::one_page(base_url, "/v2/Attempts", page_size, "attempts"),
        }
    }
}

/// `GET /sandbox/scenarios`: a JSON object name -> destination, in table order.
#[derive(Debug)]
pub(crate) struct ScenariosJson(pub(crate) Vec<(&'static str, &'static str)>);

impl Serialize for ScenariosJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, destination) in &self.0 {
            map.serialize_entry(name, destination)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SendAttempt;
    use chrono::TimeZone;

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2015, 7, 30, h, 0, 0)
            .single()
            .expect("a valid fixed instant")
    }

    fn verification(channel: Channel, status: Status) -> Verification {
        Verification {
            sid: "VEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned(),
            service_sid: "VAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned(),
            to: "+15017122661".to_owned(),
            channel,
            status,
            code: "123456".to_owned(),
            locale: None,
            amount: None,
            payee: None,
            send_attempts: vec![SendAttempt {
                time: at(20),
                channel,
                attempt_sid: "VLaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned(),
            }],
            checks: 0,
            created: at(20),
            updated: at(20),
            expires_at: at(21),
        }
    }

    #[test]
    fn verification_matches_the_openapi_example_byte_for_byte() {
        let v = verification(Channel::Sms, Status::Pending);
        let json = serde_json::to_string(&VerificationJson::new(
            &v,
            "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "https://verify.twilio.com",
        ))
        .expect("serializes");
        let expected = r#"{"sid":"VEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","service_sid":"VAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","account_sid":"ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","to":"+15017122661","channel":"sms","status":"pending","valid":false,"date_created":"2015-07-30T20:00:00Z","date_updated":"2015-07-30T20:00:00Z","lookup":{},"amount":null,"payee":null,"send_code_attempts":[{"time":"2015-07-30T20:00:00Z","channel":"SMS","attempt_sid":"VLaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}],"sna":null,"url":"https://verify.twilio.com/v2/Services/VAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/Verifications/VEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#;
        assert_eq!(json, expected);
    }

    #[test]
    fn check_matches_the_openapi_example_byte_for_byte() {
        let v = verification(Channel::Sms, Status::Approved);
        let json = serde_json::to_string(&CheckJson::new(&v, "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"))
            .expect("serializes");
        let expected = r#"{"sid":"VEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","service_sid":"VAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","account_sid":"ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","to":"+15017122661","channel":"sms","status":"approved","valid":true,"amount":null,"payee":null,"sna_attempts_error_codes":[],"date_created":"2015-07-30T20:00:00Z","date_updated":"2015-07-30T20:00:00Z"}"#;
        assert_eq!(json, expected);
    }

    #[test]
    fn attempt_channel_labels_follow_the_examples() {
        for (channel, label) in [
            (Channel::Sms, "SMS"),
            (Channel::Email, "EMAIL"),
            (Channel::Call, "CALL"),
            (Channel::Whatsapp, "whatsapp"),
            (Channel::Sna, "sna"),
        ] {
            let v = verification(channel, Status::Pending);
            let json = serde_json::to_value(VerificationJson::new(&v, "AC", "http://h"))
                .expect("serializes");
            assert_eq!(json["send_code_attempts"][0]["channel"], label);
            assert_eq!(
                json["sna"].is_null(),
                channel != Channel::Sna,
                "{channel:?}"
            );
        }
    }

    #[test]
    fn service_has_every_field_of_the_schema() {
        let service = ServiceConfig {
            sid: "VAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned(),
            friendly_name: "name".to_owned(),
            code_length: 4,
        };
        let json = serde_json::to_value(ServiceJson::new(
            &service,
            "AC",
            "https://verify.twilio.com",
            &at(20),
        ))
        .expect("serializes");
        let keys: Vec<&str> = json
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        for key in [
            "sid",
            "account_sid",
            "friendly_name",
            "code_length",
            "lookup_enabled",
            "psd2_enabled",
            "skip_sms_to_landlines",
            "dtmf_input_required",
            "tts_name",
            "do_not_share_warning_enabled",
            "custom_code_enabled",
            "push",
            "totp",
            "default_template_sid",
            "whatsapp",
            "passkeys",
            "verify_event_subscription_enabled",
            "date_created",
            "date_updated",
            "url",
            "links",
        ] {
            assert!(keys.contains(&key), "{key} missing");
        }
        assert_eq!(
            json["links"]["verifications"],
            "https://verify.twilio.com/v2/Services/VAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/Verifications"
        );
    }

    #[test]
    fn attempt_list_follows_the_openapi_example() {
        let attempt = Attempt {
            sid: "VLaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned(),
            service_sid: "VAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned(),
            verification_sid: "VEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned(),
            to: "+573003003030".to_owned(),
            channel: Channel::Sms,
            created: at(18),
            converted: false,
        };
        let body = AttemptListJson::new(
            vec![attempt],
            "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "https://verify.twilio.com",
            50,
        );
        let expected = r#"{"attempts":[{"sid":"VLaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","account_sid":"ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","service_sid":"VAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","verification_sid":"VEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","date_created":"2015-07-30T18:00:00Z","date_updated":"2015-07-30T18:00:00Z","conversion_status":"unconverted","channel":"sms","price":null,"channel_data":{"verification_sid":"VEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","to":"+573003003030"},"url":"https://verify.twilio.com/v2/Attempts/VLaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}],"meta":{"page":0,"page_size":50,"first_page_url":"https://verify.twilio.com/v2/Attempts?PageSize=50&Page=0","previous_page_url":null,"url":"https://verify.twilio.com/v2/Attempts?PageSize=50&Page=0","next_page_url":null,"key":"attempts"}}"#;
        assert_eq!(serde_json::to_string(&body).expect("serialises"), expected);
    }

    #[test]
    fn scenarios_keep_their_order() {
        let json = serde_json::to_string(&ScenariosJson(vec![("b", "+2"), ("a", "+1")]))
            .expect("serializes");
        assert_eq!(json, r#"{"b":"+2","a":"+1"}"#);
    }
}
