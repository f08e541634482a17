//! The reconciliation of unconfirmed sends: a periodic pass over the pending verifications
//! whose first send Twilio never confirmed (a create that timed out or failed with a 5xx,
//! or a process that stopped between Twilio's answer and the row's update), so none waits
//! for its user or its caller to repair it.
//!
//! Each one is looked up in Twilio's attempts list by its destination
//! ([`domain::ports::VerifyProvider::find_sent`]): an attempt means the code went out, and
//! its verification's SID is stored ([`Verification::confirm_sent`]), so checks, delivery
//! reports and the fallback find it by id. No attempt long after the start means the send
//! never happened: the verification ends as FAILED with [`domain::NEVER_SENT`]
//! ([`Verification::mark_never_sent`]), so it no longer holds its destination and the next
//! start sends afresh. Every write is conditional on the version read; a row someone else
//! changed meanwhile is left to them. Any replica may run it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::Verification;
use domain::ports::StoreError;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::service::{SEND_IN_FLIGHT_AT_MOST, VerifyCore};

/// How far before a verification's creation its attempt is looked for: the clocks of the
/// gateway and Twilio differ a little, and Twilio's filter takes whole seconds.
const LOOKBACK: chrono::Duration = chrono::Duration::seconds(5);

/// When and how much the reconciliation does (`[reconcile]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How often a pass runs.
    pub every: Duration,
    /// How old a verification must be before it is looked up: Twilio's attempt records
    /// appear a moment after the create.
    pub min_age: Duration,
    /// How long after its start a verification Twilio holds no attempt for is ended as
    /// never sent: Twilio's attempt records can lag, so not at the first miss.
    pub give_up_after: Duration,
    /// The most verifications one pass looks up.
    pub batch: u32,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Verifications whose provider id was learnt and stored.
    pub confirmed: u32,
    /// Verifications ended as never sent.
    pub never_sent: u32,
    /// Verifications left for a later pass (no attempt yet, or a send still in flight).
    pub waiting: u32,
    /// Verifications someone else changed meanwhile, or that could not be looked up.
    pub skipped: u32,
}

/// Runs a pass every `settings.every` until `shutdown` resolves.
pub async fn run(
    core: Arc<VerifyCore>,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut tick = tokio::time::interval(settings.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        // A pass stopped by shutdown is harmless: each row is written in one conditional
        // update, and the next process goes on from what is stored.
        tokio::select! {
            () = &mut shutdown => return,
            pass = reconcile(&core, settings) => {
                if pass != Pass::default() {
                    debug!(?pass, "reconciliation pass");
                }
            }
        }
    }
}

/// One pass: up to `settings.batch` unconfirmed verifications, oldest first.
pub async fn reconcile(core: &VerifyCore, settings: Settings) -> Pass {
    let span = info_span!("verify.reconcile");
    async {
        let mut pass = Pass::default();
        let now = core.clock.now();
        let min_age = chrono::Duration::from_std(settings.min_age).unwrap_or(chrono::Duration::MAX);
        let listed = core
            .store
            .list_unconfirmed(now - min_age, settings.batch)
            .await;
        let rows = match listed {
            Ok(rows) => rows,
            Err(e) => {
                warn!(error = %e, "listing unconfirmed sends failed");
                return pass;
            }
        };
        for v in rows {
            // A first send not yet marked unconfirmed may still be waiting for Twilio's
            // answer: its start records the outcome itself.
            if !v.send_unconfirmed(now, SEND_IN_FLIGHT_AT_MOST) {
                pass.waiting += 1;
                continue;
            }
            match reconcile_one(core, settings, v, now).await {
                Outcome::Confirmed => pass.confirmed += 1,
                Outcome::NeverSent => pass.never_sent += 1,
                Outcome::Waiting => pass.waiting += 1,
                Outcome::Skipped => pass.skipped += 1,
                // Twilio cannot answer now: the rest of the batch would fail alike.
                Outcome::ProviderDown => {
                    pass.skipped += 1;
                    break;
                }
            }
        }
        pass
    }
    .instrument(span)
    .await
}

enum Outcome {
    Confirmed,
    NeverSent,
    Waiting,
    Skipped,
    ProviderDown,
}

async fn reconcile_one(
    core: &VerifyCore,
    settings: Settings,
    mut v: Verification,
    now: DateTime<Utc>,
) -> Outcome {
    let destination_hash = v.destination_hash().short().to_owned();
    let service = match core.policy(v.purpose()) {
        Ok(policy) => policy.service_sid().to_owned(),
        Err(e) => {
            warn!(verification_id = %v.id(), error = %e, "cannot reconcile: its purpose is not configured");
            return Outcome::Skipped;
        }
    };
    let to = match core.keyring.open(v.destination(), &v.id()) {
        Ok(to) => to,
        Err(e) => {
            warn!(verification_id = %v.id(), error = %e, "cannot reconcile: the destination does not open");
            return Outcome::Skipped;
        }
    };
    let found = match core
        .provider
        .find_sent(&service, &to, v.created_at() - LOOKBACK)
        .await
    {
        Ok(found) => found,
        Err(e) => {
            warn!(verification_id = %v.id(), kind = ?e.kind, twilio_code = ?e.code, "cannot reconcile: the attempts list failed");
            return if e.is_retryable() {
                Outcome::ProviderDown
            } else {
                Outcome::Skipped
            };
        }
    };
    let (outcome, what) = match found {
        Some(sid) => {
            if !v.confirm_sent(sid, now) {
                return Outcome::Skipped;
            }
            (Outcome::Confirmed, "its send was confirmed")
        }
        None => {
            let give_up =
                chrono::Duration::from_std(settings.give_up_after).unwrap_or(chrono::Duration::MAX);
            if now - v.created_at() < give_up {
                debug!(verification_id = %v.id(), destination_hash, "no attempt at the provider yet");
                return Outcome::Waiting;
            }
            if !v.mark_never_sent(now) {
                return Outcome::Skipped;
            }
            (Outcome::NeverSent, "it was never sent: ended as failed")
        }
    };
    match core.store.update(&mut v).await {
        Ok(()) => {
            info!(
                verification_id = %v.id(),
                destination_hash,
                provider_sid = v.provider_sid().unwrap_or_default(),
                status = %v.status(),
                "reconciled an unconfirmed send: {what}"
            );
            outcome
        }
        Err(StoreError::Conflict(_)) => {
            debug!(verification_id = %v.id(), destination_hash, "changed meanwhile: left to its writer");
            Outcome::Skipped
        }
        Err(e) => {
            warn!(verification_id = %v.id(), destination_hash, error = %e, "could not store the reconciliation");
            Outcome::Skipped
        }
    }
}
