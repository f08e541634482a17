//! Observability set-up for the services: `tracing` with pretty or JSON log lines, an
//! OpenTelemetry tracer behind every span (exported over OTLP/gRPC when a collector is
//! configured), the W3C trace-context helpers in [`trace`], and a last line of defence that
//! masks anything shaped like an E.164 number or an email address before a line or a span
//! leaves the process. The first line of defence is that domain types print masks.

pub mod trace;

use std::borrow::Cow;
use std::io::{self, IsTerminal, Write};
use std::str::FromStr;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    Pretty,
    /// One JSON object per line, for collectors.
    Json,
}

impl FromStr for LogFormat {
    type Err = TelemetryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pretty" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            other => Err(TelemetryError::Format(other.to_owned())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("unknown log format `{0}` (expected pretty or json)")]
    Format(String),
    #[error("invalid log filter: {0}")]
    Filter(String),
    #[error("a global subscriber is already set")]
    AlreadySet,
    #[error("the OTLP span exporter: {0}")]
    Exporter(String),
    #[error("flushing spans at shutdown: {0}")]
    Shutdown(String),
}

/// Where finished spans go. The binaries fill it from the standard OpenTelemetry variables
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`) in their `main`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceExport {
    /// The collector's OTLP/gRPC endpoint (`http://otel-collector:4317`). `None` (or empty):
    /// nothing is exported, but every span still has a trace context, so `traceparent`
    /// headers are read and written all the same.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute of exported spans.
    pub service_name: String,
}

impl TraceExport {
    /// The endpoint spans go to, if any (blank counts as none).
    pub(crate) fn endpoint(&self) -> Option<&str> {
        self.otlp_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())
    }

    /// Whether spans leave the process.
    pub fn exports(&self) -> bool {
        self.endpoint().is_some()
    }
}

/// The installed telemetry. Keep it until the process ends and call
/// [`Telemetry::shutdown`] last, so the spans still buffered are exported.
#[derive(Debug)]
#[must_use = "call `shutdown` before exiting, or buffered spans are lost"]
pub struct Telemetry {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl Telemetry {
    /// Exports the buffered spans and stops the exporter. Blocks for as long as the export
    /// takes (bounded by the exporter's timeout), so call it from a blocking context
    /// (`tokio::task::spawn_blocking`), not from a task on the runtime's worker threads.
    pub fn shutdown(self) -> Result<(), TelemetryError> {
        self.provider
            .shutdown()
            .map_err(|e| TelemetryError::Shutdown(e.to_string()))
    }
}

/// Installs the global subscriber: log lines filtered by `filter` (`RUST_LOG` syntax, e.g.
/// `info,verify_service=debug`), and the OpenTelemetry layer, which records INFO and more
/// severe spans whatever the log filter says, so trace context propagates even when logs
/// are quiet. Sets the W3C TraceContext propagator as the global propagator.
///
/// With an OTLP endpoint this must run inside a Tokio runtime: the exporter's gRPC channel
/// lives on it.
pub fn init(
    format: LogFormat,
    filter: &str,
    export: &TraceExport,
) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_new(filter).map_err(|e| TelemetryError::Filter(e.to_string()))?;
    let provider = trace::provider(export)?;
    let spans = if export.exports() {
        trace::layer(&provider).boxed()
    } else {
        trace::context_layer(&provider).boxed()
    };
    let logs = match format {
        // Colours only on a terminal: a file or a log collector gets plain text.
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(Redacting(io::stdout))
            .with_ansi(io::stdout().is_terminal())
            .with_target(true)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(Redacting(io::stdout))
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .try_init()
        .map_err(|_| TelemetryError::AlreadySet)?;
    trace::install_globals(&provider);
    Ok(Telemetry { provider })
}

/// Wraps a writer factory so every line written through it is passed through [`redact`].
#[derive(Debug, Clone)]
pub struct Redacting<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter(self.0.make_writer())
    }
}

#[derive(Debug)]
pub struct RedactingWriter<W>(W);

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // tracing-subscriber writes each formatted event with one call, so whole values
        // are seen here; non-UTF-8 bytes pass through untouched.
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(redact(text).as_bytes())?,
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Masks E.164-shaped numbers (`+` and 8 to 15 digits) and email addresses in `text`.
/// Borrows `text` when there is nothing to mask (no `+` or `@` in it), which is most lines.
pub fn redact(text: &str) -> Cow<'_, str> {
    if !text.contains(['+', '@']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    // Byte index up to which the input was consumed by a mask.
    let mut skip_to = 0;
    for (i, c) in text.char_indices() {
        if i < skip_to {
            continue;
        }
        if c == '+' {
            let digits = text[i + 1..].bytes().take_while(u8::is_ascii_digit).count();
            if (8..=15).contains(&digits) {
                // `+` and ASCII digits: byte indices are char indices here.
                let number = &text[i..=i + digits];
                out.push_str(&number[..5]);
                out.push_str("***");
                out.push_str(&number[number.len() - 4..]);
                skip_to = i + digits + 1;
                continue;
            }
        }
        if c == '@' && mask_email_at(text, i, &mut out) {
            skip_to = i + 1;
            continue;
        }
        out.push(c);
    }
    if out == text {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(out)
    }
}

fn is_local_char(c: char) -> bool {
    c.is_alphanumeric() || "._%+-'".contains(c)
}

fn is_domain_char(c: char) -> bool {
    c.is_alphanumeric() || c == '.' || c == '-'
}

/// If an email address has its `@` at byte `at` of `text`, rewrites the local part already
/// copied to `out` as `x***@` and returns true.
fn mask_email_at(text: &str, at: usize, out: &mut String) -> bool {
    let local_len = text[..at]
        .chars()
        .rev()
        .take_while(|c| is_local_char(*c))
        .count();
    let domain_len = text[at + 1..]
        .chars()
        .take_while(|c| is_domain_char(*c))
        .map(char::len_utf8)
        .sum::<usize>();
    let domain = &text[at + 1..at + 1 + domain_len];
    if local_len == 0 || !domain.contains('.') || domain.starts_with('.') {
        return false;
    }
    let local_start = text[..at]
        .char_indices()
        .rev()
        .nth(local_len - 1)
        .map_or(0, |(i, _)| i);
    let local = &text[local_start..at];
    if local.starts_with('*') || local.ends_with("***") {
        return false;
    }
    let keep = local.chars().next();
    for _ in 0..local_len {
        out.pop();
    }
    out.extend(keep);
    out.push_str("***@");
    true
}

/// Resolves when the process is asked to stop (SIGTERM, as from systemd, Kubernetes or
/// docker, or Ctrl-C), so a service can finish its in-flight work and flush before exiting.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        assert_eq!(redact(input), expected, "{input}");
    }

    #[test]
    fn masks_numbers_and_addresses() {
        check("to=+14155552671 ok", "to=+1415***2671 ok");
        check("{\"to\":\"+442079460958\"}", "{\"to\":\"+4420***0958\"}");
        check("mail jane.doe@example.com now", "mail j***@example.com now");
        check("already +1415***2671", "already +1415***2671");
        check("masked j***@example.com", "masked j***@example.com");
        check("ünï jöhn.dœ@exämple.com ✓", "ünï j***@exämple.com ✓");
        check("@start and end@", "@start and end@");
        check(
            "long +1234567890123456 stays",
            "long +1234567890123456 stays",
        );
        check("+14155552671+14155552672", "+1415***2671+1415***2672");
    }

    #[test]
    fn borrows_what_needs_no_mask() {
        assert!(matches!(redact("plain line"), Cow::Borrowed(_)));
        assert!(matches!(redact("retry in +5 s"), Cow::Borrowed(_)));
        assert!(matches!(redact("to=+14155552671"), Cow::Owned(_)));
    }

    #[test]
    fn leaves_ids_and_hashes_alone() {
        check(
            "verification_id=ver_0190abcd00000000000000000000ffff",
            "verification_id=ver_0190abcd00000000000000000000ffff",
        );
        check("retry in +5 s, count 12", "retry in +5 s, count 12");
        check("user@localhost", "user@localhost");
    }

    #[test]
    fn writer_redacts_what_passes_through() {
        let mut buf = Vec::new();
        {
            let mut w = RedactingWriter(&mut buf);
            w.write_all(b"to=+14155552671\n").expect("write to vec");
        }
        assert_eq!(String::from_utf8_lossy(&buf), "to=+1415***2671\n");
    }
}
