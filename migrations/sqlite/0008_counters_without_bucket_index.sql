-- Scoring's counters lose their index by minute. Nearly every key a start counts is new
-- (its destination, its block of 100 numbers, its client IP), so each one cost two random
-- B-tree inserts: the row and its index entry, each a page of the WAL and of the file.
-- Only the purge read that index; it now sweeps the primary key in slices instead (see
-- `SqliteRepo::purge_counts`), which costs a scan of the table per purge, not an index
-- entry per count.
DROP INDEX risk_counters_by_bucket;
