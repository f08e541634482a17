//! Integration tests of the Twilio adapter: against a scripted Twilio served by axum on a
//! loopback port (`fake`), and against Twilio's own OpenAPI spec served by Prism (`prism`).

mod adapter;
mod fake;
mod prism;

use std::time::Duration;

use secrecy::SecretString;
use twilio::{Credentials, TwilioConfig};
use url::Url;

pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const AUTH_TOKEN: &str = "test-auth-token";
pub const SERVICE_SID: &str = "VA0123456789abcdef0123456789abcdef";
pub const VERIFICATION_SID: &str = "VEfedcba9876543210fedcba9876543210";

/// A configuration pointing at `base_url` with Auth Token credentials.
pub fn config(base_url: Url) -> TwilioConfig {
    TwilioConfig {
        credentials: Credentials::AuthToken {
            account_sid: ACCOUNT_SID.to_owned(),
            auth_token: SecretString::from(AUTH_TOKEN),
        },
        base_url: Some(base_url),
        region: None,
        edge: None,
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        max_retries: 2,
    }
}
