"""The registry as the rules see it: organisations and products, typed values built by
``service/store/registry.py``. They never change once registered, but for the
identifiers an organisation may be given later (:func:`with_identifiers`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Org:
    id: str
    name: str
    kind: str  # manufacturer | distributor | hospital | pharmacy
    region: str  # 6-digit administrative division code
    fixmedins_code: str | None = None  # its code on the national insurance platform (NHSA uploads)
    glns: tuple[str, ...] = ()  # GS1 GLNs (13 digits) by which EPCIS events name it, sorted

    @property
    def dispenses(self) -> bool:
        """Does it dispense to patients (the organisation a settlement pays)?"""
        return self.kind in DISPENSING


DISPENSING = ("hospital", "pharmacy")


class IdentifierKept(Exception):
    """An organisation's NHSA institution code is set once: another one for it is refused."""


def with_identifiers(org: Org, fixmedins_code: str | None, glns: Iterable[str]) -> Org:
    """``org`` with identifiers added, for an organisation that joins NHSA uploads or
    EPCIS after it was registered (found by an upgrade probe: no way to give them): its
    ``fixmedins_code`` where it has none, and ``glns`` besides its own. The code it has
    is kept (IdentifierKept for another): its uploads' records and event ids were made
    under it; and no GLN is taken away: events captured under it name the organisation."""
    if fixmedins_code is not None and org.fixmedins_code not in (None, fixmedins_code):
        raise IdentifierKept(
            f"this organisation's fixmedins_code is {org.fixmedins_code}, and it is kept: "
            "its uploads were made under it"
        )
    return replace(
        org,
        fixmedins_code=org.fixmedins_code or fixmedins_code,
        glns=tuple(sorted({*org.glns, *glns})),
    )


@dataclass(frozen=True, slots=True)
class PersonLimit:
    """The most units one insured person plausibly needs within ``days`` days."""

    units: int
    days: int


UNIT = "unit"  # a product's level when it is a sales pack; a case or a pallet holds packs


@dataclass(frozen=True, slots=True)
class Product:
    product_id: str
    name: str
    med_list_codg: str  # the insurance catalogue item settlements bill
    pack_units: int  # smallest units in one pack
    manufacturer: str
    level: str  # unit | case | pallet
    contains: int | None
    regions: tuple[str, ...]  # region-code prefixes where it may be sold; () = anywhere
    trace_exempt: bool
    person_limit: PersonLimit | None = None

    def sold_in(self, region: str) -> bool:
        """May this product be sold in ``region``?"""
        return not self.regions or any(region.startswith(prefix) for prefix in self.regions)
