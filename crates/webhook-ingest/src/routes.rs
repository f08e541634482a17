//! The HTTP routes: the two webhook endpoints, health and readiness.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use chrono::Utc;
use domain::bus::BusEvent;
use domain::delivery::DeliveryReport;
use domain::ports::Recorded;
use serde_json::json;
use tracing::{info, warn};
use twilio::webhook::{
    SIGNATURE_HEADER, SIGNATURE_SETTINGS_HEADER, SignatureError, SignatureHeaders,
};

use crate::AppState;

pub const VERIFY_EVENTS_PATH: &str = "/webhooks/twilio/verify-events";
pub const MESSAGE_STATUS_PATH: &str = "/webhooks/twilio/message-status";

/// The largest body accepted (413 above it). Twilio's Event Streams batches stay far below.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(VERIFY_EVENTS_PATH, post(verify_events))
        .route(MESSAGE_STATUS_PATH, post(message_status))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// An error answer: a status and a JSON body with a stable code and a reason.
fn reject(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({ "status": status.as_u16(), "code": code, "message": message.to_string() })),
    )
        .into_response()
}

/// A body that could not be read, in the JSON of every other error: over
/// [`MAX_BODY_BYTES`] (413, `body_too_large`) or cut off (400, `body_unreadable`).
fn body_rejection(rejection: &BytesRejection) -> Response {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        reject(
            status,
            "body_too_large",
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        )
    } else {
        reject(status, "body_unreadable", rejection.body_text())
    }
}

fn signature_rejection(error: &SignatureError) -> Response {
    let (status, code) = match error {
        SignatureError::MissingSignature => (StatusCode::BAD_REQUEST, "missing_signature"),
        SignatureError::MalformedSignature => (StatusCode::BAD_REQUEST, "malformed_signature"),
        SignatureError::MalformedSettings(_) => {
            (StatusCode::BAD_REQUEST, "malformed_signature_settings")
        }
        SignatureError::MissingBodyHash => (StatusCode::BAD_REQUEST, "missing_body_hash"),
        SignatureError::Mismatch => (StatusCode::FORBIDDEN, "invalid_signature"),
        SignatureError::BodyHashMismatch => (StatusCode::FORBIDDEN, "body_hash_mismatch"),
        SignatureError::UnknownSharedKey(_) => (StatusCode::FORBIDDEN, "unknown_shared_key"),
        SignatureError::UnsupportedAlgorithm(_) => {
            (StatusCode::FORBIDDEN, "unsupported_signature_algorithm")
        }
    };
    warn!(code, "webhook refused");
    reject(status, code, error)
}

fn signature_headers(headers: &HeaderMap) -> SignatureHeaders<'_> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    SignatureHeaders {
        signature: value(SIGNATURE_HEADER),
        settings: value(SIGNATURE_SETTINGS_HEADER),
    }
}

/// The URL Twilio signed: the configured public base, or the forwarded scheme and host when
/// the peer is a trusted proxy, followed by the path and query exactly as received.
fn signed_url(state: &AppState, peer: SocketAddr, uri: &Uri, headers: &HeaderMap) -> String {
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    // A listener on `[::]` sees IPv4 peers as IPv4-mapped IPv6 addresses (`::ffff:10.0.0.7`),
    // which no IPv4 network contains: compare the address the peer actually has.
    let peer_ip = peer.ip().to_canonical();
    let trusted = state
        .settings
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&peer_ip));
    let forwarded = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            // Proxies that append rather than replace leave earlier, client-controlled values
            // in front; the last one is what the trusted proxy itself saw.
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    if trusted
        && let (Some(proto), Some(host)) = (
            forwarded("x-forwarded-proto"),
            forwarded("x-forwarded-host"),
        )
        && matches!(proto, "http" | "https")
        && !host.contains(['/', '?', '#', '@', ' '])
    {
        return format!("{proto}://{host}{path_and_query}");
    }
    format!("{}{path_and_query}", state.public_base_url)
}

/// Stores each report with its outbox row; counts new and duplicate ones. Any store
/// failure answers 503 so Twilio retries (the reports stored so far are duplicates then).
async fn store(state: &AppState, reports: &[DeliveryReport]) -> Result<(usize, usize), Response> {
    let store = state.database.delivery_reports();
    let (mut new, mut duplicates) = (0, 0);
    for report in reports {
        // Its message id is derived from the report's dedupe key; the trace context of the
        // request it came in goes with it, into the outbox and onto the bus, so the
        // consumer can link its work to this request.
        let envelope = BusEvent::DeliveryReported(report.clone())
            .to_envelope(report.occurred_at, telemetry::trace::current_headers())
            .map_err(|e| reject(StatusCode::INTERNAL_SERVER_ERROR, "encoding_failed", e))?;
        match store.record_report(report, &envelope, Utc::now()).await {
            Ok(Recorded::New) => new += 1,
            Ok(Recorded::Duplicate) => duplicates += 1,
            Err(e) => {
                warn!(error = %e, "could not store a delivery report");
                return Err(reject(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the report could not be stored; retry later",
                ));
            }
        }
    }
    if new > 0 {
        state.stored.notify_one();
    }
    Ok((new, duplicates))
}

/// A new trace per request: Twilio sends no trace context, and one from the public internet
/// would not be trusted.
#[tracing::instrument(name = "webhook.verify_events", skip_all, fields(otel.kind = "server"))]
async fn verify_events(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_rejection(&rejection),
    };
    let url = signed_url(&state, peer, &uri, &headers);
    if let Err(e) = state
        .validator
        .validate_json(&url, signature_headers(&headers), &body)
    {
        return signature_rejection(&e);
    }
    let events = match twilio::events::parse_verify_events(&body, Utc::now()) {
        Ok(events) => events,
        Err(e) => return reject(StatusCode::BAD_REQUEST, "malformed_body", e),
    };
    match store(&state, &events.reports).await {
        Ok((new, duplicates)) => {
            info!(
                new,
                duplicates,
                skipped = events.skipped,
                "verify events stored"
            );
            (
                StatusCode::OK,
                Json(json!({ "stored": new, "duplicates": duplicates, "skipped": events.skipped })),
            )
                .into_response()
        }
        Err(response) => response,
    }
}

/// A new trace per request, as for [`verify_events`].
#[tracing::instrument(name = "webhook.message_status", skip_all, fields(otel.kind = "server"))]
async fn message_status(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_rejection(&rejection),
    };
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    if !is_form {
        return reject(
            StatusCode::BAD_REQUEST,
            "unsupported_content_type",
            "status callbacks are application/x-www-form-urlencoded",
        );
    }
    let params: Vec<(String, String)> = match serde_urlencoded::from_bytes(&body) {
        Ok(params) => params,
        Err(e) => return reject(StatusCode::BAD_REQUEST, "malformed_body", e),
    };
    let url = signed_url(&state, peer, &uri, &headers);
    if let Err(e) = state
        .validator
        .validate_form(&url, signature_headers(&headers), &params)
    {
        return signature_rejection(&e);
    }
    let report = match twilio::events::parse_message_status(&params, Utc::now()) {
        Ok(report) => report,
        Err(e) => return reject(StatusCode::BAD_REQUEST, "malformed_body", e),
    };
    let reports: Vec<DeliveryReport> = report.into_iter().collect();
    match store(&state, &reports).await {
        Ok((new, duplicates)) => {
            info!(new, duplicates, "status callback stored");
            (
                StatusCode::OK,
                Json(json!({ "stored": new, "duplicates": duplicates, "skipped": 1 - reports.len() })),
            )
                .into_response()
        }
        Err(response) => response,
    }
}

/// Liveness: the process answers. Dependencies are not consulted, so an outage of the
/// database does not get every replica restarted.
async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the database answered its last periodic ping (a probe does not query it, so
/// probes cost it nothing). The broker's state is reported but does not count: reports go to
/// the outbox first, so webhooks are accepted and stored while the broker is down and
/// published once it is back.
async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let database = match &*state
        .database_ready
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let broker = if state.bus.is_connected() {
        "ok"
    } else {
        "unavailable: reconnecting"
    };
    let draining = state.draining.load(Ordering::SeqCst);
    let ready = database == "ok" && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else if draining { "draining" } else { "unavailable" },
        "database": database,
        "broker": broker,
    });
    (status, Json(body))
}
