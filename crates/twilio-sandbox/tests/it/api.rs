//! The Verify v2 API: auth, create / check / fetch / cancel, lifecycle limits, validation.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use twilio_sandbox::{DEV_ACCOUNT_SID, DEV_AUTH_TOKEN, DEV_SERVICE_SID};

use crate::support::{start, start_dev, test_config, wrong};

#[tokio::test]
async fn auth_is_required_and_checked() -> anyhow::Result<()> {
    let sandbox = start_dev().await?;
    let path = sandbox.service_path("/Verifications");
    let form = [("To", "+14155552671"), ("Channel", "sms")];

    let anonymous = sandbox
        .send(sandbox.client.post(sandbox.url(&path)).form(&form))
        .await?;
    anonymous.assert_error(401, 20003, "Authenticate");
    assert_eq!(
        anonymous
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Basic realm=\"Twilio API\"")
    );

    for (user, password) in [
        (DEV_ACCOUNT_SID, "wrong-token"),
        ("AC11111111111111111111111111111111", DEV_AUTH_TOKEN),
        (DEV_ACCOUNT_SID, ""),
    ] {
        let answer = sandbox
            .send(
                sandbox
                    .client
                    .post(sandbox.url(&path))
                    .basic_auth(user, Some(password))
                    .form(&form),
            )
            .await?;
        answer.assert_error(401, 20003, "Authenticate");
    }
    let bearer = sandbox
        .send(
            sandbox
                .client
                .get(sandbox.url("/v2/Services"))
                .bearer_auth("x"),
        )
        .await?;
    bearer.assert_error(401, 20003, "Authenticate");

    // Unknown /v2 paths need auth too; with it they are Twilio-shaped 404s.
    let unknown = sandbox
        .send(sandbox.client.get(sandbox.url("/v2/Nope")))
        .await?;
    unknown.assert_error(401, 20003, "Authenticate");
    let unknown = sandbox
        .send(sandbox.authed(Method::GET, "/v2/Nope"))
        .await?;
    unknown.assert_error(404, 20404, "The requested resource /v2/Nope was not found");
    // Outside /v2 no auth is needed and unknown paths are 404s all the same.
    let outside = sandbox
        .send(sandbox.client.get(sandbox.url("/favicon.ico")))
        .await?;
    outside.assert_error(
        404,
        20404,
        "The requested resource /favicon.ico was not found",
    );

    let wrong_method = sandbox.send(sandbox.authed(Method::DELETE, &path)).await?;
    wrong_method.assert_error(405, 20004, "Method not allowed");
    Ok(())
}

#[tokio::test]
async fn api_keys_authenticate() -> anyhow::Result<()> {
    let mut config = test_config();
    config.api_keys.push((
        "SK00000000000000000000000000000001".to_owned(),
        "key-secret".to_owned(),
    ));
    let sandbox = start(config).await?;
    let path = sandbox.service_path("");
    let with_key = sandbox
        .send(
            sandbox
                .client
                .get(sandbox.url(&path))
                .basic_auth("SK00000000000000000000000000000001", Some("key-secret")),
        )
        .await?;
    assert_eq!(with_key.status, StatusCode::OK, "{with_key:?}");
    let wrong_secret = sandbox
        .send(
            sandbox
                .client
                .get(sandbox.url(&path))
                .basic_auth("SK00000000000000000000000000000001", Some(DEV_AUTH_TOKEN)),
        )
        .await?;
    wrong_secret.assert_error(401, 20003, "Authenticate");
    Ok(())
}

#[tokio::test]
async fn create_check_fetch_and_approve() -> anyhow::Result<()> {
    let sandbox = start_dev().await?;
    let to = "+14155552671";
    let created = sandbox.create(to, "sms").await?;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let sid = created.str("sid").to_owned();
    assert!(sid.starts_with("VE") && sid.len() == 34, "{sid}");
    let keys: Vec<&str> = created
        .body
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mut expected_keys = vec![
        "sid",
        "service_sid",
        "account_sid",
        "to",
        "channel",
        "status",
        "valid",
        "date_created",
        "date_updated",
        "lookup",
        "amount",
        "payee",
        "send_code_attempts",
        "sna",
        "url",
    ];
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    expected_keys.sort_unstable();
    assert_eq!(sorted, expected_keys);
    assert_eq!(created.str("service_sid"), DEV_SERVICE_SID);
    assert_eq!(created.str("account_sid"), DEV_ACCOUNT_SID);
    assert_eq!(created.str("to"), to);
    assert_eq!(created.str("channel"), "sms");
    assert_eq!(created.str("status"), "pending");
    assert_eq!(created.body["valid"], false);
    assert_eq!(created.body["lookup"], serde_json::json!({}));
    assert!(created.body["amount"].is_null() && created.body["payee"].is_null());
    assert!(created.body["sna"].is_null());
    let attempts = created.body["send_code_attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["channel"], "SMS");
    assert!(
        attempts[0]["attempt_sid"]
            .as_str()
            .is_some_and(|s| s.starts_with("VL") && s.len() == 34)
    );
    assert_eq!(
        created.str("url"),
        format!(
            "{}/v2/Services/{DEV_SERVICE_SID}/Verifications/{sid}",
            sandbox.base
        )
    );
    let created_at = created.str("date_created");
    assert!(
        chrono::NaiveDateTime::parse_from_str(created_at, "%Y-%m-%dT%H:%M:%SZ").is_ok(),
        "{created_at}"
    );

    let code = sandbox.latest_code(to).await?;
    assert_eq!(code.len(), 6);
    assert!(code.bytes().all(|b| b.is_ascii_digit()));

    let fetched = sandbox.fetch(&sid).await?;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.body, created.body);

    let wrong_answer = sandbox.check_to(to, &wrong(&code)).await?;
    assert_eq!(wrong_answer.status, StatusCode::OK);
    assert_eq!(wrong_answer.str("status"), "pending");
    assert_eq!(wrong_answer.body["valid"], false);

    let approved = sandbox.check_sid(&sid, &code).await?;
    assert_eq!(approved.status, StatusCode::OK, "{approved:?}");
    assert_eq!(approved.str("sid"), sid);
    assert_eq!(approved.str("status"), "approved");
    assert_eq!(approved.body["valid"], true);
    assert_eq!(
        approved.body["sna_attempts_error_codes"],
        serde_json::json!([])
    );
    assert!(approved.body.get("url").is_none() && approved.body.get("lookup").is_none());

    // Approved verifications are soft-deleted at once.
    let fetch_path = sandbox.service_path(&format!("/Verifications/{sid}"));
    sandbox.fetch(&sid).await?.assert_error(
        404,
        20404,
        &format!("The requested resource {fetch_path} was not found"),
    );
    let check_path = sandbox.service_path("/VerificationCheck");
    sandbox.check_sid(&sid, &code).await?.assert_error(
        404,
        20404,
        &format!("The requested resource {check_path} was not found"),
    );
    sandbox.check_to(to, &code).await?.assert_error(
        404,
        20404,
        &format!("The requested resource {check_path} was not found"),
    );
    Ok(())
}

#[tokio::test]
async fn cancel_then_fetch_but_not_check() -> anyhow::Result<()> {
    let sandbox = start_dev().await?;
    let to = "+14155552672";
    let sid = sandbox.create(to, "call").await?.str("sid").to_owned();
    let code = sandbox.latest_code(to).await?;
    let canceled = sandbox.update(&sid, "canceled").await?;
    assert_eq!(canceled.status, StatusCode::OK);
    assert_eq!(canceled.str("status"), "canceled");
    assert_eq!(canceled.body["valid"], false);
    assert_eq!(sandbox.fetch(&sid).await?.str("status"), "canceled");
    let check_path = sandbox.service_path("/VerificationCheck");
    sandbox.check_sid(&sid, &code).await?.assert_error(
        404,
        20404,
        &format!("The requested resource {check_path} was not found"),
    );
    // A new verification for the same destination is a new one.
    let next = sandbox.create(to, "sms").await?;
    assert_ne!(next.str("sid"), sid);
    Ok(())
}

#[tokio::test]
async fn approve_by_update_soft_deletes() -> anyhow::Result<()> {
    let sandbox = start_dev().await?;
    let sid = sandbox
        .create("+14155552673", "sms")
        .await?
        .str("sid")
        .to_owned();
    let approved = sandbox.update(&sid, "approved").await?;
    assert_eq!(approved.status, StatusCode::OK);
    assert_eq!(approved.str("status"), "approved");
    assert_eq!(approved.body["valid"], true);
    assert_eq!(sandbox.fetch(&sid).await?.status, StatusCode::NOT_FOUND);
    sandbox
        .update(&sid, "pending")
        .await?
        .assert_error(400, 60200, "Invalid parameter: Status");
    Ok(())
}

#[tokio::test]
async fn five_sends_then_60203() -> anyhow::Result<()> {
    let sandbox = start_dev().await?;
    let to = "+14155552674";
    let first = sandbox.create(to, "sms").await?;
    let sid = first.str("sid").to_owned();
    let code = sandbox.latest_code(to).await?;
    for n in 2..=5 {
        let channel = if n % 2 == 0 { "call" } else { "whatsapp" };
        let again = sandbox.create(to, channel).await?;
        assert_eq!(again.status, StatusCode::CREATED, "{again:?}");
        assert_eq!(again.str("sid"), sid, "resend {n}");
        assert_eq!(again.str("channel"), channel);
        let attempts = again.body["send_code_attempts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(attempts.len(), n);
        assert_eq!(
            sandbox.latest_code(to).await?,
            code,
            "resend {n} sends the same code"
        );
    }
    let sixth = sandbox.create(to, "sms").await?;
    sixth.assert_error(429, 60203, "Max send attempts reached");
    let retry_after: u64 = sixth
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    assert!((1..=600).contains(&retry_after), "{retry_after}");
    // Still checkable.
    assert_eq!(sandbox.check_to(to, &code).await?.str("status"), "approved");
    Ok(())
}

#[tokio::test]
async fn five_wrong_checks_then_60202_then_gone() -> anyhow::Result<()> {
    let sandbox = start_dev().await?;
    let to = "+14155552675";
    let sid = sandbox.create(to, "sms").await?.str("sid").to_owned();
    let code = sandbox.latest_code(to).await?;
    for n in 1..=5 {
        let answer = sandbox.check_to(to, &wrong(&code)).await?;
        assert_eq!(answer.status, StatusCode::OK, "check {n}");
        assert_eq!(answer.str("status"), "pending", "check {n}");
        assert_eq!(answer.body["valid"], false);
    }
    let sixth = sandbox.check_to(to, &code).await?;
    sixth.assert_error(429, 60202, "Max check attempts reached");
    assert!(sixth.headers.get("retry-after").is_some());
    assert_eq!(sandbox.fetch(&sid).await?.status, StatusCode::NOT_FOUND);
    assert_eq!(
        sandbox.check_sid(&sid, &code).await?.status,
        StatusCode::NOT_FOUND
    );
    Ok(())
}

#[tokio::test]
async fn verifications_expire_after_the_ttl() -> anyhow::Result<()> {
    let mut config = test_config();
    config.verification_ttl = Duration::from_millis(700);
    let sandbox = start(config).await?;
    let to = "+14155552676";
    let sid = sandbox.create(to, "sms").await?.str("sid").to_owned();
    let code = sandbox.latest_code(to).await?;
    assert_eq!(sandbox.fetch(&sid).await?.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(sandbox.fetch(&sid).await?.status, StatusCode::NOT_FOUND);
    assert_eq!(
        sandbox.check_to(to, &code).await?.status,
        StatusCode::NOT_FOUND
    );
    assert_ne!(sandbox.create(to, "sms").await?.str("sid"), sid);
    Ok(())
}

/// A form, as the helper libraries send it.
type Form<'a> = &'a [(&'a str, &'a str)];

#[tokio::test]
async fn bad_parameters_answer_twilio_errors() -> anyhow::Result<()> {
    let sandbox = start_dev().await?;
    let create_path = sandbox.service_path("/Verifications");
    let check_path = sandbox.service_path("/VerificationCheck");
    let check_not_found = format!("The requested resource {check_path} was not found");

    let to = "Invalid parameter: To";
    let channel = "Invalid parameter: Channel";
    let creates: [(Form<'_>, &str); 11] = [
        (&[("Channel", "sms")], to),
        (&[("To", ""), ("Channel", "sms")], to),
        (&[("To", "4155552671"), ("Channel", "sms")], to),
        (&[("To", "+1 415 555 2671"), ("Channel", "sms")], to),
        (&[("To", "+19999999999"), ("Channel", "sms")], to),
        (&[("To", "not-an-email@"), ("Channel", "email")], to),
        (&[("To", "+14155552671"), ("Channel", "email")], to),
        (&[("To", "a@example.com"), ("Channel", "sms")], to),
        (&[("To", "+14155552671")], channel),
        (&[("To", "+14155552671"), ("Channel", "fax")], channel),
        (
            &[
                ("To", "+14155552671"),
                ("Channel", "sms"),
                ("CustomCode", "12"),
            ],
            "Invalid parameter: CustomCode",
        ),
    ];
    for (form, message) in creates {
        let answer = sandbox
            .send(sandbox.authed(Method::POST, &create_path).form(form))
            .await?;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{form:?}: {answer:?}"
        );
        answer.assert_error(400, 60200, message);
    }

    let checks: [(Form<'_>, u16, u64, &str); 5] = [
        (
            &[("Code", "123456")],
            400,
            60221,
            "No target verification specified",
        ),
        (
            &[("To", "+14155552671")],
            400,
            60200,
            "Invalid parameter: Code",
        ),
        (
            &[("To", "+14155552671"), ("Code", "12")],
            400,
            60200,
            "Invalid parameter: Code",
        ),
        (
            &[("To", "+14155559999"), ("Code", "123456")],
            404,
            20404,
            &check_not_found,
        ),
        (
            &[
                ("VerificationSid", "VE00000000000000000000000000000000"),
                ("Code", "123456"),
            ],
            404,
            20404,
            &check_not_found,
        ),
    ];
    for (form, status, code, message) in checks {
        let answer = sandbox
            .send(sandbox.authed(Method::POST, &check_path).form(form))
            .await?;
        assert_eq!(answer.status.as_u16(), status, "{form:?}: {answer:?}");
        answer.assert_error(status, code, message);
    }

    let unknown_service = "/v2/Services/VAffffffffffffffffffffffffffffffff/Verifications";
    sandbox
        .send(
            sandbox
                .authed(Method::POST, unknown_service)
                .form(&[("To", "+14155552671"), ("Channel", "sms")]),
        )
        .await?
        .assert_error(
            404,
            20404,
            &format!("The requested resource {unknown_service} was not found"),
        );
    Ok(())
}

#[tokio::test]
async fn malformed_and_huge_bodies_do_not_break_anything() -> anyhow::Result<()> {
    let sandbox = start_dev().await?;
    let path = sandbox.service_path("/Verifications");
    let garbage = sandbox
        .send(
            sandbox
                .authed(Method::POST, &path)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(vec![0xff, 0xfe, b'%', b'Z', b'&', b'=', b'=']),
        )
        .await?;
    garbage.assert_error(400, 60200, "Invalid parameter: To");
    let json_body = sandbox
        .send(
            sandbox
                .authed(Method::POST, &path)
                .json(&serde_json::json!({"To": "+14155552671", "Channel": "sms"})),
        )
        .await?;
    json_body.assert_error(400, 60200, "Invalid parameter: To");

    let huge = "To=%2B14155552671&Channel=sms&Pad=".to_owned() + &"x".repeat(1024 * 1024);
    let answer = sandbox
        .send(
            sandbox
                .authed(Method::POST, &path)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(huge),
        )
        .await?;
    answer.assert_error(413, 20413, "Request Entity Too Large");

    // The sandbox still answers.
    assert_eq!(
        sandbox.create("+14155552677", "sms").await?.status,
        StatusCode::CREATED
    );
    Ok(())
}

#[tokio::test]
async fn email_and_custom_code() -> anyhow::Result<()> {
    let sandbox = start_dev().await?;
    let to = "someone@example.com";
    let created = sandbox.create(to, "email").await?;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.body["send_code_attempts"][0]["channel"], "EMAIL");
    let code = sandbox.latest_code(to).await?;
    assert_eq!(sandbox.check_to(to, &code).await?.str("status"), "approved");

    let to = "+14155552678";
    let created = sandbox
        .send(
            sandbox
                .authed(Method::POST, &sandbox.service_path("/Verifications"))
                .form(&[
                    ("To", to),
                    ("Channel", "sms"),
                    ("CustomCode", "4242"),
                    ("Amount", "€39.99"),
                    ("Payee", "Acme Inc."),
                ]),
        )
        .await?;
    assert_eq!(created.str("amount"), "€39.99");
    assert_eq!(created.str("payee"), "Acme Inc.");
    assert_eq!(sandbox.latest_code(to).await?, "4242");
    let approved = sandbox.check_to(to, "4242").await?;
    assert_eq!(approved.str("status"), "approved");
    assert_eq!(approved.str("amount"), "€39.99");
    Ok(())
}

#[tokio::test]
async fn services_can_be_fetched_and_listed() -> anyhow::Result<()> {
    let sandbox = start_dev().await?;
    let service = sandbox
        .send(sandbox.authed(Method::GET, &sandbox.service_path("")))
        .await?;
    assert_eq!(service.status, StatusCode::OK);
    assert_eq!(service.str("sid"), DEV_SERVICE_SID);
    assert_eq!(service.str("friendly_name"), "verify-gateway dev");
    assert_eq!(service.body["code_length"], 6);
    assert_eq!(
        service.body["links"]["verification_checks"],
        format!(
            "{}/v2/Services/{DEV_SERVICE_SID}/VerificationCheck",
            sandbox.base
        )
    );
    let list = sandbox
        .send(sandbox.authed(Method::GET, "/v2/Services"))
        .await?;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["meta"]["key"], "services");
    assert_eq!(list.body["services"][0]["sid"], DEV_SERVICE_SID);
    let unknown = "/v2/Services/VAffffffffffffffffffffffffffffffff";
    sandbox
        .send(sandbox.authed(Method::GET, unknown))
        .await?
        .assert_error(
            404,
            20404,
            &format!("The requested resource {unknown} was not found"),
        );
    Ok(())
}
