//! Email addresses as verification destinations.

use std::fmt;

/// An email address: trimmed, with its domain lower-cased, within RFC 5321's lengths.
/// Neither `{}` nor `{:?}` prints the address, only its mask.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("email address is empty")]
    Empty,
    #[error("email address is longer than 254 characters")]
    TooLong,
    #[error("email address must have one `@` with a local part before it")]
    Shape,
    #[error("email local part is invalid")]
    Local,
    #[error("email domain is invalid")]
    Domain,
}

impl Email {
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(EmailError::Empty);
        }
        if raw.len() > 254 {
            return Err(EmailError::TooLong);
        }
        let (local, domain) = raw.rsplit_once('@').ok_or(EmailError::Shape)?;
        if local.is_empty() {
            return Err(EmailError::Shape);
        }
        let local_ok = local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local.chars().all(|c| {
                c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) || !c.is_ascii()
            });
        if !local_ok {
            return Err(EmailError::Local);
        }
        let domain = domain.to_ascii_lowercase();
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
            })
            && labels
                .last()
                .is_some_and(|tld| !tld.bytes().all(|b| b.is_ascii_digit()));
        if !domain_ok {
            return Err(EmailError::Domain);
        }
        Ok(Email(format!("{local}@{domain}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The mailbox the address reaches, as limits and the one-pending rule compare
    /// destinations: lower-cased (the domain too, beyond ASCII: `ÉXAMPLE.fr` and
    /// `éxample.fr` are one IDN domain), and without a `+tag` after the local part.
    /// `Jane.Doe+otp@Example.com` and `jane.doe@example.com` reach one inbox at nearly every
    /// provider (a local part is case-sensitive only in theory), so they must count as one
    /// destination, or changing the case would get past every per-destination limit. Dots
    /// are kept: only some providers ignore them. The address itself is kept as typed
    /// for delivery.
    pub fn mailbox(&self) -> String {
        let (local, domain) = self.0.rsplit_once('@').unwrap_or((&self.0, ""));
        let local = match local.split_once('+') {
            Some((base, _tag)) if !base.is_empty() => base,
            _ => local,
        };
        format!("{}@{}", local.to_lowercase(), domain.to_lowercase())
    }

    /// A mask safe for logs and responses: `j***@example.com`.
    pub fn masked(&self) -> String {
        let (local, domain) = self.0.rsplit_once('@').unwrap_or(("", &self.0));
        let first: String = local.chars().take(1).collect();
        format!("{first}***@{domain}")
    }
}

impl fmt::Display for Email {
    /// Prints the mask, never the address.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for Email {
    /// Like a derived `Debug`, with the mask in place of the address.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Email").field(&self.masked()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, expected: Result<&str, EmailError>) {
        assert_eq!(
            Email::parse(raw)
                .as_ref()
                .map(Email::as_str)
                .map_err(Clone::clone),
            expected,
            "{raw}"
        );
    }

    #[test]
    fn parses_addresses() {
        check(" Jane.Doe+otp@Example.COM ", Ok("Jane.Doe+otp@example.com"));
        check("a@b.co", Ok("a@b.co"));
        check("", Err(EmailError::Empty));
        check("jane", Err(EmailError::Shape));
        check("@example.com", Err(EmailError::Shape));
        check("jane..doe@example.com", Err(EmailError::Local));
        check("jane doe@example.com", Err(EmailError::Local));
        check("jane@example", Err(EmailError::Domain));
        check("jane@-example.com", Err(EmailError::Domain));
        check("jane@1.2.3.4", Err(EmailError::Domain));
        check(
            &format!("{}@example.com", "a".repeat(250)),
            Err(EmailError::TooLong),
        );
    }

    #[test]
    fn one_mailbox_whatever_the_case_or_tag() {
        let mailbox = |raw: &str| Email::parse(raw).expect("valid").mailbox();
        for raw in [
            "bob@x.io",
            "Bob@x.io",
            "BOB@X.IO",
            "bob+otp@x.io",
            "BOB+Login@x.io",
        ] {
            assert_eq!(mailbox(raw), "bob@x.io", "{raw}");
        }
        assert_eq!(mailbox("b.o.b@x.io"), "b.o.b@x.io", "dots are kept");
        assert_eq!(
            mailbox("+bob@x.io"),
            "+bob@x.io",
            "no local part before the tag"
        );
        assert_eq!(mailbox("ÉLODIE@x.io"), "élodie@x.io");
        // Found by the `email` fuzz target: `parse` lower-cases the domain's ASCII only, and
        // the mailbox kept `É`, so one inbox had two mailboxes.
        assert_eq!(mailbox("bob+login*&@ÉLOD.uk"), "bob@élod.uk");
        assert_eq!(mailbox("bob@ÉLOD.uk"), mailbox("bob@élod.uk"));
        // Delivery keeps the address as typed.
        assert_eq!(
            Email::parse("Bob+otp@X.io").expect("valid").as_str(),
            "Bob+otp@x.io"
        );
    }

    #[test]
    fn masks_the_local_part() {
        let e = Email::parse("jane@example.com").expect("valid");
        assert_eq!(e.masked(), "j***@example.com");
        assert_eq!(format!("{e}"), "j***@example.com");
        assert_eq!(format!("{e:?}"), "Email(\"j***@example.com\")");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(raw in "\\PC{0,80}") {
            let _ = Email::parse(&raw);
        }
    }
}
