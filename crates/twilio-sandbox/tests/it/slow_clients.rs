//! Clients that send slowly or open too many connections, on real sockets: headers sent a
//! byte at a time are cut off, a body sent a byte at a time is answered 408 and starts no
//! verification, and connections beyond the cap wait for a place.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twilio_sandbox::{DEV_ACCOUNT_SID, DEV_AUTH_TOKEN, DEV_SERVICE_SID, Limits, SandboxConfig};

use crate::support::{TestSandbox, start, test_config};

/// Far longer than any deadline of these tests: a connection still open then was not cut
/// off.
const CLOSED_WITHIN: Duration = Duration::from_secs(5);

/// The time between two bytes of a dribbling client.
const EVERY: Duration = Duration::from_millis(50);

/// The test config with the given limits.
fn within(limits: Limits) -> SandboxConfig {
    let mut config = test_config();
    config.limits = limits;
    config
}

/// Short deadlines, so the cut-offs come within the test.
fn short() -> SandboxConfig {
    within(Limits {
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        ..twilio_sandbox::DEFAULT_LIMITS
    })
}

fn addr(sandbox: &TestSandbox) -> SocketAddr {
    sandbox
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("the base is an address")
}

/// Connects, sends `head` at once and then `dribbled` a byte at a time (and then nothing),
/// and returns what the server sent before it closed the connection; fails the test if it
/// did not close it within [`CLOSED_WITHIN`].
async fn dribble(addr: SocketAddr, head: &[u8], dribbled: &[u8]) -> String {
    let stream = TcpStream::connect(addr).await.expect("the server accepts");
    let (mut read, mut write) = stream.into_split();
    let writer = async {
        let _ = write.write_all(head).await;
        for byte in dribbled {
            if write.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(EVERY).await;
        }
        std::future::pending::<()>().await;
    };
    let reader = async {
        let mut seen = Vec::new();
        // A reset ends the read as well as an orderly close does.
        let _ = read.read_to_end(&mut seen).await;
        String::from_utf8_lossy(&seen).into_owned()
    };
    tokio::time::timeout(CLOSED_WITHIN, async {
        tokio::select! {
            seen = reader => seen,
            () = writer => unreachable!("the writer never ends"),
        }
    })
    .await
    .expect("the server closed the connection")
}

#[tokio::test]
async fn headers_sent_slowly_are_cut_off() -> anyhow::Result<()> {
    let sandbox = start(short()).await?;
    let addr = addr(&sandbox);
    let endless: Vec<u8> = format!("GET /sandbox/scenarios HTTP/1.1\r\nHost: {addr}\r\n")
        .bytes()
        .chain(b"X-Slow: 1\r\n".repeat(16))
        .collect();
    let seen = dribble(addr, b"", &endless).await;
    assert!(!seen.contains(" 200 "), "{seen}");

    let answer = sandbox
        .send(sandbox.client.get(sandbox.url("/sandbox/scenarios")))
        .await?;
    assert_eq!(answer.status, 200, "the sandbox goes on answering");
    Ok(())
}

#[tokio::test]
async fn a_body_sent_slowly_is_answered_408_and_starts_nothing() -> anyhow::Result<()> {
    let sandbox = start(short()).await?;
    let addr = addr(&sandbox);
    let body = "To=%2B14155552671&Channel=sms";
    let credentials = base64::engine::general_purpose::STANDARD
        .encode(format!("{DEV_ACCOUNT_SID}:{DEV_AUTH_TOKEN}"));
    let head = format!(
        "POST /v2/Services/{DEV_SERVICE_SID}/Verifications HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Basic {credentials}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );

    let seen = dribble(addr, head.as_bytes(), body.as_bytes()).await;
    assert!(seen.starts_with("HTTP/1.1 408 "), "{seen}");
    assert!(sandbox.inbox(None).await?.is_empty(), "nothing was sent");

    // The same request sent at once starts a verification.
    let answer = sandbox.create("+14155552671", "sms").await?;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(sandbox.inbox(None).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_place() -> anyhow::Result<()> {
    let sandbox = start(within(Limits {
        max_connections: NonZeroUsize::new(2).expect("not zero"),
        ..twilio_sandbox::DEFAULT_LIMITS
    }))
    .await?;
    let addr = addr(&sandbox);

    let first = TcpStream::connect(addr).await?;
    let _second = TcpStream::connect(addr).await?;
    let mut third = TcpStream::connect(addr).await?;
    third
        .write_all(
            format!("GET /sandbox/scenarios HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut byte = [0_u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut byte))
            .await
            .is_err(),
        "a connection beyond the cap was served"
    );

    drop(first);
    let mut seen = Vec::new();
    tokio::time::timeout(CLOSED_WITHIN, third.read_to_end(&mut seen))
        .await
        .expect("the waiting connection is served")?;
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 200 "), "{seen}");
    Ok(())
}
