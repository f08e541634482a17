//! What is scored: the parts of a start that signals read, none of them a raw destination.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use domain::{
    BlindIndexKey, Channel, Destination, DestinationHash, NumberType, PhoneNumber, Region,
};

/// The [`BlindIndexKey::tag`] domain of hundred-block tags.
pub const HUNDRED_BLOCK_TAG: &str = "fraud.hundred_block";

/// What scoring reads of a phone number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneSubject {
    /// `None` for numbers of no country (`+881…`, `+882…`) or when the plan does not say.
    pub country: Option<Region>,
    pub number_type: NumberType,
    /// [`PhoneNumber::range_prefix`]: `+4479111`.
    pub range_prefix: String,
    /// The keyed tag of [`PhoneNumber::hundred_block`], never the block itself.
    pub hundred_block_tag: String,
}

impl PhoneSubject {
    pub fn new(phone: &PhoneNumber, key: &BlindIndexKey) -> Self {
        PhoneSubject {
            country: phone.region(),
            number_type: phone.number_type(),
            range_prefix: phone.range_prefix().to_owned(),
            hundred_block_tag: key.tag(HUNDRED_BLOCK_TAG, phone.hundred_block()),
        }
    }
}

/// One start to score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub channel: Channel,
    /// The phone parts; `None` for email, which only blocks, fan-out and step-up apply to.
    pub phone: Option<PhoneSubject>,
    pub destination: DestinationHash,
    /// The client IP in the canonical form of IP blocks (`203.0.113.7`, `2001:db8:1:2::/64`).
    pub ip: Option<String>,
    /// The client IP's network ([`network_of`]: `203.0.113.0/24`, `2001:db8:1::/48`): what an
    /// attacker who takes a new address for every start usually keeps.
    pub network: Option<String>,
    /// A keyed tag of the caller's user, when the caller named one.
    pub identity: Option<String>,
    /// The caller says the user passed a stronger check (captcha, TOTP) for this start.
    pub step_up_completed: bool,
}

impl Subject {
    /// The subject of a start to `destination` by `channel`, with no IP, no identity and no
    /// step-up (set those fields after).
    pub fn new(channel: Channel, destination: &Destination, key: &BlindIndexKey) -> Self {
        Subject {
            channel,
            phone: destination.phone().map(|p| PhoneSubject::new(p, key)),
            destination: key.hash(destination),
            ip: None,
            network: None,
            identity: None,
            step_up_completed: false,
        }
    }
}

/// The network scoring judges a client address by: an IPv4 address's /24, an IPv6
/// address's /48 (a site's allocation: an attacker holding one rotates through its /64s
/// for free). An IPv4-mapped IPv6 address (`::ffff:203.0.113.7`) is its IPv4 address's.
pub fn network_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4_network(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4_network(v4),
            None => {
                let network = u128::from(v6) & !(u128::MAX >> 48);
                format!("{}/48", Ipv6Addr::from(network))
            }
        },
    }
}

fn v4_network(v4: Ipv4Addr) -> String {
    let [a, b, c, _] = v4.octets();
    format!("{a}.{b}.{c}.0/24")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phone_subject_holds_no_number() {
        let key = BlindIndexKey::new([3; 32]);
        let phone = PhoneNumber::parse("+447400123456", None).expect("valid");
        let subject = Subject::new(Channel::Sms, &Destination::Phone(phone.clone()), &key);
        let parts = subject.phone.as_ref().expect("phone parts");
        assert_eq!(parts.range_prefix, "+4474001");
        assert_eq!(parts.country.map(|r| r.to_string()).as_deref(), Some("GB"));
        assert_eq!(parts.number_type, NumberType::Mobile);
        assert_eq!(parts.hundred_block_tag.len(), 32);
        assert!(!format!("{subject:?}").contains("7400123456"));
        assert!(!format!("{subject:?}").contains(phone.hundred_block()));
    }

    #[test]
    fn a_network_is_the_addresss_slash_24_or_slash_48() {
        for (ip, network) in [
            ("203.0.113.7", "203.0.113.0/24"),
            ("203.0.113.255", "203.0.113.0/24"),
            ("::ffff:203.0.113.7", "203.0.113.0/24"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1::/48"),
            ("2001:db8:1:ffff::1", "2001:db8:1::/48"),
            ("::1", "::/48"),
        ] {
            let ip: IpAddr = ip.parse().expect("a test address");
            assert_eq!(network_of(ip), network, "{ip}");
        }
    }

    #[test]
    fn an_email_subject_has_no_phone_parts() {
        let key = BlindIndexKey::new([3; 32]);
        let email = domain::Email::parse("a@example.com").expect("valid");
        let subject = Subject::new(Channel::Email, &Destination::Email(email), &key);
        assert!(subject.phone.is_none());
    }
}
