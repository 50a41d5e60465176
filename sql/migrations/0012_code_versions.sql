-- A settlement in three round trips (issue 12): it reads its packs without locking
-- them, decides, and writes the sale in one statement only if none of the packs changed
-- since it read them. Every write of a codes row adds one to its version
-- (store.codes.update); the settlement's write names the versions it read.
ALTER TABLE codes ADD COLUMN version bigint NOT NULL DEFAULT 0;

-- Raised by that statement when a pack changed or the settlement id was taken meanwhile:
-- the statement, its own transaction, is undone, and the service runs the settlement
-- again from its reads (SQLSTATE 40001, as a lost serialization race).
CREATE OR REPLACE FUNCTION tracecode_changed_since_read() RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a pack or the settlement id changed since it was read'
        USING ERRCODE = 'serialization_failure';
END
$$;
