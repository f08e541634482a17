-- Abuse protection (SQLite): verifications fraud scoring refused (`blocked`) and the
-- assessment behind every scored start, the rate limiter's shared GCRA state, the windowed
-- counters fraud scoring reads, and blocks. The PostgreSQL migration 0004 makes the same
-- columns, tables, constraints and indexes.
--
-- Timestamps are INTEGER milliseconds since the Unix epoch (UTC), as everywhere else.

-- SQLite cannot change a CHECK constraint in place, so `verifications` is rebuilt by
-- SQLite's documented procedure: a new table under another name, filled from the old one,
-- which is then dropped, and the new one renamed. No other table references it, so foreign
-- keys play no part, and the migration runs in one transaction: a failure leaves the old
-- table as it was. The indexes go with the old table and are made again, unchanged.
--
-- Besides `blocked` and the new `risk` column, the rebuilt table bounds its counters to the
-- domain's u32 from above, as the PostgreSQL table always has (the reason it was not done
-- before was that it needs a rebuild). Rows the store wrote always fit.
CREATE TABLE verifications_rebuilt (
    -- `ver_` followed by 32 hex digits of a UUIDv7.
    id                     TEXT    NOT NULL PRIMARY KEY CHECK (length(id) > 0),
    purpose                TEXT    NOT NULL CHECK (length(purpose) BETWEEN 1 AND 64),
    channel                TEXT    NOT NULL
        CHECK (channel IN ('sms', 'call', 'email', 'whatsapp', 'sna')),
    -- `blocked`: never sent, because fraud scoring refused the start (see `risk`).
    status                 TEXT    NOT NULL
        CHECK (status IN ('pending', 'approved', 'canceled', 'expired',
                          'max_attempts_reached', 'failed', 'blocked')),
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
    sends                  INTEGER NOT NULL CHECK (sends BETWEEN 0 AND 4294967295),
    checks                 INTEGER NOT NULL CHECK (checks BETWEEN 0 AND 4294967295),
    max_sends              INTEGER NOT NULL CHECK (max_sends BETWEEN 0 AND 4294967295),
    max_checks             INTEGER NOT NULL CHECK (max_checks BETWEEN 0 AND 4294967295),
    -- The provider's error code when the verification failed (e.g. Twilio 60200).
    failure_code           INTEGER
        CHECK (failure_code IS NULL OR failure_code BETWEEN 0 AND 4294967295),
    created_at             INTEGER NOT NULL,
    updated_at             INTEGER NOT NULL,
    expires_at             INTEGER NOT NULL,
    -- Bumped by every transition; updates are conditional on it (optimistic concurrency).
    version                INTEGER NOT NULL CHECK (version BETWEEN 0 AND 4294967295),
    allow_fallback         INTEGER NOT NULL DEFAULT 0 CHECK (allow_fallback IN (0, 1)),
    -- Every channel used so far, in order, comma-separated (`sms,call`).
    channels_tried         TEXT    NOT NULL DEFAULT '',
    -- `no_delivery_report`, or `delivery_failed:<status>[:<error code>]`.
    fallback_reason        TEXT
        CHECK (fallback_reason IS NULL
               OR fallback_reason = 'no_delivery_report'
               OR fallback_reason LIKE 'delivery_failed:%'),
    -- The latest delivery status reported for the current send.
    delivery_status        TEXT
        CHECK (delivery_status IS NULL
               OR delivery_status IN ('queued', 'sent', 'delivered', 'read', 'undelivered',
                                      'failed')),
    -- The W3C `traceparent` of the start that made the latest send.
    trace_parent           TEXT
        CHECK (trace_parent IS NULL OR length(trace_parent) BETWEEN 1 AND 256),
    -- Fraud scoring's verdict on the start, as a JSON object:
    -- {"decision":"block","score":90,"shadow":false,
    --  "reasons":[{"code":"PREMIUM_RATE_NUMBER","message":"…","weight":60}]}.
    -- Reasons name prefixes and countries at most, never a destination. NULL when scoring
    -- did not run (and for every row written before it existed).
    risk                   TEXT
        CHECK (risk IS NULL OR (json_valid(risk) AND json_type(risk) = 'object'))
) STRICT;

INSERT INTO verifications_rebuilt (
    id, purpose, channel, status, provider_sid, destination_ciphertext, destination_key_id,
    destination_hash, to_masked, identity, idempotency_key, sends, checks, max_sends,
    max_checks, failure_code, created_at, updated_at, expires_at, version, allow_fallback,
    channels_tried, fallback_reason, delivery_status, trace_parent)
SELECT
    id, purpose, channel, status, provider_sid, destination_ciphertext, destination_key_id,
    destination_hash, to_masked, identity, idempotency_key, sends, checks, max_sends,
    max_checks, failure_code, created_at, updated_at, expires_at, version, allow_fallback,
    channels_tried, fallback_reason, delivery_status, trace_parent
FROM verifications;

DROP TABLE verifications;
ALTER TABLE verifications_rebuilt RENAME TO verifications;

-- The indexes of migrations 0001 to 0004, as they were.
CREATE UNIQUE INDEX verifications_purpose_idempotency_key
    ON verifications (purpose, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE UNIQUE INDEX verifications_one_pending_per_destination
    ON verifications (purpose, destination_hash)
    WHERE status = 'pending';

CREATE INDEX verifications_by_key_id
    ON verifications (destination_key_id, created_at, id);

CREATE INDEX verifications_by_provider_sid
    ON verifications (provider_sid, created_at, id)
    WHERE provider_sid IS NOT NULL;

-- The rate limiter's state, shared by every process on the database: per key (what is
-- counted, e.g. `send:login:ip:203.0.113.0`; destinations only as their blind-index hash)
-- the GCRA's theoretical arrival time. A take updates its key in one upsert, so concurrent
-- takes queue on the row and each sees the previous one's result.
CREATE TABLE rate_limits (
    key         TEXT    NOT NULL PRIMARY KEY,
    -- The theoretical arrival time; a key whose `tat` has passed holds no information and
    -- is purged. Deliberately not indexed: every take moves it, and the purge's occasional
    -- scan costs less than an index write on every take.
    tat         INTEGER NOT NULL,
    -- The quota of the latest take (`period / limit` and `period`), which the upsert reads
    -- back from the row it proposed; it also shows which quota governs the key.
    interval_ms INTEGER NOT NULL CHECK (interval_ms > 0),
    period_ms   INTEGER NOT NULL CHECK (period_ms >= interval_ms),
    -- Whether the latest take was allowed. A refused take leaves `tat` as it was, so the
    -- upsert records its decision here, in the same statement, to return it.
    allowed     INTEGER NOT NULL CHECK (allowed IN (0, 1))
) STRICT, WITHOUT ROWID;

-- Fraud scoring's windowed counters: per key (`country:GB`, `prefix:+4479111`,
-- `ipfan:203.0.113.7`; never a raw destination) and minute (`bucket`, the minute's start),
-- how many starts were attempted and how many of them were approved. A window sums whole
-- minutes along the primary key.
CREATE TABLE risk_counters (
    key      TEXT    NOT NULL,
    bucket   INTEGER NOT NULL,
    attempts INTEGER NOT NULL CHECK (attempts >= 0),
    approved INTEGER NOT NULL CHECK (approved >= 0),
    PRIMARY KEY (key, bucket)
) STRICT, WITHOUT ROWID;

-- What the purge deletes: the oldest minutes. A bucket never changes once written, so the
-- index costs one entry per key and minute, not a write per count.
CREATE INDEX risk_counters_by_bucket
    ON risk_counters (bucket);

-- Blocks, one row per target: the current (or latest) block on it. A later block on a
-- target whose block is still in force extends it; one on a target whose block ended
-- replaces it.
CREATE TABLE risk_blocks (
    kind       TEXT    NOT NULL CHECK (kind IN ('prefix', 'country', 'destination', 'ip')),
    -- `+4479111`, `GB`, a destination's blind-index hash, `203.0.113.7`, `2001:db8::/64`.
    value      TEXT    NOT NULL,
    -- The reason's code (`PREFIX_LOW_CONVERSION`) and a sentence for support engineers.
    reason     TEXT    NOT NULL,
    detail     TEXT    NOT NULL,
    source     TEXT    NOT NULL CHECK (source IN ('scoring', 'provider', 'operator')),
    -- Imposed by scoring in shadow mode: listed and reported, never enforced.
    shadow     INTEGER NOT NULL CHECK (shadow IN (0, 1)),
    created_at INTEGER NOT NULL,
    -- The block is in force while `expires_at` is after now; lifting it ends it at once.
    expires_at INTEGER NOT NULL,
    -- When an operator last lifted a block on the target. It outlives the block (a new
    -- block on the target keeps it), so scoring does not re-impose what an operator judged
    -- wrong before the new block's duration has passed since.
    lifted_at  INTEGER,
    PRIMARY KEY (kind, value)
) STRICT, WITHOUT ROWID;

-- The blocks in force (`expires_at` after now) are a range of this index.
CREATE INDEX risk_blocks_by_expiry
    ON risk_blocks (expires_at);
