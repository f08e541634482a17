//! The SQL text of every statement, shared by all backends.
//!
//! Placeholders are `$n`: PostgreSQL requires that form and SQLite accepts it too, so one
//! statement serves both. Only portable SQL belongs here; a statement that must differ per
//! database lives in its backend module.

/// The columns of `verifications`, in the order of [`crate::row::VerificationRow`] and of
/// the parameters of [`INSERT`].
macro_rules! columns {
    () => {
        "id, purpose, channel, status, provider_sid, destination_ciphertext, \
         destination_key_id, destination_hash, to_masked, identity, idempotency_key, sends, \
         checks, max_sends, max_checks, failure_code, created_at, updated_at, expires_at, version"
    };
}

/// Binds every column, `$1` to `$20`, in the order of [`columns!`].
pub(crate) const INSERT: &str = concat!(
    "INSERT INTO verifications (",
    columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, ",
    "$11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
);

/// `$1` is the id.
pub(crate) const GET: &str = concat!("SELECT ", columns!(), " FROM verifications WHERE id = $1");

/// `$1` is the purpose, `$2` the idempotency key. The equality on the key lets both
/// databases use the partial unique index (it implies `idempotency_key IS NOT NULL`).
pub(crate) const FIND_BY_IDEMPOTENCY_KEY: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM verifications WHERE purpose = $1 AND idempotency_key = $2"
);

/// `$1` is the purpose, `$2` the destination hash, `$3` now in milliseconds.
///
/// `status = 'pending'` is a literal, not a parameter, because a partial index is only used
/// when the query's own text implies the index's condition.
pub(crate) const FIND_PENDING: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM verifications",
    " WHERE purpose = $1 AND destination_hash = $2 AND status = 'pending' AND expires_at > $3",
    " ORDER BY created_at DESC, id DESC",
    " LIMIT 1"
);

/// `$1` is the id and `$2` the expected version; `$3` to `$18` are the columns that may
/// change over a verification's life, in the order of [`crate::row::bind_update`].
///
/// The id, purpose, idempotency key and creation time are left alone: they are what the
/// verification is and what the idempotency index holds, and no transition changes them.
pub(crate) const UPDATE: &str = "UPDATE verifications SET \
     channel = $3, status = $4, provider_sid = $5, destination_ciphertext = $6, \
     destination_key_id = $7, destination_hash = $8, to_masked = $9, identity = $10, \
     sends = $11, checks = $12, max_sends = $13, max_checks = $14, failure_code = $15, \
     updated_at = $16, expires_at = $17, version = $18 \
     WHERE id = $1 AND version = $2";

/// `$1` is the id. Tells a lost optimistic update (the row exists with another version)
/// from an update of a row that was never there.
pub(crate) const VERSION_OF: &str = "SELECT version FROM verifications WHERE id = $1";
