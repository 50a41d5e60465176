"""The registry as the rules see it: organisations and products, typed values built by
``service/store/registry.py``. They never change once registered."""

from __future__ import annotations

from dataclasses import dataclass


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
