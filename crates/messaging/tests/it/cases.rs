//! The bus's behaviour, written once and run against both buses (`rabbit.rs` and
//! `in_process.rs`), so the embedded mode keeps RabbitMQ's semantics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::events::{BusError, Subscription};
use serde_json::json;

use crate::support::{Behaviour, DeadLetters, Recorder, envelope, next, nothing_for, subscription};

const WAIT: Duration = Duration::from_secs(10);

/// Fan-out by kind to two subscriptions, with id, version, time, headers and payload intact.
pub async fn round_trip(bus: Arc<impl DeadLetters>) {
    let (all, mut all_rx) = Recorder::new(Behaviour::Succeed);
    let (failed, mut failed_rx) = Recorder::new(Behaviour::Succeed);
    bus.subscribe(subscription("all-deliveries", &["delivery.*"]), all)
        .await
        .expect("subscribe all-deliveries");
    bus.subscribe(subscription("failures", &["delivery.failed"]), failed)
        .await
        .expect("subscribe failures");

    let sent = envelope(
        "delivery.failed",
        json!({"verification_id": "ver_1", "channel": "sms"}),
    )
    .with_header(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .with_header("tracestate", "vg=1");
    bus.publish(&sent).await.expect("publish confirmed");
    for rx in [&mut all_rx, &mut failed_rx] {
        let (delivery, _) = next(rx, WAIT).await;
        assert_eq!(delivery.envelope, sent);
        assert_eq!(delivery.attempt, 1);
    }

    let other = envelope("delivery.sent", json!({}));
    bus.publish(&other).await.expect("publish confirmed");
    assert_eq!(
        next(&mut all_rx, WAIT).await.0.envelope.message_id,
        other.message_id
    );
    nothing_for(&mut failed_rx, Duration::from_millis(300)).await;
    nothing_for(&mut all_rx, Duration::from_millis(100)).await;

    let nobody = envelope("nobody.listens", json!({}));
    assert_eq!(
        bus.publish(&nobody).await,
        Err(BusError::Unroutable("nobody.listens".into()))
    );
    let reserved = envelope("delivery.failed", json!({})).with_header("x-death", "mine");
    assert!(matches!(
        bus.publish(&reserved).await,
        Err(BusError::Invalid(_))
    ));
}

/// A delayed message arrives after its delay, not before, with its headers.
pub async fn delayed_delivery(bus: Arc<impl DeadLetters>) {
    let delay = Duration::from_millis(1500);
    let (recorder, mut rx) = Recorder::new(Behaviour::Succeed);
    bus.subscribe(
        subscription("reports", &["delivery_report.missing"]),
        recorder,
    )
    .await
    .expect("subscribe");
    let sent = envelope(
        "delivery_report.missing",
        json!({"verification_id": "ver_2"}),
    )
    .with_header(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    let published_at = Instant::now();
    bus.publish_delayed(&sent, delay)
        .await
        .expect("delayed publish confirmed");
    // Nothing in the first two thirds of the delay...
    nothing_for(&mut rx, delay * 2 / 3).await;
    // ...then the message, not before its delay is over.
    let (delivery, arrived_at) = next(&mut rx, WAIT).await;
    let waited = arrived_at - published_at;
    assert!(
        waited >= delay,
        "arrived after {waited:?}, before the {delay:?} delay"
    );
    assert_eq!(delivery.envelope, sent);
    assert_eq!(delivery.attempt, 1);
    println!("delayed {delay:?}: arrived after {waited:?}");
}

/// A retryable failure is redelivered after the retry delay, and dead-lettered after
/// `max_attempts` calls; a permanent one is dead-lettered at once.
pub async fn retries_then_dead_letters(bus: Arc<impl DeadLetters>) {
    let flaky_sub = Subscription {
        max_attempts: 3,
        retry_delay: Duration::from_millis(300),
        ..subscription("flaky", &["fallback.requested"])
    };
    let (flaky, mut flaky_rx) = Recorder::new(Behaviour::FailRetryable);
    bus.subscribe(flaky_sub.clone(), flaky)
        .await
        .expect("subscribe flaky");
    let (broken, mut broken_rx) = Recorder::new(Behaviour::FailPermanently);
    bus.subscribe(subscription("broken", &["fallback.requested"]), broken)
        .await
        .expect("subscribe broken");

    let sent = envelope("fallback.requested", json!({"verification_id": "ver_3"}));
    bus.publish(&sent).await.expect("publish confirmed");

    let mut previous: Option<Instant> = None;
    for attempt in 1..=3 {
        let (delivery, at) = next(&mut flaky_rx, WAIT).await;
        assert_eq!(delivery.attempt, attempt);
        assert_eq!(delivery.envelope, sent);
        if let Some(previous) = previous {
            let gap = at - previous;
            assert!(gap >= flaky_sub.retry_delay, "retried after {gap:?}");
        }
        previous = Some(at);
    }
    let (delivery, _) = next(&mut broken_rx, WAIT).await;
    assert_eq!(delivery.attempt, 1);

    for (queue, attempts, reason) in [
        ("flaky", 3, "retryable: the downstream is down"),
        ("broken", 1, "permanent: unknown payload version"),
    ] {
        let dead = wait_for_dead_letter(&*bus, queue).await;
        assert_eq!(dead.envelope, sent, "{queue}");
        assert_eq!(dead.attempts, attempts, "{queue}");
        assert_eq!(dead.reason, reason, "{queue}");
        assert_eq!(dead.queue, queue);
    }
    // Dead means dead: no further calls.
    nothing_for(&mut flaky_rx, flaky_sub.retry_delay * 2).await;
    nothing_for(&mut broken_rx, Duration::from_millis(100)).await;
}

async fn wait_for_dead_letter(bus: &impl DeadLetters, queue: &str) -> messaging::DeadLetter {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut letters = bus.dead_letters(queue).await;
        if let Some(letter) = letters.pop() {
            assert!(letters.is_empty(), "more than one dead letter: {letters:?}");
            return letter;
        }
        assert!(
            Instant::now() < deadline,
            "no dead letter in `{queue}` within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two subscribers on one queue share its messages; each message is handled once.
pub async fn competing_consumers(bus: Arc<impl DeadLetters>) {
    let (first, mut first_rx) = Recorder::new(Behaviour::Succeed);
    let (second, mut second_rx) = Recorder::new(Behaviour::Succeed);
    let shared = subscription("workers", &["work.item"]);
    bus.subscribe(shared.clone(), first)
        .await
        .expect("subscribe");
    bus.subscribe(shared, second).await.expect("subscribe");
    let sent: Vec<_> = (0..20)
        .map(|i| envelope("work.item", json!({ "i": i })))
        .collect();
    for envelope in &sent {
        bus.publish(envelope).await.expect("publish confirmed");
    }
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < sent.len() && Instant::now() < deadline {
        tokio::select! {
            Some((d, _)) = first_rx.recv() => seen.push(d.envelope.message_id),
            Some((d, _)) = second_rx.recv() => seen.push(d.envelope.message_id),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    seen.sort();
    let mut expected: Vec<_> = sent.iter().map(|e| e.message_id).collect();
    expected.sort();
    assert_eq!(seen, expected);
}
