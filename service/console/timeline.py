"""The custody timeline as a picture: a pure layout of a code's history (as
:func:`service.usecases.codes.history` returns it) that the code page draws as inline SVG.

Organisations are lanes, top to bottom in the order the pack met them; events are
columns in event-time order, one each, so that a busy day stays readable. A shipment is
an arrow from the shipper's lane to the receive that took it (or, while nothing received
it, to the destination's lane). A move the pack made inside a case or pallet is marked
``via``; an implicit unpack (a pick out of a case without an unpack scan) is marked
``implicit``. An event is ``late`` when it reached the service after an event that
happened later than it: it was uploaded out of order, which is what can explain (and
auto-clear) a flag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.console.text import isolated, visible

LEFT = 200  # room for the lane labels
STEP = 96
TOP = 24
LANE = 56
BOTTOM = 64  # room for the time labels


@dataclass(frozen=True, slots=True)
class Lane:
    org: str
    label: str
    y: int


@dataclass(frozen=True, slots=True)
class Mark:
    x: int
    y: int
    type: str
    at: datetime
    received_at: datetime | None
    org: str
    via: str | None
    late: bool
    implicit: bool
    event_id: str


@dataclass(frozen=True, slots=True)
class Arrow:
    x1: int
    y1: int
    x2: int
    y2: int
    via: bool
    received: bool  # False: nothing has received this shipment (yet)


@dataclass(frozen=True, slots=True)
class Timeline:
    width: int
    height: int
    lanes: list[Lane]
    marks: list[Mark]
    arrows: list[Arrow]


def late_flags(events: Sequence[Mapping[str, Any]]) -> list[bool]:
    """For events in event-time order: did each reach the service after some event that
    happened later than it?"""
    late = [False] * len(events)
    earliest_after: datetime | None = None
    for i in range(len(events) - 1, -1, -1):
        received = events[i].get("received_at")
        if received is not None and earliest_after is not None and received > earliest_after:
            late[i] = True
        if received is not None and (earliest_after is None or received < earliest_after):
            earliest_after = received
    return late


def _label(org: str, name: str | None) -> str:
    """A lane's label as plain text (SVG): the name isolated, the id's every character shown."""
    return f"{isolated(name)} ({visible(org)})" if name else visible(org)


def layout(events: Sequence[Mapping[str, Any]], org_names: Mapping[str, str]) -> Timeline:
    """Place ``events`` (a history's, in event-time order) on lanes and columns."""
    order: list[str] = []
    for e in events:
        for org in (e.get("org"), e.get("to")):
            if isinstance(org, str) and org not in order:
                order.append(org)
    lanes = [
        Lane(org, _label(org, org_names.get(org)), TOP + LANE * i + LANE // 2) for i, org in enumerate(order)
    ]
    y_of = {lane.org: lane.y for lane in lanes}
    late = late_flags(events)
    marks = [
        Mark(
            x=LEFT + STEP * i + STEP // 2,
            y=y_of[e["org"]],
            type=e["type"],
            at=e["at"],
            received_at=e.get("received_at"),
            org=e["org"],
            via=e.get("via"),
            late=late[i],
            implicit=bool(e.get("implicit")),
            event_id=str(e["event_id"]),
        )
        for i, e in enumerate(events)
    ]
    arrows = []
    for i, e in enumerate(events):
        if e["type"] != "ship" or not e.get("to"):
            continue
        start = marks[i]
        receive = next(
            (m for m in marks[i + 1 :] if m.type == "receive" and m.org == e["to"]),
            None,
        )
        if receive is not None:
            arrows.append(Arrow(start.x, start.y, receive.x, receive.y, bool(e.get("via")), True))
        else:
            arrows.append(
                Arrow(start.x, start.y, start.x + STEP // 2, y_of[e["to"]], bool(e.get("via")), False)
            )
    width = LEFT + STEP * max(len(events), 1) + STEP // 2
    height = TOP + LANE * max(len(lanes), 1) + BOTTOM
    return Timeline(width, height, lanes, marks, arrows)
