"""core.ledger's rules that need no database."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

from service.core.events import Incoming
from service.core.flags import Evidence
from service.core.ledger import deleted_evidence, record_evidence


def test_a_deletion_leaves_its_records_and_the_events_it_undoes_resting_on_nothing() -> None:
    """What a 3507 withdraws rests on the deleted records and on each event their
    compensations undo; not on a compensation itself (a deleted return's, selling a
    pack again, is judged as a sale), nor on an event no compensation names (a sale's
    event that took a pack its settlement paid for: ``core.sales.kept_by_settlement``)."""
    at = datetime(2026, 3, 6, tzinfo=UTC)
    sold, returned, undo_sale, undo_return = uuid4(), uuid4(), uuid4(), uuid4()
    compensations = [
        Incoming(undo_sale, "return", at, "P2", ("A",), undoes=sold),
        Incoming(undo_return, "dispense", at, "P2", ("B",), undoes=returned),
    ]
    got = deleted_evidence("P2", [("3505", "Z1"), ("3506", "R1"), ("3505", "SETTLED")], compensations)
    records = [record_evidence("P2", i, b) for i, b in [("3505", "Z1"), ("3506", "R1"), ("3505", "SETTLED")]]
    assert got[:3] == records
    assert sorted(got[3:], key=lambda e: e.id) == sorted(
        [Evidence.event(sold), Evidence.event(returned)], key=lambda e: e.id
    )
    assert deleted_evidence("P2", [], []) == []
