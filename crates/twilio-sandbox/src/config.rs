//! What a sandbox is started with: credentials, Verify services, lifecycle limits and
//! where (and how fast) delivery reports go.

use std::fmt;
use std::num::NonZeroUsize;
use std::time::Duration;

use url::Url;

use crate::Limits;

/// The account SID the dev defaults accept.
pub const DEV_ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
/// The auth token the dev defaults accept.
pub const DEV_AUTH_TOKEN: &str = "sandbox-auth-token";
/// The Verify service SID the dev defaults create.
pub const DEV_SERVICE_SID: &str = "VA00000000000000000000000000000000";

/// How long a verification stays checkable unless configured otherwise (Twilio: 10 minutes).
pub const DEFAULT_VERIFICATION_TTL: Duration = Duration::from_secs(10 * 60);
/// How long the `slow` scenario waits before answering unless configured otherwise.
pub const DEFAULT_SLOW_DELAY: Duration = Duration::from_secs(5);
/// How many sent messages the dev inbox keeps.
pub const DEFAULT_INBOX_CAPACITY: usize = 1_000;
/// How long after the `sent` report the final delivery report comes unless configured
/// otherwise.
pub const DEFAULT_DELIVERY_DELAY: Duration = Duration::from_millis(200);
/// The wait before the first retry of a Verify Event post that failed unless configured
/// otherwise; each further retry waits twice as long (0.625 + 1.25 + 2.5 + 5 s, so five
/// attempts span about 10 s).
pub const DEFAULT_EVENT_RETRY_DELAY: Duration = Duration::from_millis(625);
/// The limits on slow and numerous clients unless configured otherwise: 10 s for a
/// request's headers (and for an idle keep-alive connection), 30 s for its body, 1,024
/// connections at once.
pub const DEFAULT_LIMITS: Limits = Limits {
    header_timeout: Duration::from_secs(10),
    body_timeout: Duration::from_secs(30),
    max_connections: NonZeroUsize::new(1_024).expect("1,024 is not zero"),
};

/// Everything a sandbox needs; build it with [`SandboxConfig::dev`] and adjust the fields.
#[derive(Clone)]
pub struct SandboxConfig {
    /// The `AC…` SID accepted as Basic-auth user name together with `auth_token`.
    pub account_sid: String,
    /// The password that goes with `account_sid`.
    pub auth_token: String,
    /// Optional API keys: (`SK…` SID, secret) pairs also accepted as Basic-auth credentials.
    pub api_keys: Vec<(String, String)>,
    /// The Verify services that exist; any other `VA…` SID answers 404 / 20404.
    pub services: Vec<ServiceConfig>,
    /// How long a verification can be checked before it expires.
    pub verification_ttl: Duration,
    /// How long the `slow` scenario waits before answering.
    pub slow_delay: Duration,
    /// How many messages the inbox keeps; the oldest are dropped first. The log of Verify
    /// Event posts (`GET /sandbox/events`) keeps as many records.
    pub inbox_capacity: usize,
    /// Where Verify Events (message status, Event Streams webhook sink format) are POSTed,
    /// signed with `auth_token`; `None` posts nothing. A fragment is not sent.
    pub events_url: Option<Url>,
    /// The time between a message's `sent` report and its final report (`delivered` or
    /// `undelivered`). The inbox shows the final status from then on.
    pub delivery_delay: Duration,
    /// The wait before retrying a failed event post; it doubles after every failure.
    pub event_retry_delay: Duration,
    /// How long a client may take to send a request's headers (or keep a connection idle)
    /// and its body, and how many connections are served at once; see [`serve`].
    ///
    /// [`serve`]: crate::serve
    pub limits: Limits,
}

/// One Verify service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The `VA…` SID used in paths.
    pub sid: String,
    /// Shown in the service resource.
    pub friendly_name: String,
    /// Digits in generated codes; Twilio allows 4 to 10 and values outside are clamped.
    pub code_length: u8,
}

impl SandboxConfig {
    /// The documented dev defaults: [`DEV_ACCOUNT_SID`] / [`DEV_AUTH_TOKEN`], one service
    /// [`DEV_SERVICE_SID`] ("verify-gateway dev", 6-digit codes), a 10-minute TTL, a 5-second
    /// slow scenario, an inbox of 1,000 messages, and no Verify Events (`events_url` is
    /// `None`; set it to receive them, 200 ms after `sent` by default).
    pub fn dev() -> Self {
        SandboxConfig {
            account_sid: DEV_ACCOUNT_SID.to_owned(),
            auth_token: DEV_AUTH_TOKEN.to_owned(),
            api_keys: Vec::new(),
            services: vec![ServiceConfig {
                sid: DEV_SERVICE_SID.to_owned(),
                friendly_name: "verify-gateway dev".to_owned(),
                code_length: 6,
            }],
            verification_ttl: DEFAULT_VERIFICATION_TTL,
            slow_delay: DEFAULT_SLOW_DELAY,
            inbox_capacity: DEFAULT_INBOX_CAPACITY,
            events_url: None,
            delivery_delay: DEFAULT_DELIVERY_DELAY,
            event_retry_delay: DEFAULT_EVENT_RETRY_DELAY,
            limits: DEFAULT_LIMITS,
        }
    }
}

impl fmt::Debug for SandboxConfig {
    /// Secrets are redacted so a logged config cannot leak them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key_sids: Vec<&str> = self.api_keys.iter().map(|(sid, _)| sid.as_str()).collect();
        f.debug_struct("SandboxConfig")
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"[redacted]")
            .field("api_keys", &key_sids)
            .field("services", &self.services)
            .field("verification_ttl", &self.verification_ttl)
            .field("slow_delay", &self.slow_delay)
            .field("inbox_capacity", &self.inbox_capacity)
            .field("events_url", &self.events_url.as_ref().map(redacted))
            .field("delivery_delay", &self.delivery_delay)
            .field("event_retry_delay", &self.event_retry_delay)
            .field("limits", &self.limits)
            .finish()
    }
}

/// The events URL without its user info and query, which may carry a receiver's secret.
fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    // Both fail only for URLs that cannot have credentials, which then have none to hide.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    if shown.query().is_some() {
        shown.set_query(Some("[redacted]"));
    }
    shown.set_fragment(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_defaults_are_the_documented_ones() {
        let config = SandboxConfig::dev();
        assert_eq!(config.account_sid, "AC00000000000000000000000000000000");
        assert_eq!(config.auth_token, "sandbox-auth-token");
        assert_eq!(config.services.len(), 1);
        assert_eq!(config.services[0].sid, "VA00000000000000000000000000000000");
        assert_eq!(config.services[0].friendly_name, "verify-gateway dev");
        assert_eq!(config.services[0].code_length, 6);
        assert_eq!(config.verification_ttl, Duration::from_secs(600));
        assert_eq!(config.slow_delay, Duration::from_secs(5));
        assert_eq!(config.events_url, None);
        assert_eq!(config.delivery_delay, Duration::from_millis(200));
        assert_eq!(config.event_retry_delay, Duration::from_millis(625));
        assert_eq!(config.limits.header_timeout, Duration::from_secs(10));
        assert_eq!(config.limits.body_timeout, Duration::from_secs(30));
        assert_eq!(config.limits.max_connections.get(), 1_024);
    }

    #[test]
    fn debug_redacts_secrets() {
        let mut config = SandboxConfig::dev();
        config
            .api_keys
            .push(("SKkey".to_owned(), "key-secret".to_owned()));
        let printed = format!("{config:?}");
        assert!(!printed.contains("sandbox-auth-token"), "{printed}");
        assert!(!printed.contains("key-secret"), "{printed}");
        assert!(printed.contains("SKkey"), "{printed}");
    }

    #[test]
    fn debug_hides_secrets_of_the_events_url() {
        let mut config = SandboxConfig::dev();
        config.events_url = Some(
            Url::parse("https://user:pw@hooks.example.com/twilio?token=s3cret#frag")
                .expect("a valid URL"),
        );
        let printed = format!("{config:?}");
        assert!(!printed.contains("pw"), "{printed}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(
            printed.contains("https://hooks.example.com/twilio?[redacted]"),
            "{printed}"
        );
    }
}
