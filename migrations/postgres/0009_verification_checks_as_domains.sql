-- Most CHECKs of `verifications` move from the table to domains of its columns (PostgreSQL
-- only; SQLite compiles a table's CHECKs into each prepared statement once).
--
-- PostgreSQL keeps a table's CHECK constraints as stored expression trees and reads them
-- back (`stringToNode`, then the planner's constant folding) at the start of every
-- statement that inserts or updates the table: its fifteen CHECKs, the arrays of the `IN`
-- lists read byte by byte, were about a tenth of PostgreSQL's CPU per start and check. A
-- domain's constraints are read and planned once per connection (the type cache), so a
-- statement only evaluates them. Every value the table refused before it still refuses,
-- with the same SQLSTATE (23514, check_violation); the error names the domain's constraint
-- rather than the table's, and clients still see the base types (TEXT, BIGINT) in row
-- descriptions, so nothing reads differently.
--
-- The CHECKs of `id`, `purpose` and `idempotency_key` stay on the table (three short length
-- checks): a column that changes type has the partial indexes over it rebuilt, and the
-- indexes by idempotency key and by provider sid (over `id`) hold most rows. Only the index
-- of pending rows (over `status`) is rebuilt, and it holds the pending rows only.
--
-- The table is not rewritten: each column first takes a domain without constraints (the
-- same type underneath, so the rows and the other indexes stay as they are), the table's
-- CHECK goes in the same statement, and each domain then gains its constraint and has it
-- validated against the rows (a scan; the rows met the same constraint already).

CREATE DOMAIN channel_name AS TEXT;
CREATE DOMAIN verification_status AS TEXT;
-- The domain's u32 (counters, versions, provider error codes) as the BIGINT the code reads.
CREATE DOMAIN u32 AS BIGINT;
CREATE DOMAIN fallback_reason AS TEXT;
CREATE DOMAIN delivery_status AS TEXT;
CREATE DOMAIN trace_parent AS TEXT;
CREATE DOMAIN risk_assessment AS TEXT;

ALTER TABLE verifications
    DROP CONSTRAINT verifications_channel_check,
    DROP CONSTRAINT verifications_status_check,
    DROP CONSTRAINT verifications_sends_check,
    DROP CONSTRAINT verifications_checks_check,
    DROP CONSTRAINT verifications_max_sends_check,
    DROP CONSTRAINT verifications_max_checks_check,
    DROP CONSTRAINT verifications_failure_code_check,
    DROP CONSTRAINT verifications_version_check,
    DROP CONSTRAINT verifications_fallback_reason_check,
    DROP CONSTRAINT verifications_delivery_status_check,
    DROP CONSTRAINT verifications_trace_parent_check,
    DROP CONSTRAINT verifications_risk_check,
    ALTER COLUMN channel TYPE channel_name,
    ALTER COLUMN status TYPE verification_status,
    ALTER COLUMN sends TYPE u32,
    ALTER COLUMN checks TYPE u32,
    ALTER COLUMN max_sends TYPE u32,
    ALTER COLUMN max_checks TYPE u32,
    ALTER COLUMN failure_code TYPE u32,
    ALTER COLUMN version TYPE u32,
    ALTER COLUMN fallback_reason TYPE fallback_reason,
    ALTER COLUMN delivery_status TYPE delivery_status,
    ALTER COLUMN trace_parent TYPE trace_parent,
    ALTER COLUMN risk TYPE risk_assessment;

-- NULL passes every one of these (a CHECK fails only on false); NOT NULL stays on the columns.
ALTER DOMAIN channel_name
    ADD CONSTRAINT channel_name_check
    CHECK (VALUE IN ('sms', 'call', 'email', 'whatsapp', 'sna')) NOT VALID;
ALTER DOMAIN verification_status
    ADD CONSTRAINT verification_status_check
    CHECK (VALUE IN ('pending', 'approved', 'canceled', 'expired', 'max_attempts_reached',
                     'failed', 'blocked')) NOT VALID;
ALTER DOMAIN u32
    ADD CONSTRAINT u32_check CHECK (VALUE BETWEEN 0 AND 4294967295) NOT VALID;
ALTER DOMAIN fallback_reason
    ADD CONSTRAINT fallback_reason_check
    CHECK (VALUE = 'no_delivery_report' OR VALUE LIKE 'delivery_failed:%') NOT VALID;
ALTER DOMAIN delivery_status
    ADD CONSTRAINT delivery_status_check
    CHECK (VALUE IN ('queued', 'sent', 'delivered', 'read', 'undelivered', 'failed')) NOT VALID;
ALTER DOMAIN trace_parent
    ADD CONSTRAINT trace_parent_check CHECK (length(VALUE) BETWEEN 1 AND 256) NOT VALID;
ALTER DOMAIN risk_assessment
    ADD CONSTRAINT risk_assessment_check CHECK (json_typeof(VALUE::json) = 'object') NOT VALID;

ALTER DOMAIN channel_name VALIDATE CONSTRAINT channel_name_check;
ALTER DOMAIN verification_status VALIDATE CONSTRAINT verification_status_check;
ALTER DOMAIN u32 VALIDATE CONSTRAINT u32_check;
ALTER DOMAIN fallback_reason VALIDATE CONSTRAINT fallback_reason_check;
ALTER DOMAIN delivery_status VALIDATE CONSTRAINT delivery_status_check;
ALTER DOMAIN trace_parent VALIDATE CONSTRAINT trace_parent_check;
ALTER DOMAIN risk_assessment VALIDATE CONSTRAINT risk_assessment_check;
