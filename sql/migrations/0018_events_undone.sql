-- A deleted return's compensation is a dispense naming the return (events.undoes): every
-- dispense looks for returns still waiting for their sale, and a return named so gives
-- nothing back (issue 9's review: deleting a return that restored nothing sold the pack).
-- The look-up is by the named id: few events name one (3507 compensations only).
CREATE INDEX events_undoes ON events (undoes) WHERE undoes IS NOT NULL;
