-- Indexes for the investigators' reads (issue 13).

-- GET /v1/orgs/{org}/stats counts the codes of an organisation's receive events: find
-- them by event id rather than scanning event_codes (keyed by code first).
CREATE INDEX event_codes_event ON event_codes (event_id);

-- GET /v1/flags, newest first, by status (the workflow's queues: open, investigating),
-- by region prefix (byte-wise, so a prefix is a range whatever the collation) and by
-- activity time. Kind, org and code have theirs already.
CREATE INDEX flags_status ON flags (status, flag_id DESC);
CREATE INDEX flags_region ON flags (region text_pattern_ops);
CREATE INDEX flags_at ON flags (at);
