//! The outbox relay: publishes stored reports to the bus with publisher confirms, a claimed
//! batch (the oldest due) at once, and marks them published. A row is claimed with a lease before it is published, so
//! relays of several replicas never publish it at once; a relay that dies mid-batch leaves
//! its rows to be claimed again when the lease ends (consumers dedupe by message id).
//!
//! While the broker is down every publish fails fast; the row is retried with a growing
//! delay (capped), so nothing is lost and the broker is not hammered when it returns. A row
//! that cannot succeed (an envelope the bus refuses as invalid) or has failed as many times
//! as allowed is set aside as a dead letter: kept in the outbox with its last error, never
//! claimed again, logged as an error and counted (`Outbox::count_set_aside`).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::events::BusError;
use telemetry::trace::{TRACEPARENT, TRACESTATE};
use tokio::sync::watch;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::AppState;

/// Rows taken per claim.
const BATCH: u32 = 100;
/// How long a claim holds rows against other relays.
const LEASE: Duration = Duration::from_secs(30);
/// How long the relay sleeps when there was nothing to publish and nobody woke it.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// The first retry waits this long; each further attempt doubles it up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Published rows older than this are deleted, once per `PURGE_EVERY`.
const KEEP_PUBLISHED: Duration = Duration::from_secs(24 * 3600);
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// What becomes of a message whose publish just failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// Due again after this delay.
    Retry(Duration),
    /// A dead letter: set aside, never claimed again.
    GiveUp,
}

/// The fate of a message after `error` on its attempt `attempts_before + 1`, when at most
/// `max_attempts` may fail. An invalid envelope never publishes, so it is given up at once;
/// a bus shut down (this process stopping) does not count against the message.
pub(crate) fn after_failure(
    error: &BusError,
    attempts_before: u32,
    max_attempts: u32,
) -> AfterFailure {
    match error {
        BusError::Invalid(_) => AfterFailure::GiveUp,
        BusError::Closed => AfterFailure::Retry(retry_delay(attempts_before)),
        _ if attempts_before.saturating_add(1) >= max_attempts => AfterFailure::GiveUp,
        _ => AfterFailure::Retry(retry_delay(attempts_before)),
    }
}

/// The delay before attempt `attempts + 1` of a publish.
pub(crate) fn retry_delay(attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.min(16));
    FIRST_RETRY.saturating_mul(factor).min(MAX_RETRY)
}

pub(crate) async fn run(state: Arc<AppState>, max_attempts: u32, mut stop: watch::Receiver<bool>) {
    let outbox = state.database.outbox();
    let bus = state.bus.events();
    let mut last_purge = tokio::time::Instant::now();
    loop {
        if *stop.borrow() {
            return;
        }
        let now = Utc::now();
        let claimed = match outbox.claim(BATCH, now, LEASE).await {
            Ok(claimed) => claimed,
            Err(e) => {
                warn!(error = %e, "outbox claim failed");
                Vec::new()
            }
        };
        // The batch is published at once, each message on its own: a broker confirms them
        // as they come, and the in-process bus only once each is handled, so one slow
        // handler does not hold up the rest. Consumers never relied on publishing order
        // (Twilio's own reports come in any order).
        let claimed_count = claimed.len();
        let mut publishing = tokio::task::JoinSet::new();
        for message in claimed {
            // The publish shows in the trace of the webhook request that stored the report.
            let span = info_span!(
                parent: None,
                "webhook.relay",
                otel.kind = "producer",
                message_id = %message.envelope.message_id,
                kind = %message.envelope.kind,
                attempts = message.attempts,
            );
            let headers = &message.envelope.headers;
            if let Some(traceparent) = headers.get(TRACEPARENT) {
                let tracestate = headers.get(TRACESTATE).map(String::as_str);
                telemetry::trace::set_parent(&span, traceparent, tracestate);
            }
            let bus = Arc::clone(&bus);
            publishing.spawn(
                async move {
                    let outcome = bus.publish(&message.envelope).await;
                    (message, outcome)
                }
                .instrument(span),
            );
        }
        let mut published = Vec::new();
        while let Some(joined) = publishing.join_next().await {
            let (message, outcome) = match joined {
                Ok(done) => done,
                // Its lease ends and it is claimed again.
                Err(e) => {
                    warn!(error = %e, "a publish task ended abnormally");
                    continue;
                }
            };
            match outcome {
                Ok(()) => published.push(message.id),
                Err(e) => match after_failure(&e, message.attempts, max_attempts) {
                    AfterFailure::Retry(delay) => {
                        if matches!(e, BusError::Unroutable(_)) {
                            // No consumer has declared its queue yet (verify-service not
                            // started).
                            debug!(kind = %message.envelope.kind, "no subscriber yet; retrying later");
                        } else {
                            debug!(error = %e, "publish failed; retrying later");
                        }
                        let at = Utc::now()
                            + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                        if let Err(e) = outbox.retry_later(message.id, at, &e.to_string()).await {
                            warn!(error = %e, "could not reschedule an outbox row");
                        }
                    }
                    AfterFailure::GiveUp => {
                        let attempts = message.attempts.saturating_add(1);
                        error!(
                            message_id = %message.envelope.message_id,
                            kind = %message.envelope.kind,
                            attempts,
                            error = %e,
                            "outbox message given up: set aside as a dead letter"
                        );
                        let why = format!("dead letter after {attempts} attempts: {e}");
                        if let Err(e) = outbox.set_aside(message.id, &why).await {
                            warn!(error = %e, "could not set an outbox row aside");
                        }
                    }
                },
            }
        }
        if !published.is_empty() {
            match outbox.mark_published(&published, Utc::now()).await {
                Ok(()) => info!(count = published.len(), "reports published"),
                // Published but not marked: the lease ends and they go out again, which the
                // consumers' dedupe absorbs.
                Err(e) => warn!(error = %e, "could not mark published rows"),
            }
        }
        if last_purge.elapsed() >= PURGE_EVERY {
            last_purge = tokio::time::Instant::now();
            let older_than =
                Utc::now() - chrono::Duration::from_std(KEEP_PUBLISHED).unwrap_or_default();
            match outbox.purge_published(older_than).await {
                Ok(0) => {}
                Ok(n) => debug!(purged = n, "old published rows removed"),
                Err(e) => warn!(error = %e, "could not purge the outbox"),
            }
        }
        // A full batch may mean more is waiting; otherwise wait for news or the poll.
        if claimed_count < BATCH as usize || published.len() < claimed_count {
            tokio::select! {
                () = state.stored.notified() => {}
                () = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DEFAULT_OUTBOX_MAX_ATTEMPTS;

    #[test]
    fn failures_retry_until_the_last_attempt_then_give_up() {
        let down = BusError::Unavailable("connection refused".into());
        assert_eq!(
            after_failure(&down, 0, 3),
            AfterFailure::Retry(Duration::from_millis(250))
        );
        assert_eq!(
            after_failure(&down, 1, 3),
            AfterFailure::Retry(Duration::from_millis(500))
        );
        assert_eq!(after_failure(&down, 2, 3), AfterFailure::GiveUp);
        assert_eq!(after_failure(&BusError::Nacked, 9, 3), AfterFailure::GiveUp);
        let unroutable = BusError::Unroutable("delivery.status".into());
        assert_eq!(after_failure(&unroutable, 2, 3), AfterFailure::GiveUp);
        // Never publishable: at once.
        let invalid = BusError::Invalid("envelope too large".into());
        assert_eq!(after_failure(&invalid, 0, 3), AfterFailure::GiveUp);
        // This process stopping is not the message's failure.
        assert_eq!(
            after_failure(&BusError::Closed, 5, 3),
            AfterFailure::Retry(retry_delay(5))
        );
        assert_eq!(
            after_failure(&down, 0, DEFAULT_OUTBOX_MAX_ATTEMPTS),
            AfterFailure::Retry(FIRST_RETRY)
        );
    }

    /// The relay on a real SQLite outbox and the in-process bus with no subscriber, so
    /// every publish is unroutable: after the allowed attempts the report is a dead letter,
    /// counted and never claimed again.
    #[tokio::test]
    async fn a_report_failing_every_attempt_becomes_a_dead_letter() {
        use domain::events::{Envelope, EventKind, MessageId};
        let file = std::env::temp_dir().join(format!("wi-dead-{}.db", uuid::Uuid::new_v4()));
        let database = storage::Database::open(&format!("sqlite://{}?mode=rwc", file.display()))
            .await
            .expect("opens");
        database.migrate().await.expect("migrates");
        let envelope = Envelope::new(
            MessageId::from_uuid(uuid::Uuid::now_v7()),
            EventKind::parse("delivery.failed").expect("kind"),
            1,
            Utc::now(),
            b"{}".to_vec(),
        );
        let outbox = database.outbox();
        outbox.enqueue(&envelope, Utc::now()).await.expect("queued");
        let settings = crate::Settings {
            addr: "127.0.0.1:0".parse().expect("addr"),
            public_base_url: None,
            auth_token: secrecy::SecretString::from("token"),
            trusted_proxies: Vec::new(),
        };
        let connections =
            crate::Connections::shared(database.clone(), messaging::Bus::in_process());
        let ingest = crate::Ingest::bind(&settings, connections)
            .await
            .expect("binds")
            .with_outbox_max_attempts(2);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(ingest.run(async {
            let _ = stopped.await;
        }));

        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while outbox.count_set_aside().await.expect("counts") == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no dead letter within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(outbox.count_set_aside().await.expect("counts"), 1);
        // Set aside for good: nothing is due, however late.
        let far = Utc::now() + chrono::Duration::days(3650);
        assert_eq!(outbox.claim(10, far, LEASE).await.expect("claims"), []);
        let _ = stop.send(());
        served.await.expect("joins").expect("served");
        database.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
    }

    #[test]
    fn retries_back_off_and_cap() {
        assert_eq!(retry_delay(0), Duration::from_millis(250));
        assert_eq!(retry_delay(1), Duration::from_millis(500));
        assert_eq!(retry_delay(3), Duration::from_secs(2));
        assert_eq!(retry_delay(10), MAX_RETRY);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
    }
}
