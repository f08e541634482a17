//! The purpose of a verification (`login`, `signup`, ...): the key of a policy in config.

use std::fmt;

/// A policy name: 1 to 64 characters of lower-case ASCII letters, digits, `_` or `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Purpose(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PurposeError {
    #[error("purpose is empty")]
    Empty,
    #[error("purpose is longer than 64 characters")]
    TooLong,
    #[error("purpose may contain only a-z, 0-9, `_` and `-`")]
    BadCharacter,
}

/// Whether `raw` is a name as configuration tables are keyed (`[purposes.<name>]`,
/// `[callers.<name>]`): non-empty, lower-case ASCII letters, digits, `_` or `-`.
pub fn is_config_name(raw: &str) -> bool {
    !raw.is_empty()
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl Purpose {
    pub fn parse(raw: &str) -> Result<Self, PurposeError> {
        if raw.is_empty() {
            return Err(PurposeError::Empty);
        }
        if raw.len() > 64 {
            return Err(PurposeError::TooLong);
        }
        if !is_config_name(raw) {
            return Err(PurposeError::BadCharacter);
        }
        Ok(Purpose(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, expected: Result<&str, PurposeError>) {
        assert_eq!(
            Purpose::parse(raw)
                .as_ref()
                .map(Purpose::as_str)
                .map_err(Clone::clone),
            expected,
            "{raw}"
        );
    }

    #[test]
    fn parses_policy_names() {
        check("login", Ok("login"));
        check("account-recovery_2", Ok("account-recovery_2"));
        check("", Err(PurposeError::Empty));
        check("Login", Err(PurposeError::BadCharacter));
        check("a b", Err(PurposeError::BadCharacter));
        check(&"x".repeat(65), Err(PurposeError::TooLong));
    }
}
