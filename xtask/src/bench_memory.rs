//! `cargo xtask bench memory [--destinations N]`: how the gateway's memory grows as it
//! meets N distinct destinations (default a million). N StartVerification calls and no
//! checks, each to its own valid US number from its own client IP, against the fixed-answer
//! upstream, with the shipped defaults (limits and fraud scoring on) except
//! `send_per_country`, which a million starts exceed.
//!
//! Printed every 100,000 starts (every tenth of N when N is smaller): starts per second
//! since the previous line, RSS and peak RSS; at the end the same over the whole run and
//! every non-OK answer by code. Ranges get about ⌈N / 28,000⌉ new numbers each and no
//! approvals, so fraud scoring's range signals may well ask for step-ups
//! (FAILED_PRECONDITION) or block (PERMISSION_DENIED) in a long run: refused starts are
//! still stored, and the counts say how many there were.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use proto::verify::v1 as pb;

use crate::bench::{Answers, Client, Load, Upstream, connect_all, spawn_gateway};
use crate::bench_measure;
use crate::bench_numbers::{Destinations, client_ip};
use crate::bench_upstream;

/// Prints a progress line every `every` starts, from the worker that completes it.
struct Progress {
    pid: u32,
    every: usize,
    done: AtomicUsize,
    refused: AtomicUsize,
    /// Starts done and the time at the previous line.
    last: Mutex<(usize, Instant)>,
}

impl Progress {
    fn one_done(&self, refused: bool) {
        if refused {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if done.is_multiple_of(self.every) {
            self.print(done);
        }
    }

    fn print(&self, done: usize) {
        // The lock keeps lines in order; a worker that panicked holding it takes progress
        // lines with it, not the run.
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        let now = Instant::now();
        let rate = done.saturating_sub(last.0) as f64 / now.duration_since(last.1).as_secs_f64();
        *last = (done, now);
        match bench_measure::memory(self.pid) {
            Ok(memory) => println!(
                "  {done:>9} starts   {rate:>6.0} starts/s   {}   non-OK so far {}",
                memory.describe(),
                self.refused.load(Ordering::Relaxed)
            ),
            Err(e) => eprintln!("reading the gateway's memory: {e:#}"),
        }
    }
}

pub(crate) async fn run(root: &Path, destinations: usize, load: &Load) -> anyhow::Result<()> {
    println!(
        "verify-gateway bench memory: {destinations} StartVerification calls (no checks), \
         concurrency {} over {} connections; SQLite, shipped limits (send_per_country off) and \
         fraud scoring, fixed-answer Twilio upstream in xtask (sandbox off); release build",
        load.concurrency, load.connections
    );
    let made = Instant::now();
    let numbers = Arc::new(Destinations::generate(destinations)?);
    eprintln!(
        "destinations drawn in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    println!("  destinations       {}", numbers.describe());
    let upstream = bench_upstream::start().await?;
    let gateway = spawn_gateway(
        root,
        Upstream::Fixed(&upstream),
        &[("VERIFY_RATE_LIMITS__SEND_PER_COUNTRY", "off")],
    )?;
    let clients = connect_all(gateway.grpc, load.connections).await?;
    println!(
        "  before any start   {}",
        bench_measure::memory(gateway.pid)?.describe()
    );
    let began = Instant::now();
    let progress = Arc::new(Progress {
        pid: gateway.pid,
        every: destinations.div_ceil(10).clamp(1, 100_000),
        done: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
        last: Mutex::new((0, began)),
    });
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::with_capacity(load.concurrency);
    for client in clients.iter().cycle().take(load.concurrency) {
        let (client, numbers, next, progress) = (
            client.clone(),
            Arc::clone(&numbers),
            Arc::clone(&next),
            Arc::clone(&progress),
        );
        workers.push(tokio::spawn(starts(client, numbers, next, progress)));
    }
    let mut answers = Answers::default();
    for w in workers {
        answers.merge(w.await?);
    }
    let elapsed = began.elapsed();
    let memory = bench_measure::memory(gateway.pid)?;
    println!(
        "  done               {} starts in {:.1} s, {:.0} starts/s",
        numbers.len(),
        elapsed.as_secs_f64(),
        numbers.len() as f64 / elapsed.as_secs_f64()
    );
    println!("  gateway memory     {} (VmRSS, VmHWM)", memory.describe());
    println!(
        "  non-OK answers     {} of {}",
        answers.total(),
        numbers.len()
    );
    answers.print();
    Ok(())
}

/// One worker: starts until every destination has had its start.
async fn starts(
    mut client: Client,
    numbers: Arc<Destinations>,
    next: Arc<AtomicUsize>,
    progress: Arc<Progress>,
) -> Answers {
    let mut answers = Answers::default();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(to) = numbers.number(i) else {
            break;
        };
        let answer = client
            .start_verification(pb::StartVerificationRequest {
                purpose: "login".into(),
                to,
                channel: pb::Channel::Sms.into(),
                client_ip: client_ip(i),
                ..Default::default()
            })
            .await;
        if let Err(status) = &answer {
            answers.record("StartVerification", status);
        }
        progress.one_done(answer.is_err());
    }
    answers
}
