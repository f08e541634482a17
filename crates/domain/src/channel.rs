//! Delivery channels a verification can use.

use std::fmt;
use std::str::FromStr;

/// A channel through which a one-time code is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Sms,
    Call,
    Email,
    Whatsapp,
    Sna,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Sms,
        Channel::Call,
        Channel::Email,
        Channel::Whatsapp,
        Channel::Sna,
    ];

    /// The lower-case name Twilio and the configuration use (`sms`, `call`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Call => "call",
            Channel::Email => "email",
            Channel::Whatsapp => "whatsapp",
            Channel::Sna => "sna",
        }
    }

    /// Whether the channel delivers to a phone number (as opposed to an email address).
    pub fn needs_phone(self) -> bool {
        !matches!(self, Channel::Email)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown channel `{0}` (expected one of sms, call, email, whatsapp, sna)")]
pub struct ChannelParseError(pub String);

impl FromStr for Channel {
    type Err = ChannelParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ChannelParseError(s.to_owned()))
    }
}

impl serde::Serialize for Channel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Channel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_channel() {
        for c in Channel::ALL {
            assert_eq!(c.as_str().parse::<Channel>(), Ok(c));
        }
        assert_eq!("SMS".parse::<Channel>(), Ok(Channel::Sms));
        assert!("pigeon".parse::<Channel>().is_err());
    }
}
