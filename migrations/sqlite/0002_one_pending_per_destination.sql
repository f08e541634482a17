-- At most one pending verification per purpose and destination, enforced by the database
-- so it holds across connections however starts interleave (SQLite).
--
-- Databases written before this rule may hold several pending rows for one purpose and
-- destination (two concurrent starts). All but the newest (by created_at, then id) give up
-- the slot as `expired`, versioned like any transition, so the unique index can be built;
-- the newest is the one a start would already have resent on. `updated_at` is now, in
-- milliseconds (julianday arithmetic, which every SQLite version has).
UPDATE verifications
SET status = 'expired',
    updated_at = max(updated_at,
                     CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    version = version + 1
WHERE status = 'pending'
  AND EXISTS (
      SELECT 1 FROM verifications AS newer
      WHERE newer.status = 'pending'
        AND newer.purpose = verifications.purpose
        AND newer.destination_hash = verifications.destination_hash
        AND (newer.created_at > verifications.created_at
             OR (newer.created_at = verifications.created_at AND newer.id > verifications.id))
  );

-- The new unique index answers "the pending verification for this purpose and
-- destination" on its own, so the older non-unique one goes.
DROP INDEX verifications_pending_by_destination;

CREATE UNIQUE INDEX verifications_one_pending_per_destination
    ON verifications (purpose, destination_hash)
    WHERE status = 'pending';
