//! The same cases on the in-process bus of the embedded mode.

use std::sync::Arc;

use messaging::InProcessBus;

use crate::cases;

#[tokio::test]
async fn round_trip_with_headers_and_message_id() {
    cases::round_trip(Arc::new(InProcessBus::new())).await;
}

#[tokio::test]
async fn delayed_delivery_arrives_after_the_delay() {
    cases::delayed_delivery(Arc::new(InProcessBus::new())).await;
}

#[tokio::test]
async fn handler_errors_retry_then_dead_letter() {
    cases::retries_then_dead_letters(Arc::new(InProcessBus::new())).await;
}

#[tokio::test]
async fn competing_consumers_share_a_queue() {
    cases::competing_consumers(Arc::new(InProcessBus::new())).await;
}
