//! The Verify V2 client: one pooled HTTP client, the four verification calls, the list of
//! verification attempts, and the `VerifyProvider` implementation the services hold.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use chrono::{DateTime, SecondsFormat, Utc};
use domain::ports::{
    ProviderCheck, ProviderError, ProviderStart, ProviderVerification, VerifyProvider,
};
use domain::{Destination, OtpCode};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, Span, field};
use url::Url;

use crate::config::{Credentials, TwilioConfig};
use crate::retry::{self, Safety};
use crate::{TwilioError, sid, wire};

/// Names the gateway to Twilio, so its support can tell our traffic apart.
const USER_AGENT: &str = concat!(
    "verify-gateway/",
    env!("CARGO_PKG_VERSION"),
    " (twilio-verify-v2; rust)"
);

/// Headers added to every request, computed as it is sent (each attempt of a repeated call
/// asks again). The services set the W3C trace context of the current span here
/// (`traceparent`, `tracestate`), so the request carries the caller's trace without this
/// adapter knowing about tracing. Names that are not valid header names, and values that
/// are not valid header values, are left out; the adapter's own headers (authorization,
/// content type, accept, user agent) are never replaced.
#[derive(Clone)]
pub struct RequestHeaders(Arc<dyn Fn() -> Vec<(&'static str, String)> + Send + Sync>);

impl RequestHeaders {
    pub fn new(headers: impl Fn() -> Vec<(&'static str, String)> + Send + Sync + 'static) -> Self {
        RequestHeaders(Arc::new(headers))
    }
}

impl fmt::Debug for RequestHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RequestHeaders(..)")
    }
}

/// The headers a [`RequestHeaders`] hook may not set.
const OWN_HEADERS: [HeaderName; 4] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::ACCEPT,
    header::USER_AGENT,
];

/// A Twilio Verify V2 client. Cheap to clone: clones share the connection pool.
#[derive(Debug, Clone)]
pub struct TwilioVerify {
    http: reqwest::Client,
    base: Url,
    /// `Basic` and the credentials in base64, encoded once (marked sensitive, so it is
    /// never printed).
    authorization: HeaderValue,
    max_retries: u32,
    request_headers: Option<RequestHeaders>,
}

impl TwilioVerify {
    /// Validates `config` and builds the HTTP client once (rustls, pooled connections).
    pub fn new(config: TwilioConfig) -> Result<Self, TwilioError> {
        let base = config.validate()?;
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .tls_backend_rustls()
            .user_agent(USER_AGENT)
            .default_headers(headers)
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            // Twilio's API does not redirect; following one could only lead somewhere that
            // is not Twilio.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| TwilioError::InvalidConfig(format!("HTTP client: {e}")))?;
        Ok(TwilioVerify {
            http,
            base,
            authorization: authorization(&config.credentials)?,
            max_retries: config.max_retries,
            request_headers: None,
        })
    }

    /// Adds the headers `headers` returns to every request (see [`RequestHeaders`]).
    pub fn with_request_headers(mut self, headers: RequestHeaders) -> Self {
        self.request_headers = Some(headers);
        self
    }

    /// The base URL requests go to (Twilio's host for the region and edge, or the override).
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `POST /v2/Services/{ServiceSid}/Verifications`: sends a code. Repeated only when
    /// Twilio cannot have processed it (429, connection never opened).
    pub async fn create_verification(
        &self,
        request: &ProviderStart,
    ) -> Result<ProviderVerification, TwilioError> {
        let span = tracing::info_span!(
            "twilio.create_verification",
            otel.kind = "client",
            service_sid = %request.service,
            verification_sid = field::Empty,
            channel = %request.channel,
            http_status = field::Empty,
            twilio_code = field::Empty,
            attempts = field::Empty,
        );
        async {
            let service = sid::service(&request.service)?;
            let url = self.url(&["v2", "Services", service, "Verifications"]);
            let form = wire::CreateVerificationForm::new(
                request.to.expose(),
                request.channel,
                request.locale.as_ref(),
            );
            let body: wire::Verification = self
                .execute(Safety::NotIdempotent, Method::POST, &url, Some(&form))
                .await?;
            let verification = ProviderVerification::try_from(body)?;
            Span::current().record("verification_sid", verification.sid.as_str());
            Ok(verification)
        }
        .instrument(span)
        .await
    }

    /// `POST /v2/Services/{ServiceSid}/VerificationCheck` by verification SID. A wrong code is
    /// `Ok` with `valid == false`, not an error. Repeated only like a create.
    pub async fn check_verification(
        &self,
        service_sid: &str,
        verification_sid: &str,
        code: &OtpCode,
    ) -> Result<ProviderCheck, TwilioError> {
        self.verification_check(service_sid, CheckBy::Sid(verification_sid), code)
            .await
    }

    /// `POST /v2/Services/{ServiceSid}/VerificationCheck` with `To`: checks the pending
    /// verification Twilio holds for `to`, whose SID the caller does not know. The
    /// answer names it (`sid`).
    pub async fn check_verification_to(
        &self,
        service_sid: &str,
        to: &Destination,
        code: &OtpCode,
    ) -> Result<ProviderCheck, TwilioError> {
        self.verification_check(service_sid, CheckBy::To(to), code)
            .await
    }

    async fn verification_check(
        &self,
        service_sid: &str,
        by: CheckBy<'_>,
        code: &OtpCode,
    ) -> Result<ProviderCheck, TwilioError> {
        let span = tracing::info_span!(
            "twilio.check_verification",
            otel.kind = "client",
            service_sid = %service_sid,
            verification_sid = field::Empty,
            to = field::Empty,
            http_status = field::Empty,
            twilio_code = field::Empty,
            attempts = field::Empty,
        );
        match by {
            CheckBy::Sid(sid) => span.record("verification_sid", sid),
            // A destination prints as its mask.
            CheckBy::To(to) => span.record("to", field::display(to)),
        };
        async {
            let service = sid::service(service_sid)?;
            let url = self.url(&["v2", "Services", service, "VerificationCheck"]);
            let form = wire::VerificationCheckForm {
                verification_sid: match by {
                    CheckBy::Sid(sid) => Some(sid::verification(sid)?),
                    CheckBy::To(_) => None,
                },
                to: match by {
                    CheckBy::Sid(_) => None,
                    CheckBy::To(to) => Some(to.expose()),
                },
                code: code.expose(),
            };
            let body: wire::VerificationCheck = self
                .execute(Safety::NotIdempotent, Method::POST, &url, Some(&form))
                .await?;
            ProviderCheck::try_from(body)
        }
        .instrument(span)
        .await
    }

    /// `GET /v2/Services/{ServiceSid}/Verifications/{Sid}`.
    pub async fn fetch_verification(
        &self,
        service_sid: &str,
        verification_sid: &str,
    ) -> Result<ProviderVerification, TwilioError> {
        let span = tracing::info_span!(
            "twilio.fetch_verification",
            otel.kind = "client",
            service_sid = %service_sid,
            verification_sid = %verification_sid,
            http_status = field::Empty,
            twilio_code = field::Empty,
            attempts = field::Empty,
        );
        async {
            let url = self.verification_url(service_sid, verification_sid)?;
            let body: wire::Verification = self
                .execute::<_, ()>(Safety::Idempotent, Method::GET, &url, None)
                .await?;
            ProviderVerification::try_from(body)
        }
        .instrument(span)
        .await
    }

    /// `POST /v2/Services/{ServiceSid}/Verifications/{Sid}` with `Status=canceled`.
    pub async fn cancel_verification(
        &self,
        service_sid: &str,
        verification_sid: &str,
    ) -> Result<ProviderVerification, TwilioError> {
        let span = tracing::info_span!(
            "twilio.cancel_verification",
            otel.kind = "client",
            service_sid = %service_sid,
            verification_sid = %verification_sid,
            http_status = field::Empty,
            twilio_code = field::Empty,
            attempts = field::Empty,
        );
        async {
            let url = self.verification_url(service_sid, verification_sid)?;
            let body: wire::Verification = self
                .execute(Safety::Idempotent, Method::POST, &url, Some(&wire::CANCEL))
                .await?;
            ProviderVerification::try_from(body)
        }
        .instrument(span)
        .await
    }

    /// `GET /v2/Attempts` filtered by `VerifyServiceSid`, `ChannelData.To` and
    /// `DateCreatedAfter`: the verification SID (`VE…`) of the newest attempt Twilio holds
    /// for `to` in `service_sid` created after `since`, or `None` when it holds none. A read,
    /// so it is repeated after a 5xx like a fetch.
    ///
    /// For a send whose create Twilio never confirmed: whether it went out, and as which
    /// verification. Only the first page is read: the filters leave a handful of attempts
    /// (one destination, one service, a few minutes), far fewer than a page holds.
    pub async fn find_sent_verification(
        &self,
        service_sid: &str,
        to: &Destination,
        since: DateTime<Utc>,
    ) -> Result<Option<String>, TwilioError> {
        let span = tracing::info_span!(
            "twilio.list_attempts",
            otel.kind = "client",
            service_sid = %service_sid,
            // A destination prints as its mask.
            to = %to,
            verification_sid = field::Empty,
            attempt_sid = field::Empty,
            channel = field::Empty,
            conversion_status = field::Empty,
            http_status = field::Empty,
            twilio_code = field::Empty,
            attempts = field::Empty,
        );
        async {
            let service = sid::service(service_sid)?;
            let mut url = self.url(&["v2", "Attempts"]);
            url.query_pairs_mut()
                .append_pair("VerifyServiceSid", service)
                .append_pair("ChannelData.To", to.expose())
                // Twilio's form: whole seconds, `Z` (CONTRACT §1).
                .append_pair(
                    "DateCreatedAfter",
                    &since.to_rfc3339_opts(SecondsFormat::Secs, true),
                )
                .append_pair("PageSize", &wire::ATTEMPTS_PAGE_SIZE.to_string());
            let body: wire::AttemptList = self
                .execute::<_, ()>(Safety::Idempotent, Method::GET, &url, None)
                .await?;
            let newest = body.newest_sent();
            if let Some(attempt) = &newest {
                let span = Span::current();
                span.record("verification_sid", attempt.verification_sid.as_str());
                if let Some(sid) = &attempt.sid {
                    span.record("attempt_sid", sid.as_str());
                }
                if let Some(channel) = &attempt.channel {
                    span.record("channel", channel.as_str());
                }
                if let Some(status) = &attempt.conversion_status {
                    span.record("conversion_status", status.as_str());
                }
            }
            Ok(newest.map(|attempt| attempt.verification_sid))
        }
        .instrument(span)
        .await
    }

    fn verification_url(
        &self,
        service_sid: &str,
        verification_sid: &str,
    ) -> Result<Url, TwilioError> {
        let service = sid::service(service_sid)?;
        let verification = sid::verification(verification_sid)?;
        Ok(self.url(&["v2", "Services", service, "Verifications", verification]))
    }

    /// Appends `segments` to the base URL (keeping any path prefix of an override).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // `validate` refused base URLs that cannot carry a path, so this cannot fail; if it
        // somehow did, the request would go to the base URL and Twilio would answer 404.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends the request, repeating it while `retry` says it is safe, and decodes the answer.
    async fn execute<T, F>(
        &self,
        safety: Safety,
        method: Method,
        url: &Url,
        form: Option<&F>,
    ) -> Result<T, TwilioError>
    where
        T: DeserializeOwned,
        F: Serialize + ?Sized,
    {
        let span = Span::current();
        let mut attempt: u32 = 0;
        loop {
            let mut request = self.authorised(self.http.request(method.clone(), url.clone()));
            request = self.with_extra_headers(request);
            if let Some(form) = form {
                request = request.form(form);
            }
            let result = self.send_once(request).await;
            span.record("attempts", attempt + 1);
            let err = match result {
                Ok(body) => return Ok(body),
                Err(err) => err,
            };
            if let Some(code) = err.code() {
                span.record("twilio_code", code);
            }
            match retry::delay_before_retry(&err, safety, attempt, self.max_retries) {
                Some(delay) => {
                    tracing::debug!(error = %err, delay_ms = delay.as_millis(), "retrying Twilio call");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                None => {
                    tracing::debug!(error = %err, "Twilio call failed");
                    return Err(err);
                }
            }
        }
    }

    /// The hook's headers, those that are valid and not the adapter's own.
    fn with_extra_headers(&self, mut request: RequestBuilder) -> RequestBuilder {
        let Some(hook) = &self.request_headers else {
            return request;
        };
        for (name, value) in (hook.0)() {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) else {
                continue;
            };
            if !OWN_HEADERS.contains(&name) {
                request = request.header(name, value);
            }
        }
        request
    }

    fn authorised(&self, request: RequestBuilder) -> RequestBuilder {
        request.header(header::AUTHORIZATION, self.authorization.clone())
    }

    /// One HTTP exchange: a success body decoded as `T`, or the typed error.
    async fn send_once<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<T, TwilioError> {
        // Without the URL: a list's query names the destination (`ChannelData.To`), which no
        // error text may carry into a log.
        let response = request
            .send()
            .await
            .map_err(|e| TwilioError::from_transport(&e.without_url()))?;
        let status = response.status();
        Span::current().record("http_status", status.as_u16());
        if status.is_success() {
            let bytes = response
                .bytes()
                .await
                .map_err(|e| TwilioError::from_transport(&e.without_url()))?;
            return serde_json::from_slice(&bytes).map_err(|e| TwilioError::Decode(e.to_string()));
        }
        let retry_after = if status == StatusCode::TOO_MANY_REQUESTS {
            retry_after(response.headers())
        } else {
            None
        };
        // The status alone still classifies the error if the body cannot be read.
        let bytes = response.bytes().await.unwrap_or_default();
        Err(TwilioError::from_response(
            status.as_u16(),
            retry_after,
            &bytes,
        ))
    }
}

/// The `Authorization` header of `credentials` (HTTP Basic).
fn authorization(credentials: &Credentials) -> Result<HeaderValue, TwilioError> {
    let (user, password) = credentials.basic_auth();
    let encoded = BASE64_STANDARD.encode(format!("{user}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).map_err(|_| {
        TwilioError::InvalidConfig("credentials: not valid in an HTTP header".to_owned())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// `Retry-After` in seconds (the form Twilio sends); an HTTP date or garbage is ignored.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// What a verification check names at Twilio.
#[derive(Clone, Copy)]
enum CheckBy<'a> {
    Sid(&'a str),
    /// The destination, for whose pending verification Twilio checks the code.
    To(&'a Destination),
}

#[async_trait]
impl VerifyProvider for TwilioVerify {
    async fn start(&self, request: &ProviderStart) -> Result<ProviderVerification, ProviderError> {
        Ok(self.create_verification(request).await?)
    }

    async fn check(
        &self,
        service: &str,
        sid: &str,
        code: &OtpCode,
    ) -> Result<ProviderCheck, ProviderError> {
        Ok(self.check_verification(service, sid, code).await?)
    }

    async fn check_destination(
        &self,
        service: &str,
        to: &Destination,
        code: &OtpCode,
    ) -> Result<ProviderCheck, ProviderError> {
        Ok(self.check_verification_to(service, to, code).await?)
    }

    async fn fetch(&self, service: &str, sid: &str) -> Result<ProviderVerification, ProviderError> {
        Ok(self.fetch_verification(service, sid).await?)
    }

    async fn cancel(
        &self,
        service: &str,
        sid: &str,
    ) -> Result<ProviderVerification, ProviderError> {
        Ok(self.cancel_verification(service, sid).await?)
    }

    async fn find_sent(
        &self,
        service: &str,
        to: &Destination,
        since: DateTime<Utc>,
    ) -> Result<Option<String>, ProviderError> {
        Ok(self.find_sent_verification(service, to, since).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: Option<&str>, expected: Option<u64>) {
        let mut headers = HeaderMap::new();
        if let Some(v) = value {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(v).expect("valid header"),
            );
        }
        assert_eq!(
            retry_after(&headers),
            expected.map(Duration::from_secs),
            "{value:?}"
        );
    }

    #[test]
    fn retry_after_reads_seconds() {
        check(None, None);
        check(Some("1"), Some(1));
        check(Some(" 30 "), Some(30));
        check(Some("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        check(Some("-1"), None);
    }
}
