//! Configuration: shipped defaults, then an optional TOML file, then `VERIFY_*` variables
//! and Twilio's own `TWILIO_*` variables. Loaded once at start-up, validated, and turned
//! into typed settings; nothing else reads the environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use domain::abuse::Quota;
use domain::{Channel, Purpose, Region};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use policy::{Policies, PurposePolicy, PurposeSettings, RateLimits};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

/// The configuration file shipped with the binary; every other layer overrides it.
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/default.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    sandbox: RawSandbox,
    storage: RawStorage,
    bus: RawBus,
    webhooks: RawWebhooks,
    twilio: RawTwilio,
    log: RawLog,
    #[serde(default)]
    keys: RawKeys,
    rate_limits: RawRateLimits,
    fraud: RawFraud,
    admin: RawAdmin,
    metrics: RawMetrics,
    reconcile: RawReconcile,
    auth: RawAuth,
    #[serde(default)]
    callers: BTreeMap<String, RawCaller>,
    purposes: BTreeMap<String, RawPurpose>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    /// Serve VerifyService beyond loopback with no callers configured.
    insecure_no_callers: bool,
}

/// `[callers.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaller {
    #[serde(default)]
    mtls_subject: String,
    #[serde(default)]
    token_sha256: String,
    #[serde(default)]
    purposes: Vec<String>,
    #[serde(default)]
    trusted_step_up: bool,
}

/// Rate limits as `N/PERIOD` strings (`5/10m`); `"off"` turns one off. The top-level table
/// holds every key; a purpose's `rate_limits` table overrides some of them.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawRateLimits {
    send_per_destination: Option<String>,
    send_per_client_ip: Option<String>,
    send_per_identity: Option<String>,
    send_per_range: Option<String>,
    send_per_country: Option<String>,
    check_per_identity: Option<String>,
    check_per_destination: Option<String>,
    check_cooldown_seconds: Option<u64>,
    /// Keys the in-process layer holds at most (per quota) before it evicts.
    local_max_keys: Option<usize>,
}

impl RawRateLimits {
    fn overlaid(&self, over: &RawRateLimits) -> RawRateLimits {
        let pick = |a: &Option<String>, b: &Option<String>| b.clone().or_else(|| a.clone());
        RawRateLimits {
            send_per_destination: pick(&self.send_per_destination, &over.send_per_destination),
            send_per_client_ip: pick(&self.send_per_client_ip, &over.send_per_client_ip),
            send_per_identity: pick(&self.send_per_identity, &over.send_per_identity),
            send_per_range: pick(&self.send_per_range, &over.send_per_range),
            send_per_country: pick(&self.send_per_country, &over.send_per_country),
            check_per_identity: pick(&self.check_per_identity, &over.check_per_identity),
            check_per_destination: pick(&self.check_per_destination, &over.check_per_destination),
            check_cooldown_seconds: over.check_cooldown_seconds.or(self.check_cooldown_seconds),
            local_max_keys: self.local_max_keys,
        }
    }

    fn resolve(&self, table: &str) -> anyhow::Result<RateLimits> {
        let quota = |name: &str, raw: &Option<String>| -> anyhow::Result<Option<Quota>> {
            match raw.as_deref().map(str::trim) {
                None | Some("") | Some("off") => Ok(None),
                Some(q) => Quota::parse(q)
                    .map(Some)
                    .with_context(|| format!("{table}.{name}")),
            }
        };
        Ok(RateLimits {
            send_per_destination: quota("send_per_destination", &self.send_per_destination)?,
            send_per_client_ip: quota("send_per_client_ip", &self.send_per_client_ip)?,
            send_per_identity: quota("send_per_identity", &self.send_per_identity)?,
            send_per_range: quota("send_per_range", &self.send_per_range)?,
            send_per_country: quota("send_per_country", &self.send_per_country)?,
            check_per_identity: quota("check_per_identity", &self.check_per_identity)?,
            check_per_destination: quota("check_per_destination", &self.check_per_destination)?,
            check_cooldown: Duration::from_secs(self.check_cooldown_seconds.unwrap_or(0)),
        })
    }
}

/// Fraud scoring: the mode, the lists, the thresholds and each signal's window and tiers;
/// what is not given keeps the `fraud` crate's recommended default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFraud {
    mode: String,
    #[serde(default)]
    allow_countries: Vec<String>,
    #[serde(default)]
    block_countries: Vec<String>,
    /// Replaces the default high-risk list when given.
    #[serde(default)]
    high_risk_countries: Option<Vec<String>>,
    #[serde(default)]
    step_up_score: Option<u32>,
    #[serde(default)]
    block_score: Option<u32>,
    /// How long scoring blocks a range (or IP) it found abused.
    #[serde(default)]
    auto_block_minutes: Option<u64>,
    #[serde(default)]
    prefix_velocity: RawCountSignal,
    #[serde(default)]
    prefix_conversion: RawConversionSignal,
    #[serde(default)]
    country_conversion: RawConversionSignal,
    #[serde(default)]
    network_conversion: RawConversionSignal,
    #[serde(default)]
    network_step_ups: RawConversionSignal,
    #[serde(default)]
    sequential: RawCountSignal,
    #[serde(default)]
    ip_fan_out: RawCountSignal,
    #[serde(default)]
    identity_fan_out: RawCountSignal,
}

/// `[fraud.<signal>]` of a signal that counts: its window and `tiers = [[count, weight], …]`
/// (the heaviest tier reached adds its weight; `tiers = []` turns the signal off).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCountSignal {
    window_minutes: Option<u64>,
    tiers: Option<Vec<[u32; 2]>>,
}

impl RawCountSignal {
    fn apply(self, signal: &mut fraud::CountSignal) {
        if let Some(minutes) = self.window_minutes {
            signal.window = Duration::from_secs(minutes.saturating_mul(60));
        }
        if let Some(tiers) = self.tiers {
            signal.tiers = tiers
                .into_iter()
                .map(|[at, weight]| fraud::Tier { at, weight })
                .collect();
        }
    }
}

/// `[fraud.<signal>]` of a conversion signal: its window and
/// `tiers = [[min_sent, below_percent, weight], …]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConversionSignal {
    window_minutes: Option<u64>,
    tiers: Option<Vec<[u32; 3]>>,
}

impl RawConversionSignal {
    fn apply(self, signal: &mut fraud::ConversionSignal) {
        if let Some(minutes) = self.window_minutes {
            signal.window = Duration::from_secs(minutes.saturating_mul(60));
        }
        if let Some(tiers) = self.tiers {
            signal.tiers = tiers
                .into_iter()
                .map(|[min_sent, below_percent, weight]| fraud::ConversionTier {
                    min_sent,
                    below_percent,
                    weight,
                })
                .collect();
        }
    }
}

fn resolve_fraud(raw: RawFraud) -> anyhow::Result<fraud::FraudConfig> {
    let mut config = fraud::FraudConfig {
        mode: fraud::Mode::parse(&raw.mode)
            .with_context(|| format!("fraud.mode `{}` must be enforce, shadow or off", raw.mode))?,
        ..fraud::FraudConfig::default()
    };
    let regions = |field: &str, list: &[String]| -> anyhow::Result<Vec<Region>> {
        list.iter()
            .map(|c| {
                Region::parse(&c.trim().to_ascii_uppercase()).with_context(|| {
                    format!("fraud.{field}: `{c}` is not an ISO 3166-1 alpha-2 code")
                })
            })
            .collect()
    };
    config.allow_countries = regions("allow_countries", &raw.allow_countries)?;
    config.block_countries = regions("block_countries", &raw.block_countries)?;
    if let Some(list) = &raw.high_risk_countries {
        config.high_risk_countries = regions("high_risk_countries", list)?;
    }
    if let Some(score) = raw.step_up_score {
        config.step_up_score = score;
    }
    if let Some(score) = raw.block_score {
        config.block_score = score;
    }
    if let Some(minutes) = raw.auto_block_minutes {
        config.auto_block = Duration::from_secs(minutes.saturating_mul(60));
    }
    raw.prefix_velocity.apply(&mut config.prefix_velocity);
    raw.prefix_conversion.apply(&mut config.prefix_conversion);
    raw.country_conversion.apply(&mut config.country_conversion);
    raw.network_conversion.apply(&mut config.network_conversion);
    raw.network_step_ups.apply(&mut config.network_step_ups);
    raw.sequential.apply(&mut config.sequential);
    raw.ip_fan_out.apply(&mut config.ip_fan_out);
    raw.identity_fan_out.apply(&mut config.identity_fan_out);
    config.validate()?;
    Ok(config)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    /// The bearer token of AdminService; secrets belong in `VERIFY_ADMIN__TOKEN`.
    token: SecretString,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    /// Where `/metrics` (Prometheus text format) is served; empty: not served.
    addr: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    grpc_addr: SocketAddr,
    request_timeout_seconds: u64,
    concurrency_limit_per_connection: usize,
    max_concurrent_streams: u32,
    max_concurrent_calls: usize,
    shutdown_grace_seconds: u64,
    database_ping_interval_ms: u64,
    database_ping_timeout_ms: u64,
    tls: RawTls,
}

impl RawServer {
    fn limits(&self) -> anyhow::Result<crate::server::Limits> {
        let positive = |name: &str, value: u64| -> anyhow::Result<u64> {
            if value == 0 {
                bail!("server.{name} must be above 0");
            }
            Ok(value)
        };
        Ok(crate::server::Limits {
            request_timeout: Duration::from_secs(positive(
                "request_timeout_seconds",
                self.request_timeout_seconds,
            )?),
            concurrency_per_connection: positive(
                "concurrency_limit_per_connection",
                self.concurrency_limit_per_connection as u64,
            )? as usize,
            max_concurrent_streams: positive(
                "max_concurrent_streams",
                u64::from(self.max_concurrent_streams),
            )? as u32,
            max_concurrent_calls: positive(
                "max_concurrent_calls",
                self.max_concurrent_calls as u64,
            )? as usize,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_seconds),
            database_ping_every: Duration::from_millis(positive(
                "database_ping_interval_ms",
                self.database_ping_interval_ms,
            )?),
            database_ping_timeout: Duration::from_millis(positive(
                "database_ping_timeout_ms",
                self.database_ping_timeout_ms,
            )?),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: String,
    key_file: String,
    client_ca_file: String,
    client_certificate: crate::tls::ClientCertificate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSandbox {
    mode: SandboxMode,
    addr: SocketAddr,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum SandboxMode {
    Auto,
    On,
    Off,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReconcile {
    interval_ms: u64,
    min_age_ms: u64,
    give_up_after_seconds: u64,
    batch: u32,
}

impl RawReconcile {
    fn settings(&self) -> anyhow::Result<crate::reconcile::Settings> {
        if self.interval_ms == 0 {
            bail!("reconcile.interval_ms must be above 0");
        }
        if !(1..=1000).contains(&self.batch) {
            bail!(
                "reconcile.batch must be between 1 and 1000 (got {})",
                self.batch
            );
        }
        let settings = crate::reconcile::Settings {
            every: Duration::from_millis(self.interval_ms),
            min_age: Duration::from_millis(self.min_age_ms),
            give_up_after: Duration::from_secs(self.give_up_after_seconds),
            batch: self.batch,
        };
        if settings.give_up_after < settings.min_age {
            bail!("reconcile.give_up_after_seconds must not be below reconcile.min_age_ms");
        }
        Ok(settings)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    database_url: SecretString,
    migrate_on_start: bool,
    retention_days: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhooks {
    embedded: bool,
    addr: SocketAddr,
    public_base_url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBus {
    amqp_url: SecretString,
    exchange: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTwilio {
    base_url: String,
    region: String,
    edge: String,
    timeout_ms: u64,
    connect_timeout_ms: u64,
    max_retries: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: String,
    filter: String,
}

/// Key material: base64 of 32 bytes each. Secrets belong in the environment
/// (`VERIFY_KEYS__BLIND_INDEX_KEY`, `VERIFY_KEYS__ENCRYPTION_KEYS="k2:…,k1:…"`) or a file
/// (`keys.file`), never in a config file that is committed.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    #[serde(default)]
    blind_index_key: Option<SecretString>,
    /// `id:base64key` pairs separated by commas; the first encrypts, all decrypt.
    #[serde(default)]
    encryption_keys: Option<SecretString>,
    /// A TOML file with `blind_index_key` and `encryption_keys`.
    #[serde(default)]
    file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPurpose {
    #[serde(default)]
    service_sid: String,
    channels: Vec<Channel>,
    #[serde(default)]
    default_channel: Option<Channel>,
    #[serde(default)]
    default_region: Option<String>,
    max_sends: u32,
    max_checks: u32,
    code_ttl_seconds: u64,
    idempotency_window_seconds: u64,
    #[serde(default)]
    fallback: Vec<Channel>,
    #[serde(default = "default_fallback_after_seconds")]
    fallback_after_seconds: u64,
    #[serde(default)]
    rate_limits: RawRateLimits,
}

fn default_fallback_after_seconds() -> u64 {
    30
}

/// Twilio credentials as Twilio's own variables name them.
#[derive(Debug, Default, Clone)]
pub struct TwilioEnv {
    pub account_sid: Option<String>,
    pub auth_token: Option<SecretString>,
    pub api_key_sid: Option<String>,
    pub api_key_secret: Option<SecretString>,
    pub verify_service_sid: Option<String>,
}

impl TwilioEnv {
    pub fn from_process_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        TwilioEnv {
            account_sid: var("TWILIO_ACCOUNT_SID"),
            auth_token: var("TWILIO_AUTH_TOKEN").map(SecretString::from),
            api_key_sid: var("TWILIO_API_KEY_SID"),
            api_key_secret: var("TWILIO_API_KEY_SECRET").map(SecretString::from),
            verify_service_sid: var("TWILIO_VERIFY_SERVICE_SID"),
        }
    }
}

/// Where verifications are sent.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// The embedded sandbox on `addr`, with its dev credentials.
    Sandbox { addr: SocketAddr },
    /// Real Twilio (or any Twilio-compatible base URL), as `Settings::twilio` says.
    Twilio,
}

#[derive(Debug, Clone)]
pub enum KeySource {
    /// Keys given by configuration.
    Given {
        blind_index_key: SecretString,
        encryption_keys: SecretString,
    },
    /// No keys configured: development keys are generated once and kept in the data dir.
    GenerateDev,
}

/// Validated, typed settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub grpc_addr: SocketAddr,
    /// The gRPC server's bounds on calls, its shutdown grace and its health pings.
    pub server_limits: crate::server::Limits,
    /// TLS on the gRPC port; `None`: plaintext.
    pub tls: Option<crate::tls::TlsFiles>,
    pub upstream: Upstream,
    pub database_url: SecretString,
    /// Apply migrations when serving starts; off where a separate step migrates.
    pub migrate_on_start: bool,
    /// How long verifications, delivery reports and handled messages are kept.
    pub retention: Duration,
    /// The reconciliation of sends Twilio never confirmed.
    pub reconcile: crate::reconcile::Settings,
    /// RabbitMQ (distributed mode); `None`: the embedded mode's in-process bus.
    pub amqp_url: Option<SecretString>,
    /// The RabbitMQ topic exchange.
    pub amqp_exchange: String,
    /// The webhook receiver run in this process (embedded mode only).
    pub webhooks: Option<EmbeddedWebhooks>,
    pub data_dir: PathBuf,
    pub keys: KeySource,
    pub log_format: telemetry::LogFormat,
    pub log_filter: String,
    pub policies: Policies,
    /// The Twilio adapter's settings; in sandbox mode `app` points `base_url` at the sandbox.
    pub twilio: twilio::TwilioConfig,
    /// Fraud scoring.
    pub fraud: fraud::FraudConfig,
    /// Keys the in-process rate limiter holds per limit before evicting.
    pub local_max_keys: usize,
    /// Who may call AdminService.
    pub admin: AdminAccess,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Who may call VerifyService; `None`: anyone who reaches the port (only on loopback,
    /// or with `auth.insecure_no_callers`).
    pub callers: Option<Arc<crate::auth::Callers>>,
    /// `auth.insecure_no_callers`: serve VerifyService beyond loopback without callers.
    pub insecure_no_callers: bool,
}

impl Settings {
    /// Whether VerifyService would answer anyone who reaches it beyond loopback (no callers,
    /// a non-loopback address), which needs `auth.insecure_no_callers`: an error naming
    /// the settings when it is not set, `Ok(true)` (to be warned of) when it is.
    pub fn open_to_anyone(&self) -> anyhow::Result<bool> {
        let open = self.callers.is_none() && !self.grpc_addr.ip().is_loopback();
        if open && !self.insecure_no_callers {
            bail!(
                "VerifyService would answer anyone who reaches {}: configure its callers \
                 ([callers.<name>] with token_sha256 or mtls_subject, see the README), listen \
                 on a loopback address (server.grpc_addr), or set \
                 auth.insecure_no_callers = true (VERIFY_AUTH__INSECURE_NO_CALLERS) to serve it \
                 unauthenticated anyway",
                self.grpc_addr
            );
        }
        Ok(open)
    }
}

/// Who may call AdminService.
#[derive(Debug, Clone)]
pub enum AdminAccess {
    /// Callers presenting this bearer token.
    Token(SecretString),
    /// Anyone who can reach the loopback address the gateway listens on.
    Loopback,
    /// Nobody: no token is set and the gateway listens beyond loopback.
    Off,
}

/// The embedded webhook receiver.
#[derive(Debug, Clone)]
pub struct EmbeddedWebhooks {
    pub addr: SocketAddr,
    /// `None`: the receiver's own bound address.
    pub public_base_url: Option<Url>,
    /// The token Twilio signs webhooks with: the sandbox's in sandbox mode, else
    /// `TWILIO_AUTH_TOKEN`.
    pub auth_token: SecretString,
}

/// Overrides from the command line; `None` keeps the configured value. Its `Debug` hides
/// the URLs, which may carry passwords.
#[derive(Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub grpc_addr: Option<SocketAddr>,
    pub sandbox_addr: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub amqp_url: Option<String>,
    pub amqp_exchange: Option<String>,
    pub webhooks_addr: Option<SocketAddr>,
    pub log_format: Option<String>,
    pub metrics_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |url: &Option<String>| url.as_ref().map(|_| "[redacted]");
        f.debug_struct("Overrides")
            .field("config_file", &self.config_file)
            .field("grpc_addr", &self.grpc_addr)
            .field("sandbox_addr", &self.sandbox_addr)
            .field("data_dir", &self.data_dir)
            .field("database_url", &hidden(&self.database_url))
            .field("amqp_url", &hidden(&self.amqp_url))
            .field("amqp_exchange", &self.amqp_exchange)
            .field("webhooks_addr", &self.webhooks_addr)
            .field("log_format", &self.log_format)
            .field("metrics_addr", &self.metrics_addr)
            .finish()
    }
}

/// Loads the layered configuration from the process environment.
pub fn load(overrides: &Overrides) -> anyhow::Result<Settings> {
    let mut figment = Figment::new().merge(Toml::string(DEFAULT_CONFIG));
    if let Some(path) = &overrides.config_file {
        if !path.exists() {
            bail!("config file {} does not exist", path.display());
        }
        figment = figment.merge(Toml::file(path));
    }
    figment = figment.merge(Env::prefixed("VERIFY_").split("__"));
    let raw: RawConfig = figment.extract().context("invalid configuration")?;
    resolve(raw, overrides, &TwilioEnv::from_process_env())
}

/// Loads from a TOML string over the defaults, without reading the environment.
pub fn load_from_str(
    toml: &str,
    overrides: &Overrides,
    env: &TwilioEnv,
) -> anyhow::Result<Settings> {
    let raw: RawConfig = Figment::new()
        .merge(Toml::string(DEFAULT_CONFIG))
        .merge(Toml::string(toml))
        .extract()
        .context("invalid configuration")?;
    resolve(raw, overrides, env)
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

fn resolve(raw: RawConfig, o: &Overrides, env: &TwilioEnv) -> anyhow::Result<Settings> {
    let data_dir = o.data_dir.clone().unwrap_or_else(|| PathBuf::from("data"));
    let credentials = twilio_credentials(env)?;
    let sandbox_on = match raw.sandbox.mode {
        SandboxMode::On => true,
        SandboxMode::Off => false,
        SandboxMode::Auto => credentials.is_none(),
    };
    let sandbox_addr = o.sandbox_addr.unwrap_or(raw.sandbox.addr);
    let twilio = twilio::TwilioConfig {
        credentials: credentials.clone().unwrap_or_else(sandbox_credentials),
        base_url: non_empty(&raw.twilio.base_url)
            .map(|u| Url::parse(&u).with_context(|| format!("twilio.base_url `{u}` is not a URL")))
            .transpose()?,
        region: non_empty(&raw.twilio.region),
        edge: non_empty(&raw.twilio.edge),
        timeout: Duration::from_millis(raw.twilio.timeout_ms.max(1)),
        connect_timeout: Duration::from_millis(raw.twilio.connect_timeout_ms.max(1)),
        max_retries: raw.twilio.max_retries,
    };
    let upstream = if sandbox_on {
        Upstream::Sandbox { addr: sandbox_addr }
    } else {
        if credentials.is_none() && twilio.base_url.is_none() {
            bail!(
                "the sandbox is off and no Twilio credentials are set: set TWILIO_ACCOUNT_SID \
                 with TWILIO_AUTH_TOKEN (or TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET)"
            );
        }
        Upstream::Twilio
    };

    let fallback_service = if sandbox_on {
        Some(twilio_sandbox::DEV_SERVICE_SID.to_owned())
    } else {
        env.verify_service_sid.clone()
    };
    let mut purposes = Vec::new();
    raw.rate_limits.resolve("rate_limits")?;
    for (name, p) in raw.purposes {
        let purpose = Purpose::parse(&name).with_context(|| format!("purpose name `{name}`"))?;
        let service_sid = non_empty(&p.service_sid)
            .or_else(|| fallback_service.clone())
            .with_context(|| {
                format!(
                    "purpose `{name}` has no service_sid: set purposes.{name}.service_sid or \
                     TWILIO_VERIFY_SERVICE_SID"
                )
            })?;
        let default_region = p
            .default_region
            .as_deref()
            .and_then(non_empty)
            .map(|r| Region::parse(&r))
            .transpose()
            .with_context(|| format!("purposes.{name}.default_region"))?;
        let settings = PurposeSettings {
            service_sid,
            channels: p.channels,
            default_channel: p.default_channel,
            default_region,
            max_sends: p.max_sends,
            max_checks: p.max_checks,
            code_ttl: Duration::from_secs(p.code_ttl_seconds),
            idempotency_window: Duration::from_secs(p.idempotency_window_seconds),
            fallback: p.fallback,
            fallback_after: Duration::from_secs(p.fallback_after_seconds),
            limits: raw
                .rate_limits
                .overlaid(&p.rate_limits)
                .resolve(&format!("purposes.{name}.rate_limits"))?,
        };
        purposes.push(PurposePolicy::new(purpose, settings)?);
    }
    if purposes.is_empty() {
        bail!("no purposes are configured: add a [purposes.<name>] table");
    }

    let keys = resolve_keys(raw.keys)?;
    // Generated keys are for trying the gateway on its sandbox: each process that makes its
    // own (or finds a file an earlier run left) protects destinations with keys no other
    // replica has, so lookups and limits across replicas would quietly stop matching.
    if matches!(keys, KeySource::GenerateDev) && !sandbox_on {
        bail!(
            "no keys are configured, and development keys are made only when the gateway \
             runs its own Twilio sandbox: set keys.blind_index_key and keys.encryption_keys \
             (VERIFY_KEYS__BLIND_INDEX_KEY, VERIFY_KEYS__ENCRYPTION_KEYS) or keys.file, the \
             same on every replica (see the README, \"Keys\")"
        );
    }
    let log_format = o
        .log_format
        .as_deref()
        .unwrap_or(&raw.log.format)
        .parse()
        .context("log.format")?;
    let database_url = SecretString::from(
        o.database_url
            .clone()
            .or_else(|| non_empty(raw.storage.database_url.expose_secret()))
            .unwrap_or_else(|| default_database_url(&data_dir)),
    );
    let amqp_url = o
        .amqp_url
        .as_deref()
        .and_then(non_empty)
        .or_else(|| non_empty(raw.bus.amqp_url.expose_secret()))
        .map(|url| {
            if url.starts_with("amqp://") || url.starts_with("amqps://") {
                Ok(SecretString::from(url))
            } else {
                Err(anyhow::anyhow!(
                    "bus.amqp_url must start with amqp:// or amqps://"
                ))
            }
        })
        .transpose()?;

    let webhooks = if raw.webhooks.embedded && amqp_url.is_none() {
        let token = if sandbox_on {
            Some(SecretString::from(twilio_sandbox::DEV_AUTH_TOKEN))
        } else {
            env.auth_token.clone()
        };
        match token {
            Some(token) => Some(EmbeddedWebhooks {
                addr: o.webhooks_addr.unwrap_or(raw.webhooks.addr),
                public_base_url: non_empty(&raw.webhooks.public_base_url)
                    .map(|u| {
                        Url::parse(&u)
                            .with_context(|| format!("webhooks.public_base_url `{u}` is not a URL"))
                    })
                    .transpose()?,
                auth_token: token,
            }),
            // API-key credentials without the account's auth token: nothing to check
            // signatures with, so no receiver (and no delivery-driven fallback).
            None => None,
        }
    } else {
        None
    };

    let grpc_addr = o.grpc_addr.unwrap_or(raw.server.grpc_addr);
    let admin = match non_empty(raw.admin.token.expose_secret()) {
        Some(token) if token.len() < 16 || token.starts_with("REPLACE_ME") => {
            bail!("admin.token must be a secret of at least 16 characters (VERIFY_ADMIN__TOKEN)")
        }
        Some(token) => AdminAccess::Token(SecretString::from(token)),
        None if grpc_addr.ip().is_loopback() => AdminAccess::Loopback,
        None => AdminAccess::Off,
    };
    let tls = resolve_tls(&raw.server.tls)?;
    let callers = resolve_callers(raw.callers, &purposes, tls.as_ref())?;
    let metrics_addr = match o.metrics_addr {
        Some(addr) => Some(addr),
        None => non_empty(&raw.metrics.addr)
            .map(|a| {
                a.parse::<SocketAddr>()
                    .with_context(|| format!("metrics.addr `{a}` is not host:port"))
            })
            .transpose()?,
    };
    Ok(Settings {
        grpc_addr,
        server_limits: raw.server.limits()?,
        tls,
        callers,
        insecure_no_callers: raw.auth.insecure_no_callers,
        fraud: resolve_fraud(raw.fraud)?,
        local_max_keys: raw.rate_limits.local_max_keys.unwrap_or(100_000).max(1000),
        admin,
        metrics_addr,
        upstream,
        database_url,
        migrate_on_start: raw.storage.migrate_on_start,
        retention: retention(raw.storage.retention_days)?,
        reconcile: raw.reconcile.settings()?,
        amqp_url,
        amqp_exchange: o
            .amqp_exchange
            .as_deref()
            .and_then(non_empty)
            .unwrap_or(raw.bus.exchange),
        webhooks,
        data_dir,
        keys,
        log_format,
        log_filter: raw.log.filter,
        policies: Policies::new(purposes),
        twilio,
    })
}

/// `[callers]`: each with a token digest or a certificate subject (the latter only where
/// client certificates are asked for), and purposes that exist.
fn resolve_callers(
    raw: BTreeMap<String, RawCaller>,
    purposes: &[PurposePolicy],
    tls: Option<&crate::tls::TlsFiles>,
) -> anyhow::Result<Option<Arc<crate::auth::Callers>>> {
    use crate::auth::{Caller, CallerEntry, Callers};
    if raw.is_empty() {
        return Ok(None);
    }
    let mut entries = Vec::with_capacity(raw.len());
    for (name, c) in raw {
        if !domain::is_config_name(&name) {
            bail!("callers.{name}: a caller's name is lower-case letters, digits, `_` and `-`");
        }
        let mtls_subject = non_empty(&c.mtls_subject);
        if mtls_subject.is_some() && tls.is_none_or(|t| t.client_ca_file.is_none()) {
            bail!(
                "callers.{name}.mtls_subject needs client certificates: set \
                 server.tls.client_ca_file (with cert_file and key_file)"
            );
        }
        let token_sha256 = match non_empty(&c.token_sha256) {
            Some(hex) => Some(crate::auth::parse_digest(&hex).with_context(|| {
                format!(
                    "callers.{name}.token_sha256 must be 64 hex digits, the SHA-256 of the \
                     token (`printf %s \"$TOKEN\" | sha256sum`)"
                )
            })?),
            None => None,
        };
        if mtls_subject.is_none() && token_sha256.is_none() {
            bail!("callers.{name} needs token_sha256 or mtls_subject: nothing would name it");
        }
        if c.purposes.is_empty() {
            bail!("callers.{name}.purposes is empty: list the purposes it may use");
        }
        for p in &c.purposes {
            if !purposes.iter().any(|policy| policy.purpose().as_str() == p) {
                bail!("callers.{name}.purposes names `{p}`, which is not a configured purpose");
            }
        }
        entries.push(CallerEntry {
            caller: Caller {
                name,
                purposes: c.purposes.into_iter().collect(),
                trusted_step_up: c.trusted_step_up,
            },
            mtls_subject,
            token_sha256,
        });
    }
    Callers::new(entries)
        .map(|c| Some(Arc::new(c)))
        .map_err(anyhow::Error::msg)
}

/// `[server.tls]`: both of the certificate and its key, or neither; a client CA only with
/// them.
fn resolve_tls(raw: &RawTls) -> anyhow::Result<Option<crate::tls::TlsFiles>> {
    let cert = non_empty(&raw.cert_file).map(PathBuf::from);
    let key = non_empty(&raw.key_file).map(PathBuf::from);
    let client_ca = non_empty(&raw.client_ca_file).map(PathBuf::from);
    match (cert, key) {
        (Some(cert_file), Some(key_file)) => Ok(Some(crate::tls::TlsFiles {
            cert_file,
            key_file,
            client_ca_file: client_ca,
            client_certificate: raw.client_certificate,
        })),
        (None, None) if client_ca.is_none() => Ok(None),
        (None, None) => bail!(
            "server.tls.client_ca_file needs server.tls.cert_file and key_file: mutual TLS is TLS first"
        ),
        (Some(_), None) => bail!("server.tls.cert_file is set but server.tls.key_file is not"),
        (None, Some(_)) => bail!("server.tls.key_file is set but server.tls.cert_file is not"),
    }
}

fn default_database_url(data_dir: &Path) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        data_dir.join("verify-gateway.db").display()
    )
}

fn sandbox_credentials() -> twilio::Credentials {
    twilio::Credentials::AuthToken {
        account_sid: twilio_sandbox::DEV_ACCOUNT_SID.to_owned(),
        auth_token: SecretString::from(twilio_sandbox::DEV_AUTH_TOKEN),
    }
}

fn twilio_credentials(env: &TwilioEnv) -> anyhow::Result<Option<twilio::Credentials>> {
    let Some(account_sid) = env.account_sid.clone() else {
        if env.auth_token.is_some() || env.api_key_sid.is_some() {
            bail!("TWILIO_ACCOUNT_SID is required with TWILIO_AUTH_TOKEN or TWILIO_API_KEY_SID");
        }
        return Ok(None);
    };
    if !policy::is_sid(&account_sid, "AC") {
        bail!("TWILIO_ACCOUNT_SID is not an Account SID (AC + 32 hex digits)");
    }
    match (&env.api_key_sid, &env.api_key_secret, &env.auth_token) {
        (Some(key_sid), Some(secret), _) => {
            if !policy::is_sid(key_sid, "SK") {
                bail!("TWILIO_API_KEY_SID is not an API Key SID (SK + 32 hex digits)");
            }
            Ok(Some(twilio::Credentials::ApiKey {
                account_sid,
                key_sid: key_sid.clone(),
                key_secret: secret.clone(),
            }))
        }
        (Some(_), None, _) => bail!("TWILIO_API_KEY_SID is set without TWILIO_API_KEY_SECRET"),
        (None, _, Some(token)) => Ok(Some(twilio::Credentials::AuthToken {
            account_sid,
            auth_token: token.clone(),
        })),
        (None, _, None) => bail!(
            "TWILIO_ACCOUNT_SID is set without TWILIO_AUTH_TOKEN or TWILIO_API_KEY_SID/TWILIO_API_KEY_SECRET"
        ),
    }
}

fn resolve_keys(raw: RawKeys) -> anyhow::Result<KeySource> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct KeyFile {
        blind_index_key: SecretString,
        encryption_keys: SecretString,
    }
    let (blind, enc) = match (raw.file, raw.blind_index_key, raw.encryption_keys) {
        (Some(path), None, None) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading keys file {}", path.display()))?;
            let f: KeyFile =
                toml_from_str(&text).with_context(|| format!("keys file {}", path.display()))?;
            (f.blind_index_key, f.encryption_keys)
        }
        (None, Some(b), Some(e)) => (b, e),
        (None, None, None) => return Ok(KeySource::GenerateDev),
        _ => bail!(
            "keys: give either keys.file, or both keys.blind_index_key and keys.encryption_keys"
        ),
    };
    Ok(KeySource::Given {
        blind_index_key: blind,
        encryption_keys: enc,
    })
}

/// `storage.retention_days`: at least a day (every verification is over within one) and at
/// most ten years.
fn retention(days: u32) -> anyhow::Result<Duration> {
    if !(1..=3650).contains(&days) {
        bail!("storage.retention_days must be between 1 and 3650 (got {days})");
    }
    Ok(Duration::from_secs(u64::from(days) * 86_400))
}

fn toml_from_str<T: for<'de> Deserialize<'de>>(text: &str) -> anyhow::Result<T> {
    Figment::new()
        .merge(Toml::string(text))
        .extract()
        .map_err(anyhow::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &TwilioEnv) -> anyhow::Result<Settings> {
        load_from_str(toml, &Overrides::default(), env)
    }

    #[test]
    fn shipped_defaults_run_the_sandbox() {
        let s = load("", &TwilioEnv::default()).expect("defaults are valid");
        assert!(matches!(s.upstream, Upstream::Sandbox { .. }));
        assert_eq!(s.grpc_addr.to_string(), "127.0.0.1:50051");
        let login = s
            .policies
            .get(&Purpose::parse("login").expect("valid"))
            .expect("login is shipped");
        assert_eq!(login.service_sid(), twilio_sandbox::DEV_SERVICE_SID);
        assert_eq!(login.default_channel(), Channel::Sms);
        assert_eq!((login.max_checks(), login.max_sends()), (3, 3));
        assert!(matches!(s.keys, KeySource::GenerateDev));
        assert!(s.database_url.expose_secret().starts_with("sqlite://"));
        assert_eq!(s.tls, None, "plaintext on loopback by default");
        assert_eq!(s.reconcile.every, Duration::from_secs(15));
        assert_eq!(s.reconcile.give_up_after, Duration::from_secs(120));
    }

    #[test]
    fn fraud_signals_are_tuned_by_their_tables() {
        let s = load(
            "[fraud]\nmode = \"shadow\"\n\
             [fraud.network_conversion]\nwindow_minutes = 120\ntiers = [[8, 30, 70]]\n\
             [fraud.ip_fan_out]\ntiers = []\n",
            &TwilioEnv::default(),
        )
        .expect("valid");
        let defaults = fraud::FraudConfig::default();
        assert_eq!(s.fraud.mode, fraud::Mode::Shadow);
        assert_eq!(
            s.fraud.network_conversion,
            fraud::ConversionSignal {
                window: Duration::from_secs(7200),
                tiers: vec![fraud::ConversionTier {
                    min_sent: 8,
                    below_percent: 30,
                    weight: 70
                }],
            }
        );
        assert!(
            s.fraud.ip_fan_out.tiers.is_empty(),
            "an empty list turns it off"
        );
        assert_eq!(s.fraud.ip_fan_out.window, defaults.ip_fan_out.window);
        assert_eq!(s.fraud.prefix_conversion, defaults.prefix_conversion);
        assert_eq!(
            load("", &TwilioEnv::default()).expect("valid").fraud,
            defaults
        );
    }

    /// Secrets never show in the `Debug` of what configuration becomes: the database and
    /// broker URLs (which carry passwords), the admin token, the keys, Twilio's token.
    #[test]
    fn debug_output_holds_no_secret() {
        let env = TwilioEnv {
            account_sid: Some(format!("AC{}", "1".repeat(32))),
            auth_token: Some("twilio-secret-token".into()),
            verify_service_sid: Some(format!("VA{}", "2".repeat(32))),
            ..TwilioEnv::default()
        };
        let toml = "[sandbox]\nmode = \"off\"\n\
                    [storage]\ndatabase_url = \"postgres://u:db-password@db/verify\"\n\
                    [bus]\namqp_url = \"amqp://u:bus-password@mq:5672\"\n\
                    [admin]\ntoken = \"admin-token-0123456789\"\n\
                    [keys]\nblind_index_key = \"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\"\n\
                    encryption_keys = \"k1:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=\"\n";
        let settings = load(toml, &env).expect("valid");
        let overrides = Overrides {
            database_url: Some("postgres://u:db-password@db/verify".into()),
            amqp_url: Some("amqp://u:bus-password@mq:5672".into()),
            ..Overrides::default()
        };
        for shown in [
            format!("{settings:?}"),
            format!("{env:?}"),
            format!("{overrides:?}"),
        ] {
            for secret in [
                "db-password",
                "bus-password",
                "admin-token-0123456789",
                "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
                "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=",
                "twilio-secret-token",
            ] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
        }
    }

    #[test]
    fn verify_service_beyond_loopback_needs_callers_or_an_explicit_opt_out() {
        let none = TwilioEnv::default();
        let open = load("[server]\ngrpc_addr = \"0.0.0.0:50051\"", &none).expect("valid");
        let err = format!("{:#}", open.open_to_anyone().expect_err("refused"));
        assert!(err.contains("auth.insecure_no_callers"), "{err}");
        assert!(err.contains("0.0.0.0:50051"), "{err}");
        let opted = load(
            "[server]\ngrpc_addr = \"0.0.0.0:50051\"\n[auth]\ninsecure_no_callers = true",
            &none,
        )
        .expect("valid");
        assert!(opted.open_to_anyone().expect("allowed"), "to be warned of");
        let loopback = load("", &none).expect("valid");
        assert!(!loopback.open_to_anyone().expect("allowed"));
        let with_callers = load(
            &format!(
                "[server]\ngrpc_addr = \"0.0.0.0:50051\"\n[callers.shop]\n\
                 token_sha256 = \"{}\"\npurposes = [\"login\"]",
                "a".repeat(64)
            ),
            &none,
        )
        .expect("valid");
        assert!(!with_callers.open_to_anyone().expect("allowed"));
        let callers = with_callers.callers.expect("callers");
        let shop = callers
            .identify(None, None)
            .expect_err("a call without credentials");
        assert_eq!(shop, crate::auth::AuthError::NoCredentials);
    }

    #[test]
    fn tls_files_come_from_server_tls() {
        let s = load(
            "[server.tls]\ncert_file = \"/etc/vg/tls.crt\"\nkey_file = \"/etc/vg/tls.key\"\nclient_ca_file = \"/etc/vg/ca.crt\"",
            &TwilioEnv::default(),
        )
        .expect("valid");
        assert_eq!(
            s.tls,
            Some(crate::tls::TlsFiles {
                cert_file: "/etc/vg/tls.crt".into(),
                key_file: "/etc/vg/tls.key".into(),
                client_ca_file: Some("/etc/vg/ca.crt".into()),
                client_certificate: crate::tls::ClientCertificate::Required,
            })
        );
    }

    #[test]
    fn twilio_variables_point_at_twilio() {
        let env = TwilioEnv {
            account_sid: Some(format!("AC{}", "a".repeat(32))),
            auth_token: Some("token".into()),
            verify_service_sid: Some(format!("VA{}", "b".repeat(32))),
            ..TwilioEnv::default()
        };
        // Real Twilio without keys: refused, never generated.
        let err = format!("{:#}", load("", &env).expect_err("no keys"));
        assert!(
            err.contains("development keys are made only") && err.contains("VERIFY_KEYS__"),
            "{err}"
        );
        let keys = "[keys]\nblind_index_key = \"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\"\n\
                    encryption_keys = \"k1:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=\"\n";
        let s = load(keys, &env).expect("valid");
        assert!(matches!(s.upstream, Upstream::Twilio));
        let login = s
            .policies
            .get(&Purpose::parse("login").expect("valid"))
            .expect("login");
        assert_eq!(login.service_sid(), format!("VA{}", "b".repeat(32)));
    }

    #[test]
    fn bad_configuration_is_refused_with_a_reason() {
        let check = |toml: &str, env: &TwilioEnv, needle: &str| {
            let err = format!("{:#}", load(toml, env).expect_err("must be refused"));
            assert!(err.contains(needle), "{err} should mention {needle}");
        };
        let none = TwilioEnv::default();
        check("[purposes.login]\nmax_checks = 9", &none, "max_checks");
        check("[purposes.login]\nchannels = [\"pigeon\"]", &none, "pigeon");
        check("[server]\ngrpc_addr = \"nowhere\"", &none, "grpc_addr");
        check("[sandbox]\nmode = \"off\"", &none, "no Twilio credentials");
        check("[keys]\nblind_index_key = \"x\"", &none, "keys");
        check(
            "[rate_limits]\nsend_per_destination = \"5/10y\"",
            &none,
            "rate_limits.send_per_destination",
        );
        check(
            "[purposes.login.rate_limits]\nsend_per_client_ip = \"0/1m\"",
            &none,
            "purposes.login.rate_limits.send_per_client_ip",
        );
        check("[fraud]\nmode = \"loud\"", &none, "fraud.mode");
        check(
            "[fraud]\nblock_countries = [\"XX\"]",
            &none,
            "fraud.block_countries",
        );
        check(
            "[fraud.network_conversion]\ntiers = [[0, 50, 60]]",
            &none,
            "network_conversion.tiers",
        );
        check(
            "[fraud.network_step_ups]\ntiers = [[5, 120, 100]]",
            &none,
            "network_step_ups.tiers",
        );
        check(
            "[fraud.ip_fan_out]\nwindow_minutes = 0",
            &none,
            "ip_fan_out.window",
        );
        check("[fraud.sequential]\ntiers = [[4]]", &none, "sequential");
        check("[admin]\ntoken = \"short\"", &none, "admin.token");
        check("[metrics]\naddr = \"nowhere\"", &none, "metrics.addr");
        check(
            "[storage]\nretention_days = 0",
            &none,
            "storage.retention_days",
        );
        check(
            "[reconcile]\ninterval_ms = 0",
            &none,
            "reconcile.interval_ms",
        );
        check("[reconcile]\nbatch = 0", &none, "reconcile.batch");
        check(
            "[reconcile]\nmin_age_ms = 600000",
            &none,
            "reconcile.give_up_after_seconds",
        );
        check(
            "[server.tls]\ncert_file = \"tls.crt\"",
            &none,
            "server.tls.key_file is not",
        );
        check(
            "[server.tls]\nkey_file = \"tls.key\"",
            &none,
            "server.tls.cert_file is not",
        );
        check(
            "[server.tls]\nclient_ca_file = \"ca.crt\"",
            &none,
            "server.tls.client_ca_file needs",
        );
        check("[server.tls]\ncertfile = \"tls.crt\"", &none, "certfile");
        let digest = "a".repeat(64);
        check(
            "[callers.shop]\npurposes = [\"login\"]",
            &none,
            "callers.shop needs token_sha256 or mtls_subject",
        );
        check(
            "[callers.shop]\ntoken_sha256 = \"abc\"\npurposes = [\"login\"]",
            &none,
            "callers.shop.token_sha256 must be 64 hex digits",
        );
        check(
            &format!("[callers.shop]\ntoken_sha256 = \"{digest}\"\npurposes = [\"payroll\"]"),
            &none,
            "`payroll`, which is not a configured purpose",
        );
        check(
            &format!("[callers.shop]\ntoken_sha256 = \"{digest}\""),
            &none,
            "callers.shop.purposes is empty",
        );
        check(
            "[callers.shop]\nmtls_subject = \"shop.svc\"\npurposes = [\"login\"]",
            &none,
            "needs client certificates",
        );
        check(
            &format!("[callers.Shop]\ntoken_sha256 = \"{digest}\"\npurposes = [\"login\"]"),
            &none,
            "a caller's name is lower-case",
        );
        let half = TwilioEnv {
            account_sid: Some(format!("AC{}", "a".repeat(32))),
            ..TwilioEnv::default()
        };
        check("", &half, "without TWILIO_AUTH_TOKEN");
    }

    #[test]
    fn server_limits_default_above_twilio_and_refuse_zero() {
        let none = TwilioEnv::default();
        let s = load("", &none).expect("defaults are valid");
        assert_eq!(s.server_limits.shutdown_grace, Duration::from_secs(10));
        assert!(
            s.server_limits.request_timeout > s.twilio.timeout,
            "a call may wait on Twilio for its whole timeout"
        );
        let s = load(
            "[server]
shutdown_grace_seconds = 0",
            &none,
        )
        .expect("no grace is valid");
        assert_eq!(s.server_limits.shutdown_grace, Duration::ZERO);
        for key in [
            "request_timeout_seconds",
            "concurrency_limit_per_connection",
            "max_concurrent_streams",
            "max_concurrent_calls",
            "database_ping_interval_ms",
            "database_ping_timeout_ms",
        ] {
            let err = format!(
                "{:#}",
                load(&format!("[server]\n{key} = 0"), &none).expect_err("refused")
            );
            assert!(err.contains(&format!("server.{key}")), "{err}");
        }
    }
}
