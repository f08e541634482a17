-- Delivery-aware fallback (SQLite): what a verification records about its channels and
-- their deliveries, its lookup by the provider's id, the delivery reports received, the
-- transactional outbox, and the memory of messages consumers have handled.
--
-- Timestamps are INTEGER milliseconds since the Unix epoch (UTC), as in `verifications`.
-- The PostgreSQL migration 0002 makes the same tables, constraints and indexes.

-- Rows written before: their callers never allowed a fallback, only their current channel
-- was tried, no fallback happened and no delivery status is known.
ALTER TABLE verifications ADD COLUMN allow_fallback INTEGER NOT NULL DEFAULT 0
    CHECK (allow_fallback IN (0, 1));
-- Every channel used so far, in order, comma-separated (`sms,call`); the last one is
-- `channel`. A new column cannot default to another column, so older rows get theirs from
-- the UPDATE below; the store always writes the column.
ALTER TABLE verifications ADD COLUMN channels_tried TEXT NOT NULL DEFAULT '';
-- Why the last fallback happened: `no_delivery_report`, or `delivery_failed:` and the
-- reported status, with `:` and the provider's error code when it gave one
-- (`delivery_failed:undelivered:30003`).
ALTER TABLE verifications ADD COLUMN fallback_reason TEXT
    CHECK (fallback_reason IS NULL
           OR fallback_reason = 'no_delivery_report'
           OR fallback_reason LIKE 'delivery_failed:%');
-- The latest delivery status reported for the current send.
ALTER TABLE verifications ADD COLUMN delivery_status TEXT
    CHECK (delivery_status IS NULL
           OR delivery_status IN ('queued', 'sent', 'delivered', 'read', 'undelivered', 'failed'));

-- Not a transition of the verification: `updated_at` and `version` stay as they are.
UPDATE verifications SET channels_tried = channel;

-- Delivery reports name the provider's verification (`VE…`), not ours. Twilio answers a
-- start for a destination with a pending verification in the same Verify Service with that
-- one's id, so several rows may share one: the lookup takes the newest, in index order.
CREATE INDEX verifications_by_provider_sid
    ON verifications (provider_sid, created_at, id)
    WHERE provider_sid IS NOT NULL;

-- Every delivery report received, once: a report whose key is stored already is a duplicate
-- (Twilio retries callbacks and may send one event twice). Reports carry no destination and
-- no message body.
CREATE TABLE delivery_reports (
    id           INTEGER NOT NULL PRIMARY KEY,
    -- `ce:<CloudEvent id>` or `ms:<MessageSid>:<status>`.
    dedupe_key   TEXT    NOT NULL UNIQUE CHECK (length(dedupe_key) BETWEEN 1 AND 512),
    -- The provider's verification (`VE…`) and message or attempt (`SM…`, `VL…`) ids.
    provider_sid TEXT,
    message_sid  TEXT,
    channel      TEXT
        CHECK (channel IS NULL OR channel IN ('sms', 'call', 'email', 'whatsapp', 'sna')),
    status       TEXT    NOT NULL
        CHECK (status IN ('queued', 'sent', 'delivered', 'read', 'undelivered', 'failed')),
    error_code   INTEGER CHECK (error_code IS NULL OR error_code >= 0),
    -- When the provider says it happened, and when the gateway received it.
    occurred_at  INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    -- The outbox message recorded in the same transaction.
    message_id   TEXT    NOT NULL
) STRICT;

-- The transactional outbox: events written in the transaction of the state they describe,
-- published to the bus afterwards by relays that claim due rows with a lease.
-- AUTOINCREMENT so the id of a purged row is never handed to a new one while a relay may
-- still hold it.
CREATE TABLE outbox (
    id              INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    -- The envelope: a UUID, the dotted kind, the payload's schema version, when it
    -- happened, the headers as a JSON object of strings and the payload's bytes.
    message_id      TEXT    NOT NULL UNIQUE CHECK (length(message_id) BETWEEN 1 AND 64),
    kind            TEXT    NOT NULL CHECK (length(kind) BETWEEN 1 AND 255),
    version         INTEGER NOT NULL CHECK (version >= 0),
    occurred_at     INTEGER NOT NULL,
    headers         TEXT    NOT NULL,
    payload         BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    -- NULL until a relay published it.
    published_at    INTEGER,
    -- Failed publishing attempts, and the last one's error.
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      TEXT,
    -- Due for (another) attempt from then on; a claim moves it to the end of its lease.
    next_attempt_at INTEGER NOT NULL
) STRICT;

-- What a relay claims: unpublished rows by due time. Only unpublished rows are indexed, so
-- the index stays small however many published rows wait for the purge.
CREATE INDEX outbox_due
    ON outbox (next_attempt_at, id)
    WHERE published_at IS NULL;

-- What the purge deletes: published rows by publishing time.
CREATE INDEX outbox_published
    ON outbox (published_at)
    WHERE published_at IS NOT NULL;

-- The message ids each consumer has handled (`done`) or is handling (`in_progress`, until
-- `lease_until`), shared by every replica so a redelivered message has no second effect.
-- Its times come from the database's clock, one clock for all replicas.
CREATE TABLE processed_messages (
    consumer     TEXT    NOT NULL CHECK (length(consumer) BETWEEN 1 AND 255),
    message_id   TEXT    NOT NULL CHECK (length(message_id) BETWEEN 1 AND 64),
    state        TEXT    NOT NULL CHECK (state IN ('in_progress', 'done')),
    lease_until  INTEGER,
    claimed_at   INTEGER NOT NULL,
    completed_at INTEGER,
    PRIMARY KEY (consumer, message_id),
    CHECK ((state = 'in_progress') = (lease_until IS NOT NULL)),
    CHECK ((state = 'done') = (completed_at IS NOT NULL))
) STRICT, WITHOUT ROWID;
