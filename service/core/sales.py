"""How sales draw units from packs (whole packs and split packs, 拆零)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


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
