//! verify-service: the gRPC front of verify-gateway. It parses requests into domain types,
//! applies policy, keeps its own record of every verification and talks to Twilio Verify
//! (or the local sandbox) through the `twilio` adapter.
//!
//! `app` composes the adapters; `service` holds the flows; `grpc` is the edge; `error` is the
//! one table from errors to gRPC statuses.

pub mod abuse;
pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod counters;
pub mod data_dir;
pub mod error;
pub mod fallback;
pub mod grpc;
pub mod keys;
pub mod metrics;
pub mod recent;
pub mod reconcile;
pub mod server;
pub mod service;
pub mod tls;
