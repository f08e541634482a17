//! The contract test: every request the adapter sends is validated by Prism against Twilio's
//! own OpenAPI spec (`tests/contract/twilio_verify_v2.json`). With `--errors`, Prism answers
//! 422 to a request that breaks the spec, which the adapter surfaces as an error.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use domain::ports::{ProviderStart, ProviderStatus, VerifyProvider};
use domain::{Channel, Destination, Email, Locale, OtpCode, PhoneNumber};
use tokio::process::{Child, Command};
use twilio::TwilioVerify;
use url::Url;

use crate::{SERVICE_SID, VERIFICATION_SID, config};

/// How long Prism may take to load the spec (it is half a megabyte of JSON).
const STARTUP: Duration = Duration::from_secs(60);

/// A running `prism mock`, killed when dropped.
struct Prism {
    child: Child,
    url: Url,
    log: PathBuf,
}

impl Prism {
    async fn start() -> anyhow::Result<Self> {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest
            .ancestors()
            .nth(2)
            .context("the crate lives in <workspace>/crates/twilio")?;
        let prism = root.join(".tools/node_modules/.bin/prism");
        if !prism.exists() {
            bail!(
                "Prism is not installed at {}: run `cargo xtask tools` \
                 (it runs `npm install --prefix .tools @stoplight/prism-cli@5.14.2`)",
                prism.display()
            );
        }
        let spec = manifest.join("tests/contract/twilio_verify_v2.json");
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::env::temp_dir().join(format!("twilio-prism-{port}.log"));
        let out = File::create(&log)?;
        let child = Command::new(&prism)
            .args([
                "mock",
                "--errors",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .arg(&spec)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", prism.display()))?;
        let mut prism = Prism {
            child,
            url: Url::parse(&format!("http://127.0.0.1:{port}"))?,
            log,
        };
        prism
            .wait_until_listening(SocketAddr::from(([127, 0, 0, 1], port)))
            .await?;
        Ok(prism)
    }

    async fn wait_until_listening(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let began = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "Prism exited with {status} before listening:\n{}",
                    self.log_text()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if began.elapsed() > STARTUP {
                bail!(
                    "Prism did not listen on {addr} within {STARTUP:?}:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prism {
    fn drop(&mut self) {
        // `kill_on_drop` also does this; being explicit keeps the intent next to the type.
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

#[tokio::test]
async fn requests_match_twilios_openapi_spec() -> anyhow::Result<()> {
    let prism = Prism::start().await?;
    let twilio: Box<dyn VerifyProvider> = Box::new(TwilioVerify::new(config(prism.url.clone()))?);
    let diagnose = |what: &str, e: &dyn std::fmt::Display| {
        format!(
            "{what} was refused by Prism: {e}\nPrism log:\n{}",
            prism.log_text()
        )
    };

    let sms = ProviderStart {
        service: SERVICE_SID.to_owned(),
        to: Destination::Phone(PhoneNumber::parse("+14155552671", None)?),
        channel: Channel::Sms,
        locale: Some(Locale::parse("en")?),
    };
    let created = twilio
        .start(&sms)
        .await
        .map_err(|e| anyhow::anyhow!(diagnose("create (sms)", &e)))?;
    // Prism answers with the spec's example.
    assert_eq!(created.sid, "VEaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    assert_eq!(created.status, ProviderStatus::Pending);

    let email = ProviderStart {
        service: SERVICE_SID.to_owned(),
        to: Destination::Email(Email::parse("someone@example.com")?),
        channel: Channel::Email,
        locale: None,
    };
    twilio
        .start(&email)
        .await
        .map_err(|e| anyhow::anyhow!(diagnose("create (email)", &e)))?;

    let code = OtpCode::parse("123456")?;
    let checked = twilio
        .check(SERVICE_SID, VERIFICATION_SID, &code)
        .await
        .map_err(|e| anyhow::anyhow!(diagnose("check", &e)))?;
    assert_eq!(
        (checked.status, checked.valid),
        (ProviderStatus::Approved, true)
    );
    // By destination, for a verification whose SID was never learnt: the answer names it.
    let by_to = twilio
        .check_destination(
            SERVICE_SID,
            &Destination::Phone(PhoneNumber::parse("+14155552671", None)?),
            &code,
        )
        .await
        .map_err(|e| anyhow::anyhow!(diagnose("check by To", &e)))?;
    assert_eq!(by_to.status, ProviderStatus::Approved);
    assert!(
        by_to
            .sid
            .as_deref()
            .is_some_and(|sid| sid.starts_with("VE"))
    );

    let fetched = twilio
        .fetch(SERVICE_SID, VERIFICATION_SID)
        .await
        .map_err(|e| anyhow::anyhow!(diagnose("fetch", &e)))?;
    assert_eq!(fetched.status, ProviderStatus::Pending);

    let canceled = twilio
        .cancel(SERVICE_SID, VERIFICATION_SID)
        .await
        .map_err(|e| anyhow::anyhow!(diagnose("cancel", &e)))?;
    assert_eq!(canceled.status, ProviderStatus::Canceled);

    // The attempts list, by service, destination and time: Prism answers the spec's first
    // example, the empty list.
    let since = chrono::DateTime::parse_from_rfc3339("2026-01-01T10:00:00Z")?.to_utc();
    let found = twilio
        .find_sent(
            SERVICE_SID,
            &Destination::Phone(PhoneNumber::parse("+14155552671", None)?),
            since,
        )
        .await
        .map_err(|e| anyhow::anyhow!(diagnose("attempts list", &e)))?;
    assert_eq!(found, None);

    // The passes above mean something only if Prism refuses what breaks the spec: a list
    // with a malformed filter, and a create without `To`, must get 422.
    let response = reqwest::Client::new()
        .get(format!("{}v2/Attempts?VerifyServiceSid=VA123", prism.url))
        .basic_auth(crate::ACCOUNT_SID, Some(crate::AUTH_TOKEN))
        .send()
        .await?;
    assert_eq!(
        response.status().as_u16(),
        422,
        "Prism does not validate query parameters"
    );
    let response = reqwest::Client::new()
        .post(format!(
            "{}v2/Services/{SERVICE_SID}/Verifications",
            prism.url
        ))
        .basic_auth(crate::ACCOUNT_SID, Some(crate::AUTH_TOKEN))
        .form(&[("Channel", "sms")])
        .send()
        .await?;
    assert_eq!(
        response.status().as_u16(),
        422,
        "Prism does not validate requests"
    );
    Ok(())
}
