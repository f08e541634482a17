//! Posting Verify Events in the background, like an Event Streams webhook sink: one ordered
//! queue per verification (so `sent` always precedes the final report, and a resend's
//! reports follow the previous send's), retries with backoff on connection errors and
//! non-2xx answers, and a bounded log of every post for `GET /sandbox/events`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use url::Url;

use crate::events::{self, MessageStatus, Outcome, Report, Signer};
use crate::store::Channel;

/// Posts of one event before giving up on it.
pub const EVENT_POST_ATTEMPTS: u32 = 5;
/// Limit on one post (connect, send, answer).
pub const EVENT_POST_TIMEOUT: Duration = Duration::from_secs(5);

/// One send to report on.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) service_sid: String,
    pub(crate) verification_sid: String,
    pub(crate) attempt_sid: String,
    pub(crate) attempt_time: DateTime<Utc>,
    pub(crate) channel: Channel,
    pub(crate) to: String,
    pub(crate) outcome: Outcome,
}

/// One event post as `GET /sandbox/events` lists it. The event fields repeat the event's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Record {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    verification_sid: String,
    attempt_sid: String,
    to: String,
    channel: &'static str,
    message_status: &'static str,
    error_code: &'static str,
    /// The URL posted to, `bodySHA256` included.
    url: String,
    /// The CloudEvent `time`.
    time: String,
    /// Posts made so far.
    attempts: u32,
    /// The HTTP status of the last answer, or `null` when no answer came.
    last_http_status: Option<u16>,
    /// Why the last post got no answer (connection refused, timeout…), or `null`.
    last_error: Option<String>,
    /// Whether a 2xx answer was received.
    delivered: bool,
}

/// Sends jobs' events to the configured URL; clones share the queues and the log.
#[derive(Debug, Clone)]
pub(crate) struct Dispatcher {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    url: Url,
    account_sid: String,
    signer: Signer,
    client: reqwest::Client,
    delivery_delay: Duration,
    retry_delay: Duration,
    log_capacity: usize,
    /// Pending jobs per verification SID. An entry exists exactly while a worker runs for
    /// that verification; the worker removes it, under this lock, when it finds it empty.
    queues: Mutex<HashMap<String, VecDeque<Job>>>,
    /// Newest first.
    log: Mutex<VecDeque<Record>>,
}

/// The settings a dispatcher needs.
#[derive(Debug)]
pub(crate) struct DispatcherConfig<'a> {
    pub(crate) url: Url,
    pub(crate) account_sid: &'a str,
    pub(crate) auth_token: &'a str,
    pub(crate) delivery_delay: Duration,
    pub(crate) retry_delay: Duration,
    pub(crate) log_capacity: usize,
}

/// A lock whose holder cannot leave a half-applied change behind, so poison is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Dispatcher {
    pub(crate) fn new(config: DispatcherConfig<'_>) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(EVENT_POST_TIMEOUT)
            // A redirect is not a 2xx: it counts as a failed post, as on a webhook sink.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Dispatcher {
            shared: Arc::new(Shared {
                url: config.url,
                account_sid: config.account_sid.to_owned(),
                signer: Signer::new(config.auth_token),
                client,
                delivery_delay: config.delivery_delay,
                retry_delay: config.retry_delay,
                log_capacity: config.log_capacity,
                queues: Mutex::new(HashMap::new()),
                log: Mutex::new(VecDeque::new()),
            }),
        })
    }

    /// Queues a send's reports behind those already queued for its verification and
    /// returns at once; a worker task posts them. Needs a Tokio runtime.
    pub(crate) fn enqueue(&self, job: Job) {
        let mut queues = lock(&self.shared.queues);
        if let Some(queue) = queues.get_mut(&job.verification_sid) {
            queue.push_back(job);
            return;
        }
        let verification_sid = job.verification_sid.clone();
        queues.insert(verification_sid.clone(), VecDeque::from([job]));
        tokio::spawn(Arc::clone(&self.shared).work(verification_sid));
    }

    /// The posts made, newest first, optionally for one verification only.
    pub(crate) fn records(&self, verification_sid: Option<&str>) -> Vec<Record> {
        lock(&self.shared.log)
            .iter()
            .filter(|r| verification_sid.is_none_or(|sid| r.verification_sid == sid))
            .cloned()
            .collect()
    }
}

impl Shared {
    /// Posts the reports of one verification's jobs, in order, until its queue is empty.
    async fn work(self: Arc<Self>, verification_sid: String) {
        loop {
            let job = {
                let mut queues = lock(&self.queues);
                match queues
                    .get_mut(&verification_sid)
                    .and_then(VecDeque::pop_front)
                {
                    Some(job) => job,
                    None => {
                        queues.remove(&verification_sid);
                        return;
                    }
                }
            };
            self.post(&job, MessageStatus::Sent, None).await;
            if job.outcome.has_final_report() {
                tokio::time::sleep(self.delivery_delay).await;
                self.post(&job, job.outcome.status, job.outcome.error_code)
                    .await;
            }
        }
    }

    /// Posts one event, retrying with a doubling wait, and records every attempt.
    async fn post(&self, job: &Job, status: MessageStatus, error_code: Option<&'static str>) {
        let time = Utc::now();
        let report = Report {
            account_sid: &self.account_sid,
            service_sid: &job.service_sid,
            verification_sid: &job.verification_sid,
            attempt_sid: &job.attempt_sid,
            attempt_time: job.attempt_time,
            channel: job.channel,
            to: &job.to,
            status,
            error_code,
            time,
        };
        let encoded = match events::encode(&report) {
            Ok(encoded) => encoded,
            Err(error) => {
                tracing::error!(%error, verification_sid = %job.verification_sid, "sandbox.events.encode_failed");
                return;
            }
        };
        let url = events::signed_url(&self.url, &encoded.body);
        let signature = self.signer.sign(url.as_str());
        self.record(Record {
            id: encoded.id.clone(),
            kind: status.event_type(),
            verification_sid: job.verification_sid.clone(),
            attempt_sid: job.attempt_sid.clone(),
            to: job.to.clone(),
            channel: events::channel_label(job.channel),
            message_status: status.wire(),
            error_code: events::error_code_label(error_code),
            url: url.to_string(),
            time: events::rfc3339_millis(&time),
            attempts: 0,
            last_http_status: None,
            last_error: None,
            delivered: false,
        });

        for attempt in 1..=EVENT_POST_ATTEMPTS {
            let answer = self
                .client
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, events::CONTENT_TYPE)
                .header(events::SIGNATURE_HEADER, &signature)
                .body(encoded.body.clone())
                .send()
                .await;
            let (http_status, error) = match answer {
                Ok(response) => (Some(response.status()), None),
                Err(error) => (None, Some(describe(error))),
            };
            let delivered = http_status.is_some_and(|s| s.is_success());
            self.update(&encoded.id, |r| {
                r.attempts = attempt;
                r.last_http_status = http_status.map(|s| s.as_u16());
                r.last_error.clone_from(&error);
                r.delivered = delivered;
            });
            if delivered {
                tracing::debug!(
                    event_id = %encoded.id,
                    verification_sid = %job.verification_sid,
                    message_status = status.wire(),
                    attempt,
                    "sandbox.events.posted"
                );
                return;
            }
            tracing::warn!(
                event_id = %encoded.id,
                verification_sid = %job.verification_sid,
                message_status = status.wire(),
                attempt,
                http_status = http_status.map(|s| s.as_u16()),
                error = error.as_deref(),
                "sandbox.events.post_failed"
            );
            if attempt < EVENT_POST_ATTEMPTS {
                tokio::time::sleep(backoff(self.retry_delay, attempt)).await;
            }
        }
        tracing::error!(
            event_id = %encoded.id,
            verification_sid = %job.verification_sid,
            message_status = status.wire(),
            attempts = EVENT_POST_ATTEMPTS,
            "sandbox.events.gave_up"
        );
    }

    fn record(&self, record: Record) {
        if self.log_capacity == 0 {
            return;
        }
        let mut log = lock(&self.log);
        log.push_front(record);
        log.truncate(self.log_capacity);
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut Record)) {
        // The record may already have been pushed out of the bounded log.
        if let Some(record) = lock(&self.log).iter_mut().find(|r| r.id == id) {
            change(record);
        }
    }
}

/// The wait after failed attempt `attempt` (1-based): `base`, then twice as long each time.
fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
}

/// A transport error with its causes, without the URL (which may carry a secret).
fn describe(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "request"
    };
    let error = error.without_url();
    let mut text = format!("{kind}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_about_ten_seconds_over_five_attempts() {
        let base = crate::config::DEFAULT_EVENT_RETRY_DELAY;
        let waits: Vec<Duration> = (1..EVENT_POST_ATTEMPTS).map(|a| backoff(base, a)).collect();
        assert_eq!(
            waits,
            [
                Duration::from_millis(625),
                Duration::from_millis(1250),
                Duration::from_millis(2500),
                Duration::from_millis(5000)
            ]
        );
        assert_eq!(waits.iter().sum::<Duration>(), Duration::from_millis(9375));
        // Absurd attempt numbers neither overflow nor panic.
        assert!(backoff(base, u32::MAX) >= backoff(base, 16));
    }
}
