//! How an envelope travels as an AMQP message: the body is the payload, everything else is
//! in properties, so brokers, tools and other clients see standard fields (`message_id`,
//! `type`, `timestamp`, `content_type`, persistent `delivery_mode`) and the trace context as
//! plain headers (`traceparent`).

use chrono::{DateTime, SecondsFormat, Utc};
use domain::events::{BusError, Envelope, EventKind, MessageId};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// The envelope's schema version.
pub(crate) const HEADER_VERSION: &str = "x-vg-version";
/// `occurred_at` to the microsecond; the AMQP `timestamp` property only has seconds.
pub(crate) const HEADER_OCCURRED_AT: &str = "x-vg-occurred-at";
/// The handler attempt this copy is for (1 when absent).
pub(crate) const HEADER_ATTEMPT: &str = "x-vg-attempt";
/// Why a dead-lettered message was given up.
pub(crate) const HEADER_DEAD_REASON: &str = "x-vg-dead-reason";
/// Selects the delay queue at the delay exchange. Not `x-` prefixed: headers exchanges ignore
/// `x-` headers when matching.
pub(crate) const HEADER_DELAY_MS: &str = "vg-delay-ms";

const CONTENT_TYPE: &str = "application/json";
/// AMQP `delivery_mode` 2: the broker writes the message to disk before confirming it.
const PERSISTENT: u8 = 2;

pub(crate) fn short(text: &str) -> Result<ShortString, BusError> {
    ShortString::try_new(text)
        .map_err(|_| BusError::Invalid(format!("`{text:.64}` is longer than 255 bytes")))
}

pub(crate) fn properties(envelope: &Envelope, attempt: u32) -> Result<BasicProperties, BusError> {
    let mut headers = FieldTable::default();
    for (name, value) in &envelope.headers {
        headers.insert(
            short(name)?,
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
    }
    headers.insert(HEADER_VERSION.into(), AMQPValue::LongUInt(envelope.version));
    headers.insert(
        HEADER_OCCURRED_AT.into(),
        AMQPValue::LongString(
            envelope
                .occurred_at
                .to_rfc3339_opts(SecondsFormat::Micros, true)
                .into(),
        ),
    );
    headers.insert(HEADER_ATTEMPT.into(), AMQPValue::LongUInt(attempt));
    Ok(BasicProperties::default()
        .with_message_id(short(&envelope.message_id.to_string())?)
        .with_type(short(envelope.kind.as_str())?)
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(PERSISTENT)
        .with_timestamp(u64::try_from(envelope.occurred_at.timestamp()).unwrap_or(0))
        .with_headers(headers))
}

/// A copy of a received message's properties for republishing it (retry or dead letter),
/// with the attempt number and optionally a dead-letter reason set.
pub(crate) fn republish_properties(
    received: &BasicProperties,
    attempt: u32,
    dead_reason: Option<&str>,
) -> BasicProperties {
    let mut headers = received.headers().clone().unwrap_or_default();
    headers.insert(HEADER_ATTEMPT.into(), AMQPValue::LongUInt(attempt));
    if let Some(reason) = dead_reason {
        headers.insert(
            HEADER_DEAD_REASON.into(),
            AMQPValue::LongString(reason.into()),
        );
    }
    received
        .clone()
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers)
}

pub(crate) fn with_delay_header(properties: BasicProperties, delay_ms: u64) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        HEADER_DELAY_MS.into(),
        AMQPValue::LongString(delay_ms.to_string().into()),
    );
    properties.with_headers(headers)
}

/// A received message as an envelope, with its attempt number.
pub(crate) fn decode(properties: &BasicProperties, body: &[u8]) -> Result<(Envelope, u32), String> {
    let message_id: MessageId = properties
        .message_id()
        .as_ref()
        .ok_or("the message has no message_id")?
        .as_str()
        .parse()
        .map_err(|_| "the message_id is not a UUID")?;
    let kind = EventKind::parse(
        properties
            .kind()
            .as_ref()
            .ok_or("the message has no type")?
            .as_str(),
    )
    .map_err(|e| e.to_string())?;
    let empty = FieldTable::default();
    let table = properties.headers().as_ref().unwrap_or(&empty);
    let version = table
        .inner()
        .get(HEADER_VERSION)
        .and_then(as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or("the message has no version")?;
    let occurred_at = table
        .inner()
        .get(HEADER_OCCURRED_AT)
        .and_then(as_text)
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            let seconds = i64::try_from((*properties.timestamp())?).ok()?;
            DateTime::from_timestamp(seconds, 0)
        })
        .ok_or("the message has no occurred_at")?;
    let attempt = table
        .inner()
        .get(HEADER_ATTEMPT)
        .and_then(as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(1)
        .max(1);
    let mut envelope = Envelope::new(message_id, kind, version, occurred_at, body.to_vec());
    for (name, value) in table.inner() {
        let name = name.as_str();
        // The transport's own headers (ours and the broker's `x-death`) are not the
        // publisher's; neither are values that are not text.
        if name.starts_with("x-") || name.starts_with("vg-") {
            continue;
        }
        if let Some(text) = as_text(value) {
            envelope.headers.insert(name.to_owned(), text);
        }
    }
    Ok((envelope, attempt))
}

pub(crate) fn dead_reason(properties: &BasicProperties) -> String {
    properties
        .headers()
        .as_ref()
        .and_then(|t| t.inner().get(HEADER_DEAD_REASON).and_then(as_text))
        .unwrap_or_default()
}

fn as_u64(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::ShortShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::Timestamp(v) => Some(*v),
        AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}

fn as_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use uuid::Uuid;

    #[test]
    fn envelopes_round_trip_through_properties() {
        let occurred_at = Utc
            .timestamp_opt(1_700_000_000, 123_456_000)
            .single()
            .expect("valid time");
        let envelope = Envelope::new(
            MessageId::from_uuid(Uuid::from_u128(7)),
            EventKind::parse("delivery.failed").expect("valid kind"),
            3,
            occurred_at,
            br#"{"a":1}"#.to_vec(),
        )
        .with_header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        let props = properties(&envelope, 2).expect("encodes");
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(decode(&props, &envelope.payload), Ok((envelope.clone(), 2)));

        let dead = republish_properties(&with_delay_header(props, 5), 3, Some("gave up"));
        assert_eq!(dead_reason(&dead), "gave up");
        assert_eq!(decode(&dead, &envelope.payload), Ok((envelope, 3)));
    }

    #[test]
    fn messages_without_ids_do_not_decode() {
        assert!(decode(&BasicProperties::default(), b"{}").is_err());
    }
}
