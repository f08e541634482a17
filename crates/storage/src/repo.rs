//! What every store does, written once over any `sqlx` database with the schema of the
//! migrations: [`Repo`] runs the statements of `sql` and converts rows with `row` (the
//! verifications here, delivery reports, the outbox and the dedupe memory in `messages`, the
//! rate limiter's and fraud scoring's state in `abuse`), and [`delegate_store!`] turns a
//! backend's store into the port traits by handing each call to its `Repo`. A backend only
//! says how it opens a transaction that writes and spells the few statements SQL does not
//! let both databases share ([`Dialect`]); SQLite and PostgreSQL then share one
//! implementation, so they cannot drift apart in behaviour.

use chrono::{DateTime, Utc};
use domain::abuse::{LimitDecision, LimitRequest};
use domain::ports::{Inserted, Limited, StoreError};
use domain::{
    DestinationHash, IdempotencyKey, Purpose, Verification, VerificationId, VerificationStatus,
};
use sqlx::query::QueryAs;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use crate::abuse::{collect_decisions, decide_round, rounds, take_input};
use crate::error::{read_error, unavailable};
use crate::lane::{GuardedInsert, GuardedUpdate, Lanes};
use crate::row::{GuardedRow, TakenRow, VerificationRow, bind_insert, bind_update, to_millis};
use crate::sql;

/// What differs between the databases: how a writing transaction begins, and the statements
/// that cannot be written once for both.
pub(crate) trait Dialect: Database {
    /// The statement that begins a transaction that writes ([`Repo::insert`],
    /// `record_report`, the outbox claim).
    const BEGIN_WRITE: &'static str;

    /// Leases due outbox rows: `$1` is now, `$2` the end of the lease, `$3` the limit. Sets
    /// `next_attempt_at` to `$2` on up to `$3` unpublished rows due at `$1`, those due longest
    /// first, and returns them with the columns of [`crate::sql::outbox_columns!`] (in no
    /// particular order). Run inside [`Dialect::BEGIN_WRITE`]; two concurrent runs never
    /// return one row.
    const CLAIM_OUTBOX: &'static str;

    /// `$1` is a list of outbox ids ([`Dialect::id_list`]), `$2` now: marks the unpublished
    /// ones among them published.
    const MARK_PUBLISHED: &'static str;

    /// Claims a message for a consumer on the database's clock: `$1` is the consumer, `$2`
    /// the message id, `$3` the lease in milliseconds. Inserts an `in_progress` row, or takes
    /// over one whose lease has ended, and then returns its `state`; returns nothing when the
    /// message is done or its lease still runs.
    const CLAIM_MESSAGE: &'static str;

    /// `$1` is the consumer, `$2` the message id: records it `done` on the database's clock,
    /// claimed or not.
    const COMPLETE_MESSAGE: &'static str;

    /// Takes one event from each key of `$2`, a JSON array of distinct
    /// `{"key", "interval_ms", "period_ms"}` objects, at `$1` (now, in milliseconds), each
    /// allowed or refused on its own (the GCRA step of the function `take_rate_limits`, the
    /// PostgreSQL migration 0005), and returns `key, tat, allowed` per key.
    const TAKE_LIMITS: &'static str;

    /// A verification's insert guarded by limits, in one statement: `$1` to `$27` as for
    /// [`crate::sql::INSERT`], `$28` now in milliseconds and `$29` one round of a take (see
    /// [`Dialect::TAKE_LIMITS`]). Takes the limits all or none, inserts the row (`ON
    /// CONFLICT DO NOTHING`) only when they were all allowed, and returns one
    /// [`crate::row::GuardedRow`].
    const INSERT_LIMITED: &'static str;

    /// A verification's update guarded by limits, in one statement: `$1` to `$25` as for
    /// [`crate::sql::UPDATE`], `$26` now and `$27` one round of a take. Takes nothing and
    /// returns no row when the row does not have the expected version; otherwise takes the
    /// limits all or none, updates the row only when they were all allowed, and returns one
    /// [`crate::row::GuardedRow`].
    const UPDATE_LIMITED: &'static str;

    /// [`crate::sql::read_limits!`] with `$1` a JSON array of `{"key"}` objects.
    const READ_LIMITS: &'static str;

    /// [`crate::sql::add_counts!`] with `$2` a JSON array of
    /// `{"key", "attempts", "approved"}` objects.
    const ADD_COUNTS: &'static str;

    /// [`crate::sql::read_counts!`] with `$1` a JSON array of `{"i", "key", "since"}`
    /// objects.
    const READ_COUNTS: &'static str;

    /// The blocks in force at `$1` (now, in milliseconds) on the targets of `$2`, a JSON
    /// array of distinct `{"kind", "value"}` objects, each looked up by the primary key;
    /// the columns of [`crate::sql::block_columns!`], in no particular order.
    const ACTIVE_BLOCKS: &'static str;

    /// Counters, blocks and a replica's last write of counters in one statement: `$1` now
    /// and `$2` the targets as for [`Dialect::ACTIVE_BLOCKS`], `$3` the queries as for
    /// [`Dialect::READ_COUNTS`], `$4` the replica. Each row is a
    /// [`crate::row::SignalRow`]: a query's sums, a block, or the write's number.
    const READ_SIGNALS: &'static str;

    /// [`crate::sql::block_state!`], holding the row against concurrent writers until the
    /// transaction ([`Dialect::BEGIN_WRITE`]) ends.
    const LOCK_BLOCK: &'static str;

    /// How many rows a statement wrote or deleted.
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// How a list of ids is bound as one parameter.
    type IdList: for<'q> Encode<'q, Self> + Type<Self> + Send;

    /// `ids` as [`Dialect::IdList`].
    fn id_list(ids: &[i64]) -> Self::IdList;
}

/// The decisions of a guarded write's one round of takes, in request order, and whether
/// it wrote its row.
fn guarded_decisions(
    limits: &[LimitRequest],
    round: &[usize],
    guarded: GuardedRow,
) -> Result<(Vec<LimitDecision>, bool), StoreError> {
    let written = guarded.written;
    let mut decisions = vec![None; limits.len()];
    decide_round(limits, round, guarded.taken()?, &mut decisions)?;
    Ok((collect_decisions(decisions)?, written))
}

/// The outcome of a guarded insert given no limits, which cannot refuse.
fn unlimited(limited: Limited<Inserted>) -> Result<Inserted, StoreError> {
    match limited {
        Limited::Done { outcome, .. } => Ok(outcome),
        Limited::Refused(_) => Err(StoreError::Unavailable(
            "an insert without limits was refused".to_owned(),
        )),
    }
}

/// How often an insert is tried again when the row it collided with changed before it could
/// be read (possible on PostgreSQL, where each statement sees the latest commits). Each
/// retry follows a concurrent commit, so running out means heavy contention on one slot.
const INSERT_ATTEMPTS: u32 = 5;

/// The statements of the store over a pool of `DB` connections, the hottest of them
/// through lanes that let concurrent calls share a statement. Cloning shares both.
#[derive(Debug)]
pub(crate) struct Repo<DB: Database> {
    pub(crate) pool: Pool<DB>,
    pub(crate) lanes: Lanes,
}

// Derived `Clone` would require `DB: Clone`; only the pool and the lanes are cloned.
impl<DB: Database> Clone for Repo<DB> {
    fn clone(&self) -> Self {
        Repo {
            pool: self.pool.clone(),
            lanes: self.lanes.clone(),
        }
    }
}

impl<DB: Database> Repo<DB> {
    /// Takes a connection from the pool and pings the server over it.
    pub(crate) async fn ping(&self) -> Result<(), crate::StorageError> {
        use sqlx::Connection;
        let mut connection = self
            .pool
            .acquire()
            .await
            .map_err(crate::StorageError::Unavailable)?;
        connection
            .ping()
            .await
            .map_err(crate::StorageError::Unavailable)
    }
}

/// Runs a query for at most one verification on `executor` and converts the row back.
async fn fetch_verification<'c, DB, E>(
    query: QueryAs<'_, DB, VerificationRow, <DB as Database>::Arguments>,
    executor: E,
) -> Result<Option<Verification>, StoreError>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    <DB as Database>::Arguments: IntoArguments<DB>,
    VerificationRow: for<'r> FromRow<'r, DB::Row>,
{
    let row = query.fetch_optional(executor).await.map_err(read_error)?;
    to_verification(row)
}

/// A stored row, if any, converted back into a verification.
fn to_verification(row: Option<VerificationRow>) -> Result<Option<Verification>, StoreError> {
    row.map(Verification::try_from)
        .transpose()
        .map_err(StoreError::from)
}

impl<DB> Repo<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    <DB as Database>::Arguments: IntoArguments<DB>,
    VerificationRow: for<'r> FromRow<'r, DB::Row>,
    TakenRow: for<'r> FromRow<'r, DB::Row>,
    GuardedRow: for<'r> FromRow<'r, DB::Row>,
    crate::row::SignalRow: for<'r> FromRow<'r, DB::Row>,
    crate::row::LimitRow: for<'r> FromRow<'r, DB::Row>,
    crate::row::CountsRow: for<'r> FromRow<'r, DB::Row>,
    crate::row::BlockRow: for<'r> FromRow<'r, DB::Row>,
    crate::row::HeldBlock: for<'r> FromRow<'r, DB::Row>,
    for<'t> String: Encode<'t, DB> + Decode<'t, DB> + Type<DB>,
    for<'t> Option<String>: Encode<'t, DB> + Type<DB>,
    for<'t> Vec<u8>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Decode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
    for<'t> bool: Encode<'t, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    pub(crate) fn new(lanes: Lanes, pool: Pool<DB>) -> Self {
        Repo { pool, lanes }
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.insert",
        skip_all,
        fields(verification_id = %verification.id(), purpose = %verification.purpose())
    )]
    pub(crate) async fn insert(&self, verification: &Verification) -> Result<Inserted, StoreError> {
        // With no limits nothing can refuse: the guarded insert is the plain one.
        unlimited(
            self.insert_limited(verification, &[], verification.created_at())
                .await?,
        )
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.insert_limited",
        skip_all,
        fields(verification_id = %verification.id(), keys = limits.len())
    )]
    pub(crate) async fn insert_limited(
        &self,
        verification: &Verification,
        limits: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Limited<Inserted>, StoreError> {
        let mut rounds = rounds(limits);
        if rounds.len() > 1 {
            // A key named twice is taken in two rounds, which one statement cannot do.
            return self
                .insert_limited_in_transaction(verification, limits, now)
                .await;
        }
        let round = rounds.pop().unwrap_or_default();
        // One statement with the inserts of concurrent starts (the `insert` lane).
        let guarded = self
            .lanes
            .insert
            .call(GuardedInsert {
                row: VerificationRow::from(verification),
                now_ms: to_millis(now),
                take: take_input(limits, &round),
            })
            .await?;
        let (decisions, written) = guarded_decisions(limits, &round, guarded)?;
        if decisions.iter().any(|d| !d.allowed) {
            return Ok(Limited::Refused(decisions));
        }
        if written {
            return Ok(Limited::Done {
                decisions,
                outcome: Inserted::Created,
            });
        }
        // The row met one that holds its idempotency key or pending slot. Its limits stay
        // taken, as for every insert that meets an existing row; what it met is read, or
        // the expired pending one replaced, in a transaction of its own.
        let outcome = self.insert_after_collision(verification).await?;
        Ok(Limited::Done { decisions, outcome })
    }

    /// [`Repo::insert_limited`] as a transaction of several statements (for limits that
    /// name a key more than once, and for an insert that collided), tried again while the
    /// row it met changes under it.
    async fn insert_limited_in_transaction(
        &self,
        verification: &Verification,
        limits: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Limited<Inserted>, StoreError> {
        for attempt in 1..=INSERT_ATTEMPTS {
            let mut tx = self
                .pool
                .begin_with(DB::BEGIN_WRITE)
                .await
                .map_err(unavailable)?;
            let decisions = Self::take_in(&mut tx, limits, now).await?;
            if decisions.iter().any(|d| !d.allowed) {
                tx.rollback().await.map_err(unavailable)?;
                return Ok(Limited::Refused(decisions));
            }
            match Self::insert_in(&mut tx, verification).await? {
                Some(outcome) => {
                    tx.commit().await.map_err(unavailable)?;
                    return Ok(Limited::Done { decisions, outcome });
                }
                None => {
                    tx.rollback().await.map_err(unavailable)?;
                    tracing::debug!(attempt, "the colliding row changed meanwhile; retrying");
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "inserting verification {} kept colliding with concurrent changes",
            verification.id()
        )))
    }

    /// The insert of a row that collided with another, its limits taken already:
    /// [`Repo::insert_limited_in_transaction`] with none.
    async fn insert_after_collision(
        &self,
        verification: &Verification,
    ) -> Result<Inserted, StoreError> {
        unlimited(
            self.insert_limited_in_transaction(verification, &[], verification.created_at())
                .await?,
        )
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.update_limited",
        skip_all,
        fields(verification_id = %verification.id(), keys = limits.len())
    )]
    pub(crate) async fn update_limited(
        &self,
        verification: &Verification,
        expected_version: u32,
        limits: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Limited<()>, StoreError> {
        // Without limits it is a plain update (a check's claim when no shared check limit
        // is configured), which goes where plain updates go.
        if limits.is_empty() {
            self.update(verification, expected_version).await?;
            return Ok(Limited::Done {
                decisions: Vec::new(),
                outcome: (),
            });
        }
        let mut rounds = rounds(limits);
        if rounds.len() > 1 {
            return self
                .update_limited_in_transaction(verification, expected_version, limits, now)
                .await;
        }
        let round = rounds.pop().unwrap_or_default();
        // One statement with the claims of concurrent checks (the `guarded_update` lane).
        let guarded = self
            .lanes
            .guarded_update
            .call(GuardedUpdate {
                row: VerificationRow::from(verification),
                expected_version: i64::from(expected_version),
                now_ms: to_millis(now),
                take: take_input(limits, &round),
            })
            .await?;
        // None: the verification did not have the expected version, and nothing was taken.
        let Some(guarded) = guarded else {
            return Err(self.why_not_updated(verification).await);
        };
        let (decisions, written) = guarded_decisions(limits, &round, guarded)?;
        if decisions.iter().any(|d| !d.allowed) {
            return Ok(Limited::Refused(decisions));
        }
        if !written {
            return Err(StoreError::Unavailable(format!(
                "verification {} was locked at its version and then not updated",
                verification.id()
            )));
        }
        Ok(Limited::Done {
            decisions,
            outcome: (),
        })
    }

    /// [`Repo::update_limited`] as a transaction of several statements, for limits that
    /// name a key more than once.
    async fn update_limited_in_transaction(
        &self,
        verification: &Verification,
        expected_version: u32,
        limits: &[LimitRequest],
        now: DateTime<Utc>,
    ) -> Result<Limited<()>, StoreError> {
        let mut tx = self
            .pool
            .begin_with(DB::BEGIN_WRITE)
            .await
            .map_err(unavailable)?;
        let decisions = Self::take_in(&mut tx, limits, now).await?;
        if decisions.iter().any(|d| !d.allowed) {
            tx.rollback().await.map_err(unavailable)?;
            return Ok(Limited::Refused(decisions));
        }
        if !Self::update_row(&mut *tx, verification, expected_version).await? {
            tx.rollback().await.map_err(unavailable)?;
            return Err(self.why_not_updated(verification).await);
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(Limited::Done {
            decisions,
            outcome: (),
        })
    }

    /// One attempt at [`Repo::insert`] inside the open transaction `conn`. `None` means the
    /// row it collided with changed before it was read: roll back and try again.
    async fn insert_in(
        conn: &mut DB::Connection,
        verification: &Verification,
    ) -> Result<Option<Inserted>, StoreError> {
        if Self::insert_row(conn, verification).await? {
            return Ok(Some(Inserted::Created));
        }

        // A unique index refused the row. The rows that hold it are committed (PostgreSQL's
        // `ON CONFLICT` waits for a concurrent inserter to finish; SQLite's write lock lets
        // no other writer in), so reading them now finds them unless they changed since.
        if let Some(key) = verification.idempotency_key()
            && let Some(existing) = fetch_verification(
                sqlx::query_as(sql::FIND_BY_IDEMPOTENCY_KEY)
                    .bind(verification.purpose().as_str().to_owned())
                    .bind(verification.owner().to_owned())
                    .bind(key.as_str().to_owned()),
                &mut *conn,
            )
            .await?
        {
            tracing::debug!(
                existing_id = %existing.id(),
                "idempotency key already used; returning the first verification"
            );
            return Ok(Some(Inserted::Existing(Box::new(existing))));
        }

        if verification.status() == VerificationStatus::Pending
            && let Some(mut pending) = fetch_verification(
                sqlx::query_as(sql::PENDING_SLOT)
                    .bind(verification.purpose().as_str().to_owned())
                    .bind(verification.destination_hash().as_str().to_owned()),
                &mut *conn,
            )
            .await?
        {
            let read_at = pending.version();
            if !pending.expire_if_due(verification.created_at()) {
                tracing::debug!(
                    pending_id = %pending.id(),
                    "destination already has a live pending verification"
                );
                return Ok(Some(Inserted::Pending(Box::new(pending))));
            }
            // The pending one is past its expiry: it gives up the slot in this same
            // transaction, so no other request can take the slot in between. Either write
            // failing means a concurrent request got there first; the retry will see it.
            if !Self::update_row(&mut *conn, &pending, read_at).await? {
                return Ok(None);
            }
            if !Self::insert_row(conn, verification).await? {
                return Ok(None);
            }
            tracing::debug!(expired_id = %pending.id(), "expired the previous pending verification");
            return Ok(Some(Inserted::Created));
        }

        let same_id: Option<String> = sqlx::query_scalar(sql::EXISTS)
            .bind(verification.id().to_string())
            .fetch_optional(&mut *conn)
            .await
            .map_err(read_error)?;
        if same_id.is_some() {
            // Ids are fresh UUIDv7s: a reused one is a bug, and answering with the stored
            // row would hand one caller another's verification.
            return Err(StoreError::Unavailable(format!(
                "verification {} already exists",
                verification.id()
            )));
        }
        Ok(None)
    }

    /// Inserts the row unless a unique index holds it already; returns whether it did.
    async fn insert_row(
        conn: &mut DB::Connection,
        verification: &Verification,
    ) -> Result<bool, StoreError> {
        let query = bind_insert(
            sqlx::query(sql::INSERT),
            VerificationRow::from(verification),
        );
        let written = query
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?;
        Ok(written.is_some())
    }

    /// Writes the row if it still has `expected_version`; returns whether it did.
    async fn update_row<'c, E>(
        executor: E,
        verification: &Verification,
        expected_version: u32,
    ) -> Result<bool, StoreError>
    where
        E: Executor<'c, Database = DB>,
    {
        let query = bind_update(
            sqlx::query(sql::UPDATE),
            VerificationRow::from(verification),
            i64::from(expected_version),
        );
        let written = query.fetch_optional(executor).await.map_err(unavailable)?;
        Ok(written.is_some())
    }

    /// A verification by id, read in one statement with concurrent reads (the `get` lane).
    #[tracing::instrument(
        level = "debug",
        name = "storage.get",
        skip_all,
        fields(verification_id = %id)
    )]
    pub(crate) async fn get(
        &self,
        id: &VerificationId,
    ) -> Result<Option<Verification>, StoreError> {
        to_verification(self.lanes.get.call(id.to_string()).await?)
    }

    #[tracing::instrument(level = "debug", name = "storage.find_by_provider_sid", skip_all)]
    pub(crate) async fn find_by_provider_sid(
        &self,
        provider_sid: &str,
    ) -> Result<Option<Verification>, StoreError> {
        fetch_verification(
            sqlx::query_as(sql::FIND_BY_PROVIDER_SID).bind(provider_sid.to_owned()),
            &self.pool,
        )
        .await
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.find_by_idempotency_key",
        skip_all,
        fields(purpose = %purpose)
    )]
    pub(crate) async fn find_by_idempotency_key(
        &self,
        purpose: &Purpose,
        owner: &str,
        key: &IdempotencyKey,
    ) -> Result<Option<Verification>, StoreError> {
        fetch_verification(
            sqlx::query_as(sql::FIND_BY_IDEMPOTENCY_KEY)
                .bind(purpose.as_str().to_owned())
                .bind(owner.to_owned())
                .bind(key.as_str().to_owned()),
            &self.pool,
        )
        .await
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.find_pending",
        skip_all,
        fields(purpose = %purpose, destination_hash = destination.short())
    )]
    pub(crate) async fn find_pending(
        &self,
        purpose: &Purpose,
        destination: &DestinationHash,
        now: DateTime<Utc>,
    ) -> Result<Option<Verification>, StoreError> {
        fetch_verification(
            sqlx::query_as(sql::FIND_PENDING)
                .bind(purpose.as_str().to_owned())
                .bind(destination.as_str().to_owned())
                .bind(to_millis(now)),
            &self.pool,
        )
        .await
    }

    /// Writes `verification` if its row still has `expected_version`, in one statement with
    /// concurrent updates of other rows (the `update` lane).
    #[tracing::instrument(
        level = "debug",
        name = "storage.update",
        skip_all,
        fields(
            verification_id = %verification.id(),
            expected_version = expected_version,
            version = verification.version()
        )
    )]
    pub(crate) async fn update(
        &self,
        verification: &Verification,
        expected_version: u32,
    ) -> Result<(), StoreError> {
        let row = VerificationRow::from(verification);
        if self
            .lanes
            .update
            .call((row, i64::from(expected_version)))
            .await?
        {
            return Ok(());
        }
        Err(self.why_not_updated(verification).await)
    }

    /// Why an optimistic update matched nothing: someone else moved the row on
    /// (`Conflict`), or it was never there (`NotFound`).
    async fn why_not_updated(&self, verification: &Verification) -> StoreError {
        let stored: Result<Option<i64>, StoreError> = sqlx::query_scalar(sql::VERSION_OF)
            .bind(verification.id().to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(read_error);
        match stored {
            Ok(Some(stored_version)) => {
                tracing::debug!(stored_version, "optimistic update lost to a newer write");
                StoreError::Conflict(verification.id())
            }
            Ok(None) => StoreError::NotFound(verification.id()),
            Err(e) => e,
        }
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.list_sealed_with_other_key",
        skip_all,
        fields(limit)
    )]
    pub(crate) async fn list_sealed_with_other_key(
        &self,
        current_key_id: &str,
        limit: u32,
    ) -> Result<Vec<Verification>, StoreError> {
        let rows: Vec<VerificationRow> = sqlx::query_as(sql::SEALED_WITH_OTHER_KEY)
            .bind(current_key_id.to_owned())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(read_error)?;
        crate::row::verifications(rows)
    }

    #[tracing::instrument(
        level = "debug",
        name = "storage.list_unconfirmed",
        skip_all,
        fields(limit)
    )]
    pub(crate) async fn list_unconfirmed(
        &self,
        created_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Verification>, StoreError> {
        let rows: Vec<VerificationRow> = sqlx::query_as(sql::UNCONFIRMED)
            .bind(to_millis(created_before))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(read_error)?;
        crate::row::verifications(rows)
    }
}

/// Implements [`domain::ports::VerificationStore`], [`domain::ports::DeliveryReportStore`],
/// [`domain::ports::Outbox`], [`domain::abuse::RateLimitStore`] and
/// [`domain::abuse::RiskStore`] for a backend store with a `repo` field, and
/// [`domain::events::DedupeStore`] for its dedupe store (with `repo` and `lease` fields), by
/// handing every call to the [`Repo`].
macro_rules! delegate_store {
    ($store:ty, $dedupe:ty) => {
        #[async_trait::async_trait]
        impl domain::ports::VerificationStore for $store {
            async fn insert(
                &self,
                verification: &domain::Verification,
            ) -> Result<domain::ports::Inserted, domain::ports::StoreError> {
                self.repo.insert(verification).await
            }

            async fn insert_limited(
                &self,
                verification: &domain::Verification,
                limits: &[domain::abuse::LimitRequest],
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<domain::ports::Limited<domain::ports::Inserted>, domain::ports::StoreError>
            {
                self.repo.insert_limited(verification, limits, now).await
            }

            async fn update_limited(
                &self,
                verification: &mut domain::Verification,
                limits: &[domain::abuse::LimitRequest],
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<domain::ports::Limited<()>, domain::ports::StoreError> {
                let expected = verification.stored_version();
                let limited = self
                    .repo
                    .update_limited(verification, expected, limits, now)
                    .await?;
                if let domain::ports::Limited::Done { .. } = limited {
                    verification.mark_stored();
                }
                Ok(limited)
            }

            async fn get(
                &self,
                id: &domain::VerificationId,
            ) -> Result<Option<domain::Verification>, domain::ports::StoreError> {
                self.repo.get(id).await
            }

            async fn find_by_provider_sid(
                &self,
                provider_sid: &str,
            ) -> Result<Option<domain::Verification>, domain::ports::StoreError> {
                self.repo.find_by_provider_sid(provider_sid).await
            }

            async fn find_by_idempotency_key(
                &self,
                purpose: &domain::Purpose,
                owner: &str,
                key: &domain::IdempotencyKey,
            ) -> Result<Option<domain::Verification>, domain::ports::StoreError> {
                self.repo.find_by_idempotency_key(purpose, owner, key).await
            }

            async fn find_pending(
                &self,
                purpose: &domain::Purpose,
                destination: &domain::DestinationHash,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<domain::Verification>, domain::ports::StoreError> {
                self.repo.find_pending(purpose, destination, now).await
            }

            async fn update(
                &self,
                verification: &mut domain::Verification,
            ) -> Result<(), domain::ports::StoreError> {
                let expected = verification.stored_version();
                self.repo.update(verification, expected).await?;
                verification.mark_stored();
                Ok(())
            }

            async fn list_sealed_with_other_key(
                &self,
                current_key_id: &str,
                limit: u32,
            ) -> Result<Vec<domain::Verification>, domain::ports::StoreError> {
                self.repo
                    .list_sealed_with_other_key(current_key_id, limit)
                    .await
            }

            async fn list_unconfirmed(
                &self,
                created_before: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<Vec<domain::Verification>, domain::ports::StoreError> {
                self.repo.list_unconfirmed(created_before, limit).await
            }
        }

        #[async_trait::async_trait]
        impl domain::ports::DeliveryReportStore for $store {
            async fn record_report(
                &self,
                report: &domain::delivery::DeliveryReport,
                event: &domain::events::Envelope,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<domain::ports::Recorded, domain::ports::StoreError> {
                self.repo.record_report(report, event, now).await
            }
        }

        #[async_trait::async_trait]
        impl domain::ports::Outbox for $store {
            async fn enqueue(
                &self,
                envelope: &domain::events::Envelope,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<domain::ports::Recorded, domain::ports::StoreError> {
                self.repo.enqueue(envelope, now).await
            }

            async fn claim(
                &self,
                limit: u32,
                now: chrono::DateTime<chrono::Utc>,
                lease: std::time::Duration,
            ) -> Result<Vec<domain::ports::OutboxMessage>, domain::ports::StoreError> {
                self.repo.claim_outbox(limit, now, lease).await
            }

            async fn mark_published(
                &self,
                ids: &[i64],
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), domain::ports::StoreError> {
                self.repo.mark_published(ids, now).await
            }

            async fn retry_later(
                &self,
                id: i64,
                at: chrono::DateTime<chrono::Utc>,
                error: &str,
            ) -> Result<(), domain::ports::StoreError> {
                self.repo.retry_later(id, at, error).await
            }

            async fn set_aside(
                &self,
                id: i64,
                error: &str,
            ) -> Result<(), domain::ports::StoreError> {
                self.repo.set_aside(id, error).await
            }

            async fn count_set_aside(&self) -> Result<u64, domain::ports::StoreError> {
                self.repo.count_set_aside().await
            }

            async fn purge_published(
                &self,
                older_than: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, domain::ports::StoreError> {
                self.repo.purge_published(older_than).await
            }
        }

        #[async_trait::async_trait]
        impl domain::abuse::RateLimitStore for $store {
            async fn take(
                &self,
                requests: &[domain::abuse::LimitRequest],
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<domain::abuse::LimitDecision>, domain::ports::StoreError> {
                self.repo.take_limits(requests, now).await
            }

            async fn peek(
                &self,
                requests: &[domain::abuse::LimitRequest],
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<domain::abuse::LimitDecision>, domain::ports::StoreError> {
                self.repo.peek_limits(requests, now).await
            }

            async fn purge_limits(
                &self,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, domain::ports::StoreError> {
                self.repo.purge_limits(now).await
            }
        }

        #[async_trait::async_trait]
        impl domain::abuse::RiskStore for $store {
            async fn add_counts(
                &self,
                adds: &[domain::abuse::CountAdd],
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), domain::ports::StoreError> {
                self.repo.add_counts(adds, now).await
            }

            async fn read_counts(
                &self,
                queries: &[domain::abuse::CountQuery],
            ) -> Result<Vec<domain::abuse::Counts>, domain::ports::StoreError> {
                self.repo.read_counts(queries).await
            }

            async fn purge_counts(
                &self,
                older_than: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, domain::ports::StoreError> {
                self.repo.purge_counts(older_than).await
            }

            async fn purge_blocks(
                &self,
                older_than: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, domain::ports::StoreError> {
                self.repo.purge_blocks(older_than).await
            }

            async fn add_block(
                &self,
                block: &domain::abuse::Block,
            ) -> Result<domain::abuse::BlockAdded, domain::ports::StoreError> {
                self.repo.add_block(block).await
            }

            async fn active_blocks(
                &self,
                targets: &[domain::abuse::BlockTarget],
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<domain::abuse::Block>, domain::ports::StoreError> {
                self.repo.active_blocks(targets, now).await
            }

            async fn read_signals(
                &self,
                queries: &[domain::abuse::CountQuery],
                targets: &[domain::abuse::BlockTarget],
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<
                (Vec<domain::abuse::Counts>, Vec<domain::abuse::Block>),
                domain::ports::StoreError,
            > {
                self.repo.read_signals(queries, targets, now).await
            }

            async fn add_counts_marked(
                &self,
                adds: &[domain::abuse::CountAdd],
                now: chrono::DateTime<chrono::Utc>,
                mark: &domain::abuse::FlushMark,
            ) -> Result<(), domain::ports::StoreError> {
                self.repo.add_counts_marked(adds, now, mark).await
            }

            async fn read_signals_marked(
                &self,
                queries: &[domain::abuse::CountQuery],
                targets: &[domain::abuse::BlockTarget],
                now: chrono::DateTime<chrono::Utc>,
                replica: &str,
            ) -> Result<domain::abuse::Signals, domain::ports::StoreError> {
                self.repo
                    .read_signals_marked(queries, targets, now, replica)
                    .await
            }

            async fn list_blocks(
                &self,
                kind: Option<domain::abuse::BlockKind>,
                now: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<Vec<domain::abuse::Block>, domain::ports::StoreError> {
                self.repo.list_blocks(kind, now, limit).await
            }

            async fn lift_block(
                &self,
                target: &domain::abuse::BlockTarget,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, domain::ports::StoreError> {
                self.repo.lift_block(target, now).await
            }
        }

        #[async_trait::async_trait]
        impl domain::events::DedupeStore for $dedupe {
            async fn claim(
                &self,
                consumer: &str,
                message_id: domain::events::MessageId,
            ) -> Result<domain::events::Claim, domain::events::DedupeError> {
                self.repo
                    .claim_message(consumer, message_id, self.lease)
                    .await
            }

            async fn complete(
                &self,
                consumer: &str,
                message_id: domain::events::MessageId,
            ) -> Result<(), domain::events::DedupeError> {
                self.repo.complete_message(consumer, message_id).await
            }

            async fn release(
                &self,
                consumer: &str,
                message_id: domain::events::MessageId,
            ) -> Result<(), domain::events::DedupeError> {
                self.repo.release_message(consumer, message_id).await
            }
        }
    };
}
pub(crate) use delegate_store;
