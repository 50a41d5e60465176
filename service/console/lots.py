"""The lot page's figures per organisation: what each still holds, apart from what it
sold out or destroyed (pure functions of the lot's summary)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Holding:
    """One organisation's packs of a lot."""

    held: int  # neither sold out nor destroyed: in its stock, or shipped by it and not received yet
    shipped: int  # of ``held``: shipped by it, on their way (it is their custodian until a receipt)
    incoming: int  # on their way to it (counted in the shipper's ``held``)
    sold_out: int  # no units left: with patients
    destroyed: int


def holdings(summary: Mapping[str, Any]) -> dict[str, Holding]:
    """Every organisation the lot's packs are with or on their way to, from the API's
    ``by_custodian_and_state``, ``held_by_custodian`` and ``in_transit_to``."""
    split: Mapping[str, Mapping[str, int]] = summary["by_custodian_and_state"]
    held: Mapping[str, int] = summary["held_by_custodian"]
    incoming: Mapping[str, int] = summary["in_transit_to"]
    return {
        org: Holding(
            held=held.get(org, 0),
            shipped=split.get(org, {}).get("in_transit", 0),
            incoming=incoming.get(org, 0),
            sold_out=split.get(org, {}).get("dispensed", 0),
            destroyed=split.get(org, {}).get("destroyed", 0),
        )
        for org in {*split, *incoming}
    }


def added(items: Iterable[Holding]) -> Holding:
    """Several organisations' holdings added up (a chart's last bar, "the others")."""
    items = list(items)
    return Holding(
        held=sum(h.held for h in items),
        shipped=sum(h.shipped for h in items),
        incoming=sum(h.incoming for h in items),
        sold_out=sum(h.sold_out for h in items),
        destroyed=sum(h.destroyed for h in items),
    )
