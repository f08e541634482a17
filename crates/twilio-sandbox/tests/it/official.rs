//! Twilio's official helper libraries, unchanged, pointed at the sandbox. The interpreters
//! and packages come from `cargo xtask tools` (into `<workspace>/.tools`); when they are
//! missing these tests fail and say so, they never skip.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use twilio_sandbox::DEV_AUTH_TOKEN;

use crate::receiver::Receiver;
use crate::support::{start, start_dev, test_config};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/official")
        .join(name)
}

async fn run(mut command: tokio::process::Command, what: &str) -> anyhow::Result<()> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().with_context(|| format!("start {what}"))?;
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .with_context(|| format!("{what} did not finish within 120 s"))??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    // Shown with `--nocapture`, so a run proves the library really went through its steps.
    eprintln!("{what}: {}", stdout.trim());
    Ok(())
}

/// The venv's Python with `twilio` installed, or a failure saying how to get it.
fn python_with_twilio() -> PathBuf {
    let python = workspace_root().join(".tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask tools` to install twilio-python 9.13.0 \
         (or: python3 -m venv .tools/venv && .tools/venv/bin/pip install twilio==9.13.0)",
        python.display()
    );
    let has_twilio = std::process::Command::new(&python)
        .args(["-c", "import twilio"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        has_twilio,
        "the `twilio` package is not installed in {}: run `cargo xtask tools`",
        python.display()
    );
    python
}

/// Node and the `.tools/node_modules` holding `twilio`, or a failure saying how to get them.
fn node_with_twilio() -> (&'static Path, PathBuf) {
    let node = Path::new("/usr/bin/node");
    assert!(
        node.exists(),
        "/usr/bin/node is missing: install Node.js 20+"
    );
    let modules = workspace_root().join(".tools/node_modules");
    assert!(
        modules.join("twilio/package.json").exists(),
        "{} has no `twilio` package: run `cargo xtask tools` \
         (or: npm install --prefix .tools twilio@6.2.0)",
        modules.display()
    );
    (node, modules)
}

#[tokio::test]
async fn twilio_python_works_against_the_sandbox() -> anyhow::Result<()> {
    let python = python_with_twilio();
    let sandbox = start_dev().await?;
    let mut command = tokio::process::Command::new(&python);
    command
        .arg(script("twilio_python_check.py"))
        .arg(&sandbox.base);
    run(command, "twilio_python_check.py").await
}

#[tokio::test]
async fn twilio_node_works_against_the_sandbox() -> anyhow::Result<()> {
    let (node, modules) = node_with_twilio();
    let sandbox = start_dev().await?;
    let mut command = tokio::process::Command::new(node);
    command
        .arg(script("twilio_node_check.js"))
        .arg(&sandbox.base)
        .env("NODE_PATH", &modules);
    run(command, "twilio_node_check.js").await
}

/// The sandbox's Verify Event posts, as a receiver got them, validate with the official
/// libraries' own JSON-webhook validators (`bodySHA256` and `X-Twilio-Signature`).
#[tokio::test]
async fn event_signatures_validate_with_twilio_python_and_node() -> anyhow::Result<()> {
    let python = python_with_twilio();
    let (node, modules) = node_with_twilio();
    let receiver = Receiver::start(&[]).await?;
    let mut config = test_config();
    config.events_url = Some(receiver.url("/hooks/verify?tenant=acme&x=a%20b"));
    config.delivery_delay = Duration::from_millis(50);
    let sandbox = start(config).await?;
    sandbox.create("+14155552681", "sms").await?;
    sandbox.create("+14155550108", "whatsapp").await?;
    let requests = receiver.wait_for(4, Duration::from_secs(10)).await?;
    let captured: Vec<serde_json::Value> = requests
        .iter()
        .map(|r| {
            serde_json::json!({
                "url": r.url,
                "body": String::from_utf8_lossy(&r.body),
                "signature": r.header("x-twilio-signature").unwrap_or_default(),
            })
        })
        .collect();
    let captured = serde_json::to_string(&captured)?;

    let mut command = tokio::process::Command::new(&python);
    command
        .arg(script("validate_events_python.py"))
        .arg(DEV_AUTH_TOKEN)
        .arg(&captured);
    run(command, "validate_events_python.py").await?;
    let mut command = tokio::process::Command::new(node);
    command
        .arg(script("validate_events_node.js"))
        .arg(DEV_AUTH_TOKEN)
        .arg(&captured)
        .env("NODE_PATH", &modules);
    run(command, "validate_events_node.js").await
}
