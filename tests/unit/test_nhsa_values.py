"""The NHSA rows' values read as institutions send them (service.interop.nhsa.envelope):
the fast paths for the common shapes answer as the full checks do."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import pytest

from service.interop.nhsa.envelope import FieldError, calendar_date, china_time


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-05 10:00:00", datetime(2026, 3, 5, 2, 0, tzinfo=UTC)),
        (" 2026-03-05 10:00:00 ", datetime(2026, 3, 5, 2, 0, tzinfo=UTC)),
        ("2026-03-05T10:00:00", datetime(2026, 3, 5, 2, 0, tzinfo=UTC)),
        ("2026-03-05 10:00:00.5", datetime(2026, 3, 5, 2, 0, 0, 500000, tzinfo=UTC)),
        ("2026-03-05 10:00:00+00:00", datetime(2026, 3, 5, 10, 0, tzinfo=UTC)),
        ("2026-01-01 07:59:59", datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)),
        # the same length and separators as the common shape, but not a time it takes
        ("2026-03-05 100000.1", "not a date-time"),
        ("2026-03-05 1a:00:00", "not a date-time"),
        ("2026-03-05 \u0661\u0660:00:00", "date-time"),
        ("2026-02-30 10:00:00", "not a valid date-time"),
        ("2026-03-05 10:00:60", "not a valid date-time"),
        ("0001-01-01 00:00:00", "out of range"),
        ("20260305 10:00:00", "not a date-time"),
        ("", "is required"),
        (None, "is required"),
    ],
)
def test_china_time(value: object, expected: datetime | str) -> None:
    _answers(china_time, value, "sel_retn_time", expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-01-15", date(2025, 1, 15)),
        ("2025-01-15 00:00:00", date(2025, 1, 15)),
        ("2025-02-30", "not a valid date"),
        ("2025/01/15", "not a date"),
        ("", "is required"),
    ],
)
def test_calendar_date_answers_the_same_each_time(value: str, expected: date | str) -> None:
    for _ in range(2):  # the second answer comes from the cache
        _answers(calendar_date, value, "manu_date", expected)


def _answers(read: Callable[[Any, str], object], value: object, field: str, expected: object) -> None:
    """``read`` gives ``expected``, or (a str) refuses naming ``field`` with it in the message."""
    if not isinstance(expected, str):
        assert read(value, field) == expected
        return
    with pytest.raises(FieldError) as caught:
        read(value, field)
    assert caught.value.field == field
    assert expected in caught.value.message
