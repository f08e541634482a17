-- The limiter decides each take at the latest time its key has been taken at, not before
-- (the same column as SQLite's migration 0009).
--
-- A take is stamped by the gateway when its request arrives and reaches the row after a
-- round trip and, on a hot key, a wait for the row lock, so takes of one key (from any
-- replica) can reach it out of the order of their stamps. GCRA charges a take stamped
-- before the previous one the difference: of three starts at one instant under `3/10m`,
-- the third was refused when its stamp was a millisecond before the second's. Each row now
-- keeps the latest stamp it was taken at, and a take computes with the later of its own
-- stamp and that one, as if the takes had arrived in order. Clocks of replicas that
-- disagree by more than a request's time still decide by the latest of them.
--
-- Existing rows start at 0: their next take is decided at its own stamp, as before.
ALTER TABLE rate_limits ADD COLUMN latest_ms BIGINT NOT NULL DEFAULT 0;

-- `take_rate_limits` as in 0005, with the time each take was decided at (`taken_at`, the
-- later of `now_ms` and the key's `latest_ms`), from which the gateway computes the
-- decision with its own copy of the GCRA maths. Its OUT parameters change, so it is
-- dropped and created again, in this migration's transaction.
DROP FUNCTION take_rate_limits(BIGINT, JSON, BOOLEAN);

CREATE FUNCTION take_rate_limits(
    now_ms BIGINT,
    input JSON,
    all_or_none BOOLEAN,
    OUT taken_keys TEXT[],
    OUT taken_tats BIGINT[],
    OUT taken_allowed BOOLEAN[],
    OUT taken_at BIGINT[],
    OUT all_allowed BOOLEAN
)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    BEGIN
        WITH taken AS (
            INSERT INTO rate_limits AS r (key, tat, interval_ms, period_ms, allowed, latest_ms)
            SELECT i.key, now_ms + i.interval_ms, i.interval_ms, i.period_ms, TRUE, now_ms
            FROM json_to_recordset(input) AS i(key TEXT, interval_ms BIGINT, period_ms BIGINT)
            ORDER BY i.key
            ON CONFLICT (key) DO UPDATE SET
                tat = CASE
                    WHEN GREATEST(r.tat, r.latest_ms, now_ms) + excluded.interval_ms
                        - GREATEST(r.latest_ms, now_ms) <= excluded.period_ms
                    THEN GREATEST(r.tat, r.latest_ms, now_ms) + excluded.interval_ms
                    ELSE r.tat
                END,
                allowed = GREATEST(r.tat, r.latest_ms, now_ms) + excluded.interval_ms
                    - GREATEST(r.latest_ms, now_ms) <= excluded.period_ms,
                latest_ms = GREATEST(r.latest_ms, now_ms),
                interval_ms = excluded.interval_ms,
                period_ms = excluded.period_ms
            RETURNING r.key, r.tat, r.allowed, r.latest_ms
        )
        SELECT COALESCE(array_agg(taken.key), '{}'),
               COALESCE(array_agg(taken.tat), '{}'),
               COALESCE(array_agg(taken.allowed), '{}'),
               COALESCE(array_agg(taken.latest_ms), '{}'),
               COALESCE(bool_and(taken.allowed), TRUE)
        INTO taken_keys, taken_tats, taken_allowed, taken_at, all_allowed
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
