//! The message side of the store, generic over the database like the verifications in
//! `repo`: delivery reports recorded once with the event they cause
//! ([`domain::ports::DeliveryReportStore`]), the transactional outbox relays publish from
//! ([`domain::ports::Outbox`]), and the memory of handled messages that lets consumers on
//! every replica dedupe together ([`domain::events::DedupeStore`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::delivery::DeliveryReport;
use domain::events::{Claim, DedupeError, Envelope, MessageId};
use domain::ports::{OutboxMessage, Recorded, StoreError};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, FromRow, IntoArguments, Type};

use crate::error::{dedupe_error, read_error, unavailable};
use crate::repo::{Dialect, Repo};
use crate::row::{
    CorruptRow, EnvelopeRow, OutboxRow, ReportRow, bind_envelope, bind_report, to_millis,
};
use crate::sql;

/// Leases (of outbox claims and message claims) are capped at about a hundred years, so
/// adding one to a timestamp can never overflow the database's 64-bit integers.
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// How many published outbox rows one statement of a purge deletes: enough that a purge of
/// a day's messages takes few round trips, few enough that no statement runs long or holds
/// many row locks.
pub(crate) const PURGE_BATCH: u32 = 1000;

/// The stored error of a failed publishing attempt is cut to this many characters: it is
/// for inspection, and a broker's error text has no useful bound.
pub(crate) const MAX_ERROR_CHARS: usize = 1000;

/// When a message that cannot be read back is due again: never, until someone repairs it
/// (and sets `next_attempt_at`); its `last_error` says why.
pub(crate) const QUARANTINED: i64 = i64::MAX;

/// `lease` in whole milliseconds, capped at [`MAX_LEASE`].
pub(crate) fn lease_millis(lease: Duration) -> i64 {
    i64::try_from(lease.min(MAX_LEASE).as_millis()).unwrap_or(i64::MAX)
}

/// At most [`MAX_ERROR_CHARS`] characters of `error`.
pub(crate) fn truncate_error(error: &str) -> String {
    error.chars().take(MAX_ERROR_CHARS).collect()
}

/// The claimed rows oldest first as messages, and apart the rows that do not read back
/// (with their id and why), which the claim sets aside.
pub(crate) fn claimed_messages(
    mut rows: Vec<OutboxRow>,
) -> (Vec<OutboxMessage>, Vec<(i64, CorruptRow)>) {
    rows.sort_by_key(|row| (row.created_at, row.id));
    let mut messages = Vec::with_capacity(rows.len());
    let mut corrupt = Vec::new();
    for row in rows {
        let id = row.id;
        match OutboxMessage::try_from(row) {
            Ok(message) => messages.push(message),
            Err(problem) => corrupt.push((id, problem)),
        }
    }
    (messages, corrupt)
}

impl<DB> Repo<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    <DB as Database>::Arguments: IntoArguments<DB>,
    OutboxRow: for<'r> FromRow<'r, DB::Row>,
    for<'t> String: Encode<'t, DB> + Decode<'t, DB> + Type<DB>,
    for<'t> Option<String>: Encode<'t, DB> + Type<DB>,
    for<'t> Vec<u8>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Decode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    #[tracing::instrument(
        level = "debug",
        name = "storage.record_report",
        skip_all,
        fields(dedupe_key = %report.dedupe_key, message_id = %event.message_id)
    )]
    pub(crate) async fn record_report(
        &self,
        report: &DeliveryReport,
        event: &Envelope,
        now: DateTime<Utc>,
    ) -> Result<Recorded, StoreError> {
        let envelope = EnvelopeRow::try_from(event)?;
        let mut tx = self
            .pool
            .begin_with(DB::BEGIN_WRITE)
            .await
            .map_err(unavailable)?;
        // The report first: `ON CONFLICT` on its dedupe key waits for a concurrent recorder
        // of the same key (PostgreSQL) or runs after it (SQLite's write lock), so exactly one
        // of them writes, and a duplicate stops before the outbox is touched.
        let report_row = ReportRow::new(report, now, event.message_id);
        let new = bind_report(sqlx::query(sql::INSERT_REPORT), report_row)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
        if new.is_none() {
            tx.rollback().await.map_err(unavailable)?;
            tracing::debug!("delivery report already recorded");
            return Ok(Recorded::Duplicate);
        }
        let queued = bind_envelope(sqlx::query(sql::ENQUEUE), envelope)
            .bind(to_millis(now))
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
        if queued.is_none() {
            // A fresh report with a message id already queued: a publisher reused an id,
            // and recording the report without its event would lose the event.
            tx.rollback().await.map_err(unavailable)?;
            return Err(StoreError::Unavailable(format!(
                "outbox message {} already exists",
                event.message_id
            )));
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(Recorded::New)
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.outbox.enqueue",
        skip_all,
        fields(message_id = %envelope.message_id, kind = %envelope.kind)
    )]
    pub(crate) async fn enqueue(
        &self,
        envelope: &Envelope,
        now: DateTime<Utc>,
    ) -> Result<Recorded, StoreError> {
        let row = EnvelopeRow::try_from(envelope)?;
        let queued = bind_envelope(sqlx::query(sql::ENQUEUE), row)
            .bind(to_millis(now))
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(if queued.is_some() {
            Recorded::New
        } else {
            Recorded::Duplicate
        })
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.outbox.claim",
        skip_all,
        fields(limit = limit)
    )]
    pub(crate) async fn claim_outbox(
        &self,
        limit: u32,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = to_millis(now);
        let until = now.saturating_add(lease_millis(lease));
        let mut tx = self
            .pool
            .begin_with(DB::BEGIN_WRITE)
            .await
            .map_err(unavailable)?;
        let rows: Vec<OutboxRow> = sqlx::query_as(DB::CLAIM_OUTBOX)
            .bind(now)
            .bind(until)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(read_error)?;
        let (messages, corrupt) = claimed_messages(rows);
        if corrupt.is_empty() {
            tx.commit().await.map_err(unavailable)?;
            return Ok(messages);
        }

        // A row that cannot be read back would come back in every batch and stall the
        // relay. It is set aside instead (never due again, its `last_error` saying why)
        // and the claim fails once; the next claim goes on without it.
        tx.rollback().await.map_err(unavailable)?;
        for (id, problem) in &corrupt {
            tracing::error!(outbox_id = id, %problem, "outbox message is corrupt; set aside");
            sqlx::query(sql::RETRY_LATER)
                .bind(*id)
                .bind(QUARANTINED)
                .bind(truncate_error(&format!("corrupt: {problem}")))
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
        }
        let (_, first) = &corrupt[0];
        Err(StoreError::Corrupt(first.to_string()))
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.outbox.mark_published",
        skip_all,
        fields(count = ids.len())
    )]
    pub(crate) async fn mark_published(
        &self,
        ids: &[i64],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(DB::MARK_PUBLISHED)
            .bind(DB::id_list(ids))
            .bind(to_millis(now))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.outbox.retry_later",
        skip_all,
        fields(outbox_id = id)
    )]
    pub(crate) async fn retry_later(
        &self,
        id: i64,
        at: DateTime<Utc>,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(sql::RETRY_LATER)
            .bind(id)
            .bind(to_millis(at))
            .bind(truncate_error(error))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.outbox.set_aside",
        skip_all,
        fields(outbox_id = id)
    )]
    pub(crate) async fn set_aside(&self, id: i64, error: &str) -> Result<(), StoreError> {
        sqlx::query(sql::RETRY_LATER)
            .bind(id)
            .bind(QUARANTINED)
            .bind(truncate_error(error))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "storage.outbox.count_set_aside", skip_all)]
    pub(crate) async fn count_set_aside(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(sql::COUNT_SET_ASIDE)
            .bind(QUARANTINED)
            .fetch_one(&self.pool)
            .await
            .map_err(read_error)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    #[tracing::instrument(level = "debug", name = "storage.outbox.purge_published", skip_all)]
    pub(crate) async fn purge_published(
        &self,
        older_than: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut purged: u64 = 0;
        loop {
            let ids: Vec<i64> = sqlx::query_scalar(sql::PURGE_PUBLISHED)
                .bind(to_millis(older_than))
                .bind(i64::from(PURGE_BATCH))
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
            purged += ids.len() as u64;
            if ids.len() < PURGE_BATCH as usize {
                return Ok(purged);
            }
        }
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.dedupe.claim",
        skip_all,
        fields(consumer = %consumer, message_id = %message_id)
    )]
    pub(crate) async fn claim_message(
        &self,
        consumer: &str,
        message_id: MessageId,
        lease: Duration,
    ) -> Result<Claim, DedupeError> {
        let acquired: Option<String> = sqlx::query_scalar(DB::CLAIM_MESSAGE)
            .bind(consumer.to_owned())
            .bind(message_id.to_string())
            .bind(lease_millis(lease))
            .fetch_optional(&self.pool)
            .await
            .map_err(dedupe_error)?;
        if acquired.is_some() {
            return Ok(Claim::Acquired);
        }
        // Done, or another holder's lease still runs. Should the row have been released
        // or its lease ended since, `Busy` sends the message back for a later attempt,
        // which then acquires it.
        let state: Option<String> = sqlx::query_scalar(sql::MESSAGE_STATE)
            .bind(consumer.to_owned())
            .bind(message_id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(dedupe_error)?;
        Ok(match state.as_deref() {
            Some("done") => Claim::Done,
            _ => Claim::Busy,
        })
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.dedupe.complete",
        skip_all,
        fields(consumer = %consumer, message_id = %message_id)
    )]
    pub(crate) async fn complete_message(
        &self,
        consumer: &str,
        message_id: MessageId,
    ) -> Result<(), DedupeError> {
        sqlx::query(DB::COMPLETE_MESSAGE)
            .bind(consumer.to_owned())
            .bind(message_id.to_string())
            .execute(&self.pool)
            .await
            .map_err(dedupe_error)?;
        Ok(())
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.dedupe.release",
        skip_all,
        fields(consumer = %consumer, message_id = %message_id)
    )]
    pub(crate) async fn release_message(
        &self,
        consumer: &str,
        message_id: MessageId,
    ) -> Result<(), DedupeError> {
        sqlx::query(sql::RELEASE_MESSAGE)
            .bind(consumer.to_owned())
            .bind(message_id.to_string())
            .execute(&self.pool)
            .await
            .map_err(dedupe_error)?;
        Ok(())
    }
}
