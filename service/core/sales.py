"""How sales draw units from packs (whole packs and split packs, 拆零)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID


def draw(units_left: Mapping[str, int], codes: Sequence[str], quantity: int | None) -> list[tuple[str, int]]:
    """The (code, units) a sale takes: a whole-pack sale (``quantity`` None) takes what
    is left in each code; a split sale takes ``quantity`` units from the codes in the
    order listed. Codes with nothing left are skipped; the result may fall short of
    ``quantity`` (the caller decides whether that is acceptable)."""
    taken: list[tuple[str, int]] = []
    wanted = quantity
    for code in codes:
        left = units_left.get(code, 0)
        if left <= 0:
            continue
        if wanted is None:
            taken.append((code, left))
            continue
        if wanted <= 0:
            break
        units = min(left, wanted)
        taken.append((code, units))
        wanted -= units
    return taken


@dataclass(frozen=True, slots=True)
class Return:
    """A patient's return of one pack to the organisation that sold it."""

    event_id: UUID
    org: str
    at: datetime
    setl_id: str | None
    code: str


def match_returns(
    returns: Sequence[Return], open_sales: Sequence[Mapping[str, Any]]
) -> list[tuple[str, str, str]]:
    """Which sale each return undoes, as (code, sale_key, return event id): the latest
    unreversed sale of that pack by the same organisation at or before the return (the
    sale named by ``setl_id`` if the return names one). A return with no such sale undoes
    nothing yet. ``returns`` in event-time order; ``open_sales`` newest first."""
    undone: set[tuple[str, str]] = set()
    out = []
    for r in returns:
        for sale in open_sales:
            key = (sale["code"], sale["sale_key"])
            if (
                sale["code"] == r.code
                and sale["org"] == r.org
                and sale["at"] <= r.at
                and (r.setl_id is None or sale["setl_id"] == r.setl_id)
                and key not in undone
            ):
                undone.add(key)
                out.append((r.code, sale["sale_key"], str(r.event_id)))
                break
    return out
