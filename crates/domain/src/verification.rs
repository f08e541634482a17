//! The verification record and its state machine.
//!
//! ```text
//!            check ok                   check wrong, checks == max
//!   ┌──────────────────▶ Approved    ┌──────────────────────────▶ MaxAttemptsReached
//!   │                                │
//! Pending ──── cancel ───────────────┼──────────────────────────▶ Canceled
//!   │                                │
//!   └──── provider refused send ─────┘── expires_at passed ─────▶ Expired / Failed
//! ```
//! Every transition bumps `version`, which the store uses for optimistic concurrency.

use std::fmt;

use chrono::{DateTime, Utc};

use crate::crypto::{DestinationHash, SealedDestination};
use crate::{Channel, Purpose, VerificationId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VerificationStatus {
    Pending,
    Approved,
    Canceled,
    Expired,
    MaxAttemptsReached,
    Failed,
}

impl VerificationStatus {
    pub const ALL: [VerificationStatus; 6] = [
        VerificationStatus::Pending,
        VerificationStatus::Approved,
        VerificationStatus::Canceled,
        VerificationStatus::Expired,
        VerificationStatus::MaxAttemptsReached,
        VerificationStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VerificationStatus::Pending => "pending",
            VerificationStatus::Approved => "approved",
            VerificationStatus::Canceled => "canceled",
            VerificationStatus::Expired => "expired",
            VerificationStatus::MaxAttemptsReached => "max_attempts_reached",
            VerificationStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        self != VerificationStatus::Pending
    }
}

impl fmt::Display for VerificationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A caller-chosen key that makes a start idempotent: 1 to 128 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("idempotency key must be 1 to 128 printable ASCII characters")]
pub struct IdempotencyKeyError;

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, IdempotencyKeyError> {
        if raw.is_empty() || raw.len() > 128 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(IdempotencyKeyError);
        }
        Ok(IdempotencyKey(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A BCP 47-like locale tag for the message (`en`, `pt-BR`): 2 to 16 of `[A-Za-z0-9-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Locale(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("locale must look like `en` or `pt-BR`")]
pub struct LocaleError;

impl Locale {
    pub fn parse(raw: &str) -> Result<Self, LocaleError> {
        let ok = (2..=16).contains(&raw.len())
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && raw.as_bytes()[0].is_ascii_alphabetic()
            && !raw.ends_with('-');
        if ok {
            Ok(Locale(raw.to_owned()))
        } else {
            Err(LocaleError)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The user-supplied one-time code. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct OtpCode(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("code must be 4 to 10 letters or digits")]
pub struct OtpCodeError;

impl OtpCode {
    pub fn parse(raw: &str) -> Result<Self, OtpCodeError> {
        let raw = raw.trim();
        if !(4..=10).contains(&raw.len()) || !raw.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(OtpCodeError);
        }
        Ok(OtpCode(raw.to_owned()))
    }

    /// The code itself, for the provider call only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OtpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OtpCode([redacted])")
    }
}

/// What is known when a verification is first recorded, before the provider is called.
#[derive(Debug, Clone)]
pub struct NewVerification {
    pub id: VerificationId,
    pub purpose: Purpose,
    pub channel: Channel,
    pub destination: SealedDestination,
    pub destination_hash: DestinationHash,
    pub to_masked: String,
    pub identity: Option<String>,
    pub idempotency_key: Option<IdempotencyKey>,
    pub max_sends: u32,
    pub max_checks: u32,
    pub now: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Our durable record of one verification. It never holds the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub id: VerificationId,
    pub purpose: Purpose,
    pub channel: Channel,
    pub status: VerificationStatus,
    /// The provider's id (Twilio `VE…`), once the provider accepted the send.
    pub provider_sid: Option<String>,
    pub destination: SealedDestination,
    pub destination_hash: DestinationHash,
    pub to_masked: String,
    pub identity: Option<String>,
    pub idempotency_key: Option<IdempotencyKey>,
    pub sends: u32,
    pub checks: u32,
    pub max_sends: u32,
    pub max_checks: u32,
    /// The provider's error code when the verification failed (e.g. Twilio 60200).
    pub failure_code: Option<u32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Bumped by every transition; the store refuses a write based on an older version.
    pub version: u32,
}

/// The provider's answer to a check, as the state machine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    Approved,
    Wrong,
    /// The provider no longer knows the verification (expired or already used).
    Gone,
    /// The provider's own attempt limit was reached.
    ProviderLimit,
}

/// What the caller must do after a transition besides storing the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Stored,
    /// Our limit was reached before the provider's: cancel upstream so the user never hits
    /// the provider's lockout.
    CancelUpstream,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("verification is {0}, not pending")]
    NotPending(VerificationStatus),
    #[error("verification has used all {0} of its checks")]
    NoChecksLeft(u32),
    #[error("verification has used all {0} of its sends")]
    NoSendsLeft(u32),
}

impl Verification {
    /// The record of a verification about to be sent: pending, one send, no provider id yet.
    pub fn new(n: NewVerification) -> Self {
        Verification {
            id: n.id,
            purpose: n.purpose,
            channel: n.channel,
            status: VerificationStatus::Pending,
            provider_sid: None,
            destination: n.destination,
            destination_hash: n.destination_hash,
            to_masked: n.to_masked,
            identity: n.identity,
            idempotency_key: n.idempotency_key,
            sends: 1,
            checks: 0,
            max_sends: n.max_sends,
            max_checks: n.max_checks,
            failure_code: None,
            created_at: n.now,
            updated_at: n.now,
            expires_at: n.expires_at,
            version: 0,
        }
    }

    pub fn checks_left(&self) -> u32 {
        if self.status == VerificationStatus::Pending {
            self.max_checks.saturating_sub(self.checks)
        } else {
            0
        }
    }

    pub fn sends_left(&self) -> u32 {
        if self.status == VerificationStatus::Pending {
            self.max_sends.saturating_sub(self.sends)
        } else {
            0
        }
    }

    fn touch(&mut self, now: DateTime<Utc>) {
        self.updated_at = now;
        self.version += 1;
    }

    /// Moves a pending verification past its expiry to `Expired`. Returns whether it did.
    pub fn expire_if_due(&mut self, now: DateTime<Utc>) -> bool {
        if self.status == VerificationStatus::Pending && now >= self.expires_at {
            self.status = VerificationStatus::Expired;
            self.touch(now);
            true
        } else {
            false
        }
    }

    fn ensure_pending(&self) -> Result<(), TransitionError> {
        if self.status == VerificationStatus::Pending {
            Ok(())
        } else {
            Err(TransitionError::NotPending(self.status))
        }
    }

    /// The provider accepted a send.
    pub fn mark_sent(&mut self, provider_sid: String, now: DateTime<Utc>) {
        self.provider_sid = Some(provider_sid);
        self.touch(now);
    }

    /// The provider refused the first send: the verification fails with its code.
    pub fn mark_failed(&mut self, code: Option<u32>, now: DateTime<Utc>) {
        self.status = VerificationStatus::Failed;
        self.failure_code = code;
        self.touch(now);
    }

    /// Claims one more send (a resend, possibly on another channel) within our limit.
    pub fn begin_resend(
        &mut self,
        channel: Channel,
        now: DateTime<Utc>,
    ) -> Result<(), TransitionError> {
        self.ensure_pending()?;
        if self.sends >= self.max_sends {
            return Err(TransitionError::NoSendsLeft(self.max_sends));
        }
        self.sends += 1;
        self.channel = channel;
        self.touch(now);
        Ok(())
    }

    /// Claims one check attempt before the provider is asked, so concurrent checks can never
    /// together exceed the limit.
    pub fn begin_check(&mut self, now: DateTime<Utc>) -> Result<(), TransitionError> {
        self.ensure_pending()?;
        if self.checks >= self.max_checks {
            return Err(TransitionError::NoChecksLeft(self.max_checks));
        }
        self.checks += 1;
        self.touch(now);
        Ok(())
    }

    /// Applies the provider's answer to a claimed check.
    pub fn finish_check(&mut self, outcome: CheckOutcome, now: DateTime<Utc>) -> Transition {
        if self.status != VerificationStatus::Pending {
            return Transition::Stored;
        }
        let transition = match outcome {
            CheckOutcome::Approved => {
                self.status = VerificationStatus::Approved;
                Transition::Stored
            }
            CheckOutcome::Wrong if self.checks >= self.max_checks => {
                self.status = VerificationStatus::MaxAttemptsReached;
                Transition::CancelUpstream
            }
            CheckOutcome::Wrong => Transition::Stored,
            CheckOutcome::Gone => {
                self.status = VerificationStatus::Expired;
                Transition::Stored
            }
            CheckOutcome::ProviderLimit => {
                self.status = VerificationStatus::MaxAttemptsReached;
                Transition::Stored
            }
        };
        self.touch(now);
        transition
    }

    /// Cancels a pending verification. Canceling a canceled one is a no-op (`Ok(false)`).
    pub fn cancel(&mut self, now: DateTime<Utc>) -> Result<bool, TransitionError> {
        if self.status == VerificationStatus::Canceled {
            return Ok(false);
        }
        self.ensure_pending()?;
        self.status = VerificationStatus::Canceled;
        self.touch(now);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use uuid::Uuid;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0)
            .single()
            .expect("valid")
    }

    fn pending(max_checks: u32, max_sends: u32) -> Verification {
        Verification::new(NewVerification {
            id: VerificationId::from_uuid(Uuid::from_u128(1)),
            purpose: Purpose::parse("login").expect("valid"),
            channel: Channel::Sms,
            destination: SealedDestination {
                key_id: "k1".into(),
                ciphertext: vec![0; 40],
            },
            destination_hash: DestinationHash::from_stored("ab".repeat(32)),
            to_masked: "+1415***2671".into(),
            identity: None,
            idempotency_key: None,
            max_sends,
            max_checks,
            now: at(0),
            expires_at: at(600),
        })
    }

    #[test]
    fn wrong_codes_count_down_then_cancel_upstream() {
        let mut v = pending(3, 3);
        for left in [2, 1] {
            v.begin_check(at(1)).expect("pending");
            assert_eq!(
                v.finish_check(CheckOutcome::Wrong, at(1)),
                Transition::Stored
            );
            assert_eq!(v.checks_left(), left);
        }
        v.begin_check(at(2)).expect("pending");
        assert_eq!(
            v.finish_check(CheckOutcome::Wrong, at(2)),
            Transition::CancelUpstream
        );
        assert_eq!(v.status, VerificationStatus::MaxAttemptsReached);
        assert_eq!(
            v.begin_check(at(3)),
            Err(TransitionError::NotPending(
                VerificationStatus::MaxAttemptsReached
            ))
        );
    }

    #[test]
    fn approval_is_final() {
        let mut v = pending(3, 3);
        v.begin_check(at(1)).expect("pending");
        v.finish_check(CheckOutcome::Approved, at(1));
        assert_eq!(v.status, VerificationStatus::Approved);
        assert_eq!(v.checks_left(), 0);
        assert!(v.cancel(at(2)).is_err());
        assert!(!v.expire_if_due(at(601)));
    }

    #[test]
    fn sends_are_limited() {
        let mut v = pending(3, 3);
        v.begin_resend(Channel::Call, at(1)).expect("second send");
        v.begin_resend(Channel::Sms, at(2)).expect("third send");
        assert_eq!(
            v.begin_resend(Channel::Sms, at(3)),
            Err(TransitionError::NoSendsLeft(3))
        );
        assert_eq!(v.sends_left(), 0);
    }

    #[test]
    fn expiry_and_cancel() {
        let mut v = pending(3, 3);
        assert!(!v.expire_if_due(at(599)));
        assert!(v.expire_if_due(at(600)));
        assert_eq!(v.status, VerificationStatus::Expired);
        let mut c = pending(3, 3);
        assert_eq!(c.cancel(at(1)), Ok(true));
        assert_eq!(c.cancel(at(2)), Ok(false));
    }

    #[test]
    fn versions_increase_with_every_transition() {
        let mut v = pending(3, 3);
        v.mark_sent("VE1".into(), at(0));
        v.begin_check(at(1)).expect("pending");
        v.finish_check(CheckOutcome::Wrong, at(1));
        assert_eq!(v.version, 3);
    }

    #[test]
    fn statuses_round_trip() {
        for s in VerificationStatus::ALL {
            assert_eq!(VerificationStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn codes_and_keys_are_checked() {
        assert!(OtpCode::parse("123456").is_ok());
        assert!(OtpCode::parse("12").is_err());
        assert!(OtpCode::parse("12 456").is_err());
        assert_eq!(
            format!("{:?}", OtpCode::parse("123456")),
            "Ok(OtpCode([redacted]))"
        );
        assert!(IdempotencyKey::parse("order-42").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("a b").is_err());
        assert!(Locale::parse("pt-BR").is_ok());
        assert!(Locale::parse("e").is_err());
    }
}
