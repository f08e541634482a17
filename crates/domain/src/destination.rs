//! Where a code goes: a phone number or an email address.

use std::fmt;

use crate::{Channel, Email, PhoneNumber};

/// `{}` prints its mask; so does `{:?}`, through its parts' own `Debug`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Phone(PhoneNumber),
    Email(Email),
}

impl Destination {
    /// The canonical text Twilio expects in `To`: E.164 or the email address.
    /// This is the only way to read the raw destination; never log it.
    pub fn expose(&self) -> &str {
        match self {
            Destination::Phone(p) => p.e164(),
            Destination::Email(e) => e.as_str(),
        }
    }

    pub fn masked(&self) -> String {
        match self {
            Destination::Phone(p) => p.masked(),
            Destination::Email(e) => e.masked(),
        }
    }

    /// Whether `channel` can deliver to this kind of destination.
    pub fn accepts(&self, channel: Channel) -> bool {
        match self {
            Destination::Phone(_) => channel.needs_phone(),
            Destination::Email(_) => channel == Channel::Email,
        }
    }

    pub fn phone(&self) -> Option<&PhoneNumber> {
        match self {
            Destination::Phone(p) => Some(p),
            Destination::Email(_) => None,
        }
    }
}

impl fmt::Display for Destination {
    /// Prints the mask, never the destination.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_match_destination_kind() {
        let phone = Destination::Phone(PhoneNumber::parse("+14155552671", None).expect("valid"));
        let email = Destination::Email(Email::parse("a@b.co").expect("valid"));
        assert!(phone.accepts(Channel::Sms) && phone.accepts(Channel::Call));
        assert!(!phone.accepts(Channel::Email));
        assert!(email.accepts(Channel::Email) && !email.accepts(Channel::Sms));
        assert_eq!(phone.expose(), "+14155552671");
        assert_eq!(format!("{phone}"), "+1415***2671");
    }

    #[test]
    fn debug_prints_the_mask_only() {
        let phone = Destination::Phone(PhoneNumber::parse("+14155552671", None).expect("valid"));
        let email = Destination::Email(Email::parse("jane@example.com").expect("valid"));
        let debug = format!("{phone:?} {email:?} {:#?}", [&phone, &email]);
        assert!(
            !debug.contains("5552671") && !debug.contains("jane"),
            "{debug}"
        );
    }
}
