//! The OTLP exporter end to end: `init` with an endpoint exports the process's spans, batched,
//! to a real OTLP/gRPC receiver (the collector's own service definition, served by tonic on a
//! loopback port), under the given service name and with the redaction log lines get, and
//! `shutdown` flushes what is still buffered. The log filter is `off`: spans are recorded
//! whatever the logs say.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use telemetry::trace::{current_traceparent, set_parent};
use telemetry::{LogFormat, TraceExport};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// What the receiver was sent.
#[derive(Debug, Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.0
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn text<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_named_redacted_and_flushed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let collector = Collector::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let telemetry = telemetry::init(
        LogFormat::Json,
        "off",
        &TraceExport {
            otlp_endpoint: Some(format!("http://{addr}")),
            service_name: "otlp-test".into(),
        },
    )
    .expect("telemetry installs");
    let span = tracing::info_span!("verify.start", to = "+14155552671");
    assert!(set_parent(&span, CALLER, None));
    let traceparent = span.in_scope(|| {
        tracing::info!("sent to jane.doe@example.com");
        current_traceparent()
    });
    drop(span);
    let traceparent = traceparent.expect("the span has a trace context");
    assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    // The batch is still buffered (the exporter waits up to 5 s): shutdown must send it.
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .expect("joins")
        .expect("flushes");

    let requests = collector.0.lock().expect("lock").clone();
    let resource_spans: Vec<_> = requests.iter().flat_map(|r| &r.resource_spans).collect();
    let (resource, span) = resource_spans
        .iter()
        .flat_map(|rs| {
            rs.scope_spans
                .iter()
                .flat_map(|ss| &ss.spans)
                .map(move |s| (rs.resource.as_ref(), s))
        })
        .find(|(_, s)| s.name == "verify.start")
        .expect("verify.start was exported");
    let resource = resource.expect("a resource");
    assert_eq!(
        text(&resource.attributes, "service.name"),
        Some("otlp-test")
    );
    assert_eq!(
        hex(&span.trace_id),
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "the caller's trace"
    );
    assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(text(&span.attributes, "to"), Some("+1415***2671"));
    let events: Vec<String> = span.events.iter().map(|e| format!("{e:?}")).collect();
    let events = events.join(" ");
    assert!(events.contains("j***@example.com"), "{events}");
    assert!(!events.contains("jane.doe"), "{events}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
