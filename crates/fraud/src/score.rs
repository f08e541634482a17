//! The assessment of one start: which counters to read, what they and the rules say, the
//! decision, the blocks to impose and the counts the attempt adds.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use domain::abuse::{
    Block, BlockKind, BlockSource, BlockTarget, CountAdd, CountQuery, Counts, RiskAssessment,
    RiskDecision, RiskReason,
};
use domain::{DestinationHash, NumberType, Region};

use crate::config::{FraudConfig, Mode};
use crate::subject::Subject;

/// What the shared store holds about a subject: the sums of the counters
/// [`queries`] asked for, in the same order, and the blocks active on the targets
/// [`block_targets`] named (shadow ones included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// A missing count reads as zero.
    pub counts: Vec<Counts>,
    pub blocks: Vec<Block>,
    /// Whether something decided atomically across replicas (the per-destination rate
    /// limit) knows this destination was attempted just before. The destination's counter
    /// alone cannot tell concurrent attempts apart (each reads zero before any adds), which
    /// would count one destination as several new ones; `Some(true)` marks the attempt a
    /// repeat whatever the counter says. `None`: the counter decides.
    pub repeat_destination: Option<bool>,
}

/// What scoring made of a start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// `None` only when the mode is [`Mode::Off`]. The start must not be sent when
    /// [`RiskAssessment::refuses`].
    pub assessment: Option<RiskAssessment>,
    /// Blocks to impose (through `RiskStore::add_block`), whatever the send does.
    pub blocks: Vec<Block>,
    /// Counts to add for this attempt (through `RiskStore::add_counts` at `now`), whether
    /// or not it is sent, so shadow and enforce see the same counters.
    pub adds: Vec<CountAdd>,
}

/// The counter keys: short, namespaced, never a raw destination.
pub(crate) mod keys {
    use super::*;

    pub fn country(c: Region) -> String {
        format!("country:{c}")
    }

    pub fn prefix(p: &str) -> String {
        format!("prefix:{p}")
    }

    pub fn destination(h: &DestinationHash) -> String {
        format!("dest:{}", h.as_str())
    }

    pub fn ip_fan_out(ip: &str) -> String {
        format!("ipfan:{ip}")
    }

    pub fn network(network: &str) -> String {
        format!("net:{network}")
    }

    pub fn network_step_ups(network: &str) -> String {
        format!("netstep:{network}")
    }

    pub fn identity_fan_out(tag: &str) -> String {
        format!("idfan:{tag}")
    }

    pub fn sequential(tag: &str) -> String {
        format!("seq:{tag}")
    }
}

/// What each counter read is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// This destination's own attempts (and approvals) over the novelty window: zero
    /// attempts means the destination is new.
    Destination,
    PrefixVelocity,
    PrefixConversion,
    CountryConversion,
    Sequential,
    IpFanOut,
    NetworkConversion,
    /// Step-ups asked of the client network (attempts) and completed (approvals).
    NetworkStepUps,
    IdentityFanOut,
}

fn since(now: DateTime<Utc>, window: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(window)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn later(now: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The counters a subject's assessment reads, each with what it is for.
fn plan(config: &FraudConfig, subject: &Subject, now: DateTime<Utc>) -> Vec<(Slot, CountQuery)> {
    let query = |key: String, window: Duration| CountQuery {
        key,
        since: since(now, window),
    };
    let mut plan = vec![(
        Slot::Destination,
        query(
            keys::destination(&subject.destination),
            config.novelty_window(),
        ),
    )];
    if let Some(phone) = &subject.phone {
        if config.prefix_velocity.enabled() {
            plan.push((
                Slot::PrefixVelocity,
                query(
                    keys::prefix(&phone.range_prefix),
                    config.prefix_velocity.window,
                ),
            ));
        }
        if config.prefix_conversion.enabled() {
            plan.push((
                Slot::PrefixConversion,
                query(
                    keys::prefix(&phone.range_prefix),
                    config.prefix_conversion.window,
                ),
            ));
        }
        if let Some(country) = phone.country
            && config.country_conversion.enabled()
        {
            plan.push((
                Slot::CountryConversion,
                query(keys::country(country), config.country_conversion.window),
            ));
        }
        if config.sequential.enabled() {
            plan.push((
                Slot::Sequential,
                query(
                    keys::sequential(&phone.hundred_block_tag),
                    config.sequential.window,
                ),
            ));
        }
    }
    if let Some(ip) = &subject.ip
        && config.ip_fan_out.enabled()
    {
        plan.push((
            Slot::IpFanOut,
            query(keys::ip_fan_out(ip), config.ip_fan_out.window),
        ));
    }
    if let Some(network) = &subject.network
        && config.network_conversion.enabled()
    {
        plan.push((
            Slot::NetworkConversion,
            query(keys::network(network), config.network_conversion.window),
        ));
    }
    if let Some(network) = &subject.network
        && config.observes_step_ups()
    {
        plan.push((
            Slot::NetworkStepUps,
            query(
                keys::network_step_ups(network),
                config.network_step_ups.window,
            ),
        ));
    }
    if let Some(identity) = &subject.identity
        && config.identity_fan_out.enabled()
    {
        plan.push((
            Slot::IdentityFanOut,
            query(
                keys::identity_fan_out(identity),
                config.identity_fan_out.window,
            ),
        ));
    }
    plan
}

/// The counters to read for `subject`, in the order [`Observed::counts`] must answer them.
/// Empty when the mode is [`Mode::Off`].
pub fn queries(config: &FraudConfig, subject: &Subject, now: DateTime<Utc>) -> Vec<CountQuery> {
    if config.mode == Mode::Off {
        return Vec::new();
    }
    plan(config, subject, now)
        .into_iter()
        .map(|(_, q)| q)
        .collect()
}

/// The targets whose active blocks apply to `subject`: its destination, client IP and
/// network, range and country.
pub fn block_targets(subject: &Subject) -> Vec<BlockTarget> {
    let target = |kind, value: &str| BlockTarget {
        kind,
        value: value.to_owned(),
    };
    let mut targets = vec![target(BlockKind::Destination, subject.destination.as_str())];
    if let Some(ip) = &subject.ip {
        targets.push(target(BlockKind::Ip, ip));
    }
    if let Some(network) = &subject.network {
        targets.push(target(BlockKind::Ip, network));
    }
    if let Some(phone) = &subject.phone {
        targets.push(target(BlockKind::Prefix, &phone.range_prefix));
        if let Some(country) = phone.country {
            targets.push(target(BlockKind::Country, country.as_str()));
        }
    }
    targets
}

/// The counts an approved check adds: one approval to the destination's country, range
/// and own counter, and, by `start` (the [`RiskAssessment`] kept with the verification),
/// one to the network the start counted for: to its conversion when the start was
/// allowed, to its step-ups completed when it was a step-up scored in shadow mode. Empty
/// when the mode is [`Mode::Off`]. Only the channel-independent parts of `subject` are read
/// (destination, phone parts); the network is the start's, not the subject's.
pub fn approved(
    config: &FraudConfig,
    subject: &Subject,
    start: Option<&RiskAssessment>,
) -> Vec<CountAdd> {
    if config.mode == Mode::Off {
        return Vec::new();
    }
    let approval = |key| CountAdd {
        key,
        attempts: 0,
        approved: 1,
    };
    let mut adds = Vec::new();
    if let Some(phone) = &subject.phone {
        if let Some(country) = phone.country {
            adds.push(approval(keys::country(country)));
        }
        adds.push(approval(keys::prefix(&phone.range_prefix)));
    }
    if let Some(start) = start
        && let Some(network) = &start.network
    {
        match start.decision {
            RiskDecision::Allow => adds.push(approval(keys::network(network))),
            RiskDecision::StepUp if start.shadow && config.observes_step_ups() => {
                adds.push(approval(keys::network_step_ups(network)));
            }
            RiskDecision::StepUp | RiskDecision::Block => {}
        }
    }
    adds.push(approval(keys::destination(&subject.destination)));
    adds
}

/// How a finding takes part in the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Decides `block` outright: a denied country or number type, an active block.
    Rule,
    /// What the number is (its country, its type).
    Context,
    /// Behaviour of the number's range: grounds for blocking the range.
    Range,
    /// Fan-out from the client IP: grounds for blocking the IP.
    IpFanOut,
    /// Behaviour of the client's network: grounds for blocking the network.
    Network,
    /// Any other behaviour.
    Other,
}

#[derive(Debug)]
struct Finding {
    class: Class,
    reason: RiskReason,
}

/// How a reason names a number type.
fn type_name(t: NumberType) -> String {
    match t {
        NumberType::Voip => "VoIP".to_owned(),
        NumberType::Uan => "UAN".to_owned(),
        other => other.as_str().replace('_', " "),
    }
}

/// `10 minutes`, `hour`, `6 hours`: what follows "in the last" in a reason.
fn window_text(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        3600 => "hour".to_owned(),
        60 => "minute".to_owned(),
        s if s > 3600 && s.is_multiple_of(3600) => format!("{} hours", s / 3600),
        s if s > 60 && s.is_multiple_of(60) => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

/// How a reason names a block's target: never the destination or its hash.
fn target_text(target: &BlockTarget) -> String {
    match target.kind {
        BlockKind::Prefix => format!("range {}", target.value),
        BlockKind::Country => format!("country {}", target.value),
        BlockKind::Destination => "this destination".to_owned(),
        BlockKind::Ip if is_network(&target.value) => format!("network {}", target.value),
        BlockKind::Ip => "the client IP".to_owned(),
    }
}

/// Whether an IP block's value is a network of [`crate::network_of`] (an IPv6 /64 is one
/// subscriber's address, named like an IPv4 address).
fn is_network(value: &str) -> bool {
    value.ends_with("/24") || value.ends_with("/48")
}

fn active_block_code(kind: BlockKind) -> &'static str {
    match kind {
        BlockKind::Prefix => "BLOCKED_PREFIX",
        BlockKind::Country => "BLOCKED_COUNTRY",
        BlockKind::Destination => "BLOCKED_DESTINATION",
        BlockKind::Ip => "BLOCKED_IP",
    }
}

pub(crate) fn new_block(
    target: BlockTarget,
    reason: &str,
    detail: String,
    source: BlockSource,
    shadow: bool,
    now: DateTime<Utc>,
    duration: Duration,
) -> Block {
    Block {
        target,
        reason: reason.to_owned(),
        detail,
        source,
        shadow,
        created_at: now,
        expires_at: later(now, duration),
    }
}

/// Scores one start from what the store holds, `observed` answering [`queries`] and
/// [`block_targets`] for the same `subject` and `now`.
pub fn assess(
    config: &FraudConfig,
    subject: &Subject,
    observed: &Observed,
    now: DateTime<Utc>,
) -> Outcome {
    if config.mode == Mode::Off {
        return Outcome::default();
    }
    let shadow = config.mode == Mode::Shadow;
    let plan = plan(config, subject, now);
    let counts = |slot: Slot| {
        plan.iter()
            .position(|(s, _)| *s == slot)
            .and_then(|i| observed.counts.get(i))
            .copied()
            .unwrap_or_default()
    };
    let own = counts(Slot::Destination);
    let new_destination = own.attempts == 0 && observed.repeat_destination != Some(true);
    let fresh = u64::from(new_destination);

    let mut findings = Vec::new();
    let mut find = |class, code: &str, message: String, weight: u32| {
        if weight > 0 {
            findings.push(Finding {
                class,
                reason: RiskReason {
                    code: code.to_owned(),
                    message,
                    weight,
                },
            });
        }
    };
    let rule_weight = config.block_score.max(1);

    // Rules that decide outright.
    if let Some(phone) = &subject.phone {
        match phone.country {
            Some(c) if config.block_countries.contains(&c) => find(
                Class::Rule,
                "COUNTRY_BLOCKED",
                format!("country {c} is on the block list"),
                rule_weight,
            ),
            Some(c)
                if !config.allow_countries.is_empty() && !config.allow_countries.contains(&c) =>
            {
                find(
                    Class::Rule,
                    "COUNTRY_NOT_ALLOWED",
                    format!("country {c} is not on the allow list"),
                    rule_weight,
                )
            }
            None if !config.allow_countries.is_empty() => find(
                Class::Rule,
                "COUNTRY_NOT_ALLOWED",
                "the number belongs to no country, and only listed countries are allowed"
                    .to_owned(),
                rule_weight,
            ),
            _ => {}
        }
        if config.blocked_number_types.contains(&phone.number_type) {
            find(
                Class::Rule,
                "NUMBER_TYPE_BLOCKED",
                format!("{} numbers are blocked", type_name(phone.number_type)),
                rule_weight,
            );
        }
    }

    // Active blocks: in enforce mode only enforced ones, so that switching from shadow to
    // enforce does not suddenly enforce what shadow mode imposed; in shadow mode all, so
    // shadow decisions are the ones enforce would have made.
    let targets = block_targets(subject);
    let mut blocked: Vec<&BlockTarget> = Vec::new();
    for block in &observed.blocks {
        let counts_here = block.expires_at > now
            && targets.contains(&block.target)
            && (shadow || !block.shadow)
            && !blocked.contains(&&block.target);
        if !counts_here {
            continue;
        }
        blocked.push(&block.target);
        let detail = if block.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", block.detail)
        };
        find(
            Class::Rule,
            active_block_code(block.target.kind),
            format!(
                "{} is blocked by {} until {} ({}{detail}){}",
                target_text(&block.target),
                block.source.as_str(),
                block.expires_at.format("%Y-%m-%d %H:%M UTC"),
                block.reason,
                if block.shadow { " [shadow block]" } else { "" },
            ),
            rule_weight,
        );
    }

    // What the number is.
    if let Some(phone) = &subject.phone {
        match phone.country {
            Some(c) if config.high_risk_countries.contains(&c) => find(
                Class::Context,
                "HIGH_RISK_COUNTRY",
                format!("country {c} is on the high-risk list"),
                config.high_risk_country_weight,
            ),
            None => find(
                Class::Context,
                "UNKNOWN_COUNTRY",
                "the number belongs to no country (a satellite or international network number)"
                    .to_owned(),
                config.unknown_country_weight,
            ),
            Some(_) => {}
        }
        if config.risky_number_types.contains(&phone.number_type) {
            find(
                Class::Context,
                "RISKY_NUMBER_TYPE",
                format!(
                    "{} numbers are often used for abuse",
                    type_name(phone.number_type)
                ),
                config.risky_number_type_weight,
            );
        }
    }

    // Behaviour. Conversion is approvals over new destinations; a destination seen before
    // (a resend) is left out of its range's and country's figures while it is scored.
    let seen = u64::from(!new_destination);
    // New destinations tried and approved over a conversion signal's window, this one left
    // out.
    let converted = |slot: Slot| {
        let c = counts(slot);
        (
            c.attempts.saturating_sub(seen),
            c.approved.saturating_sub(own.approved),
        )
    };
    if let Some(phone) = &subject.phone {
        let range = &phone.range_prefix;
        let s = &config.prefix_velocity;
        let n = counts(Slot::PrefixVelocity).attempts + fresh;
        if let Some(t) = s.reached(n) {
            find(
                Class::Range,
                "PREFIX_VELOCITY",
                format!(
                    "range {range} got {n} new destinations in the last {} (threshold {})",
                    window_text(s.window),
                    t.at
                ),
                t.weight,
            );
        }
        let s = &config.prefix_conversion;
        let (tried, approved) = converted(Slot::PrefixConversion);
        if let Some(t) = s.reached(tried, approved) {
            find(
                Class::Range,
                "PREFIX_LOW_CONVERSION",
                format!(
                    "range {range} converted {approved} of {tried} new destinations in the last {} (under {}%)",
                    window_text(s.window),
                    t.below_percent
                ),
                t.weight,
            );
        }
        let s = &config.sequential;
        let n = counts(Slot::Sequential).attempts + fresh;
        if let Some(t) = s.reached(n) {
            find(
                Class::Range,
                "SEQUENTIAL_NUMBERS",
                format!(
                    "{n} new destinations in one block of 100 numbers in the last {} (threshold {})",
                    window_text(s.window),
                    t.at
                ),
                t.weight,
            );
        }
        let s = &config.country_conversion;
        if let Some(country) = phone.country {
            let (tried, approved) = converted(Slot::CountryConversion);
            if let Some(t) = s.reached(tried, approved) {
                find(
                    Class::Other,
                    "COUNTRY_LOW_CONVERSION",
                    format!(
                        "country {country} converted {approved} of {tried} new destinations in the last {} (under {}%)",
                        window_text(s.window),
                        t.below_percent
                    ),
                    t.weight,
                );
            }
        }
    }
    let s = &config.ip_fan_out;
    if subject.ip.is_some() {
        let n = counts(Slot::IpFanOut).attempts + fresh;
        if let Some(t) = s.reached(n) {
            find(
                Class::IpFanOut,
                "IP_FAN_OUT",
                format!(
                    "{n} new destinations from the client IP in the last {} (threshold {})",
                    window_text(s.window),
                    t.at
                ),
                t.weight,
            );
        }
    }
    let s = &config.network_conversion;
    if let Some(network) = &subject.network {
        let (tried, approved) = converted(Slot::NetworkConversion);
        if let Some(t) = s.reached(tried, approved) {
            find(
                Class::Network,
                "NETWORK_LOW_CONVERSION",
                format!(
                    "network {network} converted {approved} of {tried} new destinations in the last {} (under {}%)",
                    window_text(s.window),
                    t.below_percent
                ),
                t.weight,
            );
        }
    }
    let s = &config.network_step_ups;
    if let Some(network) = &subject.network {
        let c = counts(Slot::NetworkStepUps);
        if let Some(t) = s.reached(c.attempts, c.approved) {
            find(
                Class::Network,
                "NETWORK_STEP_UPS_IGNORED",
                format!(
                    "network {network} completed {} of {} step-ups asked in the last {} (under {}%)",
                    c.approved,
                    c.attempts,
                    window_text(s.window),
                    t.below_percent
                ),
                t.weight,
            );
        }
    }
    let s = &config.identity_fan_out;
    if subject.identity.is_some() {
        let n = counts(Slot::IdentityFanOut).attempts + fresh;
        if let Some(t) = s.reached(n) {
            find(
                Class::Other,
                "IDENTITY_FAN_OUT",
                format!(
                    "{n} new destinations for this identity in the last {} (threshold {})",
                    window_text(s.window),
                    t.at
                ),
                t.weight,
            );
        }
    }

    // The strongest first; equal weights keep the order above (rules first).
    findings.sort_by_key(|f| std::cmp::Reverse(f.reason.weight));
    let sum = |counted: &dyn Fn(Class) -> bool| {
        findings
            .iter()
            .filter(|f| counted(f.class))
            .fold(0u32, |acc, f| acc.saturating_add(f.reason.weight))
    };
    let score = sum(&|_| true);
    // What the number is may ask for a step-up but never blocks: a block needs behaviour.
    // (A block stops the sends whose approvals would show a range is fine after all; a
    // step-up lets users through and the evidence with them.)
    let behaviour = sum(&|c| !matches!(c, Class::Rule | Class::Context));
    let ruled = findings.iter().any(|f| f.class == Class::Rule);
    // What the score asks for; a completed step-up turns a step-up into an allow (never a
    // block).
    let decide = |score: u32, behaviour: u32| {
        let asked = if ruled || behaviour >= config.block_score {
            RiskDecision::Block
        } else if score >= config.step_up_score {
            RiskDecision::StepUp
        } else {
            RiskDecision::Allow
        };
        let waived = asked == RiskDecision::StepUp && subject.step_up_completed;
        (if waived { RiskDecision::Allow } else { asked }, waived)
    };
    let (decision, step_up_waived) = decide(score, behaviour);
    // A start refused only for its network's conversion says nothing about its range or
    // country (the network is what keeps failing), as a start refused for its range says
    // nothing about its network: it is counted for neither. Otherwise a network stepped up
    // for good would drag every range it tries down to a block, and the real users of
    // those ranges with it.
    let network_weight = sum(&|c| c == Class::Network);
    let for_the_network_only = decision != RiskDecision::Allow
        && decide(
            score.saturating_sub(network_weight),
            behaviour.saturating_sub(network_weight),
        )
        .0 == RiskDecision::Allow;
    let mut reasons: Vec<RiskReason> = findings.iter().map(|f| f.reason.clone()).collect();
    if step_up_waived {
        reasons.push(RiskReason {
            code: "STEP_UP_COMPLETED".to_owned(),
            message: "the caller completed a step-up check for this start, so no further step-up is asked"
                .to_owned(),
            weight: 0,
        });
    }

    // Auto-blocks: when behaviour reaches the block score, on the range when its behaviour
    // took part, on the IP when its fan-out did, and on the network when its conversion
    // did. A range and a network are blocked each on evidence that is not the other's: a
    // network that tries many ranges does not make each of them an attacked range (their
    // users would be refused long after the network is stopped), nor does a range under
    // attack make every network its users come from an attacker's. A target already blocked
    // (as counted above) is not blocked again.
    let mut blocks = Vec::new();
    if behaviour >= config.block_score {
        let without = |class: Class| behaviour.saturating_sub(sum(&|c| c == class));
        let mut impose = |target: BlockTarget, class: Class, evidence: u32| {
            let finding = findings.iter().find(|f| f.class == class);
            if let Some(f) = finding
                && evidence >= config.block_score
                && !blocked.contains(&&target)
            {
                blocks.push(new_block(
                    target,
                    &f.reason.code,
                    f.reason.message.clone(),
                    BlockSource::Scoring,
                    shadow,
                    now,
                    config.auto_block,
                ));
            }
        };
        if let Some(phone) = &subject.phone {
            impose(
                BlockTarget {
                    kind: BlockKind::Prefix,
                    value: phone.range_prefix.clone(),
                },
                Class::Range,
                without(Class::Network),
            );
        }
        if let Some(ip) = &subject.ip {
            impose(
                BlockTarget {
                    kind: BlockKind::Ip,
                    value: ip.clone(),
                },
                Class::IpFanOut,
                behaviour,
            );
        }
        if let Some(network) = &subject.network {
            impose(
                BlockTarget {
                    kind: BlockKind::Ip,
                    value: network.clone(),
                },
                Class::Network,
                without(Class::Range),
            );
        }
    }

    // The network is judged by what it did with the codes scoring let it have: a start
    // refused for its range or country gives its sender nothing to enter, and says nothing
    // about the network. Only a start allowed (sent, or what enforce would have sent) counts
    // for its conversion, and only such a start's approval. A step-up scored in shadow mode
    // is sent all the same: its approval counts as the step-up completed. The assessment
    // keeps the network for both, for [`approved`].
    let converts = new_destination && decision == RiskDecision::Allow;
    let shadow_step_up = shadow && decision == RiskDecision::StepUp && config.observes_step_ups();
    let mut adds = attempt_adds(
        subject,
        new_destination,
        !ruled && !for_the_network_only,
        subject.network.as_deref().filter(|_| converts),
    );
    adds.extend(step_up_adds(config, subject, decision));
    let network = subject
        .network
        .clone()
        .filter(|_| converts || shadow_step_up);
    Outcome {
        adds,
        assessment: Some(RiskAssessment {
            decision,
            score,
            reasons,
            shadow,
            network,
        }),
        blocks,
    }
}

/// What a scored attempt adds: one to its destination's counter and, when the destination
/// is new, one to each counter of new destinations (range and country when
/// `range_and_country`, hundred-block, IP, identity), refused or not, so shadow and enforce
/// count alike; and one to `network`'s, the network the start counts for (a new
/// destination scoring allowed).
///
/// A start a rule refused (an active block, a denied country or number type) adds nothing
/// to its range and country: while a range is blocked its users cannot approve, and
/// counting them would keep its conversion down and block it again the moment the block
/// ends, for ever, even when it was blocked by mistake. Nor does a start refused only for
/// its network.
fn attempt_adds(
    subject: &Subject,
    new_destination: bool,
    range_and_country: bool,
    network: Option<&str>,
) -> Vec<CountAdd> {
    let attempt = |key| CountAdd {
        key,
        attempts: 1,
        approved: 0,
    };
    let mut adds = vec![attempt(keys::destination(&subject.destination))];
    if !new_destination {
        return adds;
    }
    if let Some(phone) = &subject.phone {
        if range_and_country {
            if let Some(country) = phone.country {
                adds.push(attempt(keys::country(country)));
            }
            adds.push(attempt(keys::prefix(&phone.range_prefix)));
        }
        adds.push(attempt(keys::sequential(&phone.hundred_block_tag)));
    }
    if let Some(ip) = &subject.ip {
        adds.push(attempt(keys::ip_fan_out(ip)));
    }
    if let Some(network) = network {
        adds.push(attempt(keys::network(network)));
    }
    if let Some(identity) = &subject.identity {
        adds.push(attempt(keys::identity_fan_out(identity)));
    }
    adds
}

/// What a start adds to its client network's step-up counter: a step-up asked (an
/// attempt) when it is stepped up, in either mode; in enforce mode a step-up completed (an
/// approval) when its caller completed one for it. In shadow mode callers are asked
/// nothing: a shadow step-up's code entered counts as completed ([`approved`]).
fn step_up_adds(
    config: &FraudConfig,
    subject: &Subject,
    decision: RiskDecision,
) -> Option<CountAdd> {
    let network = subject.network.as_deref()?;
    if !config.observes_step_ups() {
        return None;
    }
    let (attempts, approved) = match decision {
        RiskDecision::StepUp => (1, 0),
        _ if subject.step_up_completed && config.mode == Mode::Enforce => (0, 1),
        _ => return None,
    };
    Some(CountAdd {
        key: keys::network_step_ups(network),
        attempts,
        approved,
    })
}

#[cfg(test)]
mod tests;
