-- Our durable record of every verification (PostgreSQL).
--
-- It never holds the one-time code, and never the plaintext destination: only the
-- AES-GCM ciphertext with the id of the key that sealed it, the HMAC blind index used for
-- lookups, and a display mask.
--
-- The same table, constraints and indexes as the SQLite migrations combined, so both
-- backends share one row representation and every statement: timestamps are BIGINT
-- milliseconds since the Unix epoch (UTC), counters BIGINT (the integer the code reads).
-- The counters' CHECKs also bound them to the domain's u32 from above, which the SQLite
-- table cannot gain without being rebuilt.

CREATE TABLE verifications (
    -- `ver_` followed by 32 hex digits of a UUIDv7.
    id                     TEXT    NOT NULL PRIMARY KEY CHECK (length(id) > 0),
    purpose                TEXT    NOT NULL CHECK (length(purpose) BETWEEN 1 AND 64),
    channel                TEXT    NOT NULL
        CHECK (channel IN ('sms', 'call', 'email', 'whatsapp', 'sna')),
    status                 TEXT    NOT NULL
        CHECK (status IN ('pending', 'approved', 'canceled', 'expired',
                          'max_attempts_reached', 'failed')),
    -- Twilio's `VE…` sid, once Twilio accepted the send.
    provider_sid           TEXT,
    destination_ciphertext BYTEA   NOT NULL,
    destination_key_id     TEXT    NOT NULL,
    -- Hex HMAC-SHA256 of the canonical destination.
    destination_hash       TEXT    NOT NULL,
    to_masked              TEXT    NOT NULL,
    identity               TEXT,
    idempotency_key        TEXT
        CHECK (idempotency_key IS NULL OR length(idempotency_key) BETWEEN 1 AND 128),
    sends                  BIGINT  NOT NULL CHECK (sends BETWEEN 0 AND 4294967295),
    checks                 BIGINT  NOT NULL CHECK (checks BETWEEN 0 AND 4294967295),
    max_sends              BIGINT  NOT NULL CHECK (max_sends BETWEEN 0 AND 4294967295),
    max_checks             BIGINT  NOT NULL CHECK (max_checks BETWEEN 0 AND 4294967295),
    -- The provider's error code when the verification failed (e.g. Twilio 60200).
    failure_code           BIGINT
        CHECK (failure_code IS NULL OR failure_code BETWEEN 0 AND 4294967295),
    created_at             BIGINT  NOT NULL,
    updated_at             BIGINT  NOT NULL,
    expires_at             BIGINT  NOT NULL,
    -- Bumped by every transition; updates are conditional on it (optimistic concurrency).
    version                BIGINT  NOT NULL CHECK (version BETWEEN 0 AND 4294967295)
);

-- The database, not the application, decides which of two concurrent starts with the same
-- key wins, so idempotency holds across connections and replicas. Rows without a key are
-- left out: they never collide.
CREATE UNIQUE INDEX verifications_purpose_idempotency_key
    ON verifications (purpose, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- At most one pending verification per purpose and destination, decided by the database
-- for all replicas; it also answers "the pending verification for this destination".
-- Only pending rows are indexed, so it stays small however many finished ones accumulate.
CREATE UNIQUE INDEX verifications_one_pending_per_destination
    ON verifications (purpose, destination_hash)
    WHERE status = 'pending';

-- Key rotation lists the rows sealed with keys other than the current one, oldest first
-- per key, a batch at a time: index ranges a batch reads from the start and stops in.
CREATE INDEX verifications_by_key_id
    ON verifications (destination_key_id, created_at, id);
