//! Traces across hops: the OpenTelemetry tracer behind every `tracing` span, and the helpers
//! that carry a span's W3C trace context in `traceparent` (and `tracestate`) headers, into
//! and out of gRPC metadata, HTTP requests, bus messages and the store, so that no other
//! crate touches OpenTelemetry's API.
//!
//! Every span of INFO or above gets a trace context whether or not spans are exported, so
//! propagation works the same with and without a collector. A span's parent is its
//! `tracing` parent unless [`set_parent`] names a remote one (a caller's, or one stored with
//! a verification); [`add_link`] relates a span to another trace without joining it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Link, SpanKind, Status, TraceContextExt, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Array, Context, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample, SpanData,
    SpanExporter, TracerProviderBuilder,
};
use tracing::Span;
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{Targets, filter_fn};
use tracing_subscriber::registry::LookupSpan;

use crate::{TelemetryError, TraceExport, redact};

/// The W3C header (gRPC metadata key, AMQP header, bus envelope header) holding a span's
/// trace id, span id and sampling flag: `00-<32 hex>-<16 hex>-<2 hex>`.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendor trace state along with [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";

/// The instrumentation scope the services' spans are recorded under.
const SCOPE: &str = "verify-gateway";

/// The `traceparent` of the current span, or `None` when it has no trace context (outside
/// any span, or in a span below INFO).
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&Span::current())
}

/// The `traceparent` of `span`, or `None` when it has no trace context.
pub fn traceparent_of(span: &Span) -> Option<String> {
    headers_of(span)
        .into_iter()
        .find_map(|(name, value)| (name == TRACEPARENT).then_some(value))
}

/// The trace-context headers of the current span: `traceparent`, and `tracestate` when
/// there is one; empty when the span has no trace context. Suited as the header hook of an
/// HTTP client.
pub fn current_headers() -> Vec<(&'static str, String)> {
    headers_of(&Span::current())
}

/// The trace-context headers of `span` (see [`current_headers`]).
pub fn headers_of(span: &Span) -> Vec<(&'static str, String)> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    [TRACEPARENT, TRACESTATE]
        .into_iter()
        .filter_map(|name| {
            carrier
                .remove(name)
                .filter(|value| !value.is_empty())
                .map(|value| (name, value))
        })
        .collect()
}

/// Makes `span` a child of the remote span `traceparent` names (with its `tracestate`).
/// Call it right after creating the span, before it is entered or has children. Returns
/// whether the parent was set: a malformed `traceparent` is ignored and the span keeps its
/// `tracing` parent.
pub fn set_parent(span: &Span, traceparent: &str, tracestate: Option<&str>) -> bool {
    match remote_context(traceparent, tracestate) {
        Some(cx) => span.set_parent(cx).is_ok(),
        None => false,
    }
}

/// Makes `span` a child of the remote context found in `get(TRACEPARENT)` and
/// `get(TRACESTATE)`, e.g. the headers of an incoming request. Returns whether it did.
pub fn set_parent_from<'a>(span: &Span, get: impl Fn(&str) -> Option<&'a str>) -> bool {
    match get(TRACEPARENT) {
        Some(traceparent) => set_parent(span, traceparent, get(TRACESTATE)),
        None => false,
    }
}

/// Links `span` to the span `traceparent` names, e.g. the webhook request whose message
/// a consumer handles in another trace. Returns whether the link was added.
pub fn add_link(span: &Span, traceparent: &str) -> bool {
    match remote_context(traceparent, None) {
        Some(cx) => {
            span.add_link(cx.span().span_context().clone());
            true
        }
        None => false,
    }
}

/// The remote context a well-formed `traceparent` describes.
fn remote_context(traceparent: &str, tracestate: Option<&str>) -> Option<Context> {
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
    carrier.insert(TRACEPARENT.to_owned(), traceparent.to_owned());
    if let Some(state) = tracestate {
        carrier.insert(TRACESTATE.to_owned(), state.to_owned());
    }
    // Against an empty context: `extract` falls back to the current one, which would make
    // a malformed header look like a valid parent.
    let cx = TraceContextPropagator::new().extract_with_context(&Context::new(), &carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The tracer provider of the services: the OTLP/gRPC batch exporter when an endpoint is
/// set, no exporter otherwise (spans still get trace contexts).
pub(crate) fn provider(export: &TraceExport) -> Result<SdkTracerProvider, TelemetryError> {
    let builder = builder(&export.service_name);
    let Some(endpoint) = export.endpoint() else {
        return Ok(builder.build());
    };
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    // The batch processor exports from its own thread; the exporter's gRPC channel was
    // built on the caller's Tokio runtime and does its IO there.
    Ok(builder.with_batch_exporter(Redacted(exporter)).build())
}

/// A tracer provider as the services build it (sampler, resource, redaction) that exports
/// every span as it ends, on the thread that ends it: for tests, with `opentelemetry_sdk`'s
/// in-memory exporter. The services batch instead.
pub fn simple_provider<E: SpanExporter + 'static>(
    service_name: &str,
    exporter: E,
) -> SdkTracerProvider {
    builder(service_name)
        .with_simple_exporter(Redacted(exporter))
        .build()
}

fn builder(service_name: &str) -> TracerProviderBuilder {
    SdkTracerProvider::builder()
        .with_sampler(GatewaySampler::default())
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
}

/// The target whose DEBUG spans are exported too: the store's, one per statement or
/// transaction. They are DEBUG so that a process that exports nothing does not make them
/// at all (no context of theirs leaves the process); one that exports shows them.
pub const STORAGE_TARGET: &str = "storage";

/// The layer that gives `tracing` spans of INFO and above, and the store's DEBUG spans
/// ([`STORAGE_TARGET`]), an OpenTelemetry span of `provider`. Its filter is its own,
/// independent of the log filter, so trace context is there however quiet the logs are.
/// Install it once, in the one global subscriber.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + Send + Sync + 'static
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    spans(provider).with_filter(
        Targets::new()
            .with_default(LevelFilter::INFO)
            .with_target(STORAGE_TARGET, LevelFilter::DEBUG),
    )
}

/// [`layer`] for a process that exports no spans: spans get an OpenTelemetry span, as
/// their contexts still leave the process (`traceparent` on calls, messages and stored
/// rows), but log events are not recorded on them: nobody reads them, and recording every
/// event's fields on its span cost a request a few percent of its CPU.
pub fn context_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + Send + Sync + 'static
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    spans(provider)
        // What only an exported span shows (busy and idle time, code location, target)
        // is not gathered, and entering a span does not make its context OpenTelemetry's
        // current one: contexts leave through `headers_of`, which asks the span itself.
        .with_tracked_inactivity(false)
        .with_location(false)
        .with_target(false)
        .with_context_activation(false)
        .with_filter(filter_fn(context_spans))
}

/// What [`context_layer`] makes an OpenTelemetry span of: spans of INFO and above.
fn context_spans(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && LevelFilter::INFO >= *meta.level()
}

/// The OpenTelemetry layer over `provider`, before its filter.
fn spans<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SCOPE))
        .with_threads(false)
}

/// Makes `provider` and the W3C propagator the process-wide defaults, for libraries that
/// use OpenTelemetry's globals.
pub(crate) fn install_globals(provider: &SdkTracerProvider) {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
}

/// Follows the parent's sampling decision (the caller's, when it sent one) and samples new
/// traces, except traces that would begin with store work: those are background polls (the
/// outbox relay claims twice a second) and carry no request, so store spans are recorded
/// only inside the trace of the work that asked for them.
#[derive(Debug, Clone)]
struct GatewaySampler {
    inner: Sampler,
}

impl Default for GatewaySampler {
    fn default() -> Self {
        GatewaySampler {
            inner: Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        }
    }
}

impl ShouldSample for GatewaySampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let is_root = !parent_context.is_some_and(Context::has_active_span);
        if is_root && name.starts_with("storage.") {
            return SamplingResult {
                decision: SamplingDecision::Drop,
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            };
        }
        self.inner
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// Passes every text a span carries (attributes, event messages and attributes, link
/// attributes, the error description) through [`redact`] before the wrapped exporter sees
/// it: the same last line of defence the log lines get.
#[derive(Debug)]
struct Redacted<E>(E);

impl<E: SpanExporter> SpanExporter for Redacted<E> {
    fn export(&self, mut batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        for span in &mut batch {
            redact_span(span);
        }
        self.0.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

fn redact_span(span: &mut SpanData) {
    redact_attributes(&mut span.attributes);
    for event in &mut span.events.events {
        if let Cow::Owned(name) = redact(&event.name) {
            event.name = name.into();
        }
        redact_attributes(&mut event.attributes);
    }
    for link in &mut span.links.links {
        redact_attributes(&mut link.attributes);
    }
    if let Status::Error { description } = &mut span.status
        && let Cow::Owned(redacted) = redact(description)
    {
        *description = redacted.into();
    }
}

fn redact_attributes(attributes: &mut [KeyValue]) {
    for kv in attributes {
        match &mut kv.value {
            Value::String(s) => {
                if let Cow::Owned(redacted) = redact(s.as_str()) {
                    *s = redacted.into();
                }
            }
            Value::Array(Array::String(values)) => {
                for s in values {
                    if let Cow::Owned(redacted) = redact(s.as_str()) {
                        *s = redacted.into();
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::trace::InMemorySpanExporter;
    use tracing::info_span;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const OTHER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    /// Runs `body` under a subscriber with only the OpenTelemetry layer; returns the spans
    /// it exported, by name.
    fn traced(body: impl FnOnce()) -> Vec<SpanData> {
        let exporter = InMemorySpanExporter::default();
        let provider = simple_provider("test", exporter.clone());
        let subscriber = tracing_subscriber::registry().with(layer(&provider));
        tracing::subscriber::with_default(subscriber, body);
        exporter.get_finished_spans().expect("spans")
    }

    fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name}"))
    }

    #[test]
    fn a_remote_parent_is_joined_and_passed_on() {
        let mut outgoing = None;
        let spans = traced(|| {
            let span = info_span!("server");
            assert!(set_parent(&span, CALLER, Some("vendor=1")));
            span.in_scope(|| {
                let child = info_span!("client");
                child.in_scope(|| outgoing = Some(current_headers()));
            });
        });
        let server = named(&spans, "server");
        let client = named(&spans, "client");
        assert_eq!(
            server.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(server.parent_span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(client.parent_span_id, server.span_context.span_id());
        let outgoing = outgoing.expect("ran");
        assert_eq!(
            outgoing,
            vec![
                (
                    TRACEPARENT,
                    format!(
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                        client.span_context.span_id()
                    )
                ),
                (TRACESTATE, "vendor=1".to_owned()),
            ]
        );
    }

    #[test]
    fn without_export_spans_get_a_context_and_events_are_not_recorded() {
        let exporter = InMemorySpanExporter::default();
        let provider = simple_provider("test", exporter.clone());
        let subscriber = tracing_subscriber::registry().with(context_layer(&provider));
        let mut outgoing = None;
        tracing::subscriber::with_default(subscriber, || {
            let span = info_span!("server");
            assert!(set_parent(&span, CALLER, None));
            span.in_scope(|| {
                tracing::info!("an event nobody exports");
                let store = info_span!("storage.insert");
                store.in_scope(|| outgoing = Some(current_headers()));
            });
        });
        let spans = exporter.get_finished_spans().expect("spans");
        let server = named(&spans, "server");
        let store = named(&spans, "storage.insert");
        assert!(server.events.events.is_empty(), "no events");
        assert_eq!(server.parent_span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(store.parent_span_id, server.span_context.span_id());
        let outgoing = outgoing.expect("ran");
        assert_eq!(
            outgoing,
            vec![(
                TRACEPARENT,
                format!(
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                    store.span_context.span_id()
                )
            )]
        );
    }

    #[test]
    fn links_point_at_another_trace() {
        let spans = traced(|| {
            let span = info_span!("consumer");
            assert!(set_parent(&span, CALLER, None));
            assert!(add_link(&span, OTHER));
            assert!(!add_link(&span, "not a traceparent"));
            span.in_scope(|| {});
        });
        let consumer = named(&spans, "consumer");
        assert_eq!(consumer.links.links.len(), 1);
        let link = &consumer.links.links[0].span_context;
        assert_eq!(
            link.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(link.span_id().to_string(), "b7ad6b7169203331");
    }

    #[test]
    fn malformed_parents_leave_the_span_where_it_was() {
        let spans = traced(|| {
            let outer = info_span!("outer");
            outer.in_scope(|| {
                let span = info_span!("inner");
                for bad in [
                    "",
                    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                    "garbage",
                ] {
                    assert!(!set_parent(&span, bad, None), "{bad:?}");
                }
                assert!(!set_parent_from(&span, |_| None));
                span.in_scope(|| {});
            });
        });
        let outer = named(&spans, "outer");
        let inner = named(&spans, "inner");
        assert_eq!(inner.parent_span_id, outer.span_context.span_id());
        assert_eq!(inner.span_context.trace_id(), outer.span_context.trace_id());
    }

    #[test]
    fn no_trace_context_outside_spans_or_without_the_layer() {
        assert_eq!(current_traceparent(), None);
        let span = info_span!("unobserved");
        assert_eq!(span.in_scope(current_traceparent), None);
        let mut inside = None;
        traced(|| inside = Some(current_traceparent()));
        assert_eq!(inside, Some(None), "no span, no context");
    }

    #[test]
    fn root_store_spans_are_not_sampled_but_store_spans_in_a_trace_are() {
        let spans = traced(|| {
            info_span!("storage.outbox.claim").in_scope(|| {});
            info_span!("verify.start").in_scope(|| {
                info_span!("storage.insert").in_scope(|| {});
            });
        });
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["storage.insert", "verify.start"]);
    }

    #[test]
    fn store_debug_spans_are_exported_and_not_made_without_export() {
        let spans = traced(|| {
            info_span!("verify.check").in_scope(|| {
                tracing::debug_span!(target: "storage::repo", "storage.get").in_scope(|| {});
                tracing::debug_span!("elsewhere.debug").in_scope(|| {});
            });
        });
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["storage.get", "verify.check"]);

        let exporter = InMemorySpanExporter::default();
        let provider = simple_provider("test", exporter.clone());
        let subscriber = tracing_subscriber::registry().with(context_layer(&provider));
        // Whether a span is made is decided by its callsite's interest, which is process-wide:
        // another test's subscriber alive on another thread can make it `always`, and then
        // `is_disabled` says nothing of this layer. So: either the span is not made, or this
        // layer's filter (what decides in a process with its one subscriber) refuses it.
        tracing::subscriber::with_default(subscriber, || {
            info_span!("verify.check").in_scope(|| {
                let store = tracing::debug_span!(target: "storage::repo", "storage.get");
                // Not made (no metadata), or made only through another thread's interest, in
                // which case this layer's own answer must be never.
                if let Some(meta) = store.metadata() {
                    assert!(!context_spans(meta), "no span is made");
                }
            });
        });
        let spans = exporter.get_finished_spans().expect("spans");
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["verify.check"]);
    }

    #[test]
    fn exported_text_is_redacted() {
        let spans = traced(|| {
            let span = info_span!("verify.start", to = "+14155552671");
            span.in_scope(|| {
                tracing::info!(email = "jane.doe@example.com", "sent to +14155552671")
            });
        });
        let span = named(&spans, "verify.start");
        let text = format!("{:?} {:?}", span.attributes, span.events.events);
        assert!(!text.contains("4155552671"), "{text}");
        assert!(!text.contains("jane.doe"), "{text}");
        assert!(text.contains("+1415***2671"), "{text}");
        assert!(text.contains("j***@example.com"), "{text}");
    }
}
