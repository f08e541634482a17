//! Clients that send slowly or open too many connections, on real sockets: headers sent a
//! byte at a time and idle keep-alive connections are cut off, a body sent a byte at a time
//! is answered 408 and stores nothing, and connections beyond the cap wait for a place
//! while the server goes on answering.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use webhook_ingest::{DEFAULT_LIMITS, Limits, VERIFY_EVENTS_PATH};

use crate::support::{AUTH_TOKEN, Harness, Table, get, message_event, settings, sign_json};

/// Short deadlines, so the cut-offs come within the test.
const SHORT: Limits = Limits {
    header_timeout: Duration::from_millis(500),
    body_timeout: Duration::from_millis(500),
    max_connections: DEFAULT_LIMITS.max_connections,
};

/// Far longer than any deadline of these tests: a connection still open then was not cut
/// off.
const CLOSED_WITHIN: Duration = Duration::from_secs(5);

/// The time between two bytes of a dribbling client.
const EVERY: Duration = Duration::from_millis(50);

fn addr(harness: &Harness) -> SocketAddr {
    harness
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
async fn headers_sent_slowly_and_idle_connections_are_cut_off() {
    let harness = Harness::start_within(settings(), SHORT).await;
    let addr = addr(&harness);

    // A request line and headers that would take 10 s at this pace, and never end.
    let endless: Vec<u8> = format!("POST {VERIFY_EVENTS_PATH} HTTP/1.1\r\nHost: {addr}\r\n")
        .bytes()
        .chain(b"X-Slow: 1\r\n".repeat(16))
        .collect();
    let seen = dribble(addr, b"", &endless).await;
    assert!(!seen.contains(" 200 "), "{seen}");

    // A kept-alive connection is answered, then closed once idle for as long.
    let seen = dribble(
        addr,
        format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
        b"",
    )
    .await;
    assert!(seen.starts_with("HTTP/1.1 200 "), "{seen}");

    // The server goes on answering.
    let (status, _) = get(&harness.url("/healthz")).await;
    assert_eq!(status, 200);
    assert_eq!(harness.count(Table::DeliveryReports).await, 0);
    harness.finish().await;
}

#[tokio::test]
async fn a_body_sent_slowly_is_answered_408_and_stores_nothing() {
    let harness = Harness::start_within(settings(), SHORT).await;
    let addr = addr(&harness);
    let body = json!([message_event("EZ0801", "VE0801", "DELIVERED", "")]).to_string();
    let signed = sign_json(
        AUTH_TOKEN,
        &format!("{}{VERIFY_EVENTS_PATH}", harness.public_base),
        &body,
    );
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         X-Twilio-Signature: {}\r\nContent-Length: {}\r\n\r\n",
        signed.path_and_query(&harness.public_base),
        signed.signature,
        body.len()
    );

    let seen = dribble(addr, head.as_bytes(), body.as_bytes()).await;
    assert!(seen.starts_with("HTTP/1.1 408 "), "{seen}");
    assert_eq!(harness.count(Table::DeliveryReports).await, 0);
    assert_eq!(harness.count(Table::Outbox).await, 0);

    // The same request sent at once is a good one: it is stored.
    let (status, answer) = harness.post_events(&signed, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(harness.count(Table::DeliveryReports).await, 1);
    harness.finish().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_place() {
    let limits = Limits {
        max_connections: NonZeroUsize::new(2).expect("not zero"),
        ..DEFAULT_LIMITS
    };
    let mut harness = Harness::start_within(settings(), limits).await;
    let addr = addr(&harness);

    // Two connections that send nothing hold both places.
    let first = TcpStream::connect(addr).await.expect("the server accepts");
    let _second = TcpStream::connect(addr).await.expect("the server accepts");
    let mut third = TcpStream::connect(addr)
        .await
        .expect("the listen backlog takes it");
    third
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("the request is sent");
    let mut byte = [0_u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut byte))
            .await
            .is_err(),
        "a connection beyond the cap was served"
    );

    // One place frees up: the waiting connection is served, and so are new ones.
    drop(first);
    let mut seen = Vec::new();
    tokio::time::timeout(CLOSED_WITHIN, third.read_to_end(&mut seen))
        .await
        .expect("the waiting connection is served")
        .expect("the answer is read");
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 200 "), "{seen}");
    let (status, _) = get(&harness.url("/healthz")).await;
    assert_eq!(status, 200);

    // An idle connection does not hold up shutdown.
    tokio::time::timeout(CLOSED_WITHIN, harness.stop_server())
        .await
        .expect("the server stops with an idle connection open");
    harness.finish().await;
}
