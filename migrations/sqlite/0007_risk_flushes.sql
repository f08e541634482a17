-- Each replica's last write of its buffered scoring counters. A replica adds counts in
-- memory and writes them every 250 ms; it numbers those writes (1, 2, ...) and each write
-- sets `seq` here in the same transaction as the counts. A read of the counters reads its
-- replica's `seq` in the same snapshot, and so knows which of the replica's writes still in
-- flight it already sees: the counts in memory, in flight and in the store each count once,
-- without reads waiting for a write. `replica` is an id the process chose at start; rows
-- of replicas gone are purged with old counters (by `updated_at`, milliseconds since the
-- Unix epoch).
CREATE TABLE risk_flushes (
    replica    TEXT    NOT NULL PRIMARY KEY CHECK (length(replica) BETWEEN 1 AND 64),
    seq        INTEGER NOT NULL CHECK (seq >= 0),
    updated_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
