//! A scripted Twilio: an axum server on `127.0.0.1:0` that records every request and answers
//! with the next reply of its script.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tokio::task::JoinHandle;
use url::Url;

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Reply {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// A Twilio error body in the shape of CONTRACT §4.
    pub fn error(status: u16, code: u32, message: &str) -> Self {
        Reply::json(
            status,
            serde_json::json!({
                "code": code,
                "message": message,
                "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
                "status": status,
            }),
        )
    }

    pub fn text(status: u16, body: &str) -> Self {
        Reply {
            status,
            headers: vec![("content-type", "text/html".to_owned())],
            body: body.to_owned(),
            delay: Duration::ZERO,
        }
    }

    /// A verification resource as Twilio returns it.
    pub fn verification(status: u16, verification_status: &str) -> Self {
        Reply::json(
            status,
            serde_json::json!({
                "sid": crate::VERIFICATION_SID,
                "service_sid": crate::SERVICE_SID,
                "account_sid": crate::ACCOUNT_SID,
                "to": "+14155552671",
                "channel": "sms",
                "status": verification_status,
                "valid": false,
                "lookup": {},
                "amount": null,
                "payee": null,
                "send_code_attempts": [],
                "date_created": "2015-07-30T20:00:00Z",
                "date_updated": "2015-07-30T20:00:00Z",
                "sna": null,
                "url": "https://verify.twilio.com/v2/Services/x/Verifications/y",
            }),
        )
    }

    /// A verification check resource as Twilio returns it.
    pub fn check(status: &str, valid: bool) -> Self {
        Reply::json(
            200,
            serde_json::json!({
                "sid": crate::VERIFICATION_SID,
                "service_sid": crate::SERVICE_SID,
                "account_sid": crate::ACCOUNT_SID,
                "to": "+14155552671",
                "channel": "sms",
                "status": status,
                "valid": valid,
                "amount": null,
                "payee": null,
                "sna_attempts_error_codes": [],
                "date_created": "2015-07-30T20:00:00Z",
                "date_updated": "2015-07-30T20:00:00Z",
            }),
        )
    }

    /// A page of the attempts list holding `attempts`, each `(verification_sid,
    /// date_created)`, with Twilio's other fields.
    pub fn attempts(attempts: &[(&str, &str)]) -> Self {
        let attempts: Vec<serde_json::Value> = attempts
            .iter()
            .enumerate()
            .map(|(n, (verification_sid, date_created))| {
                serde_json::json!({
                    "sid": format!("VL{n:032x}"),
                    "account_sid": crate::ACCOUNT_SID,
                    "service_sid": crate::SERVICE_SID,
                    "verification_sid": verification_sid,
                    "date_created": date_created,
                    "date_updated": date_created,
                    "conversion_status": "unconverted",
                    "channel": "sms",
                    "price": null,
                    "channel_data": {"verification_sid": verification_sid, "to": "+14155552671"},
                    "url": format!("https://verify.twilio.com/v2/Attempts/VL{n:032x}"),
                })
            })
            .collect();
        Reply::json(
            200,
            serde_json::json!({
                "attempts": attempts,
                "meta": {
                    "key": "attempts", "page": 0, "page_size": 50,
                    "first_page_url": "https://verify.twilio.com/v2/Attempts?PageSize=50&Page=0",
                    "previous_page_url": null,
                    "url": "https://verify.twilio.com/v2/Attempts?PageSize=50&Page=0",
                    "next_page_url": null,
                },
            }),
        )
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// What the fake saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The raw query string, empty without one.
    pub query: String,
    pub headers: HeaderMap,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Debug, Clone, Default)]
struct Script {
    replies: Arc<Mutex<VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// The running fake; the server stops when it is dropped.
#[derive(Debug)]
pub struct FakeTwilio {
    addr: SocketAddr,
    script: Script,
    server: JoinHandle<()>,
}

impl FakeTwilio {
    pub async fn start(replies: impl IntoIterator<Item = Reply>) -> anyhow::Result<Self> {
        let script = Script::default();
        script
            .replies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(replies);
        let app = Router::new().fallback(answer).with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            // The server runs until the test drops the fake; an error here fails the test
            // through the missing answers.
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeTwilio {
            addr,
            script,
            server,
        })
    }

    pub fn url(&self) -> Url {
        Url::parse(&format!("http://{}", self.addr)).expect("a socket address makes a URL")
    }

    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.script
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for FakeTwilio {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(State(script): State<Script>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    script
        .seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Seen {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    let next = script
        .replies
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop_front();
    // An unscripted request is a test failure; 418 makes it obvious in the assertion.
    let reply = next.unwrap_or_else(|| Reply::text(418, "script exhausted"));
    tokio::time::sleep(reply.delay).await;
    let mut response = Response::builder()
        .status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::IM_A_TEAPOT));
    for (name, value) in &reply.headers {
        response = response.header(*name, value);
    }
    response
        .body(Body::from(reply.body))
        .unwrap_or_else(|_| Response::new(Body::from("bad scripted reply")))
}
