//! Integration tests of the event bus: every case against a real RabbitMQ (never mocked;
//! it fails with the command to start one when it is not reachable) and against the
//! in-process bus. The broker-restart acceptance test is its own binary
//! (`broker_restart.rs`), so restarting the broker never disturbs these.

mod cases;
mod in_process;
mod rabbit;
mod support;
