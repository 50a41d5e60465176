-- A capture job's warnings: events stored with no custody effect though their step names
-- one (a shipping event naming no destination), each as {eventIndex, eventID, field, detail}.
ALTER TABLE epcis_captures ADD COLUMN warnings jsonb NOT NULL DEFAULT '[]';
