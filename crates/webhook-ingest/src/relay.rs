//! The outbox relay: publishes stored reports to the bus with publisher confirms, oldest
//! first, and marks them published. A row is claimed with a lease before it is published, so
//! relays of several replicas never publish it at once; a relay that dies mid-batch leaves
//! its rows to be claimed again when the lease ends (consumers dedupe by message id).
//!
//! While the broker is down every publish fails fast; the row is retried with a growing
//! delay (capped), so nothing is lost and the broker is not hammered when it returns.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::events::BusError;
use telemetry::trace::{TRACEPARENT, TRACESTATE};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

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

/// The delay before attempt `attempts + 1` of a publish.
pub(crate) fn retry_delay(attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.min(16));
    FIRST_RETRY.saturating_mul(factor).min(MAX_RETRY)
}

pub(crate) async fn run(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let outbox = state.database.outbox();
    let bus = state.bus.as_dyn();
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
        let mut published = Vec::new();
        for message in &claimed {
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
            match bus.publish(&message.envelope).instrument(span).await {
                Ok(()) => published.push(message.id),
                Err(e) => {
                    let delay = retry_delay(message.attempts);
                    if matches!(e, BusError::Unroutable(_)) {
                        // No consumer has declared its queue yet (verify-service not started).
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
        if claimed.len() < BATCH as usize || published.len() < claimed.len() {
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

    #[test]
    fn retries_back_off_and_cap() {
        assert_eq!(retry_delay(0), Duration::from_millis(250));
        assert_eq!(retry_delay(1), Duration::from_millis(500));
        assert_eq!(retry_delay(3), Duration::from_secs(2));
        assert_eq!(retry_delay(10), MAX_RETRY);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
    }
}
