//! The vocabulary of abuse protection: rate-limit quotas and the GCRA arithmetic every
//! limiter shares, risk assessments (what fraud scoring decided and why), blocks, the
//! windowed counters scoring reads, and the two ports that keep this state where every
//! replica shares it ([`RateLimitStore`], [`RiskStore`]).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::ports::StoreError;

/// `limit` events per `period`, enforced as a GCRA (generic cell rate algorithm): the
/// events may come in one burst of `limit`, after which one more is allowed every
/// `period / limit`. Periods are whole milliseconds, at most 31 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: u32,
    period_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("a quota is written `N/PERIOD` like `5/10m`, `100/1h` or `1000/1d`; got `{0}`")]
    Syntax(String),
    #[error("a quota's limit must be at least 1")]
    ZeroLimit,
    #[error("a quota's period must be between 1 second and 31 days")]
    Period,
    #[error("a quota may not allow more than one event per millisecond")]
    TooFine,
}

impl Quota {
    const MAX_PERIOD_MS: u64 = 31 * 24 * 3600 * 1000;

    pub fn new(limit: u32, period: Duration) -> Result<Self, QuotaError> {
        let period_ms = u64::try_from(period.as_millis()).map_err(|_| QuotaError::Period)?;
        if limit == 0 {
            return Err(QuotaError::ZeroLimit);
        }
        if !(1000..=Self::MAX_PERIOD_MS).contains(&period_ms) {
            return Err(QuotaError::Period);
        }
        if period_ms / u64::from(limit) == 0 {
            return Err(QuotaError::TooFine);
        }
        Ok(Quota { limit, period_ms })
    }

    /// Parses `N/PERIOD`, the period a number and a unit (`s`, `m`, `h`, `d`); a bare unit
    /// means one of it: `5/10m`, `3/m`, `10000/1d`.
    pub fn parse(raw: &str) -> Result<Self, QuotaError> {
        let syntax = || QuotaError::Syntax(raw.to_owned());
        let (limit, period) = raw.trim().split_once('/').ok_or_else(syntax)?;
        let limit: u32 = limit.trim().parse().map_err(|_| syntax())?;
        let period = period.trim();
        let unit_at = period
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(syntax)?;
        let (count, unit) = period.split_at(unit_at);
        let count: u64 = if count.is_empty() {
            1
        } else {
            count.parse().map_err(|_| syntax())?
        };
        let unit_secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(syntax()),
        };
        let secs = count.checked_mul(unit_secs).ok_or(QuotaError::Period)?;
        Quota::new(limit, Duration::from_secs(secs))
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }

    pub fn period_ms(&self) -> i64 {
        // At most 31 days of milliseconds: fits.
        i64::try_from(self.period_ms).unwrap_or(i64::MAX)
    }

    /// The time one event uses up: `period / limit`, in whole milliseconds.
    pub fn emission_interval_ms(&self) -> i64 {
        self.period_ms() / i64::from(self.limit)
    }
}

impl fmt::Display for Quota {
    /// `3 per 10 minutes`: how a reason names the limit.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.period_ms / 1000;
        let (n, unit) = if secs.is_multiple_of(86_400) {
            (secs / 86_400, "day")
        } else if secs.is_multiple_of(3600) {
            (secs / 3600, "hour")
        } else if secs.is_multiple_of(60) {
            (secs / 60, "minute")
        } else {
            (secs, "second")
        };
        if n == 1 {
            write!(f, "{} per {unit}", self.limit)
        } else {
            write!(f, "{} per {n} {unit}s", self.limit)
        }
    }
}

/// One limit to apply: the key names what is counted (`send:login:ip:203.0.113.0`), and is
/// never a raw destination (destinations appear as their blind-index hash).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitRequest {
    pub key: String,
    pub quota: Quota,
}

/// A limiter's answer for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitDecision {
    pub allowed: bool,
    /// Events still allowed right after this one (0 when refused).
    pub remaining: u32,
    /// When refused, how long until one event would be allowed; zero when allowed.
    pub retry_after: Duration,
}

/// The GCRA step every limiter shares, in milliseconds since any fixed epoch.
///
/// `tat` is the key's stored theoretical arrival time (`None` for a key never seen, which
/// behaves like a `tat` at or before `now`). Taking one event computes
/// `new_tat = max(tat, now) + interval`; it is allowed when `new_tat - now <= period`, and
/// then `new_tat` is what the limiter stores. A refused event stores nothing. Returns the
/// decision and, when allowed, the `tat` to store.
///
/// A key whose stored `tat` is at or before `now` holds no information, so limiters may
/// forget such keys at any time.
pub fn gcra(tat: Option<i64>, now: i64, quota: &Quota) -> (LimitDecision, Option<i64>) {
    let interval = quota.emission_interval_ms();
    let period = quota.period_ms();
    let base = tat.map_or(now, |t| t.max(now));
    let new_tat = base.saturating_add(interval);
    let used = new_tat - now;
    if used <= period {
        let remaining = u32::try_from((period - used) / interval).unwrap_or(u32::MAX);
        (
            LimitDecision {
                allowed: true,
                remaining,
                retry_after: Duration::ZERO,
            },
            Some(new_tat),
        )
    } else {
        let wait = u64::try_from(used - period).unwrap_or(0);
        (
            LimitDecision {
                allowed: false,
                remaining: 0,
                retry_after: Duration::from_millis(wait),
            },
            None,
        )
    }
}

/// The shared limiter: GCRA state per key in the database, so every replica enforces one
/// limit. Each key is updated in one atomic statement (no read-modify-write race between
/// replicas); the keys of one call are independent of each other.
#[async_trait]
pub trait RateLimitStore: Send + Sync + fmt::Debug {
    /// Takes one event from each key, exactly as [`gcra`] says, and returns the decisions in
    /// the order of `requests`. `now` is the caller's clock (every replica's clock is
    /// assumed close; a skew of a few milliseconds shifts a limit by as much).
    async fn take(
        &self,
        requests: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Vec<LimitDecision>, StoreError>;

    /// What [`RateLimitStore::take`] would answer, without taking anything.
    async fn peek(
        &self,
        requests: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Vec<LimitDecision>, StoreError>;

    /// Forgets keys whose `tat` is at or before `now` (they hold no information); returns
    /// how many.
    async fn purge_limits(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// What fraud scoring decided about a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RiskDecision {
    /// Send.
    Allow,
    /// Do not send until the caller has verified the user with a stronger check (a captcha,
    /// TOTP) and starts again saying so.
    StepUp,
    /// Do not send.
    Block,
}

impl RiskDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            RiskDecision::Allow => "allow",
            RiskDecision::StepUp => "step_up",
            RiskDecision::Block => "block",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            RiskDecision::Allow,
            RiskDecision::StepUp,
            RiskDecision::Block,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
    }
}

impl fmt::Display for RiskDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason behind a risk score: a stable code for programs and dashboards
/// (`PREMIUM_RATE_NUMBER`), a sentence a support engineer can read, and what it added to
/// the score. Neither ever holds a destination: numbers appear as their country or range
/// prefix at most.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RiskReason {
    pub code: String,
    pub message: String,
    pub weight: u32,
}

/// Fraud scoring's verdict on one start, kept with the verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskAssessment {
    pub decision: RiskDecision,
    /// 0 (no risk seen) and up; the decision compares it with configured thresholds, or a
    /// rule decides outright.
    pub score: u32,
    /// The strongest first.
    pub reasons: Vec<RiskReason>,
    /// Scored in shadow mode: recorded, not enforced.
    pub shadow: bool,
    /// The client network the start came from as scoring judged it (`203.0.113.0/24`,
    /// `2001:db8:1::/48`), kept so that an approval of the verification counts for that
    /// network: for its conversion when the start was allowed as a new destination, for
    /// its step-ups completed when the start was a shadow step-up. `None` when the caller
    /// gave no client IP, or the start counts for neither.
    pub network: Option<String>,
}

impl RiskAssessment {
    /// The reasons' codes, strongest first, comma-separated: how logs and error metadata
    /// name them.
    pub fn reason_codes(&self) -> String {
        self.reasons
            .iter()
            .map(|r| r.code.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether the start must not be sent: a step-up or block that is enforced.
    pub fn refuses(&self) -> bool {
        !self.shadow && self.decision != RiskDecision::Allow
    }
}

/// What a block applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockKind {
    /// A range of numbers: the E.164 prefix of [`PhoneNumber::range_prefix`](crate::PhoneNumber::range_prefix).
    Prefix,
    /// A country, by ISO 3166-1 alpha-2 code.
    Country,
    /// One destination, by its blind-index hash (hex).
    Destination,
    /// A client IP address (IPv6 addresses by their /64 network), or a network of them: an
    /// IPv4 /24 (`203.0.113.0/24`), an IPv6 /48 (`2001:db8:1::/48`).
    Ip,
}

impl BlockKind {
    pub const ALL: [BlockKind; 4] = [
        BlockKind::Prefix,
        BlockKind::Country,
        BlockKind::Destination,
        BlockKind::Ip,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BlockKind::Prefix => "prefix",
            BlockKind::Country => "country",
            BlockKind::Destination => "destination",
            BlockKind::Ip => "ip",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for BlockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is blocked: a kind and its value in canonical form (`+4479111`, `GB`, a hash,
/// `203.0.113.7` or `2001:db8:1:2::/64`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockTarget {
    pub kind: BlockKind,
    pub value: String,
}

impl fmt::Display for BlockTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.value)
    }
}

/// Who imposed a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockSource {
    /// The gateway's fraud scoring.
    Scoring,
    /// The provider's own verdict fed back (Twilio 60410 Fraud Guard, 60605 geo permission).
    Provider,
    /// An operator, through the admin API.
    Operator,
}

impl BlockSource {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockSource::Scoring => "scoring",
            BlockSource::Provider => "provider",
            BlockSource::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            BlockSource::Scoring,
            BlockSource::Provider,
            BlockSource::Operator,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A block on sends to (or from) a target until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub target: BlockTarget,
    /// The code of the reason that imposed it (`PREFIX_LOW_CONVERSION`, `TWILIO_60410`).
    pub reason: String,
    /// A sentence a support engineer can read; never a destination.
    pub detail: String,
    pub source: BlockSource,
    /// Imposed by scoring in shadow mode: listed and reported, never enforced.
    pub shadow: bool,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// What [`RiskStore::add_block`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockAdded {
    /// No block was active on the target; this one is.
    New,
    /// A block was active on the target: it now ends at the later of the two ends (its
    /// reason, source and start stay those of the first).
    Extended,
    /// An operator lifted a block on the target less than the new block's duration ago: a
    /// [`BlockSource::Scoring`] block is not imposed again until then (the operator judged
    /// the target legitimate, and the counters that caused the block still say otherwise).
    /// Provider and operator blocks are never refused this way.
    Exempt,
}

/// Counts added to a windowed counter at one time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountAdd {
    /// What is counted (`country:GB`, `prefix:+4479111`, `ipfan:203.0.113.7`); never a raw
    /// destination.
    pub key: String,
    pub attempts: u32,
    pub approved: u32,
}

/// One store write of a replica's buffered counters: the replica (an id it chose when it
/// started) and the write's number, from 1 up, one per write, written in that order. The
/// store keeps each replica's last number beside the counters, so a read can tell which of
/// the writes still in flight it already sees (see [`RiskStore::read_signals_marked`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushMark {
    pub replica: String,
    pub seq: u64,
}

/// What [`RiskStore::read_signals_marked`] reads from one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Signals {
    /// The sums of each query, in the order of the queries.
    pub counts: Vec<Counts>,
    /// The blocks active on the targets.
    pub blocks: Vec<Block>,
    /// The number of the replica's last write of counters ([`FlushMark::seq`]); 0 when it
    /// has none.
    pub flushed: u64,
}

/// A windowed counter to read: its sums over the buckets from `since` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountQuery {
    pub key: String,
    pub since: DateTime<Utc>,
}

/// A counter's sums over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub attempts: u64,
    pub approved: u64,
}

/// How long one counter bucket lasts: counts are kept per key per minute, and a window
/// sums whole minutes (a window from `since` includes the minute `since` falls in).
pub const COUNTER_BUCKET: Duration = Duration::from_secs(60);

/// The state fraud scoring shares between replicas: windowed counters and blocks.
#[async_trait]
pub trait RiskStore: Send + Sync + fmt::Debug {
    /// Adds to the counters of the minute `now` falls in, each key atomically (concurrent
    /// adds from any replica all count).
    async fn add_counts(&self, adds: &[CountAdd], now: DateTime<Utc>) -> Result<(), StoreError>;

    /// The sums of each counter over its window, in the order of `queries`; a counter never
    /// added to sums to zero.
    async fn read_counts(&self, queries: &[CountQuery]) -> Result<Vec<Counts>, StoreError>;

    /// Deletes counter buckets that ended before `older_than`; returns how many.
    async fn purge_counts(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Imposes `block` (see [`BlockAdded`] for when a block is active on its target
    /// already, or was lifted recently). `block.created_at` is now.
    async fn add_block(&self, block: &Block) -> Result<BlockAdded, StoreError>;

    /// The blocks active at `now` (not expired, not lifted) on any of `targets`, shadow
    /// ones included.
    async fn active_blocks(
        &self,
        targets: &[BlockTarget],
        now: DateTime<Utc>,
    ) -> Result<Vec<Block>, StoreError>;

    /// What scoring one start reads, together: [`RiskStore::read_counts`] of `queries`
    /// and [`RiskStore::active_blocks`] on `targets` at `now`. A store that can answer both
    /// in one round trip does.
    async fn read_signals(
        &self,
        queries: &[CountQuery],
        targets: &[BlockTarget],
        now: DateTime<Utc>,
    ) -> Result<(Vec<Counts>, Vec<Block>), StoreError> {
        let counts = self.read_counts(queries).await?;
        let blocks = self.active_blocks(targets, now).await?;
        Ok((counts, blocks))
    }

    /// [`RiskStore::add_counts`], and in the same transaction `mark` as its replica's last
    /// write. `mark.seq` only grows per replica.
    async fn add_counts_marked(
        &self,
        adds: &[CountAdd],
        now: DateTime<Utc>,
        mark: &FlushMark,
    ) -> Result<(), StoreError>;

    /// [`RiskStore::read_signals`], and from the same snapshot the number of `replica`'s
    /// last write of counters ([`RiskStore::add_counts_marked`]).
    async fn read_signals_marked(
        &self,
        queries: &[CountQuery],
        targets: &[BlockTarget],
        now: DateTime<Utc>,
        replica: &str,
    ) -> Result<Signals, StoreError>;

    /// Up to `limit` blocks active at `now`, of one kind or all, newest first.
    async fn list_blocks(
        &self,
        kind: Option<BlockKind>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Block>, StoreError>;

    /// Deletes the blocks that ended, and were lifted if at all, before `older_than`;
    /// returns how many. Keep blocks at least as long as scoring's own blocks last, so an
    /// operator's lift still exempts its target ([`BlockAdded::Exempt`]).
    async fn purge_blocks(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Lifts the active block on `target` at `now`; returns whether there was one.
    async fn lift_block(
        &self,
        target: &BlockTarget,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(raw: &str) -> Quota {
        Quota::parse(raw).expect("quota")
    }

    #[test]
    fn parses_quotas() {
        assert_eq!(q("5/10m").limit(), 5);
        assert_eq!(q("5/10m").period(), Duration::from_secs(600));
        assert_eq!(q("3/m").period(), Duration::from_secs(60));
        assert_eq!(q(" 10000 / 1d ").period(), Duration::from_secs(86_400));
        assert_eq!(q("5/10m").to_string(), "5 per 10 minutes");
        assert_eq!(q("1/d").to_string(), "1 per day");
        assert_eq!(q("7/90s").to_string(), "7 per 90 seconds");
        for bad in [
            "", "5", "/10m", "5/", "5/10", "5/10y", "-1/1m", "x/1m", "5/m10",
        ] {
            assert!(Quota::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Quota::parse("0/1m"), Err(QuotaError::ZeroLimit));
        assert_eq!(Quota::parse("1/0s"), Err(QuotaError::Period));
        assert_eq!(Quota::parse("1/32d"), Err(QuotaError::Period));
        assert_eq!(Quota::parse("2000/1s"), Err(QuotaError::TooFine));
    }

    #[test]
    fn gcra_allows_a_burst_of_limit_then_one_per_interval() {
        let quota = q("3/10m");
        let mut tat = None;
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let (d, new) = gcra(tat, 0, &quota);
            assert!(d.allowed);
            remaining.push(d.remaining);
            tat = new;
        }
        assert_eq!(remaining, [2, 1, 0]);
        let (refused, none) = gcra(tat, 0, &quota);
        assert!(!refused.allowed);
        assert_eq!(none, None);
        assert_eq!(refused.retry_after, Duration::from_secs(200));
        // One interval later one more event is allowed, and only one.
        let (d, new) = gcra(tat, 200_000, &quota);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(!gcra(new, 200_000, &quota).0.allowed);
        // A full period later the whole burst is back.
        assert_eq!(gcra(new, 800_000, &quota).0.remaining, 2);
    }

    #[test]
    fn decisions_parse_back() {
        for d in [
            RiskDecision::Allow,
            RiskDecision::StepUp,
            RiskDecision::Block,
        ] {
            assert_eq!(RiskDecision::parse(d.as_str()), Some(d));
        }
        for k in BlockKind::ALL {
            assert_eq!(BlockKind::parse(k.as_str()), Some(k));
        }
        let refused = RiskAssessment {
            decision: RiskDecision::Block,
            score: 100,
            reasons: vec![],
            shadow: false,
            network: None,
        };
        assert!(refused.refuses());
        assert!(
            !RiskAssessment {
                shadow: true,
                ..refused
            }
            .refuses()
        );
    }
}
