-- Distribute the tracecode schema on Citus (run on the coordinator after
-- `tracecode migrate`, before loading data). Not yet run on a cluster: see README.md,
-- "What must change first" (the flags keys and multi-shard row locks). Per-code tables are co-located by the
-- canonical code, so ingest, verify and single-pack settlement stay on one shard.

-- Small, read-mostly registry tables: a copy on every node.
SELECT create_reference_table('orgs');
SELECT create_reference_table('products');
SELECT create_reference_table('api_keys');
SELECT create_reference_table('recalls');
SELECT create_reference_table('schema_migrations');

-- Per-code state and links, co-located by code.
SELECT create_distributed_table('codes', 'code');
SELECT create_distributed_table('event_codes', 'code', colocate_with => 'codes');
SELECT create_distributed_table('consumptions', 'code', colocate_with => 'codes');
-- containment is keyed (parent, child): walking down from a container is shard-local,
-- walking up (ancestors, for history and replays) fans out; both are small lookups.
SELECT create_distributed_table('containment', 'parent', colocate_with => 'codes');

-- The event log and settlements are keyed by their own ids.
SELECT create_distributed_table('events', 'event_id');
SELECT create_distributed_table('settlements', 'setl_id');

-- Flags are read by code and by filters; distribute by code. Citus requires the
-- distribution column in unique constraints: the evidence key (code, kind, source_kind,
-- source_id) already starts with it; the primary key must too:
ALTER TABLE flag_changes DROP CONSTRAINT flag_changes_flag_id_fkey;
ALTER TABLE flags DROP CONSTRAINT flags_pkey;
ALTER TABLE flags ADD PRIMARY KEY (code, flag_id);
SELECT create_distributed_table('flags', 'code', colocate_with => 'codes');
SELECT create_distributed_table('flag_changes', 'flag_id');

-- A person's purchases of capped items (EXCESS_PURCHASE) are read by person: keyed by
-- the person's hash, so one person's window is one shard.
SELECT create_distributed_table('purchases', 'psn_hash');
