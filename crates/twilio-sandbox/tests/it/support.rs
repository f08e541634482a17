//! Starting a sandbox on a free port and talking to it.

use std::time::Duration;

use anyhow::Context as _;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;
use twilio_sandbox::{DEV_ACCOUNT_SID, DEV_AUTH_TOKEN, DEV_SERVICE_SID, Sandbox, SandboxConfig};

/// The dev config with a slow scenario short enough for tests.
pub fn test_config() -> SandboxConfig {
    let mut config = SandboxConfig::dev();
    config.slow_delay = Duration::from_millis(300);
    config
}

/// A sandbox served on 127.0.0.1:0, shut down when dropped.
pub struct TestSandbox {
    pub base: String,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for TestSandbox {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A decoded response.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// Asserts a Twilio error body, exactly.
    pub fn assert_error(&self, status: u16, code: u64, message: &str) {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(
            self.body,
            serde_json::json!({
                "code": code,
                "message": message,
                "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
                "status": status,
            }),
            "{self:?}"
        );
        assert_eq!(
            self.headers
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
    }

    pub fn str(&self, key: &str) -> &str {
        self.body[key].as_str().unwrap_or_default()
    }
}

pub async fn start(config: SandboxConfig) -> anyhow::Result<TestSandbox> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind 127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let sandbox = Sandbox::new(config);
    tokio::spawn(async move {
        let shutdown = async {
            let _ = rx.await;
        };
        if let Err(error) = twilio_sandbox::serve(listener, sandbox, shutdown).await {
            eprintln!("sandbox stopped: {error}");
        }
    });
    Ok(TestSandbox {
        base: format!("http://{addr}"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        shutdown: Some(tx),
    })
}

pub async fn start_dev() -> anyhow::Result<TestSandbox> {
    start(test_config()).await
}

impl TestSandbox {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn service_path(&self, rest: &str) -> String {
        format!("/v2/Services/{DEV_SERVICE_SID}{rest}")
    }

    /// A request with the dev credentials.
    pub fn authed(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .basic_auth(DEV_ACCOUNT_SID, Some(DEV_AUTH_TOKEN))
    }

    pub async fn send(&self, request: RequestBuilder) -> anyhow::Result<Answer> {
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?
        };
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    pub async fn create(&self, to: &str, channel: &str) -> anyhow::Result<Answer> {
        self.send(
            self.authed(Method::POST, &self.service_path("/Verifications"))
                .form(&[("To", to), ("Channel", channel)]),
        )
        .await
    }

    pub async fn check_to(&self, to: &str, code: &str) -> anyhow::Result<Answer> {
        self.send(
            self.authed(Method::POST, &self.service_path("/VerificationCheck"))
                .form(&[("To", to), ("Code", code)]),
        )
        .await
    }

    pub async fn check_sid(&self, sid: &str, code: &str) -> anyhow::Result<Answer> {
        self.send(
            self.authed(Method::POST, &self.service_path("/VerificationCheck"))
                .form(&[("VerificationSid", sid), ("Code", code)]),
        )
        .await
    }

    pub async fn fetch(&self, sid: &str) -> anyhow::Result<Answer> {
        self.send(self.authed(
            Method::GET,
            &self.service_path(&format!("/Verifications/{sid}")),
        ))
        .await
    }

    pub async fn update(&self, sid: &str, status: &str) -> anyhow::Result<Answer> {
        self.send(
            self.authed(
                Method::POST,
                &self.service_path(&format!("/Verifications/{sid}")),
            )
            .form(&[("Status", status)]),
        )
        .await
    }

    pub async fn inbox(&self, to: Option<&str>) -> anyhow::Result<Vec<Value>> {
        let query = match to {
            Some(to) => format!("?{}", serde_urlencoded::to_string([("to", to)])?),
            None => String::new(),
        };
        let answer = self
            .send(
                self.client
                    .get(self.url(&format!("/sandbox/messages{query}"))),
            )
            .await?;
        assert_eq!(answer.status, StatusCode::OK);
        Ok(answer.body.as_array().cloned().unwrap_or_default())
    }

    /// `GET /sandbox/events`, optionally for one verification.
    pub async fn events(&self, verification_sid: Option<&str>) -> anyhow::Result<Vec<Value>> {
        let query = match verification_sid {
            Some(sid) => format!(
                "?{}",
                serde_urlencoded::to_string([("verification_sid", sid)])?
            ),
            None => String::new(),
        };
        let answer = self
            .send(
                self.client
                    .get(self.url(&format!("/sandbox/events{query}"))),
            )
            .await?;
        assert_eq!(answer.status, StatusCode::OK);
        Ok(answer.body.as_array().cloned().unwrap_or_default())
    }

    /// The code most recently sent to `to`.
    pub async fn latest_code(&self, to: &str) -> anyhow::Result<String> {
        let messages = self.inbox(Some(to)).await?;
        let code = messages
            .first()
            .and_then(|m| m["code"].as_str())
            .with_context(|| format!("no message for {to}"))?;
        Ok(code.to_owned())
    }
}

/// A code of the same length that is certainly wrong.
pub fn wrong(code: &str) -> String {
    code.chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect()
}
