//! A PostgreSQL cluster of one test's own, which the test may stop and start again without
//! disturbing the tests that share the server of `cargo xtask deps up`.
//!
//! It runs the binaries `deps` runs (the newest under `/usr/lib/postgresql`), the same way:
//! `initdb` into a directory of its own, `pg_ctl` on a free loopback port with the socket in
//! that directory, as the `postgres` user when the tests run as root (PostgreSQL refuses to
//! run as root). `cargo xtask deps up` installs PostgreSQL and creates that user.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::NOT_REACHABLE;

const PG_USER: &str = "postgres";

/// How [`PrivatePostgres::stop`] stops the server (`pg_ctl stop -m <mode>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Sessions are ended and the server shuts down cleanly.
    Fast,
    /// Every server process is killed at once; the next start runs crash recovery.
    Immediate,
}

/// A running cluster in a temporary directory; dropping it stops the server and removes
/// the directory.
#[derive(Debug)]
pub struct PrivatePostgres {
    cluster: Cluster,
    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub url: String,
}

impl PrivatePostgres {
    /// `initdb` and `pg_ctl start`, off the async threads (it takes a second or two);
    /// returns once the server accepts connections.
    pub async fn start() -> anyhow::Result<PrivatePostgres> {
        tokio::task::spawn_blocking(PrivatePostgres::start_blocking).await?
    }

    fn start_blocking() -> anyhow::Result<PrivatePostgres> {
        let bin = pg_bin()
            .context("PostgreSQL is not installed under /usr/lib/postgresql")
            .context(NOT_REACHABLE)?;
        let dir = std::env::temp_dir().join(format!("vg-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // Made before anything can fail, so a failure still removes the directory.
        let postgres = PrivatePostgres {
            cluster: Cluster { dir, bin, port },
            url: format!("postgres://{PG_USER}@127.0.0.1:{port}/postgres"),
        };
        let cluster = &postgres.cluster;
        if is_root() {
            run(Command::new("chown").arg(PG_USER).arg(&cluster.dir))
                .with_context(|| format!("no `{PG_USER}` user? {NOT_REACHABLE}"))?;
        }
        run(cluster
            .as_pg("initdb")
            .arg("-D")
            .arg(cluster.data())
            .args(["-U", PG_USER, "-A", "trust", "-E", "UTF8", "--no-locale"])
            .arg("--no-sync"))?;
        cluster.start()?;
        Ok(postgres)
    }

    /// Stops the server and waits until it is gone.
    pub async fn stop(&self, mode: StopMode) -> anyhow::Result<()> {
        let cluster = self.cluster.clone();
        tokio::task::spawn_blocking(move || cluster.stop(mode)).await?
    }

    /// Starts the stopped server again on the same port and data; returns once it accepts
    /// connections.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        let cluster = self.cluster.clone();
        tokio::task::spawn_blocking(move || cluster.start()).await?
    }

    /// The server's log, for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.cluster.dir.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .as_pg("pg_ctl")
            .arg("-D")
            .arg(self.cluster.data())
            .args(["-m", "immediate", "-w", "-s", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.cluster.dir);
    }
}

/// Where a cluster is and how to run its tools; cloned into blocking tasks.
#[derive(Debug, Clone)]
struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn start(&self) -> anyhow::Result<()> {
        // Loopback only, the socket in the cluster's own directory. Unlike `deps`, commits
        // are synchronous: a test that kills the server must not lose what it confirmed.
        // Only `fsync` is off, since the machine does not crash in a test.
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.display()
        );
        run(self
            .as_pg("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "-t", "30", "-s", "-o", &options, "start"]))
    }

    fn stop(&self, mode: StopMode) -> anyhow::Result<()> {
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        run(self
            .as_pg("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "-t", "30", "-s", "stop"]))
    }

    fn as_pg(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", PG_USER, "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }
}

/// The newest installed PostgreSQL's binary directory, as `cargo xtask deps` picks it.
fn pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs `cmd`; its output goes into the error when it fails.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
