//! Prometheus metrics of abuse protection, served as text at `/metrics`: fraud decisions
//! by decision, country and mode, their reasons, rate-limit refusals by limit, attempts and
//! approvals by country (conversion = approved / attempts), the windowed conversion rate of
//! the countries and ranges scoring looked at, blocks imposed, and the in-process limiter's
//! key count. Label values are bounded: countries are ISO codes, reasons and limits fixed
//! codes, and ranges are kept for the most recent [`MAX_RANGE_SERIES`] only. The listener
//! cuts off slow and numerous clients ([`LIMITS`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use http_listener::Limits;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The metrics listener's limits: scrapes are `GET`s without a body from a few Prometheus
/// servers, so 10 s for a request's headers (and for an idle keep-alive connection), 10 s
/// for a body, and 64 connections at once.
pub const LIMITS: Limits = Limits {
    header_timeout: Duration::from_secs(10),
    body_timeout: Duration::from_secs(10),
    max_connections: NonZeroUsize::new(64).expect("64 is not zero"),
};

/// Ranges with a conversion-rate series at once; the oldest series is dropped past it.
pub const MAX_RANGE_SERIES: usize = 500;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
    country: String,
    mode: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
    decision: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
    layer: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CountryLabels {
    country: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RangeLabels {
    range: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    kind: &'static str,
}

/// Where the store's own counts of its work come from, read at each scrape.
type StoreSource = Box<dyn Fn() -> Option<storage::StoreCounts> + Send + Sync>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BlockLabels {
    kind: &'static str,
    source: &'static str,
    reason: String,
}

/// The gateway's metrics. Cloning is not needed: hold it in an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    reasons: Family<ReasonLabels, Counter>,
    limits_hit: Family<LimitLabels, Counter>,
    attempts: Family<CountryLabels, Counter>,
    approvals: Family<CountryLabels, Counter>,
    country_conversion: Family<CountryLabels, Gauge<f64, AtomicU64>>,
    range_conversion: Family<RangeLabels, Gauge<f64, AtomicU64>>,
    ranges: Mutex<VecDeque<String>>,
    blocks: Family<BlockLabels, Counter>,
    local_keys: Gauge,
    outbox_dead_letters: Gauge,
    store_transactions: Family<StoreLabels, Counter>,
    store_commits: Counter,
    store_source: std::sync::OnceLock<Source>,
    store_seen: Mutex<storage::StoreCounts>,
}

/// The store's source of counts, named in `Debug` output only.
struct Source(StoreSource);

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreSource")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("verify");
        let m = Metrics {
            registry: Registry::default(),
            decisions: Family::default(),
            reasons: Family::default(),
            limits_hit: Family::default(),
            attempts: Family::default(),
            approvals: Family::default(),
            country_conversion: Family::default(),
            range_conversion: Family::default(),
            ranges: Mutex::new(VecDeque::new()),
            blocks: Family::default(),
            local_keys: Gauge::default(),
            outbox_dead_letters: Gauge::default(),
            store_transactions: Family::default(),
            store_commits: Counter::default(),
            store_source: std::sync::OnceLock::new(),
            store_seen: Mutex::new(storage::StoreCounts::default()),
        };
        registry.register(
            "fraud_decisions",
            "Starts scored, by decision, destination country and mode (enforce or shadow)",
            m.decisions.clone(),
        );
        registry.register(
            "fraud_reasons",
            "Reasons behind scored starts, by reason code and the decision they were part of",
            m.reasons.clone(),
        );
        registry.register(
            "rate_limit_refusals",
            "Requests refused by a rate limit, by limit and by the layer that refused",
            m.limits_hit.clone(),
        );
        registry.register(
            "send_attempts",
            "Scored starts by destination country (conversion = approvals / attempts)",
            m.attempts.clone(),
        );
        registry.register(
            "approvals",
            "Approved checks by destination country",
            m.approvals.clone(),
        );
        registry.register(
            "country_conversion_rate",
            "Approved / attempts over the scoring window, as last seen when scoring a start",
            m.country_conversion.clone(),
        );
        registry.register(
            "range_conversion_rate",
            "Approved / attempts over the scoring window per number range (the most recent ranges only)",
            m.range_conversion.clone(),
        );
        registry.register(
            "blocks_imposed",
            "Blocks imposed, by kind, source and reason",
            m.blocks.clone(),
        );
        registry.register(
            "rate_limit_local_keys",
            "Keys the in-process rate limiter holds",
            m.local_keys.clone(),
        );
        registry.register(
            "outbox_dead_letters",
            "Delivery reports set aside in the outbox, never to be published (given up after \
             their publishing attempts, or unreadable), as of the last housekeeping round",
            m.outbox_dead_letters.clone(),
        );
        registry.register(
            "store_transactions",
            "Transactions of the embedded store, by kind: read, or write (each atomic to its caller)",
            m.store_transactions.clone(),
        );
        registry.register(
            "store_commits",
            "Commits of the embedded store's writer (it commits concurrent writes together)",
            m.store_commits.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Records how many outbox rows are set aside now.
    pub fn set_outbox_dead_letters(&self, count: u64) {
        self.outbox_dead_letters
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Reads the store's counts of its work at every scrape (the embedded store counts
    /// them; `source` answers `None` where the database server does).
    pub fn watch_store(
        &self,
        source: impl Fn() -> Option<storage::StoreCounts> + Send + Sync + 'static,
    ) {
        let _ = self.store_source.set(Source(Box::new(source)));
    }

    /// Brings the store's counters up to what it reports now.
    fn sync_store(&self) {
        let Some(now) = self.store_source.get().and_then(|source| (source.0)()) else {
            return;
        };
        let Ok(mut seen) = self.store_seen.lock() else {
            return;
        };
        let read = now.reads.saturating_sub(seen.reads);
        let write = now.writes.saturating_sub(seen.writes);
        let commits = now.commits.saturating_sub(seen.commits);
        self.store_transactions
            .get_or_create(&StoreLabels { kind: "read" })
            .inc_by(read);
        self.store_transactions
            .get_or_create(&StoreLabels { kind: "write" })
            .inc_by(write);
        self.store_commits.inc_by(commits);
        *seen = now;
    }

    pub fn decision(&self, decision: &'static str, country: &str, shadow: bool) {
        self.decisions
            .get_or_create(&DecisionLabels {
                decision,
                country: country.to_owned(),
                mode: if shadow { "shadow" } else { "enforce" },
            })
            .inc();
    }

    pub fn reason(&self, reason: &str, decision: &'static str) {
        self.reasons
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
                decision,
            })
            .inc();
    }

    pub fn limit_hit(&self, limit: &'static str, local: bool) {
        self.limits_hit
            .get_or_create(&LimitLabels {
                limit,
                layer: if local { "local" } else { "shared" },
            })
            .inc();
    }

    pub fn attempt(&self, country: &str) {
        self.attempts
            .get_or_create(&CountryLabels {
                country: country.to_owned(),
            })
            .inc();
    }

    pub fn approval(&self, country: &str) {
        self.approvals
            .get_or_create(&CountryLabels {
                country: country.to_owned(),
            })
            .inc();
    }

    pub fn country_conversion(&self, country: &str, rate: f64) {
        self.country_conversion
            .get_or_create(&CountryLabels {
                country: country.to_owned(),
            })
            .set(rate);
    }

    /// Sets a range's conversion rate, dropping the oldest range's series past
    /// [`MAX_RANGE_SERIES`].
    pub fn range_conversion(&self, range: &str, rate: f64) {
        let labels = RangeLabels {
            range: range.to_owned(),
        };
        if let Ok(mut ranges) = self.ranges.lock()
            && !ranges.iter().any(|r| r == range)
        {
            ranges.push_back(range.to_owned());
            while ranges.len() > MAX_RANGE_SERIES {
                if let Some(old) = ranges.pop_front() {
                    self.range_conversion.remove(&RangeLabels { range: old });
                }
            }
        }
        self.range_conversion.get_or_create(&labels).set(rate);
    }

    pub fn block_imposed(&self, kind: &'static str, source: &'static str, reason: &str) {
        self.blocks
            .get_or_create(&BlockLabels {
                kind,
                source,
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn local_keys(&self, keys: usize) {
        self.local_keys.set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        self.sync_store();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` on `listener` within [`LIMITS`] until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: std::sync::Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_within(listener, metrics, LIMITS, shutdown).await
}

/// [`serve`] within other limits.
pub async fn serve_within(
    listener: TcpListener,
    metrics: std::sync::Arc<Metrics>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = std::sync::Arc::clone(&metrics);
            async move {
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    http_listener::serve(listener, app, limits, shutdown)
        .await
        .context("metrics server failed")
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding metrics on {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_decisions_and_bounds_ranges() {
        let m = Metrics::new();
        m.decision("block", "GB", false);
        m.reason("RANGE_LOW_CONVERSION", "block");
        m.limit_hit("send_per_destination", false);
        for i in 0..(MAX_RANGE_SERIES + 10) {
            m.range_conversion(&format!("+44{i:06}"), 0.5);
        }
        let text = m.encode();
        assert!(text.contains(
            r#"verify_fraud_decisions_total{decision="block",country="GB",mode="enforce"} 1"#
        ));
        assert!(text.contains(
            r#"verify_rate_limit_refusals_total{limit="send_per_destination",layer="shared"} 1"#
        ));
        assert!(text.contains("verify_outbox_dead_letters 0"), "{text}");
        m.set_outbox_dead_letters(3);
        assert!(m.encode().contains("verify_outbox_dead_letters 3"));
        let ranges = text
            .lines()
            .filter(|l| l.starts_with("verify_range_conversion_rate{"))
            .count();
        assert_eq!(ranges, MAX_RANGE_SERIES);
        assert!(
            !text.contains(r#"range="+44000000""#),
            "the oldest range was dropped"
        );
    }

    /// The listener on real sockets, with short deadlines and a cap of two connections:
    /// headers sent a byte at a time are cut off, connections beyond the cap wait for a
    /// place, scrapes go on being answered, and an idle connection does not hold up
    /// shutdown.
    #[tokio::test]
    async fn the_listener_cuts_off_slow_clients_and_caps_connections() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpStream;

        // Far longer than the deadlines: a connection still open then was not cut off.
        const CLOSED_WITHIN: Duration = Duration::from_secs(5);
        let limits = Limits {
            header_timeout: Duration::from_millis(500),
            body_timeout: Duration::from_millis(500),
            max_connections: NonZeroUsize::new(2).expect("not zero"),
        };
        let listener = bind("127.0.0.1:0".parse().expect("an address"))
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("bound");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_within(
            listener,
            std::sync::Arc::new(Metrics::new()),
            limits,
            async {
                let _ = stopped.await;
            },
        ));
        let scrape = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");

        // Headers a byte every 50 ms, without end: the server closes the connection.
        let slow = TcpStream::connect(addr).await.expect("accepted");
        let (mut read, mut write) = slow.into_split();
        let dribble = async {
            for byte in b"GET /metrics HTTP/1.1\r\n"
                .iter()
                .chain(&b"X-Slow: 1\r\n".repeat(16))
            {
                if write.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            std::future::pending::<()>().await;
        };
        let mut seen = Vec::new();
        tokio::time::timeout(CLOSED_WITHIN, async {
            tokio::select! {
                _ = read.read_to_end(&mut seen) => {}
                () = dribble => {}
            }
        })
        .await
        .expect("the server closed the slow connection");
        assert!(seen.is_empty(), "{}", String::from_utf8_lossy(&seen));

        // Two silent connections hold both places; a third waits until one goes.
        let first = TcpStream::connect(addr).await.expect("accepted");
        let _second = TcpStream::connect(addr).await.expect("accepted");
        let mut third = TcpStream::connect(addr).await.expect("in the backlog");
        third.write_all(scrape.as_bytes()).await.expect("sent");
        let mut byte = [0_u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), third.read(&mut byte))
                .await
                .is_err(),
            "a connection beyond the cap was served"
        );
        drop(first);
        let mut seen = Vec::new();
        tokio::time::timeout(CLOSED_WITHIN, third.read_to_end(&mut seen))
            .await
            .expect("the waiting connection is served")
            .expect("the answer is read");
        let seen = String::from_utf8_lossy(&seen);
        assert!(seen.starts_with("HTTP/1.1 200 "), "{seen}");
        assert!(seen.ends_with("# EOF\n"), "{seen}");

        // Shutdown does not wait for the silent connection still open.
        let _ = stop.send(());
        tokio::time::timeout(CLOSED_WITHIN, server)
            .await
            .expect("the server stops")
            .expect("the task joins")
            .expect("served without error");
    }
}
