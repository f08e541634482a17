//! Integration tests of verify-service: the whole gateway (gRPC server, SQLite store, Twilio
//! adapter, embedded sandbox) started in-process on port 0 and driven by a real gRPC client.

mod abuse;
mod callers;
mod distributed;
mod e2e;
mod fallback;
mod faults;
mod flows;
mod harness;
mod key_rotation;
mod outages;
mod reconcile;
mod redaction;
mod replicas;
mod shutdown;
mod tls;
mod trace_context;
