//! The in-process bus for the embedded mode: RabbitMQ's semantics on tokio channels and
//! timers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use domain::events::{BusError, Delivery, Envelope, EventBus, EventHandler, Subscription};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tracing::{Instrument, debug, info_span, warn};

use crate::DeadLetter;
use crate::rules::{
    Settle, call_handler, settle, topic_matches, validate_delay, validate_envelope,
    validate_subscription,
};

/// How many dead letters each queue keeps; older ones are dropped (with a warning) first.
const DEAD_LETTER_CAPACITY: usize = 10_000;

/// The in-process implementation of `EventBus`, so services behave the same in one process
/// as on a broker. Dropping it (or [`InProcessBus::close`]) stops its tasks.
///
/// The same as [`crate::RabbitBus`]: topic routing by kind, `Unroutable` when no queue
/// matches, delayed publishes routed when the delay ends, queues shared by subscribers of
/// the same name, at most `prefetch` handler calls at once per subscriber, retries after the
/// retry delay up to `max_attempts`, then dead letters (readable with
/// [`InProcessBus::take_dead_letters`]).
///
/// Different by nature: nothing is durable, so `publish` confirms only once every queue
/// the message was routed to has settled it (handled, or given up as a dead letter),
/// retries included: the in-memory stand-in for a broker's "stored durably". An outbox
/// relay therefore marks a message published only after it was handled, and a crash before
/// that leaves it in the outbox to be published again. Delayed messages (and a delayed
/// publish with no delay) and dead letters are in memory only and gone when the process
/// exits. Queues are unbounded, like a broker's. A `publish` from inside a handler waits
/// for its own message to be handled, so handlers publish with a delay. A `publish` still
/// waiting when the bus closes answers [`BusError::Closed`].
pub struct InProcessBus {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

struct Shared {
    queues: RwLock<BTreeMap<String, Arc<Queue>>>,
    stop: watch::Receiver<bool>,
}

struct Queue {
    name: String,
    bindings: RwLock<Vec<String>>,
    sender: mpsc::UnboundedSender<Job>,
    /// Shared by the subscribers of this queue, which compete for its messages.
    receiver: tokio::sync::Mutex<mpsc::UnboundedReceiver<Job>>,
    dead_letters: Mutex<VecDeque<DeadLetter>>,
}

struct Job {
    envelope: Envelope,
    attempt: u32,
    /// Told when the message is settled, for a `publish` waiting on it.
    settled: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queues: Vec<String> = self
            .shared
            .queues
            .read()
            .map(|q| q.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_struct("InProcessBus")
            .field("queues", &queues)
            .finish()
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessBus {
    pub fn new() -> Self {
        let (stop, stop_rx) = watch::channel(false);
        InProcessBus {
            shared: Arc::new(Shared {
                queues: RwLock::new(BTreeMap::new()),
                stop: stop_rx,
            }),
            stop,
        }
    }

    /// Stops delivering. Handlers already running finish; queued messages are dropped.
    pub fn close(&self) {
        self.stop.send_replace(true);
    }

    /// Removes and returns the dead letters of a subscription's queue.
    pub fn take_dead_letters(&self, queue: &str) -> Vec<DeadLetter> {
        self.shared
            .queue(queue)
            .and_then(|q| {
                q.dead_letters
                    .lock()
                    .ok()
                    .map(|mut d| d.drain(..).collect())
            })
            .unwrap_or_default()
    }

    fn ensure_open(&self) -> Result<(), BusError> {
        if *self.stop.borrow() {
            return Err(BusError::Closed);
        }
        Ok(())
    }
}

impl Shared {
    fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.read().ok()?.get(name).cloned()
    }

    /// Puts the envelope in every queue bound to its kind; `None` when there is none, else
    /// one receiver per queue, told when that queue has settled the message.
    fn route(&self, envelope: &Envelope) -> Option<Vec<oneshot::Receiver<()>>> {
        let queues = self.queues.read().ok()?;
        let mut settled = Vec::new();
        for queue in queues.values() {
            let bound = queue.bindings.read().is_ok_and(|bindings| {
                bindings
                    .iter()
                    .any(|b| topic_matches(b, envelope.kind.as_str()))
            });
            if bound {
                let (tell, told) = oneshot::channel();
                queue.push(envelope.clone(), 1, Some(tell));
                settled.push(told);
            }
        }
        (!settled.is_empty()).then_some(settled)
    }
}

impl Queue {
    fn push(&self, envelope: Envelope, attempt: u32, settled: Option<oneshot::Sender<()>>) {
        // The receiver lives as long as the queue, so sending cannot fail while `self` exists.
        let _ = self.sender.send(Job {
            envelope,
            attempt,
            settled,
        });
    }

    fn dead_letter(&self, dead: DeadLetter) {
        if let Ok(mut letters) = self.dead_letters.lock() {
            if letters.len() >= DEAD_LETTER_CAPACITY {
                warn!(queue = %self.name, "dead-letter queue full; dropping the oldest");
                letters.pop_front();
            }
            letters.push_back(dead);
        }
    }
}

#[async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, envelope: &Envelope) -> Result<(), BusError> {
        self.ensure_open()?;
        validate_envelope(envelope)?;
        let Some(settled) = self.shared.route(envelope) else {
            return Err(BusError::Unroutable(envelope.kind.to_string()));
        };
        let mut stop = self.shared.stop.clone();
        for told in settled {
            tokio::select! {
                outcome = told => outcome.map_err(|_| BusError::Closed)?,
                // Closed before the message was settled: not confirmed, so a relay keeps it
                // and publishes it again (consumers dedupe a handling that did finish).
                () = stopped(&mut stop) => return Err(BusError::Closed),
            }
        }
        Ok(())
    }

    async fn publish_delayed(&self, envelope: &Envelope, delay: Duration) -> Result<(), BusError> {
        self.ensure_open()?;
        validate_envelope(envelope)?;
        validate_delay(delay)?;
        // As on RabbitMQ, no delay is a plain publish (and can be unroutable), though one
        // that does not wait for the handling: handlers publish this way.
        if delay.is_zero() {
            return match self.shared.route(envelope) {
                Some(_) => Ok(()),
                None => Err(BusError::Unroutable(envelope.kind.to_string())),
            };
        }
        let shared = Arc::clone(&self.shared);
        let mut stop = self.shared.stop.clone();
        let envelope = envelope.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(delay) => {
                    // Like a delay queue expiring into the exchange: nobody bound means dropped.
                    if shared.route(&envelope).is_none() {
                        debug!(message_id = %envelope.message_id, kind = %envelope.kind, "delayed message unroutable; dropped");
                    }
                }
                () = stopped(&mut stop) => {}
            }
        });
        Ok(())
    }

    async fn subscribe(
        &self,
        subscription: Subscription,
        handler: Arc<dyn EventHandler>,
    ) -> Result<(), BusError> {
        self.ensure_open()?;
        validate_subscription(&subscription)?;
        let queue = {
            let mut queues = self
                .shared
                .queues
                .write()
                .map_err(|_| BusError::Invalid("the queue registry is poisoned".into()))?;
            let queue = queues
                .entry(subscription.queue.clone())
                .or_insert_with(|| {
                    let (sender, receiver) = mpsc::unbounded_channel();
                    Arc::new(Queue {
                        name: subscription.queue.clone(),
                        bindings: RwLock::new(Vec::new()),
                        sender,
                        receiver: tokio::sync::Mutex::new(receiver),
                        dead_letters: Mutex::new(VecDeque::new()),
                    })
                })
                .clone();
            // Bindings add up, as on a broker where each subscriber binds the same queue.
            if let Ok(mut bindings) = queue.bindings.write() {
                for binding in &subscription.bindings {
                    if !bindings.contains(binding) {
                        bindings.push(binding.clone());
                    }
                }
            }
            queue
        };
        let span = info_span!("messaging.consumer", queue = %subscription.queue);
        tokio::spawn(
            dispatch(
                queue,
                Arc::new(subscription),
                handler,
                self.shared.stop.clone(),
            )
            .instrument(span),
        );
        Ok(())
    }
}

/// Takes a queue's messages for one subscriber, at most `prefetch` in the handler at once.
async fn dispatch(
    queue: Arc<Queue>,
    subscription: Arc<Subscription>,
    handler: Arc<dyn EventHandler>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(usize::from(subscription.prefetch)));
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            () = stopped(&mut stop) => return,
        };
        // The semaphore is never closed.
        let Ok(slot) = slot else { return };
        let job = tokio::select! {
            job = async { queue.receiver.lock().await.recv().await } => job,
            () = stopped(&mut stop) => return,
        };
        let Some(job) = job else { return };
        // A root: the consumer loop lives as long as the bus, and one trace per message is
        // what a trace viewer can show; the handler joins the publisher's trace from the
        // envelope's `traceparent` header.
        let span = info_span!(
            parent: None,
            "messaging.handle",
            otel.kind = "consumer",
            queue = %subscription.queue,
            message_id = %job.envelope.message_id,
            kind = %job.envelope.kind,
            attempt = job.attempt,
        );
        tokio::spawn(
            handle(
                Arc::clone(&queue),
                Arc::clone(&subscription),
                Arc::clone(&handler),
                job,
                slot,
                stop.clone(),
            )
            .instrument(span),
        );
    }
}

async fn handle(
    queue: Arc<Queue>,
    subscription: Arc<Subscription>,
    handler: Arc<dyn EventHandler>,
    job: Job,
    slot: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let Job {
        envelope,
        attempt,
        settled,
    } = job;
    let delivery = Delivery {
        envelope: envelope.clone(),
        attempt,
    };
    let result = call_handler(handler, delivery).await;
    // The slot is freed when the handler is done: a retry waits outside the prefetch
    // window, as it does in a RabbitMQ retry queue.
    drop(slot);
    match settle(result, attempt, &subscription) {
        Settle::Ack => {
            if let Some(tell) = settled {
                let _ = tell.send(());
            }
        }
        Settle::Retry { next_attempt } => {
            debug!(next_attempt, "handler failed; retrying later");
            tokio::select! {
                () = tokio::time::sleep(subscription.retry_delay) => {
                    queue.push(envelope, next_attempt, settled);
                }
                () = stopped(&mut stop) => {}
            }
        }
        Settle::DeadLetter { reason } => {
            warn!(%reason, "handler gave up; dead-lettering");
            queue.dead_letter(DeadLetter {
                queue: subscription.queue.clone(),
                envelope,
                attempts: attempt,
                reason,
            });
            if let Some(tell) = settled {
                let _ = tell.send(());
            }
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}
