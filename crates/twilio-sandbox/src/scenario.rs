//! Magic destinations: valid phone numbers that make the sandbox answer the way Twilio does
//! when something goes wrong, so an integration can be tried against each failure, either
//! at once (an API error) or later (the delivery report of a message that was "sent").

use crate::error::Error;
use crate::events::{MessageStatus, Outcome};
use crate::store::Channel;

/// What a magic destination does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// 400 / 60200 `Invalid parameter: To`.
    Invalid,
    /// 403 / 60205 on the `sms` channel; other channels succeed.
    Landline,
    /// 403 / 60410 Fraud Guard block.
    FraudGuard,
    /// 403 / 60605 Verify Geo-Permissions block.
    GeoBlocked,
    /// 429 / 20429 with `Retry-After`.
    RateLimited,
    /// 500 / 20500.
    ServerError,
    /// Answers normally after the configured slow delay.
    Slow,
    /// Delivered on every channel; the same as any ordinary number, listed so it can be found.
    Delivered,
    /// SMS and WhatsApp are reported `undelivered` with 30003 (unreachable handset).
    Unreachable,
    /// SMS and WhatsApp are reported `undelivered` with 30006 (landline or unreachable
    /// carrier): what a landline gives when the service does not stop SMS to landlines.
    LandlineUndelivered,
    /// SMS and WhatsApp are reported `sent` and then never again: no delivery receipt.
    Silent,
}

/// Seconds sent in `Retry-After` by the `rate_limited_20429` scenario.
pub(crate) const RATE_LIMIT_RETRY_AFTER: u64 = 1;

/// The error codes of the delivery scenarios (Twilio's asynchronous 30xxx codes).
const UNREACHABLE_HANDSET: &str = "30003";
const LANDLINE_OR_UNREACHABLE_CARRIER: &str = "30006";

/// The scenario table: name, destination, kind. Names are stable; the order is the order
/// `GET /sandbox/scenarios` lists them in. The numbers are US 555-01xx numbers, which
/// libphonenumber accepts as valid, so a gateway's own validation passes them through.
const TABLE: [(&str, &str, Scenario); 11] = [
    ("invalid_60200", "+14155550100", Scenario::Invalid),
    ("landline_60205", "+14155550101", Scenario::Landline),
    ("fraud_guard_60410", "+14155550102", Scenario::FraudGuard),
    ("geo_blocked_60605", "+14155550103", Scenario::GeoBlocked),
    ("rate_limited_20429", "+14155550104", Scenario::RateLimited),
    ("server_error_500", "+14155550105", Scenario::ServerError),
    ("slow", "+14155550106", Scenario::Slow),
    ("delivered", "+14155550107", Scenario::Delivered),
    ("undelivered_30003", "+14155550108", Scenario::Unreachable),
    (
        "landline_30006",
        "+14155550109",
        Scenario::LandlineUndelivered,
    ),
    ("silent", "+14155550110", Scenario::Silent),
];

/// The magic destinations, in a stable order, as (scenario name, destination) pairs.
pub fn scenarios() -> Vec<(&'static str, &'static str)> {
    TABLE.iter().map(|(name, to, _)| (*name, *to)).collect()
}

impl Scenario {
    /// The scenario a destination triggers, if any.
    pub(crate) fn for_destination(to: &str) -> Option<Scenario> {
        TABLE
            .iter()
            .find(|(_, destination, _)| *destination == to)
            .map(|(_, _, scenario)| *scenario)
    }

    /// The error a verification start to this destination over `channel` fails with.
    pub(crate) fn start_error(self, channel: Channel) -> Option<Error> {
        match self {
            Scenario::Invalid => Some(Error::InvalidParameter("To")),
            Scenario::Landline => (channel == Channel::Sms).then_some(Error::Landline),
            Scenario::FraudGuard => Some(Error::FraudGuard),
            Scenario::GeoBlocked => Some(Error::GeoBlocked),
            Scenario::RateLimited => Some(Error::TooManyRequests {
                retry_after: RATE_LIMIT_RETRY_AFTER,
            }),
            Scenario::ServerError => Some(Error::Internal),
            Scenario::Slow
            | Scenario::Delivered
            | Scenario::Unreachable
            | Scenario::LandlineUndelivered
            | Scenario::Silent => None,
        }
    }
}

/// How a send that was accepted ends, for a destination's scenario (if any) and channel.
/// Only SMS and WhatsApp fail after the fact: the 30xxx codes are carrier delivery receipts
/// of messages, and a voice call to these numbers is simply answered.
pub(crate) fn outcome(scenario: Option<Scenario>, channel: Channel) -> Outcome {
    let messaging = matches!(channel, Channel::Sms | Channel::Whatsapp);
    match scenario {
        Some(Scenario::Unreachable) if messaging => Outcome::undelivered(UNREACHABLE_HANDSET),
        Some(Scenario::LandlineUndelivered) if messaging => {
            Outcome::undelivered(LANDLINE_OR_UNREACHABLE_CARRIER)
        }
        Some(Scenario::Silent) if messaging => Outcome {
            status: MessageStatus::Sent,
            error_code: None,
        },
        _ => Outcome::delivered(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_destination_is_a_valid_number_libphonenumber_accepts() {
        for (name, to) in scenarios() {
            let parsed = domain::PhoneNumber::parse(to, None)
                .unwrap_or_else(|e| panic!("{name}: {to} must parse: {e}"));
            assert_eq!(
                parsed.e164(),
                to,
                "{name}: destination must already be E.164"
            );
        }
    }

    #[test]
    fn names_and_destinations_are_unique_and_required_ones_exist() {
        let all = scenarios();
        let mut names: Vec<_> = all.iter().map(|(n, _)| *n).collect();
        let mut numbers: Vec<_> = all.iter().map(|(_, t)| *t).collect();
        names.sort_unstable();
        names.dedup();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(names.len(), all.len());
        assert_eq!(numbers.len(), all.len());
        for required in [
            "invalid_60200",
            "landline_60205",
            "fraud_guard_60410",
            "geo_blocked_60605",
            "server_error_500",
            "slow",
            "rate_limited_20429",
            "delivered",
            "undelivered_30003",
            "landline_30006",
            "silent",
        ] {
            assert!(names.contains(&required), "{required} missing");
        }
    }

    fn check(to: &str, channel: Channel, expected: Option<(u16, u32)>) {
        let got = Scenario::for_destination(to)
            .and_then(|s| s.start_error(channel))
            .map(|e| {
                let (status, code) = e.status_and_code();
                (status.as_u16(), code)
            });
        assert_eq!(got, expected, "{to} over {channel:?}");
    }

    #[test]
    fn effects() {
        check("+14155550100", Channel::Sms, Some((400, 60200)));
        check("+14155550101", Channel::Sms, Some((403, 60205)));
        check("+14155550101", Channel::Call, None);
        check("+14155550101", Channel::Whatsapp, None);
        check("+14155550102", Channel::Sms, Some((403, 60410)));
        check("+14155550103", Channel::Call, Some((403, 60605)));
        check("+14155550104", Channel::Sms, Some((429, 20429)));
        check("+14155550105", Channel::Sms, Some((500, 20500)));
        check("+14155550106", Channel::Sms, None);
        check("+14155552671", Channel::Sms, None);
        for to in [
            "+14155550107",
            "+14155550108",
            "+14155550109",
            "+14155550110",
        ] {
            for channel in Channel::ALL {
                check(to, channel, None);
            }
        }
    }

    fn check_outcome(to: &str, channel: Channel, status: MessageStatus, error_code: Option<&str>) {
        let got = outcome(Scenario::for_destination(to), channel);
        assert_eq!(
            (got.status, got.error_code),
            (status, error_code),
            "{to} over {channel:?}"
        );
    }

    #[test]
    fn outcomes() {
        use MessageStatus::{Delivered, Sent, Undelivered};
        for channel in Channel::ALL {
            check_outcome("+14155552671", channel, Delivered, None);
            check_outcome("+14155550107", channel, Delivered, None);
            // The synchronous scenarios that let a send through end delivered.
            check_outcome("+14155550101", channel, Delivered, None);
            check_outcome("+14155550106", channel, Delivered, None);
        }
        for channel in [Channel::Sms, Channel::Whatsapp] {
            check_outcome("+14155550108", channel, Undelivered, Some("30003"));
            check_outcome("+14155550109", channel, Undelivered, Some("30006"));
            check_outcome("+14155550110", channel, Sent, None);
        }
        for channel in [Channel::Call, Channel::Email, Channel::Sna] {
            for to in ["+14155550108", "+14155550109", "+14155550110"] {
                check_outcome(to, channel, Delivered, None);
            }
        }
    }
}
