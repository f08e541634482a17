//! The verifications this process wrote last, kept so a check need not read back the row
//! its own start just wrote.
//!
//! A check reads its verification and then claims an attempt with an update conditional on
//! the version it read. [`RecentStore`] wraps the store: every write that succeeds leaves
//! the verification as written in a bounded map, and
//! [`VerificationStore::get_to_update`] answers from that map. The answer may be older than
//! the row (another replica, the fallback consumer of another process or a key rotation
//! wrote since); then the conditional update fails with `Conflict`, takes no limit, and the
//! caller reads the row with [`VerificationStore::get`], which always asks the store. Every
//! other read goes to the store as before, so nothing a caller is told comes from here
//! without a write that checked it.
//!
//! On PostgreSQL the read a check no longer makes was a statement, a quarter of a flow's;
//! on SQLite, one of its two read transactions.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::abuse::LimitRequest;
use domain::ports::{Inserted, Limited, StoreError, VerificationStore};
use domain::{
    DestinationHash, IdempotencyKey, Purpose, Verification, VerificationId, VerificationStatus,
};

/// Verifications kept at most, the oldest written forgotten first. A start's check
/// follows it within minutes; at a thousand starts a second this holds the last ten
/// seconds or so, a few MiB, and a check that comes later reads the store as before.
pub const CAPACITY: usize = 8192;

/// A [`VerificationStore`] that remembers what this process wrote last (see the module).
#[derive(Debug)]
pub struct RecentStore {
    inner: Arc<dyn VerificationStore>,
    recent: Mutex<Recent>,
    capacity: usize,
}

/// The remembered verifications, and their ids in the order they were first remembered.
#[derive(Debug, Default)]
struct Recent {
    by_id: HashMap<VerificationId, Verification>,
    order: VecDeque<VerificationId>,
}

impl RecentStore {
    /// Remembers up to [`CAPACITY`] verifications.
    pub fn new(inner: Arc<dyn VerificationStore>) -> Self {
        Self::with_capacity(inner, CAPACITY)
    }

    /// Remembers up to `capacity` verifications.
    pub fn with_capacity(inner: Arc<dyn VerificationStore>, capacity: usize) -> Self {
        RecentStore {
            inner,
            recent: Mutex::new(Recent::default()),
            capacity,
        }
    }

    fn recent(&self) -> MutexGuard<'_, Recent> {
        // The map holds no invariant a panic elsewhere could break half-way.
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `v` as written. Only a pending verification can be checked again, so one
    /// that is not is forgotten instead.
    fn remember(&self, v: &Verification) {
        let mut recent = self.recent();
        if v.status() != VerificationStatus::Pending {
            recent.by_id.remove(&v.id());
            return;
        }
        if recent.by_id.insert(v.id(), v.clone()).is_none() {
            recent.order.push_back(v.id());
            while recent.order.len() > self.capacity {
                if let Some(oldest) = recent.order.pop_front() {
                    recent.by_id.remove(&oldest);
                }
            }
        }
    }

    /// Forgets `id` after a write that failed or did not happen: what it holds may be
    /// older than the row or newer than it.
    fn forget(&self, id: &VerificationId) {
        self.recent().by_id.remove(id);
    }

    /// How many verifications are remembered (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.recent().by_id.len()
    }
}

#[async_trait]
impl VerificationStore for RecentStore {
    async fn insert(&self, verification: &Verification) -> Result<Inserted, StoreError> {
        let inserted = self.inner.insert(verification).await;
        match &inserted {
            Ok(Inserted::Created) => self.remember(verification),
            _ => self.forget(&verification.id()),
        }
        inserted
    }

    async fn insert_limited(
        &self,
        verification: &Verification,
        limits: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Limited<Inserted>, StoreError> {
        let inserted = self.inner.insert_limited(verification, limits, now).await;
        match &inserted {
            Ok(Limited::Done {
                outcome: Inserted::Created,
                ..
            }) => self.remember(verification),
            _ => self.forget(&verification.id()),
        }
        inserted
    }

    async fn get(&self, id: &VerificationId) -> Result<Option<Verification>, StoreError> {
        self.inner.get(id).await
    }

    async fn get_to_update(&self, id: &VerificationId) -> Result<Option<Verification>, StoreError> {
        let remembered = self.recent().by_id.get(id).cloned();
        match remembered {
            Some(v) => Ok(Some(v)),
            None => self.inner.get_to_update(id).await,
        }
    }

    async fn find_by_provider_sid(
        &self,
        provider_sid: &str,
    ) -> Result<Option<Verification>, StoreError> {
        self.inner.find_by_provider_sid(provider_sid).await
    }

    async fn find_by_idempotency_key(
        &self,
        purpose: &Purpose,
        owner: &str,
        key: &IdempotencyKey,
    ) -> Result<Option<Verification>, StoreError> {
        self.inner
            .find_by_idempotency_key(purpose, owner, key)
            .await
    }

    async fn find_pending(
        &self,
        purpose: &Purpose,
        destination: &DestinationHash,
        now: DateTime<Utc>,
    ) -> Result<Option<Verification>, StoreError> {
        self.inner.find_pending(purpose, destination, now).await
    }

    async fn update(&self, verification: &mut Verification) -> Result<(), StoreError> {
        let updated = self.inner.update(verification).await;
        match &updated {
            Ok(()) => self.remember(verification),
            Err(_) => self.forget(&verification.id()),
        }
        updated
    }

    async fn update_limited(
        &self,
        verification: &mut Verification,
        limits: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Limited<()>, StoreError> {
        let updated = self.inner.update_limited(verification, limits, now).await;
        match &updated {
            Ok(Limited::Done { .. }) => self.remember(verification),
            // A refusal wrote nothing: what is remembered is still the row.
            Ok(Limited::Refused(_)) => {}
            Err(_) => self.forget(&verification.id()),
        }
        updated
    }

    async fn list_sealed_with_other_key(
        &self,
        current_key_id: &str,
        limit: u32,
    ) -> Result<Vec<Verification>, StoreError> {
        self.inner
            .list_sealed_with_other_key(current_key_id, limit)
            .await
    }

    async fn list_unconfirmed(
        &self,
        created_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Verification>, StoreError> {
        self.inner.list_unconfirmed(created_before, limit).await
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use domain::{
        BlindIndexKey, Channel, CheckOutcome, Destination, EncryptionKey, Keyring, NewVerification,
        PhoneNumber,
    };
    use uuid::Uuid;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0)
            .single()
            .expect("a valid time")
    }

    /// Verification `n`, pending, to a number of its own.
    fn pending(n: u128) -> anyhow::Result<Verification> {
        let to = Destination::Phone(PhoneNumber::parse(&format!("+1415555{n:04}"), None)?);
        let keyring = Keyring::new(EncryptionKey::new("k1", [7; 32]), vec![]);
        let id = VerificationId::from_uuid(Uuid::from_u128(n));
        Ok(Verification::new(NewVerification {
            destination: keyring.seal(&to, &id, [1; 12]),
            id,
            purpose: Purpose::parse("login")?,
            channel: Channel::Sms,
            destination_hash: BlindIndexKey::new([9; 32]).hash(&to),
            to_masked: to.masked(),
            identity: None,
            owner: String::new(),
            idempotency_key: None,
            max_sends: 3,
            max_checks: 5,
            allow_fallback: false,
            trace_parent: None,
            risk: None,
            now: at(0),
            expires_at: at(600),
        }))
    }

    /// The store the wrapper writes through, and the wrapper.
    async fn stores() -> anyhow::Result<(Arc<dyn VerificationStore>, RecentStore, storage::Database)>
    {
        let database = storage::Database::open("sqlite::memory:").await?;
        database.migrate().await?;
        let inner = database.verifications();
        Ok((Arc::clone(&inner), RecentStore::new(inner), database))
    }

    #[tokio::test]
    async fn a_check_gets_what_this_process_wrote_and_an_old_copy_fails_its_write()
    -> anyhow::Result<()> {
        let (inner, recent, _database) = stores().await?;
        let mut v = pending(1)?;
        assert_eq!(recent.insert(&v).await?, Inserted::Created);
        v.mark_sent("VE00000000000000000000000000000001".to_owned(), at(1));
        recent.update(&mut v).await?;
        assert_eq!(recent.get_to_update(&v.id()).await?.as_ref(), Some(&v));

        // Another process claims an attempt behind this one's back.
        let mut elsewhere = inner.get(&v.id()).await?.expect("stored");
        elsewhere.begin_check(at(2))?;
        inner.update(&mut elsewhere).await?;

        // The store's answer is the row; the one to update is what this process wrote.
        assert_eq!(recent.get(&v.id()).await?.as_ref(), Some(&elsewhere));
        let mut old = recent.get_to_update(&v.id()).await?.expect("remembered");
        assert_eq!(old, v);
        old.begin_check(at(3))?;
        assert!(matches!(
            recent.update(&mut old).await,
            Err(StoreError::Conflict(_))
        ));
        // The conflict forgot it: the next claim starts from the row.
        assert_eq!(
            recent.get_to_update(&v.id()).await?.as_ref(),
            Some(&elsewhere)
        );
        Ok(())
    }

    #[tokio::test]
    async fn only_pending_verifications_are_kept_and_only_the_latest() -> anyhow::Result<()> {
        let (_inner, _recent, database) = stores().await?;
        let recent = RecentStore::with_capacity(database.verifications(), 3);
        let mut all = Vec::new();
        for n in 1..=5 {
            let v = pending(n)?;
            recent.insert(&v).await?;
            all.push(v);
        }
        assert_eq!(recent.len(), 3, "the two oldest forgotten");
        assert!(!recent.recent().by_id.contains_key(&all[0].id()));
        assert!(recent.recent().by_id.contains_key(&all[4].id()));

        let mut v = all[4].clone();
        v.mark_sent("VE00000000000000000000000000000005".to_owned(), at(1));
        recent.update(&mut v).await?;
        v.begin_check(at(2))?;
        recent.update(&mut v).await?;
        v.finish_check(CheckOutcome::Approved, at(3));
        recent.update(&mut v).await?;
        assert_eq!(
            recent.len(),
            2,
            "an approved verification is not checked again"
        );
        // A forgotten verification is read from the store.
        assert_eq!(recent.get_to_update(&v.id()).await?.as_ref(), Some(&v));
        Ok(())
    }
}
