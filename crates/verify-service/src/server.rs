//! Serves VerifyService with `grpc.health.v1` and server reflection (v1 and v1alpha, since
//! grpcurl and Python's reflection client still use v1alpha) on one listener. Every
//! VerifyService call runs in a `grpc.request` span that continues the caller's trace when
//! its metadata carries `traceparent` (and `tracestate`).

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use secrecy::SecretString;

use crate::admin::AdminService;
use crate::auth::Callers;
use crate::grpc::GrpcService;
use crate::service::VerifyCore;
use crate::tls::{self, Certificates};

/// AdminService as served: the service and its bearer token (`None`: no token needed,
/// which the configuration allows only on a loopback address).
#[derive(Debug, Clone)]
pub struct Admin {
    pub service: AdminService,
    pub token: Option<SecretString>,
}

/// Serves on `listener`: over TLS with `tls` (see [`crate::tls`]), else plaintext HTTP/2.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<Certificates>>,
    callers: Option<Arc<Callers>>,
    core: VerifyCore,
    admin: Option<Admin>,
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

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<proto::verify::v1::verify_service_server::VerifyServiceServer<GrpcService>>()
        .await;

    let router = tonic::transport::Server::builder()
        .trace_fn(request_span)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(GrpcService::new(core, callers).into_server())
        .add_optional_service(admin.map(|a| a.service.into_server(a.token)));
    match tls {
        Some(certificates) => {
            router
                .serve_with_incoming_shutdown(tls::incoming(listener, certificates), shutdown)
                .await
        }
        // TCP_NODELAY, as tonic sets on listeners it binds itself: with Nagle's algorithm
        // a response's last frames could wait for the client's delayed ACK (tens of ms).
        None => {
            router
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown,
                )
                .await
        }
    }
    .context("gRPC server failed")
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
