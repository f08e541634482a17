//! The cases on RabbitMQ, each under its own exchange prefix, deleting what it declared even
//! when the case fails.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use domain::events::{BusError, EventBus};
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use lapin::{Connection, ConnectionProperties};
use serde_json::json;

use crate::cases;
use crate::support::{
    Behaviour, Recorder, TrackedRabbit, amqp_url, connect, envelope, next, rabbit_config,
    subscription, unique_exchange,
};

/// Runs a case on a fresh bus, then closes it and deletes its topology; a failed case still
/// cleans up before its panic is passed on.
async fn on_rabbit<F, Fut>(case: F)
where
    F: FnOnce(Arc<TrackedRabbit>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let bus = Arc::new(TrackedRabbit::connect(&unique_exchange()).await);
    let outcome = tokio::spawn(case(Arc::clone(&bus))).await;
    bus.close_and_delete().await;
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

#[tokio::test]
async fn round_trip_with_headers_and_message_id() {
    on_rabbit(cases::round_trip).await;
}

#[tokio::test]
async fn delayed_delivery_arrives_after_the_delay() {
    on_rabbit(cases::delayed_delivery).await;
}

#[tokio::test]
async fn handler_errors_retry_then_dead_letter() {
    on_rabbit(cases::retries_then_dead_letters).await;
}

#[tokio::test]
async fn competing_consumers_share_a_queue() {
    on_rabbit(cases::competing_consumers).await;
}

/// What is on the wire: persistent, typed, with the trace context as a plain header.
#[tokio::test]
async fn messages_are_persistent_and_carry_amqp_properties() {
    on_rabbit(|bus| async move {
        let (recorder, _rx) = Recorder::new(Behaviour::Succeed);
        bus.subscribe(subscription("wire", &["wire.checked"]), recorder)
            .await
            .expect("subscribe");
        // Stop consuming (close is idempotent; the cleanup closes again), so the message
        // stays in the queue for this test to read raw.
        bus.bus.close().await;
        let publisher = connect(rabbit_config(bus.bus.topology().exchange())).await;
        let sent =
            envelope("wire.checked", json!({"n": 1})).with_header("traceparent", "00-abc-def-01");
        publisher.publish(&sent).await.expect("publish confirmed");
        publisher.close().await;

        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        let queue = bus.bus.topology().queue("wire");
        let message = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
            .expect("a message");
        let props = &message.delivery.properties;
        let text = |s: &Option<lapin::types::ShortString>| s.as_ref().map(|s| s.to_string());
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(text(props.message_id()), Some(sent.message_id.to_string()));
        assert_eq!(text(props.kind()), Some("wire.checked".to_owned()));
        assert_eq!(
            text(props.content_type()),
            Some("application/json".to_owned())
        );
        let traceparent = props
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("traceparent").cloned());
        assert_eq!(
            traceparent,
            Some(AMQPValue::LongString("00-abc-def-01".into()))
        );
        assert_eq!(message.delivery.data, sent.payload);
        connection.close(200, "done".into()).await.expect("close");
    })
    .await;
}

/// A subscription the broker refuses (its queue exists with other arguments) is an error for
/// the caller, and the bus keeps working: only its declaration channel was closed.
#[tokio::test]
async fn a_refused_subscription_leaves_the_bus_working() {
    on_rabbit(|bus| async move {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        let queue = bus.bus.topology().queue("clash");
        channel
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions::durable(),
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("declare a clashing queue");
        connection.close(200, "done".into()).await.expect("close");

        let (recorder, _rx) = Recorder::new(Behaviour::Succeed);
        let refused = bus
            .subscribe(subscription("clash", &["clash.event"]), recorder)
            .await;
        assert!(matches!(refused, Err(BusError::Invalid(_))), "{refused:?}");

        // Past the supervisor's health check: the link must still be the same, usable one.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(bus.bus.is_connected());
        let (recorder, mut rx) = Recorder::new(Behaviour::Succeed);
        bus.subscribe(subscription("fine", &["fine.event"]), recorder)
            .await
            .expect("subscribe");
        let sent = envelope("fine.event", json!({}));
        bus.publish(&sent).await.expect("publish confirmed");
        let (delivery, _) = next(&mut rx, Duration::from_secs(10)).await;
        assert_eq!(delivery.envelope, sent);
    })
    .await;
}
