//! Verifications for tests: fixed keys, destinations and times, so every test builds the
//! same realistic records (sealed with the domain's real keyring) without repeating itself.

use chrono::{DateTime, TimeZone, Utc};
use domain::abuse::{RiskAssessment, RiskDecision, RiskReason};
use domain::delivery::{DeliveryReport, DeliveryStatus, FallbackReason};
use domain::events::{Envelope, EventKind, MessageId};
use domain::{
    BlindIndexKey, Channel, Destination, Email, EncryptionKey, IdempotencyKey, Keyring,
    NewVerification, PhoneNumber, Purpose, Verification, VerificationId, VerificationRecord,
    VerificationStatus,
};
use uuid::Uuid;

/// The phone number whose digits must never reach the database.
pub(crate) const PHONE: &str = "+14155552671";
/// The email address that must never reach the database.
pub(crate) const EMAIL: &str = "jane.doe@example.com";

pub(crate) fn phone() -> Destination {
    Destination::Phone(PhoneNumber::parse(PHONE, None).expect("test number is valid"))
}

pub(crate) fn email() -> Destination {
    Destination::Email(Email::parse(EMAIL).expect("test address is valid"))
}

pub(crate) fn keyring() -> Keyring {
    Keyring::new(EncryptionKey::new("k1", [7; 32]), vec![])
}

/// A keyring whose current key is `key_id`, as a deployment before or after a rotation
/// would hold; the key bytes only need to differ from [`keyring`]'s.
pub(crate) fn keyring_with(key_id: &str) -> Keyring {
    Keyring::new(EncryptionKey::new(key_id, [3; 32]), vec![])
}

/// `v` as migration 0011 leaves a row sealed before ciphertexts were bound to their rows:
/// its key id marked `unbound:`.
pub(crate) fn unbound(mut v: Verification) -> Verification {
    v.record_mut().destination.key_id = format!("unbound:{}", v.destination().key_id);
    v
}

pub(crate) fn blind_index() -> BlindIndexKey {
    BlindIndexKey::new([9; 32])
}

/// A fixed instant plus `secs` seconds, with a millisecond part so truncation would show.
pub(crate) fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 250_000_000)
        .single()
        .expect("test time is valid")
}

pub(crate) fn id(n: u128) -> VerificationId {
    VerificationId::from_uuid(Uuid::from_u128(n))
}

/// A fresh pending verification, as a start would record it, created at `at(0)`.
pub(crate) fn bare(n: u128, purpose: &str, destination: &Destination) -> Verification {
    let channel = if destination.accepts(Channel::Sms) {
        Channel::Sms
    } else {
        Channel::Email
    };
    let nonce_seed = u8::try_from(n % 251).expect("below 251");
    Verification::new(NewVerification {
        id: id(n),
        purpose: Purpose::parse(purpose).expect("test purpose is valid"),
        channel,
        destination: keyring().seal(destination, &id(n), [nonce_seed; 12]),
        destination_hash: blind_index().hash(destination),
        to_masked: destination.masked(),
        identity: None,
        owner: String::new(),
        idempotency_key: None,
        max_sends: 3,
        max_checks: 5,
        allow_fallback: false,
        trace_parent: None,
        risk: None,
        now: at(0),
        expires_at: at(600),
    })
}

/// A verification with every optional field set and no field at its default value.
pub(crate) fn full(
    n: u128,
    purpose: &str,
    key: Option<&str>,
    destination: &Destination,
) -> Verification {
    let phone = destination.accepts(Channel::Call);
    // As a store reads it back: its next write is conditional on version 7.
    Verification::restore(VerificationRecord {
        status: VerificationStatus::Failed,
        channel: if phone { Channel::Call } else { Channel::Email },
        provider_sid: Some(PROVIDER_SID.into()),
        identity: Some("user-7".into()),
        owner: "checkout".into(),
        idempotency_key: key.map(|k| IdempotencyKey::parse(k).expect("test key is valid")),
        sends: 2,
        checks: 4,
        max_sends: 4,
        max_checks: 6,
        failure_code: Some(60200),
        allow_fallback: true,
        channels_tried: if phone {
            vec![Channel::Sms, Channel::Whatsapp, Channel::Call]
        } else {
            vec![Channel::Email]
        },
        fallback_reason: Some(FallbackReason::DeliveryFailed {
            status: DeliveryStatus::Undelivered,
            error_code: Some(30003),
        }),
        delivery_status: Some(DeliveryStatus::Sent),
        trace_parent: Some(TRACE_PARENT.into()),
        risk: Some(risk(RiskDecision::StepUp, true)),
        created_at: at(1),
        updated_at: at(2),
        expires_at: at(3),
        version: 7,
        ..bare(n, purpose, destination).into_record()
    })
}

/// A risk assessment with two reasons, one of them with characters JSON must escape.
pub(crate) fn risk(decision: RiskDecision, shadow: bool) -> RiskAssessment {
    RiskAssessment {
        decision,
        score: 85,
        reasons: vec![
            RiskReason {
                code: "PREMIUM_RATE_NUMBER".into(),
                message: "the number is in a premium-rate range (+44 70)".into(),
                weight: 60,
            },
            RiskReason {
                code: "IP_FAN_OUT".into(),
                message: "7 destinations from one address in 10 minutes; \"quoted\" \\ \u{e9}"
                    .into(),
                weight: 25,
            },
        ],
        shadow,
        network: Some("203.0.113.0/24".into()),
    }
}

/// The W3C trace context of [`full`] (a start's span in a caller's trace).
pub(crate) const TRACE_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The provider's verification id of the fixtures' reports.
pub(crate) const PROVIDER_SID: &str = "VE0123456789abcdef0123456789abcdef";

/// A delivery report with every field set, deduplicated by `key`.
pub(crate) fn report(key: &str) -> DeliveryReport {
    DeliveryReport {
        dedupe_key: key.to_owned(),
        provider_sid: Some(PROVIDER_SID.into()),
        message_sid: Some("SM0123456789abcdef0123456789abcdef".into()),
        channel: Some(Channel::Sms),
        status: DeliveryStatus::Undelivered,
        error_code: Some(30003),
        occurred_at: at(5),
    }
}

pub(crate) fn message_id(n: u128) -> MessageId {
    MessageId::from_uuid(Uuid::from_u128(n))
}

/// An event numbered `n`, as a publisher would queue it: a trace header and a JSON payload
/// (that of a delivery report, which holds no destination).
pub(crate) fn envelope(n: u128) -> Envelope {
    let kind = EventKind::parse("delivery.failed").expect("test kind is valid");
    Envelope::new(
        message_id(n),
        kind,
        1,
        at(5),
        format!(r#"{{"dedupe_key":"ce:{n}","status":"undelivered","error_code":30003}}"#)
            .into_bytes(),
    )
    .with_header("traceparent", TRACE_PARENT)
}
