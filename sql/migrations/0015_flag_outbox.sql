-- The feed's outbox holds each change of a flag's status, not the flag (review of issue
-- 12's round): with the flag's row as the outbox (flags.published_at), two changes
-- before the publisher's next pass reached the stream as the later one only, though
-- API.md has each change published. A row per change (a flag raised, re-opened,
-- auto-cleared, promoted or changed by an investigator), written in the change's own
-- transaction; the publisher sends it with the flag as it is, and deletes it.
CREATE TABLE flag_outbox (
    code     text NOT NULL,
    flag_id  bigint NOT NULL,
    status   text NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX flag_outbox_at ON flag_outbox (at);  -- not unique: two changes may share a clock tick

-- what the old outbox held: each flag's status as it stands
INSERT INTO flag_outbox (code, flag_id, status)
SELECT code, flag_id, status FROM flags WHERE published_at IS NULL;
