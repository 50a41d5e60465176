-- Identities as typed columns, not strings in a shared format.
--
-- A sale was `sale_key`: the settlement id, or 'event:<uuid>' for a dispense without
-- one. A flag's evidence was inside `dedup_key` ('KIND:code:event:<uuid>' or
-- 'KIND:code:setl:<id>'), found again with LIKE and split. Both become a kind and an id,
-- so no identifier is ever parsed from or matched inside a string. The UPDATEs below
-- read the old strings one last time to convert rows stored before this migration.

-- Consumptions: which sale took the units (a settlement, or a dispense event without
-- one), and which return event gave them back (NULL after a reversal of the settlement).
ALTER TABLE consumptions
    ADD COLUMN sale_kind text,
    ADD COLUMN sale_id text,
    ADD COLUMN reversed_by_event uuid;
UPDATE consumptions
SET sale_kind = CASE WHEN setl_id IS NOT NULL THEN 'settlement' ELSE 'event' END,
    sale_id = coalesce(setl_id, event_id::text),
    reversed_by_event = CASE WHEN reversed_by IS NOT NULL AND reversed_by <> 'reversal'
                             THEN reversed_by::uuid END;
ALTER TABLE consumptions
    ALTER COLUMN sale_kind SET NOT NULL,
    ALTER COLUMN sale_id SET NOT NULL,
    ADD CONSTRAINT consumptions_sale_kind CHECK (sale_kind IN ('settlement', 'event')),
    DROP CONSTRAINT consumptions_pkey,
    ADD PRIMARY KEY (code, sale_kind, sale_id);
DROP INDEX consumptions_sale;
ALTER TABLE consumptions DROP COLUMN sale_key, DROP COLUMN reversed_by;
CREATE INDEX consumptions_sale ON consumptions (sale_kind, sale_id);
CREATE INDEX consumptions_reversed_by ON consumptions (reversed_by_event) WHERE reversed_by_event IS NOT NULL;

-- Flags: the evidence a suspicion rests on (an event, or a settlement). One flag per
-- kind, code and evidence, however often the evidence is re-sent.
ALTER TABLE flags
    ADD COLUMN source_kind text,
    ADD COLUMN source_id text;
UPDATE flags
SET source_kind = CASE split_part(substr(dedup_key, length(kind) + length(code) + 3), ':', 1)
                      WHEN 'event' THEN 'event' ELSE 'settlement' END,
    source_id = substr(dedup_key, length(kind) + length(code) + 3
                       + length(split_part(substr(dedup_key, length(kind) + length(code) + 3), ':', 1)) + 1);
ALTER TABLE flags
    ALTER COLUMN source_kind SET NOT NULL,
    ALTER COLUMN source_id SET NOT NULL,
    ADD CONSTRAINT flags_source_kind CHECK (source_kind IN ('event', 'settlement')),
    DROP COLUMN dedup_key,
    ADD CONSTRAINT flags_evidence UNIQUE (code, kind, source_kind, source_id);
