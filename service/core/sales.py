"""How sales draw units from packs and give them back (whole packs and split packs, 拆零).

Every change of a pack's ``units_left`` goes through :func:`move_units`: settlements,
dispenses, returns and reversals alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from service.core.custody import CodeState

SETTLEMENT = "settlement"
EVENT = "event"
# A settlement id as the settlement engine assigns it (NHSA's setl_id is up to 30
# letters and digits): letters, digits, '.', '_' and '-', starting with a letter or
# digit. It names a resource in URL paths, so nothing that would need escaping there.
SETL_ID_SHAPE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


@dataclass(frozen=True, slots=True)
class Sale:
    """Which sale took units: a settlement (by its id), or a dispense event that names no
    settlement (by the event id). A dispense and a settlement with the same setl_id are
    one sale."""

    kind: str  # SETTLEMENT | EVENT
    id: str

    @classmethod
    def of_settlement(cls, setl_id: str) -> Sale:
        return cls(SETTLEMENT, setl_id)

    @classmethod
    def of_dispense(cls, event_id: UUID, setl_id: str | None) -> Sale:
        return cls(SETTLEMENT, setl_id) if setl_id else cls(EVENT, str(event_id))


@dataclass(slots=True)
class Consumption:
    """The units one sale took from one pack."""

    code: str
    sale: Sale
    setl_id: str | None
    event_id: UUID | None
    org: str
    at: datetime
    units: int
    reversed: bool = False
    reversed_by: UUID | None = None  # the return that gave the units back (None: a reversal)

    def describe(self) -> str:
        if self.setl_id:
            return f"settlement {self.setl_id}"
        return f"dispense event {self.event_id}"


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


def move_units(states: Mapping[str, CodeState], changes: Iterable[tuple[str, int]]) -> set[str]:
    """Apply (code, units) changes to the packs' ``units_left``: negative units are drawn
    by a sale, positive units come back (a return or a reversal). Returns the codes
    changed."""
    changed = set()
    for code, units in changes:
        state = states[code]
        state.units_left = (state.units_left or 0) + units
        changed.add(code)
    return changed


@dataclass(frozen=True, slots=True)
class Return:
    """A patient's return of one pack to the organisation that sold it."""

    event_id: UUID
    org: str
    at: datetime
    setl_id: str | None
    code: str
    undoes: UUID | None = None  # the dispense event whose sale it undoes, if it names one


def match_returns(
    returns: Sequence[Return], open_sales: Sequence[Consumption]
) -> list[tuple[Return, Consumption]]:
    """Which sale each return undoes: the latest unreversed sale of that pack by the same
    organisation at or before the return (the sale named by ``setl_id`` if the return
    names one). A return with no such sale undoes nothing yet. A return that names the
    dispense event it undoes (``undoes``) undoes that event's sale of the pack only, or
    nothing. ``returns`` in event-time order; ``open_sales`` newest first."""
    undone: set[tuple[str, Sale]] = set()
    out = []
    for r in returns:
        for sale in open_sales:
            key = (sale.code, sale.sale)
            if r.undoes is not None:
                named = sale.event_id == r.undoes
            else:
                named = sale.at <= r.at and (r.setl_id is None or sale.setl_id == r.setl_id)
            if sale.code == r.code and sale.org == r.org and named and key not in undone:
                undone.add(key)
                out.append((r, sale))
                break
    return out
