//! Pure policy decisions: which purposes exist, which channel a start uses, the lifecycle
//! limits of a verification and the idempotency window. Limits are stricter than Twilio's
//! (5 sends, 5 checks, 10 minutes) so users never run into Twilio's lockouts.
//!
//! No IO and no clock: `now` is an argument.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::abuse::Quota;
use domain::{Channel, Destination, Purpose, Region};

/// Twilio's own limits; our limits must stay within them.
pub mod twilio_limits {
    use std::time::Duration;

    pub const MAX_SENDS: u32 = 5;
    pub const MAX_CHECKS: u32 = 5;
    pub const CODE_TTL: Duration = Duration::from_secs(600);
}

/// What configuration says about one purpose, before validation.
#[derive(Debug, Clone)]
pub struct PurposeSettings {
    pub service_sid: String,
    pub channels: Vec<Channel>,
    pub default_channel: Option<Channel>,
    pub default_region: Option<Region>,
    pub max_sends: u32,
    pub max_checks: u32,
    pub code_ttl: Duration,
    pub idempotency_window: Duration,
    /// The order in which channels are tried when delivery fails or stays silent, e.g.
    /// `[sms, call]`; empty: no fallback.
    pub fallback: Vec<Channel>,
    /// How long a send may go without a delivery report before the fallback happens.
    pub fallback_after: Duration,
    /// The purpose's rate limits.
    pub limits: RateLimits,
}

/// A purpose's rate limits, each a [`Quota`] or `None` (that limit is off). Keys are per
/// purpose: one purpose's traffic never uses up another's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// Sends (starts and resends) to one destination.
    pub send_per_destination: Option<Quota>,
    /// Sends asked for by one client IP address (IPv6 by /64).
    pub send_per_client_ip: Option<Quota>,
    /// Sends asked for by one identity (the caller's user id).
    pub send_per_identity: Option<Quota>,
    /// Sends to one range of numbers (the E.164 number without its last five digits).
    pub send_per_range: Option<Quota>,
    /// Sends to one destination country.
    pub send_per_country: Option<Quota>,
    /// Checks by one identity (or, without one, on one verification).
    pub check_per_identity: Option<Quota>,
    /// Checks of every verification to one destination together: the guesses one phone
    /// number or mailbox can be made to take, whoever asks and however many verifications
    /// are started for it.
    pub check_per_destination: Option<Quota>,
    /// After a wrong code, how long the next check on that verification must wait.
    pub check_cooldown: Duration,
}

impl RateLimits {
    /// No limits at all.
    pub fn none() -> Self {
        RateLimits {
            send_per_destination: None,
            send_per_client_ip: None,
            send_per_identity: None,
            send_per_range: None,
            send_per_country: None,
            check_per_identity: None,
            check_per_destination: None,
            check_cooldown: Duration::ZERO,
        }
    }
}

impl Default for RateLimits {
    /// The recommended limits: generous for people, tight for scripts.
    fn default() -> Self {
        let q = |raw: &str| Quota::parse(raw).ok();
        RateLimits {
            send_per_destination: q("5/10m"),
            send_per_client_ip: q("20/10m"),
            send_per_identity: q("10/10m"),
            send_per_range: q("100/10m"),
            send_per_country: q("20000/1d"),
            check_per_identity: q("30/10m"),
            // A burst of 40, then one more every 36 minutes: at most 80 guesses on one
            // destination in any day, under the 100 failed attempts NIST SP 800-63B
            // (5.2.2) allows before an authenticator is locked.
            check_per_destination: q("40/1d"),
            check_cooldown: Duration::ZERO,
        }
    }
}

impl PurposeSettings {
    /// The gateway's recommended limits for a purpose using `service_sid` and `channels`.
    pub fn recommended(service_sid: impl Into<String>, channels: Vec<Channel>) -> Self {
        PurposeSettings {
            service_sid: service_sid.into(),
            channels,
            default_channel: None,
            default_region: None,
            max_sends: 3,
            max_checks: 3,
            code_ttl: twilio_limits::CODE_TTL,
            idempotency_window: Duration::from_secs(600),
            fallback: Vec::new(),
            fallback_after: Duration::from_secs(30),
            limits: RateLimits::default(),
        }
    }
}

/// A validated purpose policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurposePolicy {
    purpose: Purpose,
    service_sid: String,
    channels: Vec<Channel>,
    default_channel: Channel,
    default_region: Option<Region>,
    max_sends: u32,
    max_checks: u32,
    code_ttl: Duration,
    idempotency_window: Duration,
    fallback: Vec<Channel>,
    fallback_after: Duration,
    limits: RateLimits,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown purpose `{0}`")]
    UnknownPurpose(String),
    #[error("purpose `{purpose}`: {reason}")]
    Invalid { purpose: String, reason: String },
    #[error("channel {channel} is not allowed for purpose `{purpose}` (allowed: {allowed})")]
    ChannelNotAllowed {
        purpose: String,
        channel: Channel,
        allowed: String,
    },
    #[error("channel {channel} cannot deliver to {kind}")]
    ChannelMismatch {
        channel: Channel,
        kind: &'static str,
    },
}

impl PurposePolicy {
    pub fn new(purpose: Purpose, s: PurposeSettings) -> Result<Self, PolicyError> {
        let invalid = |reason: String| PolicyError::Invalid {
            purpose: purpose.to_string(),
            reason,
        };
        if !is_sid(&s.service_sid, "VA") {
            return Err(invalid(format!(
                "service_sid `{}` is not a Verify Service SID (VA + 32 hex digits)",
                s.service_sid
            )));
        }
        let mut channels = s.channels.clone();
        channels.sort();
        channels.dedup();
        if channels.is_empty() {
            return Err(invalid("channels must name at least one channel".into()));
        }
        let default_channel = s.default_channel.unwrap_or(s.channels[0]);
        if !channels.contains(&default_channel) {
            return Err(invalid(format!(
                "default channel {default_channel} is not among its channels"
            )));
        }
        if !(1..=twilio_limits::MAX_SENDS).contains(&s.max_sends) {
            return Err(invalid(format!(
                "max_sends must be 1 to {} (Twilio's limit), not {}",
                twilio_limits::MAX_SENDS,
                s.max_sends
            )));
        }
        if !(1..=twilio_limits::MAX_CHECKS).contains(&s.max_checks) {
            return Err(invalid(format!(
                "max_checks must be 1 to {} (Twilio's limit), not {}",
                twilio_limits::MAX_CHECKS,
                s.max_checks
            )));
        }
        if s.code_ttl.is_zero() || s.code_ttl > twilio_limits::CODE_TTL {
            return Err(invalid(
                "code_ttl must be more than 0 and at most 600 seconds (Twilio's expiry)".into(),
            ));
        }
        if s.idempotency_window.is_zero() {
            return Err(invalid("idempotency_window must be more than 0".into()));
        }
        if s.fallback.len() == 1 {
            return Err(invalid(
                "fallback must name at least two channels in order, e.g. [\"sms\", \"call\"] \
                 (or none)"
                    .into(),
            ));
        }
        for (i, channel) in s.fallback.iter().enumerate() {
            if !channels.contains(channel) {
                return Err(invalid(format!(
                    "fallback channel {channel} is not among its channels"
                )));
            }
            if s.fallback[..i].contains(channel) {
                return Err(invalid(format!("fallback names {channel} twice")));
            }
        }
        if !s.fallback.is_empty() && (s.fallback_after.is_zero() || s.fallback_after >= s.code_ttl)
        {
            return Err(invalid(
                "fallback_after must be more than 0 and less than code_ttl (a fallback after \
                 expiry would be useless)"
                    .into(),
            ));
        }
        Ok(PurposePolicy {
            purpose,
            service_sid: s.service_sid,
            channels,
            default_channel,
            default_region: s.default_region,
            max_sends: s.max_sends,
            max_checks: s.max_checks,
            code_ttl: s.code_ttl,
            idempotency_window: s.idempotency_window,
            fallback: s.fallback,
            fallback_after: s.fallback_after,
            limits: s.limits,
        })
    }

    pub fn purpose(&self) -> &Purpose {
        &self.purpose
    }

    pub fn service_sid(&self) -> &str {
        &self.service_sid
    }

    pub fn channels(&self) -> &[Channel] {
        &self.channels
    }

    pub fn default_channel(&self) -> Channel {
        self.default_channel
    }

    /// The region for numbers without a country code when the request names none.
    pub fn default_region(&self) -> Option<Region> {
        self.default_region
    }

    pub fn max_sends(&self) -> u32 {
        self.max_sends
    }

    pub fn max_checks(&self) -> u32 {
        self.max_checks
    }

    /// Picks the channel of a start: the requested one if allowed, else the default. An
    /// email address with no channel requested goes by email when the purpose allows it.
    pub fn choose_channel(
        &self,
        requested: Option<Channel>,
        destination: &Destination,
    ) -> Result<Channel, PolicyError> {
        let channel = match requested {
            Some(c) => c,
            None if matches!(destination, Destination::Email(_))
                && self.channels.contains(&Channel::Email) =>
            {
                Channel::Email
            }
            None => self.default_channel,
        };
        if !self.channels.contains(&channel) {
            return Err(PolicyError::ChannelNotAllowed {
                purpose: self.purpose.to_string(),
                channel,
                allowed: self
                    .channels
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if !destination.accepts(channel) {
            return Err(PolicyError::ChannelMismatch {
                channel,
                kind: match destination {
                    Destination::Phone(_) => "a phone number",
                    Destination::Email(_) => "an email address",
                },
            });
        }
        Ok(channel)
    }

    /// The fallback chain (empty: none).
    pub fn fallback(&self) -> &[Channel] {
        &self.fallback
    }

    /// How long a send may stay without a delivery report before falling back; `None` when
    /// the purpose has no fallback chain.
    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    pub fn fallback_after(&self) -> Option<Duration> {
        (!self.fallback.is_empty()).then_some(self.fallback_after)
    }

    /// The channel to fall back to from `current`: the one after it in the chain that has
    /// not been tried yet and can reach the destination kind of `current` (a phone channel
    /// never falls back to email, or the reverse). `None` when the chain ends or `current`
    /// is not in it.
    pub fn next_fallback(&self, current: Channel, tried: &[Channel]) -> Option<Channel> {
        let at = self.fallback.iter().position(|c| *c == current)?;
        self.fallback[at + 1..]
            .iter()
            .copied()
            .find(|c| !tried.contains(c) && c.needs_phone() == current.needs_phone())
    }

    /// When a verification started at `now` stops accepting checks.
    pub fn expires_at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.code_ttl).unwrap_or(chrono::Duration::MAX)
    }

    /// Whether an idempotency key first used at `first_use` still returns that first result.
    pub fn idempotency_holds(&self, first_use: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        let window =
            chrono::Duration::from_std(self.idempotency_window).unwrap_or(chrono::Duration::MAX);
        now < first_use + window
    }
}

/// All purposes of the gateway, by name.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    purposes: BTreeMap<String, PurposePolicy>,
}

impl Policies {
    pub fn new(purposes: impl IntoIterator<Item = PurposePolicy>) -> Self {
        Policies {
            purposes: purposes
                .into_iter()
                .map(|p| (p.purpose.to_string(), p))
                .collect(),
        }
    }

    pub fn get(&self, purpose: &Purpose) -> Result<&PurposePolicy, PolicyError> {
        self.purposes
            .get(purpose.as_str())
            .ok_or_else(|| PolicyError::UnknownPurpose(purpose.to_string()))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.purposes.keys().map(String::as_str)
    }
}

/// Whether `s` is a Twilio SID with `prefix`: two letters then 32 lower-case hex digits.
pub fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == 34
        && s.starts_with(prefix)
        && s[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use domain::{Email, PhoneNumber};

    use super::*;

    const VA: &str = "VA00000000000000000000000000000000";

    fn login() -> PurposePolicy {
        PurposePolicy::new(
            Purpose::parse("login").expect("valid"),
            PurposeSettings::recommended(VA, vec![Channel::Sms, Channel::Call, Channel::Email]),
        )
        .expect("valid policy")
    }

    fn phone() -> Destination {
        Destination::Phone(PhoneNumber::parse("+14155552671", None).expect("valid"))
    }

    fn email() -> Destination {
        Destination::Email(Email::parse("jane@example.com").expect("valid"))
    }

    #[test]
    fn chooses_channels() {
        let p = login();
        let check = |req, dest: &Destination, expected: Result<Channel, &str>| {
            let got = p.choose_channel(req, dest).map_err(|e| e.to_string());
            assert_eq!(got, expected.map_err(str::to_owned), "{req:?}");
        };
        check(None, &phone(), Ok(Channel::Sms));
        check(Some(Channel::Call), &phone(), Ok(Channel::Call));
        check(None, &email(), Ok(Channel::Email));
        check(
            Some(Channel::Whatsapp),
            &phone(),
            Err("channel whatsapp is not allowed for purpose `login` (allowed: sms, call, email)"),
        );
        check(
            Some(Channel::Sms),
            &email(),
            Err("channel sms cannot deliver to an email address"),
        );
        check(
            Some(Channel::Email),
            &phone(),
            Err("channel email cannot deliver to a phone number"),
        );
    }

    #[test]
    fn limits_stay_within_twilio() {
        let purpose = Purpose::parse("login").expect("valid");
        let with = |f: fn(&mut PurposeSettings)| {
            let mut s = PurposeSettings::recommended(VA, vec![Channel::Sms]);
            f(&mut s);
            PurposePolicy::new(purpose.clone(), s)
        };
        assert!(with(|_| {}).is_ok());
        assert!(with(|s| s.max_checks = 6).is_err());
        assert!(with(|s| s.max_sends = 0).is_err());
        assert!(with(|s| s.code_ttl = Duration::from_secs(601)).is_err());
        assert!(with(|s| s.channels.clear()).is_err());
        assert!(with(|s| s.default_channel = Some(Channel::Call)).is_err());
        assert!(with(|s| s.service_sid = "VA123".into()).is_err());
        let p = with(|_| {}).expect("valid");
        assert_eq!((p.max_checks(), p.max_sends()), (3, 3));
    }

    #[test]
    fn fallback_chains_are_validated() {
        let purpose = Purpose::parse("login").expect("valid");
        let with = |fallback: Vec<Channel>, after: u64| {
            let mut s = PurposeSettings::recommended(VA, vec![Channel::Sms, Channel::Call]);
            s.fallback = fallback;
            s.fallback_after = Duration::from_secs(after);
            PurposePolicy::new(purpose.clone(), s)
        };
        assert!(with(vec![], 0).is_ok(), "no chain, no timer needed");
        assert!(with(vec![Channel::Sms, Channel::Call], 30).is_ok());
        assert!(with(vec![Channel::Sms], 30).is_err(), "a chain of one");
        assert!(with(vec![Channel::Sms, Channel::Sms], 30).is_err(), "twice");
        assert!(
            with(vec![Channel::Sms, Channel::Email], 30).is_err(),
            "not allowed"
        );
        assert!(
            with(vec![Channel::Sms, Channel::Call], 0).is_err(),
            "no delay"
        );
        assert!(
            with(vec![Channel::Sms, Channel::Call], 600).is_err(),
            "after expiry"
        );
        let p = with(vec![], 0).expect("valid");
        assert_eq!(p.fallback_after(), None);
    }

    #[test]
    fn next_fallback_follows_the_chain_once() {
        let mut s = PurposeSettings::recommended(
            VA,
            vec![
                Channel::Sms,
                Channel::Whatsapp,
                Channel::Call,
                Channel::Email,
            ],
        );
        s.fallback = vec![
            Channel::Whatsapp,
            Channel::Sms,
            Channel::Email,
            Channel::Call,
        ];
        let p = PurposePolicy::new(Purpose::parse("login").expect("valid"), s).expect("valid");
        use Channel::*;
        assert_eq!(p.next_fallback(Whatsapp, &[Whatsapp]), Some(Sms));
        // Email cannot reach a phone number: skipped.
        assert_eq!(p.next_fallback(Sms, &[Whatsapp, Sms]), Some(Call));
        assert_eq!(
            p.next_fallback(Call, &[Whatsapp, Sms, Call]),
            None,
            "end of chain"
        );
        // Started on SMS by the caller: WhatsApp comes before it, so only later ones.
        assert_eq!(p.next_fallback(Sms, &[Sms]), Some(Call));
        assert_eq!(p.next_fallback(Call, &[Sms, Call]), None);
        assert_eq!(
            p.next_fallback(Email, &[Email]),
            None,
            "no other email channel"
        );
        let plain = login();
        assert_eq!(plain.next_fallback(Sms, &[Sms]), None, "no chain");
        assert_eq!(p.fallback_after(), Some(Duration::from_secs(30)));
    }

    #[test]
    fn windows_and_expiry() {
        let p = login();
        let t0 = Utc.timestamp_opt(1_700_000_000, 0).single().expect("valid");
        assert_eq!(p.expires_at(t0), t0 + chrono::Duration::seconds(600));
        assert!(p.idempotency_holds(t0, t0 + chrono::Duration::seconds(599)));
        assert!(!p.idempotency_holds(t0, t0 + chrono::Duration::seconds(600)));
    }

    #[test]
    fn unknown_purposes_are_named() {
        let ps = Policies::new([login()]);
        let missing = Purpose::parse("signup").expect("valid");
        assert_eq!(
            ps.get(&missing).map_err(|e| e.to_string()).err().as_deref(),
            Some("unknown purpose `signup`")
        );
        assert!(ps.get(&Purpose::parse("login").expect("valid")).is_ok());
    }
}
