//! `twilio-sandbox`: the sandbox as its own process, for the distributed stack and for
//! developers of internal services.
//!
//! `twilio-sandbox [ADDR]` (or `SANDBOX_ADDR`; default `127.0.0.1:8090`) serves the dev
//! account `AC00000000000000000000000000000000` with auth token `sandbox-auth-token` and the
//! Verify service `VA00000000000000000000000000000000`. `SANDBOX_AUTH_TOKEN` replaces the
//! token. Stops on Ctrl-C or SIGTERM after in-flight requests finish.

use anyhow::Context;
use twilio_sandbox::{DEV_ACCOUNT_SID, DEV_SERVICE_SID, Sandbox, SandboxConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arg = std::env::args().nth(1);
    if matches!(arg.as_deref(), Some("-h" | "--help")) {
        eprintln!(
            "usage: twilio-sandbox [ADDR]\n\n\
             A local stand-in for Twilio Verify. ADDR (or SANDBOX_ADDR) defaults to 127.0.0.1:8090.\n\
             SANDBOX_AUTH_TOKEN replaces the dev auth token `sandbox-auth-token`."
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
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()))
        .init();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    eprintln!(
        "twilio-sandbox on http://{} (account {DEV_ACCOUNT_SID}, service {DEV_SERVICE_SID}); \
         inbox: /sandbox/messages?to=…, scenarios: /sandbox/scenarios",
        listener.local_addr()?
    );
    twilio_sandbox::serve(listener, Sandbox::new(config), shutdown()).await?;
    Ok(())
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
