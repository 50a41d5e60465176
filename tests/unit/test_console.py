"""The console's pure parts: its catalogues and the custody timeline's layout."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from service.console.i18n import CATALOGUES, translator
from service.console.timeline import late_flags, layout

T0 = datetime(2026, 3, 2, 8, tzinfo=UTC)
TEMPLATES = Path(__file__).parents[2] / "service" / "console" / "templates"


def test_every_language_has_every_label_and_templates_use_only_known_ones() -> None:
    keys = [set(c) for c in CATALOGUES.values()]
    assert all(k == keys[0] for k in keys)
    used = {m for f in TEMPLATES.glob("*.html") for m in re.findall(r"\bt\('([a-z_.]+)'[,)]", f.read_text())}
    assert used
    assert used <= keys[0]
    assert translator("en")("events.via", "X") == "moved inside X"
    assert translator("fr")("nav.codes") == "追溯码"  # unknown languages read Chinese


def _e(minutes: int, received: int, type_: str = "receive", org: str = "A", **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"e{minutes}",
        "type": type_,
        "org": org,
        "at": T0 + timedelta(minutes=minutes),
        "received_at": T0 + timedelta(minutes=received),
        **extra,
    }


def test_late_means_received_after_something_that_happened_later() -> None:
    in_order = [_e(0, 10), _e(1, 11), _e(2, 12)]
    assert late_flags(in_order) == [False, False, False]
    # the middle event happened before the last but reached the service after it
    assert late_flags([_e(0, 10), _e(1, 30), _e(2, 20)]) == [False, True, False]
    # received long after it happened, but before anything later: not late
    assert late_flags([_e(0, 500), _e(1, 501)]) == [False, False]


def test_a_shipment_points_at_the_receive_that_took_it() -> None:
    events = [
        _e(0, 0, "ship", "M", to="D", via="00123"),
        _e(1, 1, "receive", "D"),
        _e(2, 2, "ship", "D", to="P"),
    ]
    drawn = layout(events, {"M": "Maker <Ltd>"})
    assert [lane.label for lane in drawn.lanes] == ["\u2068Maker <Ltd>\u2069 (M)", "D", "P"]
    first, second = drawn.arrows
    assert (first.x2, first.y2) == (drawn.marks[1].x, drawn.marks[1].y)
    assert first.via
    assert first.received
    assert not second.received
    assert second.y2 == drawn.lanes[2].y


def test_bars_longest_first_scaled_to_the_largest() -> None:
    from service.console.charts import bars

    laid = bars([("a", "A", 5), ("b", "B", 20), ("c", "C", 0)], length=100, row=10)
    assert [(b.key, b.value, b.length, b.y) for b in laid.bars] == [
        ("b", 20, 100, 8),
        ("a", 5, 25, 18),
        ("c", 0, 0, 28),
    ]
    assert laid.height == 8 + 30 + 4
    assert bars([]).bars == []


def test_columns_put_both_series_on_one_scale() -> None:
    from datetime import date

    from service.console.charts import columns

    laid = columns([(date(2026, 11, 1), 4, 1), (date(2026, 11, 2), 0, 8)], height=80, step=20)
    assert laid.top == 8
    assert [(d.x, d.settlements_height, d.flags_height) for d in laid.days] == [(40, 40, 10), (60, 0, 80)]
    assert columns([]).days == []


def test_bars_past_the_most_add_up_the_rest_in_one() -> None:
    from service.console.charts import bars

    laid = bars([(f"o{i}", f"O{i}", 100 - i) for i in range(40)], most=5, rest="35 others")
    assert [b.key for b in laid.bars] == ["o0", "o1", "o2", "o3", ""]
    assert laid.bars[-1].label == "35 others"
    assert laid.bars[-1].value == sum(100 - i for i in range(4, 40))


def test_an_identifier_shows_its_hidden_characters_and_never_reads_as_another() -> None:
    from service.console.text import visible

    assert visible("XJ01\u202e65240") == "XJ01\\u202e65240"
    assert visible("L1\u200b") == "L1\\u200b"  # zero width
    assert visible("L1\u00a02") == "L1\\u00a02"  # a space that is not the plain one
    assert visible("L\U000e0041") == "L\\U000e0041"  # a tag character
    assert visible("L\u3164") == "L\\u3164"  # a filler that prints nothing
    assert visible("a\\u202e") == "a\\\\u202e"  # the escape's look-alike stays apart
    assert visible("阿莫西林 L-1/2") == "阿莫西林 L-1/2"


def test_every_flag_kind_and_status_has_a_label_in_every_language() -> None:
    """STOCK_IMBALANCE had none: its key showed as "kind.STOCK_IMBALANCE" (a probe)."""
    from service.api.flags import KINDS, STATUSES

    for catalogue in CATALOGUES.values():
        assert {f"kind.{k}" for k in KINDS} <= set(catalogue)
        assert {f"status.{s}" for s in STATUSES} <= set(catalogue)


def test_every_console_role_has_a_label_in_every_language() -> None:
    """The header names the signed-in key's role (and the roles it may not sign in with
    have labels too, should they ever be let in)."""
    from service.core.auth import Role

    for catalogue in CATALOGUES.values():
        assert {f"role.{r}" for r in Role} <= set(catalogue)


def test_every_kind_of_organisation_has_a_label_in_every_language() -> None:
    """The organisation page showed "pharmacy" in the Chinese console (a probe): the
    kinds the registry takes (its database allows no other) each have a label."""
    from typing import get_args

    import msgspec

    from service.api.registry import OrgIn

    kinds = get_args(next(f.type for f in msgspec.structs.fields(OrgIn) if f.name == "kind"))
    assert kinds
    for catalogue in CATALOGUES.values():
        assert {f"org_kind.{k}" for k in kinds} <= set(catalogue)


def test_every_error_page_has_its_words_in_every_language() -> None:
    from service.console import ERROR_STATUSES

    for catalogue in CATALOGUES.values():
        assert {f"error.status.{s}" for s in ERROR_STATUSES} <= set(catalogue)


def test_a_chart_of_exactly_the_most_bars_has_one_for_each() -> None:
    from service.console.charts import MOST, bars, own_bars

    assert (own_bars(MOST), own_bars(MOST + 1)) == (MOST, MOST - 1)
    laid = bars([(f"o{i}", f"O{i}", 100 - i) for i in range(MOST)], rest="none")
    assert [b.key for b in laid.bars] == [f"o{i}" for i in range(MOST)]
