//! Prefixed identifiers. A `VerificationId` prints as `ver_` followed by 32 hex digits of a
//! UUIDv7, so ids sort by creation time and say what they name.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VerificationId(Uuid);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id must start with `{0}`")]
    Prefix(&'static str),
    #[error("id must have 32 lower-case hex digits after its prefix")]
    Body,
}

impl VerificationId {
    pub const PREFIX: &'static str = "ver_";

    /// Wraps a UUID made by the caller (randomness and time are the caller's business).
    pub fn from_uuid(uuid: Uuid) -> Self {
        VerificationId(uuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for VerificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.0.simple())
    }
}

impl FromStr for VerificationId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s
            .strip_prefix(Self::PREFIX)
            .ok_or(IdError::Prefix(Self::PREFIX))?;
        if body.len() != 32
            || !body
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(IdError::Body);
        }
        Uuid::try_parse(body)
            .map(VerificationId)
            .map_err(|_| IdError::Body)
    }
}

/// Serde of a [`VerificationId`] as the string it prints (`ver_…`), for payloads.
pub(crate) mod as_string {
    use serde::{Deserialize, Deserializer, Serializer, de};

    use super::VerificationId;

    pub(crate) fn serialize<S: Serializer>(id: &VerificationId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VerificationId, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_and_parses_with_prefix() {
        let id = VerificationId::from_uuid(Uuid::from_u128(0x0190_abcd));
        let text = id.to_string();
        assert_eq!(text, "ver_0000000000000000000000000190abcd");
        assert_eq!(text.parse::<VerificationId>(), Ok(id));
    }

    #[test]
    fn rejects_foreign_ids() {
        assert_eq!(
            "VE0000000000000000000000000190abcd".parse::<VerificationId>(),
            Err(IdError::Prefix("ver_"))
        );
        assert_eq!("ver_xyz".parse::<VerificationId>(), Err(IdError::Body));
        assert_eq!(
            "ver_0000000000000000000000000190ABCD".parse::<VerificationId>(),
            Err(IdError::Body)
        );
    }
}
