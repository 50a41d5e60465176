-- EPCIS 2.0 events name parties and locations by GS1 GLN (urn:epc:id:sgln / pgln, or a
-- Digital Link /414/...). An organisation registers the GLNs it acts at; each GLN
-- belongs to one organisation, so an event's location maps to exactly one of them.
ALTER TABLE orgs ADD COLUMN glns text[] NOT NULL DEFAULT '{}';
CREATE TABLE org_glns (
    gln text PRIMARY KEY,
    org text NOT NULL REFERENCES orgs (id)
);
