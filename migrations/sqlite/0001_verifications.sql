-- Our durable record of every verification (SQLite).
--
-- It never holds the one-time code, and never the plaintext destination: only the
-- AES-GCM ciphertext with the id of the key that sealed it, the HMAC blind index used for
-- lookups, and a display mask.
--
-- Timestamps are INTEGER milliseconds since the Unix epoch (UTC), so they sort and compare
-- as numbers and map one-to-one onto BIGINT in the PostgreSQL migrations.
-- STRICT makes SQLite refuse values of the wrong storage class instead of coercing them.

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
    destination_ciphertext BLOB    NOT NULL,
    destination_key_id     TEXT    NOT NULL,
    -- Hex HMAC-SHA256 of the canonical destination.
    destination_hash       TEXT    NOT NULL,
    to_masked              TEXT    NOT NULL,
    identity               TEXT,
    idempotency_key        TEXT
        CHECK (idempotency_key IS NULL OR length(idempotency_key) BETWEEN 1 AND 128),
    sends                  INTEGER NOT NULL CHECK (sends >= 0),
    checks                 INTEGER NOT NULL CHECK (checks >= 0),
    max_sends              INTEGER NOT NULL CHECK (max_sends >= 0),
    max_checks             INTEGER NOT NULL CHECK (max_checks >= 0),
    -- The provider's error code when the verification failed (e.g. Twilio 60200).
    failure_code           INTEGER CHECK (failure_code IS NULL OR failure_code >= 0),
    created_at             INTEGER NOT NULL,
    updated_at             INTEGER NOT NULL,
    expires_at             INTEGER NOT NULL,
    -- Bumped by every transition; updates are conditional on it (optimistic concurrency).
    version                INTEGER NOT NULL CHECK (version >= 0)
) STRICT;

-- The database, not the application, decides which of two concurrent starts with the same
-- key wins, so idempotency holds across connections and replicas. Rows without a key are
-- left out: they never collide.
CREATE UNIQUE INDEX verifications_purpose_idempotency_key
    ON verifications (purpose, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- "The newest pending verification for this purpose and destination". Only pending rows
-- are indexed, so the index stays small however many finished verifications accumulate.
CREATE INDEX verifications_pending_by_destination
    ON verifications (purpose, destination_hash, created_at)
    WHERE status = 'pending';
