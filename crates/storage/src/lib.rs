//! The durable record of verifications: `sqlx` implementations of
//! [`domain::ports::VerificationStore`] and the migrations they run.
//!
//! Every SQL statement of the project lives in this crate. Statements are written once in
//! `sql` with `$n` placeholders, which both SQLite and PostgreSQL accept, and rows are
//! converted to and from domain values once in `row`; a backend module (`sqlite`, and
//! later a PostgreSQL one with its own `migrations/postgres/`) only owns the pool, the
//! connection settings and the mapping of its driver's errors.
//!
//! Timestamps are stored as integer milliseconds since the Unix epoch, so values read back
//! are truncated to the millisecond.

mod error;
#[cfg(test)]
mod fixtures;
mod row;
mod sql;
mod sqlite;

pub use error::StorageError;
pub use sqlite::SqliteStore;
