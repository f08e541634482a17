-- The work list of the reconciliation of unconfirmed sends: pending verifications without a
-- provider id (a create that timed out or failed with a 5xx, or a process that stopped
-- before storing Twilio's answer), oldest first.
--
-- Such rows are few (every first send is one for the moment of its create, then either
-- learns its id or is settled by the reconciliation), so the partial index stays small
-- however large the table grows, and the job's query reads at most its batch from it
-- instead of scanning the table. `status = 'pending'` and `provider_sid IS NULL` are
-- literals in the query's text too, as a partial index is used only when the query implies
-- its condition. Building it reads the table once.
CREATE INDEX verifications_unconfirmed
    ON verifications (created_at, id)
    WHERE status = 'pending' AND provider_sid IS NULL;
