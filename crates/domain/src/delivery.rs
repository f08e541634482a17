//! Delivery reports: what the provider says became of a message it sent for a verification,
//! normalised from Twilio's Verify Events and Programmable Messaging status callbacks, and
//! the events the gateway passes between its services about them.
//!
//! Twilio Verify gives no per-send callback; reports arrive later, possibly more than once
//! and out of order. A report is therefore matched to the verification by the provider's
//! id, ignored unless it is about the channel the verification is on now, and deduplicated
//! by a key derived from the report itself (the CloudEvent id, or message SID + status).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::events::EventKind;
use crate::{Channel, VerificationId};

/// Error codes of undelivered messages that another channel can get around: the number
/// cannot receive this kind of message, or the carrier did not take it.
///
/// - 30003 unreachable destination handset
/// - 30005 unknown destination handset
/// - 30006 landline or unreachable carrier
/// - 30007 message filtered by the carrier
/// - 30008 unknown error
pub const FALLBACK_CODES: [u32; 5] = [30003, 30005, 30006, 30007, 30008];

/// The status of a sent message, as Twilio names them (lower case here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Queued,
    Sent,
    Delivered,
    Read,
    Undelivered,
    Failed,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 6] = [
        DeliveryStatus::Queued,
        DeliveryStatus::Sent,
        DeliveryStatus::Delivered,
        DeliveryStatus::Read,
        DeliveryStatus::Undelivered,
        DeliveryStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Read => "read",
            DeliveryStatus::Undelivered => "undelivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    /// Parses Twilio's spelling in either case (`DELIVERED` in Verify Events, `delivered` in
    /// status callbacks). Other statuses (`accepted`, `sending`, `receiving`, …) are `None`.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(raw.trim()))
    }

    /// Whether the message reached the user (nothing more will happen to it).
    pub fn is_delivered(self) -> bool {
        matches!(self, DeliveryStatus::Delivered | DeliveryStatus::Read)
    }

    /// Whether this is the end of the message's life.
    pub fn is_final(self) -> bool {
        !matches!(self, DeliveryStatus::Queued | DeliveryStatus::Sent)
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One delivery report, reduced to what the gateway acts on. It carries no destination: the
/// report is matched by the provider's verification id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryReport {
    /// Identifies the report for deduplication: `ce:<CloudEvent id>` or
    /// `ms:<MessageSid>:<status>`.
    pub dedupe_key: String,
    /// The provider's verification id (`VE…`), when the report names it.
    pub provider_sid: Option<String>,
    /// The provider's message or attempt id (`SM…`, `VL…`), when the report names it.
    pub message_sid: Option<String>,
    /// The channel the message went over, when the report names it.
    pub channel: Option<Channel>,
    pub status: DeliveryStatus,
    /// The provider's error code on failures (e.g. 30003).
    pub error_code: Option<u32>,
    /// When the provider says it happened.
    pub occurred_at: DateTime<Utc>,
}

impl DeliveryReport {
    /// Whether this report is a failure that another channel may get around: Twilio's
    /// `failed`, or `undelivered` with one of [`FALLBACK_CODES`].
    pub fn warrants_fallback(&self) -> bool {
        match self.status {
            DeliveryStatus::Failed => true,
            DeliveryStatus::Undelivered => self
                .error_code
                .is_some_and(|code| FALLBACK_CODES.contains(&code)),
            _ => false,
        }
    }
}

/// Why a verification moved on to its next channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FallbackReason {
    /// The provider reported the message failed, with its error code if it gave one.
    DeliveryFailed {
        status: DeliveryStatus,
        error_code: Option<u32>,
    },
    /// No delivery report arrived within the purpose's `fallback_after_seconds`.
    NoDeliveryReport,
}

impl FallbackReason {
    /// A short stable text for logs, metrics and the API: `undelivered_30003`, `failed`,
    /// `no_delivery_report`.
    pub fn code(&self) -> String {
        match self {
            FallbackReason::DeliveryFailed {
                status,
                error_code: Some(code),
            } => format!("{status}_{code}"),
            FallbackReason::DeliveryFailed {
                status,
                error_code: None,
            } => status.to_string(),
            FallbackReason::NoDeliveryReport => "no_delivery_report".into(),
        }
    }
}

/// The bus event webhook-ingest publishes for every new report; payload: [`DeliveryReport`]
/// as JSON, version [`DELIVERY_REPORTED_VERSION`] (see [`crate::bus::BusEvent`]).
pub const DELIVERY_REPORTED: EventKind = EventKind::known("delivery.reported");
pub const DELIVERY_REPORTED_VERSION: u32 = 1;

/// The delayed bus event verify-service schedules after each send it may fall back from;
/// payload: [`SilenceCheck`] as JSON, version [`SILENCE_CHECK_VERSION`] (see
/// [`crate::bus::BusEvent`]).
pub const SILENCE_CHECK: EventKind = EventKind::known("delivery.silence_check");
pub const SILENCE_CHECK_VERSION: u32 = 1;

/// "If send number `send` of this verification has no final delivery report by now, fall
/// back." Sends are numbered by the verification's `sends` counter, so a check scheduled
/// for an older send finds a newer one and does nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SilenceCheck {
    /// As it prints (`ver_…`).
    #[serde(with = "crate::id::as_string")]
    pub verification_id: VerificationId,
    pub send: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(status: DeliveryStatus, error_code: Option<u32>) -> DeliveryReport {
        DeliveryReport {
            dedupe_key: "ce:1".into(),
            provider_sid: Some("VE1".into()),
            message_sid: None,
            channel: Some(Channel::Sms),
            status,
            error_code,
            occurred_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    #[test]
    fn statuses_parse_in_either_case() {
        assert_eq!(
            DeliveryStatus::parse("DELIVERED"),
            Some(DeliveryStatus::Delivered)
        );
        assert_eq!(
            DeliveryStatus::parse("undelivered"),
            Some(DeliveryStatus::Undelivered)
        );
        assert_eq!(DeliveryStatus::parse("sending"), None);
        assert_eq!(DeliveryStatus::parse(""), None);
        for s in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn only_failures_another_channel_can_get_around_fall_back() {
        assert!(report(DeliveryStatus::Undelivered, Some(30003)).warrants_fallback());
        assert!(report(DeliveryStatus::Undelivered, Some(30006)).warrants_fallback());
        assert!(report(DeliveryStatus::Failed, None).warrants_fallback());
        assert!(report(DeliveryStatus::Failed, Some(30001)).warrants_fallback());
        // 30004: the user blocked the sender; another channel would be unwelcome too.
        assert!(!report(DeliveryStatus::Undelivered, Some(30004)).warrants_fallback());
        assert!(!report(DeliveryStatus::Undelivered, None).warrants_fallback());
        assert!(!report(DeliveryStatus::Delivered, None).warrants_fallback());
        assert!(!report(DeliveryStatus::Sent, None).warrants_fallback());
    }

    #[test]
    fn reasons_have_stable_codes() {
        let failed = FallbackReason::DeliveryFailed {
            status: DeliveryStatus::Undelivered,
            error_code: Some(30003),
        };
        assert_eq!(failed.code(), "undelivered_30003");
        assert_eq!(
            FallbackReason::NoDeliveryReport.code(),
            "no_delivery_report"
        );
    }
}
