-- Settlement by code, and the flags investigators work through.

-- One row per settlement id. The body is kept without the insured person number
-- (psn_hash is an HMAC of it under a server secret); body_hash is an HMAC of the whole
-- request so a replay can be told from a changed body.
CREATE TABLE settlements (
    setl_id      text PRIMARY KEY,
    org          text NOT NULL,
    psn_hash     bytea NOT NULL,
    at           timestamptz NOT NULL,
    body_hash    bytea NOT NULL,
    request      jsonb NOT NULL,
    response     jsonb,
    decision     text,
    reversal     jsonb,
    reversed_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX settlements_psn ON settlements (psn_hash);
CREATE INDEX settlements_org_at ON settlements (org, at);

CREATE INDEX consumptions_sale ON consumptions (sale_key);
CREATE INDEX consumptions_org ON consumptions (org);
CREATE INDEX events_org_type ON events (org, type);

CREATE TABLE flags (
    flag_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL,
    code        text NOT NULL,
    org         text,
    region      text,
    at          timestamptz NOT NULL,             -- when the suspicious activity happened
    raised_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    status      text NOT NULL DEFAULT 'open'
                CHECK (status IN ('open', 'investigating', 'confirmed', 'dismissed', 'auto_cleared')),
    detail      text NOT NULL,
    refs        jsonb NOT NULL DEFAULT '{}',
    dedup_key   text NOT NULL UNIQUE,             -- one flag per suspicion and evidence
    updated_at  timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz                      -- on the Redis stream yet? (outbox)
);
CREATE INDEX flags_unpublished ON flags (flag_id) WHERE published_at IS NULL;
CREATE INDEX flags_code ON flags (code);
CREATE INDEX flags_org ON flags (org, flag_id DESC);
CREATE INDEX flags_kind_status ON flags (kind, status);

CREATE TABLE flag_changes (
    flag_id   bigint NOT NULL REFERENCES flags (flag_id),
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    status    text NOT NULL,
    note      text,
    by_key    text,
    PRIMARY KEY (flag_id, at)
);

-- Lot recalls: every code of the lot is marked recalled, and so is any code of the lot
-- commissioned later.
CREATE TABLE recalls (
    product_id  text NOT NULL,
    lot         text NOT NULL,
    reason      text NOT NULL,
    ordered_by  text,
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (product_id, lot)
);
