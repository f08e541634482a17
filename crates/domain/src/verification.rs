//! The verification record and its state machine.
//!
//! ```text
//!            check ok                   check wrong, checks == max
//!   ┌──────────────────▶ Approved    ┌──────────────────────────▶ MaxAttemptsReached
//!   │                                │
//! Pending ──── cancel ───────────────┼──────────────────────────▶ Canceled
//!   │                                │
//!   └──── provider refused send ─────┘── expires_at passed ─────▶ Expired / Failed
//!         (or an unconfirmed send it never got: `mark_never_sent`)
//! ```
//! Every transition bumps `version`, which the store uses for optimistic concurrency.

use std::fmt;

use chrono::{DateTime, Utc};

use crate::abuse::RiskAssessment;
use crate::crypto::{DestinationHash, SealedDestination};
use crate::delivery::{DeliveryReport, DeliveryStatus, FallbackReason};
use crate::{Channel, Purpose, VerificationId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VerificationStatus {
    Pending,
    Approved,
    Canceled,
    Expired,
    MaxAttemptsReached,
    Failed,
    /// Never sent: fraud scoring refused it (a block, or a step-up the caller has not
    /// done); [`Verification::risk`] says why.
    Blocked,
}

impl VerificationStatus {
    pub const ALL: [VerificationStatus; 7] = [
        VerificationStatus::Pending,
        VerificationStatus::Approved,
        VerificationStatus::Canceled,
        VerificationStatus::Expired,
        VerificationStatus::MaxAttemptsReached,
        VerificationStatus::Failed,
        VerificationStatus::Blocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VerificationStatus::Pending => "pending",
            VerificationStatus::Approved => "approved",
            VerificationStatus::Canceled => "canceled",
            VerificationStatus::Expired => "expired",
            VerificationStatus::MaxAttemptsReached => "max_attempts_reached",
            VerificationStatus::Failed => "failed",
            VerificationStatus::Blocked => "blocked",
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
    /// See [`Verification::identity`].
    pub identity: Option<String>,
    /// The caller that starts it (see [`Verification::owner`]).
    pub owner: String,
    pub idempotency_key: Option<IdempotencyKey>,
    pub max_sends: u32,
    pub max_checks: u32,
    /// The caller allows moving to the purpose's next channel when delivery fails.
    pub allow_fallback: bool,
    /// The W3C `traceparent` of the start (see [`Verification::trace_parent`]).
    pub trace_parent: Option<String>,
    /// Fraud scoring's verdict on the start, when scoring ran (see [`Verification::risk`]).
    pub risk: Option<RiskAssessment>,
    pub now: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Every field of a [`Verification`], as a store writes and reads it: what
/// [`Verification::restore`] rebuilds a record from. It never holds the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationRecord {
    pub id: VerificationId,
    pub purpose: Purpose,
    pub channel: Channel,
    pub status: VerificationStatus,
    /// The provider's id (Twilio `VE…`), once the provider accepted the send.
    pub provider_sid: Option<String>,
    pub destination: SealedDestination,
    pub destination_hash: DestinationHash,
    pub to_masked: String,
    /// The user the caller started it for, as a keyed hash of the caller's `identity`
    /// ([`crate::BlindIndexKey::tag`]): compared, never read back, so it is not stored in
    /// clear.
    pub identity: Option<String>,
    /// The name of the configured caller that started it, the only one that may read,
    /// check, cancel or resend it; empty when the gateway serves without callers. An
    /// idempotency key is unique per purpose and owner.
    pub owner: String,
    pub idempotency_key: Option<IdempotencyKey>,
    pub sends: u32,
    pub checks: u32,
    pub max_sends: u32,
    pub max_checks: u32,
    /// The provider's error code when the verification failed (e.g. Twilio 60200).
    pub failure_code: Option<u32>,
    /// The caller allows moving to the purpose's next channel when delivery fails or no
    /// delivery report arrives in time.
    pub allow_fallback: bool,
    /// Every channel used so far, in order; the last one is `channel`.
    pub channels_tried: Vec<Channel>,
    /// Why the last fallback happened, if one did.
    pub fallback_reason: Option<FallbackReason>,
    /// The latest delivery status reported for the current send.
    pub delivery_status: Option<DeliveryStatus>,
    /// The W3C `traceparent` of the start that created it (trace and span id, no PII), so
    /// later asynchronous work on it (a fallback) joins the start's trace.
    pub trace_parent: Option<String>,
    /// Fraud scoring's verdict on the start that created it, when scoring ran (enforced or
    /// in shadow mode).
    pub risk: Option<RiskAssessment>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Bumped by every transition; the store refuses a write based on an older version.
    pub version: u32,
}

/// Our durable record of one verification, sealed: it is read through its accessors and
/// changed only by its transitions, each of which bumps its version. It never holds the
/// code.
#[derive(Debug, Clone)]
pub struct Verification {
    r: VerificationRecord,
    /// The version of the row it was read as or last written as.
    stored_version: u32,
}

/// Two records are equal when their fields are (whatever version each was read at).
impl PartialEq for Verification {
    fn eq(&self, other: &Self) -> bool {
        self.r == other.r
    }
}

impl Eq for Verification {}

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
    #[error("the caller did not allow a fallback for this verification")]
    FallbackNotAllowed,
}

/// The failure code of a verification whose unconfirmed send never reached the provider
/// ([`Verification::mark_never_sent`]): Twilio's 20404 (resource not found), as the
/// provider holds no record of it.
pub const NEVER_SENT: u32 = 20404;

/// What a delivery report means for a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryVerdict {
    /// Recorded on the verification; nothing else to do.
    Recorded,
    /// Recorded, and it is a failure another channel may get around: the caller looks up
    /// the purpose's next channel and calls [`Verification::fall_back`].
    Failed(FallbackReason),
    /// About an earlier send or a verification that is over: the record stays as it is.
    Ignored(IgnoredBecause),
}

/// Why a delivery report changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoredBecause {
    /// Approved, canceled, expired or otherwise over.
    NotPending,
    /// About a channel the verification has moved on from (e.g. a late SMS report after the
    /// fallback to a call).
    EarlierChannel,
    /// The current send already has its final status.
    AlreadyFinal,
}

impl Verification {
    /// The record of a verification about to be sent: pending, one send, no provider id yet.
    pub fn new(n: NewVerification) -> Self {
        Verification::restore(VerificationRecord {
            id: n.id,
            purpose: n.purpose,
            channel: n.channel,
            status: VerificationStatus::Pending,
            provider_sid: None,
            destination: n.destination,
            destination_hash: n.destination_hash,
            to_masked: n.to_masked,
            identity: n.identity,
            owner: n.owner,
            idempotency_key: n.idempotency_key,
            sends: 1,
            checks: 0,
            max_sends: n.max_sends,
            max_checks: n.max_checks,
            failure_code: None,
            allow_fallback: n.allow_fallback,
            channels_tried: vec![n.channel],
            fallback_reason: None,
            delivery_status: None,
            trace_parent: n.trace_parent,
            risk: n.risk,
            created_at: n.now,
            updated_at: n.now,
            expires_at: n.expires_at,
            version: 0,
        })
    }

    /// A record as a store holds it.
    pub fn restore(record: VerificationRecord) -> Self {
        Verification {
            stored_version: record.version,
            r: record,
        }
    }

    /// Every field, for a store to write.
    pub fn into_record(self) -> VerificationRecord {
        self.r
    }

    /// Every field, to change by hand: for tests that need a record in a given state.
    #[cfg(any(test, feature = "test-support"))]
    pub fn record_mut(&mut self) -> &mut VerificationRecord {
        &mut self.r
    }

    pub fn id(&self) -> VerificationId {
        self.r.id
    }

    pub fn purpose(&self) -> &Purpose {
        &self.r.purpose
    }

    /// The channel of the current send.
    pub fn channel(&self) -> Channel {
        self.r.channel
    }

    pub fn status(&self) -> VerificationStatus {
        self.r.status
    }

    /// See [`VerificationRecord::provider_sid`].
    pub fn provider_sid(&self) -> Option<&str> {
        self.r.provider_sid.as_deref()
    }

    pub fn destination(&self) -> &SealedDestination {
        &self.r.destination
    }

    pub fn destination_hash(&self) -> &DestinationHash {
        &self.r.destination_hash
    }

    pub fn to_masked(&self) -> &str {
        &self.r.to_masked
    }

    /// See [`VerificationRecord::identity`].
    pub fn identity(&self) -> Option<&str> {
        self.r.identity.as_deref()
    }

    /// See [`VerificationRecord::owner`].
    pub fn owner(&self) -> &str {
        &self.r.owner
    }

    pub fn idempotency_key(&self) -> Option<&IdempotencyKey> {
        self.r.idempotency_key.as_ref()
    }

    pub fn sends(&self) -> u32 {
        self.r.sends
    }

    pub fn checks(&self) -> u32 {
        self.r.checks
    }

    pub fn max_sends(&self) -> u32 {
        self.r.max_sends
    }

    pub fn max_checks(&self) -> u32 {
        self.r.max_checks
    }

    /// See [`VerificationRecord::failure_code`].
    pub fn failure_code(&self) -> Option<u32> {
        self.r.failure_code
    }

    /// See [`VerificationRecord::allow_fallback`].
    pub fn allow_fallback(&self) -> bool {
        self.r.allow_fallback
    }

    /// See [`VerificationRecord::channels_tried`].
    pub fn channels_tried(&self) -> &[Channel] {
        &self.r.channels_tried
    }

    /// See [`VerificationRecord::fallback_reason`].
    pub fn fallback_reason(&self) -> Option<FallbackReason> {
        self.r.fallback_reason
    }

    /// See [`VerificationRecord::delivery_status`].
    pub fn delivery_status(&self) -> Option<DeliveryStatus> {
        self.r.delivery_status
    }

    /// See [`VerificationRecord::trace_parent`].
    pub fn trace_parent(&self) -> Option<&str> {
        self.r.trace_parent.as_deref()
    }

    /// See [`VerificationRecord::risk`].
    pub fn risk(&self) -> Option<&RiskAssessment> {
        self.r.risk.as_ref()
    }

    pub fn created_at(&self) -> DateTime<Utc> {
        self.r.created_at
    }

    pub fn updated_at(&self) -> DateTime<Utc> {
        self.r.updated_at
    }

    pub fn expires_at(&self) -> DateTime<Utc> {
        self.r.expires_at
    }

    /// See [`VerificationRecord::version`].
    pub fn version(&self) -> u32 {
        self.r.version
    }

    /// The version of the row it was read as (or last written as): a store writes it only
    /// while the row still has this version ([`crate::ports::VerificationStore::update`]),
    /// so a write based on an older read fails with `Conflict` instead of undoing another.
    pub fn stored_version(&self) -> u32 {
        self.stored_version
    }

    /// For stores: it was just written as it is, so its next write is conditional on its
    /// current version.
    pub fn mark_stored(&mut self) {
        self.stored_version = self.r.version;
    }

    /// Its destination sealed anew (under the keyring's current key): the same
    /// destination, so only the version moves.
    pub fn reseal(&mut self, destination: SealedDestination) {
        self.r.destination = destination;
        self.r.version += 1;
    }

    /// Gives up its idempotency key, so a start with the key is a new start: the key's
    /// window passed, or the send failed before the provider acted and the caller may
    /// retry with the same key.
    pub fn release_idempotency_key(&mut self, now: DateTime<Utc>) {
        self.r.idempotency_key = None;
        self.touch(now);
    }

    /// The record of a start that fraud scoring refused: [`VerificationStatus::Blocked`],
    /// nothing sent, no idempotency key held (a later start, e.g. after the step-up, is
    /// scored afresh), and the assessment that refused it.
    pub fn blocked(n: NewVerification, risk: RiskAssessment) -> Self {
        let now = n.now;
        let mut v = Verification::new(NewVerification {
            idempotency_key: None,
            expires_at: now,
            ..n
        });
        v.r.status = VerificationStatus::Blocked;
        v.r.sends = 0;
        v.r.channels_tried.clear();
        v.r.risk = Some(risk);
        v
    }

    /// Whether `owner` started it: anyone else is told it does not exist.
    pub fn belongs_to(&self, owner: &str) -> bool {
        self.r.owner == owner
    }

    /// Whether a start by `owner` for `identity` may resend on it: the same caller for the
    /// same user. A start of anyone else to its destination must not receive its id.
    pub fn resendable_by(&self, owner: &str, identity: Option<&str>) -> bool {
        self.belongs_to(owner) && self.r.identity.as_deref() == identity
    }

    pub fn checks_left(&self) -> u32 {
        if self.r.status == VerificationStatus::Pending {
            self.r.max_checks.saturating_sub(self.r.checks)
        } else {
            0
        }
    }

    pub fn sends_left(&self) -> u32 {
        if self.r.status == VerificationStatus::Pending {
            self.r.max_sends.saturating_sub(self.r.sends)
        } else {
            0
        }
    }

    fn touch(&mut self, now: DateTime<Utc>) {
        self.r.updated_at = now;
        self.r.version += 1;
    }

    /// Whether this is a pending verification past its expiry at `now`: one
    /// [`Verification::expire_if_due`] moves to `Expired`.
    pub fn is_due_to_expire(&self, now: DateTime<Utc>) -> bool {
        self.r.status == VerificationStatus::Pending && now >= self.r.expires_at
    }

    /// Moves a pending verification past its expiry to `Expired`. Returns whether it did.
    pub fn expire_if_due(&mut self, now: DateTime<Utc>) -> bool {
        if self.is_due_to_expire(now) {
            self.r.status = VerificationStatus::Expired;
            self.touch(now);
            true
        } else {
            false
        }
    }

    fn ensure_pending(&self) -> Result<(), TransitionError> {
        if self.r.status == VerificationStatus::Pending {
            Ok(())
        } else {
            Err(TransitionError::NotPending(self.r.status))
        }
    }

    /// The provider accepted a send.
    pub fn mark_sent(&mut self, provider_sid: String, now: DateTime<Utc>) {
        self.r.provider_sid = Some(provider_sid);
        self.touch(now);
    }

    /// The provider did not confirm the first send (it timed out, or failed with a 5xx):
    /// the code may have been sent, so the verification stays pending, without a provider
    /// id, and says so ([`Verification::send_unconfirmed`]).
    pub fn mark_unconfirmed(&mut self, now: DateTime<Utc>) {
        self.touch(now);
    }

    /// Whether the first send's outcome is unknown: pending without a provider id, and
    /// either marked so ([`Verification::mark_unconfirmed`]; a fresh record has version 0)
    /// or older than `in_flight`, longer than any create waits for its answer (the process
    /// that made it stopped before it could record the answer). Otherwise such a record's
    /// first send is still in flight.
    pub fn send_unconfirmed(&self, now: DateTime<Utc>, in_flight: std::time::Duration) -> bool {
        self.r.status == VerificationStatus::Pending
            && self.r.provider_sid.is_none()
            && (self.r.version > 0
                || chrono::Duration::from_std(in_flight)
                    .is_ok_and(|wait| now - self.r.created_at >= wait))
    }

    /// Records the provider id a check by destination learnt for a verification whose
    /// send was unconfirmed. Not a transition of its own: it is stored with the check's.
    pub fn learn_provider_sid(&mut self, provider_sid: String) {
        if self.r.provider_sid.is_none() {
            self.r.provider_sid = Some(provider_sid);
        }
    }

    /// The provider confirmed after the fact a first send whose answer was lost: it holds
    /// an attempt for the destination, of its verification `provider_sid` (found by the
    /// reconciliation, [`crate::ports::VerifyProvider::find_sent`]). Versioned, unlike
    /// [`Verification::learn_provider_sid`], as it is stored on its own. Returns whether
    /// anything changed: only a pending verification still without a provider id does.
    pub fn confirm_sent(&mut self, provider_sid: String, now: DateTime<Utc>) -> bool {
        if self.r.status != VerificationStatus::Pending || self.r.provider_sid.is_some() {
            return false;
        }
        self.learn_provider_sid(provider_sid);
        self.touch(now);
        true
    }

    /// A first send whose outcome was unknown never happened: long after the create, the
    /// provider holds no attempt for the destination. The verification fails with
    /// [`NEVER_SENT`] as its code, so it no longer holds its destination's pending slot
    /// and a new start sends afresh. Returns whether it did: only a pending verification
    /// without a provider id ends so.
    pub fn mark_never_sent(&mut self, now: DateTime<Utc>) -> bool {
        if self.r.status != VerificationStatus::Pending || self.r.provider_sid.is_some() {
            return false;
        }
        self.r.status = VerificationStatus::Failed;
        self.r.failure_code = Some(NEVER_SENT);
        self.touch(now);
        true
    }

    /// The provider refused the first send: the verification fails with its code.
    pub fn mark_failed(&mut self, code: Option<u32>, now: DateTime<Utc>) {
        self.r.status = VerificationStatus::Failed;
        self.r.failure_code = code;
        self.touch(now);
    }

    /// Claims one more send (a resend, possibly on another channel) within our limit.
    pub fn begin_resend(
        &mut self,
        channel: Channel,
        now: DateTime<Utc>,
    ) -> Result<(), TransitionError> {
        self.ensure_pending()?;
        if self.r.sends >= self.r.max_sends {
            return Err(TransitionError::NoSendsLeft(self.r.max_sends));
        }
        self.r.sends += 1;
        self.switch_to(channel);
        self.touch(now);
        Ok(())
    }

    /// A resend by a start that has an idempotency key: a record whose own key was
    /// released takes it, so a retry of that start finds this verification. Not a
    /// transition of its own: it is stored with the resend's.
    pub fn adopt_idempotency_key(&mut self, key: Option<&IdempotencyKey>) {
        if self.r.idempotency_key.is_none() {
            self.r.idempotency_key = key.cloned();
        }
    }

    /// The trace of the start that made the current send, which a fallback from that send
    /// joins. Not a transition of its own: it is stored with the resend's.
    pub fn join_trace(&mut self, trace_parent: String) {
        self.r.trace_parent = Some(trace_parent);
    }

    /// A new send goes out on `channel`: its delivery is not known yet.
    fn switch_to(&mut self, channel: Channel) {
        if self.r.channels_tried.last() != Some(&channel) {
            self.r.channels_tried.push(channel);
        }
        self.r.channel = channel;
        self.r.delivery_status = None;
    }

    /// Applies a delivery report. Only a report about the current send of a pending
    /// verification changes anything, so late, repeated or out-of-order reports are
    /// harmless: after a fallback the earlier channel's reports are ignored, and a send's
    /// final status is never overwritten.
    pub fn apply_delivery(
        &mut self,
        report: &DeliveryReport,
        now: DateTime<Utc>,
    ) -> DeliveryVerdict {
        if self.r.status != VerificationStatus::Pending {
            return DeliveryVerdict::Ignored(IgnoredBecause::NotPending);
        }
        if report.channel.is_some_and(|c| c != self.r.channel) {
            return DeliveryVerdict::Ignored(IgnoredBecause::EarlierChannel);
        }
        if self.r.delivery_status.is_some_and(DeliveryStatus::is_final) {
            return DeliveryVerdict::Ignored(IgnoredBecause::AlreadyFinal);
        }
        self.r.delivery_status = Some(report.status);
        self.touch(now);
        if report.warrants_fallback() {
            DeliveryVerdict::Failed(FallbackReason::DeliveryFailed {
                status: report.status,
                error_code: report.error_code,
            })
        } else {
            DeliveryVerdict::Recorded
        }
    }

    /// Whether the send numbered `send` (the value of `sends` when it went out) is still
    /// the current one and has no final delivery status: the silence check of the
    /// fallback timer.
    pub fn is_silent(&self, send: u32) -> bool {
        self.r.status == VerificationStatus::Pending
            && self.r.sends == send
            && !self.r.delivery_status.is_some_and(DeliveryStatus::is_final)
    }

    /// Claims a send on `next` because the current channel failed or stayed silent. It
    /// counts against `max_sends` like any resend.
    pub fn fall_back(
        &mut self,
        next: Channel,
        reason: FallbackReason,
        now: DateTime<Utc>,
    ) -> Result<(), TransitionError> {
        self.ensure_pending()?;
        if !self.r.allow_fallback {
            return Err(TransitionError::FallbackNotAllowed);
        }
        if self.r.sends >= self.r.max_sends {
            return Err(TransitionError::NoSendsLeft(self.r.max_sends));
        }
        self.r.sends += 1;
        self.switch_to(next);
        self.r.fallback_reason = Some(reason);
        self.touch(now);
        Ok(())
    }

    /// Claims one check attempt before the provider is asked, so concurrent checks can never
    /// together exceed the limit.
    pub fn begin_check(&mut self, now: DateTime<Utc>) -> Result<(), TransitionError> {
        self.ensure_pending()?;
        if self.r.checks >= self.r.max_checks {
            return Err(TransitionError::NoChecksLeft(self.r.max_checks));
        }
        self.r.checks += 1;
        self.touch(now);
        Ok(())
    }

    /// Gives back an attempt [`Verification::begin_check`] claimed, when the provider gave
    /// no answer to the check (unavailable, timed out): the user's guess was not judged, so
    /// it must not count against them. Returns whether anything changed (a verification
    /// that is no longer pending keeps its count).
    pub fn release_check(&mut self, now: DateTime<Utc>) -> bool {
        if self.r.status != VerificationStatus::Pending || self.r.checks == 0 {
            return false;
        }
        self.r.checks -= 1;
        self.touch(now);
        true
    }

    /// Applies the provider's answer to a claimed check.
    pub fn finish_check(&mut self, outcome: CheckOutcome, now: DateTime<Utc>) -> Transition {
        if self.r.status != VerificationStatus::Pending {
            return Transition::Stored;
        }
        let transition = match outcome {
            CheckOutcome::Approved => {
                self.r.status = VerificationStatus::Approved;
                Transition::Stored
            }
            CheckOutcome::Wrong if self.r.checks >= self.r.max_checks => {
                self.r.status = VerificationStatus::MaxAttemptsReached;
                Transition::CancelUpstream
            }
            CheckOutcome::Wrong => Transition::Stored,
            CheckOutcome::Gone => {
                self.r.status = VerificationStatus::Expired;
                Transition::Stored
            }
            CheckOutcome::ProviderLimit => {
                self.r.status = VerificationStatus::MaxAttemptsReached;
                Transition::Stored
            }
        };
        self.touch(now);
        transition
    }

    /// Cancels a pending verification. Canceling a canceled one is a no-op (`Ok(false)`).
    pub fn cancel(&mut self, now: DateTime<Utc>) -> Result<bool, TransitionError> {
        if self.r.status == VerificationStatus::Canceled {
            return Ok(false);
        }
        self.ensure_pending()?;
        self.r.status = VerificationStatus::Canceled;
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
            owner: String::new(),
            idempotency_key: None,
            max_sends,
            max_checks,
            allow_fallback: true,
            trace_parent: None,
            risk: None,
            now: at(0),
            expires_at: at(600),
        })
    }

    fn report(channel: Channel, status: DeliveryStatus, code: Option<u32>) -> DeliveryReport {
        DeliveryReport {
            dedupe_key: "ce:1".into(),
            provider_sid: Some("VE1".into()),
            message_sid: None,
            channel: Some(channel),
            status,
            error_code: code,
            occurred_at: at(1),
        }
    }

    #[test]
    fn a_record_remembers_the_version_it_was_stored_at() {
        let mut v = pending(5, 3);
        assert_eq!((v.version(), v.stored_version()), (0, 0));
        v.begin_check(at(1)).expect("pending");
        v.finish_check(CheckOutcome::Wrong, at(1));
        // Two transitions, one write: the write is conditional on the version read.
        assert_eq!((v.version(), v.stored_version()), (2, 0));
        v.mark_stored();
        assert_eq!(v.stored_version(), 2);
        v.cancel(at(2)).expect("pending");
        let read = Verification::restore(v.clone().into_record());
        assert_eq!((read.version(), read.stored_version()), (3, 3));
        // Equal records, whatever version each was read at.
        assert_eq!(read, v);
        assert_ne!(v.stored_version(), read.stored_version());
    }

    #[test]
    fn a_failed_sms_falls_back_once_and_late_reports_change_nothing() {
        let mut v = pending(3, 3);
        let failed = report(Channel::Sms, DeliveryStatus::Undelivered, Some(30003));
        let reason = match v.apply_delivery(&failed, at(1)) {
            DeliveryVerdict::Failed(reason) => reason,
            other => panic!("expected a failure, got {other:?}"),
        };
        assert_eq!(reason.code(), "undelivered_30003");
        // The same failure again (a redelivery) before the fallback is recorded: final.
        assert_eq!(
            v.apply_delivery(&failed, at(1)),
            DeliveryVerdict::Ignored(IgnoredBecause::AlreadyFinal)
        );
        v.fall_back(Channel::Call, reason, at(2)).expect("fallback");
        assert_eq!(v.channel(), Channel::Call);
        assert_eq!(v.channels_tried(), vec![Channel::Sms, Channel::Call]);
        assert_eq!(v.sends(), 2);
        assert_eq!(v.fallback_reason(), Some(reason));
        assert_eq!(v.delivery_status(), None);
        // The SMS failure once more, and a late "delivered" for the SMS: about an earlier
        // channel, so nothing changes.
        let before = v.clone();
        assert_eq!(
            v.apply_delivery(&failed, at(3)),
            DeliveryVerdict::Ignored(IgnoredBecause::EarlierChannel)
        );
        let late = report(Channel::Sms, DeliveryStatus::Delivered, None);
        assert_eq!(
            v.apply_delivery(&late, at(3)),
            DeliveryVerdict::Ignored(IgnoredBecause::EarlierChannel)
        );
        assert_eq!(v, before);
        // The call is delivered.
        let call = report(Channel::Call, DeliveryStatus::Delivered, None);
        assert_eq!(v.apply_delivery(&call, at(4)), DeliveryVerdict::Recorded);
        assert_eq!(v.delivery_status(), Some(DeliveryStatus::Delivered));
    }

    #[test]
    fn no_fallback_after_the_end_or_without_consent_or_sends() {
        let failed = report(Channel::Sms, DeliveryStatus::Failed, None);
        let mut approved = pending(3, 3);
        approved.begin_check(at(1)).expect("pending");
        approved.finish_check(CheckOutcome::Approved, at(1));
        assert_eq!(
            approved.apply_delivery(&failed, at(2)),
            DeliveryVerdict::Ignored(IgnoredBecause::NotPending)
        );
        assert_eq!(
            approved.fall_back(Channel::Call, FallbackReason::NoDeliveryReport, at(2)),
            Err(TransitionError::NotPending(VerificationStatus::Approved))
        );

        let mut no_consent = pending(3, 3);
        no_consent.record_mut().allow_fallback = false;
        assert!(matches!(
            no_consent.apply_delivery(&failed, at(1)),
            DeliveryVerdict::Failed(_)
        ));
        assert_eq!(
            no_consent.fall_back(Channel::Call, FallbackReason::NoDeliveryReport, at(1)),
            Err(TransitionError::FallbackNotAllowed)
        );

        let mut one_send = pending(3, 1);
        assert_eq!(
            one_send.fall_back(Channel::Call, FallbackReason::NoDeliveryReport, at(1)),
            Err(TransitionError::NoSendsLeft(1))
        );
    }

    #[test]
    fn silence_is_about_the_current_send_only() {
        let mut v = pending(3, 3);
        assert!(v.is_silent(1));
        v.apply_delivery(&report(Channel::Sms, DeliveryStatus::Sent, None), at(1));
        assert!(v.is_silent(1), "sent is not a final status");
        v.apply_delivery(
            &report(Channel::Sms, DeliveryStatus::Delivered, None),
            at(2),
        );
        assert!(!v.is_silent(1), "delivered");

        let mut resent = pending(3, 3);
        resent.begin_resend(Channel::Sms, at(1)).expect("resend");
        assert!(!resent.is_silent(1), "a newer send took over");
        assert!(resent.is_silent(2));
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
        assert_eq!(v.status(), VerificationStatus::MaxAttemptsReached);
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
        assert_eq!(v.status(), VerificationStatus::Approved);
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
        assert_eq!(v.status(), VerificationStatus::Expired);
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
        assert_eq!(v.version(), 3);
    }

    #[test]
    fn a_released_check_is_given_back_while_pending() {
        let mut v = pending(2, 3);
        v.mark_sent("VE1".into(), at(0));
        v.begin_check(at(1)).expect("pending");
        v.begin_check(at(1)).expect("pending");
        assert_eq!(v.checks_left(), 0);
        assert!(v.release_check(at(2)));
        assert_eq!((v.checks_left(), v.version()), (1, 4));
        v.begin_check(at(3)).expect("the attempt is back");
        v.finish_check(CheckOutcome::Approved, at(3));
        assert!(!v.release_check(at(4)), "over: the count stays");
        assert_eq!(v.checks(), 2);
    }

    #[test]
    fn a_send_is_unconfirmed_once_marked_or_past_any_wait() {
        let wait = std::time::Duration::from_secs(60);
        let mut v = pending(3, 3);
        assert!(!v.send_unconfirmed(at(1), wait), "in flight");
        assert!(
            v.send_unconfirmed(at(60), wait),
            "no create waits this long"
        );
        v.mark_unconfirmed(at(2));
        assert!(v.send_unconfirmed(at(2), wait));
        v.mark_sent("VE1".into(), at(3));
        assert!(!v.send_unconfirmed(at(3), wait), "confirmed");
    }

    #[test]
    fn an_unconfirmed_send_is_confirmed_or_ends_as_never_sent() {
        let mut confirmed = pending(3, 3);
        confirmed.mark_unconfirmed(at(1));
        assert!(confirmed.confirm_sent("VE1".into(), at(5)));
        assert_eq!(
            (confirmed.provider_sid(), confirmed.version()),
            (Some("VE1"), 2)
        );
        assert!(
            !confirmed.confirm_sent("VE2".into(), at(6)),
            "a known id stays"
        );
        assert!(!confirmed.mark_never_sent(at(6)), "it was sent");

        let mut lost = pending(3, 3);
        lost.mark_unconfirmed(at(1));
        assert!(lost.mark_never_sent(at(120)), "pending without an id");
        assert_eq!(lost.status(), VerificationStatus::Failed);
        assert_eq!(lost.failure_code(), Some(NEVER_SENT));
        assert_eq!((lost.sends_left(), lost.checks_left()), (0, 0));
        assert!(!lost.confirm_sent("VE1".into(), at(121)), "over");
        assert!(!lost.mark_never_sent(at(121)), "over");
    }

    #[test]
    fn only_its_owner_for_the_same_identity_may_resend() {
        let mut v = pending(3, 3);
        v.record_mut().owner = "checkout".into();
        v.record_mut().identity = Some("user-1".into());
        assert!(v.belongs_to("checkout"));
        assert!(!v.belongs_to("billing"));
        assert!(!v.belongs_to(""));
        assert!(v.resendable_by("checkout", Some("user-1")));
        assert!(!v.resendable_by("checkout", Some("user-2")));
        assert!(!v.resendable_by("checkout", None));
        assert!(!v.resendable_by("billing", Some("user-1")));
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
