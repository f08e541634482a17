//! Serving an axum router on a TCP listener with limits on slow and numerous clients: a
//! deadline for each request's head, one for its body, and a cap on open connections.
//!
//! `axum::serve` has none of these, so a client sending its headers or its body a byte at a
//! time keeps a connection (and a task) for as long as it likes, and enough of them exhaust
//! the process's file descriptors. Here:
//!
//! - a request's head must arrive within [`Limits::header_timeout`], timed from when the
//!   connection starts waiting for it: the connection's opening, or the end of the previous
//!   response on a kept-alive connection, so an idle keep-alive connection is closed after
//!   the same time;
//! - its body must arrive within [`Limits::body_timeout`] of the head; past it a handler
//!   still waiting for the body is not run on it, the answer is `408 Request Timeout` and
//!   the connection is closed;
//! - at most [`Limits::max_connections`] connections are served at once; more wait in the
//!   listen backlog until one closes.
//!
//! On shutdown the listener closes, idle connections close, and requests in flight finish.
//!
//! Every HTTP listener of the gateway serves with it: webhook-ingest's, the sandbox's and
//! verify-service's `/metrics`.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

/// How long a client may take to send a request, and how many connections are served at
/// once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The time a request's head (request line and headers) may take, from when the
    /// connection starts waiting for it; also how long a kept-alive connection may stay
    /// idle. Past it the connection is closed.
    pub header_timeout: Duration,
    /// The time a request's body may take after its head; past it the request is answered
    /// 408 and the connection closed.
    pub body_timeout: Duration,
    /// Connections served at once; further ones wait to be accepted.
    pub max_connections: NonZeroUsize,
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves; then stops
/// accepting, closes idle connections and returns once the requests in flight are answered.
/// Handlers can extract `ConnectInfo<SocketAddr>`, the peer's address.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router.layer(axum::middleware::from_fn_with_state(
        limits.body_timeout,
        body_deadline,
    ));
    let permits = Arc::new(Semaphore::new(limits.max_connections.get()));
    // `stop` tells the connections to finish; each holds a clone of `open_rx`, so
    // `open_tx.closed()` resolves when the last one has ended.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (open_tx, open_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(&error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        tokio::spawn(connection(
            stream,
            peer,
            router.clone(),
            limits.header_timeout,
            Open {
                _permit: permit,
                _open: open_rx.clone(),
            },
            stop_rx.clone(),
        ));
    }
    drop(listener);
    stop_tx.send_replace(true);
    drop(open_rx);
    open_tx.closed().await;
    Ok(())
}

/// What a connection holds while it is open: its place under the cap, and its part in
/// keeping shutdown waiting.
struct Open {
    _permit: OwnedSemaphorePermit,
    _open: watch::Receiver<()>,
}

/// An accept that failed. A connection that went away before it was accepted concerns that
/// connection only; anything else (out of file descriptors, most likely) would fail again
/// at once, so the loop waits a little before the next accept.
async fn accept_failed(error: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(%error, "accepting a connection failed; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Serves one connection over HTTP/1.1 until it closes, or until `stop` is set and its
/// request in flight, if any, is answered.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    header_timeout: Duration,
    open: Open,
    mut stop: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request.map(Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let mut served = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let mut stopping = false;
    loop {
        tokio::select! {
            outcome = served.as_mut() => {
                if let Err(error) = outcome {
                    // Headers too slow, a malformed request, a peer gone: the peer's doing.
                    tracing::debug!(%error, "connection closed");
                }
                break;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                served.as_mut().graceful_shutdown();
            }
        }
    }
    drop(open);
}

/// Gives the request's body until `timeout` from now to arrive; a handler that was still
/// waiting for it then gets an error instead, and the answer is replaced by 408.
async fn body_deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let expired = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep_until(Instant::now() + timeout)),
            expired: Arc::clone(&expired),
        })
    });
    let response = next.run(request).await;
    if expired.load(Ordering::Acquire) {
        return (
            StatusCode::REQUEST_TIMEOUT,
            [(header::CONNECTION, "close")],
            "the request body did not arrive in time\n",
        )
            .into_response();
    }
    response
}

/// A request body that fails once its deadline has passed, and says so in `expired`.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    expired: Arc<AtomicBool>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error a handler reading a body past its deadline gets.
#[derive(Debug)]
struct BodyTimedOut;

impl fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimedOut {}
