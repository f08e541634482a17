//! The SQL text of every statement shared by all backends (the few that differ per database
//! are [`crate::repo::Dialect`]'s, in the backend modules).
//!
//! Placeholders are `$n`: PostgreSQL requires that form and SQLite accepts it too (a `$n`
//! used twice binds the same value in both), so one statement serves both. Only portable
//! SQL belongs here; a statement that must differ per database lives in its backend module.
//!
//! Writes whose outcome matters end in `RETURNING`, which both databases support, so whether
//! a row was written is read from the rows returned rather than from a driver-specific
//! "rows affected" count; that keeps the code running them generic over the database.

/// The columns of `verifications`, in the order of [`crate::row::VerificationRow`] and of
/// the parameters of [`INSERT`].
macro_rules! columns {
    () => {
        "id, purpose, channel, status, provider_sid, destination_ciphertext, \
         destination_key_id, destination_hash, to_masked, identity, idempotency_key, sends, \
         checks, max_sends, max_checks, failure_code, created_at, updated_at, expires_at, version, \
         allow_fallback, channels_tried, fallback_reason, delivery_status, trace_parent"
    };
}

/// Binds every column, `$1` to `$25`, in the order of [`columns!`]; returns the id when the
/// row was written and nothing when it collided with a row holding the same id, the same
/// purpose and idempotency key, or (for a pending row) the pending slot of its purpose and
/// destination.
///
/// `DO NOTHING` rather than a unique-violation error because on PostgreSQL a failed
/// statement aborts the surrounding transaction, and the insert must go on to read the row
/// it collided with in that same transaction.
pub(crate) const INSERT: &str = concat!(
    "INSERT INTO verifications (",
    columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, ",
    "$11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25)",
    " ON CONFLICT DO NOTHING RETURNING id"
);

/// `$1` is the id.
pub(crate) const GET: &str = concat!("SELECT ", columns!(), " FROM verifications WHERE id = $1");

/// `$1` is the provider's id: the newest verification holding it, read backwards along the
/// partial index on `(provider_sid, created_at, id)`.
pub(crate) const FIND_BY_PROVIDER_SID: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM verifications WHERE provider_sid = $1",
    " ORDER BY created_at DESC, id DESC LIMIT 1"
);

/// `$1` is the id. Tells a collision on the primary key from the other ones.
pub(crate) const EXISTS: &str = "SELECT id FROM verifications WHERE id = $1";

/// `$1` is the purpose, `$2` the idempotency key. The equality on the key lets both
/// databases use the partial unique index (it implies `idempotency_key IS NOT NULL`).
pub(crate) const FIND_BY_IDEMPOTENCY_KEY: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM verifications WHERE purpose = $1 AND idempotency_key = $2"
);

/// `$1` is the purpose, `$2` the destination hash: the one pending verification of that
/// purpose and destination, expired or not (the unique partial index allows at most one).
///
/// `status = 'pending'` is a literal, not a parameter, because a partial index is only used
/// when the query's own text implies the index's condition.
pub(crate) const PENDING_SLOT: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM verifications",
    " WHERE purpose = $1 AND destination_hash = $2 AND status = 'pending'"
);

/// [`PENDING_SLOT`] when it has not expired at `$3` (now, in milliseconds).
pub(crate) const FIND_PENDING: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM verifications",
    " WHERE purpose = $1 AND destination_hash = $2 AND status = 'pending' AND expires_at > $3"
);

/// `$1` is the current key id, `$2` the limit.
///
/// `<>` cannot be answered by an index range, so the rows sealed with other keys are read
/// as the two ranges below and above the current key, each in the order of the index on
/// `(destination_key_id, created_at, id)` and cut at the limit: every call reads at most
/// twice the limit from the index however many rows the table holds, and rows already
/// re-sealed are never scanned again. The outer `ORDER BY` puts the batch oldest first.
/// The subqueries are named because PostgreSQL before 16 requires it.
pub(crate) const SEALED_WITH_OTHER_KEY: &str = concat!(
    "SELECT * FROM (SELECT ",
    columns!(),
    " FROM verifications WHERE destination_key_id < $1",
    " ORDER BY destination_key_id, created_at, id LIMIT $2) AS below",
    " UNION ALL ",
    "SELECT * FROM (SELECT ",
    columns!(),
    " FROM verifications WHERE destination_key_id > $1",
    " ORDER BY destination_key_id, created_at, id LIMIT $2) AS above",
    " ORDER BY created_at, id LIMIT $2"
);

/// `$1` is the id and `$2` the expected version; `$3` to `$24` are the columns that may
/// change over a verification's life, in the order of [`crate::row::bind_update`]. Returns
/// the id when the row was written.
///
/// The id, purpose and creation time are left alone: they are what the verification is,
/// and no transition changes them. The idempotency key is written: the service releases a
/// key past its window (and after a retryable send failure) by clearing it.
pub(crate) const UPDATE: &str = "UPDATE verifications SET \
     channel = $3, status = $4, provider_sid = $5, destination_ciphertext = $6, \
     destination_key_id = $7, destination_hash = $8, to_masked = $9, identity = $10, \
     sends = $11, checks = $12, max_sends = $13, max_checks = $14, failure_code = $15, \
     updated_at = $16, expires_at = $17, version = $18, idempotency_key = $19, \
     allow_fallback = $20, channels_tried = $21, fallback_reason = $22, delivery_status = $23, \
     trace_parent = $24 \
     WHERE id = $1 AND version = $2 \
     RETURNING id";

/// `$1` is the id. Tells a lost optimistic update (the row exists with another version)
/// from an update of a row that was never there.
pub(crate) const VERSION_OF: &str = "SELECT version FROM verifications WHERE id = $1";

/// Binds the columns of a delivery report, `$1` to `$9` in the order of
/// [`crate::row::ReportRow`]; returns the id when the report was new and nothing when its
/// dedupe key is stored already (a concurrent inserter of the same key is waited for).
pub(crate) const INSERT_REPORT: &str = "INSERT INTO delivery_reports \
     (dedupe_key, provider_sid, message_sid, channel, status, error_code, occurred_at, \
     received_at, message_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (dedupe_key) DO NOTHING RETURNING id";

/// The columns of `outbox` a claim reads, in the order of [`crate::row::OutboxRow`]; only
/// the `outbox` table may be in scope where it is used.
macro_rules! outbox_columns {
    () => {
        "id, message_id, kind, version, occurred_at, headers, payload, attempts, created_at"
    };
}
pub(crate) use outbox_columns;

/// Queues an envelope: `$1` to `$6` are its message id, kind, version, occurrence time,
/// headers and payload, `$7` is now (when it was queued and when it is first due). Returns
/// the id when the message was queued and nothing when its message id is queued already.
pub(crate) const ENQUEUE: &str = "INSERT INTO outbox \
     (message_id, kind, version, occurred_at, headers, payload, created_at, next_attempt_at, \
     attempts) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $7, 0) \
     ON CONFLICT (message_id) DO NOTHING RETURNING id";

/// `$1` is the id, `$2` when it is due again, `$3` the error. Published rows are left alone.
pub(crate) const RETRY_LATER: &str = "UPDATE outbox \
     SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3 \
     WHERE id = $1 AND published_at IS NULL";

/// Deletes up to `$2` rows published before `$1`, oldest first, along the partial index on
/// `published_at`; returns their ids. Run until a batch comes back short, so no statement
/// holds locks on an unbounded number of rows.
pub(crate) const PURGE_PUBLISHED: &str = "DELETE FROM outbox WHERE id IN (\
     SELECT id FROM outbox WHERE published_at IS NOT NULL AND published_at < $1 \
     ORDER BY published_at LIMIT $2) \
     RETURNING id";

/// `$1` is the consumer, `$2` the message id. Gives back a claim in progress; a handled
/// message stays handled.
pub(crate) const RELEASE_MESSAGE: &str = "DELETE FROM processed_messages \
     WHERE consumer = $1 AND message_id = $2 AND state = 'in_progress'";

/// `$1` is the consumer, `$2` the message id: its state after a claim did not take it.
pub(crate) const MESSAGE_STATE: &str =
    "SELECT state FROM processed_messages WHERE consumer = $1 AND message_id = $2";
