//! `cargo xtask smoke`: the distributed mode as separate processes, the way the README runs
//! it: `twilio-sandbox`, `webhook-ingest` and two `verify-gateway` replicas on the
//! PostgreSQL and RabbitMQ of `cargo xtask deps`. A start by SMS with `allow_fallback` to the
//! sandbox's undelivered number must lead to a voice call within 2 seconds, visible through
//! the other replica. The binaries are those the README's own build command makes (its
//! "Distributed mode" section is read for the `cargo build` line, which is run as written,
//! and for the `target/release/…` paths it then starts), so a walk-through that no longer
//! builds what it runs fails here. `SMOKE_LOG=<filter>` shows the processes' logs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use proto::verify::v1 as pb;

use crate::bench::{connect, free_port};

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The README's "Distributed mode" section.
fn walkthrough(root: &Path) -> anyhow::Result<String> {
    let readme = std::fs::read_to_string(root.join("README.md")).context("reading README.md")?;
    let start = readme
        .find("\n## Distributed mode")
        .context("README.md has no \"## Distributed mode\" section")?;
    let section = &readme[start + 1..];
    let end = section[1..].find("\n## ").map_or(section.len(), |i| i + 1);
    Ok(section[..end].to_owned())
}

/// Runs the walk-through's `cargo build` line as written, and checks that every
/// `target/release/<binary>` it goes on to start is one that line builds (cargo names the
/// executables of the packages it built, fresh or not, so a binary an earlier build left
/// in `target/` does not count). Returns where they are.
pub(crate) fn build_as_the_readme_does(root: &Path) -> anyhow::Result<PathBuf> {
    let section = walkthrough(root)?;
    let line = section
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("cargo build"))
        .context("the README's distributed walk-through has no `cargo build` line")?;
    let words: Vec<&str> = line
        .split('#')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    println!("smoke: building as the README does: {}", words.join(" "));
    let output = crate::cargo()
        .current_dir(root)
        .args(&words[1..])
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !output.status.success() {
        bail!("`{line}` failed ({})", output.status);
    }
    let built: Vec<PathBuf> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .collect();
    let release = built
        .first()
        .and_then(|exe| exe.parent())
        .map(Path::to_path_buf)
        .with_context(|| format!("`{line}` built no executable"))?;
    let mut started: Vec<&str> = section
        .split(|c: char| c.is_whitespace() || c == '`')
        .filter_map(|word| word.strip_prefix("target/release/"))
        .collect();
    started.sort_unstable();
    started.dedup();
    if started.is_empty() {
        bail!("the README's distributed walk-through starts no target/release/ binary");
    }
    for bin in started {
        if !built.contains(&release.join(bin)) {
            bail!(
                "the README's distributed walk-through starts target/release/{bin}, which `{line}` \
                 does not build"
            );
        }
    }
    Ok(release)
}

fn spawn(bins: &Path, bin: &str, args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Process> {
    let path = bins.join(bin);
    if !path.exists() {
        bail!("{} is missing", path.display());
    }
    let mut command = Command::new(&path);
    command
        .args(args)
        .env(
            "VERIFY_LOG__FILTER",
            std::env::var("SMOKE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(if std::env::var_os("SMOKE_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::inherit());
    for (k, v) in env {
        command.env(k, v);
    }
    Ok(Process(
        command.spawn().with_context(|| format!("starting {bin}"))?,
    ))
}

/// `deps_env` is the `KEY=value` text `cargo xtask deps up` writes.
pub fn run(root: &Path, deps_env: &str) -> anyhow::Result<()> {
    let bins = build_as_the_readme_does(root)?;
    let var = |name: &str| {
        deps_env
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_owned))
            .with_context(|| format!("{name} is not in the deps environment"))
    };
    let server = var("DATABASE_URL")?;
    let amqp = var("AMQP_URL")?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    // A database and an exchange of its own.
    let database = format!("smoke_{stamp}");
    let admin = format!(
        "{}/postgres",
        server.rsplit_once('/').context("DATABASE_URL")?.0
    );
    crate::run(Command::new("psql").args([
        admin.as_str(),
        "-q",
        "-c",
        &format!("CREATE DATABASE {database}"),
    ]))?;
    let database_url = format!(
        "{}/{database}",
        server.rsplit_once('/').context("DATABASE_URL")?.0
    );
    let exchange = format!("smoke.{stamp}.events");

    let (sandbox_port, ingest_port, grpc_a, grpc_b) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let common = vec![
        ("DATABASE_URL", database_url.clone()),
        ("AMQP_URL", amqp.clone()),
        ("AMQP_EXCHANGE", exchange.clone()),
    ];
    let _sandbox = spawn(
        &bins,
        "twilio-sandbox",
        &[&format!("127.0.0.1:{sandbox_port}")],
        &[(
            "SANDBOX_EVENTS_URL",
            format!("http://127.0.0.1:{ingest_port}/webhooks/twilio/verify-events"),
        )],
    )?;
    crate::run(
        Command::new(bins.join("verify-gateway"))
            .arg("migrate")
            .env("DATABASE_URL", &database_url),
    )?;
    let mut ingest_env = common.clone();
    ingest_env.push(("TWILIO_AUTH_TOKEN", "sandbox-auth-token".into()));
    ingest_env.push((
        "WEBHOOK_PUBLIC_BASE_URL",
        format!("http://127.0.0.1:{ingest_port}"),
    ));
    let _ingest = spawn(
        &bins,
        "webhook-ingest",
        &["serve", "--addr", &format!("127.0.0.1:{ingest_port}")],
        &ingest_env,
    )?;
    let mut gateway_env = common;
    for (k, v) in [
        ("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000000"),
        ("TWILIO_AUTH_TOKEN", "sandbox-auth-token"),
        (
            "TWILIO_VERIFY_SERVICE_SID",
            "VA00000000000000000000000000000000",
        ),
        ("VERIFY_SANDBOX__MODE", "off"),
        (
            "VERIFY_KEYS__BLIND_INDEX_KEY",
            "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
        ),
        (
            "VERIFY_KEYS__ENCRYPTION_KEYS",
            "k1:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=",
        ),
    ] {
        gateway_env.push((k, v.into()));
    }
    gateway_env.push((
        "VERIFY_TWILIO__BASE_URL",
        format!("http://127.0.0.1:{sandbox_port}"),
    ));
    let _a = spawn(
        &bins,
        "verify-gateway",
        &["serve", "--grpc-addr", &format!("127.0.0.1:{grpc_a}")],
        &gateway_env,
    )?;
    let _b = spawn(
        &bins,
        "verify-gateway",
        &["serve", "--grpc-addr", &format!("127.0.0.1:{grpc_b}")],
        &gateway_env,
    )?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let ready = format!("http://127.0.0.1:{ingest_port}/readyz");
        let began = Instant::now();
        while !http.get(&ready).send().await.is_ok_and(|r| r.status().is_success()) {
            if began.elapsed() > Duration::from_secs(30) {
                bail!("webhook-ingest did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut a = connect(grpc_a).await?;
        let mut b = connect(grpc_b).await?;
        let to = "+14155550108";
        let t0 = Instant::now();
        let v = a
            .start_verification(pb::StartVerificationRequest {
                purpose: "login".into(),
                to: to.into(),
                channel: pb::Channel::Sms.into(),
                allow_fallback: true,
                ..Default::default()
            })
            .await?
            .into_inner()
            .verification
            .context("no verification")?;
        let inbox = url::Url::parse_with_params(
            &format!("http://127.0.0.1:{sandbox_port}/sandbox/messages"),
            [("to", to)],
        )?;
        loop {
            let messages: serde_json::Value = http.get(inbox.clone()).send().await?.json().await?;
            let channels: Vec<&str> = messages
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["channel"].as_str())
                .collect();
            if channels.contains(&"call") {
                println!(
                    "smoke: separate processes (sandbox, webhook-ingest, 2 verify-gateway) on PostgreSQL + RabbitMQ: \
                     undelivered SMS -> call after {:?}; inbox {channels:?}",
                    t0.elapsed()
                );
                break;
            }
            if t0.elapsed() > Duration::from_secs(2) {
                bail!("no fallback call within 2 s of the start (inbox: {channels:?})");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seen = b
            .get_verification(pb::GetVerificationRequest { id: v.id })
            .await?
            .into_inner()
            .verification
            .context("no verification")?;
        if seen.channel() != pb::Channel::Call || seen.fallback_reason != "undelivered_30003" {
            bail!(
                "the other replica shows channel {:?}, reason `{}`",
                seen.channel(),
                seen.fallback_reason
            );
        }
        println!(
            "smoke: the other replica shows the fallback: channels_tried {:?}, reason {}",
            seen.channels_tried, seen.fallback_reason
        );
        anyhow::Ok(())
    })
}
