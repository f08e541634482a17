//! Domain values as database rows: the conversion between a [`Verification`], a
//! [`DeliveryReport`] or an outbox [`Envelope`] and the plain column values, and the binding
//! of those values to statements. Written once, generic over the database, so every backend
//! stores and reads the same representation.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use domain::abuse::{
    Block, BlockKind, BlockSource, BlockTarget, Counts, RiskAssessment, RiskDecision, RiskReason,
};
use domain::delivery::{DeliveryReport, DeliveryStatus, FallbackReason};
use domain::events::{Envelope, EventKind, MessageId};
use domain::ports::{OutboxMessage, StoreError};
use domain::{
    Channel, DestinationHash, IdempotencyKey, Purpose, SealedDestination, Verification,
    VerificationId, VerificationRecord, VerificationStatus,
};
use serde_json::{Value, json};
use sqlx::query::Query;
use sqlx::{Database, Encode, Type};

/// The columns of `verifications`, as the database holds them.
///
/// Counters are `i64` because that is the integer both SQLite and PostgreSQL (`BIGINT`)
/// decode without loss; timestamps are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct VerificationRow {
    pub id: String,
    pub purpose: String,
    pub channel: String,
    pub status: String,
    pub provider_sid: Option<String>,
    pub destination_ciphertext: Vec<u8>,
    pub destination_key_id: String,
    pub destination_hash: String,
    pub to_masked: String,
    pub identity: Option<String>,
    pub idempotency_key: Option<String>,
    pub sends: i64,
    pub checks: i64,
    pub max_sends: i64,
    pub max_checks: i64,
    pub failure_code: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: i64,
    pub version: i64,
    pub allow_fallback: bool,
    /// Channel names, comma-separated, in the order they were tried.
    pub channels_tried: String,
    /// See [`encode_fallback_reason`].
    pub fallback_reason: Option<String>,
    pub delivery_status: Option<String>,
    /// The W3C `traceparent` of the start that made the latest send.
    pub trace_parent: Option<String>,
    /// See [`encode_risk`].
    pub risk: Option<String>,
    /// The caller's name; empty without callers.
    pub owner: String,
}

/// A stored row that does not convert back into a domain value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CorruptRow {
    /// What the row holds, e.g. `verification`.
    what: &'static str,
    id: String,
    column: &'static str,
    problem: String,
}

impl fmt::Display for CorruptRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} row `{}`, column `{}`: {}",
            self.what, self.id, self.column, self.problem
        )
    }
}

impl From<CorruptRow> for StoreError {
    fn from(corrupt: CorruptRow) -> Self {
        StoreError::Corrupt(corrupt.to_string())
    }
}

/// A timestamp as stored. Sub-millisecond precision is dropped.
pub(crate) fn to_millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// A stored timestamp, if it is one chrono can represent.
fn from_millis(millis: i64) -> Result<DateTime<Utc>, String> {
    DateTime::<Utc>::from_timestamp_millis(millis)
        .ok_or_else(|| format!("{millis} ms is not a representable time"))
}

/// A stored count or code, if it fits the domain's `u32`.
fn to_u32(value: i64) -> Result<u32, String> {
    u32::try_from(value).map_err(|_| format!("{value} is out of range"))
}

/// The channel named exactly as [`Channel::as_str`] spells it.
fn parse_channel(raw: &str) -> Option<Channel> {
    Channel::ALL.into_iter().find(|c| c.as_str() == raw)
}

/// The delivery status named exactly as [`DeliveryStatus::as_str`] spells it (the domain's
/// own parser also accepts Twilio's upper case, which the store never writes).
fn parse_delivery_status(raw: &str) -> Option<DeliveryStatus> {
    DeliveryStatus::ALL.into_iter().find(|s| s.as_str() == raw)
}

/// `sms,call`: the names in order, nothing for no channel.
fn encode_channels(channels: &[Channel]) -> String {
    channels
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn decode_channels(raw: &str) -> Result<Vec<Channel>, String> {
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    raw.split(',')
        .map(|name| parse_channel(name).ok_or_else(|| format!("unknown channel `{name}`")))
        .collect()
}

/// A small stable text, independent of how the domain type serializes, so stored rows
/// survive a change there: `no_delivery_report`, or `delivery_failed:<status>` with
/// `:<error code>` when the provider gave one (`delivery_failed:undelivered:30003`).
fn encode_fallback_reason(reason: FallbackReason) -> String {
    match reason {
        FallbackReason::NoDeliveryReport => "no_delivery_report".to_owned(),
        FallbackReason::DeliveryFailed {
            status,
            error_code: None,
        } => format!("delivery_failed:{status}"),
        FallbackReason::DeliveryFailed {
            status,
            error_code: Some(code),
        } => format!("delivery_failed:{status}:{code}"),
    }
}

fn decode_fallback_reason(raw: &str) -> Result<FallbackReason, String> {
    if raw == "no_delivery_report" {
        return Ok(FallbackReason::NoDeliveryReport);
    }
    let bad = || format!("unknown fallback reason `{raw}`");
    let failed = raw.strip_prefix("delivery_failed:").ok_or_else(bad)?;
    let (status, error_code) = match failed.split_once(':') {
        Some((status, code)) => {
            // Digits only: `u32::from_str` would also take a sign.
            if code.is_empty() || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            (status, Some(code.parse::<u32>().map_err(|_| bad())?))
        }
        None => (failed, None),
    };
    let status = parse_delivery_status(status).ok_or_else(bad)?;
    Ok(FallbackReason::DeliveryFailed { status, error_code })
}

/// A risk assessment as a JSON object, built by hand so stored rows do not depend on how
/// (or whether) the domain types serialize: `{"decision":"block","score":90,"shadow":false,
/// "reasons":[{"code":…,"message":…,"weight":…}]}`, and `"network":"203.0.113.0/24"` when
/// scoring knew the client's network.
fn encode_risk(risk: &RiskAssessment) -> String {
    let reasons: Vec<Value> = risk
        .reasons
        .iter()
        .map(|r| json!({"code": r.code, "message": r.message, "weight": r.weight}))
        .collect();
    let mut object = json!({
        "decision": risk.decision.as_str(),
        "score": risk.score,
        "shadow": risk.shadow,
        "reasons": reasons,
    });
    if let (Some(network), Some(fields)) = (&risk.network, object.as_object_mut()) {
        fields.insert("network".to_owned(), Value::from(network.as_str()));
    }
    object.to_string()
}

/// The assessment [`encode_risk`] wrote. Every field must be there with its type, but
/// `network`, which rows written before it existed lack; fields added by a later release
/// are ignored.
fn decode_risk(raw: &str) -> Result<RiskAssessment, String> {
    let value: Value = serde_json::from_str(raw).map_err(|e| format!("not JSON: {e}"))?;
    let object = value.as_object().ok_or("not a JSON object")?;
    let field = |name: &str| object.get(name).ok_or(format!("no `{name}`"));
    let decision = field("decision")?
        .as_str()
        .and_then(RiskDecision::parse)
        .ok_or("`decision` is not a known decision")?;
    let score = json_u32(field("score")?).ok_or("`score` is not a u32")?;
    let shadow = field("shadow")?
        .as_bool()
        .ok_or("`shadow` is not a boolean")?;
    let reasons = field("reasons")?
        .as_array()
        .ok_or("`reasons` is not an array")?
        .iter()
        .map(decode_reason)
        .collect::<Result<Vec<_>, _>>()?;
    let network = match object.get("network") {
        None => None,
        Some(v) => Some(v.as_str().ok_or("`network` is not a string")?.to_owned()),
    };
    Ok(RiskAssessment {
        decision,
        score,
        reasons,
        shadow,
        network,
    })
}

fn decode_reason(value: &Value) -> Result<RiskReason, String> {
    let text = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or(format!("a reason's `{name}` is not a string"))
    };
    Ok(RiskReason {
        code: text("code")?,
        message: text("message")?,
        weight: value
            .get("weight")
            .and_then(json_u32)
            .ok_or("a reason's `weight` is not a u32")?,
    })
}

fn json_u32(value: &Value) -> Option<u32> {
    value.as_u64().and_then(|n| u32::try_from(n).ok())
}

impl From<&Verification> for VerificationRow {
    fn from(v: &Verification) -> Self {
        VerificationRow {
            id: v.id().to_string(),
            purpose: v.purpose().as_str().to_owned(),
            channel: v.channel().as_str().to_owned(),
            status: v.status().as_str().to_owned(),
            provider_sid: v.provider_sid().map(str::to_owned),
            destination_ciphertext: v.destination().ciphertext.clone(),
            destination_key_id: v.destination().key_id.clone(),
            destination_hash: v.destination_hash().as_str().to_owned(),
            to_masked: v.to_masked().to_owned(),
            identity: v.identity().map(str::to_owned),
            idempotency_key: v.idempotency_key().map(|k| k.as_str().to_owned()),
            sends: i64::from(v.sends()),
            checks: i64::from(v.checks()),
            max_sends: i64::from(v.max_sends()),
            max_checks: i64::from(v.max_checks()),
            failure_code: v.failure_code().map(i64::from),
            created_at: to_millis(v.created_at()),
            updated_at: to_millis(v.updated_at()),
            expires_at: to_millis(v.expires_at()),
            version: i64::from(v.version()),
            allow_fallback: v.allow_fallback(),
            channels_tried: encode_channels(v.channels_tried()),
            fallback_reason: v.fallback_reason().map(encode_fallback_reason),
            delivery_status: v.delivery_status().map(|s| s.as_str().to_owned()),
            trace_parent: v.trace_parent().map(str::to_owned),
            risk: v.risk().map(encode_risk),
            owner: v.owner().to_owned(),
        }
    }
}

/// Rows read back as verifications; the first that does not read back is the error.
pub(crate) fn verifications(rows: Vec<VerificationRow>) -> Result<Vec<Verification>, StoreError> {
    rows.into_iter()
        .map(|row| Verification::try_from(row).map_err(StoreError::from))
        .collect()
}

impl TryFrom<VerificationRow> for Verification {
    type Error = CorruptRow;

    fn try_from(row: VerificationRow) -> Result<Self, CorruptRow> {
        let bad = |column: &'static str, problem: String| CorruptRow {
            what: "verification",
            id: row.id.clone(),
            column,
            problem,
        };
        let count = |column: &'static str, value: i64| to_u32(value).map_err(|p| bad(column, p));
        let time =
            |column: &'static str, millis: i64| from_millis(millis).map_err(|p| bad(column, p));

        let id = VerificationId::from_str(&row.id).map_err(|e| bad("id", e.to_string()))?;
        let purpose = Purpose::parse(&row.purpose).map_err(|e| bad("purpose", e.to_string()))?;
        let channel = Channel::from_str(&row.channel).map_err(|e| bad("channel", e.to_string()))?;
        let status = VerificationStatus::parse(&row.status)
            .ok_or_else(|| bad("status", format!("unknown status `{}`", row.status)))?;
        if row.destination_hash.is_empty()
            || !row.destination_hash.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad("destination_hash", "is not a hex digest".to_owned()));
        }
        let idempotency_key = row
            .idempotency_key
            .as_deref()
            .map(IdempotencyKey::parse)
            .transpose()
            .map_err(|e| bad("idempotency_key", e.to_string()))?;
        let failure_code = row
            .failure_code
            .map(|code| count("failure_code", code))
            .transpose()?;
        let channels_tried =
            decode_channels(&row.channels_tried).map_err(|p| bad("channels_tried", p))?;
        let fallback_reason = row
            .fallback_reason
            .as_deref()
            .map(decode_fallback_reason)
            .transpose()
            .map_err(|p| bad("fallback_reason", p))?;
        let delivery_status = row
            .delivery_status
            .as_deref()
            .map(|raw| {
                parse_delivery_status(raw)
                    .ok_or_else(|| bad("delivery_status", format!("unknown status `{raw}`")))
            })
            .transpose()?;
        let risk = row
            .risk
            .as_deref()
            .map(decode_risk)
            .transpose()
            .map_err(|p| bad("risk", p))?;

        Ok(Verification::restore(VerificationRecord {
            id,
            purpose,
            channel,
            status,
            sends: count("sends", row.sends)?,
            checks: count("checks", row.checks)?,
            max_sends: count("max_sends", row.max_sends)?,
            max_checks: count("max_checks", row.max_checks)?,
            failure_code,
            allow_fallback: row.allow_fallback,
            channels_tried,
            fallback_reason,
            delivery_status,
            trace_parent: row.trace_parent,
            risk,
            created_at: time("created_at", row.created_at)?,
            updated_at: time("updated_at", row.updated_at)?,
            expires_at: time("expires_at", row.expires_at)?,
            version: count("version", row.version)?,
            idempotency_key,
            provider_sid: row.provider_sid,
            destination: SealedDestination {
                key_id: row.destination_key_id,
                ciphertext: row.destination_ciphertext,
            },
            destination_hash: DestinationHash::from_stored(row.destination_hash),
            to_masked: row.to_masked,
            identity: row.identity,
            owner: row.owner,
        }))
    }
}

/// Binds every column of `row` as `$1` to `$27` of [`crate::sql::INSERT`].
pub(crate) fn bind_insert<'q, DB>(
    query: Query<'q, DB, <DB as Database>::Arguments>,
    row: VerificationRow,
) -> Query<'q, DB, <DB as Database>::Arguments>
where
    DB: Database,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> Option<String>: Encode<'t, DB> + Type<DB>,
    for<'t> Vec<u8>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
    for<'t> bool: Encode<'t, DB> + Type<DB>,
{
    query
        .bind(row.id)
        .bind(row.purpose)
        .bind(row.channel)
        .bind(row.status)
        .bind(row.provider_sid)
        .bind(row.destination_ciphertext)
        .bind(row.destination_key_id)
        .bind(row.destination_hash)
        .bind(row.to_masked)
        .bind(row.identity)
        .bind(row.idempotency_key)
        .bind(row.sends)
        .bind(row.checks)
        .bind(row.max_sends)
        .bind(row.max_checks)
        .bind(row.failure_code)
        .bind(row.created_at)
        .bind(row.updated_at)
        .bind(row.expires_at)
        .bind(row.version)
        .bind(row.allow_fallback)
        .bind(row.channels_tried)
        .bind(row.fallback_reason)
        .bind(row.delivery_status)
        .bind(row.trace_parent)
        .bind(row.risk)
        .bind(row.owner)
}

/// Binds the id, `expected_version` and the mutable columns of `row` as `$1` to `$25` of
/// [`crate::sql::UPDATE`].
pub(crate) fn bind_update<'q, DB>(
    query: Query<'q, DB, <DB as Database>::Arguments>,
    row: VerificationRow,
    expected_version: i64,
) -> Query<'q, DB, <DB as Database>::Arguments>
where
    DB: Database,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> Option<String>: Encode<'t, DB> + Type<DB>,
    for<'t> Vec<u8>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
    for<'t> bool: Encode<'t, DB> + Type<DB>,
{
    query
        .bind(row.id)
        .bind(expected_version)
        .bind(row.channel)
        .bind(row.status)
        .bind(row.provider_sid)
        .bind(row.destination_ciphertext)
        .bind(row.destination_key_id)
        .bind(row.destination_hash)
        .bind(row.to_masked)
        .bind(row.identity)
        .bind(row.sends)
        .bind(row.checks)
        .bind(row.max_sends)
        .bind(row.max_checks)
        .bind(row.failure_code)
        .bind(row.updated_at)
        .bind(row.expires_at)
        .bind(row.version)
        .bind(row.idempotency_key)
        .bind(row.allow_fallback)
        .bind(row.channels_tried)
        .bind(row.fallback_reason)
        .bind(row.delivery_status)
        .bind(row.trace_parent)
        .bind(row.risk)
}

/// The columns of `delivery_reports` the store writes, in the order of
/// [`crate::sql::INSERT_REPORT`]'s parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReportRow {
    pub dedupe_key: String,
    pub provider_sid: Option<String>,
    pub message_sid: Option<String>,
    pub channel: Option<String>,
    pub status: String,
    pub error_code: Option<i64>,
    pub occurred_at: i64,
    pub received_at: i64,
    /// The outbox message recorded with the report.
    pub message_id: String,
}

impl ReportRow {
    /// The row of `report`, received at `received_at` and announced by the outbox message
    /// `message_id`.
    pub(crate) fn new(
        report: &DeliveryReport,
        received_at: DateTime<Utc>,
        message_id: MessageId,
    ) -> Self {
        ReportRow {
            dedupe_key: report.dedupe_key.clone(),
            provider_sid: report.provider_sid.clone(),
            message_sid: report.message_sid.clone(),
            channel: report.channel.map(|c| c.as_str().to_owned()),
            status: report.status.as_str().to_owned(),
            error_code: report.error_code.map(i64::from),
            occurred_at: to_millis(report.occurred_at),
            received_at: to_millis(received_at),
            message_id: message_id.to_string(),
        }
    }
}

/// Binds every column of `row` as `$1` to `$9` of [`crate::sql::INSERT_REPORT`].
pub(crate) fn bind_report<'q, DB>(
    query: Query<'q, DB, <DB as Database>::Arguments>,
    row: ReportRow,
) -> Query<'q, DB, <DB as Database>::Arguments>
where
    DB: Database,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> Option<String>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
{
    query
        .bind(row.dedupe_key)
        .bind(row.provider_sid)
        .bind(row.message_sid)
        .bind(row.channel)
        .bind(row.status)
        .bind(row.error_code)
        .bind(row.occurred_at)
        .bind(row.received_at)
        .bind(row.message_id)
}

/// An envelope as the outbox stores it, in the order of [`crate::sql::ENQUEUE`]'s first
/// parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvelopeRow {
    pub message_id: String,
    pub kind: String,
    pub version: i64,
    pub occurred_at: i64,
    /// A JSON object of strings.
    pub headers: String,
    pub payload: Vec<u8>,
}

impl TryFrom<&Envelope> for EnvelopeRow {
    type Error = StoreError;

    fn try_from(envelope: &Envelope) -> Result<Self, StoreError> {
        // A map of strings always serializes; should it ever fail, nothing is stored and
        // the caller fails closed as on any store failure.
        let headers = serde_json::to_string(&envelope.headers).map_err(|e| {
            StoreError::Unavailable(format!(
                "the headers of message {} do not encode as JSON: {e}",
                envelope.message_id
            ))
        })?;
        Ok(EnvelopeRow {
            message_id: envelope.message_id.to_string(),
            kind: envelope.kind.as_str().to_owned(),
            version: i64::from(envelope.version),
            occurred_at: to_millis(envelope.occurred_at),
            headers,
            payload: envelope.payload.clone(),
        })
    }
}

/// Binds the columns of `row` as `$1` to `$6` of [`crate::sql::ENQUEUE`].
pub(crate) fn bind_envelope<'q, DB>(
    query: Query<'q, DB, <DB as Database>::Arguments>,
    row: EnvelopeRow,
) -> Query<'q, DB, <DB as Database>::Arguments>
where
    DB: Database,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> Vec<u8>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    query
        .bind(row.message_id)
        .bind(row.kind)
        .bind(row.version)
        .bind(row.occurred_at)
        .bind(row.headers)
        .bind(row.payload)
}

/// The columns of `outbox` a claim returns, in the order of [`crate::sql::outbox_columns!`].
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct OutboxRow {
    pub id: i64,
    pub message_id: String,
    pub kind: String,
    pub version: i64,
    pub occurred_at: i64,
    pub headers: String,
    pub payload: Vec<u8>,
    pub attempts: i64,
    /// When it was queued: claims return their batch oldest first.
    pub created_at: i64,
}

impl TryFrom<OutboxRow> for OutboxMessage {
    type Error = CorruptRow;

    fn try_from(row: OutboxRow) -> Result<Self, CorruptRow> {
        let bad = |column: &'static str, problem: String| CorruptRow {
            what: "outbox message",
            id: row.id.to_string(),
            column,
            problem,
        };
        let message_id =
            MessageId::from_str(&row.message_id).map_err(|e| bad("message_id", e.to_string()))?;
        let kind = EventKind::parse(&row.kind).map_err(|e| bad("kind", e.to_string()))?;
        let version = to_u32(row.version).map_err(|p| bad("version", p))?;
        let occurred_at = from_millis(row.occurred_at).map_err(|p| bad("occurred_at", p))?;
        let headers: BTreeMap<String, String> = serde_json::from_str(&row.headers)
            .map_err(|e| bad("headers", format!("not a JSON object of strings: {e}")))?;
        let attempts = to_u32(row.attempts).map_err(|p| bad("attempts", p))?;
        Ok(OutboxMessage {
            id: row.id,
            envelope: Envelope {
                message_id,
                kind,
                version,
                occurred_at,
                headers,
                payload: row.payload,
            },
            attempts,
        })
    }
}

/// A row of [`crate::repo::Dialect::READ_SIGNALS`]: the sums of a counter query (`i`,
/// `attempts`, `approved`) or a block (the columns of [`BlockRow`]), the other columns NULL.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct SignalRow {
    pub i: Option<i64>,
    pub attempts: Option<i64>,
    pub approved: Option<i64>,
    pub kind: Option<String>,
    pub value: Option<String>,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub source: Option<String>,
    pub shadow: Option<bool>,
    pub created_at: Option<i64>,
    pub expires_at: Option<i64>,
}

/// A signal row, told apart.
pub(crate) enum Signal {
    Counts(CountsRow),
    Block(BlockRow),
    /// The number of the replica's last write of counters.
    Flushed(i64),
}

impl TryFrom<SignalRow> for Signal {
    type Error = CorruptRow;

    fn try_from(row: SignalRow) -> Result<Self, CorruptRow> {
        let missing = |column: &'static str| CorruptRow {
            what: "signal row",
            id: row.i.map(|i| i.to_string()).unwrap_or_default(),
            column,
            problem: "is NULL".to_owned(),
        };
        if row.i == Some(-1) {
            return Ok(Signal::Flushed(
                row.attempts.ok_or_else(|| missing("attempts"))?,
            ));
        }
        if let Some(i) = row.i {
            return Ok(Signal::Counts(CountsRow {
                i,
                attempts: row.attempts.ok_or_else(|| missing("attempts"))?,
                approved: row.approved.ok_or_else(|| missing("approved"))?,
            }));
        }
        Ok(Signal::Block(BlockRow {
            kind: row.kind.ok_or_else(|| missing("kind"))?,
            value: row.value.ok_or_else(|| missing("value"))?,
            reason: row.reason.ok_or_else(|| missing("reason"))?,
            detail: row.detail.ok_or_else(|| missing("detail"))?,
            source: row.source.ok_or_else(|| missing("source"))?,
            shadow: row.shadow.ok_or_else(|| missing("shadow"))?,
            created_at: row.created_at.ok_or_else(|| missing("created_at"))?,
            expires_at: row.expires_at.ok_or_else(|| missing("expires_at"))?,
        }))
    }
}

/// The columns of `risk_blocks` that make a [`Block`], in the order of
/// [`crate::sql::block_columns!`].
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct BlockRow {
    pub kind: String,
    pub value: String,
    pub reason: String,
    pub detail: String,
    pub source: String,
    pub shadow: bool,
    pub created_at: i64,
    pub expires_at: i64,
}

impl From<&Block> for BlockRow {
    fn from(block: &Block) -> Self {
        BlockRow {
            kind: block.target.kind.as_str().to_owned(),
            value: block.target.value.clone(),
            reason: block.reason.clone(),
            detail: block.detail.clone(),
            source: block.source.as_str().to_owned(),
            shadow: block.shadow,
            created_at: to_millis(block.created_at),
            expires_at: to_millis(block.expires_at),
        }
    }
}

impl TryFrom<BlockRow> for Block {
    type Error = CorruptRow;

    fn try_from(row: BlockRow) -> Result<Self, CorruptRow> {
        let bad = |column: &'static str, problem: String| CorruptRow {
            what: "block",
            id: format!("{} {}", row.kind, row.value),
            column,
            problem,
        };
        let kind = BlockKind::parse(&row.kind)
            .ok_or_else(|| bad("kind", format!("unknown kind `{}`", row.kind)))?;
        let source = BlockSource::parse(&row.source)
            .ok_or_else(|| bad("source", format!("unknown source `{}`", row.source)))?;
        let created_at = from_millis(row.created_at).map_err(|p| bad("created_at", p))?;
        let expires_at = from_millis(row.expires_at).map_err(|p| bad("expires_at", p))?;
        Ok(Block {
            target: BlockTarget {
                kind,
                value: row.value,
            },
            reason: row.reason,
            detail: row.detail,
            source,
            shadow: row.shadow,
            created_at,
            expires_at,
        })
    }
}

/// Binds every column of `row` as `$1` to `$8` of [`crate::sql::INSERT_BLOCK`] (and of
/// [`crate::sql::REPLACE_BLOCK`], whose `$1` and `$2` are the same target).
pub(crate) fn bind_block<'q, DB>(
    query: Query<'q, DB, <DB as Database>::Arguments>,
    row: BlockRow,
) -> Query<'q, DB, <DB as Database>::Arguments>
where
    DB: Database,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> bool: Encode<'t, DB> + Type<DB>,
{
    query
        .bind(row.kind)
        .bind(row.value)
        .bind(row.reason)
        .bind(row.detail)
        .bind(row.source)
        .bind(row.shadow)
        .bind(row.created_at)
        .bind(row.expires_at)
}

/// What deciding on a new block needs of the block held on its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct HeldBlock {
    pub expires_at: i64,
    pub shadow: bool,
    pub lifted_at: Option<i64>,
}

/// A key's state after a take: `key, tat, allowed, at` of
/// [`crate::repo::Dialect::TAKE_LIMITS`], `at` being the time the take was decided at (the
/// later of its own and the key's latest take's).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct TakenRow {
    pub key: String,
    pub tat: i64,
    pub allowed: bool,
    pub at: i64,
}

/// What a write guarded by limits returns ([`crate::repo::Dialect::INSERT_LIMITED`] and
/// `UPDATE_LIMITED`): the state of each key after the take, as four arrays in one order,
/// and whether the row was written.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct GuardedRow {
    pub taken_keys: Vec<String>,
    pub taken_tats: Vec<i64>,
    pub taken_allowed: Vec<bool>,
    pub taken_at: Vec<i64>,
    pub written: bool,
}

impl GuardedRow {
    /// The keys' states as the rows of a take.
    pub(crate) fn taken(self) -> Result<Vec<TakenRow>, StoreError> {
        if self.taken_tats.len() != self.taken_keys.len()
            || self.taken_allowed.len() != self.taken_keys.len()
            || self.taken_at.len() != self.taken_keys.len()
        {
            return Err(StoreError::Corrupt(
                "a guarded write returned arrays of different lengths".to_owned(),
            ));
        }
        Ok(self
            .taken_keys
            .into_iter()
            .zip(self.taken_tats)
            .zip(self.taken_allowed)
            .zip(self.taken_at)
            .map(|(((key, tat), allowed), at)| TakenRow {
                key,
                tat,
                allowed,
                at,
            })
            .collect())
    }
}

/// A key's stored state: `key, tat, latest_ms` of [`crate::sql::read_limits!`], neither
/// for a key not stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct LimitRow {
    pub key: String,
    pub tat: Option<i64>,
    pub latest_ms: Option<i64>,
}

/// One query's sums: `i, attempts, approved` of [`crate::sql::read_counts!`].
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct CountsRow {
    pub i: i64,
    pub attempts: i64,
    pub approved: i64,
}

impl TryFrom<&CountsRow> for Counts {
    type Error = CorruptRow;

    fn try_from(row: &CountsRow) -> Result<Self, CorruptRow> {
        let count = |column: &'static str, value: i64| {
            u64::try_from(value).map_err(|_| CorruptRow {
                what: "counter sum",
                id: row.i.to_string(),
                column,
                problem: format!("{value} is negative"),
            })
        };
        Ok(Counts {
            attempts: count("attempts", row.attempts)?,
            approved: count("approved", row.approved)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::fixtures;

    fn good_row() -> VerificationRow {
        VerificationRow::from(&fixtures::full(
            1,
            "login",
            Some("order-42"),
            &fixtures::phone(),
        ))
    }

    /// Breaks one column of a good row and expects the conversion to name that column.
    fn check(column: &str, corrupt: impl FnOnce(&mut VerificationRow)) {
        let mut row = good_row();
        corrupt(&mut row);
        let error = Verification::try_from(row).expect_err("corrupt row must not convert");
        assert_eq!(error.column, column, "{error}");
    }

    #[test]
    fn rows_round_trip() {
        let v = fixtures::full(1, "login", Some("order-42"), &fixtures::phone());
        assert_eq!(Verification::try_from(VerificationRow::from(&v)), Ok(v));
        let bare = fixtures::bare(2, "signup", &fixtures::email());
        assert_eq!(
            Verification::try_from(VerificationRow::from(&bare)),
            Ok(bare)
        );
    }

    #[test]
    fn corrupt_columns_are_named_not_panicked_on() {
        check("id", |r| r.id = "VE123".into());
        check("purpose", |r| r.purpose = "Login".into());
        check("channel", |r| r.channel = "pigeon".into());
        check("status", |r| r.status = "lost".into());
        check("destination_hash", |r| r.destination_hash = String::new());
        check("destination_hash", |r| {
            r.destination_hash = "not hex".into()
        });
        check("idempotency_key", |r| {
            r.idempotency_key = Some("a b".into())
        });
        check("sends", |r| r.sends = -1);
        check("checks", |r| r.checks = i64::from(u32::MAX) + 1);
        check("max_sends", |r| r.max_sends = -5);
        check("max_checks", |r| r.max_checks = i64::MIN);
        check("failure_code", |r| r.failure_code = Some(-60200));
        check("created_at", |r| r.created_at = i64::MAX);
        check("updated_at", |r| r.updated_at = i64::MIN);
        check("expires_at", |r| r.expires_at = i64::MAX);
        check("version", |r| r.version = -1);
        check("channels_tried", |r| r.channels_tried = "sms,pigeon".into());
        check("channels_tried", |r| r.channels_tried = "SMS".into());
        check("channels_tried", |r| r.channels_tried = "sms,,call".into());
        check("fallback_reason", |r| {
            r.fallback_reason = Some("because".into())
        });
        check("delivery_status", |r| {
            r.delivery_status = Some("Delivered".into())
        });
        for bad in [
            "",
            "not json",
            "[]",
            "null",
            r#"{"decision":"block","score":1,"shadow":false}"#,
            r#"{"decision":"deny","score":1,"shadow":false,"reasons":[]}"#,
            r#"{"decision":"Block","score":1,"shadow":false,"reasons":[]}"#,
            r#"{"decision":"block","score":-1,"shadow":false,"reasons":[]}"#,
            r#"{"decision":"block","score":4294967296,"shadow":false,"reasons":[]}"#,
            r#"{"decision":"block","score":1.5,"shadow":false,"reasons":[]}"#,
            r#"{"decision":"block","score":1,"shadow":0,"reasons":[]}"#,
            r#"{"decision":"block","score":1,"shadow":false,"reasons":{}}"#,
            r#"{"decision":"block","score":1,"shadow":false,"reasons":[{"code":"A","message":"m"}]}"#,
            r#"{"decision":"block","score":1,"shadow":false,"reasons":[{"code":1,"message":"m","weight":1}]}"#,
            r#"{"decision":"block","score":1,"shadow":false,"reasons":[],"network":24}"#,
        ] {
            check("risk", |r| r.risk = Some(bad.into()));
        }
    }

    #[test]
    fn risk_assessments_have_a_stable_json_text() {
        let assessment = RiskAssessment {
            decision: RiskDecision::Block,
            score: 90,
            reasons: vec![RiskReason {
                code: "PREFIX_LOW_CONVERSION".into(),
                message: "2% of starts approved".into(),
                weight: 90,
            }],
            shadow: false,
            network: None,
        };
        let text = encode_risk(&assessment);
        assert_eq!(
            serde_json::from_str::<Value>(&text).expect("JSON"),
            json!({
                "decision": "block",
                "score": 90,
                "shadow": false,
                "reasons": [
                    {"code": "PREFIX_LOW_CONVERSION", "message": "2% of starts approved", "weight": 90}
                ],
            })
        );
        assert_eq!(decode_risk(&text), Ok(assessment.clone()));
        let from_a_network = RiskAssessment {
            network: Some("203.0.113.0/24".into()),
            ..assessment
        };
        let text = encode_risk(&from_a_network);
        assert_eq!(
            serde_json::from_str::<Value>(&text).expect("JSON")["network"],
            json!("203.0.113.0/24")
        );
        assert_eq!(decode_risk(&text), Ok(from_a_network));
        // Every decision and the fixture's escapes come back; fields a later release adds
        // are ignored.
        for decision in [
            RiskDecision::Allow,
            RiskDecision::StepUp,
            RiskDecision::Block,
        ] {
            let risk = fixtures::risk(decision, true);
            assert_eq!(decode_risk(&encode_risk(&risk)), Ok(risk));
        }
        let newer = r#"{"decision":"allow","score":0,"shadow":true,"reasons":[],"model":"v2"}"#;
        assert_eq!(
            decode_risk(newer),
            Ok(RiskAssessment {
                decision: RiskDecision::Allow,
                score: 0,
                reasons: vec![],
                shadow: true,
                network: None,
            })
        );
    }

    fn good_block_row() -> BlockRow {
        BlockRow::from(&Block {
            target: BlockTarget {
                kind: BlockKind::Prefix,
                value: "+4479111".into(),
            },
            reason: "PREFIX_LOW_CONVERSION".into(),
            detail: "2% of starts approved".into(),
            source: BlockSource::Scoring,
            shadow: true,
            created_at: crate::fixtures::at(0),
            expires_at: crate::fixtures::at(3600),
        })
    }

    #[test]
    fn block_rows_round_trip_and_name_corrupt_columns() {
        let row = good_block_row();
        let block = Block::try_from(row.clone()).expect("converts");
        assert_eq!(BlockRow::from(&block), row);
        type Break = fn(&mut BlockRow);
        let cases: [(&str, Break); 4] = [
            ("kind", |r| r.kind = "Prefix".into()),
            ("source", |r| r.source = "robot".into()),
            ("created_at", |r| r.created_at = i64::MAX),
            ("expires_at", |r| r.expires_at = i64::MIN),
        ];
        for (column, corrupt) in cases {
            let mut row = good_block_row();
            corrupt(&mut row);
            let error = Block::try_from(row).expect_err("corrupt row must not convert");
            assert_eq!(error.column, column, "{error}");
        }
    }

    #[test]
    fn channel_lists_are_comma_separated_names() {
        let cases: [(&[Channel], &str); 3] = [
            (&[], ""),
            (&[Channel::Sms], "sms"),
            (&[Channel::Sms, Channel::Call, Channel::Sms], "sms,call,sms"),
        ];
        for (channels, text) in cases {
            assert_eq!(encode_channels(channels), text);
            assert_eq!(decode_channels(text).as_deref(), Ok(channels));
        }
        for bad in [",", "sms,", ",sms", " sms", "sms call", "Sms"] {
            assert!(decode_channels(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fallback_reasons_have_a_stable_text() {
        let failed = |status, error_code| FallbackReason::DeliveryFailed { status, error_code };
        let cases = [
            (FallbackReason::NoDeliveryReport, "no_delivery_report"),
            (
                failed(DeliveryStatus::Failed, None),
                "delivery_failed:failed",
            ),
            (
                failed(DeliveryStatus::Undelivered, Some(30003)),
                "delivery_failed:undelivered:30003",
            ),
            (
                failed(DeliveryStatus::Undelivered, Some(u32::MAX)),
                "delivery_failed:undelivered:4294967295",
            ),
            (
                failed(DeliveryStatus::Failed, Some(0)),
                "delivery_failed:failed:0",
            ),
        ];
        for (reason, text) in cases {
            assert_eq!(encode_fallback_reason(reason), text);
            assert_eq!(decode_fallback_reason(text), Ok(reason));
        }
        for bad in [
            "",
            "no_delivery_report:1",
            "delivery_failed",
            "delivery_failed:",
            "delivery_failed:lost",
            "delivery_failed:FAILED",
            "delivery_failed:failed:",
            "delivery_failed:failed:+1",
            "delivery_failed:failed:-1",
            "delivery_failed:failed:4294967296",
            "delivery_failed:failed:1:2",
            "DELIVERY_FAILED:failed",
        ] {
            assert!(decode_fallback_reason(bad).is_err(), "{bad:?}");
        }
    }

    fn good_outbox_row() -> OutboxRow {
        let envelope = fixtures::envelope(1);
        let row = EnvelopeRow::try_from(&envelope).expect("encodes");
        OutboxRow {
            id: 7,
            message_id: row.message_id,
            kind: row.kind,
            version: row.version,
            occurred_at: row.occurred_at,
            headers: row.headers,
            payload: row.payload,
            attempts: 2,
            created_at: 0,
        }
    }

    #[test]
    fn outbox_rows_round_trip() {
        let message = OutboxMessage::try_from(good_outbox_row()).expect("converts");
        assert_eq!(
            message,
            OutboxMessage {
                id: 7,
                envelope: fixtures::envelope(1),
                attempts: 2,
            }
        );
        assert_eq!(
            good_outbox_row().headers,
            r#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#
        );
    }

    #[test]
    fn corrupt_outbox_columns_are_named() {
        type Break = fn(&mut OutboxRow);
        let cases: [(&str, Break); 8] = [
            ("message_id", |r| r.message_id = "msg-1".into()),
            ("kind", |r| r.kind = "Delivery.Failed".into()),
            ("version", |r| r.version = -1),
            ("occurred_at", |r| r.occurred_at = i64::MAX),
            ("headers", |r| r.headers = "[]".into()),
            ("headers", |r| r.headers = r#"{"a":1}"#.into()),
            ("headers", |r| r.headers = String::new()),
            ("attempts", |r| r.attempts = i64::from(u32::MAX) + 1),
        ];
        for (column, corrupt) in cases {
            let mut row = good_outbox_row();
            corrupt(&mut row);
            let error = OutboxMessage::try_from(row).expect_err("corrupt row must not convert");
            assert_eq!(error.column, column, "{error}");
            assert!(
                error.to_string().starts_with("outbox message row `7`"),
                "{error}"
            );
        }
    }

    #[test]
    fn corrupt_rows_become_store_errors_naming_the_row() {
        let mut row = good_row();
        row.status = "lost".into();
        let error = StoreError::from(Verification::try_from(row).expect_err("corrupt"));
        let StoreError::Corrupt(message) = error else {
            panic!("expected Corrupt, got {error:?}");
        };
        assert!(
            message.contains("ver_") && message.contains("status"),
            "{message}"
        );
    }

    #[test]
    fn timestamps_are_stored_to_the_millisecond() {
        let at = Utc
            .timestamp_opt(1_700_000_000, 123_456_789)
            .single()
            .expect("valid time");
        assert_eq!(to_millis(at), 1_700_000_000_123);
        let mut v = fixtures::bare(3, "login", &fixtures::phone());
        v.record_mut().created_at = at;
        let back = Verification::try_from(VerificationRow::from(&v)).expect("converts");
        assert_eq!(back.created_at().timestamp_subsec_nanos(), 123_000_000);
    }
}
