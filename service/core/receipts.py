"""The packs an organisation received (``received_packs`` of its statistics): each code a
receive named, a case or pallet counted as the packs in it when it was received. Pure:
the use case reads and walks (``usecases.investigation``), level by level.

What a container holds is read from its scans, not from a replay: the pack scans of it
dated up to the receipt, less its unpack scans dated up to the receipt, each code they
named a pack, or a container counted so in turn. A replay of every pack of every case an
organisation took in, for one figure, would cost a distributor seconds; scans are a few
rows a container. What only a replay sees is not subtracted: a pack picked out of the
case by a move of its own (no unpack scan), or packed into another case without one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from service.core.custody import holds_packs, kind_of, product_of

MAX_DEPTH = 8  # containers inside containers: a pallet of cases of packs is 2; more is malformed


def is_container(code: str, container_levels: Mapping[str, str]) -> bool:
    """A code that holds packs rather than being one, as a settlement judges it
    (``core.custody.holds_packs``); ``container_levels``: the level of each case and
    pallet product, by its id (a unit product is none of them)."""
    return holds_packs(kind_of(code), container_levels.get(product_of(code) or ""))


@dataclass(frozen=True, slots=True)
class Held:
    """A container whose packs count toward a receipt: its code, the receipt's time, +1,
    or -1 where an unpack scan took it out of the container it was counted in, and the
    containers it was found in (from the received code down: a malformed cycle stops)."""

    code: str
    at: datetime
    sign: int = 1
    within: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Scans:
    """What the store read of some containers' scans: each container's pack and unpack
    events (by id, their times), each event's type, how many packs it named, and the
    codes it named that may be containers (``is_container`` decides)."""

    of: Mapping[str, Mapping[UUID, datetime]]
    types: Mapping[UUID, str]
    packs: Mapping[UUID, int]
    maybe_containers: Mapping[UUID, Sequence[str]]


def count_level(
    held: Sequence[Held], scans: Scans, container_levels: Mapping[str, str]
) -> tuple[int, list[Held]]:
    """The packs the scans of ``held`` (dated up to each one's receipt) put in them, less
    those their unpack scans took out; and the containers they named, to count next."""
    packs = 0
    deeper: list[Held] = []
    for h in held:
        for scan, at in scans.of.get(h.code, {}).items():
            kind = scans.types.get(scan)
            if at > h.at or kind not in ("pack", "unpack"):
                continue
            sign = h.sign if kind == "pack" else -h.sign
            packs += sign * scans.packs.get(scan, 0)
            for child in scans.maybe_containers.get(scan, ()):
                if not is_container(child, container_levels):
                    packs += sign
                elif child != h.code and child not in h.within and len(h.within) < MAX_DEPTH:
                    deeper.append(Held(child, h.at, sign, (*h.within, h.code)))
    return packs, deeper
