-- The flag's row is no longer the feed's outbox (0015). One statement: Citus propagates a
-- DDL command to the shards by its text.
ALTER TABLE flags DROP COLUMN published_at;
