-- The rate limiter's take as a server-side function, so that a write guarded by limits (a
-- start's insert, a check's claim) is one statement: its limits are taken and its row
-- written in one round trip, and the hot rows it locks (the country's limit, which every
-- start takes) are held until the commit for server time only, never across a round trip
-- to the gateway. Before, a guarded write was `BEGIN`, the take, the write and `COMMIT`,
-- and every start queued on the country row for the three round trips that followed its
-- take.
--
-- `take_rate_limits(now_ms, input, all_or_none)` takes one event from each key of `input`
-- (a JSON array of distinct `{"key", "interval_ms", "period_ms"}` objects) at `now_ms`:
-- one GCRA step per key, as one upsert (see `rate_limits` in 0004). A new key's first event
-- is always allowed and stores `now + interval`; a stored key computes
-- `new_tat = greatest(tat, now) + interval` and is allowed when `new_tat - now <= period`,
-- then `tat` becomes `new_tat`, else it stays. Every `SET` expression reads the row as it
-- was before the statement, so `allowed` and `tat` decide on the same old `tat`. Keys are
-- proposed in key order, so calls sharing keys lock them in one order and cannot deadlock.
--
-- It returns, per key in no particular order, the stored `tat` and whether the take was
-- allowed (the gateway recovers the old `tat` from them and computes the decision with its
-- own copy of the GCRA maths), and `all_allowed`. With `all_or_none`, a refusal undoes every
-- take of the call (the block below is a subtransaction, rolled back by the exception it
-- raises; the arrays keep what the upsert returned): a refused start drains none of its
-- other limits.
CREATE FUNCTION take_rate_limits(
    now_ms BIGINT,
    input JSON,
    all_or_none BOOLEAN,
    OUT taken_keys TEXT[],
    OUT taken_tats BIGINT[],
    OUT taken_allowed BOOLEAN[],
    OUT all_allowed BOOLEAN
)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    BEGIN
        WITH taken AS (
            INSERT INTO rate_limits AS r (key, tat, interval_ms, period_ms, allowed)
            SELECT i.key, now_ms + i.interval_ms, i.interval_ms, i.period_ms, TRUE
            FROM json_to_recordset(input) AS i(key TEXT, interval_ms BIGINT, period_ms BIGINT)
            ORDER BY i.key
            ON CONFLICT (key) DO UPDATE SET
                tat = CASE
                    WHEN GREATEST(r.tat, now_ms) + excluded.interval_ms - now_ms
                        <= excluded.period_ms
                    THEN GREATEST(r.tat, now_ms) + excluded.interval_ms
                    ELSE r.tat
                END,
                allowed = GREATEST(r.tat, now_ms) + excluded.interval_ms - now_ms
                    <= excluded.period_ms,
                interval_ms = excluded.interval_ms,
                period_ms = excluded.period_ms
            RETURNING r.key, r.tat, r.allowed
        )
        SELECT COALESCE(array_agg(taken.key), '{}'),
               COALESCE(array_agg(taken.tat), '{}'),
               COALESCE(array_agg(taken.allowed), '{}'),
               COALESCE(bool_and(taken.allowed), TRUE)
        INTO taken_keys, taken_tats, taken_allowed, all_allowed
        FROM taken;
        IF all_or_none AND NOT all_allowed THEN
            RAISE EXCEPTION 'a limit refused: undo the takes' USING ERRCODE = 'VGL01';
        END IF;
    EXCEPTION WHEN SQLSTATE 'VGL01' THEN
        -- Every take above is undone; the OUT values stay as the upsert returned them.
        NULL;
    END;
END
$$;
