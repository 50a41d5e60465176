-- Each captured event's identifiers in one form (codes, an EPC pattern's product, the
-- location: service.interop.epcis.mapping.match_keys), which the queries match whatever
-- form they were written in. Events captured before are matched as written only.
ALTER TABLE epcis_events ADD COLUMN match_keys text[] NOT NULL DEFAULT '{}';
CREATE INDEX epcis_events_match_keys ON epcis_events USING gin (match_keys);
