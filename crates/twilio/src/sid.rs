//! Shape checks for Twilio SIDs before they are put in a URL path or a form.

use crate::TwilioError;

/// Whether `value` is `prefix` followed by 32 hex digits, the shape of every Twilio SID.
pub(crate) fn is_sid(value: &str, prefix: &str) -> bool {
    value.len() == prefix.len() + 32
        && value.starts_with(prefix)
        && value.as_bytes()[prefix.len()..]
            .iter()
            .all(u8::is_ascii_hexdigit)
}

/// A Verify Service SID (`VA…`), checked so a bad value is a refused request, not a
/// different URL.
pub(crate) fn service(value: &str) -> Result<&str, TwilioError> {
    if is_sid(value, "VA") {
        Ok(value)
    } else {
        Err(TwilioError::InvalidRequest(
            "service SID must be `VA` followed by 32 hex digits".to_owned(),
        ))
    }
}

/// A Verification SID (`VE…`).
pub(crate) fn verification(value: &str) -> Result<&str, TwilioError> {
    if is_sid(value, "VE") {
        Ok(value)
    } else {
        Err(TwilioError::InvalidRequest(
            "verification SID must be `VE` followed by 32 hex digits".to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: &str, prefix: &str, expected: bool) {
        assert_eq!(
            is_sid(value, prefix),
            expected,
            "{value:?} with prefix {prefix}"
        );
    }

    #[test]
    fn sid_shapes() {
        let hex = "0123456789abcdefABCDEF0123456789";
        check(&format!("VA{hex}"), "VA", true);
        check(&format!("VE{hex}"), "VE", true);
        check(&format!("VE{hex}"), "VA", false);
        check(&format!("VA{}", &hex[1..]), "VA", false);
        check(&format!("VA{hex}0"), "VA", false);
        check(&format!("VA{}g", &hex[1..]), "VA", false);
        check(&format!("VA{}/", &hex[1..]), "VA", false);
        check("VA../../Accounts", "VA", false);
        check("", "VA", false);
        // Multi-byte text of the right byte length must not panic on slicing.
        check(&format!("VA{}é", &hex[2..]), "VA", false);
        check(&format!("é{hex}"), "VA", false);
    }

    #[test]
    fn path_parameters_are_refused_as_invalid_requests() {
        assert!(matches!(
            service("VA123"),
            Err(TwilioError::InvalidRequest(_))
        ));
        assert!(matches!(
            verification("VE/../x"),
            Err(TwilioError::InvalidRequest(_))
        ));
    }
}
