-- GS1 EPCIS 2.0 capture: each capture job, and every captured event as received (JSON)
-- with the columns the standard queries filter on. The event's custody effect, if any,
-- is stored as for /v1/events (events.event_id = epcis_events.fact_id).
CREATE TABLE epcis_captures (
    capture_id text PRIMARY KEY,
    org text NOT NULL REFERENCES orgs (id),
    behaviour text NOT NULL,               -- rollback | proceed
    success boolean NOT NULL,
    errors jsonb NOT NULL DEFAULT '[]',
    events integer NOT NULL,
    created_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL
);
CREATE TABLE epcis_events (
    seq bigserial UNIQUE,                  -- paging order
    event_id text PRIMARY KEY,             -- the EPCIS eventID (given or made)
    fact_id uuid NOT NULL,
    capture_id text NOT NULL,
    org text NOT NULL,
    event_type text NOT NULL,
    event_time timestamptz NOT NULL,
    action text,
    biz_step text,
    biz_location text,
    epcs text[] NOT NULL,
    parent_id text,
    body jsonb NOT NULL,
    record_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX epcis_events_time ON epcis_events (event_time);
CREATE INDEX epcis_events_epcs ON epcis_events USING gin (epcs);
