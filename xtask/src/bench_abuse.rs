//! `cargo xtask bench abuse`: an SMS-pumping scenario through the real service and the
//! sandbox, with the shipped rate limits and fraud scoring.
//!
//! One deterministic stream interleaves legitimate users (each from its own IP, numbers
//! spread over common countries and ranges, 90% of them entering their code) with two
//! attacks that never check a code and rotate client IPs: sequential numbers in a GB
//! premium-rate range, and random numbers across one Indonesian mobile range. The stream
//! runs once in `enforce` mode and once, on a fresh database, in `shadow` mode, one request
//! at a time so both runs see the same order. Printed: attack sends that reached the
//! sandbox, after how many sends each attacked range was blocked, the legitimate users
//! refused, and how far shadow mode's recorded decisions agree with enforce mode's.

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

#[derive(Debug, Clone)]
enum Action {
    Legit {
        to: String,
        ip: String,
        identity: String,
        completes: bool,
    },
    Attack {
        range: &'static str,
        to: String,
        ip: String,
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
        let to = (0..10_000)
            .map(|_| fill(&mut rng, template))
            .find(|candidate| valid(candidate))
            .with_context(|| format!("no valid number drawn from the template {template}"))?;
        legit_actions.push(Action::Legit {
            to,
            ip: format!("10.{}.{}.{}", i / 65_536 % 256, i / 256 % 256, i % 256),
            identity: format!("user-{i}"),
            completes: rng.below(10) < 9,
        });
    }
    let mut attack_actions = Vec::new();
    for i in 0..attack {
        // Sequential numbers in the premium range, and random ones in the mobile range,
        // alternating; a new client IP every three attempts.
        let ip = format!("198.51.{}.{}", (i / 3) / 256 % 256, (i / 3) % 256);
        if i % 2 == 0 {
            attack_actions.push(Action::Attack {
                range: PREMIUM_RANGE,
                to: format!("{PREMIUM_RANGE}{:05}", i / 2),
                ip,
            });
        } else {
            attack_actions.push(Action::Attack {
                range: MOBILE_RANGE,
                to: format!("{MOBILE_RANGE}{}", rng.digits(5)),
                ip,
            });
        }
    }
    // Interleave the two in a random order that keeps each one's own order.
    let mut out = Vec::with_capacity(legit + attack);
    let (mut l, mut a) = (legit_actions.into_iter(), attack_actions.into_iter());
    let (mut left_l, mut left_a) = (legit as u64, attack as u64);
    while left_l + left_a > 0 {
        if rng.below(left_l + left_a) < left_l {
            out.extend(l.next());
            left_l -= 1;
        } else {
            out.extend(a.next());
            left_a -= 1;
        }
    }
    Ok(out)
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

async fn start(
    client: &mut crate::bench::Client,
    to: &str,
    ip: &str,
    identity: &str,
) -> (Outcome, Option<String>) {
    let answer = client
        .start_verification(pb::StartVerificationRequest {
            purpose: "login".into(),
            to: to.into(),
            channel: pb::Channel::Sms.into(),
            client_ip: ip.into(),
            identity: identity.into(),
            ..Default::default()
        })
        .await;
    match answer {
        Ok(r) => {
            let v = r.into_inner().verification;
            (Outcome::Sent(decision_of(v.as_ref())), v.map(|v| v.id))
        }
        Err(s) => {
            // Why legitimate users (the ones with an identity) were refused, for the first few.
            static SHOWN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            if !identity.is_empty()
                && matches!(s.code(), Code::PermissionDenied | Code::FailedPrecondition)
                && SHOWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 5
            {
                eprintln!("  a legitimate user was refused: {}", s.message());
            }
            match s.code() {
                Code::PermissionDenied => (Outcome::Refused(Decision::Block), None),
                Code::FailedPrecondition => (Outcome::Refused(Decision::StepUp), None),
                Code::ResourceExhausted => (Outcome::RateLimited, None),
                _ => {
                    eprintln!("unexpected answer: {s:?}");
                    (Outcome::Error, None)
                }
            }
        }
    }
}

async fn run_stream(root: &Path, mode: &str, actions: &[Action]) -> anyhow::Result<Vec<Outcome>> {
    let gateway = spawn_gateway(root, Upstream::Sandbox, &[("VERIFY_FRAUD__MODE", mode)])?;
    let mut client = connect(gateway.grpc).await?;
    let http = reqwest::Client::new();
    let inbox = format!("http://127.0.0.1:{}/sandbox/messages", gateway.sandbox);
    let began = Instant::now();
    let mut outcomes = Vec::with_capacity(actions.len());
    for action in actions {
        let outcome = match action {
            Action::Legit {
                to,
                ip,
                identity,
                completes,
            } => {
                let (outcome, id) = start(&mut client, to, ip, identity).await;
                if let (true, Some(id)) = (*completes, id) {
                    let url = url::Url::parse_with_params(&inbox, [("to", to.as_str())])?;
                    let messages: serde_json::Value = http.get(url).send().await?.json().await?;
                    let code = messages[0]["code"]
                        .as_str()
                        .context("no code in the sandbox inbox")?
                        .to_owned();
                    client
                        .check_verification(pb::CheckVerificationRequest { id, code })
                        .await
                        .context("a legitimate check")?;
                }
                outcome
            }
            Action::Attack { to, ip, .. } => start(&mut client, to, ip, "").await.0,
        };
        outcomes.push(outcome);
    }
    eprintln!(
        "  {mode}: {} requests in {:.1} s",
        actions.len(),
        began.elapsed().as_secs_f64()
    );
    Ok(outcomes)
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

pub(crate) async fn run(root: &Path, legit: usize, attack: usize) -> anyhow::Result<()> {
    let actions = stream(legit, attack)?;
    println!(
        "verify-gateway bench abuse: {legit} legitimate users (90% enter their code) and {attack} \
         attack attempts (sequential numbers in premium range {PREMIUM_RANGE}…, random numbers \
         in range {MOBILE_RANGE}…; a new IP every 3 attempts; no checks), interleaved, shipped \
         limits and scoring, release build"
    );
    let enforce = run_stream(root, "enforce", &actions).await?;
    let shadow = run_stream(root, "shadow", &actions).await?;

    let mut attack_sent = 0;
    let mut legit_refused: BTreeMap<&str, usize> = BTreeMap::new();
    let mut legit_total = 0;
    // Per attacked range: attempts, sends, and sends before its first block.
    let mut ranges: BTreeMap<&str, (usize, usize, Option<usize>)> = BTreeMap::new();
    for (action, outcome) in actions.iter().zip(&enforce) {
        match action {
            Action::Legit { .. } => {
                legit_total += 1;
                let kind = match outcome {
                    Outcome::Sent(_) => None,
                    Outcome::Refused(Decision::Block) => Some("blocked"),
                    Outcome::Refused(_) => Some("step-up"),
                    Outcome::RateLimited => Some("rate limited"),
                    Outcome::Error => Some("error"),
                };
                if let Some(kind) = kind {
                    *legit_refused.entry(kind).or_default() += 1;
                }
            }
            Action::Attack { range, .. } => {
                let entry = ranges.entry(range).or_default();
                entry.0 += 1;
                if matches!(outcome, Outcome::Sent(_)) {
                    attack_sent += 1;
                    entry.1 += 1;
                }
                if entry.2.is_none() && *outcome == Outcome::Refused(Decision::Block) {
                    entry.2 = Some(entry.1);
                }
            }
        }
    }
    let refused: usize = legit_refused.values().sum();
    println!("enforce mode");
    println!(
        "  attack sends reaching the sandbox  {attack_sent} of {attack} ({:.2}%): {:.2}% stopped",
        percent(attack_sent, attack),
        100.0 - percent(attack_sent, attack)
    );
    for (range, (attempts, sends, blocked_after)) in &ranges {
        match blocked_after {
            Some(n) => println!(
                "  range {range:<10} blocked after {n} sends ({sends} sends of {attempts} attempts in all)"
            ),
            None => {
                println!("  range {range:<10} never blocked ({sends} sends of {attempts} attempts)")
            }
        }
    }
    println!(
        "  legitimate users refused            {refused} of {legit_total} ({:.2}%) {legit_refused:?}",
        percent(refused, legit_total)
    );

    // Rate limits run on the wall clock, and the shadow run is slower (it sends the attack),
    // so a start near a limit's edge may be limited in one run and scored in the other;
    // decisions are compared where both runs scored.
    let both = |(e, s): &(&Outcome, &Outcome)| e.decision().is_some() && s.decision().is_some();
    let scored = enforce.iter().zip(&shadow).filter(both).count();
    let agree = enforce
        .iter()
        .zip(&shadow)
        .filter(both)
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
        .filter(|(_, (e, s))| e.decision().is_some() && e.decision() != s.decision())
        .take(5)
        .map(|(a, (e, s))| {
            let who = match a {
                Action::Legit { .. } => "legitimate".to_owned(),
                Action::Attack { range, .. } => format!("attack on {range}"),
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
        "  refused                             {} (shadow refuses nothing); would refuse {would_refuse}",
        shadow
            .iter()
            .filter(|o| matches!(o, Outcome::Refused(_)))
            .count()
    );
    println!("  attack sends reaching the sandbox   {shadow_sent_attack} of {attack}");
    for d in differing {
        println!("  differs: {d}");
    }
    Ok(())
}
