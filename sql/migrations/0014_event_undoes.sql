-- A return may name the sale it undoes: the dispense event whose units it gives back.
-- A 3507 deletion of an uploaded sale is undone so (issue 9's review): by the units that
-- sale's own events took, or by nothing when they took nothing, never by "the latest sale
-- of the pack", which could be another sale, or a settlement's. Such a return never
-- waits for a later dispense, as a patient's return that arrived early does.
--
-- One statement: Citus propagates a DDL command to the shards by its text.
ALTER TABLE events ADD COLUMN undoes uuid;
