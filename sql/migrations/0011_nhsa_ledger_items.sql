-- The 进销存 ledger per institution and catalogue item, kept as its records are written
-- (issue 9): a sale is judged against the item's balance here instead of summing every
-- record of the item at each upload (a 1,000-row upload spent 40 ms in that, growing
-- with the ledger). The figures are those of core.ledger.Figures, as of the item's
-- latest live record (``last_at``): since the last stock count when there is one.
--
-- A row is written under its own row lock (which serialises uploads of one item). A
-- row the service has not computed from the records yet (``stale``: a new item, or one
-- whose records were written before this table) is computed from them by the next
-- upload of the item; so is a row whose upload deletes a record, counts stock, or
-- carries a record older than ``last_at``.
CREATE TABLE nhsa_items (
    org            text NOT NULL REFERENCES orgs (id),
    med_list_codg  text NOT NULL,
    balance        bigint NOT NULL DEFAULT 0,
    units_in       bigint NOT NULL DEFAULT 0,
    units_out      bigint NOT NULL DEFAULT 0,
    counted        bigint,
    counted_at     timestamptz,
    last_at        timestamptz,
    stale          boolean NOT NULL DEFAULT true,
    PRIMARY KEY (org, med_list_codg)
);

-- An upload's envelope is kept once, not with each of its records: a 1,000-row upload
-- wrote it 1,000 times, a quarter of the time its records took to store. Records name
-- their upload (written in the same transaction, by the one writer: no foreign key,
-- whose check per record would cost what this saves).
CREATE TABLE nhsa_uploads (
    org          text NOT NULL REFERENCES orgs (id),
    upload_id    uuid NOT NULL,
    msgid        text NOT NULL,
    envelope     jsonb NOT NULL,             -- the envelope's other fields, as sent
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org, upload_id)
);
ALTER TABLE nhsa_records ADD COLUMN upload_id uuid;
INSERT INTO nhsa_uploads (org, upload_id, msgid, envelope, received_at)
SELECT org, gen_random_uuid(), msgid, envelope, received_at
FROM (SELECT DISTINCT org, msgid, envelope, received_at FROM nhsa_records) AS u;
UPDATE nhsa_records r SET upload_id = u.upload_id
FROM nhsa_uploads u
WHERE u.org = r.org AND u.msgid = r.msgid AND u.envelope = r.envelope AND u.received_at = r.received_at;
ALTER TABLE nhsa_records ALTER COLUMN upload_id SET NOT NULL, DROP COLUMN envelope;
