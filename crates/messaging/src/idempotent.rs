//! Idempotent consumers: [`Idempotent`] wraps a handler so each message id is handled once
//! per consumer, however often the bus delivers it, with the memory of handled ids in a
//! `DedupeStore` ([`MemoryDedupeStore`] here; a database-backed one survives restarts and is
//! shared by replicas).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::events::{
    Claim, DedupeError, DedupeStore, Delivery, EventHandler, HandlerError, MessageId,
};
use tracing::{debug, warn};

use crate::rules::call_handler;

/// A handler that skips message ids its consumer has already handled.
///
/// A message is claimed before the inner handler runs and completed after it succeeded; a
/// failure releases the claim so the retry can run it again. A second delivery that arrives
/// while the first is still being handled gets a retryable error (and comes back after the
/// retry delay, when it is a plain duplicate).
#[derive(Debug)]
pub struct Idempotent {
    consumer: String,
    inner: Arc<dyn EventHandler>,
    store: Arc<dyn DedupeStore>,
    stats: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    handled: AtomicU64,
    duplicates: AtomicU64,
    busy: AtomicU64,
}

/// What an [`Idempotent`] handler has seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdempotentStats {
    /// Messages the inner handler completed.
    pub handled: u64,
    /// Deliveries skipped because their id was already handled.
    pub duplicates: u64,
    /// Deliveries sent back because the same id was being handled at that moment.
    pub busy: u64,
}

impl Idempotent {
    /// `consumer` scopes the ids, usually the subscription's queue name: every subscriber
    /// handles each message once.
    pub fn new(
        consumer: impl Into<String>,
        inner: Arc<dyn EventHandler>,
        store: Arc<dyn DedupeStore>,
    ) -> Self {
        Idempotent {
            consumer: consumer.into(),
            inner,
            store,
            stats: Counters::default(),
        }
    }

    pub fn stats(&self) -> IdempotentStats {
        IdempotentStats {
            handled: self.stats.handled.load(Ordering::Relaxed),
            duplicates: self.stats.duplicates.load(Ordering::Relaxed),
            busy: self.stats.busy.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl EventHandler for Idempotent {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let id = delivery.envelope.message_id;
        match self
            .store
            .claim(&self.consumer, id)
            .await
            .map_err(HandlerError::retryable)?
        {
            Claim::Done => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                debug!(message_id = %id, "already handled; skipping");
                return Ok(());
            }
            Claim::Busy => {
                self.stats.busy.fetch_add(1, Ordering::Relaxed);
                return Err(HandlerError::retryable(
                    "another delivery of this message is being handled",
                ));
            }
            Claim::Acquired => {}
        }
        // In a task of its own, so a panicking handler still releases the claim.
        match call_handler(Arc::clone(&self.inner), delivery.clone()).await {
            Ok(()) => {
                self.stats.handled.fetch_add(1, Ordering::Relaxed);
                if let Err(error) = self.store.complete(&self.consumer, id).await {
                    // The effect happened, so acknowledge anyway: a retry now would repeat
                    // it. The claim stays taken until its lease ends.
                    warn!(message_id = %id, %error, "could not record the message as handled");
                }
                Ok(())
            }
            Err(error) => {
                if let Err(release) = self.store.release(&self.consumer, id).await {
                    warn!(message_id = %id, error = %release, "could not release the claim; a retry waits for its lease");
                }
                Err(error)
            }
        }
    }
}

/// A bounded in-memory `DedupeStore`: remembers the last `capacity` handled ids (all
/// consumers together, oldest forgotten first) and claims in progress. A claim older than
/// `lease` counts as abandoned and can be taken again. Lost on restart and not shared between
/// processes, so it fits the embedded mode and tests; a replica set needs a shared store.
#[derive(Debug)]
pub struct MemoryDedupeStore {
    capacity: usize,
    lease: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<(String, MessageId), Entry>,
    /// Handled ids in the order they were completed, for eviction.
    done: VecDeque<(String, MessageId)>,
}

#[derive(Debug, Clone, Copy)]
enum Entry {
    InProgress(Instant),
    Done,
}

impl MemoryDedupeStore {
    pub fn new(capacity: usize, lease: Duration) -> Self {
        MemoryDedupeStore {
            capacity: capacity.max(1),
            lease,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>, DedupeError> {
        self.state
            .lock()
            .map_err(|_| DedupeError("the in-memory dedupe store is poisoned".into()))
    }
}

#[async_trait]
impl DedupeStore for MemoryDedupeStore {
    async fn claim(&self, consumer: &str, message_id: MessageId) -> Result<Claim, DedupeError> {
        let mut state = self.state()?;
        let key = (consumer.to_owned(), message_id);
        match state.entries.get(&key) {
            Some(Entry::Done) => Ok(Claim::Done),
            Some(Entry::InProgress(since)) if since.elapsed() < self.lease => Ok(Claim::Busy),
            _ => {
                state.entries.insert(key, Entry::InProgress(Instant::now()));
                Ok(Claim::Acquired)
            }
        }
    }

    async fn complete(&self, consumer: &str, message_id: MessageId) -> Result<(), DedupeError> {
        let mut state = self.state()?;
        let key = (consumer.to_owned(), message_id);
        if let Some(Entry::Done) = state.entries.insert(key.clone(), Entry::Done) {
            return Ok(());
        }
        state.done.push_back(key);
        while state.done.len() > self.capacity {
            if let Some(oldest) = state.done.pop_front() {
                state.entries.remove(&oldest);
            }
        }
        Ok(())
    }

    async fn release(&self, consumer: &str, message_id: MessageId) -> Result<(), DedupeError> {
        let mut state = self.state()?;
        let key = (consumer.to_owned(), message_id);
        if let Some(Entry::InProgress(_)) = state.entries.get(&key) {
            state.entries.remove(&key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn id(n: u128) -> MessageId {
        MessageId::from_uuid(Uuid::from_u128(n))
    }

    #[tokio::test]
    async fn claims_complete_release_and_evict() -> Result<(), DedupeError> {
        let store = MemoryDedupeStore::new(2, Duration::from_secs(60));
        assert_eq!(store.claim("q", id(1)).await?, Claim::Acquired);
        assert_eq!(store.claim("q", id(1)).await?, Claim::Busy);
        // Another consumer handles the same message on its own.
        assert_eq!(store.claim("other", id(1)).await?, Claim::Acquired);
        store.release("q", id(1)).await?;
        assert_eq!(store.claim("q", id(1)).await?, Claim::Acquired);
        store.complete("q", id(1)).await?;
        assert_eq!(store.claim("q", id(1)).await?, Claim::Done);

        for n in [2, 3] {
            assert_eq!(store.claim("q", id(n)).await?, Claim::Acquired);
            store.complete("q", id(n)).await?;
        }
        // Capacity 2: id 1 was forgotten first.
        assert_eq!(store.claim("q", id(1)).await?, Claim::Acquired);
        assert_eq!(store.claim("q", id(3)).await?, Claim::Done);
        Ok(())
    }

    /// Fails the first call, then succeeds, each after `pause`; counts calls.
    #[derive(Debug)]
    struct Flaky {
        calls: AtomicU64,
        pause: Duration,
    }

    #[async_trait]
    impl EventHandler for Flaky {
        async fn handle(&self, _delivery: &Delivery) -> Result<(), HandlerError> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.pause).await;
            if call == 0 {
                return Err(HandlerError::retryable("first call fails"));
            }
            Ok(())
        }
    }

    fn delivery(n: u128) -> Delivery {
        use domain::events::{Envelope, EventKind};
        let kind = EventKind::parse("test.event").expect("valid kind");
        Delivery {
            envelope: Envelope::new(id(n), kind, 1, chrono::DateTime::UNIX_EPOCH, Vec::new()),
            attempt: 1,
        }
    }

    #[tokio::test]
    async fn handles_each_id_once() {
        let inner = Arc::new(Flaky {
            calls: AtomicU64::new(0),
            pause: Duration::from_millis(100),
        });
        let store = Arc::new(MemoryDedupeStore::new(10, Duration::from_secs(60)));
        let handler = Arc::new(Idempotent::new("q", inner.clone(), store));

        // A failure releases the claim, so the retry runs the handler again.
        assert!(handler.handle(&delivery(1)).await.is_err());
        // A copy that arrives while the first is being handled is sent back to retry.
        let first = tokio::spawn({
            let handler = Arc::clone(&handler);
            async move { handler.handle(&delivery(1)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(matches!(
            handler.handle(&delivery(1)).await,
            Err(HandlerError::Retryable(_))
        ));
        assert_eq!(first.await.expect("no panic"), Ok(()));
        // Once handled, copies are acknowledged without running the handler.
        assert_eq!(handler.handle(&delivery(1)).await, Ok(()));
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            handler.stats(),
            IdempotentStats {
                handled: 1,
                duplicates: 1,
                busy: 1
            }
        );
    }

    #[tokio::test]
    async fn abandoned_claims_expire() -> Result<(), DedupeError> {
        let store = MemoryDedupeStore::new(10, Duration::ZERO);
        assert_eq!(store.claim("q", id(1)).await?, Claim::Acquired);
        assert_eq!(store.claim("q", id(1)).await?, Claim::Acquired);
        Ok(())
    }
}
