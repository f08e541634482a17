-- Tracing across the hop (PostgreSQL): the W3C `traceparent` of the start call that made a
-- verification's latest send at the caller's request, so work that happens later and
-- elsewhere (a fallback after a delivery report or a silence check) joins that trace.
-- Trace and span ids only (`00-<32 hex>-<16 hex>-<2 hex>`): nothing about the user.
-- Rows written before have no trace to join. The same column as SQLite's migration 0005.
ALTER TABLE verifications ADD COLUMN trace_parent TEXT
    CHECK (trace_parent IS NULL OR length(trace_parent) BETWEEN 1 AND 256);
