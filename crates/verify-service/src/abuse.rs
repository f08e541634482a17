//! Abuse protection around the flows: the purpose's rate limits (in process, then shared
//! through the database) and fraud scoring (the pure `fraud` crate over signals kept in the
//! database), run before anything reaches the provider; approvals and the provider's own
//! verdicts fed back into scoring; metrics of all of it.
//!
//! Limit keys and counter keys never hold a raw destination: destinations appear as their
//! blind-index hash, identities as a keyed tag, numbers as their range at most.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::abuse::{
    Block, BlockAdded, CountQuery, Counts, LimitDecision, LimitRequest, Quota, RiskAssessment,
    RiskDecision, RiskStore,
};
use domain::ports::{ProviderError, StoreError};
use domain::{BlindIndexKey, Channel, Destination, DestinationHash, Verification};
use policy::PurposePolicy;
use tracing::{info, warn};

use crate::error::ServiceError;
use crate::metrics::Metrics;
use crate::service::StartInput;

/// What screening decided before a start is written: the in-process limits passed, the
/// keys the shared layer must still take (in the same transaction as the record, through
/// `VerificationStore::insert_limited`), and scoring's verdict with what it adds to the
/// counters and the blocks it imposes once the start passed every limit.
#[derive(Debug)]
pub struct Screened {
    limits: Vec<Named>,
    local: ratelimit::LocalVerdict,
    /// Scoring's verdict (`None` when scoring is off); a refusal is recorded as BLOCKED.
    pub risk: Option<RiskAssessment>,
    adds: Vec<domain::abuse::CountAdd>,
    blocks: Vec<Block>,
    country: String,
}

impl Screened {
    /// The keys the shared layer takes, with the write they guard.
    pub fn shared_limits(&self) -> &[LimitRequest] {
        self.local.forward()
    }
}

/// What screening decided before a check claims its attempt (see [`Screened`]).
#[derive(Debug)]
pub struct CheckScreened {
    limits: Vec<Named>,
    local: ratelimit::LocalVerdict,
}

impl CheckScreened {
    /// The keys the shared layer takes, with the claim they guard.
    pub fn shared_limits(&self) -> &[LimitRequest] {
        self.local.forward()
    }
}

/// Rate limits and fraud scoring, shared by every request of a process.
#[derive(Debug)]
pub struct AbuseGuard {
    limiter: ratelimit::Limiter,
    risk: Arc<dyn RiskStore>,
    fraud: fraud::FraudConfig,
    blind_index: BlindIndexKey,
    metrics: Arc<Metrics>,
    /// Destinations fraud scoring leaves alone, by blind index: the embedded sandbox's
    /// scenario numbers while it is the upstream.
    unscored: HashSet<DestinationHash>,
}

/// One limit of a purpose, named as QuotaFailure and the metrics name it.
#[derive(Debug)]
struct Named {
    name: &'static str,
    /// What the quota counts, completing "N per PERIOD …".
    what: &'static str,
    request: LimitRequest,
}

impl Named {
    /// Whether the limit is keyed by who asks (client IP, identity), not by where a code
    /// would go: the only send limits a start that scoring refuses takes from.
    fn sender(&self) -> bool {
        matches!(self.name, "send_per_client_ip" | "send_per_identity")
    }
}

impl AbuseGuard {
    pub fn new(
        limiter: ratelimit::Limiter,
        risk: Arc<dyn RiskStore>,
        fraud: fraud::FraudConfig,
        blind_index: BlindIndexKey,
        metrics: Arc<Metrics>,
    ) -> Self {
        AbuseGuard {
            limiter,
            risk,
            fraud,
            blind_index,
            metrics,
            unscored: HashSet::new(),
        }
    }

    /// Leaves starts to `destinations` unscored: no assessment, no counts, no blocks; their
    /// limits still apply. For the embedded sandbox's scenario numbers,
    /// a block of sequential numbers whose codes are never entered: scored, they would
    /// look like SMS pumping and soon block their range, the README's example number
    /// with it, though nothing is ever sent.
    #[must_use]
    pub fn leaving_unscored(mut self, destinations: impl IntoIterator<Item = Destination>) -> Self {
        let hashes: Vec<_> = destinations
            .into_iter()
            .map(|d| self.blind_index.hash(&d))
            .collect();
        self.unscored.extend(hashes);
        self
    }

    /// Runs the in-process limiter's eviction and reports its size.
    pub fn housekeeping(&self) {
        self.limiter.housekeeping();
        self.metrics.local_keys(self.limiter.local_keys());
    }

    fn identity_tag(&self, identity: &str) -> String {
        self.blind_index.tag("identity", identity)
    }

    /// The send limits of `policy` that apply to this start.
    fn send_limits(
        &self,
        policy: &PurposePolicy,
        input: &StartInput,
        hash: &DestinationHash,
    ) -> Vec<Named> {
        let limits = policy.limits();
        let purpose = policy.purpose();
        let mut out = Vec::new();
        let mut add = |name, what, quota: Option<Quota>, key: String| {
            if let Some(quota) = quota {
                out.push(Named {
                    name,
                    what,
                    request: LimitRequest {
                        key: format!("send:{purpose}:{key}"),
                        quota,
                    },
                });
            }
        };
        add(
            "send_per_destination",
            "sends to one destination",
            limits.send_per_destination,
            format!("to:{}", hash.as_str()),
        );
        if let Some(ip) = input.client_ip {
            add(
                "send_per_client_ip",
                "sends for one client IP address",
                limits.send_per_client_ip,
                format!("ip:{}", ratelimit::ip_key(ip)),
            );
        }
        if let Some(identity) = &input.identity {
            add(
                "send_per_identity",
                "sends for one identity",
                limits.send_per_identity,
                format!("id:{}", self.identity_tag(identity)),
            );
        }
        if let Some(phone) = input.to.phone() {
            add(
                "send_per_range",
                "sends to one range of numbers",
                limits.send_per_range,
                format!("range:{}", phone.range_prefix()),
            );
            if let Some(region) = phone.region() {
                add(
                    "send_per_country",
                    "sends to one country",
                    limits.send_per_country,
                    format!("cc:{region}"),
                );
            }
        }
        out
    }

    /// Screens a start before anything is written: its limits in this process, all of
    /// them or none (a refusal here takes from no other limit and never reaches the
    /// database), then scoring over the counters and blocks read in one go. The shared
    /// limits are taken with the record ([`AbuseGuard::started`]).
    pub async fn screen_start(
        &self,
        policy: &PurposePolicy,
        input: &StartInput,
        channel: Channel,
        hash: &DestinationHash,
        now: DateTime<Utc>,
    ) -> Result<Screened, ServiceError> {
        let limits = self.send_limits(policy, input, hash);
        let requests: Vec<LimitRequest> = limits.iter().map(|l| l.request.clone()).collect();
        let local = self.limiter.take_local(&requests, now);
        if let Some(verdict) = local.refused() {
            return Err(self.refusal(&limits, &verdict));
        }
        // When this replica has sent to the destination within its limit's window before,
        // it is a repeat for scoring too, even if the counters have not shown it yet.
        let repeat_destination = limits
            .iter()
            .zip(local.decisions())
            .find(|(l, _)| l.name == "send_per_destination")
            .map(|(l, d)| d.remaining + 1 < l.request.quota.limit());
        let subject = self.subject(input, channel);
        let country = subject
            .phone
            .as_ref()
            .and_then(|p| p.country)
            .map_or_else(|| "unknown".to_owned(), |c| c.as_str().to_owned());
        let (risk, adds, blocks) = match self.score(&subject, repeat_destination, now).await {
            Ok(scored) => scored,
            Err(e) => {
                // Nothing is written: the start takes from none of its limits.
                self.limiter.give_back(local);
                return Err(e);
            }
        };
        // A start scoring refuses sends nothing. It takes from its sender's limits, which
        // bound how often anyone may ask, but not from its destination's, range's or
        // country's: an attacker's refused starts would otherwise use up the sends of a
        // range's or a country's real users.
        let (limits, local) = if risk.as_ref().is_some_and(RiskAssessment::refuses) {
            let local = self.limiter.retain(local, |request| {
                limits
                    .iter()
                    .any(|l| l.sender() && l.request.key == request.key)
            });
            (limits.into_iter().filter(Named::sender).collect(), local)
        } else {
            (limits, local)
        };
        Ok(Screened {
            limits,
            local,
            risk,
            adds,
            blocks,
            country,
        })
    }

    /// After the record was written with the shared limits' `decisions` (those of
    /// [`Screened::shared_limits`], in order): refuses when a shared limit refused (the
    /// store then took none of them, and this process gives its own takes back);
    /// otherwise counts the attempt, imposes scoring's blocks, and returns the starts the
    /// limits still allow and scoring's verdict.
    pub async fn started(
        &self,
        screened: Screened,
        decisions: Vec<LimitDecision>,
        now: DateTime<Utc>,
    ) -> Result<(u32, Option<RiskAssessment>), ServiceError> {
        let verdict = self.limiter.settle(screened.local, decisions)?;
        if !verdict.allowed() {
            return Err(self.refusal(&screened.limits, &verdict));
        }
        self.risk.add_counts(&screened.adds, now).await?;
        for block in &screened.blocks {
            self.impose(block).await?;
        }
        if let Some(assessment) = &screened.risk {
            let country = screened.country.as_str();
            self.metrics.attempt(country);
            self.metrics
                .decision(assessment.decision.as_str(), country, assessment.shadow);
            for reason in &assessment.reasons {
                self.metrics
                    .reason(&reason.code, assessment.decision.as_str());
            }
            if assessment.decision != RiskDecision::Allow && assessment.shadow {
                info!(decision = %assessment.decision, score = assessment.score, reasons = %assessment.reason_codes(), "shadow mode: would refuse");
            }
        }
        Ok((verdict.remaining(), screened.risk))
    }

    /// Starts the limits allow now, without taking one (for an idempotent replay).
    pub async fn starts_left(
        &self,
        policy: &PurposePolicy,
        input: &StartInput,
        hash: &DestinationHash,
        now: DateTime<Utc>,
    ) -> Result<u32, ServiceError> {
        let limits = self.send_limits(policy, input, hash);
        if limits.is_empty() {
            return Ok(u32::MAX);
        }
        let requests: Vec<LimitRequest> = limits.iter().map(|l| l.request.clone()).collect();
        let decisions = self.limiter.peek(&requests, now).await?;
        Ok(decisions
            .iter()
            .map(|d| if d.allowed { d.remaining + 1 } else { 0 })
            .min()
            .unwrap_or(u32::MAX))
    }

    /// The error that answers a refusal of `verdict`, the decisions about `limits`.
    fn refusal(&self, limits: &[Named], verdict: &ratelimit::Verdict) -> ServiceError {
        let Some((index, refusal)) = verdict.first_refusal() else {
            return ServiceError::Store(StoreError::Unavailable(
                "a refusal without a refused limit".to_owned(),
            ));
        };
        let Some(limit) = limits.get(index) else {
            return ServiceError::Store(StoreError::Unavailable(
                "a refusal of an unknown limit".to_owned(),
            ));
        };
        self.metrics.limit_hit(limit.name, refusal.local);
        info!(limit = limit.name, "rate limit refused the request");
        ServiceError::RateLimited {
            limit: limit.name,
            description: format!("{}: at most {}", limit.what, limit.request.quota),
            retry_after: refusal.decision.retry_after,
        }
    }

    /// Screens a check before its attempt is claimed: the cooldown after a wrong code, and
    /// the check limit per identity (or per verification without one) in this process. The
    /// shared layer takes the limit with the claim ([`AbuseGuard::checked`]).
    pub async fn screen_check(
        &self,
        policy: &PurposePolicy,
        v: &Verification,
        now: DateTime<Utc>,
    ) -> Result<CheckScreened, ServiceError> {
        let limits = policy.limits();
        if let Some(request) = cooldown_request(policy, v) {
            let decision = self
                .limiter
                .peek(std::slice::from_ref(&request), now)
                .await?;
            if let Some(d) = decision.first()
                && !d.allowed
            {
                self.metrics.limit_hit("check_cooldown", false);
                return Err(ServiceError::RateLimited {
                    limit: "check_cooldown",
                    description: format!(
                        "after a wrong code the next check waits {} seconds",
                        limits.check_cooldown.as_secs()
                    ),
                    retry_after: d.retry_after,
                });
            }
        }
        let mut named = Vec::new();
        let quota = limits.check_per_identity.filter(|quota| {
            // Per verification, a limit at least as large as the verification's own
            // `max_checks` can never refuse (no verification is checked more often than
            // that), so it is not taken: no key in memory, no row in the store.
            v.identity().is_some() || quota.limit() < v.max_checks()
        });
        if let Some(quota) = quota {
            // The stored identity is its tag already (the one `send_per_identity` keys on).
            let key = match v.identity() {
                Some(identity) => format!("check:{}:id:{identity}", v.purpose()),
                None => format!("check:{}:ver:{}", v.purpose(), v.id()),
            };
            named.push(Named {
                name: "check_per_identity",
                what: "checks for one identity",
                request: LimitRequest { key, quota },
            });
        }
        if let Some(quota) = limits.check_per_destination {
            named.push(Named {
                name: "check_per_destination",
                what: "checks of the verifications to one destination",
                request: LimitRequest {
                    key: format!("check:{}:to:{}", v.purpose(), v.destination_hash().as_str()),
                    quota,
                },
            });
        }
        let requests: Vec<LimitRequest> = named.iter().map(|l| l.request.clone()).collect();
        let local = self.limiter.take_local(&requests, now);
        if let Some(verdict) = local.refused() {
            return Err(self.refusal(&named, &verdict));
        }
        Ok(CheckScreened {
            limits: named,
            local,
        })
    }

    /// After the claim was written with the shared limits' `decisions`: refuses when one
    /// refused (giving this process's takes back, as the store took none), else returns
    /// the checks the limit still allows.
    pub fn checked(
        &self,
        screened: CheckScreened,
        decisions: Vec<LimitDecision>,
    ) -> Result<u32, ServiceError> {
        let verdict = self.limiter.settle(screened.local, decisions)?;
        if !verdict.allowed() {
            return Err(self.refusal(&screened.limits, &verdict));
        }
        Ok(verdict.remaining())
    }

    /// After a wrong code: starts the verification's cooldown, if the purpose has one.
    pub async fn wrong_code(&self, policy: &PurposePolicy, v: &Verification, now: DateTime<Utc>) {
        let Some(request) = cooldown_request(policy, v) else {
            return;
        };
        if let Err(e) = self.limiter.take(std::slice::from_ref(&request), now).await {
            warn!(error = %e, "could not start the check cooldown");
        }
    }

    fn subject(&self, input: &StartInput, channel: Channel) -> fraud::Subject {
        let mut subject = fraud::Subject::new(channel, &input.to, &self.blind_index);
        subject.ip = input.client_ip.map(ratelimit::ip_key);
        subject.network = input.client_ip.map(fraud::network_of);
        subject.identity = input.identity.as_deref().map(|id| self.identity_tag(id));
        subject.step_up_completed = input.step_up_completed;
        subject
    }

    /// Scores a start: reads its signals and the blocks on it in one read and decides.
    /// Returns the verdict, the counts the attempt adds and the blocks it imposes, which
    /// [`AbuseGuard::started`] writes once the start passed its limits.
    #[allow(clippy::type_complexity)]
    async fn score(
        &self,
        subject: &fraud::Subject,
        repeat_destination: Option<bool>,
        now: DateTime<Utc>,
    ) -> Result<
        (
            Option<RiskAssessment>,
            Vec<domain::abuse::CountAdd>,
            Vec<Block>,
        ),
        ServiceError,
    > {
        if self.fraud.mode == fraud::Mode::Off || self.unscored.contains(&subject.destination) {
            return Ok((None, Vec::new(), Vec::new()));
        }
        let queries = fraud::queries(&self.fraud, subject, now);
        let targets = fraud::block_targets(subject);
        let (counts, blocks) = self.risk.read_signals(&queries, &targets, now).await?;
        let observed = fraud::Observed {
            counts,
            blocks,
            repeat_destination,
        };
        let outcome = fraud::assess(&self.fraud, subject, &observed, now);
        self.conversion_metrics(&queries, &observed.counts);
        Ok((outcome.assessment, outcome.adds, outcome.blocks))
    }

    /// The conversion rates scoring just read, per country and range, over the longest
    /// window it read them (the conversion window).
    fn conversion_metrics(&self, queries: &[CountQuery], counts: &[Counts]) {
        for (namespace, set) in [
            (
                "country:",
                Metrics::country_conversion as fn(&Metrics, &str, f64),
            ),
            ("prefix:", Metrics::range_conversion),
        ] {
            let widest = queries
                .iter()
                .zip(counts)
                .filter(|(q, _)| q.key.starts_with(namespace))
                .min_by_key(|(q, _)| q.since);
            if let Some((q, c)) = widest
                && c.attempts > 0
            {
                let rate = c.approved.min(c.attempts) as f64 / c.attempts as f64;
                set(&self.metrics, &q.key[namespace.len()..], rate);
            }
        }
    }

    async fn impose(&self, block: &Block) -> Result<(), StoreError> {
        let added = self.risk.add_block(block).await?;
        if added == BlockAdded::New {
            self.metrics.block_imposed(
                block.target.kind.as_str(),
                block.source.as_str(),
                &block.reason,
            );
            warn!(block = %block.target, reason = %block.reason, shadow = block.shadow, until = %block.expires_at, "block imposed");
        }
        Ok(())
    }

    /// Whether [`AbuseGuard::approved`] counts anything: scoring is on. When it is off, a
    /// check has no reason to open the destination.
    pub fn counts_approvals(&self) -> bool {
        self.fraud.mode != fraud::Mode::Off
    }

    /// Counts an approval for the destination's country and range, and for the client
    /// network its start came from, as `start` (the verification's risk assessment) kept it.
    pub async fn approved(
        &self,
        to: &Destination,
        channel: Channel,
        start: Option<&RiskAssessment>,
        now: DateTime<Utc>,
    ) {
        if !self.counts_approvals() {
            return;
        }
        if let Some(country) = to.phone().and_then(|p| p.region()) {
            self.metrics.approval(country.as_str());
        }
        let subject = fraud::Subject::new(channel, to, &self.blind_index);
        let adds = fraud::approved(&self.fraud, &subject, start);
        if let Err(e) = self.risk.add_counts(&adds, now).await {
            warn!(error = %e, "could not count the approval");
        }
    }

    /// Feeds a provider refusal back into scoring: Twilio's Fraud Guard (60410) blocks the
    /// range, a geo-permission refusal (60605, 21408) the country. Best effort: the
    /// refusal itself already reached the caller.
    pub async fn provider_refused(
        &self,
        e: &ProviderError,
        to: &Destination,
        channel: Channel,
        now: DateTime<Utc>,
    ) {
        let Some(code) = e.code else { return };
        let subject = fraud::Subject::new(channel, to, &self.blind_index);
        let Some(block) = fraud::provider_verdict(&self.fraud, code, &subject, now) else {
            return;
        };
        if let Err(err) = self.impose(&block).await {
            warn!(error = %err, "could not record the provider's verdict");
        }
    }
}

/// The cooldown of `v`'s checks, if its purpose has one: one check per cooldown, so after a
/// take (a wrong code) the next is allowed once the cooldown has passed.
fn cooldown_request(policy: &PurposePolicy, v: &Verification) -> Option<LimitRequest> {
    let cooldown = policy.limits().check_cooldown;
    if cooldown.is_zero() {
        return None;
    }
    Some(LimitRequest {
        key: format!("cooldown:{}", v.id()),
        quota: Quota::new(1, cooldown.max(Duration::from_secs(1))).ok()?,
    })
}
