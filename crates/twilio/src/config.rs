//! How the adapter reaches Twilio: credentials, host (region and edge, or an override) and
//! the timeouts and retry budget of every call.

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::TwilioError;
use crate::sid;

/// The host every Verify V2 path hangs off when neither region nor edge is set.
const DEFAULT_HOST: &str = "verify.twilio.com";

/// The region the official libraries assume when only an edge is given.
const DEFAULT_REGION: &str = "us1";

/// The adapter's settings. Every field is a choice the operator makes, so there is no
/// `Default`.
#[derive(Debug, Clone)]
pub struct TwilioConfig {
    pub credentials: Credentials,
    /// Replaces the Twilio host entirely (the local sandbox or Prism, e.g.
    /// `http://127.0.0.1:8090`). When set, `region` and `edge` are ignored.
    pub base_url: Option<Url>,
    /// Twilio processing region, e.g. `ie1`, `au1`, `us1`.
    pub region: Option<String>,
    /// Twilio edge location, e.g. `dublin`, `sydney`, `ashburn`.
    pub edge: Option<String>,
    /// Limit on one whole HTTP exchange (connect, send, receive the body).
    pub timeout: Duration,
    /// Limit on opening the TCP and TLS connection alone.
    pub connect_timeout: Duration,
    /// How many times a call may be repeated after the first attempt, where repeating is safe.
    pub max_retries: u32,
}

/// Twilio's Basic-auth credentials, under Twilio's own names.
#[derive(Clone)]
pub enum Credentials {
    /// The account's primary credentials: user `AC…`, password the Auth Token.
    AuthToken {
        account_sid: String,
        auth_token: SecretString,
    },
    /// An API key (preferred in production, revocable on its own): user `SK…`, password its
    /// secret. The account SID is kept for logs and for building account-level URLs.
    ApiKey {
        account_sid: String,
        key_sid: String,
        key_secret: SecretString,
    },
}

impl Credentials {
    /// The account the credentials act for.
    pub fn account_sid(&self) -> &str {
        match self {
            Credentials::AuthToken { account_sid, .. }
            | Credentials::ApiKey { account_sid, .. } => account_sid,
        }
    }

    /// The Basic-auth user name and password.
    pub(crate) fn basic_auth(&self) -> (&str, &str) {
        match self {
            Credentials::AuthToken {
                account_sid,
                auth_token,
            } => (account_sid, auth_token.expose_secret()),
            Credentials::ApiKey {
                key_sid,
                key_secret,
                ..
            } => (key_sid, key_secret.expose_secret()),
        }
    }

    /// Refuses malformed SIDs and empty secrets at start-up rather than as a 401 at the first
    /// verification.
    fn validate(&self) -> Result<(), TwilioError> {
        if !sid::is_sid(self.account_sid(), "AC") {
            return Err(TwilioError::InvalidConfig(
                "account SID must be `AC` followed by 32 hex digits".to_owned(),
            ));
        }
        if let Credentials::ApiKey { key_sid, .. } = self
            && !sid::is_sid(key_sid, "SK")
        {
            return Err(TwilioError::InvalidConfig(
                "API key SID must be `SK` followed by 32 hex digits".to_owned(),
            ));
        }
        if self.basic_auth().1.is_empty() {
            return Err(TwilioError::InvalidConfig(
                "the Twilio auth token or API key secret is empty".to_owned(),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for Credentials {
    /// Shows which kind of credentials and whose, never the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::AuthToken { account_sid, .. } => f
                .debug_struct("AuthToken")
                .field("account_sid", account_sid)
                .field("auth_token", &"[redacted]")
                .finish(),
            Credentials::ApiKey {
                account_sid,
                key_sid,
                ..
            } => f
                .debug_struct("ApiKey")
                .field("account_sid", account_sid)
                .field("key_sid", key_sid)
                .field("key_secret", &"[redacted]")
                .finish(),
        }
    }
}

impl TwilioConfig {
    /// Checks the settings and returns the base URL every request path is appended to.
    pub(crate) fn validate(&self) -> Result<Url, TwilioError> {
        self.credentials.validate()?;
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(TwilioError::InvalidConfig(
                "Twilio timeouts must be greater than zero".to_owned(),
            ));
        }
        self.api_base()
    }

    /// The base URL: the override if any, else the Twilio host for the region and edge,
    /// composed the way Twilio's official libraries do.
    pub fn api_base(&self) -> Result<Url, TwilioError> {
        if let Some(url) = &self.base_url {
            if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
                return Err(TwilioError::InvalidConfig(
                    "the Twilio base URL must be an http(s) URL".to_owned(),
                ));
            }
            return Ok(url.clone());
        }
        let host = compose_host(self.region.as_deref(), self.edge.as_deref())?;
        Url::parse(&format!("https://{host}"))
            .map_err(|e| TwilioError::InvalidConfig(format!("Twilio host `{host}`: {e}")))
    }
}

/// `verify[.{edge}][.{region}].twilio.com`, where an edge without a region implies `us1`.
fn compose_host(region: Option<&str>, edge: Option<&str>) -> Result<String, TwilioError> {
    let region = region.map(str::trim).filter(|r| !r.is_empty());
    let edge = edge.map(str::trim).filter(|e| !e.is_empty());
    for label in region.iter().chain(edge.iter()) {
        // Region and edge become DNS labels; anything else would change the host, not pick one.
        let ok = label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(TwilioError::InvalidConfig(format!(
                "Twilio region or edge `{label}` must be lower-case letters, digits and `-`"
            )));
        }
    }
    Ok(match (edge, region) {
        (None, None) => DEFAULT_HOST.to_owned(),
        (None, Some(region)) => format!("verify.{region}.twilio.com"),
        (Some(edge), region) => {
            format!(
                "verify.{edge}.{}.twilio.com",
                region.unwrap_or(DEFAULT_REGION)
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(base_url: Option<&str>, region: Option<&str>, edge: Option<&str>) -> TwilioConfig {
        TwilioConfig {
            credentials: Credentials::AuthToken {
                account_sid: format!("AC{}", "0".repeat(32)),
                auth_token: SecretString::from("token"),
            },
            base_url: base_url.map(|u| Url::parse(u).expect("test URLs are valid")),
            region: region.map(str::to_owned),
            edge: edge.map(str::to_owned),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            max_retries: 2,
        }
    }

    fn check(base_url: Option<&str>, region: Option<&str>, edge: Option<&str>, expected: &str) {
        let got = config(base_url, region, edge)
            .api_base()
            .map(|u| u.to_string())
            // The message is checked elsewhere; the table only says which inputs are refused.
            .unwrap_or_else(|_| "error".to_owned());
        assert_eq!(
            got, expected,
            "base_url={base_url:?} region={region:?} edge={edge:?}"
        );
    }

    #[test]
    fn host_composition() {
        check(None, None, None, "https://verify.twilio.com/");
        check(None, Some("ie1"), None, "https://verify.ie1.twilio.com/");
        check(None, Some("us1"), None, "https://verify.us1.twilio.com/");
        check(
            None,
            Some("au1"),
            Some("sydney"),
            "https://verify.sydney.au1.twilio.com/",
        );
        check(
            None,
            None,
            Some("ashburn"),
            "https://verify.ashburn.us1.twilio.com/",
        );
        check(None, Some(""), Some(""), "https://verify.twilio.com/");
        check(
            Some("http://127.0.0.1:8090"),
            Some("ie1"),
            Some("dublin"),
            "http://127.0.0.1:8090/",
        );
        check(
            Some("http://127.0.0.1:4010/prefix/"),
            None,
            None,
            "http://127.0.0.1:4010/prefix/",
        );
        check(None, Some("ie1.evil.com"), None, "error");
        check(None, Some("ie1/x"), None, "error");
        check(None, None, Some("Dublin"), "error");
        check(None, Some("-ie1"), None, "error");
        check(Some("ftp://x.example"), None, None, "error");
        check(Some("mailto:a@b.co"), None, None, "error");
    }

    #[test]
    fn validate_refuses_malformed_credentials() {
        let mut c = config(None, None, None);
        assert!(c.validate().is_ok());
        c.credentials = Credentials::ApiKey {
            account_sid: format!("AC{}", "a".repeat(32)),
            key_sid: "SKnope".to_owned(),
            key_secret: SecretString::from("s"),
        };
        assert!(c.validate().is_err());
        c.credentials = Credentials::AuthToken {
            account_sid: format!("AC{}", "a".repeat(32)),
            auth_token: SecretString::from(""),
        };
        assert!(c.validate().is_err());
        c.credentials = Credentials::AuthToken {
            account_sid: "ACshort".to_owned(),
            auth_token: SecretString::from("t"),
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials::ApiKey {
            account_sid: format!("AC{}", "a".repeat(32)),
            key_sid: format!("SK{}", "b".repeat(32)),
            key_secret: SecretString::from("hunter2"),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && shown.contains("[redacted]"));
    }
}
