//! `cargo xtask bench [flows|delivery|all]`: starts the release build of the embedded
//! gateway (verify-service, its webhook receiver, SQLite and the sandbox in one process) and
//! prints figures, asserting nothing:
//!
//! - `flows`: Start+Check flows through real gRPC clients: throughput and latency.
//! - `delivery` (see `bench_delivery.rs`): signed Verify Events posted to the webhook
//!   receiver (accepted and stored per second), and the failure-to-fallback latency from
//!   the sandbox's `undelivered` report to the voice call it leads to.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pb::verify_service_client::VerifyServiceClient;
use proto::verify::v1 as pb;
use tokio::sync::Mutex;

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

/// A release gateway running in the embedded mode on free ports, killed on drop.
pub(crate) struct BenchGateway {
    _child: KillOnDrop,
    pub grpc: u16,
    pub sandbox: u16,
    pub webhooks: u16,
    data_dir: std::path::PathBuf,
}

impl Drop for BenchGateway {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Builds the release binary once.
pub(crate) fn build_release(root: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    super::run(Command::new(cargo).current_dir(root).args([
        "build",
        "--release",
        "--locked",
        "-p",
        "verify-service",
        "--bin",
        "verify-gateway",
    ]))
}

/// Starts the release gateway with a fresh data directory and `env` set.
pub(crate) fn spawn_gateway(root: &Path, env: &[(&str, &str)]) -> anyhow::Result<BenchGateway> {
    let data_dir = std::env::temp_dir().join(format!(
        "verify-gateway-bench-{}-{}",
        std::process::id(),
        free_port()?
    ));
    let _ = std::fs::remove_dir_all(&data_dir);
    let grpc = free_port()?;
    let sandbox = free_port()?;
    let webhooks = free_port()?;
    let mut command = Command::new(root.join("target/release/verify-gateway"));
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
        .env_remove("TWILIO_ACCOUNT_SID")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command.spawn().context("starting verify-gateway")?;
    Ok(BenchGateway {
        _child: KillOnDrop(child),
        grpc,
        sandbox,
        webhooks,
        data_dir,
    })
}

pub fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let which = match args.first().map(String::as_str) {
        None | Some("all") => ["flows", "delivery", "abuse"].as_slice(),
        Some("flows") => ["flows"].as_slice(),
        Some("delivery") => ["delivery"].as_slice(),
        Some("abuse") => ["abuse"].as_slice(),
        Some(a) if a.starts_with("--") => ["flows", "delivery", "abuse"].as_slice(),
        Some(other) => bail!("unknown benchmark `{other}` (flows, delivery, abuse or all)"),
    };
    let flows = flag(args, "--flows", 2000)?;
    let concurrency = flag(args, "--concurrency", 32)?.max(1);
    let events = flag(args, "--events", 5000)?;
    let fallbacks = flag(args, "--fallbacks", 50)?.max(1);
    let legit = flag(args, "--legit", 1000)?;
    let attack = flag(args, "--attack", 1000)?;
    build_release(root)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if which.iter().any(|w| *w == "flows" || *w == "delivery") {
            let gateway = spawn_gateway(root, &[])?;
            let ports = crate::bench_delivery::Ports {
                sandbox: gateway.sandbox,
                webhooks: gateway.webhooks,
            };
            if which.contains(&"flows") {
                drive(gateway.grpc, gateway.sandbox, flows, concurrency).await?;
            }
            if which.contains(&"delivery") {
                let client = connect(gateway.grpc).await?;
                crate::bench_delivery::ingest(&ports, events, concurrency).await?;
                crate::bench_delivery::fallback(&ports, client, fallbacks).await?;
            }
        }
        if which.contains(&"abuse") {
            crate::bench_abuse::run(root, legit, attack).await?;
        }
        anyhow::Ok(())
    })
}

pub(crate) async fn connect(
    grpc_port: u16,
) -> anyhow::Result<VerifyServiceClient<tonic::transport::Channel>> {
    let started = Instant::now();
    loop {
        match VerifyServiceClient::connect(format!("http://127.0.0.1:{grpc_port}")).await {
            Ok(c) => {
                eprintln!("gateway up after {:?}", started.elapsed());
                return Ok(c);
            }
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => bail!("gateway did not come up: {e}"),
        }
    }
}

/// A distinct valid US number per flow, spread over many area codes and exchanges as real
/// users are (fraud scoring would rightly refuse thousands of numbers in one range).
fn number(i: usize) -> String {
    const AREAS: [u32; 16] = [
        212, 213, 312, 646, 617, 305, 206, 702, 415, 404, 503, 512, 602, 614, 713, 818,
    ];
    // A fixed odd multiplier permutes the indices, so numbers never repeat.
    let n = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) % 1_000_000_000_000;
    let area = AREAS[(n % 16) as usize];
    let exchange = 200 + (n / 16) % 700;
    let line = (n / 11_200) % 10_000;
    format!("+1{area}{exchange}{line:04}")
}

#[derive(Default)]
struct Samples {
    start: Vec<Duration>,
    check: Vec<Duration>,
    errors: usize,
}

async fn drive(
    grpc_port: u16,
    sandbox_port: u16,
    flows: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let client = connect(grpc_port).await?;
    let http = reqwest::Client::new();
    let samples = Arc::new(Mutex::new(Samples::default()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let began = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let mut client = client.clone();
        let http = http.clone();
        let samples = samples.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= flows {
                    break;
                }
                let outcome = flow(&mut client, &http, sandbox_port, &number(i)).await;
                let mut s = samples.lock().await;
                match outcome {
                    Ok((start, check)) => {
                        s.start.push(start);
                        s.check.push(check);
                    }
                    Err(e) => {
                        if s.errors < 3 {
                            eprintln!("flow error: {e:#}");
                        }
                        s.errors += 1;
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let elapsed = began.elapsed();
    let mut guard = samples.lock().await;
    let s = &mut *guard;
    let rpcs = s.start.len() + s.check.len();
    println!(
        "verify-gateway bench: {flows} Start+Check flows, concurrency {concurrency}, embedded (SQLite + sandbox), release build"
    );
    println!("  elapsed            {:.2} s", elapsed.as_secs_f64());
    println!(
        "  flows/s            {:.0}",
        s.start.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  rpcs/s             {:.0}  (Start + Check; inbox reads excluded from latency, not from time)",
        rpcs as f64 / elapsed.as_secs_f64()
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
    Ok(())
}

pub(crate) fn pct(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

async fn flow(
    client: &mut VerifyServiceClient<tonic::transport::Channel>,
    http: &reqwest::Client,
    sandbox_port: u16,
    to: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let t0 = Instant::now();
    let started = client
        .start_verification(pb::StartVerificationRequest {
            purpose: "login".into(),
            to: to.into(),
            channel: pb::Channel::Sms.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let start_latency = t0.elapsed();
    let id = started.verification.context("no verification")?.id;
    let url = url::Url::parse_with_params(
        &format!("http://127.0.0.1:{sandbox_port}/sandbox/messages"),
        [("to", to)],
    )?;
    let inbox: serde_json::Value = http.get(url).send().await?.json().await?;
    let code = inbox[0]["code"]
        .as_str()
        .context("no code in the inbox")?
        .to_owned();
    let t1 = Instant::now();
    let checked = client
        .check_verification(pb::CheckVerificationRequest { id, code })
        .await?
        .into_inner();
    let check_latency = t1.elapsed();
    if !checked.valid {
        bail!("the right code was not accepted");
    }
    Ok((start_latency, check_latency))
}
