-- Flags people can trust: a grace window for suspicions that a late upload may explain,
-- and the plausible amount one insured person buys of a catalogue item.

-- A suspicion that a late upload could still explain starts 'pending' and becomes 'open'
-- when the grace window passes unexplained (counted from updated_at: when it last
-- became pending), or 'auto_cleared' when the explanation arrives.
ALTER TABLE flags DROP CONSTRAINT flags_status_check;
ALTER TABLE flags ADD CONSTRAINT flags_status_check
    CHECK (status IN ('pending', 'open', 'investigating', 'confirmed', 'dismissed', 'auto_cleared'));
CREATE INDEX flags_pending ON flags (updated_at) WHERE status = 'pending';

-- EXCESS_PURCHASE rests on a person's purchases of one item in one window, not on one
-- event or settlement: its evidence is the person (keyed hash), the item and the window.
ALTER TABLE flags DROP CONSTRAINT flags_source_kind;
ALTER TABLE flags ADD CONSTRAINT flags_source_kind CHECK (source_kind IN ('event', 'settlement', 'person'));
CREATE INDEX flags_source ON flags (source_kind, source_id);

-- person_limit: the most units one insured person plausibly needs within that many days.
ALTER TABLE products
    ADD COLUMN person_limit_units integer CHECK (person_limit_units > 0),
    ADD COLUMN person_limit_days integer CHECK (person_limit_days > 0),
    ADD CONSTRAINT products_person_limit CHECK ((person_limit_units IS NULL) = (person_limit_days IS NULL));

-- What each insured person (by the keyed hash) bought of each catalogue item, by
-- settlement: a running record that EXCESS_PURCHASE reads one window of, by index.
CREATE TABLE purchases (
    psn_hash       bytea NOT NULL,
    med_list_codg  text NOT NULL,
    setl_id        text NOT NULL,
    org            text NOT NULL,
    at             timestamptz NOT NULL,
    units          integer NOT NULL CHECK (units > 0),
    reversed       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (psn_hash, med_list_codg, setl_id)
);
CREATE INDEX purchases_window ON purchases (psn_hash, med_list_codg, at);
