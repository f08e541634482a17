//! Tests of the stores against real databases. One suite (`suite`) runs against SQLite and
//! PostgreSQL alike, each test on a fresh database of its own (`harness`); what only one
//! backend has (files and pragmas, URLs and server settings) is tested in `sqlite` and
//! `postgres`.
//!
//! PostgreSQL comes from `DATABASE_URL`, else from `.tools/deps.env` at the workspace root
//! (written by `cargo xtask deps up`). Without a reachable server the PostgreSQL tests fail;
//! they never skip, so a green run always means both backends were tested.

pub(crate) mod harness;
mod postgres;
mod sqlite;
mod suite;
