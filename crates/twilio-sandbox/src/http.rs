//! The HTTP face of the sandbox: Twilio Verify v2 routes behind Basic auth, the dev inbox,
//! event log and scenario list without auth, and Twilio-shaped errors for everything else.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;

use crate::Sandbox;
use crate::dispatch::Job;
use crate::error::Error;
use crate::events;
use crate::scenario::{self, Scenario, scenarios};
use crate::store::{AttemptFilter, CODE_LENGTHS, Channel, NewStatus, StartRequest, Target};
use crate::wire::{
    AttemptListJson, CheckJson, ScenariosJson, ServiceJson, ServiceListJson, VerificationJson,
};

/// Request bodies larger than this answer 413; Verify requests are a few hundred bytes.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// The longest `To` considered (an email address is at most 254 characters).
const MAX_TO_LEN: usize = 254;

pub(crate) fn router(sandbox: Sandbox) -> Router {
    Router::new()
        .route("/v2/Services", get(list_services))
        .route("/v2/Services/{service_sid}", get(fetch_service))
        .route(
            "/v2/Services/{service_sid}/Verifications",
            post(create_verification),
        )
        .route(
            "/v2/Services/{service_sid}/Verifications/{sid}",
            get(fetch_verification).post(update_verification),
        )
        .route(
            "/v2/Services/{service_sid}/VerificationCheck",
            post(create_check),
        )
        .route("/v2/Attempts", get(list_attempts))
        .route("/sandbox/scenarios", get(list_scenarios))
        .route("/sandbox/messages", get(list_messages))
        .route("/sandbox/events", get(list_events))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            sandbox.clone(),
            require_auth,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(sandbox)
}

/// Every `/v2` path needs Basic auth, known or not, as on Twilio.
async fn require_auth(State(sandbox): State<Sandbox>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path == "/v2" || path.starts_with("/v2/") {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if !sandbox.inner.credentials.accepts(authorization) {
            tracing::debug!(path, "sandbox.auth.rejected");
            return Error::Unauthenticated.respond(path);
        }
    }
    next.run(request).await
}

async fn not_found(uri: Uri) -> Response {
    Error::NotFound.respond(uri.path())
}

async fn method_not_allowed(uri: Uri) -> Response {
    Error::MethodNotAllowed.respond(uri.path())
}

/// A form body as Twilio reads it: PascalCase keys, the first value of a repeated key wins,
/// and anything unparsable simply counts as absent.
#[derive(Debug, Default)]
struct Params(Vec<(String, String)>);

impl Params {
    /// A non-empty parameter.
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let path = request.uri().path().to_owned();
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Error::PayloadTooLarge.respond(&path)
                } else {
                    Error::BadRequest.respond(&path)
                }
            })?;
        Ok(Params(
            serde_urlencoded::from_bytes(&bytes).unwrap_or_default(),
        ))
    }
}

/// The scheme and host clients used, so `url` fields point back at this sandbox.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|p| p.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    format!("{scheme}://{host}")
}

/// What a `To` is, if it is anything Verify accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    Phone,
    Email,
}

/// Strict E.164 that libphonenumber accepts as a valid number, or an email address.
fn classify_to(raw: &str) -> Option<Destination> {
    if raw.len() > MAX_TO_LEN {
        return None;
    }
    if let Some(digits) = raw.strip_prefix('+') {
        let strict = (7..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        let valid = strict && domain::PhoneNumber::parse(raw, None).is_ok_and(|n| n.e164() == raw);
        return valid.then_some(Destination::Phone);
    }
    if raw.contains('@') && domain::Email::parse(raw).is_ok() && raw.trim() == raw {
        return Some(Destination::Email);
    }
    None
}

/// Codes and custom codes are 4 to 10 letters or digits.
fn code_shape_ok(code: &str) -> bool {
    let lengths = usize::from(*CODE_LENGTHS.start())..=usize::from(*CODE_LENGTHS.end());
    lengths.contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A path parameter; a garbled path (bad percent-encoding) is simply not found.
fn path_param<T>(path: Result<Path<T>, PathRejection>) -> Result<T, Error> {
    path.map(|Path(p)| p).map_err(|_| Error::NotFound)
}

async fn list_services(State(sandbox): State<Sandbox>, headers: HeaderMap) -> Response {
    let base = base_url(&headers);
    let services = sandbox
        .inner
        .services
        .iter()
        .map(|s| ServiceJson::new(s, &sandbox.inner.account_sid, &base, &sandbox.inner.started))
        .collect();
    Json(ServiceListJson::new(services, &base)).into_response()
}

async fn fetch_service(
    State(sandbox): State<Sandbox>,
    uri: Uri,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let service_sid = match path_param(path) {
        Ok(p) => p,
        Err(error) => return error.respond(uri.path()),
    };
    match sandbox.service(&service_sid) {
        Some(service) => Json(ServiceJson::new(
            service,
            &sandbox.inner.account_sid,
            &base_url(&headers),
            &sandbox.inner.started,
        ))
        .into_response(),
        None => Error::NotFound.respond(uri.path()),
    }
}

async fn create_verification(
    State(sandbox): State<Sandbox>,
    uri: Uri,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    params: Params,
) -> Response {
    let service_sid = match path_param(path) {
        Ok(p) => p,
        Err(error) => return error.respond(uri.path()),
    };
    match start(&sandbox, &service_sid, &params).await {
        Ok(v) => {
            let body = VerificationJson::new(&v, &sandbox.inner.account_sid, &base_url(&headers));
            (StatusCode::CREATED, Json(body)).into_response()
        }
        Err(error) => error.respond(uri.path()),
    }
}

async fn start(
    sandbox: &Sandbox,
    service_sid: &str,
    params: &Params,
) -> Result<crate::store::Verification, Error> {
    let service = sandbox.service(service_sid).ok_or(Error::NotFound)?;
    let to = params.get("To").ok_or(Error::InvalidParameter("To"))?;
    let destination = classify_to(to).ok_or(Error::InvalidParameter("To"))?;
    let channel = params
        .get("Channel")
        .and_then(crate::store::parse_channel)
        .ok_or(Error::InvalidParameter("Channel"))?;
    // An email channel needs an email address and every other channel a phone number.
    if (channel == Channel::Email) != (destination == Destination::Email) {
        return Err(Error::InvalidParameter("To"));
    }
    let custom_code = params.get("CustomCode");
    if custom_code.is_some_and(|c| !code_shape_ok(c)) {
        return Err(Error::InvalidParameter("CustomCode"));
    }
    let scenario = Scenario::for_destination(to);
    if let Some(error) = scenario.and_then(|s| s.start_error(channel)) {
        tracing::info!(channel = channel.as_str(), code = ?error.status_and_code().1, "sandbox.scenario.injected");
        return Err(error);
    }
    if scenario == Some(Scenario::Slow) {
        tokio::time::sleep(sandbox.inner.slow_delay).await;
    }
    let request = StartRequest {
        service_sid: &service.sid,
        code_length: service.code_length,
        to,
        channel,
        locale: params.get("Locale"),
        custom_code,
        amount: params.get("Amount"),
        payee: params.get("Payee"),
        outcome: scenario::outcome(scenario, channel),
    };
    let verification = sandbox.with_store(|store| {
        let verification = store.start(&request, Utc::now(), &mut rand::rng())?;
        // Queued while the store is locked, so two sends of one verification are reported
        // in the order they were made.
        report_delivery(sandbox, &verification, request.outcome);
        Ok::<_, Error>(verification)
    })?;
    tracing::info!(
        verification_sid = %verification.sid,
        channel = channel.as_str(),
        send_attempts = verification.send_attempts.len(),
        "sandbox.verification.sent"
    );
    Ok(verification)
}

/// Queues the Verify Events of the send just made, if events are configured and Twilio
/// reports on the channel. Posting happens in the background; the answer does not wait.
fn report_delivery(
    sandbox: &Sandbox,
    verification: &crate::store::Verification,
    outcome: events::Outcome,
) {
    let Some(dispatcher) = &sandbox.inner.events else {
        return;
    };
    if !events::reports_on(verification.channel) {
        return;
    }
    let Some(attempt) = verification.send_attempts.last() else {
        return;
    };
    dispatcher.enqueue(Job {
        service_sid: verification.service_sid.clone(),
        verification_sid: verification.sid.clone(),
        attempt_sid: attempt.attempt_sid.clone(),
        attempt_time: attempt.time,
        channel: attempt.channel,
        to: verification.to.clone(),
        outcome,
    });
}

async fn fetch_verification(
    State(sandbox): State<Sandbox>,
    uri: Uri,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let (service_sid, sid) = match path_param(path) {
        Ok(p) => p,
        Err(error) => return error.respond(uri.path()),
    };
    let result = sandbox
        .service(&service_sid)
        .ok_or(Error::NotFound)
        .and_then(|_| sandbox.with_store(|store| store.fetch(&service_sid, &sid, Utc::now())));
    match result {
        Ok(v) => Json(VerificationJson::new(
            &v,
            &sandbox.inner.account_sid,
            &base_url(&headers),
        ))
        .into_response(),
        Err(error) => error.respond(uri.path()),
    }
}

async fn update_verification(
    State(sandbox): State<Sandbox>,
    uri: Uri,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    params: Params,
) -> Response {
    let (service_sid, sid) = match path_param(path) {
        Ok(p) => p,
        Err(error) => return error.respond(uri.path()),
    };
    let result = sandbox
        .service(&service_sid)
        .ok_or(Error::NotFound)
        .and_then(|_| match params.get("Status") {
            Some("canceled") => Ok(NewStatus::Canceled),
            Some("approved") => Ok(NewStatus::Approved),
            _ => Err(Error::InvalidParameter("Status")),
        })
        .and_then(|status| {
            sandbox.with_store(|store| store.update(&service_sid, &sid, status, Utc::now()))
        });
    match result {
        Ok(v) => {
            tracing::info!(verification_sid = %v.sid, status = v.status.as_str(), "sandbox.verification.updated");
            Json(VerificationJson::new(
                &v,
                &sandbox.inner.account_sid,
                &base_url(&headers),
            ))
            .into_response()
        }
        Err(error) => error.respond(uri.path()),
    }
}

async fn create_check(
    State(sandbox): State<Sandbox>,
    uri: Uri,
    path: Result<Path<String>, PathRejection>,
    params: Params,
) -> Response {
    let service_sid = match path_param(path) {
        Ok(p) => p,
        Err(error) => return error.respond(uri.path()),
    };
    match check(&sandbox, &service_sid, &params).await {
        Ok(v) => Json(CheckJson::new(&v, &sandbox.inner.account_sid)).into_response(),
        Err(error) => error.respond(uri.path()),
    }
}

async fn check(
    sandbox: &Sandbox,
    service_sid: &str,
    params: &Params,
) -> Result<crate::store::Verification, Error> {
    sandbox.service(service_sid).ok_or(Error::NotFound)?;
    let target = match (params.get("VerificationSid"), params.get("To")) {
        (Some(sid), _) => Target::Sid(sid),
        (None, Some(to)) => Target::To(to),
        (None, None) => return Err(Error::NoTarget),
    };
    let code = params
        .get("Code")
        .filter(|c| code_shape_ok(c))
        .ok_or(Error::InvalidParameter("Code"))?;
    let destination =
        sandbox.with_store(|store| store.destination_of(service_sid, target, Utc::now()));
    if destination.as_deref().and_then(Scenario::for_destination) == Some(Scenario::Slow) {
        tokio::time::sleep(sandbox.inner.slow_delay).await;
    }
    let verification =
        sandbox.with_store(|store| store.check(service_sid, target, code, Utc::now()))?;
    tracing::info!(
        verification_sid = %verification.sid,
        status = verification.status.as_str(),
        checks = verification.checks,
        "sandbox.verification.checked"
    );
    Ok(verification)
}

/// `PageSize` when absent, and its largest value (OpenAPI `ListVerificationAttempt`).
const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 1000;

/// `GET /v2/Attempts`: the sandbox's send attempts, newest first, filtered by
/// `VerifyServiceSid`, `ChannelData.To` and `DateCreatedAfter`, one page of `PageSize`.
/// A malformed filter is Twilio's 400 / 60200 naming it; other filters are ignored.
async fn list_attempts(
    State(sandbox): State<Sandbox>,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.as_deref();
    let service_sid = query_param(query, "VerifyServiceSid");
    // A `+` left unencoded decodes to a space, as on `/sandbox/messages`.
    let to = query_param(query, "ChannelData.To").map(|v| match v.strip_prefix(' ') {
        Some(rest) => format!("+{rest}"),
        None => v,
    });
    let filter = attempt_filter(query, service_sid.as_deref(), to.as_deref());
    let filter = match filter {
        Ok(filter) => filter,
        Err(error) => return error.respond(uri.path()),
    };
    let attempts = sandbox.with_store(|store| store.attempts(&filter, Utc::now()));
    tracing::debug!(attempts = attempts.len(), "sandbox.attempts.listed");
    Json(AttemptListJson::new(
        attempts,
        &sandbox.inner.account_sid,
        &base_url(&headers),
        filter.page_size,
    ))
    .into_response()
}

/// The filters of an attempts list, or the error naming the first malformed one.
fn attempt_filter<'a>(
    query: Option<&str>,
    service_sid: Option<&'a str>,
    to: Option<&'a str>,
) -> Result<AttemptFilter<'a>, Error> {
    if service_sid.is_some_and(|s| !is_sid(s, "VA")) {
        return Err(Error::InvalidParameter("VerifyServiceSid"));
    }
    let created_after = query_param(query, "DateCreatedAfter")
        .map(|d| {
            chrono::DateTime::parse_from_rfc3339(&d)
                .map(|d| d.with_timezone(&Utc))
                .map_err(|_| Error::InvalidParameter("DateCreatedAfter"))
        })
        .transpose()?;
    let page_size = query_param(query, "PageSize")
        .map(|n| {
            n.parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                .ok_or(Error::InvalidParameter("PageSize"))
        })
        .transpose()?
        .unwrap_or(DEFAULT_PAGE_SIZE);
    Ok(AttemptFilter {
        service_sid,
        to,
        created_after,
        page_size,
    })
}

/// Whether `value` is `prefix` and 32 hex digits, the shape of a Twilio SID.
fn is_sid(value: &str, prefix: &str) -> bool {
    value.len() == prefix.len() + 32
        && value.starts_with(prefix)
        && value.as_bytes()[prefix.len()..]
            .iter()
            .all(u8::is_ascii_hexdigit)
}

async fn list_scenarios() -> Response {
    Json(ScenariosJson(scenarios())).into_response()
}

/// The first non-empty value of `key` in a query string, leniently parsed.
fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = query
        .map(|q| serde_urlencoded::from_str(q).unwrap_or_default())
        .unwrap_or_default();
    pairs
        .into_iter()
        .find(|(k, v)| k == key && !v.is_empty())
        .map(|(_, v)| v)
}

/// `GET /sandbox/messages[?to=…]`. A `+` left unencoded in the query decodes to a space;
/// a leading space is read back as the `+` the caller meant.
async fn list_messages(State(sandbox): State<Sandbox>, RawQuery(query): RawQuery) -> Response {
    let to = query_param(query.as_deref(), "to").map(|v| match v.strip_prefix(' ') {
        Some(rest) => format!("+{rest}"),
        None => v,
    });
    let messages = sandbox.with_store(|store| store.messages(to.as_deref(), Utc::now()));
    Json(messages).into_response()
}

/// `GET /sandbox/events[?verification_sid=VE…]`: every Verify Event post, newest first.
/// Empty when no events URL is configured.
async fn list_events(State(sandbox): State<Sandbox>, RawQuery(query): RawQuery) -> Response {
    let verification_sid = query_param(query.as_deref(), "verification_sid");
    let records = sandbox
        .inner
        .events
        .as_ref()
        .map(|d| d.records(verification_sid.as_deref()))
        .unwrap_or_default();
    Json(records).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_must_be_strict_e164_or_email() {
        for (raw, expected) in [
            ("+14155552671", Some(Destination::Phone)),
            ("+442079460958", Some(Destination::Phone)),
            ("+14155550100", Some(Destination::Phone)),
            ("user@example.com", Some(Destination::Email)),
            ("14155552671", None),
            ("+1 415 555 2671", None),
            ("+1415555267", None),
            ("+1415", None),
            ("+0123456789", None),
            ("+14155552671x", None),
            ("tel:+14155552671", None),
            ("user@", None),
            ("@example.com", None),
            (" user@example.com", None),
            ("", None),
            ("+", None),
        ] {
            assert_eq!(classify_to(raw), expected, "{raw:?}");
        }
        assert_eq!(
            classify_to(&format!("{}@example.com", "a".repeat(300))),
            None
        );
    }

    #[test]
    fn sid_shapes() {
        let hex = "0123456789abcdefABCDEF0123456789";
        for (value, ok) in [
            (format!("VA{hex}"), true),
            (format!("VE{hex}"), false),
            (format!("VA{}", &hex[1..]), false),
            (format!("VA{}g", &hex[1..]), false),
            (format!("VA{}é", &hex[2..]), false),
            (String::new(), false),
        ] {
            assert_eq!(is_sid(&value, "VA"), ok, "{value:?}");
        }
    }

    #[test]
    fn code_shapes() {
        for (code, ok) in [
            ("1234", true),
            ("123456", true),
            ("1234567890", true),
            ("A1b2C3", true),
            ("123", false),
            ("12345678901", false),
            ("12 34", false),
            ("12-34", false),
            ("", false),
        ] {
            assert_eq!(code_shape_ok(code), ok, "{code:?}");
        }
    }

    #[test]
    fn base_url_comes_from_host() {
        let mut headers = HeaderMap::new();
        assert_eq!(base_url(&headers), "http://localhost");
        headers.insert(header::HOST, "127.0.0.1:4010".parse().expect("header"));
        assert_eq!(base_url(&headers), "http://127.0.0.1:4010");
        headers.insert("x-forwarded-proto", "https".parse().expect("header"));
        assert_eq!(base_url(&headers), "https://127.0.0.1:4010");
        headers.insert(header::HOST, "evil\"host".parse().expect("header"));
        assert_eq!(base_url(&headers), "https://localhost");
    }

    #[test]
    fn params_take_the_first_non_empty_value() {
        let params = Params(
            serde_urlencoded::from_str("To=%2B14155552671&To=other&Channel=&Code=1234")
                .expect("parses"),
        );
        assert_eq!(params.get("To"), Some("+14155552671"));
        assert_eq!(params.get("Channel"), None);
        assert_eq!(params.get("Code"), Some("1234"));
        assert_eq!(params.get("Missing"), None);
    }
}
