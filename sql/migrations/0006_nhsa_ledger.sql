-- The 进销存 ledger: one row per record an institution uploaded through POST /v1/nhsa
-- (3501 stock count, 3502 inventory change, 3503/3504 purchase and its return, 3505/3506
-- sale and its return), keyed by (institution, interface, fixmedins_bchno) so that a
-- retry, or the same record in a batch form, is one fact. ``delta`` is the record's
-- signed effect on the item's balance (0 for a stock count, whose ``units`` is the count).
-- A 3507 deletion does not remove the row: it marks it deleted, and it stops counting.
CREATE TABLE nhsa_records (
    org              text NOT NULL REFERENCES orgs (id),
    interface        text NOT NULL CHECK (interface IN ('3501', '3502', '3503', '3504', '3505', '3506')),
    fixmedins_bchno  text NOT NULL,
    med_list_codg    text NOT NULL,
    kind             text NOT NULL,
    units            bigint NOT NULL CHECK (units >= 0),
    delta            bigint NOT NULL,
    at               timestamptz NOT NULL,
    codes            text[] NOT NULL DEFAULT '{}',
    event_ids        uuid[] NOT NULL DEFAULT '{}',
    msgid            text NOT NULL,
    envelope         jsonb NOT NULL,             -- the envelope's other fields, as sent
    row_data         jsonb NOT NULL,             -- the row as sent, without the person's fields
    received_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz,
    deleted_msgid    text,
    PRIMARY KEY (org, interface, fixmedins_bchno)
);
CREATE INDEX nhsa_records_item ON nhsa_records (org, med_list_codg, at);

-- STOCK_IMBALANCE and a stock count's observations rest on one uploaded record.
ALTER TABLE flags DROP CONSTRAINT flags_source_kind;
ALTER TABLE flags ADD CONSTRAINT flags_source_kind
    CHECK (source_kind IN ('event', 'settlement', 'person', 'nhsa'));
