-- A take given back by the deletion of its record (NHSA 3507: a return that names the
-- event it undoes) is deleted, not kept reversed: the record never counted, so a
-- corrected record of the same sale (same setl_id) takes the pack again, which the
-- reversed row's key (code, sale) blocked. A take given back by a patient's return or a
-- settlement's reversal stays reversed: that sale does not take the pack again.
--
-- A subquery, not a join: on Citus the events' ids are planned first, then the delete
-- runs on the consumptions' shards.
DELETE FROM consumptions
WHERE reversed_by_event IN (SELECT event_id FROM events WHERE undoes IS NOT NULL);
