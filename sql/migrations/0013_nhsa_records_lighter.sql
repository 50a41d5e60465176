-- A ledger record is written at the rate sales are (issue 9: an NHSA upload is to store
-- its sales at >= 80% of the rate of POST /v1/events). Two per-record costs go:
--
-- * the foreign key to orgs, checked for every record. Records name their upload, whose
--   row is written in the same transaction by the one writer and keeps the foreign key
--   (as nhsa_uploads already reasons); events have none either.
-- * jsonb for the row as sent: it is kept to be shown and searched by one field, never
--   indexed, and json only checks the text where jsonb also builds its binary tree
--   (about a third of the record's cost in a 1,000-record COPY).
--
-- One statement: Citus propagates a DDL command to the shards by its text, which must then
-- hold that command only.
ALTER TABLE nhsa_records
    DROP CONSTRAINT IF EXISTS nhsa_records_org_fkey,
    ALTER COLUMN row_data TYPE json USING row_data::json;
