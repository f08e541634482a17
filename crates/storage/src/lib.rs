//! The durable record of verifications and of the messages about them: `sqlx`
//! implementations of [`domain::ports::VerificationStore`],
//! [`domain::ports::DeliveryReportStore`], the transactional [`domain::ports::Outbox`] and
//! the consumers' [`domain::events::DedupeStore`] on SQLite ([`SqliteStore`], the embedded
//! mode) and PostgreSQL ([`PostgresStore`], shared by replicas), and the migrations they run.
//!
//! Every SQL statement of the project lives in this crate. Statements are written once in
//! `sql` with `$n` placeholders, which both databases accept, rows are converted to and from
//! domain values once in `row`, and the store logic runs them once in `repo`, generic over
//! the database. A backend module (`sqlite`, `postgres`) only owns the pool, the connection
//! settings, how it begins a writing transaction and its migrations
//! (`migrations/sqlite/`, `migrations/postgres/`).
//!
//! The database enforces the rules that must hold across replicas: one verification per
//! purpose and idempotency key, and at most one pending verification per purpose and
//! destination (both unique partial indexes); one record per delivery report (a unique
//! dedupe key, written in one transaction with its outbox event); one relay at a time per
//! outbox message (leases taken under row locks); one holder at a time per consumer and
//! message id (leases decided by the primary key).
//!
//! Timestamps are stored as integer milliseconds since the Unix epoch (`BIGINT` on
//! PostgreSQL), so values read back are truncated to the millisecond.

mod database;
mod error;
#[cfg(test)]
mod fixtures;
mod messages;
mod postgres;
mod repo;
mod row;
mod sql;
mod sqlite;
#[cfg(test)]
mod tests;

pub use database::Database;
pub use error::StorageError;
pub use postgres::{PostgresDedupeStore, PostgresStore};
pub use sqlite::{SqliteDedupeStore, SqliteStore};
