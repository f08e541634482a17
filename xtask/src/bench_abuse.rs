//! `cargo xtask bench abuse`: an SMS-pumping scenario through the real service and the
//! sandbox, with the shipped rate limits and fraud scoring.
//!
//! One deterministic stream interleaves legitimate users (each from its own IP, numbers
//! spread over common countries and ranges, 90% of them entering their code) with four
//! attacks:
//!
//! - `premium`: sequential numbers in a GB premium-rate range, a new client IP every three
//!   attempts, never checking a code;
//! - `one range`: random numbers across one Indonesian mobile range, the same;
//! - `thin and wide`: a dozen random valid mobile numbers in each of [`THIN_WIDE_RANGES`]
//!   ranges spread over countries that are not on the default high-risk list, every start
//!   from a new IP and a new identity, never checking a code;
//! - `conversion-faking`: random numbers in one Brazilian mobile range, every start from a
//!   new IP and identity, of which the attacker completes about a third (it owns those
//!   numbers and reads their codes), so the range's approval rate looks alive.
//!
//! Beside the last two, legitimate users of the very ranges they attack, some of whom
//! abandon without entering their code; and returning users, who verify again with the
//! identity and number of a verification they completed. The stream runs once in
//! `enforce` mode and once, on a fresh database, in `shadow` mode, one request at a time so
//! both runs see the same order; in the shadow run every user and attacker acts as it did
//! in the enforce run (passes the same step-ups, enters the same codes), so both runs see
//! the same world. Printed, per attack: its sends that reached the sandbox and how the
//! ranges it used were blocked; the legitimate users refused and asked to step up (all of
//! them, those of the attacked ranges, the returning ones); and how far shadow mode's
//! recorded decisions agree with enforce mode's.
//!
//! Then the day-long variant ([`over_a_day`]): the last two attacks over a simulated day,
//! with codes that expire (also part of the test suite; here with its figures printed).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use proto::verify::v1 as pb;
use tonic::Code;

use crate::bench::{Upstream, connect, spawn_gateway};

/// A small deterministic generator (xorshift64*), so both runs replay one stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }
}

/// Legitimate traffic by country: a share and a template of a valid mobile number (`#` a
/// random digit); numbers are redrawn until libphonenumber calls them valid mobile numbers.
const LEGIT: [(u64, &str); 14] = [
    (28, "+1##########"),
    (10, "+447#########"),
    (8, "+4917########"),
    (8, "+336########"),
    (10, "+919#########"),
    (8, "+55119########"),
    (6, "+628#########"),
    (4, "+2348#########"),
    (3, "+923#########"),
    (3, "+316########"),
    (3, "+346########"),
    (3, "+393#########"),
    (3, "+614########"),
    (3, "+5255########"),
];

/// The premium-rate range attacked with sequential numbers.
const PREMIUM_RANGE: &str = "+4490987";
/// The mobile range attacked with random numbers.
const MOBILE_RANGE: &str = "+62812345";

/// Mobile numbers of the countries the thin-and-wide attack spreads over: none of them on
/// the default high-risk list, all of them countries legitimate users come from.
const THIN_WIDE_COUNTRIES: [&str; 6] = [
    "+447#########",
    "+4917########",
    "+336########",
    "+55119########",
    "+5255########",
    "+919#########",
];
/// Ranges the thin-and-wide attack uses, and numbers it tries in each.
const THIN_WIDE_RANGES: usize = 20;
const THIN_WIDE_PER_RANGE: usize = 12;
/// The conversion-faking attack's range is drawn from this template; its attempts, of
/// which it completes one in [`FAKING_COMPLETES_ONE_IN`].
const FAKING_TEMPLATE: &str = "+55119########";
const FAKING_ATTEMPTS: usize = 120;
const FAKING_COMPLETES_ONE_IN: u64 = 3;
/// Legitimate users of each range the thin-and-wide attack uses, and of the
/// conversion-faking range; each enters its code with this chance in ten.
const LEGIT_PER_THIN_RANGE: usize = 1;
const LEGIT_IN_FAKING_RANGE: usize = 8;
const LEGIT_IN_RANGE_COMPLETES_IN_TEN: u64 = 7;

/// The digits a range leaves out of a number (the gateway's `PhoneNumber::RANGE_DIGITS`).
const RANGE_DIGITS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Attack {
    Premium,
    OneRange,
    ThinWide,
    ConversionFaking,
}

impl Attack {
    const ALL: [Attack; 4] = [
        Attack::Premium,
        Attack::OneRange,
        Attack::ThinWide,
        Attack::ConversionFaking,
    ];

    fn name(self) -> &'static str {
        match self {
            Attack::Premium => "premium (sequential, GB premium rate)",
            Attack::OneRange => "one range (random, ID mobile)",
            Attack::ThinWide => "thin and wide (new IP and identity per start)",
            Attack::ConversionFaking => "conversion-faking (a third completed)",
        }
    }
}

/// Which legitimate users a start is counted among.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UserKind {
    /// A user verifying for the first time, from the common countries and ranges.
    Ordinary,
    /// A user of a range the thin-and-wide or conversion-faking attack uses.
    InAttackedRange,
    /// A user who completed a verification earlier in the stream and comes back, with
    /// the same identity and number, from another IP.
    Returning,
}

/// One in this many ordinary users who enter their code comes back later.
const RETURNS_ONE_IN: usize = 10;

#[derive(Debug, Clone)]
enum Action {
    Legit {
        to: String,
        ip: String,
        identity: String,
        completes: bool,
        kind: UserKind,
    },
    Attack {
        attack: Attack,
        range: String,
        to: String,
        ip: String,
        identity: String,
        /// The attacker reads the code and enters it.
        completes: bool,
    },
}

/// A valid number a person would verify: a mobile one (the templates could also draw
/// premium-rate or shared-cost numbers, which no legitimate user gives).
fn valid(number: &str) -> bool {
    phonenumber::parse(None, number).is_ok_and(|n| {
        n.is_valid()
            && matches!(
                n.number_type(&phonenumber::metadata::DATABASE),
                phonenumber::Type::Mobile | phonenumber::Type::FixedLineOrMobile
            )
    })
}

fn fill(rng: &mut Rng, template: &str) -> String {
    template
        .chars()
        .map(|c| {
            if c == '#' {
                char::from(b'0' + rng.below(10) as u8)
            } else {
                c
            }
        })
        .collect()
}

fn stream(legit: usize, attack: usize) -> anyhow::Result<Vec<Action>> {
    let mut rng = Rng(0x5EED_CAFE_F00D_0001);
    let total_share: u64 = LEGIT.iter().map(|(s, _)| s).sum();
    let mut legit_actions = Vec::new();
    for i in 0..legit {
        let mut pick = rng.below(total_share);
        let template = LEGIT
            .iter()
            .find(|(share, _)| {
                if pick < *share {
                    true
                } else {
                    pick -= share;
                    false
                }
            })
            .map_or(LEGIT[0].1, |(_, t)| t);
        let to = draw(&mut rng, template)?;
        legit_actions.push(Action::Legit {
            to,
            ip: format!("10.{}.{}.{}", i / 65_536 % 256, i / 256 % 256, i % 256),
            identity: format!("user-{i}"),
            completes: rng.below(10) < 9,
            kind: UserKind::Ordinary,
        });
    }
    let mut attack_actions = Vec::new();
    for i in 0..attack {
        // Sequential numbers in the premium range, and random ones in the mobile range,
        // alternating; a new client IP every three attempts.
        let ip = address("198.51", i / 3);
        if i % 2 == 0 {
            attack_actions.push(Action::Attack {
                attack: Attack::Premium,
                range: PREMIUM_RANGE.to_owned(),
                to: format!("{PREMIUM_RANGE}{:05}", i / 2),
                ip,
                identity: String::new(),
                completes: false,
            });
        } else {
            attack_actions.push(Action::Attack {
                attack: Attack::OneRange,
                range: MOBILE_RANGE.to_owned(),
                to: format!("{MOBILE_RANGE}{}", rng.digits(5)),
                ip,
                identity: String::new(),
                completes: false,
            });
        }
    }
    // Interleave the two in a random order that keeps each one's own order (the stream
    // the first two attacks were measured on), then the adaptive attacks and the users of
    // their ranges into it, with a generator of their own so the first stream stays as it
    // was.
    let first = interleave(&mut rng, legit_actions, attack_actions);
    let mut rng = Rng(0x5EED_CAFE_F00D_0002);
    let adaptive = adaptive(&mut rng)?;
    let mixed = interleave(&mut rng, first, adaptive);
    Ok(with_returns(&mut rng, mixed))
}

/// `actions` with a later start of one in [`RETURNS_ONE_IN`] ordinary users who enter
/// their code: the same identity and number, another IP, at a random place after the
/// first.
fn with_returns(rng: &mut Rng, actions: Vec<Action>) -> Vec<Action> {
    let mut returns: Vec<(usize, Action)> = Vec::new();
    let mut completing = 0;
    for (at, action) in actions.iter().enumerate() {
        if let Action::Legit {
            to,
            identity,
            completes: true,
            kind: UserKind::Ordinary,
            ..
        } = action
        {
            completing += 1;
            if completing % RETURNS_ONE_IN == 0 {
                let later = at + 1 + rng.below((actions.len() - at) as u64) as usize;
                returns.push((
                    later,
                    Action::Legit {
                        to: to.clone(),
                        ip: address("10.100", returns.len()),
                        identity: identity.clone(),
                        completes: true,
                        kind: UserKind::Returning,
                    },
                ));
            }
        }
    }
    returns.sort_by_key(|(later, _)| *later);
    let mut returns = returns.into_iter().peekable();
    let mut out = Vec::with_capacity(actions.len() + returns.len());
    for (at, action) in actions.into_iter().enumerate() {
        while let Some((_, r)) = returns.next_if(|(later, _)| *later == at) {
            out.push(r);
        }
        out.push(action);
    }
    out.extend(returns.map(|(_, r)| r));
    out
}

/// `a` and `b` merged in a random order that keeps each one's own order.
fn interleave(rng: &mut Rng, a: Vec<Action>, b: Vec<Action>) -> Vec<Action> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut left_a, mut left_b) = (a.len() as u64, b.len() as u64);
    let (mut a, mut b) = (a.into_iter(), b.into_iter());
    while left_a + left_b > 0 {
        if rng.below(left_a + left_b) < left_a {
            out.extend(a.next());
            left_a -= 1;
        } else {
            out.extend(b.next());
            left_b -= 1;
        }
    }
    out
}

/// A valid mobile number drawn from `template`.
fn draw(rng: &mut Rng, template: &str) -> anyhow::Result<String> {
    (0..10_000)
        .map(|_| fill(rng, template))
        .find(|candidate| valid(candidate))
        .with_context(|| format!("no valid number drawn from the template {template}"))
}

/// The i-th of a /16's addresses: `prefix` is its first two octets.
fn address(prefix: &str, i: usize) -> String {
    format!("{prefix}.{}.{}", i / 256 % 256, i % 256)
}

/// A range drawn from `template` (a valid number's, without its last [`RANGE_DIGITS`]
/// digits), with `attacked` and then `users` distinct valid numbers of it, none in `taken`.
fn range_of(
    rng: &mut Rng,
    template: &str,
    attacked: usize,
    users: usize,
    taken: &mut std::collections::HashSet<String>,
) -> anyhow::Result<(String, Vec<String>, Vec<String>)> {
    let seed = draw(rng, template)?;
    let range = seed[..seed.len() - RANGE_DIGITS].to_owned();
    let mut numbers = numbers_in(rng, &range, attacked + users, taken)?;
    let users = numbers.split_off(attacked);
    Ok((range, numbers, users))
}

/// `n` distinct valid mobile numbers of `range`, none of them in `taken`.
fn numbers_in(
    rng: &mut Rng,
    range: &str,
    n: usize,
    taken: &mut std::collections::HashSet<String>,
) -> anyhow::Result<Vec<String>> {
    let template = format!("{range}{}", "#".repeat(RANGE_DIGITS));
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let to = (0..10_000)
            .map(|_| fill(rng, &template))
            .find(|candidate| valid(candidate) && !taken.contains(candidate))
            .with_context(|| format!("range {range} has too few valid numbers"))?;
        taken.insert(to.clone());
        out.push(to);
    }
    Ok(out)
}

/// The thin-and-wide and conversion-faking attacks, and legitimate users of the ranges
/// they use, in a random order that keeps each one's own.
fn adaptive(rng: &mut Rng) -> anyhow::Result<Vec<Action>> {
    let mut taken = std::collections::HashSet::new();
    let mut legit = Vec::new();
    let user = |rng: &mut Rng, to: String, legit: &mut Vec<Action>| {
        let i = legit.len();
        legit.push(Action::Legit {
            to,
            ip: address("10.200", i),
            identity: format!("ranged-user-{i}"),
            completes: rng.below(10) < LEGIT_IN_RANGE_COMPLETES_IN_TEN,
            kind: UserKind::InAttackedRange,
        });
    };

    let mut thin_wide = Vec::new();
    for r in 0..THIN_WIDE_RANGES {
        let template = THIN_WIDE_COUNTRIES[r % THIN_WIDE_COUNTRIES.len()];
        let (range, attacked, users) = range_of(
            rng,
            template,
            THIN_WIDE_PER_RANGE,
            LEGIT_PER_THIN_RANGE,
            &mut taken,
        )?;
        for to in attacked {
            thin_wide.push((range.clone(), to));
        }
        for to in users {
            user(rng, to, &mut legit);
        }
    }
    // The attacker works through its ranges side by side, not one after the other.
    let mut shuffled = Vec::with_capacity(thin_wide.len());
    while !thin_wide.is_empty() {
        let pick = rng.below(thin_wide.len() as u64) as usize;
        shuffled.push(thin_wide.swap_remove(pick));
    }
    let thin_wide: Vec<Action> = shuffled
        .into_iter()
        .enumerate()
        .map(|(i, (range, to))| Action::Attack {
            attack: Attack::ThinWide,
            range,
            to,
            ip: address("203.0", i),
            identity: format!("tw-{i}"),
            completes: false,
        })
        .collect();

    let (range, attacked, users) = range_of(
        rng,
        FAKING_TEMPLATE,
        FAKING_ATTEMPTS,
        LEGIT_IN_FAKING_RANGE,
        &mut taken,
    )?;
    let faking: Vec<Action> = attacked
        .into_iter()
        .enumerate()
        .map(|(i, to)| Action::Attack {
            attack: Attack::ConversionFaking,
            range: range.clone(),
            to,
            ip: address("100.64", i),
            identity: format!("cf-{i}"),
            completes: rng.below(FAKING_COMPLETES_ONE_IN) == 0,
        })
        .collect();
    for to in users {
        user(rng, to, &mut legit);
    }

    let attacks = interleave(rng, thin_wide, faking);
    Ok(interleave(rng, attacks, legit))
}

/// What the gateway did with one start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// Sent; scoring said allow (or recorded this decision in shadow mode).
    Sent(Decision),
    /// Refused by fraud scoring.
    Refused(Decision),
    RateLimited,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Decision {
    Allow,
    StepUp,
    Block,
}

impl Outcome {
    fn decision(self) -> Option<Decision> {
        match self {
            Outcome::Sent(d) | Outcome::Refused(d) => Some(d),
            _ => None,
        }
    }
}

fn decision_of(v: Option<&pb::Verification>) -> Decision {
    match v
        .and_then(|v| v.risk.as_ref())
        .and_then(|r| pb::RiskDecision::try_from(r.decision).ok())
    {
        Some(pb::RiskDecision::Block) => Decision::Block,
        Some(pb::RiskDecision::StepUp) => Decision::StepUp,
        _ => Decision::Allow,
    }
}

/// What the gateway answered to one start (`step_up_completed` when the caller had its
/// user pass a step-up first): the outcome, the verification's id when it was sent, and
/// scoring's message when it refused.
async fn start(
    client: &mut crate::bench::Client,
    to: &str,
    ip: &str,
    identity: &str,
    step_up_completed: bool,
) -> (Outcome, Option<String>, Option<String>) {
    let answer = client
        .start_verification(pb::StartVerificationRequest {
            purpose: "login".into(),
            to: to.into(),
            channel: pb::Channel::Sms.into(),
            client_ip: ip.into(),
            identity: identity.into(),
            step_up_completed,
            ..Default::default()
        })
        .await;
    match answer {
        Ok(r) => {
            let v = r.into_inner().verification;
            (
                Outcome::Sent(decision_of(v.as_ref())),
                v.map(|v| v.id),
                None,
            )
        }
        Err(s) => {
            let why = Some(s.message().to_owned());
            match s.code() {
                Code::PermissionDenied => (Outcome::Refused(Decision::Block), None, why),
                Code::FailedPrecondition => (Outcome::Refused(Decision::StepUp), None, why),
                Code::ResourceExhausted => (Outcome::RateLimited, None, why),
                _ => {
                    eprintln!("unexpected answer: {s:?}");
                    (Outcome::Error, None, None)
                }
            }
        }
    }
}

/// Enters the code the sandbox delivered to `to` for the verification `id`, as its owner
/// would.
async fn complete(
    client: &mut crate::bench::Client,
    http: &reqwest::Client,
    inbox: &str,
    to: &str,
    id: String,
) -> anyhow::Result<()> {
    let url = url::Url::parse_with_params(inbox, [("to", to)])?;
    let messages: serde_json::Value = http.get(url).send().await?.json().await?;
    let code = messages[0]["code"]
        .as_str()
        .context("no code in the sandbox inbox")?
        .to_owned();
    client
        .check_verification(pb::CheckVerificationRequest { id, code })
        .await
        .context("a check of a delivered code")?;
    Ok(())
}

/// What one run of the stream did.
struct Played {
    /// Each start's outcome.
    outcomes: Vec<Outcome>,
    /// The refusals of legitimate users by what refused them ([`refusal_shape`]).
    refusals: BTreeMap<String, usize>,
    /// What each action's actor did.
    acted: Vec<Acted>,
}

/// What one actor did after its start, so the shadow run can replay it.
#[derive(Clone, Copy)]
struct Acted {
    /// It was asked to step up, passed it and started again.
    passed_step_up: bool,
    /// It entered the code it received.
    entered_code: bool,
}

/// Plays `actions` against a fresh gateway in `mode`. Each actor acts on what the gateway
/// answers, or, given `replay` (the enforce run's [`Played::acted`]), as it did there:
/// shadow mode sends every start, and its decisions are compared with enforce mode's on
/// the same world (an attacker that enters the codes shadow mode sends it where enforce
/// refused them would converse with a different gateway).
async fn run_stream(
    root: &Path,
    mode: &str,
    actions: &[Action],
    replay: Option<&[Acted]>,
) -> anyhow::Result<Played> {
    let gateway = spawn_gateway(root, Upstream::Sandbox, &[("VERIFY_FRAUD__MODE", mode)])?;
    let mut client = connect(gateway.grpc).await?;
    let http = reqwest::Client::new();
    let inbox = format!("http://127.0.0.1:{}/sandbox/messages", gateway.sandbox);
    let began = Instant::now();
    let mut outcomes = Vec::with_capacity(actions.len());
    let mut refusals = BTreeMap::new();
    let mut acted = Vec::with_capacity(actions.len());
    for (i, action) in actions.iter().enumerate() {
        let (legit, to, ip, identity, completes) = match action {
            Action::Legit {
                to,
                ip,
                identity,
                completes,
                ..
            } => (true, to, ip, identity, *completes),
            Action::Attack {
                to,
                ip,
                identity,
                completes,
                ..
            } => (false, to, ip, identity, *completes),
        };
        let (outcome, mut id, why) = start(&mut client, to, ip, identity, false).await;
        // A legitimate user asked to step up passes it (a captcha) when it is one who
        // enters its code, and its caller starts again; an attacker walks away.
        let passes = match replay {
            Some(played) => played[i].passed_step_up,
            None => legit && completes && outcome == Outcome::Refused(Decision::StepUp),
        };
        if passes {
            id = start(&mut client, to, ip, identity, true).await.1;
        }
        let enters = match replay {
            Some(played) => played[i].entered_code,
            None => completes && id.is_some(),
        };
        if let (true, Some(id)) = (enters, id) {
            complete(&mut client, &http, &inbox, to, id).await?;
        }
        acted.push(Acted {
            passed_step_up: passes,
            entered_code: enters,
        });
        if let (true, Some(why)) = (legit, why) {
            *refusals.entry(refusal_shape(&why)).or_default() += 1;
        }
        outcomes.push(outcome);
    }
    eprintln!(
        "  {mode}: {} requests in {:.1} s",
        actions.len(),
        began.elapsed().as_secs_f64()
    );
    Ok(Played {
        outcomes,
        refusals,
        acted,
    })
}

/// A refusal's message with its figures, ranges and networks left out, so refusals for
/// the same reasons read alike: `a step-up is required before sending (score #): range #
/// converted # of # new destinations …`.
fn refusal_shape(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_figure = false;
    for c in message.chars() {
        let figure = c.is_ascii_digit() || (in_figure && matches!(c, '.' | '/'));
        if c == '+' || figure {
            if !in_figure {
                out.push('#');
            }
            in_figure = true;
        } else {
            in_figure = false;
            out.push(c);
        }
    }
    out
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// What happened to one kind of legitimate user.
#[derive(Debug, Default)]
struct LegitTally {
    users: usize,
    blocked: usize,
    step_up: usize,
    rate_limited: usize,
    errors: usize,
}

impl LegitTally {
    fn add(&mut self, outcome: Outcome) {
        self.users += 1;
        match outcome {
            Outcome::Sent(_) => {}
            Outcome::Refused(Decision::Block) => self.blocked += 1,
            Outcome::Refused(_) => self.step_up += 1,
            Outcome::RateLimited => self.rate_limited += 1,
            Outcome::Error => self.errors += 1,
        }
    }

    fn print(&self, who: &str) {
        println!(
            "  {who:<34} {} users: blocked {} ({:.2}%), asked to step up {} ({:.2}%), \
             rate limited {}, errors {}",
            self.users,
            self.blocked,
            percent(self.blocked, self.users),
            self.step_up,
            percent(self.step_up, self.users),
            self.rate_limited,
            self.errors
        );
    }
}

/// What one attack got through: its attempts and sends, and per range it used, its sends
/// and how many of them came before the range's first block.
#[derive(Debug, Default)]
struct AttackTally<'a> {
    attempts: usize,
    sent: usize,
    ranges: BTreeMap<&'a str, (usize, Option<usize>)>,
}

pub(crate) async fn run(root: &Path, legit: usize, attack: usize) -> anyhow::Result<()> {
    let actions = stream(legit, attack)?;
    let users_of = |kind: UserKind| {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Legit { kind: k, .. } if *k == kind))
            .count()
    };
    let (ranged_users, returning_users) = (
        users_of(UserKind::InAttackedRange),
        users_of(UserKind::Returning),
    );
    let adaptive_attempts = THIN_WIDE_RANGES * THIN_WIDE_PER_RANGE + FAKING_ATTEMPTS;
    println!(
        "verify-gateway bench abuse: {} legitimate users (90% enter their code; {ranged_users} \
         more in the ranges of the last two attacks, 70% enter theirs; those who enter their \
         code pass a step-up when asked, and start again; {returning_users} come back after a \
         verification they completed) and {} attack attempts \
         ({attack} sequential numbers in premium range {PREMIUM_RANGE}… and random numbers in \
         range {MOBILE_RANGE}…, a new IP every 3 attempts; {} thin and wide, {THIN_WIDE_PER_RANGE} \
         in each of {THIN_WIDE_RANGES} ranges of 6 countries; {FAKING_ATTEMPTS} \
         conversion-faking in one range, one in {FAKING_COMPLETES_ONE_IN} completed; the last \
         two a new IP and identity per start), interleaved, shipped limits and scoring, \
         release build",
        legit,
        attack + adaptive_attempts,
        THIN_WIDE_RANGES * THIN_WIDE_PER_RANGE,
    );
    let Played {
        outcomes: enforce,
        refusals,
        acted,
    } = run_stream(root, "enforce", &actions, None).await?;
    let shadow = run_stream(root, "shadow", &actions, Some(&acted))
        .await?
        .outcomes;

    let mut attacks: BTreeMap<Attack, AttackTally<'_>> = BTreeMap::new();
    let (mut all_users, mut ranged, mut returning) = (
        LegitTally::default(),
        LegitTally::default(),
        LegitTally::default(),
    );
    for (action, outcome) in actions.iter().zip(&enforce) {
        match action {
            Action::Legit { kind, .. } => {
                all_users.add(*outcome);
                match kind {
                    UserKind::Ordinary => {}
                    UserKind::InAttackedRange => ranged.add(*outcome),
                    UserKind::Returning => returning.add(*outcome),
                }
            }
            Action::Attack { attack, range, .. } => {
                let tally = attacks.entry(*attack).or_default();
                let entry = tally.ranges.entry(range.as_str()).or_default();
                tally.attempts += 1;
                if matches!(outcome, Outcome::Sent(_)) {
                    tally.sent += 1;
                    entry.0 += 1;
                }
                if entry.1.is_none() && *outcome == Outcome::Refused(Decision::Block) {
                    entry.1 = Some(entry.0);
                }
            }
        }
    }
    let attempts: usize = attacks.values().map(|t| t.attempts).sum();
    let sent: usize = attacks.values().map(|t| t.sent).sum();
    println!("enforce mode");
    println!(
        "  attack sends reaching the sandbox  {sent} of {attempts} ({:.2}%): {:.2}% stopped",
        percent(sent, attempts),
        100.0 - percent(sent, attempts)
    );
    for attack in Attack::ALL {
        let Some(tally) = attacks.get(&attack) else {
            continue;
        };
        println!(
            "  {:<46} {} of {} sent: {:.2}% stopped",
            attack.name(),
            tally.sent,
            tally.attempts,
            100.0 - percent(tally.sent, tally.attempts)
        );
        if tally.ranges.len() == 1 {
            for (range, (sends, blocked_after)) in &tally.ranges {
                match blocked_after {
                    Some(n) => println!("    range {range} blocked after {n} sends"),
                    None => println!("    range {range} never blocked ({sends} sends)"),
                }
            }
        } else {
            let blocked: Vec<usize> = tally.ranges.values().filter_map(|r| r.1).collect();
            println!(
                "    {} of {} ranges blocked, after {:.1} sends on average",
                blocked.len(),
                tally.ranges.len(),
                blocked.iter().sum::<usize>() as f64 / blocked.len().max(1) as f64
            );
        }
    }
    all_users.print("legitimate users");
    ranged.print("  of them in the attacked ranges");
    returning.print("  of them returning");
    for (why, n) in &refusals {
        println!("    {n:>4} refused: {why}");
    }

    // Rate limits run on the wall clock, and the shadow run is slower (it sends the attack),
    // so a start near a limit's edge may be limited in one run and scored in the other; and
    // shadow mode sends what enforce refuses, so those starts take from the limits of their
    // destinations, ranges and countries, which a refused start leaves alone: decisions are
    // compared where both runs scored.
    let both = |(e, s): &(&Outcome, &Outcome)| e.decision().is_some() && s.decision().is_some();
    let scored = enforce.iter().zip(&shadow).filter(both).count();
    let agree = enforce
        .iter()
        .zip(&shadow)
        .filter(both)
        .filter(|(e, s)| e.decision() == s.decision())
        .count();
    // Everyone acts in the shadow run as in the enforce run; legitimate users' decisions
    // are also shown apart, as what shadow mode is for: not refusing them by mistake.
    let legit_both: Vec<(&Outcome, &Outcome)> = actions
        .iter()
        .zip(enforce.iter().zip(&shadow))
        .filter(|(a, _)| matches!(a, Action::Legit { .. }))
        .map(|(_, pair)| pair)
        .filter(both)
        .collect();
    let legit_agree = legit_both
        .iter()
        .filter(|(e, s)| e.decision() == s.decision())
        .count();
    let limited_once = enforce
        .iter()
        .zip(&shadow)
        .filter(|(e, s)| (**e == Outcome::RateLimited) != (**s == Outcome::RateLimited))
        .count();
    let shadow_sent_attack = actions
        .iter()
        .zip(&shadow)
        .filter(|(a, o)| matches!(a, Action::Attack { .. }) && matches!(o, Outcome::Sent(_)))
        .count();
    let would_refuse = shadow
        .iter()
        .filter(|o| matches!(o, Outcome::Sent(Decision::Block | Decision::StepUp)))
        .count();
    let differing: Vec<String> = actions
        .iter()
        .zip(enforce.iter().zip(&shadow))
        .filter(|(_, pair)| both(pair) && pair.0.decision() != pair.1.decision())
        .take(5)
        .map(|(a, (e, s))| {
            let who = match a {
                Action::Legit { .. } => "legitimate".to_owned(),
                Action::Attack { attack, range, .. } => {
                    format!("{} on {range}", attack.name())
                }
            };
            format!("{who}: enforce {e:?}, shadow {s:?}")
        })
        .collect();
    println!("shadow mode (same stream, fresh database)");
    println!(
        "  decisions equal to enforce mode     {agree} of {scored} starts both runs scored ({:.2}%); \
         {limited_once} rate-limited in one run only",
        percent(agree, scored)
    );
    println!(
        "    of legitimate users' starts       {legit_agree} of {} ({:.2}%)",
        legit_both.len(),
        percent(legit_agree, legit_both.len())
    );
    println!(
        "  refused                             {} (shadow refuses nothing); would refuse {would_refuse}",
        shadow
            .iter()
            .filter(|o| matches!(o, Outcome::Refused(_)))
            .count()
    );
    println!("  attack sends reaching the sandbox   {shadow_sent_attack} of {attempts}");
    for d in differing {
        println!("  differs: {d}");
    }
    over_a_day(root)
}

/// The day-long variant: the thin-and-wide and conversion-faking attacks played out
/// over a simulated day against scoring and a store that behaves like the shared one
/// (minute buckets, windows that slide, blocks that run out), among ordinary users of
/// whom some enter their code after it expired. Hours cannot pass on a running gateway's
/// clock, so the fraud crate's simulation runs them (`crates/fraud/src/simulation.rs`); it
/// prints its figures and fails when an attack gets more than a tenth of its sends
/// through or ordinary users are refused or stepped up beyond their budgets.
fn over_a_day(root: &Path) -> anyhow::Result<()> {
    println!("over a simulated day (scoring and its store, without the service):");
    crate::run(crate::cargo().current_dir(root).args([
        "test",
        "--release",
        "--locked",
        "--quiet",
        "-p",
        "fraud",
        "--lib",
        "over_a_day",
        "--",
        "--nocapture",
        "--test-threads",
        "1",
    ]))
}
