//! The verification flows (start, check, cancel, get) over the ports, free of gRPC types.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::abuse::RiskAssessment;
use domain::events::EventBus;
use domain::ports::{
    Clock, Inserted, Limited, ProviderErrorKind, ProviderStart, ProviderStatus, VerificationStore,
    VerifyProvider,
};
use domain::{
    BlindIndexKey, Channel, CheckOutcome, Destination, IdempotencyKey, Keyring, Locale,
    NewVerification, OtpCode, Purpose, Transition, TransitionError, Verification, VerificationId,
    VerificationStatus,
};
use policy::{Policies, PolicyError, PurposePolicy};
use rand::RngCore;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::abuse::AbuseGuard;
use crate::error::ServiceError;
use crate::recent::RecentStore;

/// How often a read-modify-write of a verification is tried when another writer (a
/// request, a delivery report, a silence check) changed the row first
/// ([`VerifyCore::modify`]).
const CONFLICT_RETRIES: usize = 5;

/// What a change of [`VerifyCore::modify`] asks for, with its answer.
pub(crate) enum Change<T> {
    /// The verification changed: store it, then answer.
    Store(T),
    /// Nothing changed: answer without a write.
    Keep(T),
}

/// How long a start to a destination waits for a concurrent start's first send to it.
const FIRST_SEND_WAIT: Duration = Duration::from_secs(5);

/// Longer than any create waits for the provider's answer (`twilio.timeout_ms` and the
/// connect retries): a record still without a provider id this long after it was written
/// has no send in flight, only one whose outcome is unknown.
pub(crate) const SEND_IN_FLIGHT_AT_MOST: Duration = Duration::from_secs(60);

/// How often the record of a confirmed send is written before the start gives up (the
/// code is out; a record left without its provider id is still checked by destination).
const SENT_RECORD_TRIES: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(100),
    Duration::from_millis(500),
];

/// After the start gave up, the record of a confirmed send is tried again after this
/// long, then twice as long each time up to [`SENT_RECORD_LATER_MAX`].
const SENT_RECORD_LATER_FIRST: Duration = Duration::from_secs(1);
const SENT_RECORD_LATER_MAX: Duration = Duration::from_secs(5);

/// How long a start with an idempotency key that a rate limit refused looks for a
/// concurrent start with the same key.
const CONCURRENT_REPLAY_WAIT: Duration = Duration::from_millis(300);

/// How often it looks meanwhile.
const FIRST_SEND_POLL: Duration = Duration::from_millis(20);

/// A parsed start request.
#[derive(Debug, Clone)]
pub struct StartInput {
    pub purpose: Purpose,
    pub to: Destination,
    pub channel: Option<Channel>,
    pub locale: Option<Locale>,
    pub identity: Option<String>,
    /// The caller making the start (see [`Verification::owner`]); empty without callers.
    pub owner: String,
    pub client_ip: Option<std::net::IpAddr>,
    pub idempotency_key: Option<IdempotencyKey>,
    /// The caller allows moving to the purpose's next channel when delivery fails.
    pub allow_fallback: bool,
    /// The caller verified the user with a stronger check after a step-up answer.
    pub step_up_completed: bool,
}

/// A start's answer: the verification, and how many more starts the rate limits allow now.
#[derive(Debug, Clone)]
pub struct Started {
    pub verification: Verification,
    pub starts_left: u32,
}

/// A check's answer.
#[derive(Debug, Clone)]
pub struct Checked {
    pub verification: Verification,
    pub valid: bool,
    /// The verification's checks left, or fewer when a check limit is closer.
    pub attempts_left: u32,
}

/// The application: policies, ports and keys.
#[derive(Debug, Clone)]
pub struct VerifyCore {
    pub(crate) policies: Arc<Policies>,
    pub(crate) provider: Arc<dyn VerifyProvider>,
    pub(crate) store: Arc<dyn VerificationStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) blind_index: BlindIndexKey,
    pub(crate) keyring: Keyring,
    /// Where the silence checks of the fallback are scheduled.
    pub(crate) bus: Arc<dyn EventBus>,
    /// Rate limits and fraud scoring.
    pub(crate) abuse: Arc<AbuseGuard>,
}

impl VerifyCore {
    pub fn new(
        policies: Policies,
        provider: Arc<dyn VerifyProvider>,
        store: Arc<dyn VerificationStore>,
        clock: Arc<dyn Clock>,
        keys: crate::keys::Keys,
        bus: Arc<dyn EventBus>,
        abuse: Arc<AbuseGuard>,
    ) -> Self {
        VerifyCore {
            policies: Arc::new(policies),
            provider,
            store: Arc::new(RecentStore::new(store)),
            clock,
            blind_index: keys.blind_index,
            keyring: keys.keyring,
            bus,
            abuse,
        }
    }

    pub fn policy(&self, purpose: &Purpose) -> Result<&PurposePolicy, ServiceError> {
        self.policies.get(purpose).map_err(|e| {
            let known = self.policies.names().collect::<Vec<_>>().join(", ");
            ServiceError::invalid("purpose", format!("{e}; configured purposes: {known}"))
        })
    }

    /// Starts a verification, or resends on the pending one for the same destination (when
    /// the same caller started it for the same identity; a start of anyone else is refused
    /// with `DESTINATION_BUSY`), or returns the first result for a repeated idempotency
    /// key of the same caller.
    ///
    /// A repeated key is answered before any limit (it sends nothing). Everything else
    /// passes the rate limits and then fraud scoring before the provider is asked; a start
    /// scoring refuses is recorded as BLOCKED and costs nothing upstream.
    pub async fn start(&self, input: StartInput) -> Result<Started, ServiceError> {
        let policy = self.policy(&input.purpose)?;
        let channel = policy
            .choose_channel(input.channel, &input.to)
            .map_err(|e| match e {
                PolicyError::ChannelMismatch { .. } | PolicyError::ChannelNotAllowed { .. } => {
                    ServiceError::invalid("channel", e)
                }
                other => ServiceError::invalid("purpose", other),
            })?;
        let hash = self.blind_index.hash(&input.to);
        let span = info_span!(
            "verify.start",
            purpose = %input.purpose,
            channel = %channel,
            to = %input.to,
            destination_hash = %hash.short(),
            verification_id = tracing::field::Empty,
        );
        async move {
            let now = self.clock.now();
            if let Some(key) = &input.idempotency_key
                && let Some(v) = self.replay(policy, &input.owner, key, &hash, now).await?
            {
                tracing::Span::current().record("verification_id", v.id().to_string());
                info!(status = %v.status(), "idempotent replay");
                let starts_left = self.abuse.starts_left(policy, &input, &hash, now).await?;
                return Ok(Started {
                    verification: v,
                    starts_left,
                });
            }
            let screened = match self
                .abuse
                .screen_start(policy, &input, channel, &hash, now)
                .await
            {
                Ok(screened) => screened,
                Err(refused @ ServiceError::RateLimited { .. }) => {
                    return self.unless_concurrent_replay(policy, &input, &hash, refused).await;
                }
                Err(e) => return Err(e),
            };
            // The record is written before anything is sent, in one transaction with the
            // shared limits: pending (the unique indexes decide which concurrent request
            // sends), or BLOCKED with its assessment when scoring refuses.
            let refusal = screened.risk.clone().filter(RiskAssessment::refuses);
            let record = self.new_record(policy, &input, channel, hash.clone(), now);
            let v = match &refusal {
                Some(risk) => Verification::blocked(record, risk.clone()),
                None => Verification::new(NewVerification {
                    risk: screened.risk.clone(),
                    ..record
                }),
            };
            // The shared limits are taken at the time they are taken, not at the time the
            // request began. Takes of one key can still reach the store out of the order
            // of their stamps; the store decides each at the later of its stamp and the
            // key's latest take (`rate_limits.latest_ms`), so none is charged the
            // difference.
            let written = self
                .store
                .insert_limited(&v, screened.shared_limits(), self.clock.now())
                .await?;
            let (decisions, inserted) = match written {
                Limited::Refused(decisions) => (decisions, None),
                Limited::Done { decisions, outcome } => (decisions, Some(outcome)),
            };
            let starts_left = match self.abuse.started(screened, decisions, now).await {
                Ok((starts_left, _)) => starts_left,
                Err(refused @ ServiceError::RateLimited { .. }) => {
                    return self.unless_concurrent_replay(policy, &input, &hash, refused).await;
                }
                Err(e) => return Err(e),
            };
            let Some(inserted) = inserted else {
                return Err(ServiceError::Store(domain::ports::StoreError::Unavailable(
                    "the limits allowed a start the store did not record".to_owned(),
                )));
            };
            if let Some(risk) = refusal {
                tracing::Span::current().record("verification_id", v.id().to_string());
                warn!(decision = %risk.decision, score = risk.score, reasons = %risk.reason_codes(), "start refused by fraud scoring");
                return Err(ServiceError::Refused {
                    assessment: risk,
                    verification_id: v.id().to_string(),
                });
            }
            let verification = match inserted {
                Inserted::Created => self.send_recorded(policy, &input, channel, v).await?,
                Inserted::Existing(existing) => self.idempotent_answer(*existing, &hash)?,
                // Another start to this destination is pending: this one resends on it when
                // it is the same caller's, for the same user. Twilio keeps one pending
                // verification per destination and service, so anyone else would get the
                // same one (and could check the user's code): refused, and told nothing of
                // it.
                Inserted::Pending(pending)
                    if pending.resendable_by(&input.owner, v.identity()) =>
                {
                    self.resend_when_sent(policy, *pending, &input, channel)
                        .await?
                }
                Inserted::Pending(_) => return Err(destination_busy(&input.purpose)),
            };
            Ok(Started {
                verification,
                starts_left,
            })
        }
        .instrument(span)
        .await
    }

    /// Answers a start a rate limit refused: a concurrent start with the same key may have
    /// taken the limit's last event, and then this is its replay, not a new send to
    /// refuse.
    async fn unless_concurrent_replay(
        &self,
        policy: &PurposePolicy,
        input: &StartInput,
        hash: &domain::DestinationHash,
        refused: ServiceError,
    ) -> Result<Started, ServiceError> {
        if let Some(key) = &input.idempotency_key
            && let Some(v) = self
                .concurrent_replay(policy, &input.owner, key, hash)
                .await?
        {
            return Ok(Started {
                verification: v,
                starts_left: 0,
            });
        }
        Err(refused)
    }

    /// Resends on `pending`, first waiting for its first send when a concurrent start is
    /// still making it (as Twilio answers concurrent starts to one destination: each one
    /// sends). A start that outwaits [`FIRST_SEND_WAIT`], or whose concurrent first send
    /// failed, is told to retry.
    async fn resend_when_sent(
        &self,
        policy: &PurposePolicy,
        mut pending: Verification,
        input: &StartInput,
        channel: Channel,
    ) -> Result<Verification, ServiceError> {
        let deadline = tokio::time::Instant::now() + FIRST_SEND_WAIT;
        while pending.provider_sid().is_none() {
            // Its first send's outcome is unknown: this start is an explicit ask to send
            // again, and the provider answers it with its pending verification, if it has
            // one, whose id the resend then records.
            if pending.send_unconfirmed(self.clock.now(), SEND_IN_FLIGHT_AT_MOST) {
                break;
            }
            if pending.status() != VerificationStatus::Pending
                || tokio::time::Instant::now() >= deadline
            {
                return Err(ServiceError::InProgress);
            }
            tokio::time::sleep(FIRST_SEND_POLL).await;
            pending = self.read(&pending.id()).await?;
        }
        self.resend(policy, pending, input, channel).await
    }

    fn new_record(
        &self,
        policy: &PurposePolicy,
        input: &StartInput,
        channel: Channel,
        hash: domain::DestinationHash,
        now: DateTime<Utc>,
    ) -> NewVerification {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let id = VerificationId::from_uuid(uuid::Uuid::now_v7());
        NewVerification {
            destination: self.keyring.seal(&input.to, &id, nonce),
            id,
            purpose: input.purpose.clone(),
            channel,
            destination_hash: hash,
            to_masked: input.to.masked(),
            // Kept as a keyed hash: it is only ever compared.
            identity: input
                .identity
                .as_deref()
                .map(|identity| self.blind_index.tag("identity", identity)),
            owner: input.owner.clone(),
            idempotency_key: input.idempotency_key.clone(),
            max_sends: policy.max_sends(),
            max_checks: policy.max_checks(),
            allow_fallback: input.allow_fallback,
            // The `verify.start` span's context: a fallback later joins this trace.
            trace_parent: telemetry::trace::current_traceparent(),
            risk: None,
            now,
            expires_at: policy.expires_at(now),
        }
    }

    /// The verification a concurrent start with the same key records, looked for a moment
    /// after a rate limit refused this one: the limit's last event may have gone to that
    /// start, and then this is its replay (answered as such, or "in progress"), not a new
    /// send to refuse.
    async fn concurrent_replay(
        &self,
        policy: &PurposePolicy,
        owner: &str,
        key: &IdempotencyKey,
        hash: &domain::DestinationHash,
    ) -> Result<Option<Verification>, ServiceError> {
        let deadline = tokio::time::Instant::now() + CONCURRENT_REPLAY_WAIT;
        loop {
            if let Some(v) = self
                .replay(policy, owner, key, hash, self.clock.now())
                .await?
            {
                return Ok(Some(v));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(FIRST_SEND_POLL).await;
        }
    }

    /// The verification already holding `owner`'s `key`, if it is within the idempotency
    /// window. A key past its window is released so it can be used again.
    async fn replay(
        &self,
        policy: &PurposePolicy,
        owner: &str,
        key: &IdempotencyKey,
        hash: &domain::DestinationHash,
        now: DateTime<Utc>,
    ) -> Result<Option<Verification>, ServiceError> {
        let Some(mut existing) = self
            .store
            .find_by_idempotency_key(policy.purpose(), owner, key)
            .await?
        else {
            return Ok(None);
        };
        if !policy.idempotency_holds(existing.created_at(), now) {
            existing.release_idempotency_key(now);
            // Losing this race is fine: the other request released the key too.
            match self.store.update(&mut existing).await {
                Ok(()) | Err(domain::ports::StoreError::Conflict(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        self.idempotent_answer(existing, hash).map(Some)
    }

    fn idempotent_answer(
        &self,
        existing: Verification,
        hash: &domain::DestinationHash,
    ) -> Result<Verification, ServiceError> {
        if existing.destination_hash() != hash {
            return Err(ServiceError::invalid(
                "idempotency_key",
                "this key was already used for a different destination",
            ));
        }
        // A first send still in flight; one whose outcome is unknown is answered with, as is:
        // the retry sends nothing.
        if existing.status() == VerificationStatus::Pending
            && existing.provider_sid().is_none()
            && !existing.send_unconfirmed(self.clock.now(), SEND_IN_FLIGHT_AT_MOST)
        {
            return Err(ServiceError::InProgress);
        }
        Ok(existing)
    }

    /// Sends a verification just recorded as pending and records the outcome: the
    /// provider's id, or the failure.
    async fn send_recorded(
        &self,
        policy: &PurposePolicy,
        input: &StartInput,
        channel: Channel,
        mut v: Verification,
    ) -> Result<Verification, ServiceError> {
        tracing::Span::current().record("verification_id", v.id().to_string());
        let request = ProviderStart {
            service: policy.service_sid().to_owned(),
            to: input.to.clone(),
            channel,
            locale: input.locale.clone(),
        };
        let sent = self.provider.start(&request).await;
        let now = self.clock.now();
        match sent {
            Ok(pv) => {
                v.mark_sent(pv.sid, now);
                self.record_sent(&mut v).await?;
                // The call's audit line says it too (`grpc`): debug only, not twice at info.
                tracing::debug!(verification_id = %v.id(), "verification sent");
                self.schedule_silence_check(policy, &v).await;
                Ok(v)
            }
            // The code may be out: nothing is undone. The verification stays pending under
            // its idempotency key (a retry with the key answers with it and sends nothing),
            // a check names it by destination, and a start without the key sends again.
            Err(e) if e.may_have_acted() => {
                v.mark_unconfirmed(now);
                if let Err(store_err) = self.store.update(&mut v).await {
                    warn!(error = %store_err, "could not record the unconfirmed send");
                }
                warn!(kind = ?e.kind, twilio_code = ?e.code, "the provider did not confirm the send");
                Err(ServiceError::SendUnconfirmed {
                    verification_id: v.id().to_string(),
                    source: e,
                })
            }
            Err(e) => {
                self.abuse
                    .provider_refused(&e, &input.to, channel, now)
                    .await;
                v.mark_failed(e.code, now);
                if e.is_retryable() {
                    // Never reached the provider, or refused before it acted (429): let the
                    // caller retry with the same key.
                    v.release_idempotency_key(now);
                }
                if let Err(store_err) = self.store.update(&mut v).await {
                    warn!(error = %store_err, "could not record the failed send");
                }
                warn!(kind = ?e.kind, twilio_code = ?e.code, "provider refused the send");
                Err(e.into())
            }
        }
    }

    async fn resend(
        &self,
        policy: &PurposePolicy,
        mut v: Verification,
        input: &StartInput,
        channel: Channel,
    ) -> Result<Verification, ServiceError> {
        tracing::Span::current().record("verification_id", v.id().to_string());
        self.modify(&mut v, |v, now| {
            v.begin_resend(channel, now).map_err(|e| match e {
                TransitionError::NoSendsLeft(max) => ServiceError::LimitReached {
                    reason: "MAX_SENDS_REACHED",
                    message: format!(
                        "verification {} has used all {max} sends; wait for it to expire",
                        v.id()
                    ),
                    retry_after: (v.expires_at() - now).to_std().ok(),
                },
                other => ServiceError::FailedPrecondition {
                    reason: "VERIFICATION_NOT_PENDING",
                    message: other.to_string(),
                },
            })?;
            v.adopt_idempotency_key(input.idempotency_key.as_ref());
            // A fallback from this send belongs to the trace of the start that made it.
            if let Some(trace_parent) = telemetry::trace::current_traceparent() {
                v.join_trace(trace_parent);
            }
            Ok(Change::Store(()))
        })
        .await?;
        // To the address the verification was started with: one destination may be
        // written in several ways (an email's case or `+tag`), and the provider keeps its
        // pending verification under the first.
        let to = self
            .keyring
            .open(v.destination(), &v.id())
            .unwrap_or_else(|e| {
                warn!(error = %e, "cannot open the stored destination; resending to the one given");
                input.to.clone()
            });
        let request = ProviderStart {
            service: policy.service_sid().to_owned(),
            to,
            channel,
            locale: input.locale.clone(),
        };
        let pv = match self.provider.start(&request).await {
            Ok(pv) => pv,
            Err(e) => {
                self.abuse
                    .provider_refused(&e, &input.to, channel, self.clock.now())
                    .await;
                return Err(e.into());
            }
        };
        if v.provider_sid() != Some(pv.sid.as_str()) {
            v.mark_sent(pv.sid, self.clock.now());
            self.store.update(&mut v).await?;
        }
        info!(sends = v.sends(), "verification resent");
        self.schedule_silence_check(policy, &v).await;
        Ok(v)
    }

    /// Checks a code. Our check limit is claimed in the store before the provider is asked.
    /// A verification `owner` did not start is `NotFound`, as an unknown id.
    pub async fn check(
        &self,
        id: &VerificationId,
        code: &OtpCode,
        owner: &str,
    ) -> Result<Checked, ServiceError> {
        let span = info_span!("verify.check", verification_id = %id);
        async move {
            let mut v = self.load_to_check(id, owner).await?;
            let policy = self.policy(v.purpose())?.clone();
            if v.status() != VerificationStatus::Pending {
                return Err(not_checkable(id, TransitionError::NotPending(v.status())));
            }
            // Its provider id, or, when its send was never confirmed, its destination: the
            // provider checks the pending verification it holds for it, if any.
            let target = match v.provider_sid().map(str::to_owned) {
                Some(sid) => CheckTarget::Sid(sid),
                None if v.send_unconfirmed(self.clock.now(), SEND_IN_FLIGHT_AT_MOST) => {
                    CheckTarget::To(self.keyring.open(v.destination(), &v.id()).map_err(|e| {
                        ServiceError::Store(domain::ports::StoreError::Unavailable(format!(
                            "cannot open the destination of {id}: {e}"
                        )))
                    })?)
                }
                None => {
                    return Err(ServiceError::FailedPrecondition {
                        reason: "VERIFICATION_NOT_SENT",
                        message: format!("verification {id} is still being sent; retry shortly"),
                    });
                }
            };
            let screened = self.abuse.screen_check(&policy, &v, self.clock.now()).await?;
            // Claim one attempt, with the shared check limit in the same transaction.
            let mut limit_left = None;
            for _ in 0..CONFLICT_RETRIES {
                let now = self.clock.now();
                v.begin_check(now).map_err(|e| not_checkable(id, e))?;
                match self
                    .store
                    .update_limited(&mut v, screened.shared_limits(), now)
                    .await
                {
                    Ok(Limited::Done { decisions, .. }) => {
                        limit_left = Some(self.abuse.checked(screened, decisions)?);
                        break;
                    }
                    Ok(Limited::Refused(decisions)) => {
                        return Err(match self.abuse.checked(screened, decisions) {
                            Err(refused) => refused,
                            Ok(_) => domain::ports::StoreError::Unavailable(
                                "the store refused a check every limit allowed".to_owned(),
                            )
                            .into(),
                        });
                    }
                    Err(domain::ports::StoreError::Conflict(_)) => {
                        v = self.load_owned(id, owner).await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let Some(limit_left) = limit_left else {
                return Err(domain::ports::StoreError::Conflict(*id).into());
            };
            let answer = match &target {
                CheckTarget::Sid(sid) => self.provider.check(policy.service_sid(), sid, code).await,
                CheckTarget::To(to) => {
                    self.provider
                        .check_destination(policy.service_sid(), to, code)
                        .await
                }
            };
            if let Ok(checked) = &answer
                && let Some(sid) = &checked.sid
            {
                v.learn_provider_sid(sid.clone());
            }
            let outcome = match answer {
                Ok(c) if c.valid && c.status == ProviderStatus::Approved => CheckOutcome::Approved,
                Ok(c) => match c.status {
                    ProviderStatus::Pending | ProviderStatus::Other(_) => CheckOutcome::Wrong,
                    ProviderStatus::MaxAttemptsReached => CheckOutcome::ProviderLimit,
                    _ => CheckOutcome::Gone,
                },
                Err(e) if e.kind == ProviderErrorKind::NotFound => CheckOutcome::Gone,
                Err(e) if e.kind == ProviderErrorKind::MaxChecks => CheckOutcome::ProviderLimit,
                // No answer on the code (unavailable, timed out, refused for another
                // reason): the attempt is given back, so a provider outage never uses up a
                // user's checks. The shared check limit keeps its event: it counts tries.
                Err(e) => {
                    self.release_check(&mut v).await;
                    return Err(e.into());
                }
            };
            let transition = self.finish(&mut v, outcome).await?;
            match outcome {
                CheckOutcome::Wrong => self.abuse.wrong_code(&policy, &v, self.clock.now()).await,
                // Scoring counts approvals by country and range (and by the network its
                // start came from), so only then is the destination opened.
                CheckOutcome::Approved if self.abuse.counts_approvals() => {
                    match self.keyring.open(v.destination(), &v.id()) {
                        Ok(to) => {
                            let start = v.risk();
                            self.abuse
                                .approved(&to, v.channel(), start, self.clock.now())
                                .await;
                        }
                        Err(e) => {
                            warn!(error = %e, "cannot open the destination to count the approval");
                        }
                    }
                }
                CheckOutcome::Approved | CheckOutcome::Gone | CheckOutcome::ProviderLimit => {}
            }
            tracing::debug!(outcome = ?outcome, status = %v.status(), attempts_left = v.checks_left(), "checked");
            if transition == Transition::CancelUpstream
                && let Some(sid) = v.provider_sid()
            {
                self.cancel_upstream(policy.service_sid(), sid).await;
            }
            let attempts_left = v.checks_left().min(limit_left);
            Ok(Checked {
                verification: v,
                valid: outcome == CheckOutcome::Approved,
                attempts_left,
            })
        }
        .instrument(span)
        .await
    }

    /// Stores `v` with the provider id its send was confirmed with, trying again a little
    /// later when the store fails: the code is out, and without its id the verification
    /// would be checked by destination only.
    async fn record_sent(&self, v: &mut Verification) -> Result<(), ServiceError> {
        let mut last = None;
        for pause in SENT_RECORD_TRIES {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            match self.store.update(v).await {
                Ok(()) => return Ok(()),
                Err(e @ domain::ports::StoreError::Unavailable(_)) => {
                    warn!(error = %e, "could not record the confirmed send yet");
                    last = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        // The code is out: its record is written as soon as the store answers again.
        self.record_sent_later(v.clone());
        Err(last
            .map(ServiceError::from)
            .unwrap_or_else(|| domain::ports::StoreError::Conflict(v.id()).into()))
    }

    /// Goes on writing the record of a confirmed send the start could not write, in the
    /// background, until the store answers or the verification expires: a database outage
    /// then leaves the verification without its provider id (checked by destination, its
    /// key answering "in progress") only while it lasts. A row changed meanwhile (the
    /// reconciliation learnt the id, a check or a resend went through) is left as it is.
    fn record_sent_later(&self, mut v: Verification) {
        let store = Arc::clone(&self.store);
        let clock = Arc::clone(&self.clock);
        tokio::spawn(async move {
            let mut pause = SENT_RECORD_LATER_FIRST;
            while clock.now() < v.expires_at() {
                tokio::time::sleep(pause).await;
                match store.update(&mut v).await {
                    Ok(()) => {
                        info!(verification_id = %v.id(), "recorded a confirmed send once the store answered again");
                        return;
                    }
                    Err(domain::ports::StoreError::Unavailable(_)) => {
                        pause = (pause * 2).min(SENT_RECORD_LATER_MAX);
                    }
                    Err(e) => {
                        debug!(verification_id = %v.id(), error = %e, "a confirmed send's record was overtaken");
                        return;
                    }
                }
            }
            warn!(verification_id = %v.id(), "a confirmed send was never recorded: the store did not answer before it expired");
        });
    }

    /// Gives back the attempt a check claimed on `v` ([`Verification::release_check`]).
    /// Best effort: the check answers with the provider's error either way, and a
    /// verification this fails on keeps one attempt fewer.
    async fn release_check(&self, v: &mut Verification) {
        let released = self
            .modify(v, |v, now| {
                Ok(match v.release_check(now) {
                    true => Change::Store(()),
                    false => Change::Keep(()),
                })
            })
            .await;
        if let Err(e) = released {
            warn!(error = %e, "could not give back a check attempt");
        }
    }

    async fn finish(
        &self,
        v: &mut Verification,
        outcome: CheckOutcome,
    ) -> Result<Transition, ServiceError> {
        self.modify(v, |v, now| Ok(Change::Store(v.finish_check(outcome, now))))
            .await
    }

    /// Cancels upstream so the user never meets the provider's own lockout. Best effort:
    /// our record is already final, so a failure here is logged, not returned.
    async fn cancel_upstream(&self, service: &str, sid: &str) {
        match self.provider.cancel(service, sid).await {
            Ok(_) => info!("canceled upstream"),
            Err(e) if e.kind == ProviderErrorKind::NotFound => {}
            Err(e) => warn!(kind = ?e.kind, twilio_code = ?e.code, "upstream cancel failed"),
        }
    }

    /// Cancels a verification of `owner`'s; another's is `NotFound`, as an unknown id.
    pub async fn cancel(
        &self,
        id: &VerificationId,
        owner: &str,
    ) -> Result<Verification, ServiceError> {
        let span = info_span!("verify.cancel", verification_id = %id);
        async move {
            let mut v = self.load_owned(id, owner).await?;
            let changed = self
                .modify(&mut v, |v, now| {
                    // Read again after a conflict: one past its expiry is expired, as
                    // `load_owned` finds it, not canceled.
                    if v.is_due_to_expire(now) {
                        let expired = TransitionError::NotPending(VerificationStatus::Expired);
                        return Err(not_checkable(id, expired));
                    }
                    match v.cancel(now).map_err(|e| not_checkable(id, e))? {
                        true => Ok(Change::Store(true)),
                        false => Ok(Change::Keep(false)),
                    }
                })
                .await?;
            if changed {
                if let Some(sid) = v.provider_sid() {
                    let policy = self.policy(v.purpose())?;
                    self.cancel_upstream(policy.service_sid(), sid).await;
                }
                info!("canceled");
            }
            Ok(v)
        }
        .instrument(span)
        .await
    }

    /// A verification of `owner`'s; another's is `NotFound`, as an unknown id.
    pub async fn get(
        &self,
        id: &VerificationId,
        owner: &str,
    ) -> Result<Verification, ServiceError> {
        self.load_owned(id, owner)
            .instrument(info_span!("verify.get", verification_id = %id))
            .await
    }

    /// Reads a verification as stored.
    async fn read(&self, id: &VerificationId) -> Result<Verification, ServiceError> {
        self.store.get(id).await?.ok_or(ServiceError::NotFound(*id))
    }

    /// Applies `change` to `v` at the clock's time and stores it, conditional on the
    /// version `v` was read at. When another writer changed the row first, reads it again
    /// and applies `change` to what it reads, at most [`CONFLICT_RETRIES`] times in all.
    /// `v` is left as stored (or as last read, when `change` refuses or nothing is
    /// written); an error of `change` is returned as it is, with nothing written.
    pub(crate) async fn modify<T>(
        &self,
        v: &mut Verification,
        mut change: impl FnMut(&mut Verification, DateTime<Utc>) -> Result<Change<T>, ServiceError>,
    ) -> Result<T, ServiceError> {
        for _ in 0..CONFLICT_RETRIES {
            let answer = match change(v, self.clock.now())? {
                Change::Keep(answer) => return Ok(answer),
                Change::Store(answer) => answer,
            };
            match self.store.update(v).await {
                Ok(()) => return Ok(answer),
                Err(domain::ports::StoreError::Conflict(id)) => *v = self.read(&id).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(domain::ports::StoreError::Conflict(v.id()).into())
    }

    /// The verification a check of `owner`'s claims an attempt on. What this process
    /// wrote last ([`VerificationStore::get_to_update`]) when that is a pending, sent
    /// verification not yet due to expire: the claim's update, conditional on its version,
    /// confirms it, or fails with `Conflict` and the check reads the row. Anything else (a
    /// verification the check would refuse, or expire) is read from the store by
    /// [`VerifyCore::load_owned`], so no refusal rests on an old version. The owner is
    /// never changed, so the copy answers for it as the row would.
    async fn load_to_check(
        &self,
        id: &VerificationId,
        owner: &str,
    ) -> Result<Verification, ServiceError> {
        if let Some(v) = self.store.get_to_update(id).await?
            && v.status() == VerificationStatus::Pending
            && v.provider_sid().is_some()
            && !v.is_due_to_expire(self.clock.now())
        {
            return owned(v, owner);
        }
        self.load_owned(id, owner).await
    }

    /// [`VerifyCore::load_current`] for a call of `owner`'s: another's verification is
    /// `NotFound` before anything is written to it.
    async fn load_owned(
        &self,
        id: &VerificationId,
        owner: &str,
    ) -> Result<Verification, ServiceError> {
        let v = owned(self.read(id).await?, owner)?;
        self.expire_if_due(v).await
    }

    /// Reads a verification and, if it has expired since it was written, records that.
    pub(crate) async fn load_current(
        &self,
        id: &VerificationId,
    ) -> Result<Verification, ServiceError> {
        let v = self.read(id).await?;
        self.expire_if_due(v).await
    }

    /// Records that `v`, as read, has expired when it is due to.
    async fn expire_if_due(&self, mut v: Verification) -> Result<Verification, ServiceError> {
        let id = v.id();
        if v.expire_if_due(self.clock.now()) {
            match self.store.update(&mut v).await {
                Ok(()) => {}
                Err(domain::ports::StoreError::Conflict(_)) => {
                    v = self.read(&id).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(v)
    }
}

/// `v` when `owner` started it; otherwise the very error of an unknown id, so an id of
/// another caller's tells nothing.
fn owned(v: Verification, owner: &str) -> Result<Verification, ServiceError> {
    if v.belongs_to(owner) {
        Ok(v)
    } else {
        Err(ServiceError::NotFound(v.id()))
    }
}

/// A start to a destination with a pending verification of another caller, or of the
/// same caller for another identity.
fn destination_busy(purpose: &Purpose) -> ServiceError {
    ServiceError::FailedPrecondition {
        reason: "DESTINATION_BUSY",
        message: format!(
            "another verification for purpose `{purpose}` is pending for this destination \
             (another caller's, or for another identity); start again once it ends"
        ),
    }
}

/// What a check names at the provider.
enum CheckTarget {
    Sid(String),
    To(Destination),
}

fn not_checkable(id: &VerificationId, e: TransitionError) -> ServiceError {
    match e {
        TransitionError::NotPending(status) => ServiceError::FailedPrecondition {
            reason: "VERIFICATION_NOT_PENDING",
            message: format!("verification {id} is {status}, not pending"),
        },
        TransitionError::FallbackNotAllowed => ServiceError::FailedPrecondition {
            reason: "FALLBACK_NOT_ALLOWED",
            message: e.to_string(),
        },
        TransitionError::NoChecksLeft(_) | TransitionError::NoSendsLeft(_) => {
            ServiceError::LimitReached {
                reason: "MAX_CHECKS_REACHED",
                message: e.to_string(),
                retry_after: None::<Duration>,
            }
        }
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}
