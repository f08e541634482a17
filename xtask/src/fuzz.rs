//! `cargo xtask fuzz [--seconds N] [TARGET...]`: builds the libFuzzer targets of `fuzz/`
//! with cargo-fuzz and runs each for N seconds (60 by default) over its committed seeds
//! (`fuzz/seeds/<target>/`) and a corpus of its own (`fuzz/corpus/<target>/`, kept between
//! runs, not committed).
//!
//! Only the stable toolchain is needed: cargo-fuzz's sanitizer and coverage flags are
//! unstable rustc flags, which `RUSTC_BOOTSTRAP=1` lets stable accept for this build alone.
//! The targets build into `fuzz/target`, so a fuzz run never waits on the lock of the
//! workspace's `target/`. A target that crashes fails the command, naming the input
//! libFuzzer wrote under `fuzz/artifacts/<target>/`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

/// The cargo-fuzz installed into `.tools/` when missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Every target of `fuzz/Cargo.toml`, in the order they run.
pub const TARGETS: &[&str] = &[
    "phone",
    "email",
    "webhook_signature",
    "webhook_events",
    "config",
    "grpc_requests",
];

/// A single input that runs this long is a failure (libFuzzer's `-timeout`), not a slow
/// machine: every target parses a few kilobytes at most.
const INPUT_TIMEOUT_SECONDS: u64 = 25;

pub fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let mut seconds = 60;
    let mut targets = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .context("--seconds needs a number")?
                    .parse()
                    .context("--seconds needs a whole number of seconds")?;
            }
            name if TARGETS.contains(&name) => targets.push(name),
            other => bail!(
                "unknown fuzz argument `{other}`; targets: {}",
                TARGETS.join(", ")
            ),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    run_targets(root, seconds, &targets)
}

/// Builds every target, then runs each of `targets` for `seconds`; fails naming each
/// target that crashed and the input that made it crash.
pub fn run_targets(root: &Path, seconds: u64, targets: &[&str]) -> anyhow::Result<()> {
    let cargo_fuzz = install(root)?;
    let started = Instant::now();
    crate::run(cargo_fuzz_command(root, &cargo_fuzz).args(["build", "--dev"]))?;
    eprintln!(
        "fuzz: targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let mut failures = Vec::new();
    for target in targets {
        if let Err(e) = run_one(root, &cargo_fuzz, target, seconds) {
            eprintln!("fuzz: {e:#}");
            failures.push(format!("{e:#}"));
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} fuzz target(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    eprintln!(
        "fuzz: {} target(s) ran {seconds} s each without a failure ({:.0} s in all)",
        targets.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs one target, echoing libFuzzer's summary lines (not each new input it finds).
fn run_one(root: &Path, cargo_fuzz: &Path, target: &str, seconds: u64) -> anyhow::Result<()> {
    let fuzz = root.join("fuzz");
    let corpus = fuzz.join("corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    // New inputs go to the first directory, the corpus; the seeds are only read.
    let mut cmd = cargo_fuzz_command(root, cargo_fuzz);
    cmd.args(["run", "--dev", target])
        .arg(&corpus)
        .arg(fuzz.join("seeds").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg("-print_final_stats=1")
        .stderr(Stdio::piped());
    eprintln!("$ {cmd:?}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start {cmd:?}"))?;
    let mut artifact = None;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line?;
            if let Some(path) = line.split("Test unit written to ").nth(1) {
                artifact = Some(path.trim().to_owned());
            }
            let progress = (line.starts_with('#')
                && ["NEW", "REDUCE", "pulse", "RELOAD"]
                    .iter()
                    .any(|word| line.contains(word)))
                || line.trim_start().starts_with("NEW_FUNC");
            if !progress {
                eprintln!("{line}");
            }
        }
    }
    let status = child.wait()?;
    if status.success() {
        return Ok(());
    }
    match artifact {
        Some(path) => bail!(
            "fuzz target `{target}` failed ({status}) on {path}; reproduce with \
             `RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=fuzz/target .tools/bin/cargo-fuzz run --dev \
             {target} {path}`, then add the input as a unit test of the crate it broke"
        ),
        None => bail!("fuzz target `{target}` failed ({status}) without writing an input"),
    }
}

/// cargo-fuzz with what every call needs: unstable flags on stable, its own target dir.
fn cargo_fuzz_command(root: &Path, cargo_fuzz: &Path) -> Command {
    let mut cmd = Command::new(cargo_fuzz);
    cmd.current_dir(root)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", root.join("fuzz/target"));
    cmd
}

/// `.tools/bin/cargo-fuzz` at the pinned version, installed from crates.io when missing.
fn install(root: &Path) -> anyhow::Result<PathBuf> {
    let tools = root.join(".tools");
    let bin = tools.join("bin/cargo-fuzz");
    let installed = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(CARGO_FUZZ_VERSION));
    if !installed {
        crate::run(
            crate::cargo()
                .args(["install", "--locked", "--root"])
                .arg(&tools)
                .args(["cargo-fuzz", "--version", CARGO_FUZZ_VERSION]),
        )?;
    }
    Ok(bin)
}
