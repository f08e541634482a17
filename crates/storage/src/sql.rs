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
         allow_fallback, channels_tried, fallback_reason, delivery_status, trace_parent, risk, owner"
    };
}
pub(crate) use columns;

/// Binds every column, `$1` to `$27`, in the order of [`columns!`]; returns the id when the
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
    "$11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27)",
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

/// `$1` is the purpose, `$2` the owner, `$3` the idempotency key. The equality on the key
/// lets both databases use the partial unique index (it implies
/// `idempotency_key IS NOT NULL`).
pub(crate) const FIND_BY_IDEMPOTENCY_KEY: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM verifications WHERE purpose = $1 AND owner = $2 AND idempotency_key = $3"
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

/// `$1` is the bound on `created_at` (milliseconds), `$2` the limit: pending verifications
/// without a provider id created before it, oldest first, read in the order of the partial
/// index `verifications_unconfirmed` (migration 0012), which holds only such rows, so a
/// call reads at most `limit` entries however large the table. The literals are in the
/// text for the partial index to apply (see [`PENDING_SLOT`]).
pub(crate) const UNCONFIRMED: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM verifications",
    " WHERE status = 'pending' AND provider_sid IS NULL AND created_at < $1",
    " ORDER BY created_at, id LIMIT $2"
);

/// The assignments of [`UPDATE`]: `$3` to `$25`, the columns that may change over a
/// verification's life, in the order of [`crate::row::bind_update`].
macro_rules! update_set {
    () => {
        "channel = $3, status = $4, provider_sid = $5, destination_ciphertext = $6, \
         destination_key_id = $7, destination_hash = $8, to_masked = $9, identity = $10, \
         sends = $11, checks = $12, max_sends = $13, max_checks = $14, failure_code = $15, \
         updated_at = $16, expires_at = $17, version = $18, idempotency_key = $19, \
         allow_fallback = $20, channels_tried = $21, fallback_reason = $22, \
         delivery_status = $23, trace_parent = $24, risk = $25"
    };
}
pub(crate) use update_set;

/// `$1` is the id and `$2` the expected version; `$3` to `$25` are the columns that may
/// change over a verification's life, in the order of [`crate::row::bind_update`]. Returns
/// the id when the row was written.
///
/// The id, purpose and creation time are left alone: they are what the verification is,
/// and no transition changes them. The idempotency key is written: the service releases a
/// key past its window (and after a retryable send failure) by clearing it.
pub(crate) const UPDATE: &str = concat!(
    "UPDATE verifications SET ",
    update_set!(),
    " WHERE id = $1 AND version = $2 RETURNING id"
);

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

/// `$1` is [`crate::messages::QUARANTINED`]: how many unpublished rows are set aside (dead
/// letters and corrupt rows), along the partial index of unpublished rows by due time.
pub(crate) const COUNT_SET_ASIDE: &str =
    "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL AND next_attempt_at = $1";

/// Deletes up to `$2` rows published before `$1`, oldest first, along the partial index on
/// `published_at`; returns their ids. Run until a batch comes back short, so no statement
/// holds locks on an unbounded number of rows.
/// `$1` the first verification id kept ([`crate::retention::first_id_kept`]), `$2` now in
/// milliseconds, `$3` the batch: deletes the verifications created before the bound that
/// are over (not pending, or pending past their expiry), along the primary key.
pub(crate) const PURGE_VERIFICATIONS: &str = "DELETE FROM verifications WHERE id IN (\
     SELECT id FROM verifications WHERE id < $1 AND (status <> 'pending' OR expires_at < $2) \
     ORDER BY id LIMIT $3) \
     RETURNING id";

/// `$1` the cutoff in milliseconds, `$2` the batch: delivery reports received before it,
/// oldest first (ids grow with arrival).
pub(crate) const PURGE_REPORTS: &str = "DELETE FROM delivery_reports WHERE id IN (\
     SELECT id FROM delivery_reports WHERE received_at < $1 ORDER BY id LIMIT $2) \
     RETURNING id";

/// `$1` the cutoff in milliseconds, `$2` the batch: the consumers' memory of messages they
/// finished handling before it (a redelivery that old is long past any broker's retries).
pub(crate) const PURGE_PROCESSED: &str = "DELETE FROM processed_messages \
     WHERE (consumer, message_id) IN (\
     SELECT consumer, message_id FROM processed_messages \
     WHERE state = 'done' AND completed_at < $1 LIMIT $2) \
     RETURNING message_id";

pub(crate) const PURGE_PUBLISHED: &str = "DELETE FROM outbox WHERE id IN (\
     SELECT id FROM outbox WHERE published_at IS NOT NULL AND published_at < $1 \
     ORDER BY published_at LIMIT $2) \
     RETURNING id";

/// [`crate::repo::Dialect::CLAIM_MESSAGE`], with `$now` the database's clock in
/// milliseconds (each backend's `now_millis!()`).
macro_rules! claim_message {
    ($($now:tt)*) => {
        concat!(
            "INSERT INTO processed_messages (consumer, message_id, state, lease_until, claimed_at)",
            " VALUES ($1, $2, 'in_progress', ",
            $($now)*,
            " + $3, ",
            $($now)*,
            ") ON CONFLICT (consumer, message_id) DO UPDATE",
            " SET lease_until = excluded.lease_until, claimed_at = excluded.claimed_at",
            " WHERE processed_messages.state = 'in_progress'",
            " AND processed_messages.lease_until <= excluded.claimed_at",
            " RETURNING state"
        )
    };
}
pub(crate) use claim_message;

/// [`crate::repo::Dialect::COMPLETE_MESSAGE`], with `$now` as for [`claim_message!`].
macro_rules! complete_message {
    ($($now:tt)*) => {
        concat!(
            "INSERT INTO processed_messages",
            " (consumer, message_id, state, lease_until, claimed_at, completed_at)",
            " VALUES ($1, $2, 'done', NULL, ",
            $($now)*,
            ", ",
            $($now)*,
            ") ON CONFLICT (consumer, message_id) DO UPDATE",
            " SET state = 'done', lease_until = NULL, completed_at = excluded.completed_at",
            " WHERE processed_messages.state <> 'done'"
        )
    };
}
pub(crate) use complete_message;

/// `$1` is the consumer, `$2` the message id. Gives back a claim in progress; a handled
/// message stays handled.
pub(crate) const RELEASE_MESSAGE: &str = "DELETE FROM processed_messages \
     WHERE consumer = $1 AND message_id = $2 AND state = 'in_progress'";

/// `$1` is the consumer, `$2` the message id: its state after a claim did not take it.
pub(crate) const MESSAGE_STATE: &str =
    "SELECT state FROM processed_messages WHERE consumer = $1 AND message_id = $2";

// Abuse protection: the rate limiter's GCRA state, fraud scoring's counters and blocks.
//
// A call that names several keys binds them as one JSON parameter, which each database
// turns into rows its own way (`json_each` on SQLite, `json_to_recordset` on PostgreSQL):
// the statements that read such a parameter are written here once as macros over that
// table expression (`$input`, whose columns each macro names), and each
// [`crate::repo::Dialect`] instantiates them with its own.
//
// PostgreSQL's planner expects 100 rows of such a parameter whatever it holds, and for so
// many would rather hash a whole table than look each one up. Reads are therefore written
// as lookups per input row that it cannot turn into a join (correlated subqueries), so
// every key is one probe of the primary key however large the table.

/// `key, tat, latest_ms` for every key of `$input` (column `key`), both NULL for a key not
/// stored.
macro_rules! read_limits {
    ($input:literal) => {
        concat!(
            "SELECT input.key,",
            " (SELECT r.tat FROM rate_limits AS r WHERE r.key = input.key) AS tat,",
            " (SELECT r.latest_ms FROM rate_limits AS r WHERE r.key = input.key) AS latest_ms",
            " FROM ",
            $input
        )
    };
}
pub(crate) use read_limits;

/// PostgreSQL's limiter purge (SQLite's walks the primary key in slices, one writer job
/// each, see `sqlite::repo`): forgets every key whose `tat` is at or before `$1` (now, in
/// milliseconds).
///
/// One statement rather than batches: `tat` has no index (see the migration), so each batch
/// would scan the table again. A row a concurrent take moved past `$1` is re-checked on its
/// new version and kept.
pub(crate) const PURGE_LIMITS: &str = "DELETE FROM rate_limits WHERE tat <= $1";

/// Adds the counts of `$input` (columns `key`, `attempts`, `approved`; keys distinct) to
/// the bucket `$1` (the start of the minute, in milliseconds), each key in one upsert, in
/// key order: on PostgreSQL two calls sharing keys then lock them in one order and cannot
/// deadlock. `WHERE true` keeps SQLite from reading `ON CONFLICT` as a join's `ON`.
macro_rules! add_counts {
    ($input:literal) => {
        concat!(
            "INSERT INTO risk_counters (key, bucket, attempts, approved)",
            " SELECT input.key, $1, input.attempts, input.approved FROM ",
            $input,
            " WHERE true ORDER BY input.key",
            " ON CONFLICT (key, bucket) DO UPDATE SET",
            " attempts = risk_counters.attempts + excluded.attempts,",
            " approved = risk_counters.approved + excluded.approved"
        )
    };
}
pub(crate) use add_counts;

/// The sums of every query of `$input` (columns `i`, its position, `key` and `since`, the
/// start of the window's first minute in milliseconds) over the buckets from `since` on:
/// `i, attempts, approved` for each query, zeros for a key never counted, ordered by `i`.
/// Both sums come from one range of the primary key per query (a lateral subquery: a
/// scalar subquery per sum read the range twice). PostgreSQL's only (SQLite reads its keys
/// one by one, `sqlite::repo`); it sums `BIGINT`s as `NUMERIC`, hence the casts.
macro_rules! read_counts {
    ($input:literal) => {
        concat!(
            "SELECT input.i, sums.attempts, sums.approved FROM ",
            $input,
            " CROSS JOIN LATERAL (SELECT CAST(COALESCE(SUM(c.attempts), 0) AS BIGINT) AS attempts,",
            " CAST(COALESCE(SUM(c.approved), 0) AS BIGINT) AS approved FROM risk_counters AS c",
            " WHERE c.key = input.key AND c.bucket >= input.since) AS sums",
            " ORDER BY input.i"
        )
    };
}
pub(crate) use read_counts;

/// PostgreSQL's purge (SQLite's walks the primary key, see `sqlite::repo`): deletes up to
/// `$2` buckets starting at or before `$1` (the last bucket start to delete), oldest first
/// along `risk_counters_by_bucket`. Run until a batch comes back short, so no
/// statement holds locks on an unbounded number of rows.
pub(crate) const PURGE_COUNTS: &str = "DELETE FROM risk_counters \
     WHERE bucket <= $1 AND (key, bucket) IN (\
     SELECT key, bucket FROM risk_counters WHERE bucket <= $1 ORDER BY bucket LIMIT $2)";

/// `$1` is the replica, `$2` the number of its write of counters, `$3` now: records the
/// write as the replica's last (in the transaction of the write's counts).
pub(crate) const MARK_FLUSH: &str = "INSERT INTO risk_flushes (replica, seq, updated_at) \
     VALUES ($1, $2, $3) \
     ON CONFLICT (replica) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at";

/// `$1` is the replica: the number of its last write of counters.
pub(crate) const FLUSHED: &str = "SELECT seq FROM risk_flushes WHERE replica = $1";

/// Forgets the replicas whose last write of counters was before `$1`.
pub(crate) const PURGE_FLUSHES: &str = "DELETE FROM risk_flushes WHERE updated_at < $1";

/// Deletes up to `$2` blocks that ended, and were lifted if at all, before `$1`, oldest
/// first along `risk_blocks_by_expiry`; run until a batch comes back short.
pub(crate) const PURGE_BLOCKS: &str = "DELETE FROM risk_blocks \
     WHERE (kind, value) IN (\
     SELECT kind, value FROM risk_blocks \
     WHERE expires_at < $1 AND (lifted_at IS NULL OR lifted_at < $1) \
     ORDER BY expires_at LIMIT $2)";

/// The columns of `risk_blocks` that make a [`domain::abuse::Block`], in the order of
/// [`crate::row::BlockRow`].
macro_rules! block_columns {
    () => {
        "kind, value, reason, detail, source, shadow, created_at, expires_at"
    };
}
pub(crate) use block_columns;

/// Binds a block's columns, `$1` to `$8` in the order of [`block_columns!`]; returns the
/// kind when the block was written and nothing when the target has a row already (a
/// concurrent inserter of the same target is waited for).
pub(crate) const INSERT_BLOCK: &str = concat!(
    "INSERT INTO risk_blocks (",
    block_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    " ON CONFLICT (kind, value) DO NOTHING RETURNING kind"
);

/// What deciding on a new block needs of the target's row: `$1` is the kind, `$2` the
/// value. Completed by each [`crate::repo::Dialect`] to lock the row.
macro_rules! block_state {
    () => {
        "SELECT expires_at, shadow, lifted_at FROM risk_blocks WHERE kind = $1 AND value = $2"
    };
}
pub(crate) use block_state;

/// `$1` is the kind, `$2` the value: the block in force there now ends at `$3` instead.
/// Its reason, source and start stay.
pub(crate) const EXTEND_BLOCK: &str = "UPDATE risk_blocks SET expires_at = $3 \
     WHERE kind = $1 AND value = $2";

/// `$1` is the kind, `$2` the value, `$3` to `$8` the new block's other columns in the
/// order of [`block_columns!`]: replaces the block that ended there. `lifted_at` stays: it
/// is about the target, not about one block.
pub(crate) const REPLACE_BLOCK: &str = "UPDATE risk_blocks SET \
     reason = $3, detail = $4, source = $5, shadow = $6, created_at = $7, expires_at = $8 \
     WHERE kind = $1 AND value = $2";

/// Up to `$3` blocks in force at `$1` (now, in milliseconds), of the kind `$2` or of every
/// kind when it is NULL, newest first: a range of `risk_blocks_by_expiry`, sorted.
pub(crate) const LIST_BLOCKS: &str = concat!(
    "SELECT ",
    block_columns!(),
    " FROM risk_blocks WHERE expires_at > $1 AND ($2 IS NULL OR kind = $2)",
    " ORDER BY created_at DESC, kind, value LIMIT $3"
);

/// `$1` is the kind, `$2` the value, `$3` now: ends the block in force there now and
/// remembers the lift. Returns the kind when there was one.
pub(crate) const LIFT_BLOCK: &str = "UPDATE risk_blocks SET expires_at = $3, lifted_at = $3 \
     WHERE kind = $1 AND value = $2 AND expires_at > $3 \
     RETURNING kind";
