"""The NHSA rows' values read as institutions send them (service.interop.nhsa.envelope):
the fast paths for the common shapes answer as the full checks do."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import pytest

from service.interop.nhsa.envelope import FieldError, calendar_date, china_time, flag01, whole_units
from service.interop.nhsa.sales import kept_row


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
        ("2025-01-15 23:59:59", date(2025, 1, 15)),
        ("2026-03-07 25:61:99", "not a valid date-time"),
        ("2026-03-07 24:00:00", "not a valid date-time"),
        ("2025-02-30", "not a valid date"),
        ("2025/01/15", "not a date"),
        ("", "is required"),
    ],
)
def test_calendar_date_answers_the_same_each_time(value: str, expected: date | str) -> None:
    for _ in range(2):  # the second answer comes from the cache
        _answers(calendar_date, value, "manu_date", expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (24, 24),
        ("24", 24),
        (" 24.0000 ", 24),
        ("\u0662\u0664", "not a number"),  # Arabic-Indic digits: Decimal reads them, we do not
        ("\uff12\uff14", "not a number"),  # full-width digits
        ("2.5", "whole number"),
        (0, "between 1 and"),
        (True, "must be a number"),
        ("", "not a number"),
    ],
)
def test_whole_units_reads_ascii_digits_only(value: object, expected: int | str) -> None:
    _answers(whole_units, value, "sel_retn_cnt", expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        (0, False),
        (" 1 ", True),
        (True, "must be 0 or 1, not true"),
        ("2", "must be 0 or 1"),
        (None, "is required"),
    ],
)
def test_flag01(value: object, expected: bool | str) -> None:
    """A JSON true is not read as absent ("is required" misled the sender)."""
    _answers(flag01, value, "trdn_flag", expected)


def test_kept_row_drops_the_person_also_inside_trace_code_items() -> None:
    row = {
        "fixmedins_bchno": "B1",
        "psn_no": "45000012345678",
        "drugtracinfo": [
            {"drug_trac_codg": "83012345678901234567", "PSN_NO": "45000012345678", "certno": "4501"}
        ],
    }
    kept = kept_row(row)
    assert kept == {"fixmedins_bchno": "B1", "drugtracinfo": [{"drug_trac_codg": "83012345678901234567"}]}
    assert "psn_no" in row  # the row as read is left alone
    single = {"fixmedins_bchno": "B2", "drugtracinfo": {"drug_trac_codg": "8301", "psn_name": "x"}}
    assert kept_row(single)["drugtracinfo"] == {"drug_trac_codg": "8301"}
    plain = {"fixmedins_bchno": "B3", "drugtracinfo": [{"drug_trac_codg": "8301"}]}
    assert kept_row(plain) is plain


def _answers(read: Callable[[Any, str], object], value: object, field: str, expected: object) -> None:
    """``read`` gives ``expected``, or (a str) refuses naming ``field`` with it in the message."""
    if not isinstance(expected, str):
        assert read(value, field) == expected
        return
    with pytest.raises(FieldError) as caught:
        read(value, field)
    assert caught.value.field == field
    assert expected in caught.value.message


def _query_3513(code: str) -> Any:
    """A 3513 query of March 2026 by the trace code ``code``, as ``inventory.query``
    reads it."""
    from service.interop.nhsa.envelope import parse
    from service.interop.nhsa.inventory import query

    body = {
        "infno": "3513",
        "msgid": "P4501030000120260310100000001",
        "mdtrtarea_admvs": "450103",
        "recer_sys_code": "YBXT",
        "infver": "V1.0",
        "opter_type": "1",
        "opter": "1",
        "opter_name": "x",
        "inf_time": "2026-03-10 10:00:00",
        "fixmedins_code": "P45010300001",
        "fixmedins_name": "x",
        "input": {"data": {"begndate": "2026-03-01", "enddate": "2026-03-31", "drug_trac_codg": code}},
    }
    return query(parse(body))


@pytest.mark.parametrize(
    ("sent", "read"),
    [
        ("(01)04000001000012(21)TF1", "010400000100001221TF1"),
        ("010400000100001221TF1", "010400000100001221TF1"),
        ("81234560000000000001", "81234560000000000001"),
    ],
)
def test_a_3513_query_reads_a_trace_code_in_any_of_its_forms(sent: str, read: str) -> None:
    assert _query_3513(sent).code == read


def test_a_3513_query_by_a_string_that_is_no_code_is_refused_naming_it() -> None:
    """It found nothing, and read as "never sold here"; /v1/flags?code= is a 400."""
    with pytest.raises(FieldError) as caught:
        _query_3513("not-a-code")
    assert caught.value.field == "input.data.drug_trac_codg"


@pytest.mark.parametrize(
    ("row", "read"),
    [
        ({"begndate": "1", "BEGNDATE": "1"}, {"begndate": "1"}),
        ({"begndate": "", "BEGNDATE": "2"}, {"begndate": "2"}),  # "" is an absent field
        ({"BEGNDATE": "2", "begndate": None}, {"begndate": "2"}),
        ({"Memo": "a", "memo": " ", "MEMO": "a"}, {"memo": "a"}),
        ({"a": 1}, {"a": 1}),
    ],
)
def test_a_key_in_two_casings_with_one_value_is_taken(
    row: dict[str, object], read: dict[str, object]
) -> None:
    from service.interop.nhsa.envelope import lower_keys

    assert lower_keys(row) == read


@pytest.mark.parametrize(
    "row",
    [
        {"begndate": "1", "BEGNDATE": "2"},
        {"Cnt": 24, "cnt": "24"},  # the same number in two types: which was meant is a guess too
        {"memo": "a", "MEMO": "", "Memo": "b"},
    ],
)
def test_a_key_in_two_casings_with_different_values_is_refused_naming_it(row: dict[str, object]) -> None:
    from service.interop.nhsa.envelope import lower_keys

    with pytest.raises(FieldError) as caught:
        lower_keys(row)
    assert caught.value.field == next(iter(row)).lower()
