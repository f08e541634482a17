//! The port traits adapters implement. They are object-safe and held as `Arc<dyn Trait>`.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::abuse::{LimitDecision, LimitRequest};
use crate::crypto::DestinationHash;
use crate::delivery::DeliveryReport;
use crate::events::Envelope;
use crate::{
    Channel, Destination, IdempotencyKey, Locale, OtpCode, Purpose, Verification, VerificationId,
};

/// Reads the current time. Pure code takes `now` as an argument; services hold a `Clock`.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// A request to send a code through the provider.
#[derive(Debug, Clone)]
pub struct ProviderStart {
    /// The provider's service (Twilio Verify Service SID, `VA…`).
    pub service: String,
    pub to: Destination,
    pub channel: Channel,
    pub locale: Option<Locale>,
}

/// The provider's view of a verification status. Unknown values are kept, not refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderStatus {
    Pending,
    Approved,
    Canceled,
    MaxAttemptsReached,
    Deleted,
    Failed,
    Expired,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderVerification {
    /// The provider's id (`VE…`).
    pub sid: String,
    pub status: ProviderStatus,
    pub channel: Option<Channel>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderCheck {
    pub status: ProviderStatus,
    pub valid: bool,
    /// The provider's id of the verification it checked, when it said: a check by
    /// destination ([`VerifyProvider::check_destination`]) learns it this way.
    pub sid: Option<String>,
}

/// What went wrong at the provider, classified so services can act without reading text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderErrorKind {
    /// The destination is not valid for the provider (Twilio 60200 on `To`, 21211).
    InvalidDestination,
    /// Another parameter was refused (60200, 60221, 60306).
    InvalidRequest,
    /// SMS to a landline (60205).
    LandlineUnsupported,
    /// The channel is disabled for the service (60223).
    ChannelDisabled,
    /// The provider's check limit was reached (60202, 60308).
    MaxChecks,
    /// The provider's send limit was reached (60203).
    MaxSends,
    /// The verification or service is unknown, expired or already used (20404).
    NotFound,
    /// Too many requests (20429, 60212); `retry_after` says when to try again.
    RateLimited,
    /// The provider's fraud protection blocked the destination (60410).
    FraudBlocked,
    /// Sending to the destination's country is not permitted (60605, 21408).
    GeoBlocked,
    /// The recipient opted out (21610) or the account may not send there (21608).
    Unsubscribed,
    /// Credentials were refused (20003, 20008): a configuration error.
    Unauthenticated,
    /// The provider answered with a failure of its own (5xx): whether it acted before it
    /// failed is not known.
    Unavailable,
    /// The provider could not be reached (a connection that was never made): nothing was
    /// sent.
    Unreachable,
    /// The request timed out after it may have reached the provider.
    Timeout,
    /// Anything else.
    Unexpected,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("provider error {kind:?} (code {code:?}): {message}")]
pub struct ProviderError {
    pub kind: ProviderErrorKind,
    /// The provider's numeric code (Twilio error code), when it gave one.
    pub code: Option<u32>,
    pub message: String,
    /// When the provider said when to try again (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    /// Whether trying the same request again later could succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ProviderErrorKind::RateLimited
                | ProviderErrorKind::Unavailable
                | ProviderErrorKind::Unreachable
                | ProviderErrorKind::Timeout
        )
    }

    /// Whether the provider may have acted on the request although it answered with this
    /// error: it timed out, failed with a 5xx, or its answer could not be read. A create
    /// that ends so may have sent a code.
    pub fn may_have_acted(&self) -> bool {
        matches!(
            self.kind,
            ProviderErrorKind::Unavailable
                | ProviderErrorKind::Timeout
                | ProviderErrorKind::Unexpected
        )
    }
}

/// The verification provider (Twilio Verify, or the sandbox that behaves like it).
#[async_trait]
pub trait VerifyProvider: Send + Sync + fmt::Debug {
    /// Sends a code. Never retried blindly by the adapter: a timeout may have sent one.
    async fn start(&self, request: &ProviderStart) -> Result<ProviderVerification, ProviderError>;

    /// Checks a code against the verification `sid`.
    async fn check(
        &self,
        service: &str,
        sid: &str,
        code: &OtpCode,
    ) -> Result<ProviderCheck, ProviderError>;

    /// Checks a code against the pending verification of `to` in `service`: for a
    /// verification whose provider id was never learnt (its create timed out, or the
    /// process stopped before storing the answer), which the provider may still hold.
    async fn check_destination(
        &self,
        service: &str,
        to: &Destination,
        code: &OtpCode,
    ) -> Result<ProviderCheck, ProviderError>;

    async fn fetch(&self, service: &str, sid: &str) -> Result<ProviderVerification, ProviderError>;

    async fn cancel(&self, service: &str, sid: &str)
    -> Result<ProviderVerification, ProviderError>;

    /// The provider's id (`VE…`) of the verification its newest send attempt to `to` in
    /// `service` created after `since` belongs to, or `None` when it holds no such attempt.
    ///
    /// For a verification whose first send was never confirmed (the create timed out or
    /// failed with a 5xx, or the process stopped before storing the answer): an attempt
    /// means the code went out, as that verification; none, long enough after the create
    /// (the provider's attempt records may lag), means it never did. A read: it sends
    /// nothing and may be repeated.
    async fn find_sent(
        &self,
        service: &str,
        to: &Destination,
        since: DateTime<Utc>,
    ) -> Result<Option<String>, ProviderError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The row changed since it was read (optimistic concurrency); read again and retry.
    #[error("verification {0} was changed concurrently")]
    Conflict(VerificationId),
    #[error("verification {0} does not exist")]
    NotFound(VerificationId),
    /// The store could not answer; callers fail closed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored row could not be read back into a domain value.
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
}

/// The result of recording a new verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    Created,
    /// Another verification already holds the same purpose and idempotency key;
    /// nothing was written.
    Existing(Box<Verification>),
    /// Another verification for the same purpose and destination is still pending and has
    /// not expired (at the new verification's `created_at`); it is returned and nothing was
    /// written. Only one verification per purpose and destination may be pending, so the
    /// caller resends on this one instead of starting another.
    Pending(Box<Verification>),
}

/// What a write guarded by rate limits did ([`VerificationStore::insert_limited`],
/// [`VerificationStore::update_limited`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limited<T> {
    /// A limit refused: nothing was taken from any limit and nothing written. The decision
    /// of every key, in the order of the requests.
    Refused(Vec<LimitDecision>),
    /// Every limit allowed: one event was taken from each and the write done, in one
    /// transaction. The decision of every key, in order, and what the write did.
    Done {
        decisions: Vec<LimitDecision>,
        outcome: T,
    },
}

/// Our durable record of verifications.
#[async_trait]
pub trait VerificationStore: Send + Sync + fmt::Debug {
    /// Records a new verification, deciding in the database (so it holds across replicas
    /// and concurrent requests) against the two rules that may refuse it:
    ///
    /// - one with the same purpose and idempotency key exists: returns
    ///   [`Inserted::Existing`] with it and writes nothing (checked first);
    /// - the new verification is pending and another one for the same purpose and
    ///   destination hash is pending too: if that one has not expired at the new one's
    ///   `created_at`, returns [`Inserted::Pending`] with it and writes nothing; if it has,
    ///   marks it expired (status, `updated_at`, `version + 1`) and records the new one, in
    ///   one transaction.
    ///
    /// Reusing the id of a stored verification is an error, never an idempotent hit.
    async fn insert(&self, verification: &Verification) -> Result<Inserted, StoreError>;

    /// In one transaction, takes one event from each of `limits` at `now` (as
    /// [`crate::abuse::RateLimitStore::take`] does) and, when every one allows it,
    /// [`VerificationStore::insert`]s `verification`. When any limit refuses, nothing is
    /// taken from any of them and nothing is written: a refused start costs no other limit
    /// an event. The events are taken whatever the insert finds ([`Inserted::Pending`] is a
    /// resend, which is a send too). Empty `limits` is a plain insert.
    async fn insert_limited(
        &self,
        verification: &Verification,
        limits: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Limited<Inserted>, StoreError>;

    async fn get(&self, id: &VerificationId) -> Result<Option<Verification>, StoreError>;

    /// A verification by id for a caller that next writes it with an update conditional on
    /// the version read ([`VerificationStore::update`], [`VerificationStore::update_limited`]):
    /// it may be an older version than the store holds (say, one this process wrote), so
    /// the write may fail with `Conflict`, after which the caller reads it with
    /// [`VerificationStore::get`]. Nothing may be told to anyone from it that such a write
    /// has not confirmed. The store's own answer is [`VerificationStore::get`]'s.
    async fn get_to_update(&self, id: &VerificationId) -> Result<Option<Verification>, StoreError> {
        self.get(id).await
    }

    /// The verification the provider knows by `provider_sid` (Twilio `VE…`): how a delivery
    /// report, which names no verification of ours, finds its verification.
    ///
    /// Several verifications can hold one provider id (Twilio answers a start for a
    /// destination that already has a pending verification in the same Verify Service with
    /// that verification's id, whichever of our purposes asked); the newest by `created_at`
    /// (then id) is returned, being the one a report about the latest send is about.
    async fn find_by_provider_sid(
        &self,
        provider_sid: &str,
    ) -> Result<Option<Verification>, StoreError>;

    /// The verification holding `key` for `purpose` and `owner` (see
    /// [`Verification::owner`]), whatever its age.
    async fn find_by_idempotency_key(
        &self,
        purpose: &Purpose,
        owner: &str,
        key: &IdempotencyKey,
    ) -> Result<Option<Verification>, StoreError>;

    /// The newest pending verification for `purpose` and destination that expires after `now`.
    async fn find_pending(
        &self,
        purpose: &Purpose,
        destination: &DestinationHash,
        now: DateTime<Utc>,
    ) -> Result<Option<Verification>, StoreError>;

    /// Writes `verification` if the stored row still has the version it was read at
    /// ([`Verification::stored_version`]), and then marks it stored
    /// ([`Verification::mark_stored`]), so its next write is conditional on what this one
    /// wrote; fails with `Conflict` when the row moved on.
    async fn update(&self, verification: &mut Verification) -> Result<(), StoreError>;

    /// In one transaction, takes one event from each of `limits` at `now` and, when every
    /// one allows it, [`VerificationStore::update`]s `verification` (and marks it stored).
    /// A refusal takes and writes nothing; an update that fails (`Conflict`, `NotFound`)
    /// returns its error and takes nothing either, so a retry after re-reading the row is
    /// charged once.
    async fn update_limited(
        &self,
        verification: &mut Verification,
        limits: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Limited<()>, StoreError>;

    /// Up to `limit` verifications whose destination is sealed with a key other than
    /// `current_key_id`, oldest first, whatever their status: the work list of a key
    /// rotation, which re-seals each with the current key and writes it back with
    /// [`VerificationStore::update`]. Rewritten rows drop out of the list, so calling again
    /// until it is empty visits every row; no cursor is needed.
    ///
    /// Rows sealed with one old key come strictly oldest first. With several old keys, a
    /// batch draws on them in key id order, so older rows of a later key may wait until the
    /// earlier key's rows are rewritten; in exchange every call is a bounded index scan,
    /// however large the table.
    async fn list_sealed_with_other_key(
        &self,
        current_key_id: &str,
        limit: u32,
    ) -> Result<Vec<Verification>, StoreError>;

    /// Up to `limit` pending verifications without a provider id created before
    /// `created_before`, oldest first: the work list of the reconciliation of sends whose
    /// outcome is unknown ([`Verification::send_unconfirmed`]), which learns each one's
    /// provider id or ends it. Rows it settles drop out of the list, so no cursor is
    /// needed; every call is a bounded read of an index holding only such rows, however
    /// large the table.
    async fn list_unconfirmed(
        &self,
        created_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Verification>, StoreError>;
}

/// Whether a write that is idempotent on a key stored something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Stored now.
    New,
    /// The key was stored already; nothing was written.
    Duplicate,
}

/// The delivery reports the gateway received, each recorded once together with the event it
/// causes, so a report is never acted on twice and never lost between the database and the
/// bus (a transactional outbox: [`Outbox`] publishes what this queues).
#[async_trait]
pub trait DeliveryReportStore: Send + Sync + fmt::Debug {
    /// In one transaction, records `report` (received at `now`) and queues `event` in the
    /// outbox, due at once.
    ///
    /// A report whose `dedupe_key` is stored already is a [`Recorded::Duplicate`] and writes
    /// nothing, neither the report nor the event; concurrent calls with one key, from any
    /// replica, record it exactly once. An `event` whose message id is in the outbox already
    /// (under another report) is an error and writes nothing: message ids are fresh per event.
    async fn record_report(
        &self,
        report: &DeliveryReport,
        event: &Envelope,
        now: DateTime<Utc>,
    ) -> Result<Recorded, StoreError>;
}

/// A message of the outbox, claimed for publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The outbox's id of the message, for [`Outbox::mark_published`] and
    /// [`Outbox::retry_later`].
    pub id: i64,
    /// The message as it was queued (its time to the millisecond).
    pub envelope: Envelope,
    /// How many publishing attempts failed so far ([`Outbox::retry_later`] calls).
    pub attempts: u32,
}

/// The transactional outbox: events written in the same transaction as the state they
/// describe, published to the bus afterwards by a relay (at least once; consumers dedupe on
/// the message id). Any number of relays, on any number of replicas, may work on one outbox.
#[async_trait]
pub trait Outbox: Send + Sync + fmt::Debug {
    /// Queues `envelope`, due at once, unless a message with its id is queued already (then
    /// [`Recorded::Duplicate`] and nothing is written). For events that do not come with a
    /// delivery report ([`DeliveryReportStore::record_report`] queues those).
    async fn enqueue(
        &self,
        envelope: &Envelope,
        now: DateTime<Utc>,
    ) -> Result<Recorded, StoreError>;

    /// Claims up to `limit` unpublished messages due at `now` (those due longest first) and
    /// returns them oldest first. A claimed message is leased until `now + lease`: no other
    /// claim returns it before then, whichever replica asks, so concurrent relays never
    /// publish one message at once. A relay that dies holding a lease only delays its
    /// messages until the lease ends. The lease should exceed the time a batch takes to
    /// publish; a zero lease makes the messages due again at once.
    ///
    /// A stored message that cannot be read back fails the claim once with
    /// [`StoreError::Corrupt`] and is set aside (never due again, the reason kept as its
    /// error), so it cannot stall the outbox; the next claim goes on without it.
    async fn claim(
        &self,
        limit: u32,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<OutboxMessage>, StoreError>;

    /// Marks the messages with `ids` published at `now`; they are never claimed again. Ids
    /// that are unknown or published already are left alone.
    async fn mark_published(&self, ids: &[i64], now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Records a failed attempt at publishing message `id` (attempts + 1, `error` kept for
    /// inspection) and makes it due again at `at`. A published or unknown id is left alone.
    async fn retry_later(&self, id: i64, at: DateTime<Utc>, error: &str) -> Result<(), StoreError>;

    /// Gives up on publishing message `id`: it becomes a dead letter, never claimed again
    /// (attempts + 1, `error` kept for inspection; a repair sets `next_attempt_at`). A
    /// published or unknown id is left alone.
    async fn set_aside(&self, id: i64, error: &str) -> Result<(), StoreError>;

    /// How many unpublished messages are set aside: dead letters, and stored messages that
    /// could not be read back.
    async fn count_set_aside(&self) -> Result<u64, StoreError>;

    /// Deletes the messages published before `older_than`; returns how many.
    async fn purge_published(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError>;
}
