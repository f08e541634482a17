-- Key rotation lists the rows sealed with keys other than the current one, oldest first
-- per key, a batch at a time (SQLite). Ordered by key id, then age, the rows of the old
-- keys are index ranges that a batch reads from the start and stops in.
CREATE INDEX verifications_by_key_id
    ON verifications (destination_key_id, created_at, id);
