-- Abuse protection (PostgreSQL): verifications fraud scoring refused (`blocked`) and the
-- assessment behind every scored start, the rate limiter's shared GCRA state, the windowed
-- counters fraud scoring reads, and blocks. The same columns, tables, constraints and
-- indexes as SQLite's migration 0006, so both backends share one row representation;
-- timestamps are BIGINT milliseconds since the Unix epoch (UTC).

-- One ALTER, so the table is locked once and scanned once to check both constraints. The
-- new status CHECK only admits more than the old one, and the new column starts NULL
-- everywhere (adding a nullable column without a default rewrites nothing).
ALTER TABLE verifications
    DROP CONSTRAINT verifications_status_check,
    -- `blocked`: never sent, because fraud scoring refused the start (see `risk`).
    ADD CONSTRAINT verifications_status_check
        CHECK (status IN ('pending', 'approved', 'canceled', 'expired',
                          'max_attempts_reached', 'failed', 'blocked')),
    -- Fraud scoring's verdict on the start, as a JSON object:
    -- {"decision":"block","score":90,"shadow":false,
    --  "reasons":[{"code":"PREMIUM_RATE_NUMBER","message":"…","weight":60}]}.
    -- Reasons name prefixes and countries at most, never a destination. NULL when scoring
    -- did not run (and for every row written before it existed). TEXT rather than JSONB so
    -- the text read back is the text written, as on SQLite; the CHECK still parses it.
    ADD COLUMN risk TEXT
        CHECK (risk IS NULL OR json_typeof(risk::json) = 'object');

-- The rate limiter's state, shared by every replica: per key (what is counted, e.g.
-- `send:login:ip:203.0.113.0`; destinations only as their blind-index hash) the GCRA's
-- theoretical arrival time. A take updates its key in one `INSERT … ON CONFLICT DO UPDATE`,
-- so concurrent takes from any replica queue on the row lock and each sees the previous
-- one's result.
--
-- Every take rewrites its row: the free space left in each page (fillfactor) lets those
-- updates stay on the page (HOT), with no index write and little bloat.
CREATE TABLE rate_limits (
    key         TEXT    NOT NULL PRIMARY KEY,
    -- The theoretical arrival time; a key whose `tat` has passed holds no information and
    -- is purged. Deliberately not indexed: every take moves it, and an index on it would
    -- cost every take an index write (and its HOT update) to save the purge a scan.
    tat         BIGINT  NOT NULL,
    -- The quota of the latest take (`period / limit` and `period`), which the upsert reads
    -- back from the row it proposed (`excluded`); it also shows which quota governs the key.
    interval_ms BIGINT  NOT NULL CHECK (interval_ms > 0),
    period_ms   BIGINT  NOT NULL CHECK (period_ms >= interval_ms),
    -- Whether the latest take was allowed. A refused take leaves `tat` as it was, so the
    -- upsert records its decision here, in the same statement, to return it.
    allowed     BOOLEAN NOT NULL
) WITH (fillfactor = 80);

-- Fraud scoring's windowed counters: per key (`country:GB`, `prefix:+4479111`,
-- `ipfan:203.0.113.7`; never a raw destination) and minute (`bucket`, the minute's start),
-- how many starts were attempted and how many of them were approved. A window sums whole
-- minutes along the primary key. Counts of the current minute are updated in place (HOT,
-- as for `rate_limits`).
CREATE TABLE risk_counters (
    key      TEXT    NOT NULL,
    bucket   BIGINT  NOT NULL,
    attempts BIGINT  NOT NULL CHECK (attempts >= 0),
    approved BIGINT  NOT NULL CHECK (approved >= 0),
    PRIMARY KEY (key, bucket)
) WITH (fillfactor = 80);

-- What the purge deletes: the oldest minutes. A bucket never changes once written, so the
-- index costs one entry per key and minute, and counting stays a HOT update.
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
    shadow     BOOLEAN NOT NULL,
    created_at BIGINT  NOT NULL,
    -- The block is in force while `expires_at` is after now; lifting it ends it at once.
    expires_at BIGINT  NOT NULL,
    -- When an operator last lifted a block on the target. It outlives the block (a new
    -- block on the target keeps it), so scoring does not re-impose what an operator judged
    -- wrong before the new block's duration has passed since.
    lifted_at  BIGINT,
    PRIMARY KEY (kind, value)
);

-- The blocks in force (`expires_at` after now) are a range of this index.
CREATE INDEX risk_blocks_by_expiry
    ON risk_blocks (expires_at);
