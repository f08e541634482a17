//! The database failing under a load of starts: PostgreSQL (a cluster of the test's own)
//! stopped and started again, and the SQLite file held by another writer. Meanwhile calls
//! answer UNAVAILABLE within the request timeout; afterwards the gateway serves again
//! without a restart, and nothing is half-written: every start answered OK has its Twilio id
//! and sent one code, and a start answered with an error, retried with its key, sends no
//! second code.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::verify::v1 as pb;
use proto::verify::v1::verify_service_client::VerifyServiceClient;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

use crate::harness::{Harness, eventually};
use crate::outages::{Behaviour, Create, FlakyTwilio, start_with_key};
use crate::shutdown::{VERIFY_SERVICE, health_of};

/// The server ends a call after this long. A call waits at most 5 s for a PostgreSQL
/// connection, or for SQLite's lock on the file after at most 5 s in the writer's queue,
/// and a confirmed send is recorded in up to three tries: no call should come near it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Concurrent callers of the load.
const CALLERS: usize = 4;
/// Each caller's pause between two starts: the load is steady, not a flood.
const PACE: Duration = Duration::from_millis(25);
/// Starts that must succeed before the fault, and again after it.
const WARM: usize = 20;

/// Health pinged often, the request timeout above, and no limit or scoring that a burst
/// of starts from one range and country would meet.
fn config() -> String {
    format!(
        "[server]\nrequest_timeout_seconds = {}\ndatabase_ping_interval_ms = 200\n\
         database_ping_timeout_ms = 500\n\
         [rate_limits]\nsend_per_range = \"off\"\nsend_per_country = \"off\"\n\
         [fraud]\nmode = \"off\"\n",
        REQUEST_TIMEOUT.as_secs()
    )
}

/// One start of the load: to whom, with which key, what it answered and when.
#[derive(Debug)]
struct Outcome {
    to: String,
    key: String,
    began: Instant,
    took: Duration,
    answer: Result<pb::Verification, tonic::Status>,
}

/// Starts to distinct numbers, each with a key of its own, from a few concurrent callers
/// until finished.
struct Load {
    client: VerifyServiceClient<Channel>,
    next: Arc<AtomicUsize>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: Arc<AtomicBool>,
    callers: Vec<JoinHandle<()>>,
}

/// Starts the `n`th number of the load with its own key.
async fn one_start(client: &mut VerifyServiceClient<Channel>, n: usize) -> Outcome {
    let to = format!("+1415555{:04}", 2000 + n);
    let key = format!("load-{n}");
    let began = Instant::now();
    // A call the server did not end by its request timeout hangs.
    let answer = tokio::time::timeout(
        REQUEST_TIMEOUT + Duration::from_secs(5),
        client.start_verification(start_with_key(&to, &key)),
    )
    .await
    .unwrap_or_else(|_| panic!("a start to {to} hung past the request timeout"))
    .map(|r| r.into_inner().verification.expect("verification"));
    Outcome {
        to,
        key,
        began,
        took: began.elapsed(),
        answer,
    }
}

impl Load {
    fn start(h: &Harness) -> Load {
        let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicUsize::new(0));
        let callers = (0..CALLERS)
            .map(|_| {
                let (mut client, outcomes) = (h.client.clone(), Arc::clone(&outcomes));
                let (stop, next) = (Arc::clone(&stop), Arc::clone(&next));
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let n = next.fetch_add(1, Ordering::SeqCst);
                        let outcome = one_start(&mut client, n).await;
                        outcomes.lock().expect("not poisoned").push(outcome);
                        tokio::time::sleep(PACE).await;
                    }
                })
            })
            .collect();
        Load {
            client: h.client.clone(),
            next,
            outcomes,
            stop,
            callers,
        }
    }

    /// How many starts that began after `since` answered OK.
    fn succeeded_since(&self, since: Instant) -> usize {
        let outcomes = self.outcomes.lock().expect("not poisoned");
        outcomes
            .iter()
            .filter(|o| o.began >= since && o.answer.is_ok())
            .count()
    }

    /// Waits until `n` starts that began after `since` answered OK.
    async fn succeeds(&self, since: Instant, n: usize, what: &str) {
        eventually(Duration::from_secs(20), what, || {
            let ok = self.succeeded_since(since);
            async move { ok >= n }
        })
        .await;
    }

    /// One more start, made now beside the load and counted with it: how the gateway
    /// answers a call made while the fault lasts, however busy the callers of the load
    /// are with calls made before it.
    async fn probe(&self) -> Result<pb::Verification, tonic::Status> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let outcome = one_start(&mut self.client.clone(), n).await;
        let answer = outcome.answer.clone();
        self.outcomes.lock().expect("not poisoned").push(outcome);
        answer
    }

    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        for caller in self.callers {
            caller.await.expect("a caller of the load failed");
        }
        Arc::into_inner(self.outcomes)
            .expect("the callers are done")
            .into_inner()
            .expect("not poisoned")
    }
}

async fn health_is(channel: &Channel, want: ServingStatus) -> bool {
    health_of(channel, "").await == Some(want)
        && health_of(channel, VERIFY_SERVICE).await == Some(want)
}

async fn health_channel(h: &Harness) -> Channel {
    Channel::from_shared(format!("http://{}", h.grpc_addr))
        .expect("uri")
        .connect()
        .await
        .expect("connects")
}

/// What a fault must leave: every call answered OK or UNAVAILABLE (the store's reason)
/// within the request timeout; every start answered OK has its Twilio id and sent exactly
/// one code; every start answered with an error, retried with its key, answers without a
/// second code: with the verification it left, or a clean start.
///
/// A start whose send Twilio confirmed while none of the three writes of its id got
/// through answered UNAVAILABLE too; its id is written in the background once the store
/// answers again, and then its key answers the verification.
async fn nothing_half_written(h: &Harness, twilio: &FlakyTwilio, outcomes: &[Outcome]) {
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
    assert!(
        slowest < REQUEST_TIMEOUT,
        "a call took {slowest:?}, up to the request timeout"
    );
    let mut failed = Vec::new();
    for o in outcomes {
        let Err(e) = &o.answer else { continue };
        let reason = e.get_error_details().error_info().map(|i| i.reason.clone());
        assert_eq!(
            (e.code(), reason.as_deref()),
            (Code::Unavailable, Some("STORE_UNAVAILABLE")),
            "a start to {} answered after {:?}: {e:?}",
            o.to,
            o.took
        );
        failed.push(o);
    }

    let rows = h.verifications().await;
    let by_id: HashMap<&str, Option<&str>> = rows
        .iter()
        .map(|(id, _, _, sid)| (id.as_str(), sid.as_deref()))
        .collect();
    for o in outcomes {
        let Ok(v) = &o.answer else { continue };
        let sid = by_id
            .get(v.id.as_str())
            .unwrap_or_else(|| panic!("no row for {}, answered OK", v.id));
        assert!(
            sid.is_some_and(|s| s.starts_with("VE")),
            "{} answered OK without its Twilio id stored: {sid:?}",
            v.id
        );
        assert_eq!(twilio.sent_to(&o.to), 1, "codes sent to {}", o.to);
    }

    // A start whose code went out but whose record could not be written in the fault gets
    // its record once the store answers again, without anyone asking.
    let sent_unrecorded: Vec<&str> = failed
        .iter()
        .filter(|o| twilio.sent_to(&o.to) == 1)
        .filter_map(|o| {
            rows.iter()
                .find(|(_, key, status, sid)| {
                    key.as_deref() == Some(o.key.as_str()) && status == "pending" && sid.is_none()
                })
                .map(|(id, ..)| id.as_str())
        })
        .collect();
    eventually(
        Duration::from_secs(20),
        "confirmed sends recorded after the fault",
        || async {
            let now = h.verifications().await;
            sent_unrecorded.iter().all(|id| {
                now.iter().any(|(row, _, _, sid)| {
                    row == id && sid.as_deref().is_some_and(|s| s.starts_with("VE"))
                })
            })
        },
    )
    .await;
    let rows = h.verifications().await;

    let mut replayed = 0;
    for o in &failed {
        let left = rows
            .iter()
            .find(|(_, key, _, _)| key.as_deref() == Some(o.key.as_str()));
        // Retried with its key after the fault, a start answers the verification it left,
        // or, when it left none, starts one.
        let again = h
            .start_req(start_with_key(&o.to, &o.key))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the start to {} failed in the fault; retried with its key after it, it \
                     answers {e:?} (its row: {left:?})",
                    o.to
                )
            });
        assert_eq!(again.status(), pb::VerificationStatus::Pending, "{again:?}");
        if let Some((id, ..)) = left {
            assert_eq!(&again.id, id, "the key answers the verification it holds");
            replayed += 1;
        }
        assert_eq!(twilio.sent_to(&o.to), 1, "codes sent to {}", o.to);
    }
    println!(
        "{} starts: {} OK, {} UNAVAILABLE (slowest call {slowest:.1?}), {} of them with the \
         code sent and recorded only after the fault; retried with their keys: {replayed} \
         answered the verification left, {} started anew",
        outcomes.len(),
        outcomes.len() - failed.len(),
        failed.len(),
        sent_unrecorded.len(),
        failed.len() - replayed
    );
}

/// PostgreSQL stopped (immediate mode) and started again in the middle of a steady load of
/// starts: UNAVAILABLE and NOT_SERVING while it is down, SERVING and starts that succeed
/// once it is back, without restarting the gateway, and nothing half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_restart_under_load_is_unavailable_then_recovers_with_nothing_half_written() {
    let pg = testkit::PrivatePostgres::start()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let twilio = FlakyTwilio::start(Behaviour {
        create_latency: Duration::from_millis(20),
        ..Behaviour::default()
    })
    .await;
    let h = twilio.gateway_at(Some(pg.url.clone()), "", &config()).await;
    let health = health_channel(&h).await;
    let load = Load::start(&h);
    load.succeeds(Instant::now(), WARM, "starts succeed before the outage")
        .await;

    pg.stop(testkit::StopMode::Immediate)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    eventually(
        Duration::from_secs(10),
        "NOT_SERVING while PostgreSQL is down",
        || health_is(&health, ServingStatus::NotServing),
    )
    .await;
    let probe = load.probe().await.expect_err("PostgreSQL is down");
    assert_eq!(probe.code(), Code::Unavailable, "{probe:?}");
    assert!(
        health_is(&health, ServingStatus::NotServing).await,
        "NOT_SERVING for as long as PostgreSQL is down"
    );

    pg.start_again()
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", pg.log()));
    let up = Instant::now();
    eventually(
        Duration::from_secs(20),
        "SERVING once PostgreSQL is back",
        || health_is(&health, ServingStatus::Serving),
    )
    .await;
    load.succeeds(up, WARM, "starts succeed once PostgreSQL is back")
        .await;
    let outcomes = load.finish().await;
    nothing_half_written(&h, &twilio, &outcomes).await;
    h.shutdown().await;
}

/// The SQLite file held by another process's write transaction (`BEGIN EXCLUSIVE`, as an
/// operator's `sqlite3` shell or a backup tool might) in the middle of a steady load of
/// starts: the starts that cannot write answer UNAVAILABLE within the request timeout, and
/// once the lock is gone starts succeed again without a restart, with nothing
/// half-written. (Health stays SERVING: reads go on beside the lock, see the module doc
/// of `storage::sqlite::engine`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_sqlite_file_locked_by_another_writer_is_unavailable_then_recovers_with_nothing_half_written()
 {
    use sqlx::Connection;
    let twilio = FlakyTwilio::start(Behaviour {
        create_latency: Duration::from_millis(20),
        ..Behaviour::default()
    })
    .await;
    let h = twilio.gateway_at(None, "", &config()).await;
    let health = health_channel(&h).await;
    let load = Load::start(&h);
    load.succeeds(Instant::now(), WARM, "starts succeed before the lock")
        .await;

    let mut other = sqlx::SqliteConnection::connect(&h.database_url)
        .await
        .expect("the file opens");
    sqlx::raw_sql("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .expect("the other writer takes the lock");
    let probe = load.probe().await.expect_err("the file is locked");
    assert_eq!(probe.code(), Code::Unavailable, "{probe:?}");
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut other)
        .await
        .expect("the other writer lets go");
    let released = Instant::now();
    other.close().await.expect("closes");

    load.succeeds(released, WARM, "starts succeed once the lock is gone")
        .await;
    assert!(health_is(&health, ServingStatus::Serving).await);
    let outcomes = load.finish().await;
    nothing_half_written(&h, &twilio, &outcomes).await;
    h.shutdown().await;
}

/// Twilio confirms a send while PostgreSQL is down: the start cannot record the send's id
/// and answers UNAVAILABLE, though the code is out. Once PostgreSQL is back the id is
/// written without anyone asking, and a retry with the key answers that verification and
/// sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_send_confirmed_while_postgres_is_down_is_recorded_once_it_is_back() {
    const TO: &str = "+14155553001";
    const KEY: &str = "down-1";
    let pg = testkit::PrivatePostgres::start()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let twilio = FlakyTwilio::start(Behaviour {
        creates: vec![Create::SentSlowly(Duration::from_millis(1500))],
        ..Behaviour::default()
    })
    .await;
    let h = twilio
        .gateway_at(Some(pg.url.clone()), "timeout_ms = 5000", &config())
        .await;
    let mut client = h.client.clone();
    let start =
        tokio::spawn(async move { client.start_verification(start_with_key(TO, KEY)).await });
    // The row is written before the create; stopped while Twilio works on it, PostgreSQL
    // is down when the answer comes.
    eventually(Duration::from_secs(10), "the create reaches Twilio", || {
        let asked = twilio.creates.load(Ordering::SeqCst);
        async move { asked >= 1 }
    })
    .await;
    pg.stop(testkit::StopMode::Immediate)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let refused = start
        .await
        .expect("the call returns")
        .expect_err("the send cannot be recorded");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(twilio.sent_to(TO), 1, "the code is out");

    pg.start_again()
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", pg.log()));
    eventually(
        Duration::from_secs(30),
        "the confirmed send recorded",
        || async {
            h.verifications().await.iter().any(|(_, key, status, sid)| {
                key.as_deref() == Some(KEY)
                    && status == "pending"
                    && sid.as_deref().is_some_and(|s| s.starts_with("VE"))
            })
        },
    )
    .await;
    let again = h
        .start_req(start_with_key(TO, KEY))
        .await
        .expect("the key answers its verification");
    let rows = h.verifications().await;
    let (id, ..) = rows
        .iter()
        .find(|(_, key, _, _)| key.as_deref() == Some(KEY))
        .expect("its row");
    assert_eq!(&again.id, id);
    assert_eq!(again.status(), pb::VerificationStatus::Pending);
    assert_eq!(twilio.sent_to(TO), 1, "nothing sent again");
    h.shutdown().await;
}
