//! Twilio's own verdicts fed back as blocks: they are final, so the gateway stops asking.

use chrono::{DateTime, Utc};
use domain::abuse::{Block, BlockKind, BlockSource, BlockTarget};

use crate::config::{FraudConfig, Mode};
use crate::score::new_block;
use crate::subject::Subject;

/// Twilio Verify Fraud Guard refused SMS to the destination's prefix (a 12-hour block at
/// Twilio).
pub const FRAUD_GUARD: u32 = 60410;
/// Verify geo permissions do not enable the destination's country.
pub const VERIFY_GEO_PERMISSION: u32 = 60605;
/// Messaging geo permissions do not enable the destination's region.
pub const MESSAGING_GEO_PERMISSION: u32 = 21408;

/// The block a refusal by Twilio with error `code` calls for: 60410 blocks the range for
/// [`FraudConfig::fraud_guard_block`], 60605 and 21408 block the country for
/// [`FraudConfig::geo_permission_block`]. `None` for other codes, for a subject without
/// the needed part (an email, a number of no country) and when the mode is [`Mode::Off`].
///
/// Provider blocks are never shadow: they repeat what Twilio already enforces. (In shadow
/// mode nothing is refused anyway.)
pub fn provider_verdict(
    config: &FraudConfig,
    code: u32,
    subject: &Subject,
    now: DateTime<Utc>,
) -> Option<Block> {
    if config.mode == Mode::Off {
        return None;
    }
    let phone = subject.phone.as_ref()?;
    let (target, detail, duration) = match code {
        FRAUD_GUARD => (
            BlockTarget {
                kind: BlockKind::Prefix,
                value: phone.range_prefix.clone(),
            },
            format!(
                "Twilio Fraud Guard refused to send to range {} (error {code})",
                phone.range_prefix
            ),
            config.fraud_guard_block,
        ),
        VERIFY_GEO_PERMISSION | MESSAGING_GEO_PERMISSION => {
            let country = phone.country?;
            (
                BlockTarget {
                    kind: BlockKind::Country,
                    value: country.as_str().to_owned(),
                },
                format!(
                    "Twilio geo permissions do not allow sending to country {country} (error {code})"
                ),
                config.geo_permission_block,
            )
        }
        _ => return None,
    };
    Some(new_block(
        target,
        &format!("TWILIO_{code}"),
        detail,
        BlockSource::Provider,
        false,
        now,
        duration,
    ))
}
