-- Keys that a distributed database can enforce (issue 15). On Citus every unique key
-- of a distributed table must contain its distribution column, and a foreign key
-- between two distributed tables must include it too. Each per-code table is keyed by
-- its code first, here, so plain PostgreSQL and Citus run the same schema and the same
-- statements; ops/citus/distribute.sql only distributes and co-locates.

-- Flags: keyed (code, flag_id). flag_id stays unique (an identity); look-ups by it alone
-- have their own index.
ALTER TABLE flag_changes ADD COLUMN code text;
UPDATE flag_changes c SET code = f.code FROM flags f WHERE f.flag_id = c.flag_id;
ALTER TABLE flag_changes
    ALTER COLUMN code SET NOT NULL,
    DROP CONSTRAINT flag_changes_flag_id_fkey,
    DROP CONSTRAINT flag_changes_pkey;
ALTER TABLE flags DROP CONSTRAINT flags_pkey;
ALTER TABLE flags ADD PRIMARY KEY (code, flag_id);
CREATE INDEX flags_flag_id ON flags (flag_id);
ALTER TABLE flag_changes
    ADD PRIMARY KEY (code, flag_id, at),
    ADD FOREIGN KEY (code, flag_id) REFERENCES flags (code, flag_id);

-- EPCIS events are keyed by their eventID; the paging order (seq, from a sequence) is
-- unique by construction and needs only an index.
ALTER TABLE epcis_events DROP CONSTRAINT epcis_events_seq_key;
CREATE INDEX epcis_events_seq ON epcis_events (seq);
