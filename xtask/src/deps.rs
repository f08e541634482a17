//! `cargo xtask deps up|down|status|restart-rabbitmq`: a throwaway PostgreSQL and RabbitMQ
//! on loopback for tests and development, without docker or systemd. Missing Debian
//! packages (`postgresql`, `rabbitmq-server`) are installed first.
//!
//! State lives in a directory under the system temp dir named after the checkout, so two
//! checkouts never share a server, and unix socket paths stay short. `up` writes the URLs to
//! `.tools/deps.env` (`DATABASE_URL=…`, `AMQP_URL=…`), where tests find them.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const PG_USER: &str = "postgres";
const PG_DATABASE: &str = "verify";
const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

pub fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let deps = Deps::new(root);
    match args.first().map(String::as_str) {
        Some("up") => {
            let env = deps.up()?;
            print!("{env}");
            Ok(())
        }
        Some("down") => deps.down(),
        Some("status") => deps.status(),
        Some("restart-rabbitmq") => deps.restart_rabbitmq(),
        _ => bail!("usage: cargo xtask deps up|down|status|restart-rabbitmq"),
    }
}

pub struct Deps {
    base: PathBuf,
    env_file: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The newest installed PostgreSQL's binary directory.
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

impl Deps {
    pub fn new(root: &Path) -> Deps {
        let mut hasher = DefaultHasher::new();
        root.hash(&mut hasher);
        Deps {
            base: std::env::temp_dir().join(format!("vg-deps-{:08x}", hasher.finish() as u32)),
            env_file: root.join(".tools/deps.env"),
        }
    }

    fn pg_dir(&self) -> PathBuf {
        self.base.join("pg")
    }

    fn rmq_dir(&self) -> PathBuf {
        self.base.join("rmq")
    }

    /// Installs what is missing, starts both servers (or finds them running) and returns the
    /// `KEY=value` lines of their URLs.
    pub fn up(&self) -> anyhow::Result<String> {
        self.install()?;
        std::fs::create_dir_all(&self.base)?;
        let database_url = self.postgres_up()?;
        let amqp_url = self.rabbitmq_up()?;
        let env = format!(
            "DATABASE_URL={database_url}\nAMQP_URL={amqp_url}\nRABBITMQ_CTL={}\n",
            self.rmq_dir().join("ctl").display()
        );
        if let Some(dir) = self.env_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&self.env_file, &env)?;
        Ok(env)
    }

    fn install(&self) -> anyhow::Result<()> {
        let mut missing = Vec::new();
        if pg_bin().is_none() {
            missing.push("postgresql");
        }
        if !Path::new(RABBITMQ_BIN).join("rabbitmq-server").exists() {
            missing.push("rabbitmq-server");
        }
        if missing.is_empty() {
            return Ok(());
        }
        if !is_root() {
            bail!(
                "missing Debian packages {missing:?}: run `sudo apt-get install -y {}`",
                missing.join(" ")
            );
        }
        eprintln!("installing {missing:?} from apt");
        super::run(Command::new("apt-get").arg("update").arg("-q"))?;
        super::run(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    }

    fn as_pg(&self, program: &Path) -> Command {
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", PG_USER, "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn postgres_up(&self) -> anyhow::Result<String> {
        let bin = pg_bin().context("PostgreSQL is not installed")?;
        let dir = self.pg_dir();
        let data = dir.join("data");
        let url_file = dir.join("url");
        if data.join("postmaster.pid").exists()
            && quiet(
                self.as_pg(&bin.join("pg_ctl"))
                    .arg("-D")
                    .arg(&data)
                    .arg("status"),
            )
            && let Ok(url) = std::fs::read_to_string(&url_file)
        {
            eprintln!("postgres already running");
            return Ok(url.trim().to_owned());
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        if is_root() {
            if !quiet(Command::new("id").arg(PG_USER)) {
                super::run(Command::new("useradd").args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    PG_USER,
                ]))?;
            }
            super::run(Command::new("chown").arg(PG_USER).arg(&dir))?;
        }
        let started = Instant::now();
        let initdb = self
            .as_pg(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .output()
            .context("running initdb")?;
        if !initdb.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&initdb.stderr));
        }
        let port = free_port()?;
        // Disposable data: durability settings off for speed; loopback only; the socket in
        // our own directory because /var/run/postgresql may not exist.
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300",
            dir.display()
        );
        super::run(
            self.as_pg(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("postgres.log"))
                .args(["-w", "-t", "30", "-s", "-o", &options, "start"])
                .stdout(Stdio::null()),
        )?;
        super::run(
            Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ])
                .args(["-p", &port.to_string(), "-v", "ON_ERROR_STOP=1", "-c"])
                .arg(format!("CREATE DATABASE {PG_DATABASE}")),
        )?;
        let url = format!("postgres://postgres@127.0.0.1:{port}/{PG_DATABASE}");
        std::fs::write(&url_file, &url)?;
        eprintln!("postgres ready in {:.1} s", started.elapsed().as_secs_f64());
        Ok(url)
    }

    /// The environment that makes a RabbitMQ node and its CLI tools private to `dir`.
    fn rabbitmq_env(&self, ports: (u16, u16, u16)) -> Vec<(String, String)> {
        let dir = self.rmq_dir();
        let d = |p: &str| dir.join(p).display().to_string();
        let (amqp, dist, epmd) = ports;
        [
            ("HOME", d("home")),
            ("RABBITMQ_NODENAME", format!("verify{amqp}@localhost")),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT", amqp.to_string()),
            ("RABBITMQ_DIST_PORT", dist.to_string()),
            ("ERL_EPMD_PORT", epmd.to_string()),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_MNESIA_BASE", d("mnesia")),
            ("RABBITMQ_LOG_BASE", d("log")),
            ("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins")),
            ("RABBITMQ_CONF_ENV_FILE", d("rabbitmq-env.conf")),
            ("RABBITMQ_ADVANCED_CONFIG_FILE", d("advanced.config")),
            ("RABBITMQ_PID_FILE", d("rabbit.pid")),
            // The Erlang distribution listener would bind 0.0.0.0 otherwise.
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}".into(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The variables written to `server.env` by `rabbitmq_up`.
    fn rabbitmq_server_env(&self) -> anyhow::Result<Vec<(String, String)>> {
        let text = std::fs::read_to_string(self.rmq_dir().join("server.env"))
            .context("RabbitMQ is not set up: run `cargo xtask deps up`")?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
            .collect())
    }

    /// A RabbitMQ CLI tool run with the node's private environment (its HOME holds the cookie).
    fn rabbitmq_tool(&self, tool: &str) -> anyhow::Result<Command> {
        let mut c = Command::new(Path::new(RABBITMQ_BIN).join(tool));
        c.envs(self.rabbitmq_server_env()?);
        Ok(c)
    }

    fn rabbitmq_ready(&self) -> bool {
        let ok = |tool: &str, args: &[&str]| {
            self.rabbitmq_tool(tool)
                .map(|mut c| quiet(c.args(args)))
                .unwrap_or(false)
        };
        ok("rabbitmqctl", &["-q", "await_startup", "--timeout", "60"])
            && ok("rabbitmq-diagnostics", &["-q", "check_port_connectivity"])
    }

    fn wait_rabbitmq(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        while !self.rabbitmq_ready() {
            if started.elapsed() > Duration::from_secs(90) {
                bail!(
                    "RabbitMQ did not come up; see {}",
                    self.rmq_dir().join("log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("rabbitmq ready in {:.1} s", started.elapsed().as_secs_f64());
        Ok(())
    }

    fn rabbitmq_up(&self) -> anyhow::Result<String> {
        let dir = self.rmq_dir();
        let url_file = dir.join("url");
        if let Ok(url) = std::fs::read_to_string(&url_file)
            && self
                .rabbitmq_tool("rabbitmq-diagnostics")
                .is_ok_and(|mut c| quiet(c.args(["-q", "ping"])))
        {
            eprintln!("rabbitmq already running");
            return Ok(url.trim().to_owned());
        }
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["home", "mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let amqp = free_port()?;
        let mut dist = free_port()?;
        while dist == amqp {
            dist = free_port()?;
        }
        let mut epmd = free_port()?;
        while epmd == amqp || epmd == dist {
            epmd = free_port()?;
        }
        let mut random = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random)?;
        let cookie: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let cookie_path = dir.join("home/.erlang.cookie");
        std::fs::write(&cookie_path, cookie)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&cookie_path, std::fs::Permissions::from_mode(0o400))?;
        }
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            "log.console = false\nlog.file.level = warning\n",
        )?;
        let env = self.rabbitmq_env((amqp, dist, epmd));
        let server_env: String = env
            .iter()
            .map(|(k, v)| format!("export {k}='{v}'\n"))
            .collect();
        std::fs::write(dir.join("server.env"), &server_env)?;
        // A control script, so tests can stop and start the broker (`ctl rabbitmqctl stop_app`).
        let ctl = dir.join("ctl");
        std::fs::write(
            &ctl,
            format!(
                "#!/bin/sh\n. '{}'\ntool=$1; shift\nexec '{RABBITMQ_BIN}'/\"$tool\" \"$@\"\n",
                dir.join("server.env").display()
            ),
        )?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o755))?;
        }
        let log = std::fs::File::create(dir.join("log/stdout.log"))?;
        let mut server = Command::new("setsid");
        server
            .arg(Path::new(RABBITMQ_BIN).join("rabbitmq-server"))
            .current_dir(&dir)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        server.spawn().context("starting rabbitmq-server")?;
        self.wait_rabbitmq()?;
        let url = format!("amqp://guest:guest@127.0.0.1:{amqp}/%2f");
        std::fs::write(&url_file, &url)?;
        Ok(url)
    }

    /// Stops and starts the RabbitMQ application (connections drop, durable state stays).
    pub fn restart_rabbitmq(&self) -> anyhow::Result<()> {
        super::run(self.rabbitmq_tool("rabbitmqctl")?.args(["-q", "stop_app"]))?;
        super::run(self.rabbitmq_tool("rabbitmqctl")?.args(["-q", "start_app"]))?;
        self.wait_rabbitmq()
    }

    pub fn down(&self) -> anyhow::Result<()> {
        if let Some(bin) = pg_bin() {
            let data = self.pg_dir().join("data");
            if data.join("postmaster.pid").exists() {
                quiet(self.as_pg(&bin.join("pg_ctl")).arg("-D").arg(&data).args([
                    "-m",
                    "immediate",
                    "-w",
                    "-s",
                    "stop",
                ]));
            }
        }
        if self.rmq_dir().join("server.env").exists() {
            let stopped = self
                .rabbitmq_tool("rabbitmqctl")
                .is_ok_and(|mut c| quiet(c.args(["-q", "shutdown", "--timeout", "30"])));
            if !stopped && let Ok(pid) = std::fs::read_to_string(self.rmq_dir().join("rabbit.pid"))
            {
                quiet(Command::new("kill").arg(pid.trim()));
            }
            // Our private epmd outlives the node; stop it by its port.
            let epmd_port = self.rabbitmq_server_env().ok().and_then(|env| {
                env.into_iter()
                    .find(|(k, _)| k == "ERL_EPMD_PORT")
                    .map(|(_, v)| v)
            });
            if let Some(port) = epmd_port {
                quiet(Command::new("epmd").args(["-port", &port, "-kill"]));
            }
        }
        let _ = std::fs::remove_dir_all(&self.base);
        let _ = std::fs::remove_file(&self.env_file);
        eprintln!("deps stopped");
        Ok(())
    }

    pub fn status(&self) -> anyhow::Result<()> {
        let pg = std::fs::read_to_string(self.pg_dir().join("url")).ok();
        let pg_up = pg_bin().is_some_and(|bin| {
            quiet(
                self.as_pg(&bin.join("pg_ctl"))
                    .arg("-D")
                    .arg(self.pg_dir().join("data"))
                    .arg("status"),
            )
        });
        let rmq = std::fs::read_to_string(self.rmq_dir().join("url")).ok();
        let rmq_up = self
            .rabbitmq_tool("rabbitmq-diagnostics")
            .is_ok_and(|mut c| quiet(c.args(["-q", "ping"])));
        println!(
            "postgres  {}  {}",
            if pg_up { "up  " } else { "down" },
            pg.unwrap_or_default().trim()
        );
        println!(
            "rabbitmq  {}  {}",
            if rmq_up { "up  " } else { "down" },
            rmq.unwrap_or_default().trim()
        );
        Ok(())
    }
}
