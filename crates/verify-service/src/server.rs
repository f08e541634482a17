//! Serves VerifyService with `grpc.health.v1` and server reflection (v1 and v1alpha, since
//! grpcurl and Python's reflection client still use v1alpha) on one listener. Every
//! VerifyService call runs in a `grpc.request` span that continues the caller's trace when
//! its metadata carries `traceparent` (and `tracestate`).
//!
//! Calls are bounded ([`Limits`]): each must be answered within the request timeout, one
//! connection serves a bounded number at once, and so does the whole server. Health follows
//! a periodic ping of the database, and on shutdown every service turns `NOT_SERVING` before
//! the server stops accepting; calls in flight then get the shutdown grace to finish, after
//! which the connections still open (a `Health/Watch` stream never finishes) are cut.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::transport::server::{Connected, TcpIncoming};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use secrecy::SecretString;

use crate::admin::AdminService;
use crate::auth::Callers;
use crate::grpc::GrpcService;
use crate::service::VerifyCore;
use crate::tls::{self, Certificates};

/// How the server bounds its calls, its shutdown and its health checks
/// (`[server]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A call not answered within this long ends `CANCELLED` (a caller's own shorter
    /// `grpc-timeout` wins).
    pub request_timeout: Duration,
    /// Calls one connection has in flight at once; more wait their turn.
    pub concurrency_per_connection: usize,
    /// HTTP/2 streams a client may open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Calls of VerifyService and AdminService the server runs at once over all
    /// connections; more wait their turn (within their timeout). Health and reflection are
    /// not counted, so probes still answer under load.
    pub max_concurrent_calls: usize,
    /// How long calls in flight get to finish after shutdown begins.
    pub shutdown_grace: Duration,
    /// How often the database is pinged for health.
    pub database_ping_every: Duration,
    /// A ping not answered within this long counts as the database being down.
    pub database_ping_timeout: Duration,
}

/// AdminService as served: the service and its bearer token (`None`: no token needed,
/// which the configuration allows only on a loopback address).
#[derive(Debug, Clone)]
pub struct Admin {
    pub service: AdminService,
    pub token: Option<SecretString>,
}

/// Serves on `listener`: over TLS with `tls` (see [`crate::tls`]), else plaintext HTTP/2,
/// until `shutdown` resolves. Then every health status turns `NOT_SERVING`, the listener
/// closes, calls in flight get `limits.shutdown_grace` to finish, and whatever is still open
/// after it is cut off.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<Certificates>>,
    callers: Option<Arc<Callers>>,
    core: VerifyCore,
    admin: Option<Admin>,
    limits: Limits,
    database: storage::Database,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let descriptors = [
        proto::verify::v1::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ];
    let mut v1 = tonic_reflection::server::Builder::configure();
    let mut v1alpha = tonic_reflection::server::Builder::configure();
    for d in descriptors {
        v1 = v1.register_encoded_file_descriptor_set(d);
        v1alpha = v1alpha.register_encoded_file_descriptor_set(d);
    }
    let reflection_v1 = v1.build_v1().context("building reflection v1")?;
    let reflection_v1alpha = v1alpha
        .build_v1alpha()
        .context("building reflection v1alpha")?;

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let mut names = vec![
        "",
        <proto::verify::v1::verify_service_server::VerifyServiceServer<GrpcService> as NamedService>::NAME,
    ];
    if admin.is_some() {
        names.push(
            <proto::verify::admin::v1::admin_service_server::AdminServiceServer<AdminService> as NamedService>::NAME,
        );
    }
    let health = Health { reporter, names };
    health.set(ServingStatus::Serving).await;

    let router = tonic::transport::Server::builder()
        .timeout(limits.request_timeout)
        .concurrency_limit_per_connection(limits.concurrency_per_connection)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .trace_fn(request_span)
        .layer(tower::layer::layer_fn({
            let permits = Arc::new(Semaphore::new(limits.max_concurrent_calls));
            move |inner| CallLimit {
                inner,
                permits: Arc::clone(&permits),
            }
        }))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(GrpcService::new(core, callers).into_server())
        .add_optional_service(admin.map(|a| a.service.into_server(a.token)));

    // Shutdown in steps: health first, so probes and watchers see NOT_SERVING while the
    // calls in flight still finish; then the server stops accepting and drains; after the
    // grace every connection still open is cut.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (drain_tx, drain_rx) = watch::channel(false);
    let (cut_tx, cut_rx) = watch::channel(false);
    let pinging = tokio::spawn(follow_database(
        health.clone(),
        database,
        limits,
        wait_for(stop_rx),
    ));
    let drain = wait_for(drain_rx);
    let served = async {
        match tls {
            Some(certificates) => {
                let incoming = tls::incoming(listener, certificates)
                    .map(move |c| c.map(|c| Severable::new(c, cut_rx.clone())));
                router.serve_with_incoming_shutdown(incoming, drain).await
            }
            // TCP_NODELAY, as tonic sets on listeners it binds itself: with Nagle's
            // algorithm a response's last frames could wait for the client's delayed ACK.
            None => {
                let incoming = TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .map(move |c| c.map(|c| Severable::new(c, cut_rx.clone())));
                router.serve_with_incoming_shutdown(incoming, drain).await
            }
        }
    };
    tokio::pin!(served);
    let outcome = tokio::select! {
        outcome = &mut served => outcome,
        () = shutdown => {
            tracing::info!(
                grace_seconds = limits.shutdown_grace.as_secs_f64(),
                "gRPC: NOT_SERVING, finishing the calls in flight"
            );
            let _ = stop_tx.send(true);
            let _ = pinging.await;
            health.set(ServingStatus::NotServing).await;
            let _ = drain_tx.send(true);
            match tokio::time::timeout(limits.shutdown_grace, &mut served).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    tracing::warn!(
                        "gRPC: calls or streams still open after the shutdown grace; cutting \
                         their connections"
                    );
                    let _ = cut_tx.send(true);
                    // Cut connections end at their next poll; this bound only keeps a
                    // connection task that never wakes from holding the exit.
                    match tokio::time::timeout(CUT_WAIT, &mut served).await {
                        Ok(outcome) => outcome,
                        Err(_) => Ok(()),
                    }
                }
            }
        }
    };
    outcome.context("gRPC server failed")
}

/// How long the server waits for its connections to end once they are cut.
const CUT_WAIT: Duration = Duration::from_secs(1);

/// Resolves once `rx` holds `true` (or its sender is gone).
async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|set| *set).await;
}

/// The health statuses the server reports: the overall one (`""`) and each service's.
#[derive(Clone)]
struct Health {
    reporter: HealthReporter,
    names: Vec<&'static str>,
}

impl Health {
    async fn set(&self, status: ServingStatus) {
        for name in &self.names {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// Pings the database every `limits.database_ping_every` until `stop`, and sets every
/// health status to what the ping says: a replica whose database does not answer is taken
/// out of rotation, and back in once it answers again.
async fn follow_database(
    health: Health,
    database: storage::Database,
    limits: Limits,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(limits.database_ping_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut serving = true;
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        let ping = tokio::select! {
            () = &mut stop => return,
            ping = tokio::time::timeout(limits.database_ping_timeout, database.ping()) => ping,
        };
        let up = matches!(ping, Ok(Ok(())));
        if up != serving {
            serving = up;
            match ping {
                Ok(Ok(())) => tracing::info!("the database answers again: SERVING"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the database does not answer: NOT_SERVING")
                }
                Err(_) => tracing::warn!(
                    timeout_ms = limits.database_ping_timeout.as_millis() as u64,
                    "the database does not answer in time: NOT_SERVING"
                ),
            }
            health
                .set(if up {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                })
                .await;
        }
    }
}

/// At most `permits` calls of the gateway's own services at once over every connection;
/// the others wait for a permit, within their request timeout. Health and reflection
/// (`/grpc.*`) are not counted: a saturated server still answers its probes.
#[derive(Debug, Clone)]
struct CallLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, B> Service<tonic::codegen::http::Request<B>> for CallLimit<S>
where
    S: Service<tonic::codegen::http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        let counted = !request.uri().path().starts_with("/grpc.");
        // The service made ready by `poll_ready` serves this call; a fresh clone stays.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let permits = Arc::clone(&self.permits);
        Box::pin(async move {
            let _permit = if counted {
                // The semaphore is never closed, so acquiring fails never.
                permits.acquire_owned().await.ok()
            } else {
                None
            };
            inner.call(request).await
        })
    }
}

/// A connection that can be cut from outside: once its signal is set, reads and writes
/// fail, so the HTTP/2 connection over it ends with the calls and streams it still holds.
struct Severable<IO> {
    io: IO,
    cut: Pin<Box<dyn Future<Output = ()> + Send>>,
    severed: bool,
}

impl<IO> Severable<IO> {
    fn new(io: IO, cut: watch::Receiver<bool>) -> Severable<IO> {
        Severable {
            io,
            cut: Box::pin(wait_for(cut)),
            severed: false,
        }
    }

    /// Whether the connection is cut; registers the task to be woken when it is.
    fn severed(&mut self, cx: &mut TaskContext<'_>) -> bool {
        if !self.severed && self.cut.as_mut().poll(cx).is_ready() {
            self.severed = true;
        }
        self.severed
    }
}

fn cut_off() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "cut off at the end of the shutdown grace",
    )
}

impl<IO: Connected> Connected for Severable<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Severable<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.severed(cx) {
            return Poll::Ready(Err(cut_off()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Severable<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.severed(cx) {
            return Poll::Ready(Err(cut_off()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.severed(cx) {
            return Poll::Ready(Err(cut_off()));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.severed(cx) {
            return Poll::Ready(Err(cut_off()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.severed(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// The span a request runs in: named after the RPC, a child of the caller's span when the
/// metadata names one. Health checks and reflection are probes and tooling, not work worth
/// a trace: they run in no span.
fn request_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let rpc = request.uri().path().trim_start_matches('/');
    if rpc.starts_with("grpc.health.") || rpc.starts_with("grpc.reflection.") {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("grpc.request", otel.name = %rpc, otel.kind = "server");
    telemetry::trace::set_parent_from(&span, |name| {
        request.headers().get(name).and_then(|v| v.to_str().ok())
    });
    span
}
