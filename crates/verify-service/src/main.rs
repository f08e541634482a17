//! `verify-gateway`: runs verify-service, and in the embedded default the Twilio sandbox
//! beside it, in one process. With `TWILIO_*` credentials set it talks to real Twilio.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use verify_service::app::{self, Gateway};
use verify_service::config::{self, Overrides};

/// mimalloc rather than glibc's malloc: allocation is a tenth of a request's CPU, and with
/// it the hot path serves about a tenth more flows per second (see the README's figures).
/// Built with `override`, it also answers C's malloc, so the bundled SQLite uses it too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// verify-gateway: a gRPC gateway in front of Twilio Verify.
///
/// Without Twilio credentials it runs the embedded Twilio sandbox, SQLite in the data dir and
/// generated development keys, so it works with no set-up. Set TWILIO_ACCOUNT_SID and
/// TWILIO_AUTH_TOKEN (or TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET) and
/// TWILIO_VERIFY_SERVICE_SID to talk to real Twilio.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// A TOML file overriding the shipped defaults (see config/default.toml).
    #[arg(long, global = true, env = "VERIFY_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the gRPC server.
    #[arg(long, global = true)]
    grpc_addr: Option<SocketAddr>,
    /// Address of the embedded Twilio sandbox.
    #[arg(long, global = true)]
    sandbox_addr: Option<SocketAddr>,
    /// Address of the embedded webhook receiver (embedded mode).
    #[arg(long, global = true)]
    webhooks_addr: Option<SocketAddr>,
    /// Directory for the SQLite database and development keys.
    #[arg(long, global = true, env = "VERIFY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Database URL: `sqlite://path?mode=rwc` or `postgres://user@host/db`; defaults to
    /// SQLite in the data dir.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// RabbitMQ URL (`amqp://user:password@host:5672/%2f`) for the distributed mode; without
    /// it the embedded in-process bus is used.
    #[arg(long, global = true, env = "AMQP_URL", hide_env_values = true)]
    amqp_url: Option<String>,
    /// The RabbitMQ topic exchange (the same as webhook-ingest's); default `verify.events`.
    #[arg(long, global = true, env = "AMQP_EXCHANGE")]
    amqp_exchange: Option<String>,
    /// Log format: pretty or json.
    #[arg(long, global = true)]
    log_format: Option<String>,
    /// Where Prometheus metrics are served (`0.0.0.0:9464`); default: not served.
    #[arg(long, global = true)]
    metrics_addr: Option<SocketAddr>,
    /// The OTLP/gRPC endpoint spans are exported to (`http://otel-collector:4317`); without
    /// it nothing is exported, but `traceparent` headers are still read and passed on.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// The `service.name` of exported spans.
    #[arg(
        long,
        global = true,
        env = "OTEL_SERVICE_NAME",
        default_value = "verify-gateway"
    )]
    otel_service_name: String,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Re-encrypt destinations sealed with older keys under the current key, then exit.
    Reencrypt {
        /// Rows per batch.
        #[arg(long, default_value_t = 500)]
        batch: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = config::load(&Overrides {
        config_file: cli.config,
        grpc_addr: cli.grpc_addr,
        sandbox_addr: cli.sandbox_addr,
        data_dir: cli.data_dir,
        database_url: cli.database_url,
        amqp_url: cli.amqp_url,
        amqp_exchange: cli.amqp_exchange,
        webhooks_addr: cli.webhooks_addr,
        log_format: cli.log_format,
        metrics_addr: cli.metrics_addr,
    })?;
    let telemetry = telemetry::init(
        settings.log_format,
        &settings.log_filter,
        &telemetry::TraceExport {
            otlp_endpoint: cli.otlp_endpoint,
            service_name: cli.otel_service_name,
        },
    )?;
    let outcome = run(cli.command.unwrap_or(Command::Serve), &settings).await;
    flush_spans(telemetry).await;
    outcome
}

async fn run(command: Command, settings: &config::Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve(settings).await,
        Command::Migrate => {
            let database = app::open_database(settings).await?;
            database.migrate().await?;
            database.close().await;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Reencrypt { batch } => {
            let keys = verify_service::keys::load(&settings.keys, &settings.data_dir)?;
            let database = app::open_database(settings).await?;
            let n = app::reencrypt(
                database.verifications().as_ref(),
                &keys.keyring,
                batch.max(1),
            )
            .await?;
            database.close().await;
            tracing::info!(
                rewritten = n,
                key_id = keys.keyring.current_id(),
                "re-encryption done"
            );
            Ok(())
        }
    }
}

/// Exports the spans still buffered; the export blocks, so it runs off the async workers.
async fn flush_spans(telemetry: telemetry::Telemetry) {
    match tokio::task::spawn_blocking(move || telemetry.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "spans may have been lost"),
        Err(e) => tracing::warn!(error = %e, "the span flush did not finish"),
    }
}

async fn serve(settings: &config::Settings) -> anyhow::Result<()> {
    let gateway = Gateway::bind(settings).await?;
    let grpc = gateway.grpc_addr().context("gRPC address")?;
    tracing::info!(grpc = %grpc, sandbox = ?gateway.sandbox_addr(), "verify-gateway serving");
    print_welcome(grpc, gateway.sandbox_addr());
    gateway.run(telemetry::shutdown_signal()).await
}

fn print_welcome(grpc: SocketAddr, sandbox: Option<SocketAddr>) {
    eprintln!("\nverify-gateway is serving gRPC on {grpc} (health and reflection included).");
    if let Some(sandbox) = sandbox {
        eprintln!(
            "Twilio sandbox on http://{sandbox} (account {}, token {}).\n\
             \nTry it:\n  grpcurl -plaintext -d '{{\"purpose\":\"login\",\"to\":\"(415) 555-2671\",\"default_region\":\"US\",\"channel\":\"CHANNEL_SMS\"}}' \\\n    {grpc} verify.v1.VerifyService/StartVerification\n  curl 'http://{sandbox}/sandbox/messages?to=%2B14155552671'     # the code that was \"sent\"\n  grpcurl -plaintext -d '{{\"id\":\"ver_…\",\"code\":\"123456\"}}' {grpc} verify.v1.VerifyService/CheckVerification\n  curl http://{sandbox}/sandbox/scenarios                        # numbers that fail on purpose\n",
            twilio_sandbox::DEV_ACCOUNT_SID,
            twilio_sandbox::DEV_AUTH_TOKEN,
        );
    }
}
