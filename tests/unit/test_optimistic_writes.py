"""An optimistic write sends only the columns its decision changed (store.codes)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from service.core.custody import CodeState
from service.store.codes import COLUMNS, AsRead, changed_columns


def _pack(code: str) -> CodeState:
    return CodeState(
        code=code,
        kind="cn20",
        product_id="8123456",
        state="received",
        commissioned=True,
        custodian="P1",
        pack_units=24,
        units_left=24,
        last_at=datetime(2026, 3, 1, tzinfo=UTC),
    )


def _as_read(*states: CodeState) -> dict[str, AsRead]:
    return {s.code: AsRead(7, tuple(getattr(s, c) for c in COLUMNS)) for s in states}


def test_a_write_sends_the_columns_some_row_changed_and_the_code() -> None:
    a, b = _pack("A"), _pack("B")
    read = _as_read(a, b)
    sold = dataclasses.replace(a, units_left=0, state="dispensed", sold_at=datetime(2026, 3, 2, tzinfo=UTC))
    assert changed_columns(read, [sold, b]) == ("code", "state", "units_left", "sold_at")
    # a row written as read (its version still advances) adds nothing
    assert changed_columns(read, [a, b]) == ("code",)


def test_a_row_that_was_not_read_is_written_whole() -> None:
    a = _pack("A")
    assert changed_columns(_as_read(a), [a, _pack("C")]) == COLUMNS
