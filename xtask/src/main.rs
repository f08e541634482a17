//! The project's own commands: `cargo xtask <command>`.
//!
//! - `tools`: installs what the tests need besides Rust (Prism and buf from npm, the official
//!   Twilio helper libraries from PyPI and npm) into `.tools/`.
//! - `ci`: what CI runs: tools, PostgreSQL and RabbitMQ (`deps`), rustfmt check, clippy
//!   `-D warnings`, buf lint, the deployment files' validators, all tests, the fuzz targets
//!   for 25 s each.
//! - `deps`: a throwaway PostgreSQL and RabbitMQ on loopback (see `deps.rs`).
//! - `deploy-check`: the deployment files' validators alone (see `deploy_check.rs`).
//! - `fuzz`: the libFuzzer targets of `fuzz/` with cargo-fuzz on the stable toolchain, each
//!   for a bounded time over its committed seeds (see `fuzz.rs`).
//! - `dev-certs`: a development CA and the compose stack's server and client certificates
//!   (see `dev_certs.rs`).
//! - `bench`: drives Start+Check flows against the gateway alone (a fixed-answer Twilio
//!   upstream in xtask), webhooks and fallbacks through the embedded gateway, an SMS-pumping
//!   scenario (`bench abuse`) and, when asked, a million destinations (`bench memory`), and
//!   prints figures.

mod bench;
mod bench_abuse;
mod bench_auth;
mod bench_delivery;
mod bench_measure;
mod bench_memory;
mod bench_numbers;
mod bench_upstream;
mod deploy_check;
mod deps;
mod dev_certs;
mod fuzz;
mod smoke;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

const PRISM: &str = "@stoplight/prism-cli@5.14.2";
const BUF: &str = "@bufbuild/buf@1.75.0";
const TWILIO_NODE: &str = "twilio@6.2.0";
const TWILIO_PYTHON: &str = "twilio==9.13.0";
/// How long CI runs each fuzz target.
const CI_FUZZ_SECONDS: u64 = 25;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("tools") => tools(&root),
        Some("ci") => ci(&root),
        Some("bench") => bench::run(&root, &args[1..]),
        Some("deps") => deps::run(&root, &args[1..]),
        Some("deploy-check") => deploy_check::check(&root),
        Some("dev-certs") => dev_certs::run(&root, &args[1..]),
        Some("fuzz") => fuzz::run(&root, &args[1..]),
        Some("smoke") => {
            let env = std::fs::read_to_string(root.join(".tools/deps.env"))
                .context("no .tools/deps.env: run `cargo xtask deps up` first")?;
            smoke::run(&root, &env)
        }
        Some("help") | Some("--help") | Some("-h") | None => {
            print_help();
            Ok(())
        }
        Some(other) => {
            print_help();
            bail!("unknown command `{other}`")
        }
    }
}

fn print_help() {
    eprintln!(
        "usage: cargo xtask <command>\n\n\
         commands:\n  \
         tools   install test tools into .tools/ (Prism, buf, twilio-python, twilio-node)\n  \
         ci      tools, deps, fmt check, clippy -D warnings, buf lint, deploy checks, all tests,\n          \
         fuzz targets 25 s each (CI)\n  \
         deps    up|down|status|restart-rabbitmq: throwaway PostgreSQL and RabbitMQ on loopback\n          \
         (installs the Debian packages when missing; prints DATABASE_URL and AMQP_URL)\n  \
         smoke   the distributed fallback as separate processes, built by the README's own\n          \
         command (after deps up)\n  \
         deploy-check  validate Dockerfile, compose, collector, Kubernetes and systemd files\n  \
         fuzz    [--seconds N] [TARGET...] build the libFuzzer targets of fuzz/ (cargo-fuzz into\n          \
         .tools/, stable toolchain) and run each N s (default 60) over fuzz/seeds/<target>\n          \
         and fuzz/corpus/<target>; a crash fails, naming its input in fuzz/artifacts/\n  \
         dev-certs [--out DIR] [--force] [--name HOST]...  a development CA, server and client\n          \
         certificates for the compose stack's TLS (default DIR deploy/dev-certs; keeps the CA)\n  \
         bench   [flows|delivery|abuse|memory|all] load against the gateway; prints figures\n          \
         (all: flows, delivery and abuse; memory only when named)\n          \
         flows: Start+Check against a fixed-answer Twilio upstream in xtask: flows/s, p50,\n          \
         p99, non-OK codes, gateway CPU per flow, RSS and peak RSS, store transactions per\n          \
         flow (--flows N, default 2000, after --warmup N, default 1000), once per way of\n          \
         calling (--auth none|token|mtls|all, default all: no callers, a bearer token,\n          \
         a client certificate over mutual TLS), the gateways side by side taking turns of\n          \
         --segment N flows (default 1000), and each way against no credentials\n          \
         delivery: signed webhooks accepted+stored/s (--events N, default 5000) and the\n          \
         failure-to-fallback latency p50/p99 (--fallbacks N, default 50)\n          \
         abuse: SMS-pumping attacks among legitimate users, enforce and shadow mode:\n          \
         per attack (premium, one range, thin and wide, conversion-faking) the sends\n          \
         stopped and how its ranges were blocked; legit users blocked or asked to step up\n          \
         (--legit N, default 1000; --attack N premium + one-range attempts, default 1000);\n          \
         then the last two over a simulated day, with codes that expire (fraud's simulation)\n          \
         memory: N starts to distinct numbers, RSS and peak RSS every 100k\n          \
         (--destinations N, default 1000000)\n          \
         --concurrency C (default 32), --connections K (HTTP/2, default 4)"
    );
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A command running the cargo that runs xtask (`$CARGO`), or the one on the `PATH`.
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Installs the test tools into `.tools/`, skipping what is already there at the pinned
/// version. Each tool comes from a package registry; nothing is downloaded otherwise.
fn tools(root: &Path) -> anyhow::Result<()> {
    let dir = root.join(".tools");
    std::fs::create_dir_all(&dir)?;
    let stamp = dir.join("npm.stamp");
    let wanted = format!("{PRISM} {BUF} {TWILIO_NODE}");
    let node_ok = std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted)
        && dir.join("node_modules/.bin/prism").exists()
        && dir.join("node_modules/.bin/buf").exists();
    if !node_ok {
        run(Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&dir)
            .args([PRISM, BUF, TWILIO_NODE]))?;
        std::fs::write(&stamp, &wanted)?;
    }
    let venv = dir.join("venv");
    let py_stamp = dir.join("python.stamp");
    let py_ok = std::fs::read_to_string(&py_stamp).is_ok_and(|s| s == TWILIO_PYTHON)
        && venv.join("bin/python").exists();
    if !py_ok {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            TWILIO_PYTHON,
        ]))?;
        std::fs::write(&py_stamp, TWILIO_PYTHON)?;
    }
    eprintln!("tools ready in {}", dir.display());
    Ok(())
}

fn ci(root: &Path) -> anyhow::Result<()> {
    tools(root)?;
    let deps = deps::Deps::new(root);
    let env = deps.up()?;
    let result = checks(root, &env);
    // Leave no servers behind, whatever the outcome.
    if let Err(e) = deps.down() {
        eprintln!("stopping deps: {e:#}");
    }
    result?;
    eprintln!("ci: all checks passed");
    Ok(())
}

fn checks(root: &Path, deps_env: &str) -> anyhow::Result<()> {
    run(cargo().current_dir(root).args(["fmt", "--all", "--check"]))?;
    run(cargo().current_dir(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(Command::new(root.join(".tools/node_modules/.bin/buf"))
        .current_dir(root.join("proto"))
        .arg("lint"))?;
    deploy_check::check(root)?;
    let mut test = cargo();
    test.current_dir(root)
        .args(["test", "--workspace", "--locked"]);
    for line in deps_env.lines() {
        if let Some((k, v)) = line.split_once('=') {
            test.env(k, v);
        }
    }
    run(&mut test)?;
    // Each parser at the edge under libFuzzer for a bounded time: with the build, about
    // five minutes of CI's budget.
    fuzz::run_targets(root, CI_FUZZ_SECONDS, fuzz::TARGETS)?;
    // The distributed mode as separate processes, with the binaries the README's own
    // build command makes.
    smoke::run(root, deps_env)
}
