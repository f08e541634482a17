//! `twilio-sandbox`: the sandbox as its own process, for the distributed stack and for
//! developers of internal services.
//!
//! `twilio-sandbox [ADDR]` (or `SANDBOX_ADDR`; default `127.0.0.1:8090`) serves the dev
//! account `AC00000000000000000000000000000000` with auth token `sandbox-auth-token` and the
//! Verify service `VA00000000000000000000000000000000`. `SANDBOX_AUTH_TOKEN` replaces the
//! token. `SANDBOX_EVENTS_URL` (an `http` or `https` URL) turns on Verify Events: every
//! SMS, WhatsApp or voice send is reported there as Twilio's Event Streams webhook sink
//! would (`message.sent`, then `message.delivered` or `message.undelivered`), signed with
//! `X-Twilio-Signature` under the auth token; unset or empty, nothing is posted. Stops on
//! Ctrl-C or SIGTERM after in-flight requests finish.

use anyhow::Context;
use twilio_sandbox::{DEV_ACCOUNT_SID, DEV_SERVICE_SID, Sandbox, SandboxConfig};
use url::Url;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arg = std::env::args().nth(1);
    if matches!(arg.as_deref(), Some("-h" | "--help")) {
        eprintln!(
            "usage: twilio-sandbox [ADDR]\n\n\
             A local stand-in for Twilio Verify. ADDR (or SANDBOX_ADDR) defaults to 127.0.0.1:8090.\n\
             SANDBOX_AUTH_TOKEN replaces the dev auth token `sandbox-auth-token`.\n\
             SANDBOX_EVENTS_URL=http(s)://… turns on Verify Events: each SMS, WhatsApp or call\n\
             send is reported there (message.sent, then message.delivered or .undelivered),\n\
             signed with X-Twilio-Signature under the auth token. Unset: no events.\n\
             Inbox: GET /sandbox/messages; event posts: GET /sandbox/events;\n\
             magic destinations: GET /sandbox/scenarios.\n\
             A request's headers must arrive within 10 s (an idle connection is closed then\n\
             too) and its body within 30 s more (408); at most 1,024 connections at once."
        );
        return Ok(());
    }
    let addr = arg
        .or_else(|| std::env::var("SANDBOX_ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:8090".to_owned());
    let mut config = SandboxConfig::dev();
    if let Ok(token) = std::env::var("SANDBOX_AUTH_TOKEN")
        && !token.is_empty()
    {
        config.auth_token = token;
    }
    if let Ok(raw) = std::env::var("SANDBOX_EVENTS_URL")
        && !raw.is_empty()
    {
        config.events_url = Some(events_url(&raw)?);
    }
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()))
        .init();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    eprintln!(
        "twilio-sandbox on http://{} (account {DEV_ACCOUNT_SID}, service {DEV_SERVICE_SID}); \
         inbox: /sandbox/messages?to=…, scenarios: /sandbox/scenarios, events: {}",
        listener.local_addr()?,
        if config.events_url.is_some() {
            "on (log: /sandbox/events)"
        } else {
            "off (set SANDBOX_EVENTS_URL)"
        }
    );
    twilio_sandbox::serve(listener, Sandbox::new(config), shutdown()).await?;
    Ok(())
}

/// `SANDBOX_EVENTS_URL`, which must be an absolute `http` or `https` URL.
fn events_url(raw: &str) -> anyhow::Result<Url> {
    let url = Url::parse(raw).context("SANDBOX_EVENTS_URL is not a URL")?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "https") && url.host().is_some(),
        "SANDBOX_EVENTS_URL must be an http:// or https:// URL with a host"
    );
    Ok(url)
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
