-- Foundation: registry, API keys, the event log and per-code state.
-- Every per-code table is keyed by the canonical code first, so the schema can be
-- distributed by code (see ops/citus/).

CREATE TABLE orgs (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('manufacturer', 'distributor', 'hospital', 'pharmacy')),
    region      char(6) NOT NULL CHECK (region ~ '^[0-9]{6}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE products (
    product_id    text PRIMARY KEY,
    name          text NOT NULL,
    med_list_codg text NOT NULL,
    pack_units    integer NOT NULL CHECK (pack_units > 0),
    manufacturer  text NOT NULL REFERENCES orgs (id),
    level         text NOT NULL DEFAULT 'unit' CHECK (level IN ('unit', 'case', 'pallet')),
    contains      integer CHECK (contains > 0),
    regions       text[] NOT NULL DEFAULT '{}',
    trace_exempt  boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_med_list_codg ON products (med_list_codg);

CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,
    secret_hash bytea NOT NULL UNIQUE,   -- sha256 of the whole bearer token; the token is never stored
    role        text NOT NULL CHECK (role IN ('org', 'insurer', 'investigator', 'admin')),
    org         text REFERENCES orgs (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK ((role = 'org') = (org IS NOT NULL))
);

-- The append-only log of scan facts, as accepted (codes canonical; rejected codes are
-- not linked). An event is never updated or deleted.
CREATE TABLE events (
    event_id     uuid PRIMARY KEY,
    type         text NOT NULL,
    at           timestamptz NOT NULL,
    org          text NOT NULL,
    to_org       text,
    from_org     text,
    parent       text,
    lot          text,
    expiry       date,
    produced     date,
    quantity     integer,
    setl_id      text,
    ref          text,
    code_count   integer NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);

-- Which codes an event names directly (role 'c') or as the container of a pack/unpack
-- (role 'p'). History and replays read a code's events through this table.
CREATE TABLE event_codes (
    code      text NOT NULL,
    at        timestamptz NOT NULL,
    event_id  uuid NOT NULL,
    role      "char" NOT NULL DEFAULT 'c',
    PRIMARY KEY (code, at, event_id, role)
);

-- Every (container, content) pair ever packed: what a container may have moved.
CREATE TABLE containment (
    parent  text NOT NULL,
    child   text NOT NULL,
    PRIMARY KEY (parent, child)
);
CREATE INDEX containment_child ON containment (child);

-- The current state of each code: a fold of its events by event time (custody part)
-- plus the units consumed by sales (units_left).
CREATE TABLE codes (
    code             text PRIMARY KEY,
    kind             text NOT NULL,             -- cn20 | gs1 | sscc
    product_id       text,
    commissioned     boolean NOT NULL DEFAULT false,
    commissioned_by  text,
    commission_event uuid,
    lot              text,
    expiry           date,
    produced         date,
    parent           text,
    state            text NOT NULL,             -- commissioned | in_transit | received | destroyed | unknown
    custodian        text,
    destination      text,
    pack_units       integer,
    units_left       integer,
    recalled         boolean NOT NULL DEFAULT false,
    last_at          timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX codes_parent ON codes (parent) WHERE parent IS NOT NULL;
CREATE INDEX codes_lot ON codes (product_id, lot);

-- Units taken from a pack by one sale. A sale is keyed by its settlement id when it has
-- one (a dispense event and a settlement with the same setl_id are one sale), else by
-- the dispense event's id. The primary key is what makes "consume once" hold.
CREATE TABLE consumptions (
    code         text NOT NULL,
    sale_key     text NOT NULL,
    setl_id      text,
    event_id     uuid,
    org          text NOT NULL,
    at           timestamptz NOT NULL,
    units        integer NOT NULL CHECK (units > 0),
    reversed_at  timestamptz,
    reversed_by  text,             -- the return event, or 'reversal' (of the settlement)
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (code, sale_key)
);
