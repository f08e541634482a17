//! The durable record of verifications and of the messages about them, and the shared state
//! of abuse protection: `sqlx` implementations of [`domain::ports::VerificationStore`],
//! [`domain::ports::DeliveryReportStore`], the transactional [`domain::ports::Outbox`], the
//! consumers' [`domain::events::DedupeStore`], the rate limiter's
//! [`domain::abuse::RateLimitStore`] and fraud scoring's [`domain::abuse::RiskStore`] on
//! SQLite ([`SqliteStore`], the embedded mode) and PostgreSQL ([`PostgresStore`], shared by
//! replicas), and the migrations they run.
//!
//! Every SQL statement of the project lives in this crate. Statements are written once in
//! `sql` with `$n` placeholders, which both databases accept, rows are converted to and from
//! domain values once in `row`, and the store logic runs them once in `repo`, generic over
//! the database (messages in `messages`, abuse protection in `abuse`). A backend module
//! (`sqlite`, `postgres`) only owns the pool, the connection settings, how it begins a
//! writing transaction, the few statements that differ, and its migrations
//! (`migrations/sqlite/`, `migrations/postgres/`).
//!
//! The database enforces the rules that must hold across replicas: one verification per
//! purpose and idempotency key, and at most one pending verification per purpose and
//! destination (both unique partial indexes); one record per delivery report (a unique
//! dedupe key, written in one transaction with its outbox event); one relay at a time per
//! outbox message (leases taken under row locks); one holder at a time per consumer and
//! message id (leases decided by the primary key); one GCRA state per rate-limit key, moved
//! by one atomic upsert per take, so a limit holds across replicas; counters that every
//! concurrent add reaches (upserts); one block per target, added under its row lock.
//!
//! Timestamps are stored as integer milliseconds since the Unix epoch (`BIGINT` on
//! PostgreSQL), so values read back are truncated to the millisecond.

mod abuse;
mod database;
mod error;
#[cfg(test)]
mod fixtures;
mod lane;
mod messages;
mod postgres;
mod repo;
mod retention;
mod row;
mod sql;
mod sqlite;
#[cfg(test)]
mod tests;

pub use database::Database;
pub use error::StorageError;
pub use postgres::{PostgresDedupeStore, PostgresStore};
pub use retention::Purged;
pub use sqlite::{SqliteDedupeStore, SqliteStore, StoreCounts};
