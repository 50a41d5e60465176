-- The catalogue item an event was billed as (an NHSA 3505 sale's med_list_codg) or
-- recorded under (an NHSA 3502 move's): a pack of another product is PRODUCT_MISMATCH
-- (串换). Kept with the event, so that a sale or move uploaded before its pack's
-- commission, which waits for it, is judged for the item once the commission arrives,
-- as in date order (found by a probe: the waiting sale was judged without it, and the
-- 串换 was never flagged). Events stored before have none.
-- One statement: Citus propagates a DDL command to the shards by its text.
ALTER TABLE events ADD COLUMN med_list_codg text;
