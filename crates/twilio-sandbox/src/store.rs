//! The sandbox's memory: verifications following Twilio Verify's lifecycle rules (same
//! verification while pending, 5 sends, 5 checks, expiry, soft deletion) and the bounded
//! inbox of every code sent, with the delivery status each message ends with. Time and
//! randomness are arguments, so the rules test without a clock.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::error::Error;
use crate::events::{MessageStatus, Outcome};
use crate::wire::serialize_iso8601;

/// Sends allowed per verification; the next one answers 429 / 60203.
pub(crate) const MAX_SENDS: usize = 5;
/// Checks allowed per verification; the next one answers 429 / 60202.
pub(crate) const MAX_CHECKS: u32 = 5;
/// Verifications kept at most; past it, expired ones go first, then the oldest.
pub(crate) const MAX_VERIFICATIONS: usize = 10_000;
/// Code lengths Twilio allows for a service.
pub(crate) const CODE_LENGTHS: std::ops::RangeInclusive<u8> = 4..=10;

pub(crate) use domain::Channel;

/// Parses Twilio's `Channel` parameter (lower-case names); `auto` resolves to `sms`, as
/// Twilio does for numbers without SNA.
pub(crate) fn parse_channel(raw: &str) -> Option<Channel> {
    if raw == "auto" {
        return Some(Channel::Sms);
    }
    Channel::ALL.into_iter().find(|c| c.as_str() == raw)
}

/// The channel as written in `send_code_attempts`; the OpenAPI examples upper-case `SMS`,
/// `CALL` and `EMAIL` but keep `whatsapp` and `sna` lower-case.
pub(crate) fn attempt_label(channel: Channel) -> &'static str {
    match channel {
        Channel::Sms => "SMS",
        Channel::Call => "CALL",
        Channel::Email => "EMAIL",
        Channel::Whatsapp => "whatsapp",
        Channel::Sna => "sna",
    }
}

/// A verification's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Pending,
    Approved,
    Canceled,
    MaxAttemptsReached,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Canceled => "canceled",
            Status::MaxAttemptsReached => "max_attempts_reached",
        }
    }
}

/// One delivery of the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SendAttempt {
    pub(crate) time: DateTime<Utc>,
    pub(crate) channel: Channel,
    pub(crate) attempt_sid: String,
}

/// A verification as the sandbox keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verification {
    pub(crate) sid: String,
    pub(crate) service_sid: String,
    pub(crate) to: String,
    pub(crate) channel: Channel,
    pub(crate) status: Status,
    pub(crate) code: String,
    pub(crate) locale: Option<String>,
    pub(crate) amount: Option<String>,
    pub(crate) payee: Option<String>,
    pub(crate) send_attempts: Vec<SendAttempt>,
    pub(crate) checks: u32,
    pub(crate) created: DateTime<Utc>,
    pub(crate) updated: DateTime<Utc>,
    pub(crate) expires_at: DateTime<Utc>,
}

impl Verification {
    fn live(&self, now: DateTime<Utc>) -> bool {
        now < self.expires_at
    }

    /// Whole seconds until expiry, at least 1: what a client should wait after a 429.
    fn retry_after(&self, now: DateTime<Utc>) -> u64 {
        let millis = u64::try_from((self.expires_at - now).num_milliseconds()).unwrap_or(0);
        millis.div_ceil(1000).max(1)
    }
}

/// One code "sent" to a destination, as the inbox lists it. `status` is `sent` until the
/// delivery delay has passed, then the status the send ends with (`delivered`,
/// `undelivered` with an `error_code`, or still `sent` when no receipt ever comes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Message {
    pub(crate) to: String,
    pub(crate) channel: &'static str,
    pub(crate) code: String,
    pub(crate) verification_sid: String,
    pub(crate) service_sid: String,
    pub(crate) locale: Option<String>,
    #[serde(serialize_with = "serialize_iso8601")]
    pub(crate) sent_at: DateTime<Utc>,
    pub(crate) attempt_sid: String,
    pub(crate) status: &'static str,
    pub(crate) error_code: Option<&'static str>,
    /// How the send ends, and from when.
    #[serde(skip)]
    outcome: Outcome,
    #[serde(skip)]
    settles_at: DateTime<Utc>,
}

impl Message {
    /// The message as it stands at `now`.
    fn at(&self, now: DateTime<Utc>) -> Message {
        let mut message = self.clone();
        let (status, error_code) = if now >= self.settles_at {
            (self.outcome.status, self.outcome.error_code)
        } else {
            (MessageStatus::Sent, None)
        };
        message.status = status.as_str();
        message.error_code = error_code;
        message
    }
}

/// A request to start (or resend) a verification, already validated.
#[derive(Debug, Clone)]
pub(crate) struct StartRequest<'a> {
    pub(crate) service_sid: &'a str,
    pub(crate) code_length: u8,
    pub(crate) to: &'a str,
    pub(crate) channel: Channel,
    pub(crate) locale: Option<&'a str>,
    pub(crate) custom_code: Option<&'a str>,
    pub(crate) amount: Option<&'a str>,
    pub(crate) payee: Option<&'a str>,
    /// How the message sent for this request ends.
    pub(crate) outcome: Outcome,
}

/// Which verification a check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    Sid(&'a str),
    To(&'a str),
}

/// The statuses `POST …/Verifications/{Sid}` may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NewStatus {
    Canceled,
    Approved,
}

/// What `GET /v2/Attempts` asks for: each filter `None` when absent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttemptFilter<'a> {
    /// `VerifyServiceSid`.
    pub(crate) service_sid: Option<&'a str>,
    /// `ChannelData.To`.
    pub(crate) to: Option<&'a str>,
    /// `DateCreatedAfter`: only attempts made strictly after it.
    pub(crate) created_after: Option<DateTime<Utc>>,
    /// `PageSize` (Twilio's default 50, at most 1,000).
    pub(crate) page_size: usize,
}

/// One send attempt, as the attempts list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attempt {
    pub(crate) sid: String,
    pub(crate) service_sid: String,
    pub(crate) verification_sid: String,
    pub(crate) to: String,
    pub(crate) channel: Channel,
    pub(crate) created: DateTime<Utc>,
    /// Its verification was approved.
    pub(crate) converted: bool,
}

/// Verifications and the inbox.
#[derive(Debug)]
pub(crate) struct Store {
    ttl: TimeDelta,
    delivery_delay: TimeDelta,
    inbox_capacity: usize,
    max_verifications: usize,
    verifications: HashMap<String, Verification>,
    inbox: VecDeque<Message>,
}

impl Store {
    pub(crate) fn new(
        ttl: std::time::Duration,
        delivery_delay: std::time::Duration,
        inbox_capacity: usize,
        max_verifications: usize,
    ) -> Self {
        // A duration too large for chrono is as good as "never" (about a century).
        let never = TimeDelta::days(36_500);
        let ttl = TimeDelta::from_std(ttl).unwrap_or(never);
        let delivery_delay = TimeDelta::from_std(delivery_delay).unwrap_or(never);
        Store {
            ttl,
            delivery_delay,
            inbox_capacity,
            max_verifications: max_verifications.max(1),
            verifications: HashMap::new(),
            inbox: VecDeque::new(),
        }
    }

    /// Starts a verification, or resends the pending one for the same destination.
    pub(crate) fn start(
        &mut self,
        request: &StartRequest<'_>,
        now: DateTime<Utc>,
        rng: &mut impl Rng,
    ) -> Result<Verification, Error> {
        self.sweep(now);
        if let Some(existing) = self.pending_sid(request.service_sid, request.to, now) {
            let verification = self
                .verifications
                .get_mut(&existing)
                .ok_or(Error::NotFound)?;
            if verification.send_attempts.len() >= MAX_SENDS {
                return Err(Error::MaxSendAttempts {
                    retry_after: verification.retry_after(now),
                });
            }
            verification.channel = request.channel;
            verification.updated = now;
            if let Some(locale) = request.locale {
                verification.locale = Some(locale.to_owned());
            }
            verification.send_attempts.push(SendAttempt {
                time: now,
                channel: request.channel,
                attempt_sid: new_sid("VL", rng),
            });
            let snapshot = verification.clone();
            self.deliver(&snapshot, request.outcome, now);
            return Ok(snapshot);
        }

        if self.verifications.len() >= self.max_verifications {
            self.evict_oldest();
        }
        let code = match request.custom_code {
            Some(custom) => custom.to_owned(),
            None => random_code(request.code_length, rng),
        };
        let verification = Verification {
            sid: new_sid("VE", rng),
            service_sid: request.service_sid.to_owned(),
            to: request.to.to_owned(),
            channel: request.channel,
            status: Status::Pending,
            code,
            locale: request.locale.map(str::to_owned),
            amount: request.amount.map(str::to_owned),
            payee: request.payee.map(str::to_owned),
            send_attempts: vec![SendAttempt {
                time: now,
                channel: request.channel,
                attempt_sid: new_sid("VL", rng),
            }],
            checks: 0,
            created: now,
            updated: now,
            expires_at: now + self.ttl,
        };
        self.verifications
            .insert(verification.sid.clone(), verification.clone());
        self.deliver(&verification, request.outcome, now);
        Ok(verification)
    }

    /// A verification that can still be fetched: pending or canceled, not expired.
    pub(crate) fn fetch(
        &mut self,
        service_sid: &str,
        sid: &str,
        now: DateTime<Utc>,
    ) -> Result<Verification, Error> {
        let verification = self.live(service_sid, sid, now)?;
        Ok(verification.clone())
    }

    /// Cancels or approves a verification. Approved ones are soft-deleted right away.
    pub(crate) fn update(
        &mut self,
        service_sid: &str,
        sid: &str,
        status: NewStatus,
        now: DateTime<Utc>,
    ) -> Result<Verification, Error> {
        let verification = self.live(service_sid, sid, now)?;
        match (verification.status, status) {
            (Status::Pending, NewStatus::Canceled) => {
                verification.status = Status::Canceled;
                verification.updated = now;
                Ok(verification.clone())
            }
            // Canceling twice is harmless and answers the canceled verification again.
            (Status::Canceled, NewStatus::Canceled) => Ok(verification.clone()),
            (Status::Pending, NewStatus::Approved) => {
                verification.status = Status::Approved;
                verification.updated = now;
                let snapshot = verification.clone();
                self.verifications.remove(sid);
                Ok(snapshot)
            }
            _ => Err(Error::NotFound),
        }
    }

    /// Checks a code. A wrong code is an answer (still pending), not an error.
    pub(crate) fn check(
        &mut self,
        service_sid: &str,
        target: Target<'_>,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<Verification, Error> {
        let sid = self.target_sid(service_sid, target, now)?;
        let verification = self.live(service_sid, &sid, now)?;
        if verification.status != Status::Pending {
            return Err(Error::NotFound);
        }
        if verification.checks >= MAX_CHECKS {
            let retry_after = verification.retry_after(now);
            verification.status = Status::MaxAttemptsReached;
            self.verifications.remove(&sid);
            return Err(Error::MaxCheckAttempts { retry_after });
        }
        verification.checks += 1;
        verification.updated = now;
        if bool::from(code.as_bytes().ct_eq(verification.code.as_bytes())) {
            verification.status = Status::Approved;
            let snapshot = verification.clone();
            self.verifications.remove(&sid);
            return Ok(snapshot);
        }
        Ok(verification.clone())
    }

    /// The destination a check would be about, without touching anything.
    pub(crate) fn destination_of(
        &self,
        service_sid: &str,
        target: Target<'_>,
        now: DateTime<Utc>,
    ) -> Option<String> {
        match target {
            Target::To(to) => Some(to.to_owned()),
            Target::Sid(sid) => self
                .verifications
                .get(sid)
                .filter(|v| v.service_sid == service_sid && v.live(now))
                .map(|v| v.to.clone()),
        }
    }

    /// The send attempts of the verifications the sandbox holds that `filter` admits, newest
    /// first, at most `filter.page_size` of them: `GET /v2/Attempts`. Verifications Twilio
    /// soft-deletes (approved, max attempts, expired) are forgotten with their attempts.
    pub(crate) fn attempts(&self, filter: &AttemptFilter<'_>, now: DateTime<Utc>) -> Vec<Attempt> {
        let mut attempts: Vec<Attempt> = self
            .verifications
            .values()
            .filter(|v| v.live(now))
            .filter(|v| filter.service_sid.is_none_or(|s| v.service_sid == s))
            .filter(|v| filter.to.is_none_or(|to| v.to == to))
            .flat_map(|v| {
                v.send_attempts.iter().map(|a| Attempt {
                    sid: a.attempt_sid.clone(),
                    service_sid: v.service_sid.clone(),
                    verification_sid: v.sid.clone(),
                    to: v.to.clone(),
                    channel: a.channel,
                    created: a.time,
                    converted: v.status == Status::Approved,
                })
            })
            .filter(|a| filter.created_after.is_none_or(|after| a.created > after))
            .collect();
        attempts.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.sid.cmp(&b.sid)));
        attempts.truncate(filter.page_size);
        attempts
    }

    /// Inbox messages as they stand at `now`, newest first, optionally only those sent
    /// to `to`.
    pub(crate) fn messages(&self, to: Option<&str>, now: DateTime<Utc>) -> Vec<Message> {
        self.inbox
            .iter()
            .filter(|m| to.is_none_or(|to| m.to == to))
            .map(|m| m.at(now))
            .collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.verifications.len()
    }

    /// The live verification `sid` of `service_sid`; expired ones are dropped on the way.
    fn live(
        &mut self,
        service_sid: &str,
        sid: &str,
        now: DateTime<Utc>,
    ) -> Result<&mut Verification, Error> {
        let expired = match self.verifications.get(sid) {
            Some(v) if v.service_sid == service_sid => !v.live(now),
            _ => return Err(Error::NotFound),
        };
        if expired {
            self.verifications.remove(sid);
            return Err(Error::NotFound);
        }
        self.verifications.get_mut(sid).ok_or(Error::NotFound)
    }

    fn target_sid(
        &self,
        service_sid: &str,
        target: Target<'_>,
        now: DateTime<Utc>,
    ) -> Result<String, Error> {
        match target {
            Target::Sid(sid) => Ok(sid.to_owned()),
            Target::To(to) => self
                .pending_sid(service_sid, to, now)
                .ok_or(Error::NotFound),
        }
    }

    fn pending_sid(&self, service_sid: &str, to: &str, now: DateTime<Utc>) -> Option<String> {
        self.verifications
            .values()
            .find(|v| {
                v.service_sid == service_sid
                    && v.to == to
                    && v.status == Status::Pending
                    && v.live(now)
            })
            .map(|v| v.sid.clone())
    }

    fn sweep(&mut self, now: DateTime<Utc>) {
        self.verifications.retain(|_, v| v.live(now));
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .verifications
            .values()
            .min_by_key(|v| v.created)
            .map(|v| v.sid.clone());
        if let Some(sid) = oldest {
            self.verifications.remove(&sid);
        }
    }

    fn deliver(&mut self, verification: &Verification, outcome: Outcome, now: DateTime<Utc>) {
        if self.inbox_capacity == 0 {
            return;
        }
        let attempt_sid = verification
            .send_attempts
            .last()
            .map(|a| a.attempt_sid.clone())
            .unwrap_or_default();
        self.inbox.push_front(Message {
            to: verification.to.clone(),
            channel: verification.channel.as_str(),
            code: verification.code.clone(),
            verification_sid: verification.sid.clone(),
            service_sid: verification.service_sid.clone(),
            locale: verification.locale.clone(),
            sent_at: now,
            attempt_sid,
            status: MessageStatus::Sent.as_str(),
            error_code: None,
            outcome,
            settles_at: now + self.delivery_delay,
        });
        self.inbox.truncate(self.inbox_capacity);
    }
}

/// A Twilio SID: two-letter prefix and 32 lower-case hex digits.
pub(crate) fn new_sid(prefix: &str, rng: &mut impl Rng) -> String {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes);
    let mut sid = String::with_capacity(34);
    sid.push_str(prefix);
    for byte in bytes {
        sid.push_str(&format!("{byte:02x}"));
    }
    sid
}

/// A numeric code of `length` digits, clamped to what Twilio allows.
fn random_code(length: u8, rng: &mut impl Rng) -> String {
    let length = length.clamp(*CODE_LENGTHS.start(), *CODE_LENGTHS.end());
    (0..length)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const SERVICE: &str = "VA00000000000000000000000000000000";
    const TO: &str = "+14155552671";

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0)
            .single()
            .expect("a valid fixed instant")
    }

    fn secs(n: i64) -> TimeDelta {
        TimeDelta::seconds(n)
    }

    const DELAY: std::time::Duration = std::time::Duration::from_secs(1);

    fn store() -> Store {
        Store::new(std::time::Duration::from_secs(600), DELAY, 100, 50)
    }

    fn request(to: &str, channel: Channel) -> StartRequest<'_> {
        StartRequest {
            service_sid: SERVICE,
            code_length: 6,
            to,
            channel,
            locale: None,
            custom_code: None,
            amount: None,
            payee: None,
            outcome: Outcome::delivered(),
        }
    }

    fn start(store: &mut Store, rng: &mut StdRng, to: &str, at: DateTime<Utc>) -> Verification {
        store
            .start(&request(to, Channel::Sms), at, rng)
            .expect("start succeeds")
    }

    fn wrong(code: &str) -> String {
        code.chars()
            .map(|c| if c == '0' { '1' } else { '0' })
            .collect()
    }

    #[test]
    fn sids_and_codes_have_twilio_shapes() {
        let mut rng = StdRng::seed_from_u64(1);
        let sid = new_sid("VE", &mut rng);
        assert_eq!(sid.len(), 34);
        assert!(sid.starts_with("VE"));
        assert!(
            sid[2..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        for (length, expected) in [(6, 6), (4, 4), (10, 10), (2, 4), (12, 10)] {
            let code = random_code(length, &mut rng);
            assert_eq!(code.len(), expected, "length {length}");
            assert!(code.bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn channels_parse_like_twilio() {
        for (raw, expected) in [
            ("sms", Some(Channel::Sms)),
            ("auto", Some(Channel::Sms)),
            ("call", Some(Channel::Call)),
            ("email", Some(Channel::Email)),
            ("whatsapp", Some(Channel::Whatsapp)),
            ("sna", Some(Channel::Sna)),
            ("SMS", None),
            ("pigeon", None),
            ("", None),
        ] {
            assert_eq!(parse_channel(raw), expected, "{raw}");
        }
    }

    #[test]
    fn resend_returns_the_same_verification_until_the_sixth_send() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut store = store();
        let first = start(&mut store, &mut rng, TO, t0());
        for n in 2..=MAX_SENDS {
            let channel = if n % 2 == 0 {
                Channel::Call
            } else {
                Channel::Sms
            };
            let again = store
                .start(&request(TO, channel), t0() + secs(n as i64), &mut rng)
                .expect("resend");
            assert_eq!(again.sid, first.sid);
            assert_eq!(again.code, first.code);
            assert_eq!(again.channel, channel);
            assert_eq!(again.send_attempts.len(), n);
        }
        let sixth = store.start(&request(TO, Channel::Sms), t0() + secs(10), &mut rng);
        assert_eq!(sixth, Err(Error::MaxSendAttempts { retry_after: 590 }));
        assert_eq!(store.messages(Some(TO), t0()).len(), MAX_SENDS);
        // Another destination is not affected.
        assert_ne!(
            start(&mut store, &mut rng, "+14155552672", t0()).sid,
            first.sid
        );
    }

    #[test]
    fn five_wrong_checks_then_max_attempts_then_gone() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut store = store();
        let v = start(&mut store, &mut rng, TO, t0());
        for _ in 0..MAX_CHECKS {
            let answer = store
                .check(SERVICE, Target::To(TO), &wrong(&v.code), t0())
                .expect("wrong code is an answer");
            assert_eq!(answer.status, Status::Pending);
        }
        // Even the right code is refused once the checks are used up.
        let sixth = store.check(SERVICE, Target::Sid(&v.sid), &v.code, t0() + secs(100));
        assert_eq!(sixth, Err(Error::MaxCheckAttempts { retry_after: 500 }));
        assert_eq!(store.fetch(SERVICE, &v.sid, t0()), Err(Error::NotFound));
        assert_eq!(
            store.check(SERVICE, Target::Sid(&v.sid), &v.code, t0()),
            Err(Error::NotFound)
        );
        // A new verification can start afterwards.
        assert_ne!(start(&mut store, &mut rng, TO, t0()).sid, v.sid);
    }

    #[test]
    fn approval_soft_deletes() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut store = store();
        let v = start(&mut store, &mut rng, TO, t0());
        let wrong_answer = store
            .check(SERVICE, Target::Sid(&v.sid), &wrong(&v.code), t0())
            .expect("answer");
        assert_eq!(wrong_answer.status, Status::Pending);
        let approved = store
            .check(SERVICE, Target::To(TO), &v.code, t0() + secs(5))
            .expect("answer");
        assert_eq!(approved.status, Status::Approved);
        assert_eq!(approved.updated, t0() + secs(5));
        assert_eq!(store.fetch(SERVICE, &v.sid, t0()), Err(Error::NotFound));
        assert_eq!(
            store.check(SERVICE, Target::To(TO), &v.code, t0()),
            Err(Error::NotFound)
        );
        assert_eq!(
            store.update(SERVICE, &v.sid, NewStatus::Canceled, t0()),
            Err(Error::NotFound)
        );
    }

    #[test]
    fn update_statuses() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut store = store();
        let v = start(&mut store, &mut rng, TO, t0());
        let canceled = store
            .update(SERVICE, &v.sid, NewStatus::Canceled, t0())
            .expect("cancel");
        assert_eq!(canceled.status, Status::Canceled);
        assert_eq!(
            store.fetch(SERVICE, &v.sid, t0()).map(|v| v.status),
            Ok(Status::Canceled)
        );
        assert_eq!(
            store
                .update(SERVICE, &v.sid, NewStatus::Canceled, t0())
                .map(|v| v.status),
            Ok(Status::Canceled)
        );
        assert_eq!(
            store.update(SERVICE, &v.sid, NewStatus::Approved, t0()),
            Err(Error::NotFound)
        );
        assert_eq!(
            store.check(SERVICE, Target::Sid(&v.sid), &v.code, t0()),
            Err(Error::NotFound)
        );
        // A canceled verification does not block a new one.
        let next = start(&mut store, &mut rng, TO, t0());
        assert_ne!(next.sid, v.sid);
        let approved = store
            .update(SERVICE, &next.sid, NewStatus::Approved, t0())
            .expect("approve");
        assert_eq!(approved.status, Status::Approved);
        assert_eq!(store.fetch(SERVICE, &next.sid, t0()), Err(Error::NotFound));
    }

    #[test]
    fn expiry_after_ttl() {
        let mut rng = StdRng::seed_from_u64(6);
        let mut store = store();
        let v = start(&mut store, &mut rng, TO, t0());
        assert!(store.fetch(SERVICE, &v.sid, t0() + secs(599)).is_ok());
        assert_eq!(
            store.fetch(SERVICE, &v.sid, t0() + secs(600)),
            Err(Error::NotFound)
        );
        let v2 = start(&mut store, &mut rng, TO, t0() + secs(601));
        assert_ne!(v2.sid, v.sid);
        assert_eq!(
            store.check(SERVICE, Target::To(TO), &v2.code, t0() + secs(1300)),
            Err(Error::NotFound)
        );
    }

    #[test]
    fn attempts_are_listed_newest_first_within_the_filters() {
        let mut store = store();
        let mut rng = StdRng::seed_from_u64(7);
        let first = start(&mut store, &mut rng, "+14155552671", t0());
        let resent = start(&mut store, &mut rng, "+14155552671", t0() + secs(10));
        let other = start(&mut store, &mut rng, "+14155550100", t0() + secs(20));
        let all = AttemptFilter {
            service_sid: None,
            to: None,
            created_after: None,
            page_size: 50,
        };
        let sids = |filter: &AttemptFilter<'_>| -> Vec<String> {
            store
                .attempts(filter, t0() + secs(30))
                .into_iter()
                .map(|a| a.sid)
                .collect()
        };
        let attempt = |v: &Verification, n: usize| v.send_attempts[n].attempt_sid.clone();
        assert_eq!(
            sids(&all),
            [attempt(&other, 0), attempt(&resent, 1), attempt(&first, 0)]
        );
        let to_one = AttemptFilter {
            to: Some("+14155552671"),
            ..all
        };
        assert_eq!(sids(&to_one), [attempt(&resent, 1), attempt(&first, 0)]);
        let listed = store.attempts(&to_one, t0() + secs(30));
        assert!(
            listed
                .iter()
                .all(|a| a.verification_sid == first.sid && !a.converted)
        );
        assert_eq!(
            sids(&AttemptFilter {
                created_after: Some(t0()),
                ..to_one
            }),
            [attempt(&resent, 1)],
            "strictly after"
        );
        assert_eq!(
            sids(&AttemptFilter {
                page_size: 1,
                ..all
            }),
            [attempt(&other, 0)]
        );
        assert!(
            sids(&AttemptFilter {
                service_sid: Some("VA00000000000000000000000000000099"),
                ..all
            })
            .is_empty()
        );
        // Expired verifications are gone with their attempts.
        assert!(store.attempts(&all, t0() + secs(3600)).is_empty());
    }

    #[test]
    fn services_are_separate() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut store = store();
        let v = start(&mut store, &mut rng, TO, t0());
        let other = "VA11111111111111111111111111111111";
        assert_eq!(store.fetch(other, &v.sid, t0()), Err(Error::NotFound));
        assert_eq!(
            store.check(other, Target::To(TO), &v.code, t0()),
            Err(Error::NotFound)
        );
        assert_eq!(
            store.check(other, Target::Sid(&v.sid), &v.code, t0()),
            Err(Error::NotFound)
        );
    }

    #[test]
    fn custom_code_and_psd2_fields_are_kept() {
        let mut rng = StdRng::seed_from_u64(8);
        let mut store = store();
        let mut req = request(TO, Channel::Email);
        req.custom_code = Some("A1B2C3");
        req.amount = Some("9.99");
        req.payee = Some("Acme");
        req.locale = Some("fr");
        let v = store.start(&req, t0(), &mut rng).expect("start");
        assert_eq!(v.code, "A1B2C3");
        assert_eq!(v.amount.as_deref(), Some("9.99"));
        assert_eq!(v.payee.as_deref(), Some("Acme"));
        let inbox = store.messages(None, t0());
        assert_eq!(inbox[0].locale.as_deref(), Some("fr"));
        assert_eq!(inbox[0].channel, "email");
    }

    #[test]
    fn inbox_is_newest_first_and_bounded() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut store = Store::new(std::time::Duration::from_secs(600), DELAY, 3, 50);
        let numbers = [
            "+14155552601",
            "+14155552602",
            "+14155552603",
            "+14155552604",
        ];
        for (i, to) in numbers.iter().enumerate() {
            start(&mut store, &mut rng, to, t0() + secs(i as i64));
        }
        let all: Vec<_> = store
            .messages(None, t0())
            .into_iter()
            .map(|m| m.to)
            .collect();
        assert_eq!(all, ["+14155552604", "+14155552603", "+14155552602"]);
        assert_eq!(store.messages(Some("+14155552601"), t0()), Vec::new());
        assert_eq!(store.messages(Some("+14155552603"), t0()).len(), 1);
        let mut silent = Store::new(std::time::Duration::from_secs(600), DELAY, 0, 50);
        start(&mut silent, &mut rng, TO, t0());
        assert!(silent.messages(None, t0()).is_empty());
    }

    #[test]
    fn verifications_are_bounded() {
        let mut rng = StdRng::seed_from_u64(10);
        let mut store = Store::new(std::time::Duration::from_secs(600), DELAY, 10, 3);
        let first = start(&mut store, &mut rng, "+14155552601", t0());
        for (i, to) in ["+14155552602", "+14155552603", "+14155552604"]
            .iter()
            .enumerate()
        {
            start(&mut store, &mut rng, to, t0() + secs(i as i64 + 1));
        }
        assert_eq!(store.len(), 3);
        assert_eq!(store.fetch(SERVICE, &first.sid, t0()), Err(Error::NotFound));
        // Expired ones are swept when the next verification starts.
        start(&mut store, &mut rng, "+14155552605", t0() + secs(1000));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn inbox_status_settles_after_the_delivery_delay() {
        let mut rng = StdRng::seed_from_u64(12);
        let mut store = store();
        for (to, outcome) in [
            ("+14155552601", Outcome::delivered()),
            ("+14155552602", Outcome::undelivered("30003")),
            (
                "+14155552603",
                Outcome {
                    status: MessageStatus::Sent,
                    error_code: None,
                },
            ),
        ] {
            let mut req = request(to, Channel::Sms);
            req.outcome = outcome;
            store.start(&req, t0(), &mut rng).expect("start");
        }
        let statuses = |at: DateTime<Utc>| -> Vec<(&'static str, Option<&'static str>)> {
            store
                .messages(None, at)
                .into_iter()
                .map(|m| (m.status, m.error_code))
                .collect()
        };
        assert_eq!(statuses(t0()), [("sent", None); 3]);
        assert_eq!(
            statuses(t0() + secs(1)),
            [
                ("sent", None),
                ("undelivered", Some("30003")),
                ("delivered", None)
            ]
        );
        let v = store.messages(Some("+14155552601"), t0());
        assert_eq!(v.len(), 1);
        assert!(v[0].attempt_sid.starts_with("VL"));
    }

    #[test]
    fn destination_of_a_check() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut store = store();
        let v = start(&mut store, &mut rng, TO, t0());
        assert_eq!(
            store
                .destination_of(SERVICE, Target::Sid(&v.sid), t0())
                .as_deref(),
            Some(TO)
        );
        assert_eq!(
            store.destination_of(SERVICE, Target::Sid("VEnope"), t0()),
            None
        );
        assert_eq!(
            store
                .destination_of(SERVICE, Target::To("x@example.com"), t0())
                .as_deref(),
            Some("x@example.com")
        );
    }
}
