//! A webhook receiver on 127.0.0.1:0 that records every request it gets, byte for byte,
//! and answers with the statuses it is told to: what a gateway's Verify Events endpoint
//! sees of the sandbox.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use url::Url;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Captured {
    pub method: Method,
    /// `http://` + the `Host` header + the request target: the URL the request was made to.
    pub url: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Captured {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The one CloudEvent of the body.
    pub fn event(&self) -> Value {
        let body: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        let events = body.as_array().cloned().unwrap_or_default();
        assert_eq!(events.len(), 1, "one event per post: {body}");
        events[0].clone()
    }

    /// Checks the request the way a Twilio webhook validator must: POST, JSON,
    /// `bodySHA256` equal to the SHA-256 of the exact body, and `X-Twilio-Signature` equal
    /// to base64(HMAC-SHA1(auth token, URL received)). Computed here from the contract.
    pub fn assert_signed(&self, auth_token: &str) {
        assert_eq!(self.method, Method::POST);
        assert_eq!(self.header("content-type"), Some("application/json"));
        let query = self.query.as_deref().unwrap_or_default();
        let (rest, hash) = query
            .rsplit_once("bodySHA256=")
            .unwrap_or_else(|| panic!("no bodySHA256 in {query:?}"));
        assert!(
            rest.is_empty() || rest.ends_with('&'),
            "bodySHA256 is its own parameter: {query:?}"
        );
        assert_eq!(hash, hex::encode(Sha256::digest(&self.body)), "{query}");
        let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(auth_token.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(self.url.as_bytes());
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(
            self.header("x-twilio-signature"),
            Some(expected.as_str()),
            "signature over {}",
            self.url
        );
    }
}

#[derive(Debug, Default)]
struct Shared {
    requests: Mutex<Vec<Captured>>,
    /// Statuses to answer, in order; 200 once used up.
    answers: Mutex<VecDeque<StatusCode>>,
    /// How long to wait before answering.
    stall: Duration,
}

/// A running receiver, stopped when dropped.
#[derive(Debug)]
pub struct Receiver {
    pub base: String,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn record(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let captured = Captured {
        method,
        url: format!("http://{host}{uri}"),
        query: uri.query().map(str::to_owned),
        headers,
        body,
        at: Instant::now(),
    };
    let answer = {
        let mut requests = shared.requests.lock().unwrap_or_else(|e| e.into_inner());
        requests.push(captured);
        shared
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
            .unwrap_or(StatusCode::OK)
    };
    tokio::time::sleep(shared.stall).await;
    answer
}

impl Receiver {
    /// A receiver answering `answers` in order, then 200.
    pub async fn start(answers: &[StatusCode]) -> anyhow::Result<Receiver> {
        Self::start_with(answers, Duration::ZERO).await
    }

    /// A receiver that waits `stall` before every answer.
    pub async fn start_stalling(stall: Duration) -> anyhow::Result<Receiver> {
        Self::start_with(&[], stall).await
    }

    async fn start_with(answers: &[StatusCode], stall: Duration) -> anyhow::Result<Receiver> {
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            answers: Mutex::new(answers.iter().copied().collect()),
            stall,
        });
        let app = axum::Router::new()
            .fallback(record)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                eprintln!("receiver stopped: {error}");
            }
        });
        Ok(Receiver {
            base: format!("http://{addr}"),
            shared,
            shutdown: Some(tx),
        })
    }

    /// The receiver's URL for `path_and_query` (which starts with `/`).
    pub fn url(&self, path_and_query: &str) -> Url {
        Url::parse(&format!("{}{path_and_query}", self.base)).expect("a valid URL")
    }

    pub fn requests(&self) -> Vec<Captured> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until at least `n` requests have arrived, or fails after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<Captured>> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= n {
                return Ok(requests);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "expected {n} requests within {timeout:?}, got {}: {:#?}",
                requests.len(),
                requests
                    .iter()
                    .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
