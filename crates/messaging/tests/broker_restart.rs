//! Acceptance test: 10,000 events through RabbitMQ while the broker application is stopped
//! and started again in the middle. Every event whose publish was confirmed must be
//! consumed, and the idempotent consumer must handle none twice.
//!
//! A binary of its own: cargo runs test binaries one after another, so the restart cannot
//! disturb the other RabbitMQ tests of this crate.

#[path = "it/support.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::events::{
    Delivery, Envelope, EventBus, EventHandler, HandlerError, MessageId, Subscription,
};
use messaging::{Idempotent, MemoryDedupeStore, RabbitBus};
use serde_json::json;

use support::{connect, delete_topology, envelope, rabbit_config, unique_exchange};

const EVENTS: usize = 10_000;
const RESTART_AFTER: usize = 3_000;
/// Events from this index on are published only once the broker is down, so that however
/// fast the publishers and however slow `stop_app` on a busy machine, publishing goes on
/// through the outage. Events before it race the stop.
const HOLD_FROM: usize = 5_000;
const PUBLISHERS: usize = 16;
/// How long the test's publisher loop waits before retrying a failed publish.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Counts how often each message id reached the handler behind the dedupe.
#[derive(Debug, Default)]
struct Sink {
    handled: Mutex<HashMap<MessageId, u32>>,
}

#[async_trait]
impl EventHandler for Sink {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let mut handled = self.handled.lock().expect("not poisoned");
        *handled.entry(delivery.envelope.message_id).or_default() += 1;
        Ok(())
    }
}

impl Sink {
    fn distinct(&self) -> usize {
        self.handled.lock().expect("not poisoned").len()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_events_survive_a_broker_restart() {
    let mut config = rabbit_config(&unique_exchange());
    config.reconnect_min = Duration::from_millis(50);
    config.reconnect_max = Duration::from_millis(500);
    config.confirm_timeout = Duration::from_secs(5);
    let bus = Arc::new(connect(config).await);
    let subscription = Subscription {
        queue: "sink".into(),
        bindings: vec!["load.event".into()],
        prefetch: 100,
        // Duplicates that meet their first copy in the handler come back once per retry
        // delay until it is done; plenty of attempts so none of them is dead-lettered.
        max_attempts: 50,
        retry_delay: Duration::from_millis(200),
    };
    let sink = Arc::new(Sink::default());
    let consumer = Arc::new(Idempotent::new(
        subscription.queue.clone(),
        Arc::clone(&sink) as Arc<dyn EventHandler>,
        Arc::new(MemoryDedupeStore::new(100_000, Duration::from_secs(60))),
    ));
    bus.subscribe(
        subscription.clone(),
        Arc::clone(&consumer) as Arc<dyn EventHandler>,
    )
    .await
    .expect("subscribe");

    let outcome = tokio::spawn(publish_through_a_restart(
        Arc::clone(&bus),
        Arc::clone(&sink),
        Arc::clone(&consumer),
    ))
    .await;
    if outcome.is_err() {
        // A failure between stop_app and start_app must not leave the broker down for the
        // cleanup and the next tests; start_app on a running broker does nothing.
        testkit::rabbitmqctl("start_app").await;
    }
    bus.close().await;
    delete_topology(bus.topology(), &[subscription], &[]).await;
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

async fn publish_through_a_restart(
    bus: Arc<RabbitBus>,
    sink: Arc<Sink>,
    consumer: Arc<Idempotent>,
) {
    let started = Instant::now();
    let envelopes: Arc<Vec<Envelope>> = Arc::new(
        (0..EVENTS)
            .map(|i| envelope("load.event", json!({ "i": i })))
            .collect(),
    );
    let next_index = Arc::new(AtomicUsize::new(0));
    let confirmed = Arc::new(Mutex::new(HashSet::new()));
    let confirmed_count = Arc::new(AtomicUsize::new(0));
    let failed_publishes = Arc::new(AtomicUsize::new(0));
    let (broker_down_tx, broker_down) = tokio::sync::watch::channel(false);

    let restart = tokio::spawn({
        let confirmed_count = Arc::clone(&confirmed_count);
        async move {
            while confirmed_count.load(Ordering::Relaxed) < RESTART_AFTER {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let at = confirmed_count.load(Ordering::Relaxed);
            let t0 = Instant::now();
            testkit::rabbitmqctl("stop_app").await;
            let stopped_in = t0.elapsed();
            broker_down_tx.send_replace(true);
            testkit::rabbitmqctl("start_app").await;
            (at, stopped_in, t0.elapsed())
        }
    });

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let (bus, envelopes, next_index) = (
                Arc::clone(&bus),
                Arc::clone(&envelopes),
                Arc::clone(&next_index),
            );
            let (confirmed, confirmed_count, failed_publishes) = (
                Arc::clone(&confirmed),
                Arc::clone(&confirmed_count),
                Arc::clone(&failed_publishes),
            );
            let mut broker_down = broker_down.clone();
            tokio::spawn(async move {
                loop {
                    let i = next_index.fetch_add(1, Ordering::Relaxed);
                    let Some(envelope) = envelopes.get(i) else {
                        break;
                    };
                    if i >= HOLD_FROM {
                        broker_down
                            .wait_for(|down| *down)
                            .await
                            .expect("the restart task reports the stop");
                    }
                    // The outbox relay's loop in miniature: retry retryable failures with the
                    // same message id until the broker confirms.
                    loop {
                        match bus.publish(envelope).await {
                            Ok(()) => {
                                confirmed
                                    .lock()
                                    .expect("not poisoned")
                                    .insert(envelope.message_id);
                                confirmed_count.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(error) if error.is_retryable() => {
                                failed_publishes.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(RETRY_PAUSE).await;
                            }
                            Err(error) => panic!("publish {i} failed for good: {error}"),
                        }
                    }
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.expect("publisher task");
    }
    let published_in = started.elapsed();
    let (restarted_at, stop_took, outage) = restart.await.expect("restart task");

    // Every confirmed event must arrive; wait for the last ones.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.distinct() < EVENTS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Redelivered copies may still be on their way; let them arrive so a second handling
    // would be caught.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let confirmed = confirmed.lock().expect("not poisoned").clone();
    let handled = sink.handled.lock().expect("not poisoned").clone();
    let missing = confirmed
        .iter()
        .filter(|id| !handled.contains_key(id))
        .count();
    let handled_twice = handled.values().filter(|n| **n > 1).count();
    let stats = consumer.stats();
    println!(
        "broker restart acceptance: {EVENTS} events, {PUBLISHERS} publishers\n\
         \x20 broker stop_app after {restarted_at} confirmed publishes; stop took {stop_took:?}, stop+start {outage:?}\n\
         \x20 publishes failed during the outage and retried by the test's loop: {failed}\n\
         \x20 confirmed: {confirmed_n}, all published in {published_in:?}\n\
         \x20 handled (distinct ids): {distinct}, handled twice: {handled_twice}, missing: {missing}\n\
         \x20 duplicates seen by the idempotent consumer: {duplicates} already done + {busy} in progress (retried)\n\
         \x20 total {total:?}",
        failed = failed_publishes.load(Ordering::Relaxed),
        confirmed_n = confirmed.len(),
        distinct = handled.len(),
        duplicates = stats.duplicates,
        busy = stats.busy,
        total = started.elapsed(),
    );
    assert_eq!(
        confirmed.len(),
        EVENTS,
        "every publish was eventually confirmed"
    );
    assert_eq!(missing, 0, "confirmed events that were never consumed");
    assert_eq!(
        handled_twice, 0,
        "events the idempotent consumer handled twice"
    );
    assert_eq!(stats.handled, EVENTS as u64);
    assert!(
        failed_publishes.load(Ordering::Relaxed) > 0,
        "the restart should have happened while publishing"
    );
}
