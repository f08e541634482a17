-- A verification belongs to the caller that started it.
--
-- `owner` is the name of the configured caller (`[callers.<name>]`) that started the
-- verification; only that caller may read, check, cancel or resend it, and anyone else is
-- answered as for an unknown id. The empty string is the owner of every verification
-- started while the gateway served without callers (the embedded default on loopback), so
-- rows written before this migration stay reachable exactly as they were. Not NULL: the
-- unique index below must treat two starts without a caller as the same owner.
--
-- The column's CHECK is its domain's (see 0009: a domain's check is planned once per
-- connection). Adding a NOT NULL column with a constant default does not rewrite the table.
CREATE DOMAIN caller_name AS TEXT
    CONSTRAINT caller_name_check CHECK (VALUE ~ '^[a-z0-9_-]{0,64}$');

ALTER TABLE verifications ADD COLUMN owner caller_name NOT NULL DEFAULT '';

-- An idempotency key names one request of one caller: two callers using the same key for
-- a purpose are two requests, and neither may receive the other's verification. The new
-- index is built before the old one goes, so no moment is without one; building it reads
-- the rows that hold a key and blocks writes to `verifications` meanwhile: on a large
-- table, migrate at a quiet time.
CREATE UNIQUE INDEX verifications_purpose_owner_idempotency_key
    ON verifications (purpose, owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
DROP INDEX verifications_purpose_idempotency_key;
