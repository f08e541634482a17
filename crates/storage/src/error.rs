//! Errors of this crate: [`StorageError`] for opening and migrating a database, and the
//! mapping of driver errors onto the ports' [`StoreError`] and [`DedupeError`] inside the
//! store methods.

use domain::events::DedupeError;
use domain::ports::StoreError;

/// Why a store could not be opened or brought to the current schema.
///
/// The driver's error is the `source`, so `{:#}` with `anyhow` prints both; the URL is never
/// part of the message because a PostgreSQL URL can carry a password.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("the database URL is not valid")]
    InvalidUrl(#[source] sqlx::Error),
    #[error("could not open the database")]
    Connect(#[source] sqlx::Error),
    #[error("could not apply the database migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("database URLs start with sqlite:, postgres: or postgresql: (got `{0}:`)")]
    UnsupportedScheme(String),
    #[error("the database does not answer")]
    Unavailable(#[source] sqlx::Error),
    #[error("could not open the database: {0}")]
    Open(String),
    #[error("the database does not answer: {0}")]
    NoAnswer(String),
}

/// Maps an error met while reading rows. Decoding failures mean a stored row does not fit
/// the schema the code expects, which no retry will fix, so they are `Corrupt`; anything
/// else is the database failing to answer.
pub(crate) fn read_error(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. } => StoreError::Corrupt(error.to_string()),
        other => unavailable(other),
    }
}

/// Maps an error the database gave instead of an answer; callers fail closed on it.
pub(crate) fn unavailable(error: sqlx::Error) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

/// Maps an error of the dedupe store's database; consumers treat it as retryable.
pub(crate) fn dedupe_error(error: sqlx::Error) -> DedupeError {
    DedupeError(error.to_string())
}
