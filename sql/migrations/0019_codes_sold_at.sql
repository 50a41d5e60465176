-- When a settlement last took units of the pack (issue 9's review). A custody event
-- (ship, receive, destroy, pack, unpack, commission) dated before it replays the pack's
-- history, so that settlement is judged again at its own time; the sale's own dispense
-- or return does not, as it moves no custody (a settlement counted as the pack's latest
-- event made every sale uploaded after its settlement, and dated at or before it, replay).
--
-- One statement: Citus propagates a DDL command to the shards by its text (0020 fills it).
ALTER TABLE codes ADD COLUMN sold_at timestamptz;
