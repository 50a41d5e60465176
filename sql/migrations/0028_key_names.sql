-- A key's name: who holds it (a person, a system), given when it is made, so that a
-- flag's history and the console say who moved a flag rather than a bare key id (found
-- by an investigator's walkthrough). Keys made before have none.
-- One statement: Citus propagates a DDL command to the reference table by its text.
ALTER TABLE api_keys ADD COLUMN name text;
