//! The rows of `crate::row` read from and bound to rusqlite statements: the columns in the
//! order of the statements of `crate::sql`, the values exactly as the PostgreSQL store
//! binds them (integers, text, blobs; booleans as 0 and 1), so both stores keep one
//! representation.

use rusqlite::Row;
use rusqlite::types::ToSql;

use crate::row::{
    BlockRow, EnvelopeRow, HeldBlock, LimitRow, OutboxRow, ReportRow, TakenRow, VerificationRow,
};

/// A row of `crate::sql::columns!`.
pub(crate) fn verification(row: &Row<'_>) -> rusqlite::Result<VerificationRow> {
    Ok(VerificationRow {
        id: row.get(0)?,
        purpose: row.get(1)?,
        channel: row.get(2)?,
        status: row.get(3)?,
        provider_sid: row.get(4)?,
        destination_ciphertext: row.get(5)?,
        destination_key_id: row.get(6)?,
        destination_hash: row.get(7)?,
        to_masked: row.get(8)?,
        identity: row.get(9)?,
        idempotency_key: row.get(10)?,
        sends: row.get(11)?,
        checks: row.get(12)?,
        max_sends: row.get(13)?,
        max_checks: row.get(14)?,
        failure_code: row.get(15)?,
        created_at: row.get(16)?,
        updated_at: row.get(17)?,
        expires_at: row.get(18)?,
        version: row.get(19)?,
        allow_fallback: row.get(20)?,
        channels_tried: row.get(21)?,
        fallback_reason: row.get(22)?,
        delivery_status: row.get(23)?,
        trace_parent: row.get(24)?,
        risk: row.get(25)?,
        owner: row.get(26)?,
    })
}

/// `$1` to `$27` of [`crate::sql::INSERT`], as [`crate::row::bind_insert`] binds them.
pub(crate) fn insert_args(row: &VerificationRow) -> [&dyn ToSql; 27] {
    [
        &row.id,
        &row.purpose,
        &row.channel,
        &row.status,
        &row.provider_sid,
        &row.destination_ciphertext,
        &row.destination_key_id,
        &row.destination_hash,
        &row.to_masked,
        &row.identity,
        &row.idempotency_key,
        &row.sends,
        &row.checks,
        &row.max_sends,
        &row.max_checks,
        &row.failure_code,
        &row.created_at,
        &row.updated_at,
        &row.expires_at,
        &row.version,
        &row.allow_fallback,
        &row.channels_tried,
        &row.fallback_reason,
        &row.delivery_status,
        &row.trace_parent,
        &row.risk,
        &row.owner,
    ]
}

/// `$1` to `$25` of [`crate::sql::UPDATE`], as [`crate::row::bind_update`] binds them.
pub(crate) fn update_args<'a>(
    row: &'a VerificationRow,
    expected_version: &'a i64,
) -> [&'a dyn ToSql; 25] {
    [
        &row.id,
        expected_version,
        &row.channel,
        &row.status,
        &row.provider_sid,
        &row.destination_ciphertext,
        &row.destination_key_id,
        &row.destination_hash,
        &row.to_masked,
        &row.identity,
        &row.sends,
        &row.checks,
        &row.max_sends,
        &row.max_checks,
        &row.failure_code,
        &row.updated_at,
        &row.expires_at,
        &row.version,
        &row.idempotency_key,
        &row.allow_fallback,
        &row.channels_tried,
        &row.fallback_reason,
        &row.delivery_status,
        &row.trace_parent,
        &row.risk,
    ]
}

/// The columns [`crate::sql::UPDATE`] writes, by name, with the values of `row`: what a
/// transition may change.
pub(crate) fn mutable_columns(row: &VerificationRow) -> [(&'static str, &dyn ToSql); 23] {
    [
        ("channel", &row.channel),
        ("status", &row.status),
        ("provider_sid", &row.provider_sid),
        ("destination_ciphertext", &row.destination_ciphertext),
        ("destination_key_id", &row.destination_key_id),
        ("destination_hash", &row.destination_hash),
        ("to_masked", &row.to_masked),
        ("identity", &row.identity),
        ("sends", &row.sends),
        ("checks", &row.checks),
        ("max_sends", &row.max_sends),
        ("max_checks", &row.max_checks),
        ("failure_code", &row.failure_code),
        ("updated_at", &row.updated_at),
        ("expires_at", &row.expires_at),
        ("version", &row.version),
        ("idempotency_key", &row.idempotency_key),
        ("allow_fallback", &row.allow_fallback),
        ("channels_tried", &row.channels_tried),
        ("fallback_reason", &row.fallback_reason),
        ("delivery_status", &row.delivery_status),
        ("trace_parent", &row.trace_parent),
        ("risk", &row.risk),
    ]
}

/// `$1` to `$9` of [`crate::sql::INSERT_REPORT`].
pub(crate) fn report_args(row: &ReportRow) -> [&dyn ToSql; 9] {
    [
        &row.dedupe_key,
        &row.provider_sid,
        &row.message_sid,
        &row.channel,
        &row.status,
        &row.error_code,
        &row.occurred_at,
        &row.received_at,
        &row.message_id,
    ]
}

/// `$1` to `$7` of [`crate::sql::ENQUEUE`]: the envelope, then now.
pub(crate) fn envelope_args<'a>(row: &'a EnvelopeRow, now: &'a i64) -> [&'a dyn ToSql; 7] {
    [
        &row.message_id,
        &row.kind,
        &row.version,
        &row.occurred_at,
        &row.headers,
        &row.payload,
        now,
    ]
}

/// A row of `crate::sql::outbox_columns!`.
pub(crate) fn outbox(row: &Row<'_>) -> rusqlite::Result<OutboxRow> {
    Ok(OutboxRow {
        id: row.get(0)?,
        message_id: row.get(1)?,
        kind: row.get(2)?,
        version: row.get(3)?,
        occurred_at: row.get(4)?,
        headers: row.get(5)?,
        payload: row.get(6)?,
        attempts: row.get(7)?,
        created_at: row.get(8)?,
    })
}

/// A row of `crate::sql::block_columns!`.
pub(crate) fn block(row: &Row<'_>) -> rusqlite::Result<BlockRow> {
    Ok(BlockRow {
        kind: row.get(0)?,
        value: row.get(1)?,
        reason: row.get(2)?,
        detail: row.get(3)?,
        source: row.get(4)?,
        shadow: row.get(5)?,
        created_at: row.get(6)?,
        expires_at: row.get(7)?,
    })
}

/// `$1` to `$8` of [`crate::sql::INSERT_BLOCK`] and [`crate::sql::REPLACE_BLOCK`].
pub(crate) fn block_args(row: &BlockRow) -> [&dyn ToSql; 8] {
    [
        &row.kind,
        &row.value,
        &row.reason,
        &row.detail,
        &row.source,
        &row.shadow,
        &row.created_at,
        &row.expires_at,
    ]
}

/// A row of `crate::sql::block_state!`.
pub(crate) fn held_block(row: &Row<'_>) -> rusqlite::Result<HeldBlock> {
    Ok(HeldBlock {
        expires_at: row.get(0)?,
        shadow: row.get(1)?,
        lifted_at: row.get(2)?,
    })
}

/// A row of the take statement (`TAKE_LIMIT`).
pub(crate) fn taken(row: &Row<'_>) -> rusqlite::Result<TakenRow> {
    Ok(TakenRow {
        key: row.get(0)?,
        tat: row.get(1)?,
        allowed: row.get(2)?,
        at: row.get(3)?,
    })
}

/// A row of `crate::sql::read_limits!`.
pub(crate) fn limit(row: &Row<'_>) -> rusqlite::Result<LimitRow> {
    Ok(LimitRow {
        key: row.get(0)?,
        tat: row.get(1)?,
        latest_ms: row.get(2)?,
    })
}
