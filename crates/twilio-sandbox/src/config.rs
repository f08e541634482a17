//! What a sandbox is started with: credentials, Verify services and lifecycle limits.

use std::fmt;
use std::time::Duration;

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
    /// How many messages the inbox keeps; the oldest are dropped first.
    pub inbox_capacity: usize,
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
    /// slow scenario and an inbox of 1,000 messages.
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
            .finish()
    }
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
}
