-- The takes of many guarded inserts in one call, so that one statement can insert the
-- verifications of many concurrent starts (the gateway's insert lane: starts that arrive
-- while the previous such statement runs share the next one).
--
-- `take_rate_limits_many(now_ms, inputs)` calls `take_rate_limits(now_ms[n], inputs[n],
-- TRUE)` (migrations 0005 and 0007) for n = 1, 2, … in order: each start's limits are taken
-- all or none, exactly as alone, and a later start sees the takes of the earlier ones. It
-- returns one row per start: its position `i` (from 1) and what `take_rate_limits`
-- returned for it.
--
-- Each call of `take_rate_limits` is a subtransaction; the gateway sends at most 32 starts
-- per call, within the 64 subtransactions a backend tracks without overflowing its cache.
-- The row locks of all the call's takes are held until its statement commits. One start
-- takes its keys in key order, but the starts of one call do so one after the other, so two
-- concurrent calls can wait for each other (a start without the country's key locking a
-- key that a later start of the other call holds); PostgreSQL then fails one of them after
-- `deadlock_timeout`, and the gateway runs that call's starts again one by one.
CREATE FUNCTION take_rate_limits_many(now_ms BIGINT[], inputs TEXT[])
RETURNS TABLE (
    i INTEGER,
    taken_keys TEXT[],
    taken_tats BIGINT[],
    taken_allowed BOOLEAN[],
    taken_at BIGINT[],
    all_allowed BOOLEAN
)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    FOR n IN 1 .. coalesce(array_length(inputs, 1), 0) LOOP
        i := n;
        SELECT t.taken_keys, t.taken_tats, t.taken_allowed, t.taken_at, t.all_allowed
        INTO taken_keys, taken_tats, taken_allowed, taken_at, all_allowed
        FROM take_rate_limits(now_ms[n], inputs[n]::json, TRUE) AS t;
        RETURN NEXT;
    END LOOP;
END
$$;
