//! Runs the sandbox alone with the dev defaults: `cargo run -p twilio-sandbox --example serve
//! [-- 127.0.0.1:4010]`. Stops on Ctrl-C.

use twilio_sandbox::{DEV_ACCOUNT_SID, DEV_SERVICE_SID, Sandbox, SandboxConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4010".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "twilio-sandbox on http://{} (account {DEV_ACCOUNT_SID}, service {DEV_SERVICE_SID})",
        listener.local_addr()?
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    twilio_sandbox::serve(listener, Sandbox::new(SandboxConfig::dev()), shutdown).await?;
    Ok(())
}
