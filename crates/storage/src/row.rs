//! One verification as a database row: the conversion between [`Verification`] and the
//! plain column values, and the binding of those values to statements. Written once,
//! generic over the database, so every backend stores and reads the same representation.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use domain::ports::StoreError;
use domain::{
    Channel, DestinationHash, IdempotencyKey, Purpose, SealedDestination, Verification,
    VerificationId, VerificationStatus,
};
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
}

/// A stored row that does not convert back into a domain value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CorruptRow {
    id: String,
    column: &'static str,
    problem: String,
}

impl fmt::Display for CorruptRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "verification row `{}`, column `{}`: {}",
            self.id, self.column, self.problem
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

impl From<&Verification> for VerificationRow {
    fn from(v: &Verification) -> Self {
        VerificationRow {
            id: v.id.to_string(),
            purpose: v.purpose.as_str().to_owned(),
            channel: v.channel.as_str().to_owned(),
            status: v.status.as_str().to_owned(),
            provider_sid: v.provider_sid.clone(),
            destination_ciphertext: v.destination.ciphertext.clone(),
            destination_key_id: v.destination.key_id.clone(),
            destination_hash: v.destination_hash.as_str().to_owned(),
            to_masked: v.to_masked.clone(),
            identity: v.identity.clone(),
            idempotency_key: v.idempotency_key.as_ref().map(|k| k.as_str().to_owned()),
            sends: i64::from(v.sends),
            checks: i64::from(v.checks),
            max_sends: i64::from(v.max_sends),
            max_checks: i64::from(v.max_checks),
            failure_code: v.failure_code.map(i64::from),
            created_at: to_millis(v.created_at),
            updated_at: to_millis(v.updated_at),
            expires_at: to_millis(v.expires_at),
            version: i64::from(v.version),
        }
    }
}

impl TryFrom<VerificationRow> for Verification {
    type Error = CorruptRow;

    fn try_from(row: VerificationRow) -> Result<Self, CorruptRow> {
        let bad = |column: &'static str, problem: String| CorruptRow {
            id: row.id.clone(),
            column,
            problem,
        };
        let count = |column: &'static str, value: i64| {
            u32::try_from(value).map_err(|_| bad(column, format!("{value} is out of range")))
        };
        let time = |column: &'static str, millis: i64| {
            DateTime::<Utc>::from_timestamp_millis(millis)
                .ok_or_else(|| bad(column, format!("{millis} ms is not a representable time")))
        };

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

        Ok(Verification {
            id,
            purpose,
            channel,
            status,
            sends: count("sends", row.sends)?,
            checks: count("checks", row.checks)?,
            max_sends: count("max_sends", row.max_sends)?,
            max_checks: count("max_checks", row.max_checks)?,
            failure_code,
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
        })
    }
}

/// Binds every column of `row` as `$1` to `$20` of [`crate::sql::INSERT`].
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
}

/// Binds the id, `expected_version` and the mutable columns of `row` as `$1` to `$19` of
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
        v.created_at = at;
        let back = Verification::try_from(VerificationRow::from(&v)).expect("converts");
        assert_eq!(back.created_at.timestamp_subsec_nanos(), 123_000_000);
    }
}
