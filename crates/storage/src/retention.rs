//! How long the history is kept: verifications, delivery reports and the consumers'
//! memory of handled messages are deleted once older than the retention period
//! (`storage.retention_days`), a batch at a time, by [`crate::Database::purge_history`].

use std::future::Future;

use chrono::{DateTime, Utc};
use domain::ports::StoreError;

use crate::abuse::PURGE_BATCH;

/// What one purge deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub verifications: u64,
    pub delivery_reports: u64,
    pub processed_messages: u64,
}

/// The smallest verification id created at `before` or later. Ids are `ver_` and a
/// UUIDv7 in hex, whose first twelve digits are its creation time in milliseconds, so ids
/// sort by creation time, and "created before" is a range of the primary key.
pub(crate) fn first_id_kept(before: DateTime<Utc>) -> String {
    let millis = u64::try_from(before.timestamp_millis()).unwrap_or(0);
    format!("ver_{:012x}{}", millis & 0xffff_ffff_ffff, "0".repeat(20))
}

/// Runs `batch` (one delete of at most [`PURGE_BATCH`] rows, returning how many it
/// deleted) until one comes back short; returns the total.
pub(crate) async fn in_batches<F, Fut>(mut batch: F) -> Result<u64, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize, StoreError>>,
{
    let mut total = 0;
    loop {
        let deleted = batch().await?;
        total += deleted as u64;
        if deleted < PURGE_BATCH as usize {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::VerificationId;

    #[test]
    fn the_bound_sorts_between_ids_made_before_and_after() {
        let at = DateTime::from_timestamp_millis(1_765_000_000_000).expect("time");
        let bound = first_id_kept(at);
        let made = |millis: i64| {
            let ts = uuid::Timestamp::from_unix(
                uuid::NoContext,
                u64::try_from(millis / 1000).expect("positive"),
                u32::try_from((millis % 1000) * 1_000_000).expect("nanos"),
            );
            VerificationId::from_uuid(uuid::Uuid::new_v7(ts)).to_string()
        };
        let millis = at.timestamp_millis();
        assert!(made(millis - 1) < bound);
        assert!(made(millis) >= bound);
        assert!(made(millis + 86_400_000) > bound);
        assert_eq!(bound.len(), made(millis).len());
    }
}
