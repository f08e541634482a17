//! `cargo xtask bench [flows|delivery|abuse|memory|all]`: starts the release build of the
//! gateway on free ports with a fresh SQLite database and prints figures, asserting nothing:
//!
//! - `flows`: Start+Check flows through real gRPC clients, measured the way the shared
//!   yardstick (`compare.sh` with its load generator) measures the gateway: against a
//!   fixed-answer Twilio upstream served by xtask (`bench_upstream.rs`), so the gateway's
//!   process holds the gateway alone; a distinct valid number and client IP per start
//!   (`bench_numbers.rs`), so the shipped limits and scoring run but do not refuse; a
//!   warm-up that is not counted. Printed: throughput, latency, non-OK answers by code,
//!   and from outside the process (`bench_measure.rs`) its CPU per flow, its memory and the
//!   store transactions per flow its metrics count.
//! - `delivery` (see `bench_delivery.rs`): the embedded gateway (sandbox and webhook
//!   receiver in its process): signed Verify Events posted to the webhook receiver
//!   (accepted and stored per second), and the failure-to-fallback latency from the
//!   sandbox's `undelivered` report to the voice call it leads to.
//! - `abuse` (see `bench_abuse.rs`): an SMS-pumping attack among legitimate users.
//! - `memory` (see `bench_memory.rs`), only when named: the gateway's memory as it meets a
//!   million distinct destinations.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::ops::Range;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pb::verify_service_client::VerifyServiceClient;
use proto::verify::v1 as pb;
use tonic::Code;

use crate::bench_auth::{Access, Auth};
use crate::bench_measure;
use crate::bench_numbers::{Destinations, client_ip};
use crate::bench_upstream;

/// A client of VerifyService that presents its way's credentials on every call.
pub(crate) type Client = VerifyServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Credentials>,
>;

/// The `authorization` metadata a client adds to each call, if any.
#[derive(Clone)]
pub(crate) struct Credentials(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn flag(args: &[String], name: &str, default: usize) -> anyhow::Result<usize> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name} needs a value"))?
            .parse()
            .with_context(|| format!("{name} must be a number")),
        None => Ok(default),
    }
}

/// Where a benchmark's gateway sends its Twilio calls.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Upstream<'a> {
    /// The embedded sandbox in the gateway's own process: `delivery` and `abuse` need its
    /// inbox, its magic numbers and the delivery reports it signs.
    Sandbox,
    /// The fixed-answer upstream in xtask's process, so the gateway's process holds the
    /// gateway alone.
    Fixed(&'a bench_upstream::FixedUpstream),
}

/// A release gateway on free ports, killed on drop.
pub(crate) struct BenchGateway {
    _child: KillOnDrop,
    pub pid: u32,
    pub grpc: u16,
    /// The embedded sandbox's port (nothing listens there with a fixed upstream).
    pub sandbox: u16,
    pub webhooks: u16,
    /// Where its Prometheus metrics are served (`/metrics`).
    pub metrics: u16,
    data_dir: std::path::PathBuf,
}

impl Drop for BenchGateway {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Where cargo puts release binaries: under `CARGO_TARGET_DIR` when it is set (relative to
/// the workspace when relative, as cargo reads it), else `target/`.
pub(crate) fn release_dir(root: &Path) -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| root.join("target"), |dir| root.join(dir))
        .join("release")
}

/// Builds the release binary once.
pub(crate) fn build_release(root: &Path) -> anyhow::Result<()> {
    super::run(crate::cargo().current_dir(root).args([
        "build",
        "--release",
        "--locked",
        "-p",
        "verify-service",
        "--bin",
        "verify-gateway",
    ]))
}

/// Twilio's variables, which a benchmark must not take from the shell that runs it.
const TWILIO_ENV: [&str; 5] = [
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_API_KEY_SID",
    "TWILIO_API_KEY_SECRET",
    "TWILIO_VERIFY_SERVICE_SID",
];

/// Starts the release gateway with a fresh data directory, its metrics served, calling
/// `upstream`, and `env` set last (so it may override any of it).
pub(crate) fn spawn_gateway(
    root: &Path,
    upstream: Upstream<'_>,
    env: &[(&str, &str)],
) -> anyhow::Result<BenchGateway> {
    let data_dir = std::env::temp_dir().join(format!(
        "verify-gateway-bench-{}-{}",
        std::process::id(),
        free_port()?
    ));
    let _ = std::fs::remove_dir_all(&data_dir);
    let grpc = free_port()?;
    let sandbox = free_port()?;
    let webhooks = free_port()?;
    let metrics = free_port()?;
    let mut command = Command::new(release_dir(root).join("verify-gateway"));
    command
        .arg("--grpc-addr")
        .arg(format!("127.0.0.1:{grpc}"))
        .arg("--sandbox-addr")
        .arg(format!("127.0.0.1:{sandbox}"))
        .arg("--webhooks-addr")
        .arg(format!("127.0.0.1:{webhooks}"))
        .arg("--data-dir")
        .arg(&data_dir)
        .env("VERIFY_LOG__FILTER", "warn")
        .env("VERIFY_METRICS__ADDR", format!("127.0.0.1:{metrics}"))
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for name in TWILIO_ENV {
        command.env_remove(name);
    }
    if let Upstream::Fixed(fixed) = upstream {
        command.envs(fixed.gateway_env());
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command.spawn().context("starting verify-gateway")?;
    Ok(BenchGateway {
        pid: child.id(),
        _child: KillOnDrop(child),
        grpc,
        sandbox,
        webhooks,
        metrics,
        data_dir,
    })
}

/// The benchmarks `cargo xtask bench` runs when none is named; `memory` runs only when named.
const DEFAULT_BENCHMARKS: [&str; 3] = ["flows", "delivery", "abuse"];
const BENCHMARKS: [&str; 4] = ["flows", "delivery", "abuse", "memory"];

pub fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let which: Vec<&str> = match args.first().map(String::as_str) {
        None | Some("all") => DEFAULT_BENCHMARKS.to_vec(),
        Some(a) if a.starts_with("--") => DEFAULT_BENCHMARKS.to_vec(),
        Some(name) if BENCHMARKS.contains(&name) => vec![name],
        Some(other) => bail!(
            "unknown benchmark `{other}` ({} or all)",
            BENCHMARKS.join(", ")
        ),
    };
    let load = Load {
        flows: flag(args, "--flows", 2000)?,
        warmup: flag(args, "--warmup", 1000)?,
        concurrency: flag(args, "--concurrency", 32)?.max(1),
        connections: flag(args, "--connections", 4)?.max(1),
        segment: flag(args, "--segment", 1000)?.max(1),
    };
    let auth = Auth::from_args(args)?;
    let events = flag(args, "--events", 5000)?;
    let fallbacks = flag(args, "--fallbacks", 50)?.max(1);
    let legit = flag(args, "--legit", 1000)?;
    let attack = flag(args, "--attack", 1000)?;
    let destinations = flag(args, "--destinations", 1_000_000)?;
    build_release(root)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if which.contains(&"flows") {
            flows(root, &load, &auth).await?;
        }
        if which.contains(&"delivery") {
            let gateway = spawn_gateway(root, Upstream::Sandbox, &[])?;
            let ports = crate::bench_delivery::Ports {
                sandbox: gateway.sandbox,
                webhooks: gateway.webhooks,
            };
            let client = connect(gateway.grpc).await?;
            crate::bench_delivery::ingest(&ports, events, load.concurrency).await?;
            crate::bench_delivery::fallback(&ports, client, fallbacks).await?;
        }
        if which.contains(&"abuse") {
            crate::bench_abuse::run(root, legit, attack).await?;
        }
        if which.contains(&"memory") {
            crate::bench_memory::run(root, destinations, &load).await?;
        }
        anyhow::Ok(())
    })
}

/// How hard the load benchmarks (`flows`, `memory`) drive the gateway.
pub(crate) struct Load {
    /// Flows measured, after `warmup` flows that are not.
    pub flows: usize,
    pub warmup: usize,
    /// Workers, each running one call after another.
    pub concurrency: usize,
    /// HTTP/2 connections the workers share, as the yardstick's load generator has them.
    pub connections: usize,
    /// `flows`: measured flows a way runs before the next way takes its turn.
    pub segment: usize,
}

pub(crate) async fn connect(grpc_port: u16) -> anyhow::Result<Client> {
    connect_as(grpc_port, &Access::default()).await
}

/// One connection to the gateway on `grpc_port`, made the way `access` says.
async fn open(grpc_port: u16, access: &Access) -> anyhow::Result<Client> {
    let scheme = if access.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint =
        tonic::transport::Channel::from_shared(format!("{scheme}://127.0.0.1:{grpc_port}"))?;
    if let Some(tls) = &access.tls {
        endpoint = endpoint.tls_config(tls.clone())?;
    }
    let channel = endpoint.connect().await?;
    Ok(VerifyServiceClient::with_interceptor(
        channel,
        Credentials(access.authorization.clone()),
    ))
}

/// A client once the gateway is up (it may still be starting).
pub(crate) async fn connect_as(grpc_port: u16, access: &Access) -> anyhow::Result<Client> {
    let started = Instant::now();
    loop {
        match open(grpc_port, access).await {
            Ok(c) => {
                eprintln!("gateway up after {:?}", started.elapsed());
                return Ok(c);
            }
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => bail!("gateway did not come up: {e:#}"),
        }
    }
}

/// `connections` clients, each on its own HTTP/2 connection, once the gateway is up.
pub(crate) async fn connect_all(grpc_port: u16, connections: usize) -> anyhow::Result<Vec<Client>> {
    connect_all_as(grpc_port, connections, &Access::default()).await
}

async fn connect_all_as(
    grpc_port: u16,
    connections: usize,
    access: &Access,
) -> anyhow::Result<Vec<Client>> {
    let mut clients = vec![connect_as(grpc_port, access).await?];
    while clients.len() < connections {
        clients.push(
            open(grpc_port, access)
                .await
                .context("another connection to the gateway")?,
        );
    }
    Ok(clients)
}

/// The gRPC name of a code, as the yardstick's load generator prints it.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Non-OK gRPC answers by call and code, each with the first message given.
#[derive(Default)]
pub(crate) struct Answers {
    non_ok: BTreeMap<(&'static str, i32), (usize, String)>,
}

impl Answers {
    pub(crate) fn record(&mut self, call: &'static str, status: &tonic::Status) {
        self.non_ok
            .entry((call, status.code() as i32))
            .or_insert_with(|| (0, status.message().to_owned()))
            .0 += 1;
    }

    pub(crate) fn merge(&mut self, other: Answers) {
        for (key, (n, message)) in other.non_ok {
            self.non_ok.entry(key).or_insert((0, message)).0 += n;
        }
    }

    fn count(&self, code: Code) -> usize {
        self.non_ok
            .iter()
            .filter(|((_, c), _)| *c == code as i32)
            .map(|(_, (n, _))| n)
            .sum()
    }

    pub(crate) fn total(&self) -> usize {
        self.non_ok.values().map(|(n, _)| n).sum()
    }

    /// One line per call and code (or `none`), then the refusals that limits and fraud
    /// scoring give, on their own so it is plain whether they shaped the figures.
    pub(crate) fn print(&self) {
        if self.non_ok.is_empty() {
            println!("  non-OK codes       none");
        }
        for ((call, code), (n, message)) in &self.non_ok {
            let message: String = message.chars().take(160).collect();
            println!(
                "  non-OK codes       {call} {} {n} (first: {message})",
                code_name(Code::from_i32(*code))
            );
        }
        println!(
            "  limit/fraud refusals RESOURCE_EXHAUSTED {}, FAILED_PRECONDITION {}, PERMISSION_DENIED {}",
            self.count(Code::ResourceExhausted),
            self.count(Code::FailedPrecondition),
            self.count(Code::PermissionDenied)
        );
    }
}

/// What the flows of one phase gave.
#[derive(Default)]
struct Samples {
    start: Vec<Duration>,
    check: Vec<Duration>,
    /// Flows that failed, whatever the reason.
    errors: usize,
    answers: Answers,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.start.extend(other.start);
        self.check.extend(other.check);
        self.errors += other.errors;
        self.answers.merge(other.answers);
    }
}

/// `bench flows`: for each way of calling (`--auth`), a gateway configured for it and
/// warmed up; then the measured flows in segments of `--segment` flows, each segment run
/// on every gateway in turn (the order reversed every other round), so slow drift of this
/// machine's speed falls on every way alike; each gateway's CPU time and store
/// transactions are read around its own segments. Last, each way's flows/s and the
/// gateway's CPU per flow against calling without credentials. The load generator runs on
/// the same cores, so its own TLS work lowers the flows/s of `mtls`; the CPU per flow is
/// the gateway's alone.
async fn flows(root: &Path, load: &Load, ways: &[Auth]) -> anyhow::Result<()> {
    let total = load.warmup + load.flows;
    if total >= 20_000 {
        eprintln!(
            "warning: {total} flows exceed the shipped send_per_country (20000/1d): the last \
             ones will be refused"
        );
    }
    let made = Instant::now();
    let destinations = Arc::new(Destinations::generate(total)?);
    eprintln!(
        "destinations drawn in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    let upstream = bench_upstream::start().await?;
    println!(
        "verify-gateway bench: {} Start+Check flows after {} warm-up flows, concurrency {} over {} \
         connections, in segments of {} flows taken by each way in turn; SQLite, shipped limits \
         and fraud scoring, fixed-answer Twilio upstream in xtask (sandbox off); release build; \
         a gateway per way of calling",
        load.flows, load.warmup, load.concurrency, load.connections, load.segment
    );
    println!("  destinations       {}", destinations.describe());
    let mut distinct: Vec<Auth> = Vec::new();
    for way in ways {
        if !distinct.contains(way) {
            distinct.push(*way);
        }
    }
    let mut contenders = Vec::with_capacity(distinct.len());
    for way in distinct {
        contenders.push(Contender::start(root, load, &destinations, &upstream, way).await?);
    }
    let mut offset = load.warmup;
    let mut round = 0;
    while offset < total {
        let end = (offset + load.segment).min(total);
        let mut order: Vec<usize> = (0..contenders.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            contenders[i]
                .measure(&destinations, offset..end, load.concurrency)
                .await?;
        }
        offset = end;
        round += 1;
    }
    let mut runs = Vec::with_capacity(contenders.len());
    for contender in &mut contenders {
        runs.push((contender.way, contender.report(load).await?));
    }
    let of = |way: Auth| runs.iter().find(|(w, _)| *w == way).map(|(_, r)| r);
    if let Some(plain) = of(Auth::None) {
        for way in [Auth::Token, Auth::Mtls] {
            if let Some(run) = of(way) {
                println!(
                    "  authentication     {}: {:.0} flows/s, {:+.1}% against no credentials \
                     ({:.0}); gateway CPU {:.3} ms per flow, {:+.1}% ({:.3})",
                    way.name(),
                    run.rate,
                    (run.rate / plain.rate - 1.0) * 100.0,
                    plain.rate,
                    run.cpu_ms_per_flow,
                    (run.cpu_ms_per_flow / plain.cpu_ms_per_flow - 1.0) * 100.0,
                    plain.cpu_ms_per_flow,
                );
            }
        }
    }
    Ok(())
}

/// What one way's measured flows gave.
struct Run {
    rate: f64,
    /// The gateway's CPU time (user and system) per measured flow.
    cpu_ms_per_flow: f64,
}

/// One way of calling: its gateway, its clients, and what its measured segments gave.
struct Contender {
    way: Auth,
    gateway: BenchGateway,
    clients: Vec<Client>,
    http: reqwest::Client,
    ticks_per_second: u64,
    samples: Samples,
    elapsed: Duration,
    cpu_seconds: f64,
    transactions_before: Option<BTreeMap<String, f64>>,
    /// Kept until the end: the `mtls` way's certificates are in it.
    _setup: crate::bench_auth::Setup,
}

impl Contender {
    /// Starts `way`'s gateway and runs its warm-up, which is not measured.
    async fn start(
        root: &Path,
        load: &Load,
        destinations: &Arc<Destinations>,
        upstream: &bench_upstream::FixedUpstream,
        way: Auth,
    ) -> anyhow::Result<Contender> {
        println!("  calling as         {}: {}", way.name(), way.describe());
        let setup = crate::bench_auth::setup(way)?;
        let env: Vec<(&str, &str)> = setup
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let gateway = spawn_gateway(root, Upstream::Fixed(upstream), &env)?;
        let clients = connect_all_as(gateway.grpc, load.connections, &setup.access).await?;
        if load.warmup > 0 {
            let (warm, elapsed) =
                phase(&clients, destinations, 0..load.warmup, load.concurrency).await?;
            println!(
                "  warm-up            {} flows in {:.2} s, not counted ({} failed)",
                load.warmup,
                elapsed.as_secs_f64(),
                warm.errors
            );
        }
        Ok(Contender {
            way,
            gateway,
            clients,
            http: reqwest::Client::new(),
            ticks_per_second: bench_measure::clock_ticks_per_second(),
            samples: Samples::default(),
            elapsed: Duration::ZERO,
            cpu_seconds: 0.0,
            transactions_before: None,
            _setup: setup,
        })
    }

    /// Runs the flows `range` as one measured segment.
    async fn measure(
        &mut self,
        destinations: &Arc<Destinations>,
        range: Range<usize>,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        if self.transactions_before.is_none() {
            self.transactions_before =
                Some(bench_measure::transactions(&self.http, self.gateway.metrics).await);
        }
        let before = bench_measure::cpu(self.gateway.pid)?;
        let (samples, elapsed) = phase(&self.clients, destinations, range, concurrency).await?;
        self.cpu_seconds += bench_measure::cpu_seconds(
            before,
            bench_measure::cpu(self.gateway.pid)?,
            self.ticks_per_second,
        );
        self.samples.merge(samples);
        self.elapsed += elapsed;
        Ok(())
    }

    /// Prints what the measured segments gave.
    async fn report(&mut self, load: &Load) -> anyhow::Result<Run> {
        let memory = bench_measure::memory(self.gateway.pid)?;
        let transactions_after =
            bench_measure::transactions(&self.http, self.gateway.metrics).await;
        let s = &mut self.samples;
        let seconds = self.elapsed.as_secs_f64();
        let rpcs = s.start.len() + s.check.len();
        let rate = s.check.len() as f64 / seconds;
        println!("  {} ({})", self.way.name(), self.way.describe());
        println!("  elapsed            {seconds:.2} s (its segments)");
        println!("  flows/s            {rate:.0}");
        println!(
            "  rpcs/s             {:.0}  (Start + Check)",
            rpcs as f64 / seconds
        );
        println!("  errors             {}", s.errors);
        for (name, v) in [
            ("StartVerification", &mut s.start),
            ("CheckVerification", &mut s.check),
        ] {
            v.sort();
            println!(
                "  {name:<18} p50 {:>8.2} ms   p99 {:>8.2} ms",
                pct(v, 0.50),
                pct(v, 0.99)
            );
        }
        s.answers.print();
        let cpu_ms_per_flow = self.cpu_seconds * 1000.0 / load.flows.max(1) as f64;
        println!(
            "  gateway CPU        {cpu_ms_per_flow:.3} ms per flow, {:.0}% of one core \
             (utime+stime over its segments, {} ticks/s)",
            100.0 * self.cpu_seconds / seconds,
            self.ticks_per_second
        );
        println!("  gateway memory     {} (VmRSS, VmHWM)", memory.describe());
        println!(
            "  {}",
            bench_measure::transactions_line(
                self.transactions_before
                    .as_ref()
                    .unwrap_or(&BTreeMap::new()),
                &transactions_after,
                load.flows,
                "flow"
            )
        );
        Ok(Run {
            rate,
            cpu_ms_per_flow,
        })
    }
}

/// Runs the flows with indices `flows` on `concurrency` workers sharing `clients`.
async fn phase(
    clients: &[Client],
    destinations: &Arc<Destinations>,
    flows: Range<usize>,
    concurrency: usize,
) -> anyhow::Result<(Samples, Duration)> {
    let next = Arc::new(AtomicUsize::new(flows.start));
    let began = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for client in clients.iter().cycle().take(concurrency) {
        let (mut client, destinations, next) =
            (client.clone(), Arc::clone(destinations), Arc::clone(&next));
        let end = flows.end;
        workers.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                let Some(to) = destinations.number(i) else {
                    break;
                };
                match flow(&mut client, &to, &client_ip(i), &mut samples.answers).await {
                    Ok((start, check)) => {
                        samples.start.push(start);
                        samples.check.push(check);
                    }
                    Err(failure) => {
                        samples.errors += 1;
                        // Non-OK answers are counted by code; other failures are shown, the
                        // first few of them.
                        static SHOWN: AtomicUsize = AtomicUsize::new(0);
                        if let Failure::Other(e) = failure
                            && SHOWN.fetch_add(1, Ordering::Relaxed) < 3
                        {
                            eprintln!("flow error: {e:#}");
                        }
                    }
                }
            }
            samples
        }));
    }
    let mut all = Samples::default();
    for w in workers {
        all.merge(w.await?);
    }
    Ok((all, began.elapsed()))
}

pub(crate) fn pct(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

/// Why a flow failed.
enum Failure {
    /// A non-OK answer, recorded in the worker's [`Answers`].
    Answered,
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

/// One start and a check of what it returned, with any code: the fixed upstream approves
/// every one.
async fn flow(
    client: &mut Client,
    to: &str,
    ip: &str,
    answers: &mut Answers,
) -> Result<(Duration, Duration), Failure> {
    let t0 = Instant::now();
    let started = client
        .start_verification(pb::StartVerificationRequest {
            purpose: "login".into(),
            to: to.into(),
            channel: pb::Channel::Sms.into(),
            client_ip: ip.into(),
            ..Default::default()
        })
        .await
        .map_err(|s| {
            answers.record("StartVerification", &s);
            Failure::Answered
        })?
        .into_inner();
    let start_latency = t0.elapsed();
    let id = started
        .verification
        .context("no verification in the answer")?
        .id;
    let t1 = Instant::now();
    let checked = client
        .check_verification(pb::CheckVerificationRequest {
            id,
            code: "123456".into(),
        })
        .await
        .map_err(|s| {
            answers.record("CheckVerification", &s);
            Failure::Answered
        })?
        .into_inner();
    let check_latency = t1.elapsed();
    if !checked.valid {
        return Err(anyhow::anyhow!("the upstream's approval was not accepted").into());
    }
    Ok((start_latency, check_latency))
}
