//! The adapter against a scripted Twilio: what it sends, what it retries, how it classifies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use domain::ports::{ProviderErrorKind as K, ProviderStart, ProviderStatus, VerifyProvider};
use domain::{Channel, Destination, Locale, OtpCode, PhoneNumber};
use secrecy::SecretString;
use twilio::{Credentials, RequestHeaders, TwilioVerify};

use crate::fake::{FakeTwilio, Reply};
use crate::{ACCOUNT_SID, AUTH_TOKEN, SERVICE_SID, VERIFICATION_SID, config};

fn provider(fake: &FakeTwilio) -> anyhow::Result<Arc<dyn VerifyProvider>> {
    Ok(Arc::new(TwilioVerify::new(config(fake.url()))?))
}

fn start_request() -> anyhow::Result<ProviderStart> {
    Ok(ProviderStart {
        service: SERVICE_SID.to_owned(),
        to: Destination::Phone(PhoneNumber::parse("+14155552671", None)?),
        channel: Channel::Sms,
        locale: Some(Locale::parse("en")?),
    })
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

#[tokio::test]
async fn create_sends_the_exact_form_and_basic_auth() -> anyhow::Result<()> {
    let fake = FakeTwilio::start([Reply::verification(201, "pending")]).await?;
    let started = provider(&fake)?.start(&start_request()?).await?;
    assert_eq!(started.sid, VERIFICATION_SID);
    assert_eq!(started.status, ProviderStatus::Pending);
    assert_eq!(started.channel, Some(Channel::Sms));

    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.path,
        format!("/v2/Services/{SERVICE_SID}/Verifications")
    );
    assert_eq!(request.body, "To=%2B14155552671&Channel=sms&Locale=en");
    assert_eq!(
        request.header("authorization"),
        Some(basic(ACCOUNT_SID, AUTH_TOKEN).as_str())
    );
    assert_eq!(
        request.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(request.header("accept"), Some("application/json"));
    assert!(
        request
            .header("user-agent")
            .is_some_and(|ua| ua.starts_with("verify-gateway/")),
        "{:?}",
        request.header("user-agent")
    );
    Ok(())
}

#[tokio::test]
async fn check_fetch_and_cancel_send_what_the_contract_says() -> anyhow::Result<()> {
    let fake = FakeTwilio::start([
        Reply::check("pending", false),
        Reply::check("approved", true),
        Reply::verification(200, "approved"),
        Reply::verification(200, "canceled"),
    ])
    .await?;
    let key_sid = "SK0123456789abcdef0123456789abcdef";
    let mut cfg = config(fake.url());
    cfg.credentials = Credentials::ApiKey {
        account_sid: ACCOUNT_SID.to_owned(),
        key_sid: key_sid.to_owned(),
        key_secret: SecretString::from("key-secret"),
    };
    let twilio: Arc<dyn VerifyProvider> = Arc::new(TwilioVerify::new(cfg)?);
    let code = OtpCode::parse("123456")?;

    // A wrong code is an answer, not an error.
    let wrong = twilio.check(SERVICE_SID, VERIFICATION_SID, &code).await?;
    assert_eq!(
        (wrong.status, wrong.valid),
        (ProviderStatus::Pending, false)
    );
    let right = twilio.check(SERVICE_SID, VERIFICATION_SID, &code).await?;
    assert_eq!(
        (right.status, right.valid),
        (ProviderStatus::Approved, true)
    );
    let fetched = twilio.fetch(SERVICE_SID, VERIFICATION_SID).await?;
    assert_eq!(fetched.status, ProviderStatus::Approved);
    let canceled = twilio.cancel(SERVICE_SID, VERIFICATION_SID).await?;
    assert_eq!(canceled.status, ProviderStatus::Canceled);

    let seen = fake.seen();
    let sent: Vec<(&str, &str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str(), s.body.as_str()))
        .collect();
    let check_path = format!("/v2/Services/{SERVICE_SID}/VerificationCheck");
    let check_body = format!("VerificationSid={VERIFICATION_SID}&Code=123456");
    let instance = format!("/v2/Services/{SERVICE_SID}/Verifications/{VERIFICATION_SID}");
    assert_eq!(
        sent,
        [
            ("POST", check_path.as_str(), check_body.as_str()),
            ("POST", check_path.as_str(), check_body.as_str()),
            ("GET", instance.as_str(), ""),
            ("POST", instance.as_str(), "Status=canceled"),
        ]
    );
    let auth = basic(key_sid, "key-secret");
    assert!(
        seen.iter()
            .all(|s| s.header("authorization") == Some(auth.as_str()))
    );
    assert!(
        seen[2].header("content-type").is_none(),
        "a GET carries no form"
    );
    Ok(())
}

#[tokio::test]
async fn request_header_hook_is_asked_for_every_attempt() -> anyhow::Result<()> {
    let fake = FakeTwilio::start([
        Reply::error(429, 20429, "Too many requests").header("retry-after", "0"),
        Reply::verification(201, "pending"),
        Reply::verification(200, "pending"),
    ])
    .await?;
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let twilio = TwilioVerify::new(config(fake.url()))?.with_request_headers(RequestHeaders::new(
        move || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            vec![
                (
                    "traceparent",
                    format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b{n}-01"),
                ),
                // Neither an invalid name or value nor the adapter's own headers get through.
                ("bad name", "x".to_owned()),
                ("x-bad-value", "line\nbreak".to_owned()),
                ("authorization", "Bearer stolen".to_owned()),
                ("user-agent", "someone-else".to_owned()),
            ]
        },
    ));
    let provider: Arc<dyn VerifyProvider> = Arc::new(twilio);
    provider.start(&start_request()?).await?;
    provider.fetch(SERVICE_SID, VERIFICATION_SID).await?;

    let seen = fake.seen();
    assert_eq!(seen.len(), 3);
    for (n, request) in seen.iter().enumerate() {
        assert_eq!(
            request.header("traceparent"),
            Some(format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b{n}-01").as_str()),
            "the hook's value of attempt {n}"
        );
        assert_eq!(request.header("x-bad-value"), None);
        assert_eq!(
            request.header("authorization"),
            Some(basic(ACCOUNT_SID, AUTH_TOKEN).as_str())
        );
        assert!(
            request
                .header("user-agent")
                .is_some_and(|ua| ua.starts_with("verify-gateway/"))
        );
    }
    Ok(())
}

#[tokio::test]
async fn create_is_retried_once_after_429_with_retry_after() -> anyhow::Result<()> {
    let fake = FakeTwilio::start([
        Reply::error(429, 20429, "Too many requests").header("retry-after", "1"),
        Reply::verification(201, "pending"),
    ])
    .await?;
    let began = Instant::now();
    let started = provider(&fake)?.start(&start_request()?).await?;
    assert_eq!(started.sid, VERIFICATION_SID);
    assert_eq!(fake.seen().len(), 2);
    assert!(
        began.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    Ok(())
}

#[tokio::test]
async fn a_long_retry_after_goes_back_to_the_caller() -> anyhow::Result<()> {
    let fake = FakeTwilio::start([
        Reply::error(429, 20429, "Too many requests").header("retry-after", "60")
    ])
    .await?;
    let err = provider(&fake)?
        .start(&start_request()?)
        .await
        .expect_err("rate limited");
    assert_eq!(err.kind, K::RateLimited);
    assert_eq!(err.code, Some(20429));
    assert_eq!(err.retry_after, Some(Duration::from_secs(60)));
    assert_eq!(fake.seen().len(), 1);
    Ok(())
}

#[tokio::test]
async fn create_is_not_retried_after_500() -> anyhow::Result<()> {
    let fake = FakeTwilio::start([
        Reply::text(500, "<html>oops</html>"),
        Reply::verification(201, "pending"),
    ])
    .await?;
    let err = provider(&fake)?
        .start(&start_request()?)
        .await
        .expect_err("500 is an error");
    assert_eq!((err.kind, err.code), (K::Unavailable, None));
    assert_eq!(
        fake.seen().len(),
        1,
        "a create must not be repeated after a 5xx"
    );
    Ok(())
}

#[tokio::test]
async fn check_is_not_retried_after_500() -> anyhow::Result<()> {
    let fake = FakeTwilio::start([
        Reply::error(503, 20500, "Service unavailable"),
        Reply::check("approved", true),
    ])
    .await?;
    let code = OtpCode::parse("123456")?;
    let err = provider(&fake)?
        .check(SERVICE_SID, VERIFICATION_SID, &code)
        .await
        .expect_err("503 is an error");
    assert_eq!((err.kind, err.code), (K::Unavailable, Some(20500)));
    assert_eq!(
        fake.seen().len(),
        1,
        "a check must not be repeated after a 5xx"
    );
    Ok(())
}

#[tokio::test]
async fn fetch_and_cancel_are_retried_after_500() -> anyhow::Result<()> {
    let fake = FakeTwilio::start([
        Reply::text(500, "oops"),
        Reply::verification(200, "pending"),
        Reply::text(502, "bad gateway"),
        Reply::text(503, "unavailable"),
        Reply::verification(200, "canceled"),
    ])
    .await?;
    let twilio = provider(&fake)?;
    let fetched = twilio.fetch(SERVICE_SID, VERIFICATION_SID).await?;
    assert_eq!(fetched.status, ProviderStatus::Pending);
    assert_eq!(fake.seen().len(), 2);
    let canceled = twilio.cancel(SERVICE_SID, VERIFICATION_SID).await?;
    assert_eq!(canceled.status, ProviderStatus::Canceled);
    assert_eq!(fake.seen().len(), 5);
    Ok(())
}

/// The attempts list: Twilio's filters in the query (the destination only there), the
/// newest attempt's verification, and repeated after a 5xx like any read.
#[tokio::test]
async fn find_sent_lists_attempts_by_service_destination_and_time() -> anyhow::Result<()> {
    let older = "VE00000000000000000000000000000001";
    let newer = "VE00000000000000000000000000000002";
    let fake = FakeTwilio::start([
        Reply::text(503, "unavailable"),
        Reply::attempts(&[
            (older, "2026-01-01T10:00:01Z"),
            (newer, "2026-01-01T10:00:03Z"),
        ]),
        Reply::attempts(&[]),
        Reply::error(429, 20429, "Too many requests").header("retry-after", "60"),
    ])
    .await?;
    let twilio = provider(&fake)?;
    let to = Destination::Phone(PhoneNumber::parse("+14155552671", None)?);
    let since = chrono::DateTime::parse_from_rfc3339("2026-01-01T09:59:55.750Z")?.to_utc();
    assert_eq!(
        twilio.find_sent(SERVICE_SID, &to, since).await?,
        Some(newer.to_owned())
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 2, "the 503 was repeated");
    let request = &seen[1];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("GET", "/v2/Attempts")
    );
    assert_eq!(
        request.query,
        format!(
            "VerifyServiceSid={SERVICE_SID}&ChannelData.To=%2B14155552671\
             &DateCreatedAfter=2026-01-01T09%3A59%3A55Z&PageSize=50"
        )
    );
    assert_eq!(request.body, "");
    assert_eq!(
        request.header("authorization"),
        Some(basic(ACCOUNT_SID, AUTH_TOKEN).as_str())
    );

    assert_eq!(twilio.find_sent(SERVICE_SID, &to, since).await?, None);
    let err = twilio
        .find_sent(SERVICE_SID, &to, since)
        .await
        .expect_err("a long Retry-After goes back");
    assert_eq!(err.kind, K::RateLimited);
    let refused = twilio
        .find_sent("VA%2e%2e", &to, since)
        .await
        .expect_err("a malformed service never reaches Twilio");
    assert_eq!(refused.kind, K::InvalidRequest);
    assert_eq!(fake.seen().len(), 4);
    Ok(())
}

#[tokio::test]
async fn retries_stop_at_max_retries() -> anyhow::Result<()> {
    let fake = FakeTwilio::start((0..5).map(|_| Reply::text(500, "down"))).await?;
    let err = provider(&fake)?
        .fetch(SERVICE_SID, VERIFICATION_SID)
        .await
        .expect_err("always 500");
    assert_eq!(err.kind, K::Unavailable);
    assert_eq!(
        fake.seen().len(),
        3,
        "one attempt and max_retries = 2 retries"
    );
    Ok(())
}

#[tokio::test]
async fn create_timeout_is_timeout_and_not_retried() -> anyhow::Result<()> {
    let fake = FakeTwilio::start([
        Reply::verification(201, "pending").after(Duration::from_secs(3)),
        Reply::verification(201, "pending"),
    ])
    .await?;
    let mut cfg = config(fake.url());
    cfg.timeout = Duration::from_millis(300);
    let twilio: Arc<dyn VerifyProvider> = Arc::new(TwilioVerify::new(cfg)?);
    let err = twilio
        .start(&start_request()?)
        .await
        .expect_err("times out");
    assert_eq!((err.kind, err.code), (K::Timeout, None));
    // Give a wrongly scheduled retry the time to arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.seen().len(),
        1,
        "a create must not be repeated after a timeout"
    );
    Ok(())
}

#[tokio::test]
async fn error_bodies_map_to_kinds_and_codes() -> anyhow::Result<()> {
    // (reply, is a check, expected kind, expected code). Each is answered once: none of them
    // may be retried, which the request count at the end proves.
    let table = [
        (
            Reply::error(400, 60200, "Invalid parameter `To`: +14155552671"),
            false,
            K::InvalidDestination,
            Some(60200),
        ),
        (
            Reply::error(400, 60200, "Invalid parameter: Locale"),
            false,
            K::InvalidRequest,
            Some(60200),
        ),
        (
            Reply::error(429, 60203, "Max send attempts reached"),
            false,
            K::MaxSends,
            Some(60203),
        ),
        (
            Reply::error(403, 60205, "SMS is not supported by landline phone number"),
            false,
            K::LandlineUnsupported,
            Some(60205),
        ),
        (
            Reply::error(400, 60223, "Delivery channel disabled: SMS"),
            false,
            K::ChannelDisabled,
            Some(60223),
        ),
        (
            Reply::error(403, 60410, "Verification delivery attempt blocked"),
            false,
            K::FraudBlocked,
            Some(60410),
        ),
        (
            Reply::error(403, 60605, "Blocked by geo permissions"),
            false,
            K::GeoBlocked,
            Some(60605),
        ),
        (
            Reply::error(400, 21610, "Attempt to send to unsubscribed recipient"),
            false,
            K::Unsubscribed,
            Some(21610),
        ),
        (
            Reply::error(401, 20003, "Authenticate"),
            false,
            K::Unauthenticated,
            Some(20003),
        ),
        (
            Reply::text(502, "<html>Bad Gateway</html>"),
            false,
            K::Unavailable,
            None,
        ),
        (
            Reply::error(404, 20404, "The requested resource was not found"),
            true,
            K::NotFound,
            Some(20404),
        ),
        (
            Reply::error(429, 60202, "Max check attempts reached"),
            true,
            K::MaxChecks,
            Some(60202),
        ),
        (
            Reply::error(400, 60221, "Either To or VerificationSid must be given"),
            true,
            K::InvalidRequest,
            Some(60221),
        ),
    ];
    let count = table.len();
    let fake = FakeTwilio::start(table.iter().map(|row| row.0.clone())).await?;
    let twilio = provider(&fake)?;
    let code = OtpCode::parse("123456")?;
    for (i, (_, is_check, kind, twilio_code)) in table.into_iter().enumerate() {
        let err = if is_check {
            twilio
                .check(SERVICE_SID, VERIFICATION_SID, &code)
                .await
                .map(|_| ())
        } else {
            twilio.start(&start_request()?).await.map(|_| ())
        }
        .expect_err("scripted error");
        assert_eq!((err.kind, err.code), (kind, twilio_code), "row {i}: {err}");
        assert!(
            !err.message.contains("4155552671"),
            "row {i}: destination leaked: {err}"
        );
    }
    assert_eq!(
        fake.seen().len(),
        count,
        "no error in the table may be retried"
    );
    Ok(())
}

#[tokio::test]
async fn malformed_sids_never_reach_twilio() -> anyhow::Result<()> {
    let fake = FakeTwilio::start([]).await?;
    let twilio = provider(&fake)?;
    let code = OtpCode::parse("123456")?;
    let bad_service = "VA../../../2010-04-01/Accounts";
    let errors = [
        twilio
            .fetch(bad_service, VERIFICATION_SID)
            .await
            .map(|_| ()),
        twilio.fetch(SERVICE_SID, "VE123").await.map(|_| ()),
        twilio
            .cancel(SERVICE_SID, "VA0123456789abcdef0123456789abcdef")
            .await
            .map(|_| ()),
        twilio.check(SERVICE_SID, "VE?x=1", &code).await.map(|_| ()),
        twilio
            .start(&ProviderStart {
                service: "VA%2e%2e".to_owned(),
                ..start_request()?
            })
            .await
            .map(|_| ()),
    ];
    for result in errors {
        let err = result.expect_err("refused");
        assert_eq!(err.kind, K::InvalidRequest, "{err}");
    }
    assert!(fake.seen().is_empty());
    Ok(())
}

#[tokio::test]
async fn connection_refused_is_unavailable() -> anyhow::Result<()> {
    // Take a free port and close it again, so nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let twilio = TwilioVerify::new(config(url::Url::parse(&format!(
        "http://127.0.0.1:{port}"
    ))?))?;
    let err = twilio
        .create_verification(&start_request()?)
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, twilio::TwilioError::Connect(_)), "{err:?}");
    let err = domain::ports::ProviderError::from(err);
    assert_eq!(err.kind, K::Unreachable);
    Ok(())
}
