-- The insured person of a 3505/3506 record, as the keyed hash every path that keeps a
-- person keeps (core.settlement.person_hash, TRACE_PSN_SECRET): a 3511 or 3513 query by
-- psn_no finds that person's sales (issue 9: the person is kept only as the keyed
-- hash). Records stored before have none, and are found by no person.
-- One statement: Citus propagates a DDL command to the shards by its text.
ALTER TABLE nhsa_records ADD COLUMN psn_hash bytea;
