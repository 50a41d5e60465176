-- Whether a person set the flag's status (PATCH /v1/flags, the console). An automatic
-- clear (a replay, a late sale, a deletion: service.store.flags.CLEARABLE) takes only a
-- flag no person has moved: an investigator who opened an auto-cleared flag again had a
-- later replay clear it once more. The flag's history cannot say it: a note alone is a
-- line of the status the flag already has, by the person, like a change to it, and a
-- flag's first status is not in its history. A person's status is never changed by the
-- system afterwards (no automatic change takes it, and a person sets no status that
-- promotion or a suspicion raised again takes), so it is set once.
ALTER TABLE flags ADD COLUMN IF NOT EXISTS moved_by_person boolean NOT NULL DEFAULT false;

-- The flags stored before: those whose latest history line is a person's, of the status
-- the flag has (investigating, confirmed and dismissed only a person sets). A note left
-- last on an open flag counts too: such a flag stays as a person last saw it. On Citus,
-- flags and flag_changes are co-located by code, and the join is on it.
UPDATE flags f SET moved_by_person = true
FROM (SELECT DISTINCT ON (code, flag_id) code, flag_id, status, by_key
      FROM flag_changes ORDER BY code, flag_id, at DESC) last
WHERE last.code = f.code AND last.flag_id = f.flag_id AND last.status = f.status
  AND last.by_key IS DISTINCT FROM 'system' AND f.status NOT IN ('pending', 'auto_cleared');
