use chrono::TimeZone;
use domain::{BlindIndexKey, Channel, Destination, Email, PhoneNumber};

use super::*;
use crate::subject::PhoneSubject;
use crate::{FRAUD_GUARD, MESSAGING_GEO_PERMISSION, VERIFY_GEO_PERMISSION, provider_verdict};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const IP: &str = "203.0.113.7";
const NETWORK: &str = "203.0.113.0/24";
const IDENTITY: &str = "0123456789abcdef0123456789abcdef";

fn key() -> BlindIndexKey {
    BlindIndexKey::new([9; 32])
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 30)
        .single()
        .expect("a valid time")
}

fn number(raw: &str) -> PhoneNumber {
    PhoneNumber::parse(raw, None).expect("a valid number")
}

/// A start by SMS to `raw`, from [`IP`], for [`IDENTITY`].
fn sms(raw: &str) -> Subject {
    let mut s = Subject::new(Channel::Sms, &Destination::Phone(number(raw)), &key());
    s.ip = Some(IP.to_owned());
    s.network = Some(NETWORK.to_owned());
    s.identity = Some(IDENTITY.to_owned());
    s
}

fn email(raw: &str) -> Subject {
    let mut s = Subject::new(
        Channel::Email,
        &Destination::Email(Email::parse(raw).expect("a valid email")),
        &key(),
    );
    s.ip = Some(IP.to_owned());
    s.network = Some(NETWORK.to_owned());
    s.identity = Some(IDENTITY.to_owned());
    s
}

fn gb() -> Subject {
    sms("+447400123456")
}

fn region(code: &str) -> Region {
    Region::parse(code).expect("a region")
}

/// What the store would answer: `answer(namespace, window)` gives `(attempts, approved)`
/// for each query (namespace is the key before `:`, window is `now - since`).
fn observe(
    config: &FraudConfig,
    subject: &Subject,
    answer: impl Fn(&str, Duration) -> (u64, u64),
) -> Observed {
    let counts = queries(config, subject, now())
        .iter()
        .map(|q| {
            let ns = q.key.split(':').next().unwrap_or_default();
            let window = (now() - q.since).to_std().expect("a past since");
            let (attempts, approved) = answer(ns, window);
            Counts { attempts, approved }
        })
        .collect();
    Observed {
        counts,
        blocks: Vec::new(),
        repeat_destination: None,
    }
}

/// Nothing seen before.
fn quiet(config: &FraudConfig, subject: &Subject) -> Observed {
    observe(config, subject, |_, _| (0, 0))
}

fn assessment(outcome: &Outcome) -> &RiskAssessment {
    outcome.assessment.as_ref().expect("an assessment")
}

fn codes(outcome: &Outcome) -> Vec<&str> {
    assessment(outcome)
        .reasons
        .iter()
        .map(|r| r.code.as_str())
        .collect()
}

/// Assesses `subject` with the default configuration edited by `edit`, and checks the
/// decision, score and reason codes.
fn check(
    edit: impl Fn(&mut FraudConfig),
    subject: &Subject,
    answer: impl Fn(&str, Duration) -> (u64, u64),
    expected: (RiskDecision, u32, &[&str]),
) -> Outcome {
    let mut config = FraudConfig::default();
    edit(&mut config);
    let observed = observe(&config, subject, answer);
    let outcome = assess(&config, subject, &observed, now());
    let a = assessment(&outcome);
    assert_eq!(
        (a.decision, a.score, codes(&outcome).as_slice()),
        expected,
        "{:#?}",
        a.reasons
    );
    outcome
}

fn defaults(_: &mut FraudConfig) {}

fn block(kind: BlockKind, value: &str, shadow: bool, expires_in: Duration) -> Block {
    new_block(
        BlockTarget {
            kind,
            value: value.to_owned(),
        },
        "PREFIX_LOW_CONVERSION",
        "range +4474001 converted 0 of 12 codes sent in the last 6 hours (minimum 10%)".into(),
        BlockSource::Scoring,
        shadow,
        now() - TimeDelta::hours(1),
        expires_in + HOUR,
    )
}

#[test]
fn queries_and_adds_have_the_documented_shape() {
    let config = FraudConfig::default();
    let subject = gb();
    let hash = subject.destination.as_str().to_owned();
    let tag = subject
        .phone
        .as_ref()
        .expect("phone")
        .hundred_block_tag
        .clone();
    let got: Vec<(String, Duration)> = queries(&config, &subject, now())
        .into_iter()
        .map(|q| (q.key, (now() - q.since).to_std().expect("past")))
        .collect();
    let expected = [
        (format!("dest:{hash}"), HOUR),
        ("prefix:+4474001".to_owned(), 10 * MINUTE),
        ("prefix:+4474001".to_owned(), 6 * HOUR),
        ("country:GB".to_owned(), HOUR),
        (format!("seq:{tag}"), HOUR),
        (format!("ipfan:{IP}"), HOUR),
        (format!("net:{NETWORK}"), 6 * HOUR),
        (format!("netstep:{NETWORK}"), 24 * HOUR),
        (format!("idfan:{IDENTITY}"), HOUR),
    ];
    assert_eq!(got, expected);

    let adds = |outcome: Outcome| -> Vec<(String, u32, u32)> {
        outcome
            .adds
            .into_iter()
            .map(|a| (a.key, a.attempts, a.approved))
            .collect()
    };
    let new = assess(&config, &subject, &quiet(&config, &subject), now());
    let allowed = new.assessment.clone();
    assert_eq!(
        adds(new),
        [
            (format!("dest:{hash}"), 1, 0),
            ("country:GB".to_owned(), 1, 0),
            ("prefix:+4474001".to_owned(), 1, 0),
            (format!("seq:{tag}"), 1, 0),
            (format!("ipfan:{IP}"), 1, 0),
            (format!("net:{NETWORK}"), 1, 0),
            (format!("idfan:{IDENTITY}"), 1, 0),
        ],
        "a new destination adds to every counter"
    );
    let seen = observe(&config, &subject, |ns, _| {
        if ns == "dest" { (1, 0) } else { (0, 0) }
    });
    assert_eq!(
        adds(assess(&config, &subject, &seen, now())),
        [(format!("dest:{hash}"), 1, 0)],
        "a destination seen in the window is not new anywhere"
    );
    // A concurrent repeat reads a zero counter; the atomic limit's word makes it a repeat.
    let mut concurrent = quiet(&config, &subject);
    concurrent.repeat_destination = Some(true);
    assert_eq!(
        adds(assess(&config, &subject, &concurrent, now())),
        [(format!("dest:{hash}"), 1, 0)],
        "a repeat by the limiter's word is not new anywhere"
    );
    concurrent.repeat_destination = Some(false);
    assert_eq!(
        adds(assess(&config, &subject, &concurrent, now())).len(),
        7,
        "Some(false) leaves the counter's word"
    );
    // A start a rule refuses adds nothing to its range, country and network.
    let mut blocked = quiet(&config, &subject);
    blocked.blocks = vec![block(BlockKind::Prefix, "+4474001", false, HOUR)];
    assert_eq!(
        adds(assess(&config, &subject, &blocked, now())),
        [
            (format!("dest:{hash}"), 1, 0),
            (format!("seq:{tag}"), 1, 0),
            (format!("ipfan:{IP}"), 1, 0),
            (format!("idfan:{IDENTITY}"), 1, 0),
        ],
    );
    let blocked = assess(&config, &subject, &blocked, now()).assessment;
    assert_eq!(
        approved(&config, &subject, blocked.as_ref()).len(),
        3,
        "a start that did not count for its network does not count its approval there"
    );
    assert_eq!(
        approved(&config, &subject, allowed.as_ref()),
        [
            CountAdd {
                key: "country:GB".into(),
                attempts: 0,
                approved: 1
            },
            CountAdd {
                key: "prefix:+4474001".into(),
                attempts: 0,
                approved: 1
            },
            CountAdd {
                key: format!("net:{NETWORK}"),
                attempts: 0,
                approved: 1
            },
            CountAdd {
                key: format!("dest:{hash}"),
                attempts: 0,
                approved: 1
            },
        ]
    );
    assert_eq!(
        block_targets(&subject),
        [
            BlockTarget {
                kind: BlockKind::Destination,
                value: hash.clone()
            },
            BlockTarget {
                kind: BlockKind::Ip,
                value: IP.into()
            },
            BlockTarget {
                kind: BlockKind::Ip,
                value: NETWORK.into()
            },
            BlockTarget {
                kind: BlockKind::Prefix,
                value: "+4474001".into()
            },
            BlockTarget {
                kind: BlockKind::Country,
                value: "GB".into()
            },
        ]
    );
    // No key ever holds the number or its hundred block.
    for q in queries(&config, &subject, now()) {
        assert!(!q.key.contains("7400123456") && !q.key.contains("+4474001234"));
    }
}

#[test]
fn email_reads_and_adds_no_phone_counters() {
    let config = FraudConfig::default();
    let subject = email("a@example.com");
    let keys: Vec<String> = queries(&config, &subject, now())
        .into_iter()
        .map(|q| q.key.split(':').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(keys, ["dest", "ipfan", "net", "netstep", "idfan"]);
    let outcome = assess(&config, &subject, &quiet(&config, &subject), now());
    let keys: Vec<String> = outcome
        .adds
        .iter()
        .map(|a| a.key.split(':').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(keys, ["dest", "ipfan", "net", "idfan"]);
    assert_eq!(
        approved(&config, &subject, outcome.assessment.as_ref()).len(),
        2
    );
    assert_eq!(block_targets(&subject).len(), 3);
}

#[test]
fn a_disabled_signal_is_not_read() {
    let mut config = FraudConfig::default();
    config.sequential.tiers.clear();
    config.country_conversion.tiers.clear();
    let subject = gb();
    let keys: Vec<String> = queries(&config, &subject, now())
        .into_iter()
        .map(|q| q.key.split(':').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        keys,
        [
            "dest", "prefix", "prefix", "ipfan", "net", "netstep", "idfan"
        ]
    );
}

#[test]
fn off_does_nothing() {
    let config = FraudConfig {
        mode: Mode::Off,
        ..FraudConfig::default()
    };
    let subject = sms("+449061234567");
    assert!(queries(&config, &subject, now()).is_empty());
    assert_eq!(
        assess(&config, &subject, &Observed::default(), now()),
        Outcome::default()
    );
    assert!(approved(&config, &subject, None).is_empty());
    assert_eq!(
        provider_verdict(&config, FRAUD_GUARD, &subject, now()),
        None
    );
}

#[test]
fn rules_block_outright() {
    use RiskDecision::{Allow, Block};
    let quiet = |_: &str, _| (0, 0);
    check(defaults, &gb(), quiet, (Allow, 0, &[]));
    check(
        |c| c.block_countries = vec![region("GB")],
        &gb(),
        quiet,
        (Block, 100, &["COUNTRY_BLOCKED"]),
    );
    check(
        |c| c.allow_countries = vec![region("US")],
        &gb(),
        quiet,
        (Block, 100, &["COUNTRY_NOT_ALLOWED"]),
    );
    check(
        |c| c.allow_countries = vec![region("GB")],
        &gb(),
        quiet,
        (Allow, 0, &[]),
    );
    // A satellite number has no country: not on any allow list.
    check(
        |c| c.allow_countries = vec![region("US")],
        &sms("+881612345678"),
        quiet,
        (Block, 130, &["COUNTRY_NOT_ALLOWED", "UNKNOWN_COUNTRY"]),
    );
    check(
        defaults,
        &sms("+449061234567"),
        quiet,
        (Block, 100, &["NUMBER_TYPE_BLOCKED"]),
    );
    let mut shared_cost = gb();
    if let Some(p) = shared_cost.phone.as_mut() {
        p.number_type = NumberType::SharedCost;
    }
    let outcome = check(
        defaults,
        &shared_cost,
        quiet,
        (Block, 100, &["NUMBER_TYPE_BLOCKED"]),
    );
    assert_eq!(
        assessment(&outcome).reasons[0].message,
        "shared cost numbers are blocked"
    );
    assert!(outcome.blocks.is_empty(), "rules impose no blocks");
}

#[test]
fn weak_signals_alone_or_in_pairs_never_refuse() {
    use RiskDecision::{Allow, StepUp};
    let quiet = |_: &str, _| (0, 0);
    let nigeria = sms("+2348031234567");
    let outcome = check(
        defaults,
        &nigeria,
        quiet,
        (Allow, 20, &["HIGH_RISK_COUNTRY"]),
    );
    assert_eq!(
        assessment(&outcome).reasons[0].message,
        "country NG is on the high-risk list"
    );
    let voip = sms("+445612345678");
    let outcome = check(defaults, &voip, quiet, (Allow, 20, &["RISKY_NUMBER_TYPE"]));
    assert_eq!(
        assessment(&outcome).reasons[0].message,
        "VoIP numbers are often used for abuse"
    );
    let mut nigeria_voip = nigeria.clone();
    if let Some(p) = nigeria_voip.phone.as_mut() {
        p.number_type = NumberType::Voip;
    }
    check(
        defaults,
        &nigeria_voip,
        quiet,
        (Allow, 40, &["HIGH_RISK_COUNTRY", "RISKY_NUMBER_TYPE"]),
    );
    // A country dragged down by an attack elsewhere in it: 30 of 400 approved.
    let dragged = |ns: &str, _| if ns == "country" { (400, 30) } else { (0, 0) };
    let outcome = check(
        defaults,
        &gb(),
        dragged,
        (Allow, 20, &["COUNTRY_LOW_CONVERSION"]),
    );
    assert_eq!(
        assessment(&outcome).reasons[0].message,
        "country GB converted 30 of 400 new destinations in the last hour (under 20%)"
    );
    check(
        defaults,
        &nigeria,
        dragged,
        (Allow, 40, &["HIGH_RISK_COUNTRY", "COUNTRY_LOW_CONVERSION"]),
    );
    // All three weak signals together ask for a step-up, never a block.
    check(
        defaults,
        &nigeria_voip,
        dragged,
        (
            StepUp,
            60,
            &[
                "HIGH_RISK_COUNTRY",
                "RISKY_NUMBER_TYPE",
                "COUNTRY_LOW_CONVERSION",
            ],
        ),
    );
}

#[test]
fn unknown_country_and_unknown_type_ask_for_a_step_up() {
    // International freephone (+800) has no country and is toll free.
    check(
        defaults,
        &sms("+80012345678"),
        |_, _| (0, 0),
        (
            RiskDecision::StepUp,
            50,
            &["UNKNOWN_COUNTRY", "RISKY_NUMBER_TYPE"],
        ),
    );
}

/// Answers only the counters of one namespace and window.
fn only(
    namespace: &'static str,
    window: Duration,
    counts: (u64, u64),
) -> impl Fn(&str, Duration) -> (u64, u64) {
    move |ns, w| {
        if ns == namespace && w == window {
            counts
        } else {
            (0, 0)
        }
    }
}

#[test]
fn prefix_velocity_counts_new_destinations_and_never_refuses_alone() {
    use RiskDecision::Allow;
    let v = |n| only("prefix", 10 * MINUTE, (n, 0));
    check(defaults, &gb(), v(4), (Allow, 0, &[]));
    let outcome = check(defaults, &gb(), v(5), (Allow, 15, &["PREFIX_VELOCITY"]));
    assert_eq!(
        assessment(&outcome).reasons[0].message,
        "range +4474001 got 6 new destinations in the last 10 minutes (threshold 6)"
    );
    check(defaults, &gb(), v(10), (Allow, 25, &["PREFIX_VELOCITY"]));
    check(defaults, &gb(), v(500), (Allow, 25, &["PREFIX_VELOCITY"]));
    // A resend is not a new destination.
    let resend = |ns: &str, w| match ns {
        "dest" => (1, 0),
        "prefix" if w == 10 * MINUTE => (5, 0),
        _ => (0, 0),
    };
    check(defaults, &gb(), resend, (Allow, 0, &[]));
}

#[test]
fn prefix_conversion_needs_a_sample_and_leaves_out_resends() {
    use RiskDecision::{Allow, Block, StepUp};
    let c = |tried, approved| only("prefix", 6 * HOUR, (tried, approved));
    check(defaults, &gb(), c(4, 0), (Allow, 0, &[]));
    let outcome = check(
        defaults,
        &gb(),
        c(5, 0),
        (StepUp, 75, &["PREFIX_LOW_CONVERSION"]),
    );
    assert_eq!(
        assessment(&outcome).reasons[0].message,
        "range +4474001 converted 0 of 5 new destinations in the last 6 hours (under 5%)"
    );
    assert!(outcome.blocks.is_empty(), "a step-up imposes no block");
    let outcome = check(
        defaults,
        &gb(),
        c(6, 1),
        (StepUp, 60, &["PREFIX_LOW_CONVERSION"]),
    );
    assert_eq!(
        assessment(&outcome).reasons[0].message,
        "range +4474001 converted 1 of 6 new destinations in the last 6 hours (under 20%)"
    );
    check(defaults, &gb(), c(5, 1), (Allow, 0, &[]));
    check(defaults, &gb(), c(40, 30), (Allow, 0, &[]));
    check(
        defaults,
        &gb(),
        c(20, 2),
        (StepUp, 60, &["PREFIX_LOW_CONVERSION"]),
    );
    let outcome = check(
        defaults,
        &gb(),
        c(20, 1),
        (Block, 100, &["PREFIX_LOW_CONVERSION"]),
    );
    let [block] = outcome.blocks.as_slice() else {
        panic!("one block: {:?}", outcome.blocks);
    };
    assert_eq!(
        block.target,
        BlockTarget {
            kind: BlockKind::Prefix,
            value: "+4474001".into()
        }
    );
    assert_eq!(block.reason, "PREFIX_LOW_CONVERSION");
    assert_eq!(
        block.detail,
        "range +4474001 converted 1 of 20 new destinations in the last 6 hours (under 10%)"
    );
    assert_eq!(block.source, BlockSource::Scoring);
    assert!(!block.shadow);
    assert_eq!(block.created_at, now());
    assert_eq!(block.expires_at, now() + TimeDelta::hours(12));
    // A user resending to a number that has not approved yet is left out: 1 of 5 others.
    let resender = |ns: &str, w| match ns {
        "dest" => (4, 0),
        "prefix" if w == 6 * HOUR => (6, 1),
        _ => (0, 0),
    };
    check(defaults, &gb(), resender, (Allow, 0, &[]));
}

#[test]
fn no_approvals_with_severe_velocity_block_the_range() {
    // The signature of pumping: many new numbers in a range, none of them approving.
    let answer = |ns: &str, w| match ns {
        "prefix" if w == 10 * MINUTE => (10, 0),
        "prefix" => (10, 0),
        _ => (0, 0),
    };
    let outcome = check(
        defaults,
        &gb(),
        answer,
        (
            RiskDecision::Block,
            100,
            &["PREFIX_LOW_CONVERSION", "PREFIX_VELOCITY"],
        ),
    );
    assert_eq!(outcome.blocks.len(), 1);
    assert_eq!(outcome.blocks[0].reason, "PREFIX_LOW_CONVERSION");
    // A busy range where some approve only asks for a step-up.
    let some = |ns: &str, w| match ns {
        "prefix" if w == 10 * MINUTE => (10, 0),
        "prefix" => (10, 1),
        _ => (0, 0),
    };
    check(
        defaults,
        &gb(),
        some,
        (
            RiskDecision::StepUp,
            85,
            &["PREFIX_LOW_CONVERSION", "PREFIX_VELOCITY"],
        ),
    );
}

#[test]
fn what_a_number_is_never_tips_a_step_up_into_a_block() {
    // 0 of 5 approved and six new numbers in ten minutes, in a high-risk country, on VoIP:
    // 130 in all, but behaviour is 90.
    let mut subject = sms("+2348031234567");
    if let Some(p) = subject.phone.as_mut() {
        p.number_type = NumberType::Voip;
    }
    let answer = |ns: &str, w| match ns {
        "prefix" if w == 10 * MINUTE => (5, 0),
        "prefix" => (5, 0),
        _ => (0, 0),
    };
    let outcome = check(
        defaults,
        &subject,
        answer,
        (
            RiskDecision::StepUp,
            130,
            &[
                "PREFIX_LOW_CONVERSION",
                "HIGH_RISK_COUNTRY",
                "RISKY_NUMBER_TYPE",
                "PREFIX_VELOCITY",
            ],
        ),
    );
    assert!(outcome.blocks.is_empty());
}

#[test]
fn sequential_numbers_count_new_destinations_in_a_hundred_block() {
    use RiskDecision::{Allow, Block, StepUp};
    let seq = |n| only("seq", HOUR, (n, 0));
    check(defaults, &gb(), seq(2), (Allow, 0, &[]));
    let outcome = check(
        defaults,
        &gb(),
        seq(3),
        (StepUp, 50, &["SEQUENTIAL_NUMBERS"]),
    );
    assert_eq!(
        assessment(&outcome).reasons[0].message,
        "4 new destinations in one block of 100 numbers in the last hour (threshold 4)"
    );
    let outcome = check(
        defaults,
        &gb(),
        seq(6),
        (Block, 100, &["SEQUENTIAL_NUMBERS"]),
    );
    assert_eq!(outcome.blocks.len(), 1);
    assert_eq!(outcome.blocks[0].target.kind, BlockKind::Prefix);
    assert_eq!(outcome.blocks[0].reason, "SEQUENTIAL_NUMBERS");
    // A destination already seen is not new: the run is three long.
    let again = |ns: &str, _| match ns {
        "dest" => (1, 0),
        "seq" => (3, 0),
        _ => (0, 0),
    };
    check(defaults, &gb(), again, (Allow, 0, &[]));
}

#[test]
fn ip_fan_out_steps_up_then_blocks_the_ip() {
    use RiskDecision::{Block, StepUp};
    let fan = |n| only("ipfan", HOUR, (n, 0));
    let outcome = check(defaults, &gb(), fan(9), (StepUp, 50, &["IP_FAN_OUT"]));
    assert_eq!(
        assessment(&outcome).reasons[0].message,
        "10 new destinations from the client IP in the last hour (threshold 10)"
    );
    let outcome = check(defaults, &gb(), fan(29), (Block, 100, &["IP_FAN_OUT"]));
    let targets: Vec<&BlockTarget> = outcome.blocks.iter().map(|b| &b.target).collect();
    assert_eq!(
        targets,
        [&BlockTarget {
            kind: BlockKind::Ip,
            value: IP.into()
        }],
        "no range signal, so only the IP is blocked"
    );
    // Email starts fan out too.
    let outcome = check(
        defaults,
        &email("a@example.com"),
        fan(29),
        (Block, 100, &["IP_FAN_OUT"]),
    );
    assert_eq!(outcome.blocks.len(), 1);
}

/// Five new destinations in the range and five from the network, none approved.
fn range_and_network_unconverted(namespace: &str, window: Duration) -> (u64, u64) {
    match (namespace, window) {
        ("prefix", w) if w == 6 * HOUR => (5, 0),
        ("net", _) => (5, 0),
        _ => (0, 0),
    }
}

/// Checks that `outcome` blocks the client's network and nothing else.
fn assert_blocks_only_the_network(outcome: &Outcome) {
    let targets: Vec<&BlockTarget> = outcome.blocks.iter().map(|b| &b.target).collect();
    assert_eq!(
        targets,
        [&BlockTarget {
            kind: BlockKind::Ip,
            value: NETWORK.into()
        }]
    );
}

#[test]
fn network_conversion_steps_up_then_blocks_the_network() {
    use RiskDecision::{Allow, Block, StepUp};
    let net = |counts| only("net", 6 * HOUR, counts);
    // Five new destinations before this one, none approved.
    let outcome = check(
        defaults,
        &gb(),
        net((5, 0)),
        (StepUp, 60, &["NETWORK_LOW_CONVERSION"]),
    );
    assert_eq!(
        assessment(&outcome).reasons[0].message,
        "network 203.0.113.0/24 converted 0 of 5 new destinations in the last 6 hours (under 5%)"
    );
    assert!(outcome.blocks.is_empty(), "a step-up imposes nothing");
    // A network of many users is judged by its conversion, never by its size.
    check(defaults, &gb(), net((5_000, 4_000)), (Allow, 0, &[]));
    // A third converted, the share an attacker completing its own codes shows.
    check(
        defaults,
        &gb(),
        net((11, 4)),
        (StepUp, 60, &["NETWORK_LOW_CONVERSION"]),
    );
    check(defaults, &gb(), net((11, 6)), (Allow, 0, &[]));
    // Twenty, one approved: the network is blocked, and only the network.
    let outcome = check(
        defaults,
        &gb(),
        net((20, 1)),
        (Block, 100, &["NETWORK_LOW_CONVERSION"]),
    );
    assert_blocks_only_the_network(&outcome);
    assert!(
        outcome.blocks[0]
            .detail
            .starts_with("network 203.0.113.0/24 converted 1 of 20")
    );
    // The network's block then refuses every start from it, named as a network.
    let mut blocked = quiet(&FraudConfig::default(), &gb());
    blocked.blocks = outcome.blocks.clone();
    let refused = assess(&FraudConfig::default(), &gb(), &blocked, now());
    assert_eq!(codes(&refused), ["BLOCKED_IP"]);
    assert!(
        assessment(&refused).reasons[0]
            .message
            .starts_with("network 203.0.113.0/24 is blocked by scoring"),
        "{:?}",
        assessment(&refused).reasons
    );
    // Without a client IP there is no network to read.
    let mut anonymous = gb();
    anonymous.ip = None;
    anonymous.network = None;
    check(defaults, &anonymous, net((20, 1)), (Allow, 0, &[]));
    // Only a start scoring allows counts for its network, and only its assessment keeps
    // the network for the approval to count for it: a start refused for its range gives its
    // sender no code to enter.
    let net_adds = |outcome: &Outcome| {
        outcome
            .adds
            .iter()
            .filter(|a| a.key.starts_with("net:"))
            .count()
    };
    let allowed = check(defaults, &gb(), net((11, 6)), (Allow, 0, &[]));
    assert_eq!(assessment(&allowed).network.as_deref(), Some(NETWORK));
    assert_eq!(net_adds(&allowed), 1);
    for refused in [&outcome, &refused] {
        assert_eq!(assessment(refused).network, None);
        assert_eq!(net_adds(refused), 0);
    }
    let stepped_up = check(
        defaults,
        &gb(),
        only("prefix", 6 * HOUR, (5, 0)),
        (StepUp, 75, &["PREFIX_LOW_CONVERSION"]),
    );
    assert_eq!(assessment(&stepped_up).network, None);
    assert_eq!(net_adds(&stepped_up), 0);
    // A start refused only for its network counts for neither its range nor its country
    // (nor the network): the network is what keeps failing.
    let keys = |outcome: &Outcome| -> Vec<String> {
        outcome
            .adds
            .iter()
            .map(|a| a.key.split(':').next().unwrap_or_default().to_owned())
            .collect()
    };
    let for_the_network = check(
        defaults,
        &gb(),
        net((5, 0)),
        (StepUp, 60, &["NETWORK_LOW_CONVERSION"]),
    );
    assert_eq!(
        keys(&for_the_network),
        ["dest", "seq", "ipfan", "idfan", "netstep"]
    );
    // Refused for its range as well, it counts for the range and country as ever.
    let outcome = check(
        defaults,
        &gb(),
        range_and_network_unconverted,
        (
            RiskDecision::Block,
            135,
            &["PREFIX_LOW_CONVERSION", "NETWORK_LOW_CONVERSION"],
        ),
    );
    assert_eq!(
        keys(&outcome),
        ["dest", "country", "prefix", "seq", "ipfan", "idfan"]
    );
    // A user who completes the step-up is allowed, and counts.
    let mut completed = gb();
    completed.step_up_completed = true;
    let config = FraudConfig::default();
    let observed = observe(&config, &completed, only("prefix", 6 * HOUR, (5, 0)));
    let allowed = assess(&config, &completed, &observed, now());
    assert_eq!(assessment(&allowed).network.as_deref(), Some(NETWORK));
    assert_eq!(net_adds(&allowed), 1);
}

#[test]
fn a_range_and_a_network_are_blocked_each_on_its_own_evidence() {
    use RiskDecision::Block;
    let targets = |outcome: &Outcome| -> Vec<BlockKind> {
        outcome.blocks.iter().map(|b| b.target.kind).collect()
    };
    // A network that converts nothing tries a range that converts nothing: the start is
    // refused, but neither the range's 75 nor the network's 60 blocks its target alone.
    let both = range_and_network_unconverted;
    let outcome = check(
        defaults,
        &gb(),
        both,
        (
            Block,
            135,
            &["PREFIX_LOW_CONVERSION", "NETWORK_LOW_CONVERSION"],
        ),
    );
    assert_eq!(targets(&outcome), []);
    // With severe velocity the range's own evidence reaches the block score: the range is
    // blocked, the network is not.
    let severe = |ns: &str, w| match (ns, w) {
        ("prefix", w) if w == 10 * MINUTE => (10, 0),
        other => both(other.0, other.1),
    };
    let outcome = check(
        defaults,
        &gb(),
        severe,
        (
            Block,
            160,
            &[
                "PREFIX_LOW_CONVERSION",
                "NETWORK_LOW_CONVERSION",
                "PREFIX_VELOCITY",
            ],
        ),
    );
    assert_eq!(targets(&outcome), [BlockKind::Prefix]);
    // And a network that passed its step-ups and still converts nothing is blocked on its
    // own evidence, whatever the range says.
    let network = |ns: &str, w| match (ns, w) {
        ("net", _) => (20, 0),
        other => both(other.0, other.1),
    };
    let outcome = check(
        defaults,
        &gb(),
        network,
        (
            Block,
            175,
            &["NETWORK_LOW_CONVERSION", "PREFIX_LOW_CONVERSION"],
        ),
    );
    assert_eq!(targets(&outcome), [BlockKind::Ip]);
}

#[test]
fn identity_fan_out_steps_up_and_blocks_without_imposing() {
    use RiskDecision::{Block, StepUp};
    let fan = |n| only("idfan", HOUR, (n, 0));
    check(defaults, &gb(), fan(3), (StepUp, 50, &["IDENTITY_FAN_OUT"]));
    let outcome = check(defaults, &gb(), fan(9), (Block, 100, &["IDENTITY_FAN_OUT"]));
    assert!(outcome.blocks.is_empty());
}

#[test]
fn signals_add_up_strongest_first() {
    let answer = |ns: &str, _| match ns {
        "prefix" => (7, 0),
        "seq" => (3, 0),
        "ipfan" => (9, 0),
        _ => (0, 0),
    };
    let outcome = check(
        defaults,
        &sms("+2348031234567"),
        answer,
        (
            RiskDecision::Block,
            210,
            &[
                "PREFIX_LOW_CONVERSION",
                "SEQUENTIAL_NUMBERS",
                "IP_FAN_OUT",
                "HIGH_RISK_COUNTRY",
                "PREFIX_VELOCITY",
            ],
        ),
    );
    let blocks: Vec<(&BlockTarget, &str)> = outcome
        .blocks
        .iter()
        .map(|b| (&b.target, b.reason.as_str()))
        .collect();
    assert_eq!(
        blocks,
        [
            (
                &BlockTarget {
                    kind: BlockKind::Prefix,
                    value: "+23480312".into()
                },
                "PREFIX_LOW_CONVERSION"
            ),
            (
                &BlockTarget {
                    kind: BlockKind::Ip,
                    value: IP.into()
                },
                "IP_FAN_OUT"
            ),
        ],
        "the range block names the strongest range signal"
    );
}

#[test]
fn active_blocks_count_by_mode() {
    let subject = gb();
    let prefix = |shadow| block(BlockKind::Prefix, "+4474001", shadow, HOUR);
    let run = |mode, blocks: Vec<Block>| {
        let config = FraudConfig {
            mode,
            ..FraudConfig::default()
        };
        let mut observed = quiet(&config, &subject);
        observed.blocks = blocks;
        assess(&config, &subject, &observed, now())
    };
    let decision = |o: &Outcome| assessment(o).decision;

    let enforced = run(Mode::Enforce, vec![prefix(false)]);
    assert_eq!(decision(&enforced), RiskDecision::Block);
    assert_eq!(codes(&enforced), ["BLOCKED_PREFIX"]);
    assert_eq!(
        assessment(&enforced).reasons[0].message,
        "range +4474001 is blocked by scoring until 2025-03-01 13:00 UTC \
         (PREFIX_LOW_CONVERSION: range +4474001 converted 0 of 12 codes sent in the last 6 hours (minimum 10%))"
    );
    assert!(assessment(&enforced).refuses());

    let ignored = run(Mode::Enforce, vec![prefix(true)]);
    assert_eq!(
        decision(&ignored),
        RiskDecision::Allow,
        "enforce ignores shadow blocks"
    );

    let shadowed = run(Mode::Shadow, vec![prefix(true)]);
    assert_eq!(decision(&shadowed), RiskDecision::Block);
    assert!(
        assessment(&shadowed).reasons[0]
            .message
            .ends_with("[shadow block]")
    );
    assert!(assessment(&shadowed).shadow && !assessment(&shadowed).refuses());
    assert_eq!(
        decision(&run(Mode::Shadow, vec![prefix(false)])),
        RiskDecision::Block
    );

    let expired = block(BlockKind::Prefix, "+4474001", false, Duration::ZERO);
    assert_eq!(
        decision(&run(Mode::Enforce, vec![expired])),
        RiskDecision::Allow
    );
    let elsewhere = block(BlockKind::Prefix, "+4474002", false, HOUR);
    assert_eq!(
        decision(&run(Mode::Enforce, vec![elsewhere])),
        RiskDecision::Allow
    );

    for (kind, value, code) in [
        (
            BlockKind::Destination,
            subject.destination.as_str(),
            "BLOCKED_DESTINATION",
        ),
        (BlockKind::Ip, IP, "BLOCKED_IP"),
        (BlockKind::Country, "GB", "BLOCKED_COUNTRY"),
    ] {
        let outcome = run(Mode::Enforce, vec![block(kind, value, false, HOUR)]);
        assert_eq!(codes(&outcome), [code]);
        assert!(
            !assessment(&outcome).reasons[0].message.contains(value) || kind == BlockKind::Country
        );
    }
}

#[test]
fn a_target_already_blocked_is_not_blocked_again() {
    let config = FraudConfig::default();
    let subject = gb();
    let mut observed = observe(&config, &subject, only("prefix", 6 * HOUR, (30, 0)));
    let quiet_outcome = assess(&config, &subject, &observed, now());
    assert_eq!(quiet_outcome.blocks.len(), 1);
    observed.blocks = vec![block(BlockKind::Prefix, "+4474001", false, HOUR)];
    let outcome = assess(&config, &subject, &observed, now());
    assert_eq!(assessment(&outcome).decision, RiskDecision::Block);
    assert!(outcome.blocks.is_empty());
    // In enforce mode a shadow block does not count, so the range gets an enforced one.
    observed.blocks = vec![block(BlockKind::Prefix, "+4474001", true, HOUR)];
    let outcome = assess(&config, &subject, &observed, now());
    assert_eq!(outcome.blocks.len(), 1);
    assert!(!outcome.blocks[0].shadow);
}

#[test]
fn rules_alone_impose_no_block_even_with_a_range_signal() {
    // A premium-rate number with a little velocity: the rule blocks the start, and
    // behaviour (25) is far from the block score, so the range is not blocked.
    check(
        defaults,
        &sms("+449061234567"),
        only("prefix", 10 * MINUTE, (5, 0)),
        (
            RiskDecision::Block,
            115,
            &["NUMBER_TYPE_BLOCKED", "PREFIX_VELOCITY"],
        ),
    );
}

#[test]
fn a_completed_step_up_allows_a_step_up_but_never_a_block() {
    let mut subject = gb();
    subject.step_up_completed = true;
    let outcome = check(
        defaults,
        &subject,
        only("seq", HOUR, (3, 0)),
        (
            RiskDecision::Allow,
            50,
            &["SEQUENTIAL_NUMBERS", "STEP_UP_COMPLETED"],
        ),
    );
    assert!(!assessment(&outcome).refuses());
    check(
        defaults,
        &subject,
        only("seq", HOUR, (6, 0)),
        (RiskDecision::Block, 100, &["SEQUENTIAL_NUMBERS"]),
    );
    check(
        defaults,
        &sms("+449061234567"),
        |_, _| (0, 0),
        (RiskDecision::Block, 100, &["NUMBER_TYPE_BLOCKED"]),
    );
}

#[test]
fn shadow_decides_exactly_as_enforce_but_refuses_nothing() {
    let subject = gb();
    let answer = |ns: &str, _| match ns {
        "prefix" => (20, 0),
        "ipfan" => (40, 0),
        _ => (0, 0),
    };
    let run = |mode| {
        let config = FraudConfig {
            mode,
            ..FraudConfig::default()
        };
        let observed = observe(&config, &subject, answer);
        assess(&config, &subject, &observed, now())
    };
    let enforce = run(Mode::Enforce);
    let shadow = run(Mode::Shadow);
    assert!(assessment(&enforce).refuses());
    assert!(!assessment(&shadow).refuses());
    assert_eq!(enforce.blocks.len(), 2);
    assert!(enforce.blocks.iter().all(|b| !b.shadow));
    assert!(shadow.blocks.iter().all(|b| b.shadow));
    let unshadow = |mut o: Outcome| {
        if let Some(a) = o.assessment.as_mut() {
            a.shadow = false;
        }
        for b in &mut o.blocks {
            b.shadow = false;
        }
        o
    };
    assert_eq!(unshadow(shadow), enforce);
}

#[test]
fn email_gets_blocks_fan_out_and_step_up_only() {
    let config = FraudConfig {
        block_countries: vec![region("GB")],
        allow_countries: vec![region("US")],
        ..FraudConfig::default()
    };
    let subject = email("someone@example.com");
    let outcome = assess(&config, &subject, &quiet(&config, &subject), now());
    assert_eq!(assessment(&outcome).decision, RiskDecision::Allow);
    assert_eq!(assessment(&outcome).score, 0);
    let mut observed = observe(&config, &subject, only("idfan", HOUR, (3, 0)));
    let mut completed = subject.clone();
    completed.step_up_completed = true;
    assert_eq!(
        assessment(&assess(&config, &subject, &observed, now())).decision,
        RiskDecision::StepUp
    );
    assert_eq!(
        assessment(&assess(&config, &completed, &observed, now())).decision,
        RiskDecision::Allow
    );
    observed.blocks = vec![block(
        BlockKind::Destination,
        subject.destination.as_str(),
        false,
        HOUR,
    )];
    let outcome = assess(&config, &subject, &observed, now());
    assert_eq!(codes(&outcome)[0], "BLOCKED_DESTINATION");
}

/// The longest run of ASCII digits in `text`.
fn longest_digit_run(text: &str) -> usize {
    text.split(|c: char| !c.is_ascii_digit())
        .map(str::len)
        .max()
        .unwrap_or(0)
}

#[test]
fn reasons_and_blocks_never_hold_a_destination() {
    let config = FraudConfig {
        high_risk_countries: vec![region("GB")],
        ..FraudConfig::default()
    };
    for raw in [
        "+447400123456",
        "+2348031234567",
        "+14155552671",
        "+445612345678",
    ] {
        let phone = number(raw);
        let subject = sms(raw);
        let parts: &PhoneSubject = subject.phone.as_ref().expect("phone");
        let national = &phone.e164()[1 + phone.country_code().to_string().len()..];
        let secrets = [
            phone.e164(),
            &phone.e164()[1..],
            national,
            phone.hundred_block(),
            subject.destination.as_str(),
            subject.destination.short(),
            &parts.hundred_block_tag,
        ];
        // Every signal fires, and every target is blocked.
        let mut observed = observe(&config, &subject, |ns, _| match ns {
            "dest" => (0, 0),
            "country" => (500, 0),
            _ => (40, 0),
        });
        observed.blocks = block_targets(&subject)
            .into_iter()
            .map(|t| block(t.kind, &t.value, false, HOUR))
            .collect();
        let outcome = assess(&config, &subject, &observed, now());
        let verdicts = [FRAUD_GUARD, VERIFY_GEO_PERMISSION]
            .map(|code| provider_verdict(&config, code, &subject, now()).expect("a block"));
        let texts = assessment(&outcome)
            .reasons
            .iter()
            .flat_map(|r| [r.code.clone(), r.message.clone()])
            .chain(
                outcome
                    .blocks
                    .iter()
                    .chain(&verdicts)
                    .flat_map(|b| [b.reason.clone(), b.detail.clone()]),
            );
        let mut seen = 0;
        for text in texts {
            seen += 1;
            for secret in secrets {
                assert!(!text.contains(secret), "{text:?} holds {secret:?}");
            }
            assert!(
                longest_digit_run(&text) < national.len(),
                "{text:?} holds a run of digits as long as a number"
            );
        }
        assert!(seen >= 14, "every reason was looked at ({seen})");
    }
}

#[test]
fn provider_verdicts_block_range_or_country() {
    let config = FraudConfig::default();
    let subject = gb();
    let verdict = |code| provider_verdict(&config, code, &subject, now());

    let fraud_guard = verdict(FRAUD_GUARD).expect("a block");
    assert_eq!(
        fraud_guard.target,
        BlockTarget {
            kind: BlockKind::Prefix,
            value: "+4474001".into()
        }
    );
    assert_eq!(fraud_guard.reason, "TWILIO_60410");
    assert_eq!(fraud_guard.source, BlockSource::Provider);
    assert!(!fraud_guard.shadow);
    assert_eq!(fraud_guard.expires_at, now() + TimeDelta::hours(12));

    for code in [VERIFY_GEO_PERMISSION, MESSAGING_GEO_PERMISSION] {
        let geo = verdict(code).expect("a block");
        assert_eq!(
            geo.target,
            BlockTarget {
                kind: BlockKind::Country,
                value: "GB".into()
            }
        );
        assert_eq!(geo.reason, format!("TWILIO_{code}"));
        assert_eq!(geo.expires_at, now() + TimeDelta::hours(1));
    }
    assert_eq!(verdict(60200), None);
    assert_eq!(verdict(60203), None);
    let satellite = sms("+881612345678");
    assert_eq!(
        provider_verdict(&config, VERIFY_GEO_PERMISSION, &satellite, now()),
        None,
        "no country to block"
    );
    assert!(provider_verdict(&config, FRAUD_GUARD, &satellite, now()).is_some());
    assert_eq!(
        provider_verdict(&config, FRAUD_GUARD, &email("a@example.com"), now()),
        None
    );
    let shadow = FraudConfig {
        mode: Mode::Shadow,
        ..FraudConfig::default()
    };
    assert!(
        !provider_verdict(&shadow, FRAUD_GUARD, &subject, now())
            .expect("a block")
            .shadow
    );
}

#[test]
fn missing_counts_read_as_zero() {
    let config = FraudConfig::default();
    let subject = gb();
    let outcome = assess(&config, &subject, &Observed::default(), now());
    assert_eq!(assessment(&outcome).decision, RiskDecision::Allow);
    assert_eq!(outcome.adds.len(), 7);
}

#[test]
fn a_network_that_walks_away_from_its_step_ups_is_blocked() {
    use RiskDecision::{Allow, Block, StepUp};
    let asked = |counts| only("netstep", 24 * HOUR, counts);
    // Four asked and none completed are too few to judge.
    check(defaults, &gb(), asked((4, 0)), (Allow, 0, &[]));
    // Five asked, none completed: the network is blocked, and only the network.
    let outcome = check(
        defaults,
        &gb(),
        asked((5, 0)),
        (Block, 100, &["NETWORK_STEP_UPS_IGNORED"]),
    );
    assert_eq!(
        assessment(&outcome).reasons[0].message,
        "network 203.0.113.0/24 completed 0 of 5 step-ups asked in the last 24 hours (under 20%)"
    );
    assert_blocks_only_the_network(&outcome);
    // A network of real users completes most of the step-ups it is asked.
    check(defaults, &gb(), asked((40, 30)), (Allow, 0, &[]));
    check(
        defaults,
        &gb(),
        asked((40, 7)),
        (Block, 100, &["NETWORK_STEP_UPS_IGNORED"]),
    );

    // A step-up asked counts as an attempt, one completed as an approval; neither is
    // counted without a network.
    let step_ups = |outcome: &Outcome| -> Vec<(u32, u32)> {
        outcome
            .adds
            .iter()
            .filter(|a| a.key == format!("netstep:{NETWORK}"))
            .map(|a| (a.attempts, a.approved))
            .collect()
    };
    let network_unconverted = only("net", 6 * HOUR, (5, 0));
    let stepped_up = check(
        defaults,
        &gb(),
        &network_unconverted,
        (StepUp, 60, &["NETWORK_LOW_CONVERSION"]),
    );
    assert_eq!(step_ups(&stepped_up), [(1, 0)]);
    let mut completed = gb();
    completed.step_up_completed = true;
    let passed = check(
        defaults,
        &completed,
        &network_unconverted,
        (Allow, 60, &["NETWORK_LOW_CONVERSION", "STEP_UP_COMPLETED"]),
    );
    assert_eq!(step_ups(&passed), [(0, 1)]);
    let allowed = check(defaults, &gb(), |_, _| (0, 0), (Allow, 0, &[]));
    assert!(step_ups(&allowed).is_empty());
    let mut anonymous = gb();
    anonymous.ip = None;
    anonymous.network = None;
    let outcome = check(
        defaults,
        &anonymous,
        only("prefix", 6 * HOUR, (5, 0)),
        (StepUp, 75, &["PREFIX_LOW_CONVERSION"]),
    );
    assert!(outcome.adds.iter().all(|a| !a.key.starts_with("netstep:")));

    // An enforced step-up is never sent, so it has no approval to count.
    assert_eq!(assessment(&stepped_up).network, None);

    // Shadow mode asks callers nothing and sends the stepped-up start: it reads the
    // step-ups and blocks (in shadow) as enforce does, counts a shadow step-up as asked and
    // keeps its network, so that its code entered counts as the step-up completed.
    let shadow = |config: &mut FraudConfig| config.mode = Mode::Shadow;
    let mut config = FraudConfig::default();
    shadow(&mut config);
    let outcome = check(
        shadow,
        &gb(),
        asked((5, 0)),
        (Block, 100, &["NETWORK_STEP_UPS_IGNORED"]),
    );
    assert_blocks_only_the_network(&outcome);
    assert!(outcome.blocks[0].shadow && assessment(&outcome).shadow);
    let outcome = check(
        shadow,
        &gb(),
        &network_unconverted,
        (StepUp, 60, &["NETWORK_LOW_CONVERSION"]),
    );
    assert_eq!(step_ups(&outcome), [(1, 0)]);
    let start = outcome.assessment.as_ref();
    assert_eq!(start.and_then(|a| a.network.as_deref()), Some(NETWORK));
    let approval: Vec<String> = approved(&config, &gb(), start)
        .into_iter()
        .map(|a| a.key)
        .filter(|k| k.contains(NETWORK))
        .collect();
    assert_eq!(approval, [format!("netstep:{NETWORK}")]);
    // In shadow mode the code entered, not the caller's word, completes a step-up.
    let passed = check(
        shadow,
        &completed,
        &network_unconverted,
        (Allow, 60, &["NETWORK_LOW_CONVERSION", "STEP_UP_COMPLETED"]),
    );
    assert!(step_ups(&passed).is_empty());
    // With the signal off neither mode reads, counts or keeps anything for it.
    let off = |config: &mut FraudConfig| {
        config.mode = Mode::Shadow;
        config.network_step_ups.tiers.clear();
    };
    let mut config = FraudConfig::default();
    off(&mut config);
    assert!(
        queries(&config, &gb(), now())
            .iter()
            .all(|q| !q.key.starts_with("netstep:"))
    );
    let outcome = check(
        off,
        &gb(),
        &network_unconverted,
        (StepUp, 60, &["NETWORK_LOW_CONVERSION"]),
    );
    assert!(step_ups(&outcome).is_empty());
    assert_eq!(assessment(&outcome).network, None);
}
