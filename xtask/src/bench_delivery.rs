//! The delivery benchmarks of `cargo xtask bench delivery`, against the running embedded
//! gateway:
//!
//! - **ingest**: Verify Events batches of one message-status event each, signed as Twilio
//!   signs them (HMAC-SHA1 over the URL with `bodySHA256`, the sandbox's auth token), posted
//!   to the webhook receiver by `concurrency` clients. A 200 means the report and its outbox
//!   row are stored. The events name verifications the gateway does not know, so the
//!   consumer reads and drops them: the figure is the receiving side's.
//! - **fallback**: verifications to the sandbox's `undelivered_30003` number with
//!   `allow_fallback`, one after another; for each, the time from the sandbox's
//!   `undelivered` report to the `sent` event it emits when the gateway's call request
//!   reaches it, both event times on the sandbox's clock in milliseconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use proto::verify::v1 as pb;
use sha2::Digest;
use tokio::sync::Mutex;

use crate::bench::pct;

/// The embedded sandbox's auth token, which the embedded receiver checks signatures with.
const SANDBOX_AUTH_TOKEN: &str = "sandbox-auth-token";

pub(crate) struct Ports {
    pub sandbox: u16,
    pub webhooks: u16,
}

/// `X-Twilio-Signature` of a JSON webhook to `url` (which carries `bodySHA256`).
fn sign(url: &str) -> anyhow::Result<String> {
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(SANDBOX_AUTH_TOKEN.as_bytes()).context("HMAC key")?;
    mac.update(url.as_bytes());
    Ok(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

fn event_body(i: usize) -> Vec<u8> {
    serde_json::json!([{
        "specversion": "1.0",
        "type": "com.twilio.accountsecurity.verify.message.delivered",
        "source": "/v1/Accounts/AC00000000000000000000000000000000/Services/VA00000000000000000000000000000000/Verifications/VEbench",
        "id": format!("EZbench{}{i:010}", std::process::id()),
        "datacontenttype": "application/json",
        "time": Utc::now().to_rfc3339(),
        "data": {
            "verification_sid": format!("VEbench{i:027}"),
            "attempt_sid": format!("VLbench{i:027}"),
            "channel": "SMS",
            "message_status": "DELIVERED",
            "error_code": "",
            "to": "+14155550107",
        },
    }])
    .to_string()
    .into_bytes()
}

pub(crate) async fn ingest(ports: &Ports, events: usize, concurrency: usize) -> anyhow::Result<()> {
    let base = format!(
        "http://127.0.0.1:{}/webhooks/twilio/verify-events",
        ports.webhooks
    );
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(events)));
    let failures = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (http, base, next, latencies, failures) = (
            http.clone(),
            base.clone(),
            Arc::clone(&next),
            Arc::clone(&latencies),
            Arc::clone(&failures),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= events {
                    return anyhow::Ok(());
                }
                let body = event_body(i);
                let url = format!(
                    "{base}?bodySHA256={}",
                    hex::encode(sha2::Sha256::digest(&body))
                );
                let signature = sign(&url)?;
                let t0 = Instant::now();
                let response = http
                    .post(&url)
                    .header("X-Twilio-Signature", signature)
                    .header("Content-Type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let took = t0.elapsed();
                match response {
                    Ok(r) if r.status().is_success() => latencies.lock().await.push(took),
                    Ok(r) => {
                        if failures.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("ingest answered {}", r.status());
                        }
                    }
                    Err(e) => {
                        if failures.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("ingest request failed: {e}");
                        }
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let elapsed = began.elapsed();
    let mut latencies = latencies.lock().await;
    latencies.sort();
    println!(
        "webhook ingest bench: {events} signed Verify Events, concurrency {concurrency}, embedded receiver (SQLite), release build"
    );
    println!("  elapsed            {:.2} s", elapsed.as_secs_f64());
    println!(
        "  accepted+stored/s  {:.0}",
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    println!("  failures           {}", failures.load(Ordering::Relaxed));
    println!(
        "  POST latency       p50 {:>8.2} ms   p99 {:>8.2} ms",
        pct(&latencies, 0.50),
        pct(&latencies, 0.99)
    );
    Ok(())
}

async fn get_json(http: &reqwest::Client, url: url::Url) -> anyhow::Result<serde_json::Value> {
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

fn time(value: &serde_json::Value) -> anyhow::Result<DateTime<Utc>> {
    let raw = value.as_str().context("a timestamp")?;
    Ok(DateTime::parse_from_rfc3339(raw)
        .with_context(|| format!("timestamp `{raw}`"))?
        .with_timezone(&Utc))
}

pub(crate) async fn fallback(
    ports: &Ports,
    mut client: crate::bench::Client,
    runs: usize,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let sandbox = format!("http://127.0.0.1:{}", ports.sandbox);
    let scenarios = get_json(
        &http,
        url::Url::parse(&format!("{sandbox}/sandbox/scenarios"))?,
    )
    .await?;
    let to = scenarios["undelivered_30003"]
        .as_str()
        .context("the sandbox has no undelivered_30003 scenario")?
        .to_owned();
    let mut report_to_call = Vec::with_capacity(runs);
    let mut start_to_call = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        let v = client
            .start_verification(pb::StartVerificationRequest {
                purpose: "login".into(),
                to: to.clone(),
                channel: pb::Channel::Sms.into(),
                allow_fallback: true,
                ..Default::default()
            })
            .await?
            .into_inner()
            .verification
            .context("no verification")?;
        // The newest inbox message for the number is this verification's call once it fell back.
        let inbox_url = url::Url::parse_with_params(
            &format!("{sandbox}/sandbox/messages"),
            [("to", to.as_str())],
        )?;
        let call = loop {
            let inbox = get_json(&http, inbox_url.clone()).await?;
            if let Some(first) = inbox.as_array().and_then(|a| a.first())
                && first["channel"] == "call"
            {
                let sid = first["verification_sid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let got = client
                    .get_verification(pb::GetVerificationRequest { id: v.id.clone() })
                    .await?
                    .into_inner()
                    .verification
                    .context("no verification")?;
                if got.channel() == pb::Channel::Call {
                    break sid;
                }
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("no fallback call within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        start_to_call.push(t0.elapsed());
        let events_url = url::Url::parse_with_params(
            &format!("{sandbox}/sandbox/events"),
            [("verification_sid", call.as_str())],
        )?;
        // Both on the sandbox's clock in milliseconds: the SMS's `undelivered` report, and the
        // `sent` event the sandbox emits the moment the gateway's call request reached it.
        let event_time = |events: &serde_json::Value,
                          status: &str,
                          channel: &str|
         -> anyhow::Result<Option<DateTime<Utc>>> {
            let times = events
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| {
                    e["message_status"] == status
                        && e["channel"]
                            .as_str()
                            .is_some_and(|c| c.eq_ignore_ascii_case(channel))
                })
                .map(|e| time(&e["time"]))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(times.into_iter().min())
        };
        let mut reported = None;
        let mut called = None;
        for _ in 0..200 {
            let events = get_json(&http, events_url.clone()).await?;
            reported = event_time(&events, "UNDELIVERED", "sms")?;
            called = event_time(&events, "SENT", "call")?;
            if reported.is_some() && called.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let reported = reported.context("the sandbox posted no undelivered report")?;
        let called = called.context("the sandbox recorded no call")?;
        report_to_call.push(
            (called - reported)
                .to_std()
                .context("the call was recorded before the report that caused it")?,
        );
        client
            .cancel_verification(pb::CancelVerificationRequest { id: v.id })
            .await?;
    }
    report_to_call.sort();
    start_to_call.sort();
    println!(
        "fallback latency bench: {runs} SMS verifications to the sandbox's undelivered_30003 number, allow_fallback, one at a time"
    );
    println!(
        "  report -> call     p50 {:>8.2} ms   p99 {:>8.2} ms   (the sandbox's undelivered report to its sent event of the call, both its clock)",
        pct(&report_to_call, 0.50),
        pct(&report_to_call, 0.99)
    );
    println!(
        "  start -> call      p50 {:>8.2} ms   p99 {:>8.2} ms   (includes the sandbox's delivery delay)",
        pct(&start_to_call, 0.50),
        pct(&start_to_call, 0.99)
    );
    Ok(())
}
