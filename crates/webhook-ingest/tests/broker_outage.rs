//! Acceptance test: while RabbitMQ's application is stopped, webhook-ingest keeps answering
//! 200 to signed Verify Events and storing them in the outbox; once the broker is back, the
//! relay publishes every one of them and the consumer handles each exactly once.
//!
//! A binary of its own: cargo runs test binaries one after another, so stopping the broker
//! cannot disturb the other tests of this crate.

#[path = "it/support.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Row;
use webhook_ingest::VERIFY_EVENTS_PATH;

use support::{AUTH_TOKEN, Harness, Table, WITHIN, get, message_event, poll, sign_json_all};

/// Events posted while the broker is down, one request each.
const EVENTS: usize = 20;
/// How long the relay may take to publish everything once the broker is back: its retry
/// delay is capped at 30 s, and the bus reconnects within a few seconds.
const REPUBLISH_WITHIN: Duration = Duration::from_secs(40);
/// Failed publishing attempts each row must have had before the broker comes back, so the
/// test sees the relay retry with backoff rather than succeed at once.
const FAILED_ATTEMPTS: i64 = 3;

#[tokio::test(flavor = "multi_thread")]
async fn events_are_accepted_while_the_broker_is_down_and_published_once_it_is_back() {
    let harness = Arc::new(Harness::start().await);
    let outcome = tokio::spawn(through_an_outage(Arc::clone(&harness))).await;
    if outcome.is_err() {
        // A failure between stop_app and start_app must not leave the broker down for the
        // cleanup and the next tests; start_app on a running broker does nothing.
        testkit::rabbitmqctl("start_app").await;
    }
    let harness = Arc::into_inner(harness).expect("the test task is done with the harness");
    match outcome {
        Ok(()) => harness.finish().await,
        // Dropping the harness removes what it created.
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

async fn through_an_outage(harness: Arc<Harness>) {
    let url = format!("{}{VERIFY_EVENTS_PATH}", harness.public_base);
    let bodies: Vec<String> = (0..EVENTS)
        .map(|i| {
            json!([message_event(
                &format!("EZ{i:04}"),
                &format!("VE{i:04}"),
                if i % 2 == 0 {
                    "DELIVERED"
                } else {
                    "UNDELIVERED"
                },
                if i % 2 == 0 { "" } else { "30003" },
            )])
            .to_string()
        })
        .collect();
    let signed = sign_json_all(
        AUTH_TOKEN,
        &url,
        &bodies.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let readyz = format!("{}/readyz", harness.base);
    let (status, body) = get(&readyz).await;
    assert_eq!((status, &body["broker"]), (200, &json!("ok")), "{body}");

    let outage = Instant::now();
    testkit::rabbitmqctl("stop_app").await;
    let stop_took = outage.elapsed();
    // Readiness follows the database only: the broker is reported down, the replica stays
    // ready.
    poll("readiness to report the broker down", WITHIN, || {
        let readyz = readyz.clone();
        async move {
            match get(&readyz).await {
                (200, body) if body["broker"] != "ok" && body["database"] == "ok" => Ok(()),
                (status, body) => Err(format!("{status} {body}")),
            }
        }
    })
    .await;

    for (body, signed) in bodies.iter().zip(&signed) {
        let (status, answer) = harness.post_events(signed, body).await;
        assert_eq!(status, 200, "accepted while the broker is down: {answer}");
        assert_eq!(answer["stored"], 1, "{answer}");
    }
    assert_eq!(harness.count(Table::DeliveryReports).await, EVENTS as i64);
    // The relay tries, fails, and backs off; nothing is published meanwhile.
    let failed: Vec<i64> = poll(
        "every outbox row to have failed publishing a few times",
        WITHIN,
        || async {
            let attempts: Vec<(i64, bool, Option<String>)> = sqlx::query(
                "SELECT attempts, published_at IS NOT NULL AS published, last_error FROM outbox",
            )
            .fetch_all(&harness.pool)
            .await
            .expect("read outbox")
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect();
            assert!(
                attempts.iter().all(|(_, published, _)| !published),
                "published while the broker is down"
            );
            assert_eq!(attempts.len(), EVENTS);
            if attempts
                .iter()
                .all(|(n, _, error)| *n >= FAILED_ATTEMPTS && error.is_some())
            {
                Ok(attempts.iter().map(|(n, ..)| *n).collect())
            } else {
                Err(format!("{attempts:?}"))
            }
        },
    )
    .await;
    assert_eq!(harness.unpublished().await, EVENTS as i64);
    assert!(harness.seen.raw_reports().is_empty());

    let starting = Instant::now();
    testkit::rabbitmqctl("start_app").await;
    let back = Instant::now();
    let start_took = back - starting;
    let outage = back - outage;
    harness.all_published(REPUBLISH_WITHIN).await;
    let published_in = back.elapsed();
    let handled = harness.handled_reports(EVENTS, WITHIN).await;
    let handled_in = back.elapsed();
    poll("readiness to report the broker back", WITHIN, || {
        let readyz = readyz.clone();
        async move {
            match get(&readyz).await {
                (200, body) if body["broker"] == "ok" => Ok(()),
                (status, body) => Err(format!("{status} {body}")),
            }
        }
    })
    .await;

    let raw = harness.seen.raw_reports();
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for delivery in &handled {
        *per_id
            .entry(delivery.envelope.message_id.to_string())
            .or_default() += 1;
    }
    let stats = harness.consumer_stats();
    println!(
        "broker outage: {EVENTS} events posted while RabbitMQ was stopped\n\
         \x20 outage (stop_app .. start_app returned): {outage:.1?} (stop_app took {stop_took:.1?}, start_app {start_took:.1?})\n\
         \x20 failed publishing attempts per row before the restart: {min_failed}..={max_failed}\n\
         \x20 all published {published_in:.1?} after start_app, all handled {handled_in:.1?} after\n\
         \x20 deliveries: {raw_n}, handled: {handled_n} (distinct {distinct}), duplicates skipped: {dup}",
        raw_n = raw.len(),
        handled_n = handled.len(),
        distinct = per_id.len(),
        dup = stats.duplicates,
        min_failed = failed.iter().min().expect("rows"),
        max_failed = failed.iter().max().expect("rows"),
    );
    assert_eq!(per_id.len(), EVENTS, "every event handled");
    assert!(
        per_id.values().all(|n| *n == 1),
        "an event handled twice: {per_id:?}"
    );
    assert_eq!(
        stats.handled,
        EVENTS as u64 + 1,
        "the events and one barrier"
    );
    let outbox_ids: Vec<String> = sqlx::query_scalar("SELECT message_id FROM outbox")
        .fetch_all(&harness.pool)
        .await
        .expect("read outbox");
    assert!(
        outbox_ids.iter().all(|id| per_id.contains_key(id)),
        "the handled ids are the outbox's"
    );
}
