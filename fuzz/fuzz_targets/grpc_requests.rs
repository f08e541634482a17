//! `verify_service::grpc`: the request messages decoded from arbitrary bytes with prost,
//! as the server's codec does, then parsed as the VerifyService handlers parse them.
//!
//! Input: the first byte picks the message (Start, Check, Get, Cancel), the rest is the
//! message's protobuf encoding.

#![no_main]

use std::sync::OnceLock;

use domain::{Destination, Email, PhoneNumber, VerificationId};
use libfuzzer_sys::fuzz_target;
use policy::Policies;
use prost::Message;
use proto::verify::v1 as pb;
use verify_service::config::{Overrides, TwilioEnv, load_from_str};
use verify_service::grpc::fuzzing;

/// The shipped purposes and one with a default region, so that numbers typed without a
/// country code parse too.
const PURPOSES: &str = r#"
[purposes.signup]
channels = ["sms", "email"]
default_region = "GB"
max_sends = 3
max_checks = 3
code_ttl_seconds = 600
idempotency_window_seconds = 600
"#;

fn policies() -> &'static Policies {
    static POLICIES: OnceLock<Policies> = OnceLock::new();
    POLICIES.get_or_init(|| {
        load_from_str(PURPOSES, &Overrides::default(), &TwilioEnv::default())
            .expect("the shipped defaults with one more purpose are valid")
            .policies
    })
}

/// A parsed id is the text it was parsed from.
fn check_id(raw: &str) {
    if let Ok(id) = fuzzing::parse_id(raw) {
        assert_eq!(id.to_string(), raw);
        assert_eq!(raw.parse::<VerificationId>(), Ok(id));
    }
}

fn check_start(m: &pb::StartVerificationRequest) {
    let channel = fuzzing::parse_channel(m.channel);
    match (&channel, pb::Channel::try_from(m.channel)) {
        (Ok(None), Ok(pb::Channel::Unspecified)) | (Err(_), Err(_)) => {}
        (Ok(Some(c)), Ok(known)) => {
            assert_eq!(
                known.as_str_name(),
                format!("CHANNEL_{}", c.as_str().to_uppercase())
            );
        }
        (ours, theirs) => panic!("channel {}: {ours:?} vs {theirs:?}", m.channel),
    }
    let Ok(input) = fuzzing::parse_start(m, policies()) else {
        return;
    };
    assert_eq!(input.purpose.as_str(), m.purpose);
    assert!(policies().get(&input.purpose).is_ok());
    assert_eq!(Ok(input.channel), channel.map_err(|_| ()));
    match &input.to {
        Destination::Phone(phone) => {
            assert_eq!(PhoneNumber::parse(phone.e164(), None).as_ref(), Ok(phone));
        }
        Destination::Email(email) => {
            assert_eq!(Email::parse(m.to.trim()).as_ref(), Ok(email));
        }
    }
    match &input.identity {
        Some(identity) => {
            assert_eq!(identity, m.identity.trim());
            assert!(identity.len() <= 256 && !identity.chars().any(char::is_control));
        }
        None => assert!(m.identity.trim().is_empty()),
    }
    assert_eq!(input.locale.is_some(), !m.locale.is_empty());
    assert_eq!(input.client_ip.is_some(), !m.client_ip.is_empty());
    assert_eq!(
        input.idempotency_key.is_some(),
        !m.idempotency_key.is_empty()
    );
    assert_eq!(input.allow_fallback, m.allow_fallback);
    assert_eq!(input.step_up_completed, m.step_up_completed);
    assert!(
        input.owner.is_empty(),
        "the caller's name is set after parsing"
    );
}

fn check_check(m: &pb::CheckVerificationRequest) {
    check_id(&m.id);
    if let Ok((id, code)) = fuzzing::parse_check(m) {
        assert_eq!(id.to_string(), m.id);
        assert_eq!(code.expose(), m.code.trim());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => {
            if let Ok(m) = pb::StartVerificationRequest::decode(bytes) {
                check_start(&m);
            }
        }
        1 => {
            if let Ok(m) = pb::CheckVerificationRequest::decode(bytes) {
                check_check(&m);
            }
        }
        2 => {
            if let Ok(m) = pb::GetVerificationRequest::decode(bytes) {
                check_id(&m.id);
            }
        }
        _ => {
            if let Ok(m) = pb::CancelVerificationRequest::decode(bytes) {
                check_id(&m.id);
            }
        }
    }
});
