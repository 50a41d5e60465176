"""The lot page's figures per organisation: what each still holds, apart from what it
sold out or destroyed (pure functions of the lot's summary)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# The API's key for a pack with no custodian (``by_custodian_and_state``,
# ``held_by_custodian``) and for one on its way to no named organisation
# (``in_transit_to``: an NHSA transfer out may name none): two things, one word
# (store.recalls.lot_summary). The lot page keeps them apart, each under a key no
# organisation id can be (ids are letters, digits and "_.:-") and a label of its own.
UNKNOWN = "unknown"
NO_CUSTODIAN = "(no-custodian)"
NO_DESTINATION = "(no-destination)"
LABELS = {NO_CUSTODIAN: "lot.no_custodian", NO_DESTINATION: "lot.no_destination"}


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
    ``by_custodian_and_state``, ``held_by_custodian`` and ``in_transit_to``; the packs
    with no custodian under :data:`NO_CUSTODIAN`, those on their way to no named
    organisation under :data:`NO_DESTINATION` (the API says ``unknown`` for both)."""

    def renamed(counts: Mapping[str, Any], key: str) -> dict[str, Any]:
        return {key if org == UNKNOWN else org: n for org, n in counts.items()}

    split: Mapping[str, Mapping[str, int]] = renamed(summary["by_custodian_and_state"], NO_CUSTODIAN)
    held: Mapping[str, int] = renamed(summary["held_by_custodian"], NO_CUSTODIAN)
    incoming: Mapping[str, int] = renamed(summary["in_transit_to"], NO_DESTINATION)
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
