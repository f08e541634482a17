//! The events the services pass over the bus, and their one codec: kind, schema version,
//! message id and payload of each event are decided here, for the publisher that encodes it
//! ([`BusEvent::to_envelope`]) and the consumer that decodes it
//! ([`BusEvent::from_envelope`]).
//!
//! Message ids are derived from the event, never drawn at random, so an event published
//! twice (a retried publish, a report received twice) is one message to a deduplicating
//! consumer: a report's from its dedupe key, a silence check's from its verification and
//! send.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::delivery::{
    DELIVERY_REPORTED, DELIVERY_REPORTED_VERSION, DeliveryReport, SILENCE_CHECK,
    SILENCE_CHECK_VERSION, SilenceCheck,
};
use crate::events::{Envelope, EventKind, MessageId};

/// An event on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// webhook-ingest stored a new delivery report ([`DELIVERY_REPORTED`]).
    DeliveryReported(DeliveryReport),
    /// verify-service asks itself, after a send, whether a report came
    /// ([`SILENCE_CHECK`], published delayed).
    SilenceCheck(SilenceCheck),
}

/// Why an envelope is not an event this codec knows: trying again cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("no event of kind `{0}` is known")]
    UnknownKind(EventKind),
    #[error("{kind} version {version} is unknown")]
    UnknownVersion { kind: EventKind, version: u32 },
    #[error("malformed {kind} payload: {reason}")]
    Payload { kind: EventKind, reason: String },
}

impl BusEvent {
    /// Its kind: the routing key subscriptions bind to.
    pub fn kind(&self) -> EventKind {
        match self {
            BusEvent::DeliveryReported(_) => DELIVERY_REPORTED,
            BusEvent::SilenceCheck(_) => SILENCE_CHECK,
        }
    }

    /// The version of its payload's schema.
    pub fn version(&self) -> u32 {
        match self {
            BusEvent::DeliveryReported(_) => DELIVERY_REPORTED_VERSION,
            BusEvent::SilenceCheck(_) => SILENCE_CHECK_VERSION,
        }
    }

    /// Its message id, derived from what it says (see the module).
    pub fn message_id(&self) -> MessageId {
        let name = match self {
            BusEvent::DeliveryReported(report) => report.dedupe_key.clone(),
            BusEvent::SilenceCheck(check) => {
                format!("silence:{}:{}", check.verification_id, check.send)
            }
        };
        MessageId::from_uuid(Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes()))
    }

    /// The envelope it travels in: its kind, version and message id, `occurred_at`, its
    /// payload as JSON and the trace context `trace` (W3C `traceparent`, `tracestate`) as
    /// headers.
    pub fn to_envelope<N: Into<String>>(
        &self,
        occurred_at: DateTime<Utc>,
        trace: impl IntoIterator<Item = (N, String)>,
    ) -> Result<Envelope, serde_json::Error> {
        let payload = match self {
            BusEvent::DeliveryReported(report) => serde_json::to_vec(report)?,
            BusEvent::SilenceCheck(check) => serde_json::to_vec(check)?,
        };
        let envelope = Envelope::new(
            self.message_id(),
            self.kind(),
            self.version(),
            occurred_at,
            payload,
        );
        Ok(trace.into_iter().fold(envelope, |envelope, (name, value)| {
            envelope.with_header(name, value)
        }))
    }

    /// The event `envelope` carries, when its kind and version are known and its payload
    /// is well formed.
    pub fn from_envelope(envelope: &Envelope) -> Result<BusEvent, DecodeError> {
        let kind = &envelope.kind;
        let expected = if *kind == DELIVERY_REPORTED {
            DELIVERY_REPORTED_VERSION
        } else if *kind == SILENCE_CHECK {
            SILENCE_CHECK_VERSION
        } else {
            return Err(DecodeError::UnknownKind(kind.clone()));
        };
        if envelope.version != expected {
            return Err(DecodeError::UnknownVersion {
                kind: kind.clone(),
                version: envelope.version,
            });
        }
        let malformed = |e: serde_json::Error| DecodeError::Payload {
            kind: kind.clone(),
            reason: e.to_string(),
        };
        if *kind == DELIVERY_REPORTED {
            serde_json::from_slice(&envelope.payload)
                .map(BusEvent::DeliveryReported)
                .map_err(malformed)
        } else {
            serde_json::from_slice(&envelope.payload)
                .map(BusEvent::SilenceCheck)
                .map_err(malformed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Channel;
    use crate::VerificationId;
    use crate::delivery::DeliveryStatus;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).expect("valid")
    }

    fn report() -> DeliveryReport {
        DeliveryReport {
            dedupe_key: "ce:EZ0123".into(),
            provider_sid: Some("VE0123".into()),
            message_sid: None,
            channel: Some(Channel::Sms),
            status: DeliveryStatus::Undelivered,
            error_code: Some(30003),
            occurred_at: at(1),
        }
    }

    fn check() -> SilenceCheck {
        SilenceCheck {
            verification_id: VerificationId::from_uuid(Uuid::from_u128(7)),
            send: 2,
        }
    }

    #[test]
    fn every_event_round_trips_through_its_envelope() -> Result<(), Box<dyn std::error::Error>> {
        for event in [
            BusEvent::DeliveryReported(report()),
            BusEvent::SilenceCheck(check()),
        ] {
            let trace = [(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            )];
            let envelope = event.to_envelope(at(5), trace.clone())?;
            assert_eq!(envelope.kind, event.kind());
            assert_eq!(envelope.version, 1);
            assert_eq!(envelope.occurred_at, at(5));
            assert_eq!(envelope.message_id, event.message_id());
            assert_eq!(
                envelope.headers.get("traceparent"),
                Some(&trace[0].1),
                "the trace context travels as headers"
            );
            assert_eq!(BusEvent::from_envelope(&envelope), Ok(event));
        }
        Ok(())
    }

    #[test]
    fn the_payloads_keep_their_wire_format() -> Result<(), Box<dyn std::error::Error>> {
        // What consumers already deployed read: the id as it prints, not a UUID.
        let envelope =
            BusEvent::SilenceCheck(check()).to_envelope(at(0), Vec::<(String, String)>::new())?;
        assert_eq!(
            String::from_utf8(envelope.payload)?,
            r#"{"verification_id":"ver_00000000000000000000000000000007","send":2}"#
        );
        Ok(())
    }

    #[test]
    fn message_ids_follow_what_the_event_says() {
        let same = BusEvent::DeliveryReported(DeliveryReport {
            occurred_at: at(99),
            ..report()
        });
        assert_eq!(
            BusEvent::DeliveryReported(report()).message_id(),
            same.message_id(),
            "one dedupe key, one message"
        );
        let next_send = BusEvent::SilenceCheck(SilenceCheck { send: 3, ..check() });
        assert_ne!(
            BusEvent::SilenceCheck(check()).message_id(),
            next_send.message_id()
        );
        // Stable across releases: a check published before an upgrade and redelivered
        // after it is still a duplicate of itself.
        assert_eq!(
            BusEvent::SilenceCheck(check()).message_id().as_uuid(),
            Uuid::new_v5(
                &Uuid::NAMESPACE_OID,
                b"silence:ver_00000000000000000000000000000007:2"
            )
        );
    }

    #[test]
    fn what_it_does_not_know_is_refused_with_the_reason() -> Result<(), Box<dyn std::error::Error>>
    {
        let good =
            BusEvent::SilenceCheck(check()).to_envelope(at(0), Vec::<(String, String)>::new())?;
        let unknown = Envelope {
            kind: EventKind::parse("delivery.lost")?,
            ..good.clone()
        };
        assert_eq!(
            BusEvent::from_envelope(&unknown),
            Err(DecodeError::UnknownKind(EventKind::parse("delivery.lost")?))
        );
        let newer = Envelope {
            version: 2,
            ..good.clone()
        };
        assert!(matches!(
            BusEvent::from_envelope(&newer),
            Err(DecodeError::UnknownVersion { version: 2, .. })
        ));
        for payload in [
            &b"not json"[..],
            br#"{"verification_id":"7","send":2}"#,
            br#"{"verification_id":"ver_00000000000000000000000000000007","send":-1}"#,
            br#"{"send":2}"#,
        ] {
            let bad = Envelope {
                payload: payload.to_vec(),
                ..good.clone()
            };
            assert!(
                matches!(
                    BusEvent::from_envelope(&bad),
                    Err(DecodeError::Payload { .. })
                ),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        Ok(())
    }
}
