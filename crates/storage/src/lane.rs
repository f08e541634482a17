//! Group execution: concurrent calls of one kind of statement share one statement.
//!
//! On PostgreSQL most of a single-row statement's cost is not the row: it is the round
//! trip (a wake-up of the server's backend and of the caller on each side), starting the
//! executor, and preparing the table's `CHECK` constraints, which the server does once per
//! statement. A [`Lane`] takes calls of one kind (say, optimistic updates of
//! verifications), and while earlier batches are running it queues the calls that arrive;
//! the next batch then carries all of them in one statement whose inputs are arrays. Under
//! light load a call goes out at once, alone, as before; under heavy load the statements
//! per call fall with the queue's length, with no timer and so no added wait.
//!
//! A batch is one statement, so one implicit transaction: a failure (a lost connection, a
//! row refused by a constraint) would fail every call in it. The runner therefore runs the
//! calls of a failed batch again one by one, so each call gets its own outcome as if it had
//! been alone.

use std::future::Future;
use std::sync::Arc;

use domain::ports::StoreError;
use tokio::sync::{Semaphore, mpsc, oneshot};

use domain::abuse::{BlockTarget, CountQuery};

use crate::row::{GuardedRow, SignalRow, VerificationRow};

/// How many calls wait for a batch at most; past it callers wait to queue (backpressure).
const QUEUE: usize = 1024;

/// One call waiting in a lane: its input and where its outcome goes.
struct Call<I, O> {
    input: I,
    reply: oneshot::Sender<Result<O, StoreError>>,
}

/// A queue of calls of one kind and the task that runs them in batches. Cloning shares it;
/// the task ends when the last clone is dropped.
#[derive(Debug)]
pub(crate) struct Lane<I, O> {
    name: &'static str,
    queue: mpsc::Sender<Call<I, O>>,
}

impl<I, O> Clone for Lane<I, O> {
    fn clone(&self) -> Self {
        Lane {
            name: self.name,
            queue: self.queue.clone(),
        }
    }
}

/// The lanes a store's [`crate::repo::Repo`] sends its hottest statements through (on
/// PostgreSQL, `postgres::lanes` makes them).
#[derive(Debug, Clone)]
pub(crate) struct Lanes {
    /// A start's insert guarded by its limits; what the takes left and whether the row was
    /// written.
    pub(crate) insert: Lane<GuardedInsert, GuardedRow>,
    /// An optimistic update: the row and the version it must still have; whether it was
    /// written.
    pub(crate) update: Lane<(VerificationRow, i64), bool>,
    /// An optimistic update guarded by its limits (a check's claim); `None` when the row
    /// was not at the expected version (nothing taken), else what the takes left and
    /// whether the row was written.
    pub(crate) guarded_update: Lane<GuardedUpdate, Option<GuardedRow>>,
    /// A read by id.
    pub(crate) get: Lane<String, Option<VerificationRow>>,
    /// A read of scoring's signals; the rows of `READ_SIGNALS` for it.
    pub(crate) signals: Lane<SignalsRead, Vec<SignalRow>>,
}

/// A read of scoring's signals: the sums of `queries`, the blocks in force at `now_ms` on
/// `targets`, and `replica`'s last write of counters.
#[derive(Debug)]
pub(crate) struct SignalsRead {
    pub(crate) queries: Vec<CountQuery>,
    pub(crate) targets: Vec<BlockTarget>,
    pub(crate) now_ms: i64,
    pub(crate) replica: String,
}

/// A start's insert guarded by one round of takes.
#[derive(Debug)]
pub(crate) struct GuardedInsert {
    pub(crate) row: VerificationRow,
    /// When the takes happen, in milliseconds since the Unix epoch.
    pub(crate) now_ms: i64,
    /// The takes, as the JSON input of `take_rate_limits`.
    pub(crate) take: String,
}

/// An optimistic update guarded by one round of takes.
#[derive(Debug)]
pub(crate) struct GuardedUpdate {
    pub(crate) row: VerificationRow,
    /// The version the row must still have.
    pub(crate) expected_version: i64,
    /// When the takes happen, in milliseconds since the Unix epoch.
    pub(crate) now_ms: i64,
    /// The takes, as the JSON input of `take_rate_limits`.
    pub(crate) take: String,
}

/// How a lane forms and runs its batches.
pub(crate) trait Batch: Send + Sync + 'static {
    /// A call's input.
    type Input: Send + Sync + 'static;
    /// A call's outcome.
    type Output: Send + 'static;

    /// Whether `next` may join the batch `inputs` (for example, not a second update of a
    /// row the batch updates already); when not, it starts the next batch.
    fn admits(&self, inputs: &[Self::Input], next: &Self::Input) -> bool;

    /// Runs `inputs` as one statement and returns one outcome per input, in their order;
    /// `Err` fails the whole batch (see [`Batch::run_one`]).
    fn run(
        &self,
        inputs: &[Self::Input],
    ) -> impl Future<Output = Result<Vec<Self::Output>, StoreError>> + Send;

    /// Runs one input alone: what a call gets when the batch it was in failed.
    fn run_one(
        &self,
        input: &Self::Input,
    ) -> impl Future<Output = Result<Self::Output, StoreError>> + Send;
}

impl<I: Send + Sync + 'static, O: Send + 'static> Lane<I, O> {
    /// Starts the lane's task on the current runtime: at most `in_flight` batches run at
    /// once, each of at most `max_batch` calls.
    pub(crate) fn spawn<B>(name: &'static str, batch: B, in_flight: usize, max_batch: usize) -> Self
    where
        B: Batch<Input = I, Output = O>,
    {
        let (queue, calls) = mpsc::channel(QUEUE);
        tokio::spawn(drive(
            Arc::new(batch),
            calls,
            in_flight.max(1),
            max_batch.max(1),
        ));
        Lane { name, queue }
    }

    /// Queues `input` and waits for its outcome.
    pub(crate) async fn call(&self, input: I) -> Result<O, StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Call { input, reply })
            .await
            .map_err(|_| self.stopped())?;
        outcome.await.map_err(|_| self.stopped())?
    }

    fn stopped(&self) -> StoreError {
        StoreError::Unavailable(format!("the store's {} lane has stopped", self.name))
    }
}

/// The lane's task: takes a slot for a batch, waits for a first call, adds every call
/// queued behind it (up to the batch's size, and while [`Batch::admits`] them), and runs
/// the batch on a task of its own, so up to `in_flight` run at once.
async fn drive<B: Batch>(
    batch: Arc<B>,
    mut calls: mpsc::Receiver<Call<B::Input, B::Output>>,
    in_flight: usize,
    max_batch: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut held: Option<Call<B::Input, B::Output>> = None;
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let first = match held.take() {
            Some(call) => call,
            None => match calls.recv().await {
                Some(call) => call,
                None => return,
            },
        };
        let mut inputs = vec![first.input];
        let mut replies = vec![first.reply];
        while inputs.len() < max_batch {
            let Ok(call) = calls.try_recv() else { break };
            if batch.admits(&inputs, &call.input) {
                inputs.push(call.input);
                replies.push(call.reply);
            } else {
                held = Some(call);
                break;
            }
        }
        let batch = Arc::clone(&batch);
        tokio::spawn(async move {
            run(&*batch, inputs, replies).await;
            drop(slot);
        });
    }
}

/// Runs one batch and hands each call its outcome; a failed batch of several calls is run
/// again one call at a time, and a batch of one call is run as that call alone.
async fn run<B: Batch>(
    batch: &B,
    inputs: Vec<B::Input>,
    replies: Vec<oneshot::Sender<Result<B::Output, StoreError>>>,
) {
    if inputs.len() > 1 {
        match batch.run(&inputs).await {
            Ok(outcomes) if outcomes.len() == inputs.len() => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    // The caller may have gone (its request was cancelled); the write stands.
                    let _ = reply.send(Ok(outcome));
                }
                return;
            }
            Ok(outcomes) => {
                tracing::error!(
                    calls = inputs.len(),
                    outcomes = outcomes.len(),
                    "a batch returned the wrong number of outcomes; running its calls alone"
                );
            }
            Err(error) => {
                tracing::debug!(calls = inputs.len(), %error, "a batch failed; running its calls alone");
            }
        }
    }
    for (input, reply) in inputs.iter().zip(replies) {
        let _ = reply.send(batch.run_one(input).await);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    /// Doubles numbers and records each batch; fails a batch holding 13, and 13 alone.
    #[derive(Clone, Default)]
    struct Doubler {
        batches: Arc<Mutex<Vec<Vec<u32>>>>,
    }

    impl Batch for Doubler {
        type Input = u32;
        type Output = u32;

        fn admits(&self, inputs: &[u32], next: &u32) -> bool {
            !inputs.contains(next)
        }

        async fn run(&self, inputs: &[u32]) -> Result<Vec<u32>, StoreError> {
            self.batches
                .lock()
                .expect("not poisoned")
                .push(inputs.to_vec());
            tokio::time::sleep(Duration::from_millis(20)).await;
            if inputs.contains(&13) {
                return Err(StoreError::Unavailable("13 in the batch".to_owned()));
            }
            Ok(inputs.iter().map(|n| n * 2).collect())
        }

        async fn run_one(&self, input: &u32) -> Result<u32, StoreError> {
            self.batches
                .lock()
                .expect("not poisoned")
                .push(vec![*input]);
            if *input == 13 {
                return Err(StoreError::Unavailable("13".to_owned()));
            }
            Ok(input * 2)
        }
    }

    /// A lane of one slot and batches of at most four, and the record of its batches.
    fn lane() -> (Lane<u32, u32>, Doubler) {
        let doubler = Doubler::default();
        (Lane::spawn("test", doubler.clone(), 1, 4), doubler)
    }

    async fn call_all(lane: &Lane<u32, u32>, inputs: &[u32]) -> Vec<Result<u32, StoreError>> {
        let calls = inputs.iter().map(|&n| {
            let lane = lane.clone();
            tokio::spawn(async move { lane.call(n).await })
        });
        let mut outcomes = Vec::new();
        for call in calls.collect::<Vec<_>>() {
            outcomes.push(call.await.expect("the call task ran"));
        }
        outcomes
    }

    #[tokio::test]
    async fn a_call_alone_runs_at_once_by_itself() {
        let (lane, doubler) = lane();
        assert_eq!(lane.call(21).await.expect("doubled"), 42);
        assert_eq!(
            *doubler.batches.lock().expect("not poisoned"),
            vec![vec![21]]
        );
    }

    #[tokio::test]
    async fn calls_queued_behind_a_running_batch_share_the_next_one() {
        let (lane, doubler) = lane();
        let outcomes = call_all(&lane, &[1, 2, 3, 4, 5, 6]).await;
        let doubled: Vec<u32> = outcomes.into_iter().filter_map(Result::ok).collect();
        assert_eq!(doubled, vec![2, 4, 6, 8, 10, 12]);
        let batches = doubler.batches.lock().expect("not poisoned").clone();
        // The first call runs alone (nothing queued yet); the five behind it wait for the one
        // slot and then go as batches of at most four.
        assert!(batches.len() < 6, "{batches:?}");
        assert!(batches.iter().all(|b| b.len() <= 4), "{batches:?}");
        let mut all: Vec<u32> = batches.concat();
        all.sort_unstable();
        assert_eq!(all, vec![1, 2, 3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn an_input_the_batch_does_not_admit_starts_the_next_batch() {
        let (lane, doubler) = lane();
        let outcomes = call_all(&lane, &[1, 7, 7, 7]).await;
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        let batches = doubler.batches.lock().expect("not poisoned").clone();
        assert!(
            batches
                .iter()
                .all(|b| b.iter().filter(|&&n| n == 7).count() <= 1),
            "{batches:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_batch_is_run_again_one_call_at_a_time() {
        let (lane, doubler) = lane();
        let outcomes = call_all(&lane, &[1, 2, 13, 4]).await;
        assert!(matches!(outcomes[0], Ok(2)), "{outcomes:?}");
        assert!(matches!(outcomes[1], Ok(4)), "{outcomes:?}");
        assert!(matches!(outcomes[2], Err(StoreError::Unavailable(_))));
        assert!(matches!(outcomes[3], Ok(8)), "{outcomes:?}");
        let batches = doubler.batches.lock().expect("not poisoned").clone();
        assert!(
            batches.iter().any(|b| b.len() > 1 && b.contains(&13)),
            "{batches:?}"
        );
        assert!(batches.contains(&vec![13]), "{batches:?}");
    }
}
