//! What scoring may be tuned by: the mode, country and number-type lists, the thresholds
//! of the decision and each signal's window, thresholds and weights.

use std::fmt;
use std::time::Duration;

use domain::abuse::COUNTER_BUCKET;
use domain::{NumberType, Region};

/// Whether scoring runs, and whether its decisions are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Score, record, impose blocks and refuse what scores too high.
    Enforce,
    /// Score, record and impose blocks exactly as [`Mode::Enforce`] would, but mark all of
    /// it shadow: nothing is refused. For trying a configuration on live traffic.
    Shadow,
    /// Do nothing: no reads, no counts, no assessment.
    Off,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Enforce, Mode::Shadow, Mode::Off];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
            Mode::Off => "off",
        }
    }

    /// Parses the configuration's spelling (`enforce`, `shadow`, `off`).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of a [`CountSignal`]: from a count of `at` on, the signal adds `weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    pub at: u32,
    pub weight: u32,
}

/// A signal that counts something over a window (new destinations). It adds the weight of
/// the heaviest tier the count reaches, the attempt being scored included. A signal with
/// no tier of any weight is off (and its counter is not read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountSignal {
    pub window: Duration,
    pub tiers: Vec<Tier>,
}

impl CountSignal {
    pub(crate) fn enabled(&self) -> bool {
        self.tiers.iter().any(|t| t.weight > 0)
    }

    /// The tier a count reaches, if any.
    pub(crate) fn reached(&self, count: u64) -> Option<Tier> {
        self.tiers
            .iter()
            .filter(|t| t.weight > 0 && count >= u64::from(t.at))
            .max_by_key(|t| t.weight)
            .copied()
    }
}

/// One step of a [`ConversionSignal`]: once at least `min_sent` new destinations were tried
/// and fewer than `below_percent` of them approved a code, the signal adds `weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversionTier {
    pub min_sent: u32,
    pub below_percent: u32,
    pub weight: u32,
}

/// A signal on the share of new destinations over a window that approved a code. It adds
/// the weight of the heaviest tier reached. A signal with no tier of any weight is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversionSignal {
    pub window: Duration,
    pub tiers: Vec<ConversionTier>,
}

impl ConversionSignal {
    pub(crate) fn enabled(&self) -> bool {
        self.tiers.iter().any(|t| t.weight > 0)
    }

    /// The tier `approved` of `sent` reaches, if any.
    pub(crate) fn reached(&self, sent: u64, approved: u64) -> Option<ConversionTier> {
        self.tiers
            .iter()
            .filter(|t| {
                t.weight > 0
                    && sent >= u64::from(t.min_sent)
                    && approved.saturating_mul(100)
                        < u64::from(t.below_percent).saturating_mul(sent)
            })
            .max_by_key(|t| t.weight)
            .copied()
    }
}

/// Destinations commonly abused for SMS pumping and international revenue share fraud,
/// drawn from public fraud reports. A starting point only: these destinations shift year
/// by year, so operators should review the list against their own traffic
/// ([`FraudConfig::high_risk_countries`] replaces it). Being on it only adds
/// [`FraudConfig::high_risk_country_weight`]; it never refuses on its own.
pub const DEFAULT_HIGH_RISK_COUNTRIES: &[&str] = &[
    // Central Asia and the Caucasus.
    "AZ", "BY", "KG", "KZ", "TJ", "TM", "UZ", //
    // Europe's long-standing premium-rate hot spots.
    "LT", "LV", //
    // The Caribbean.
    "CU", //
    // Africa.
    "CF", "GM", "GN", "GW", "LR", "MR", "NG", "SL", "SO", "TD", "ZW", //
    // South Asia.
    "BD", "LK", "MM", "MV", "PK", //
    // The Pacific islands.
    "CK", "KI", "NR", "NU", "PG", "SB", "TK", "TO", "TV", "VU", "WS",
];

/// How fraud scoring behaves. [`Default`] gives the recommended production settings; the
/// service maps its TOML `[fraud]` table onto these fields and calls
/// [`FraudConfig::validate`] once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FraudConfig {
    pub mode: Mode,

    /// When not empty, only these countries may receive codes (and numbers of no country
    /// may not). Default: empty.
    pub allow_countries: Vec<Region>,
    /// Countries that never receive codes. Default: empty.
    pub block_countries: Vec<Region>,
    /// Countries that add [`Self::high_risk_country_weight`]. Default:
    /// [`DEFAULT_HIGH_RISK_COUNTRIES`].
    pub high_risk_countries: Vec<Region>,
    /// Default 20: alone, or with one other weak signal, it never refuses.
    pub high_risk_country_weight: u32,
    /// Numbers the numbering plan puts in no country (`+881` satellite, `+882`/`+883`
    /// international networks, classic revenue-share targets). Default 30.
    pub unknown_country_weight: u32,

    /// Number types that never receive codes. Default: premium rate, shared cost.
    pub blocked_number_types: Vec<NumberType>,
    /// Number types that add [`Self::risky_number_type_weight`]. Default: VoIP, toll free,
    /// personal number, pager, UAN, voicemail, other, unknown.
    pub risky_number_types: Vec<NumberType>,
    /// Default 20.
    pub risky_number_type_weight: u32,

    /// A score (every weight) from here on asks for a step-up. Default 50.
    pub step_up_score: u32,
    /// Behaviour (every weight but what the number is: country, type) from here on blocks,
    /// and imposes blocks on the range or IP whose signals took part. Default 100.
    pub block_score: u32,

    /// New destinations in one range (the number without its last five digits), refused
    /// starts included. Never refuses alone (a busy range is not an attack); it tips a range
    /// that also converts at zero into a block. Default: 10 minutes, 6 → 15, 11 → 25.
    pub prefix_velocity: CountSignal,
    /// Approvals over new destinations in a range (refused ones included, this destination
    /// left out). Default: 6 hours; under 20% of at least 5 → 60 (a step-up); under 5% of
    /// at least 5, i.e. none approved → 75 (a block with severe velocity); under 10% of at
    /// least 20 → 100 (a block alone).
    pub prefix_conversion: ConversionSignal,
    /// Approvals over new destinations in a country. Weak on purpose: an attack on one range
    /// drags its whole country down, and that alone must not refuse anyone.
    /// Default: 1 hour, under 20% of at least 50 → 20.
    pub country_conversion: ConversionSignal,
    /// New destinations in one block of 100 numbers (runs of sequential numbers).
    /// Default: 1 hour, 4 → 50, 7 → 100.
    pub sequential: CountSignal,
    /// New destinations from one client IP. Default: 1 hour, 10 → 50, 30 → 100.
    pub ip_fan_out: CountSignal,
    /// Approvals over new destinations started from one client network (an IPv4 /24, an
    /// IPv6 /48; only starts scoring allowed count, as a refused one gives its sender no code
    /// to enter; this destination left out): an attacker who takes a new address, identity
    /// and range for every start mostly keeps its network, and converts nothing, or a share
    /// no network of real users falls to. A network of many users (a carrier's NAT, an
    /// office) is not suspect by its size, only by its conversion. Default: 6 hours; under
    /// 5% of at least 5, i.e. none approved → 60 (a step-up); under 50% of at least 8 → 60;
    /// under 10% of at least 20 → 100 (a block, and the network blocked: reached by a
    /// network that passes its step-ups and still enters no code).
    pub network_conversion: ConversionSignal,
    /// Step-ups completed over step-ups asked of one client network. A network of real
    /// users passes the step-ups it is asked (a captcha, a login); a paced attacker,
    /// stepped up once its network's conversion falls, walks away from each and tries again
    /// later with a new number, so that the network conversion, which counts only the
    /// starts it lets through, never reaches its blocking tier. In enforce mode a start
    /// sent with `step_up_completed` completes one; in shadow mode, where callers are asked
    /// nothing and the stepped-up start is sent, its code entered does (what a real user
    /// does and a walking attacker does not). Default: 24 hours; under 20% of at least 5 →
    /// 100 (a block, and the network blocked).
    pub network_step_ups: ConversionSignal,
    /// New destinations for one identity (the caller's user). Default: 1 hour, 4 → 50,
    /// 10 → 100.
    pub identity_fan_out: CountSignal,

    /// How long a block imposed by scoring lasts. Default 12 hours.
    pub auto_block: Duration,
    /// How long a range stays blocked after Twilio's Fraud Guard refused it (60410).
    /// Default 12 hours, as long as Fraud Guard's own block.
    pub fraud_guard_block: Duration,
    /// How long a country stays blocked after Twilio's geo permissions refused it (60605,
    /// 21408). Default 1 hour: it only saves futile calls, and an operator who enables the
    /// country at Twilio should not wait long.
    pub geo_permission_block: Duration,
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

fn counting(window: Duration, tiers: &[(u32, u32)]) -> CountSignal {
    CountSignal {
        window,
        tiers: tiers
            .iter()
            .map(|&(at, weight)| Tier { at, weight })
            .collect(),
    }
}

fn converting(window: Duration, tiers: &[(u32, u32, u32)]) -> ConversionSignal {
    ConversionSignal {
        window,
        tiers: tiers
            .iter()
            .map(|&(min_sent, below_percent, weight)| ConversionTier {
                min_sent,
                below_percent,
                weight,
            })
            .collect(),
    }
}

impl Default for FraudConfig {
    fn default() -> Self {
        FraudConfig {
            mode: Mode::Enforce,
            allow_countries: Vec::new(),
            block_countries: Vec::new(),
            high_risk_countries: DEFAULT_HIGH_RISK_COUNTRIES
                .iter()
                .filter_map(|c| Region::parse(c).ok())
                .collect(),
            high_risk_country_weight: 20,
            unknown_country_weight: 30,
            blocked_number_types: vec![NumberType::PremiumRate, NumberType::SharedCost],
            risky_number_types: vec![
                NumberType::Voip,
                NumberType::TollFree,
                NumberType::PersonalNumber,
                NumberType::Pager,
                NumberType::Uan,
                NumberType::Voicemail,
                NumberType::Other,
                NumberType::Unknown,
            ],
            risky_number_type_weight: 20,
            step_up_score: 50,
            block_score: 100,
            prefix_velocity: counting(10 * MINUTE, &[(6, 15), (11, 25)]),
            prefix_conversion: converting(6 * HOUR, &[(5, 20, 60), (5, 5, 75), (20, 10, 100)]),
            country_conversion: converting(HOUR, &[(50, 20, 20)]),
            sequential: counting(HOUR, &[(4, 50), (7, 100)]),
            ip_fan_out: counting(HOUR, &[(10, 50), (30, 100)]),
            network_conversion: converting(6 * HOUR, &[(5, 5, 60), (8, 50, 60), (20, 10, 100)]),
            network_step_ups: converting(24 * HOUR, &[(5, 20, 100)]),
            identity_fan_out: counting(HOUR, &[(4, 50), (10, 100)]),
            auto_block: 12 * HOUR,
            fraud_guard_block: 12 * HOUR,
            geo_permission_block: HOUR,
        }
    }
}

/// A configuration that cannot work as meant; the text names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fraud configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The longest window a counter is read over.
const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

impl FraudConfig {
    /// Whether scoring reads and counts client networks' step-ups: it scores at all and
    /// [`FraudConfig::network_step_ups`] has tiers.
    pub fn observes_step_ups(&self) -> bool {
        self.mode != Mode::Off && self.network_step_ups.enabled()
    }

    /// Checks what types cannot: thresholds in order, windows at least one counter bucket
    /// long, rates at most 100%, durations not zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError(msg));
        if self.step_up_score == 0 {
            return fail("step_up_score must be at least 1".into());
        }
        if self.block_score < self.step_up_score {
            return fail(format!(
                "block_score ({}) must be at least step_up_score ({})",
                self.block_score, self.step_up_score
            ));
        }
        let window = |name: &str, w: Duration| {
            if w < COUNTER_BUCKET || w > MAX_WINDOW {
                Err(ConfigError(format!(
                    "{name}.window must be between one minute and seven days"
                )))
            } else {
                Ok(())
            }
        };
        for (name, s) in [
            ("prefix_velocity", &self.prefix_velocity),
            ("sequential", &self.sequential),
            ("ip_fan_out", &self.ip_fan_out),
            ("identity_fan_out", &self.identity_fan_out),
        ] {
            if !s.enabled() {
                continue;
            }
            window(name, s.window)?;
            if s.tiers.iter().any(|t| t.at == 0) {
                return fail(format!(
                    "{name}.tiers: every tier's count must be at least 1"
                ));
            }
        }
        for (name, s) in [
            ("prefix_conversion", &self.prefix_conversion),
            ("country_conversion", &self.country_conversion),
            ("network_conversion", &self.network_conversion),
            ("network_step_ups", &self.network_step_ups),
        ] {
            if !s.enabled() {
                continue;
            }
            window(name, s.window)?;
            if s.tiers.iter().any(|t| t.min_sent == 0) {
                return fail(format!(
                    "{name}.tiers: every tier's min_sent must be at least 1"
                ));
            }
            if s.tiers.iter().any(|t| t.below_percent > 100) {
                return fail(format!("{name}.tiers: a below_percent must be at most 100"));
            }
        }
        for (name, d) in [
            ("auto_block", self.auto_block),
            ("fraud_guard_block", self.fraud_guard_block),
            ("geo_permission_block", self.geo_permission_block),
        ] {
            if d < COUNTER_BUCKET {
                return fail(format!("{name} must be at least one minute"));
            }
        }
        Ok(())
    }

    /// How far back a destination counts as seen: the longest of the windows that count
    /// new destinations, so one is never new twice within any of them.
    pub(crate) fn novelty_window(&self) -> Duration {
        self.sequential
            .window
            .max(self.ip_fan_out.window)
            .max(self.identity_fan_out.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_every_default_country_parses() {
        let config = FraudConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(
            config.high_risk_countries.len(),
            DEFAULT_HIGH_RISK_COUNTRIES.len()
        );
    }

    #[test]
    fn modes_parse() {
        for m in Mode::ALL {
            assert_eq!(Mode::parse(m.as_str()), Some(m));
        }
        assert_eq!(Mode::parse(" Shadow "), Some(Mode::Shadow));
        assert_eq!(Mode::parse("audit"), None);
    }

    #[test]
    fn invalid_configurations_name_the_field() {
        fn check(edit: impl Fn(&mut FraudConfig), field: &str) {
            let mut config = FraudConfig::default();
            edit(&mut config);
            let err = config.validate().expect_err(field);
            assert!(err.0.contains(field), "{err} should name {field}");
        }
        check(|c| c.step_up_score = 0, "step_up_score");
        check(|c| c.block_score = 10, "block_score");
        check(
            |c| c.prefix_velocity.tiers[0].at = 0,
            "prefix_velocity.tiers",
        );
        check(
            |c| c.ip_fan_out.window = Duration::from_secs(5),
            "ip_fan_out.window",
        );
        check(
            |c| c.prefix_conversion.tiers[1].below_percent = 101,
            "prefix_conversion.tiers",
        );
        check(
            |c| c.country_conversion.tiers[0].min_sent = 0,
            "country_conversion.tiers",
        );
        check(|c| c.auto_block = Duration::ZERO, "auto_block");
    }

    #[test]
    fn a_signal_with_no_weight_is_off_and_not_validated() {
        let config = FraudConfig {
            identity_fan_out: counting(Duration::ZERO, &[(0, 0)]),
            country_conversion: converting(Duration::ZERO, &[]),
            ..FraudConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn signals_weigh_by_their_heaviest_tier() {
        let s = FraudConfig::default().sequential;
        let got: Vec<u32> = (0..9)
            .map(|n| s.reached(n).map_or(0, |t| t.weight))
            .collect();
        assert_eq!(got, [0, 0, 0, 0, 50, 50, 50, 100, 100]);
        let c = FraudConfig::default().prefix_conversion;
        let check = |sent, approved, expected| {
            let got = c.reached(sent, approved).map_or(0, |t| t.weight);
            assert_eq!(got, expected, "{approved} of {sent}");
        };
        check(0, 0, 0);
        check(4, 0, 0);
        check(5, 0, 75);
        check(6, 1, 60);
        check(5, 1, 0);
        check(19, 0, 75);
        check(19, 3, 60);
        check(20, 1, 100);
        check(20, 2, 60);
        check(20, 4, 0);
    }
}
