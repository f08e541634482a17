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

/// A handler that says when it starts and finishes only when the test lets it, failing
/// its first call when told.
#[derive(Debug)]
struct Gate {
    started: tokio::sync::mpsc::UnboundedSender<u32>,
    release: tokio::sync::Semaphore,
    fail_first: bool,
}

#[async_trait::async_trait]
impl domain::events::EventHandler for Gate {
    async fn handle(
        &self,
        delivery: &domain::events::Delivery,
    ) -> Result<(), domain::events::HandlerError> {
        let _ = self.started.send(delivery.attempt);
        self.release.acquire().await.expect("never closed").forget();
        if self.fail_first && delivery.attempt == 1 {
            return Err(domain::events::HandlerError::retryable("not yet"));
        }
        Ok(())
    }
}

fn gate(fail_first: bool) -> (Arc<Gate>, tokio::sync::mpsc::UnboundedReceiver<u32>) {
    let (started, rx) = tokio::sync::mpsc::unbounded_channel();
    let gate = Gate {
        started,
        release: tokio::sync::Semaphore::new(0),
        fail_first,
    };
    (Arc::new(gate), rx)
}

/// Nothing is durable in process, so a publish confirms only once the message is handled,
/// its retries included: an outbox relay marks it published only then, and a crash before
/// leaves it in the outbox.
#[tokio::test]
async fn a_publish_confirms_once_the_message_is_handled() {
    use domain::events::{EventBus, Subscription};
    let bus = Arc::new(InProcessBus::new());
    let (handler, mut started) = gate(true);
    bus.subscribe(
        Subscription {
            retry_delay: std::time::Duration::from_millis(50),
            ..crate::support::subscription("gated", &["delivery.failed"])
        },
        handler.clone(),
    )
    .await
    .expect("subscribes");
    let sent = crate::support::envelope("delivery.failed", serde_json::json!({}));
    let publishing = tokio::spawn({
        let bus = Arc::clone(&bus);
        async move { bus.publish(&sent).await }
    });

    // Handled once and failed: still not confirmed while the retry is in the handler.
    assert_eq!(started.recv().await, Some(1));
    handler.release.add_permits(1);
    assert_eq!(started.recv().await, Some(2));
    assert!(!publishing.is_finished(), "confirmed before it was handled");
    handler.release.add_permits(1);
    assert_eq!(publishing.await.expect("joins"), Ok(()));
}

/// A message not settled when the bus closes, queued or in its handler, is not confirmed:
/// the relay keeps it (and publishes it again after a restart; consumers dedupe).
#[tokio::test]
async fn a_publish_unsettled_at_close_is_not_confirmed() {
    use domain::events::{BusError, EventBus, Subscription};
    let bus = Arc::new(InProcessBus::new());
    let (handler, mut started) = gate(false);
    bus.subscribe(
        Subscription {
            prefetch: 1,
            ..crate::support::subscription("gated", &["delivery.failed"])
        },
        handler.clone(),
    )
    .await
    .expect("subscribes");
    // The first holds the only prefetch slot; the second waits in the queue.
    let publish = |n: u32| {
        let bus = Arc::clone(&bus);
        let envelope = crate::support::envelope("delivery.failed", serde_json::json!({ "n": n }));
        tokio::spawn(async move { bus.publish(&envelope).await })
    };
    let held = publish(1);
    assert_eq!(started.recv().await, Some(1));
    let queued = publish(2);
    bus.close();
    assert_eq!(queued.await.expect("joins"), Err(BusError::Closed));
    assert_eq!(held.await.expect("joins"), Err(BusError::Closed));
    handler.release.add_permits(1);
}
