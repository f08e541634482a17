//! `webhook-ingest`: receives Twilio's webhooks for verify-gateway in the distributed mode.
//! Configured by flags or their environment variables; secrets only from the environment.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use secrecy::SecretString;
use url::Url;
use webhook_ingest::{DEFAULT_LIMITS, DEFAULT_OUTBOX_MAX_ATTEMPTS, Ingest, Limits, Settings};

/// webhook-ingest: the HTTP receiver of Twilio's signed webhooks for verify-gateway.
///
/// The Twilio auth token that signs webhooks is read from TWILIO_AUTH_TOKEN only.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address of the HTTP server.
    #[arg(
        long,
        global = true,
        env = "WEBHOOK_INGEST_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    addr: SocketAddr,
    /// The public URL Twilio posts to, exactly as configured at Twilio (signatures cover it).
    #[arg(long, global = true, env = "WEBHOOK_PUBLIC_BASE_URL")]
    public_base_url: Option<Url>,
    /// Database URL: `postgres://user:password@host/db`.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// RabbitMQ URL: `amqp://user:password@host:5672/%2f`.
    #[arg(long, global = true, env = "AMQP_URL", hide_env_values = true)]
    amqp_url: Option<String>,
    /// The RabbitMQ topic exchange events are published to (the same as verify-service's).
    #[arg(long, global = true, env = "AMQP_EXCHANGE", default_value = messaging::DEFAULT_EXCHANGE)]
    amqp_exchange: String,
    /// Reverse proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-Proto and
    /// X-Forwarded-Host name the public URL; empty: only the public base URL counts.
    #[arg(
        long,
        global = true,
        env = "WEBHOOK_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = parse_net
    )]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// How long a request's headers may take to arrive (`10s`, `500ms`); a kept-alive
    /// connection idle this long is closed too. Behind a proxy that keeps connections to
    /// this server open, make it longer than the proxy's idle timeout.
    #[arg(
        long,
        global = true,
        env = "WEBHOOK_HEADER_TIMEOUT",
        default_value = "10s",
        value_parser = parse_duration
    )]
    header_timeout: Duration,
    /// How long a request's body may take to arrive after its headers; a slower one is
    /// answered 408 and nothing of it is stored.
    #[arg(
        long,
        global = true,
        env = "WEBHOOK_BODY_TIMEOUT",
        default_value = "30s",
        value_parser = parse_duration
    )]
    body_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    #[arg(
        long,
        global = true,
        env = "WEBHOOK_MAX_CONNECTIONS",
        default_value_t = DEFAULT_LIMITS.max_connections
    )]
    max_connections: NonZeroUsize,
    /// Failed publishing attempts after which a stored report is given up on: a dead
    /// letter, kept in the outbox for inspection and counted. The default, with retries
    /// every 30 s once the back-off is at its cap, is about a day of broker outage.
    #[arg(
        long,
        global = true,
        env = "WEBHOOK_OUTBOX_MAX_ATTEMPTS",
        default_value_t = DEFAULT_OUTBOX_MAX_ATTEMPTS,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    outbox_max_attempts: u32,
    /// Apply the database migrations before serving.
    #[arg(
        long,
        global = true,
        env = "WEBHOOK_MIGRATE_ON_START",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    migrate_on_start: bool,
    /// Log format: pretty or json.
    #[arg(
        long,
        global = true,
        env = "VERIFY_LOG__FORMAT",
        default_value = "pretty"
    )]
    log_format: String,
    /// Log filter (tracing-subscriber's EnvFilter syntax).
    #[arg(
        long,
        global = true,
        env = "VERIFY_LOG__FILTER",
        default_value = "info"
    )]
    log_filter: String,
    /// The OTLP/gRPC endpoint spans are exported to (`http://otel-collector:4317`); without
    /// it nothing is exported, but trace context still travels with each report.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// The `service.name` of exported spans.
    #[arg(
        long,
        global = true,
        env = "OTEL_SERVICE_NAME",
        default_value = "webhook-ingest"
    )]
    otel_service_name: String,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Serve HTTP (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let format = cli.log_format.parse().context("--log-format")?;
    let telemetry = telemetry::init(
        format,
        &cli.log_filter,
        &telemetry::TraceExport {
            otlp_endpoint: cli.otlp_endpoint.clone(),
            service_name: cli.otel_service_name.clone(),
        },
    )?;
    let outcome = run(cli).await;
    // Exports the spans still buffered; the export blocks, so it runs off the async workers.
    match tokio::task::spawn_blocking(move || telemetry.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "spans may have been lost"),
        Err(e) => tracing::warn!(error = %e, "the span flush did not finish"),
    }
    outcome
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let database_url = cli
        .database_url
        .clone()
        .context("set DATABASE_URL (or --database-url)")?;
    match cli.command.as_ref().unwrap_or(&Command::Serve) {
        Command::Migrate => {
            let database = storage::Database::open(&database_url)
                .await
                .context("opening the database")?;
            database.migrate().await.context("migrating the database")?;
            database.close().await;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Serve => {
            let settings = Settings {
                addr: cli.addr,
                public_base_url: Some(
                    cli.public_base_url
                        .context("set WEBHOOK_PUBLIC_BASE_URL (or --public-base-url)")?,
                ),
                auth_token: SecretString::from(
                    std::env::var("TWILIO_AUTH_TOKEN").unwrap_or_default(),
                ),
                trusted_proxies: cli.trusted_proxies,
            };
            settings.validate()?;
            let amqp_url =
                SecretString::from(cli.amqp_url.context("set AMQP_URL (or --amqp-url)")?);
            let connections = webhook_ingest::connect_to(
                &database_url,
                cli.migrate_on_start,
                amqp_url,
                &cli.amqp_exchange,
            )
            .await?;
            let ingest = Ingest::bind(&settings, connections)
                .await?
                .with_limits(Limits {
                    header_timeout: cli.header_timeout,
                    body_timeout: cli.body_timeout,
                    max_connections: cli.max_connections,
                })
                .with_outbox_max_attempts(cli.outbox_max_attempts);
            tracing::info!(addr = %ingest.local_addr()?, "webhook-ingest serving");
            ingest.run(telemetry::shutdown_signal()).await
        }
    }
}

/// A duration in whole milliseconds (`500ms`) or seconds (`10s`, or just `10`), not zero.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (digits, millis_per_unit) = match raw.strip_suffix("ms") {
        Some(digits) => (digits, 1),
        None => (raw.strip_suffix('s').unwrap_or(raw), 1_000),
    };
    match digits.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_millis(n.saturating_mul(millis_per_unit))),
        _ => Err(format!(
            "`{raw}` is not a duration such as `10s` or `500ms` (zero is not allowed)"
        )),
    }
}

/// An IP network (`10.0.0.0/8`) or a single address (`10.0.0.7`).
fn parse_net(raw: &str) -> Result<ipnet::IpNet, String> {
    let raw = raw.trim();
    raw.parse::<ipnet::IpNet>()
        .or_else(|_| raw.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{raw}` is not an IP address or network"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, expected: Option<Duration>) {
        assert_eq!(parse_duration(raw).ok(), expected, "{raw}");
    }

    #[test]
    fn durations_take_seconds_or_milliseconds() {
        check("10s", Some(Duration::from_secs(10)));
        check("10", Some(Duration::from_secs(10)));
        check(" 500ms ", Some(Duration::from_millis(500)));
        check("0s", None);
        check("0ms", None);
        check("1.5s", None);
        check("10m", None);
        check("", None);
    }

    #[test]
    fn the_limits_default_to_the_library_defaults() {
        let cli = Cli::try_parse_from(["webhook-ingest"]).expect("no flags needed");
        assert_eq!(cli.header_timeout, DEFAULT_LIMITS.header_timeout);
        assert_eq!(cli.body_timeout, DEFAULT_LIMITS.body_timeout);
        assert_eq!(cli.max_connections, DEFAULT_LIMITS.max_connections);
    }
}
