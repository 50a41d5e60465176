-- Distribute the tracecode schema on Citus: run on the coordinator after `tracecode
-- migrate`, before loading data. It only distributes and co-locates; the keys Citus
-- needs are in sql/migrations/ (0010_shard_keys.sql), so plain PostgreSQL and Citus run
-- the same schema and statements. Checked on Citus 13.2.2 (README.md).

-- Small, read-mostly registry tables: a copy on every node.
SELECT create_reference_table('orgs');
SELECT create_reference_table('products');
SELECT create_reference_table('api_keys');
SELECT create_reference_table('recalls');
SELECT create_reference_table('org_glns');
SELECT create_reference_table('schema_migrations');

-- Per-code state, links and flags, co-located by the canonical code: each code's rows
-- in all of them are on one shard, so verify and a code's history read one shard, and
-- each of a settlement's packs is on one shard (a settlement of several packs spans
-- theirs).
SELECT create_distributed_table('codes', 'code');
SELECT create_distributed_table('event_codes', 'code', colocate_with => 'codes');
SELECT create_distributed_table('consumptions', 'code', colocate_with => 'codes');
SELECT create_distributed_table('flags', 'code', colocate_with => 'codes');
SELECT create_distributed_table('flag_changes', 'code', colocate_with => 'codes');
SELECT create_distributed_table('flag_outbox', 'code', colocate_with => 'codes');
-- containment is keyed (parent, child): walking down from a container is shard-local,
-- walking up (ancestors, for replays) fans out; both are small look-ups.
SELECT create_distributed_table('containment', 'parent', colocate_with => 'codes');

-- Records keyed by their own ids. Those put in the codes' co-location group share its
-- shard count and placement only: keyed by their ids, not by codes, their rows are not
-- on their codes' shards (a settlement's row is on its setl_id's).
SELECT create_distributed_table('events', 'event_id');
SELECT create_distributed_table('settlements', 'setl_id', colocate_with => 'codes');
SELECT create_distributed_table('epcis_events', 'event_id', colocate_with => 'codes');
SELECT create_distributed_table('epcis_captures', 'capture_id', colocate_with => 'codes');

-- A person's purchases of capped items (EXCESS_PURCHASE) are read by person: one
-- person's window is one shard.
SELECT create_distributed_table('purchases', 'psn_hash');

-- An institution's NHSA records and ledger are read by institution: one institution's
-- are on one shard (in the codes' co-location group, again with no locality to codes).
SELECT create_distributed_table('nhsa_records', 'org', colocate_with => 'codes');
SELECT create_distributed_table('nhsa_items', 'org', colocate_with => 'codes');
SELECT create_distributed_table('nhsa_uploads', 'org', colocate_with => 'codes');
