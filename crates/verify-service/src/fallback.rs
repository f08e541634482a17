//! Delivery-aware fallback: when the provider reports that a message failed, or no report
//! arrives within the purpose's `fallback_after_seconds`, the verification moves on to the
//! purpose's next channel (e.g. SMS -> voice call), if the caller allowed it.
//!
//! Both triggers arrive as bus events (`delivery.reported` from webhook-ingest, the delayed
//! `delivery.silence_check` scheduled after each send), at least once and in any order. The
//! effect is idempotent by construction: the fallback is claimed in the store with the
//! verification's version before the provider is called, and a report about a channel the
//! verification has left, or a silence check for a send that is no longer the current one,
//! changes nothing. The consumer is also wrapped in a deduplicating handler, so a redelivered
//! message is not even looked at twice.
//!
//! Tracing: the consumer's spans (`verify.delivery`, `verify.silence`, and `verify.fallback`
//! around the fallback's send) are children of the trace context stored with the
//! verification at its start, so one trace shows start -> failure -> fallback; they link to
//! the trace of the message that triggered them (the webhook request, or the send that
//! scheduled the silence check), whose `traceparent` travels in the envelope's headers.

use std::sync::Arc;

use async_trait::async_trait;
use domain::bus::BusEvent;
use domain::delivery::{
    DELIVERY_REPORTED, DeliveryReport, FallbackReason, SILENCE_CHECK, SilenceCheck,
};
use domain::events::{Delivery, EventHandler, HandlerError};
use domain::ports::ProviderStart;
use domain::{DeliveryVerdict, Verification};
use policy::PurposePolicy;
use telemetry::trace::TRACEPARENT;
use tracing::{Instrument, Span, debug, info, info_span, warn};

use crate::error::ServiceError;
use crate::service::{Change, VerifyCore};

/// The subscription verify-service consumes delivery events on: one queue shared by all
/// replicas (competing consumers), so each event is handled by one of them.
pub fn subscription() -> domain::events::Subscription {
    domain::events::Subscription {
        queue: "verify-service.delivery".into(),
        bindings: vec![
            DELIVERY_REPORTED.as_str().to_owned(),
            SILENCE_CHECK.as_str().to_owned(),
        ],
        prefetch: 32,
        max_attempts: 10,
        retry_delay: std::time::Duration::from_secs(2),
    }
}

impl VerifyCore {
    /// Schedules the silence check of the send `v` just made, when a fallback from its
    /// channel is possible. Best effort: a verification whose check could not be scheduled
    /// still falls back on a failure report.
    pub(crate) async fn schedule_silence_check(&self, policy: &PurposePolicy, v: &Verification) {
        let Some(after) = policy.fallback_after() else {
            return;
        };
        if !v.allow_fallback()
            || policy
                .next_fallback(v.channel(), v.channels_tried())
                .is_none()
        {
            return;
        }
        let check = BusEvent::SilenceCheck(SilenceCheck {
            verification_id: v.id(),
            send: v.sends(),
        });
        // The send's trace (the start's, or the fallback's within it) goes with the check.
        let mut trace = telemetry::trace::current_headers();
        if trace.is_empty()
            && let Some(trace_parent) = v.trace_parent()
        {
            trace.push((TRACEPARENT, trace_parent.to_owned()));
        }
        let envelope = match check.to_envelope(self.clock.now(), trace) {
            Ok(envelope) => envelope,
            Err(e) => {
                warn!(error = %e, "could not encode the silence check");
                return;
            }
        };
        match self.bus.publish_delayed(&envelope, after).await {
            Ok(()) => debug!(
                send = v.sends(),
                after_s = after.as_secs(),
                "silence check scheduled"
            ),
            Err(e) => warn!(error = %e, "could not schedule the silence check"),
        }
    }

    /// Applies a delivery report and falls back when it is a failure the purpose's chain can
    /// get around. `trace` is the `traceparent` the report came with (the webhook request's).
    pub async fn on_delivery_report(
        &self,
        report: &DeliveryReport,
        trace: Option<&str>,
    ) -> Result<(), ServiceError> {
        let Some(sid) = report.provider_sid.as_deref() else {
            debug!("delivery report without a verification id: not ours to act on");
            return Ok(());
        };
        let Some(v) = self.store.find_by_provider_sid(sid).await? else {
            debug!("delivery report for a verification this gateway does not know");
            return Ok(());
        };
        let span = consumer_span(
            info_span!(
                "verify.delivery",
                otel.kind = "consumer",
                verification_id = %v.id(),
                status = %report.status,
            ),
            &v,
            trace,
        );
        match self.apply_report(v, report, trace).instrument(span).await {
            // Gone since it was found (purged): nothing left to act on.
            Err(ServiceError::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    /// [`VerifyCore::on_delivery_report`] on the verification it found.
    async fn apply_report(
        &self,
        mut v: Verification,
        report: &DeliveryReport,
        trace: Option<&str>,
    ) -> Result<(), ServiceError> {
        let applied = self
            .modify(&mut v, |v, now| {
                if v.expire_if_due(now) {
                    return Ok(Change::Store(Applied::Expired));
                }
                Ok(match v.apply_delivery(report, now) {
                    DeliveryVerdict::Ignored(why) => Change::Keep(Applied::Ignored(why)),
                    DeliveryVerdict::Recorded => Change::Store(Applied::Recorded),
                    DeliveryVerdict::Failed(reason) => match self.claim_fallback(v, reason, now) {
                        Some(policy) => Change::Store(Applied::FellBack(Box::new(policy))),
                        None => Change::Store(Applied::Recorded),
                    },
                })
            })
            .await?;
        match applied {
            Applied::Expired => {}
            Applied::Ignored(why) => debug!(?why, "delivery report changes nothing"),
            Applied::Recorded => info!("delivery report recorded"),
            Applied::FellBack(policy) => self.send_fallback(&policy, v, trace).await,
        }
        Ok(())
    }

    /// Falls back when send number `check.send` is still the current one and still has no
    /// final delivery report. `trace` is the `traceparent` the check came with (the send's).
    pub async fn on_silence_check(
        &self,
        check: &SilenceCheck,
        trace: Option<&str>,
    ) -> Result<(), ServiceError> {
        let id = check.verification_id;
        let v = match self.load_current(&id).await {
            Ok(v) => v,
            Err(ServiceError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let span = consumer_span(
            info_span!(
                "verify.silence",
                otel.kind = "consumer",
                verification_id = %id,
                send = check.send,
            ),
            &v,
            trace,
        );
        match self
            .apply_silence(v, check.send, trace)
            .instrument(span)
            .await
        {
            Err(ServiceError::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    /// [`VerifyCore::on_silence_check`] on the verification as read.
    async fn apply_silence(
        &self,
        mut v: Verification,
        send: u32,
        trace: Option<&str>,
    ) -> Result<(), ServiceError> {
        let fallback = self
            .modify(&mut v, |v, now| {
                // Read again after a conflict: one past its expiry is expired, as
                // `load_current` finds it, and falls back no more.
                if v.expire_if_due(now) {
                    return Ok(Change::Store(None));
                }
                if !v.is_silent(send) {
                    debug!("no silence: a report arrived or a newer send exists");
                    return Ok(Change::Keep(None));
                }
                Ok(
                    match self.claim_fallback(v, FallbackReason::NoDeliveryReport, now) {
                        Some(policy) => Change::Store(Some(policy)),
                        None => Change::Keep(None),
                    },
                )
            })
            .await?;
        if let Some(policy) = fallback {
            self.send_fallback(&policy, v, trace).await;
        }
        Ok(())
    }

    /// Moves `v` to the purpose's next channel in memory when the caller allowed it and the
    /// chain and the send limit leave room; returns the policy when it did.
    fn claim_fallback(
        &self,
        v: &mut Verification,
        reason: FallbackReason,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<PurposePolicy> {
        let policy = match self.policy(v.purpose()) {
            Ok(p) => p.clone(),
            Err(_) => {
                warn!(purpose = %v.purpose(), "verification of a purpose no longer configured");
                return None;
            }
        };
        if !v.allow_fallback() {
            info!(reason = %reason.code(), "delivery failed; the caller did not allow a fallback");
            return None;
        }
        let Some(next) = policy.next_fallback(v.channel(), v.channels_tried()) else {
            info!(reason = %reason.code(), channel = %v.channel(), "delivery failed; no channel left to fall back to");
            return None;
        };
        match v.fall_back(next, reason, now) {
            Ok(()) => Some(policy),
            Err(e) => {
                info!(reason = %reason.code(), error = %e, "no fallback");
                None
            }
        }
    }

    /// Sends on the channel the fallback claimed, in a `verify.fallback` span (a child of
    /// the consumer's span, so in the start's trace) linked to `trace`, the trace of what
    /// triggered it.
    async fn send_fallback(&self, policy: &PurposePolicy, v: Verification, trace: Option<&str>) {
        let span = info_span!(
            "verify.fallback",
            verification_id = %v.id(),
            channel = %v.channel(),
            reason = %v.fallback_reason().map(|r| r.code()).unwrap_or_default(),
        );
        if let Some(trace) = trace {
            telemetry::trace::add_link(&span, trace);
        }
        self.fallback_send(policy, v).instrument(span).await;
    }

    /// The send of [`VerifyCore::send_fallback`]. The claim is already stored, so a
    /// redelivered event cannot send again; a provider refusal is logged, and the
    /// verification stays pending on the new channel until it expires or is resent.
    async fn fallback_send(&self, policy: &PurposePolicy, mut v: Verification) {
        let to = match self.keyring.open(v.destination(), &v.id()) {
            Ok(to) => to,
            Err(e) => {
                warn!(error = %e, "cannot open the stored destination for the fallback");
                return;
            }
        };
        let request = ProviderStart {
            service: policy.service_sid().to_owned(),
            to,
            channel: v.channel(),
            locale: None,
        };
        match self.provider.start(&request).await {
            Ok(pv) => {
                if v.provider_sid() != Some(pv.sid.as_str()) {
                    v.mark_sent(pv.sid, self.clock.now());
                    if let Err(e) = self.store.update(&mut v).await {
                        warn!(error = %e, "could not record the fallback's provider id");
                    }
                }
                info!(
                    channel = %v.channel(),
                    reason = %v.fallback_reason().map(|r| r.code()).unwrap_or_default(),
                    sends = v.sends(),
                    "fell back to the next channel"
                );
                self.schedule_silence_check(policy, &v).await;
            }
            Err(e) => warn!(
                channel = %v.channel(),
                kind = ?e.kind,
                twilio_code = ?e.code,
                "the provider refused the fallback send"
            ),
        }
    }
}

/// What a delivery report did to its verification.
enum Applied {
    /// It had expired: that is recorded, and the report changes nothing else.
    Expired,
    Ignored(domain::IgnoredBecause),
    Recorded,
    /// A failure the purpose's chain gets around: the fallback is claimed, and it is sent
    /// on the purpose's next channel.
    FellBack(Box<PurposePolicy>),
}

/// `span`, made a child of the trace context stored with `v` at its start and linked to
/// `trace`, the trace of the message being handled; without a stored context (a
/// verification from before tracing, or a start outside any trace) `trace` is the parent.
fn consumer_span(span: Span, v: &Verification, trace: Option<&str>) -> Span {
    let joined = v
        .trace_parent()
        .is_some_and(|start| telemetry::trace::set_parent(&span, start, None));
    if let Some(trace) = trace {
        if joined {
            telemetry::trace::add_link(&span, trace);
        } else {
            telemetry::trace::set_parent(&span, trace, None);
        }
    }
    span
}

/// The bus consumer of delivery events.
#[derive(Debug, Clone)]
pub struct DeliveryHandler {
    core: Arc<VerifyCore>,
}

impl DeliveryHandler {
    pub fn new(core: Arc<VerifyCore>) -> Self {
        DeliveryHandler { core }
    }
}

#[async_trait]
impl EventHandler for DeliveryHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let envelope = &delivery.envelope;
        let trace = envelope.headers.get(TRACEPARENT).map(String::as_str);
        // A kind, version or payload it does not know cannot become known by trying again.
        let event = BusEvent::from_envelope(envelope).map_err(HandlerError::permanent)?;
        let outcome = match &event {
            BusEvent::DeliveryReported(report) => self.core.on_delivery_report(report, trace).await,
            BusEvent::SilenceCheck(check) => self.core.on_silence_check(check, trace).await,
        };
        outcome.map_err(|e| match e {
            // The store or the provider may answer later.
            ServiceError::Store(_) | ServiceError::Provider(_) => HandlerError::retryable(e),
            other => HandlerError::permanent(other),
        })
    }
}
