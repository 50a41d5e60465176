"""The console's small charts, laid out here and drawn by the templates as SVG (no
script, no inline style: the sizes are SVG attributes). Pure functions of the figures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

LABEL_WIDTH = 200  # room for the labels, left of the bars
MOST = 15  # bars in a chart; past that, the rest in one


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    key: str  # what the bar stands for (a state, an organisation id), for its class and link
    value: int
    y: int
    length: float


@dataclass(frozen=True, slots=True)
class Bars:
    bars: list[Bar]
    width: int
    height: int


def own_bars(count: int, most: int = MOST) -> int:
    """How many of ``count`` items (longest first) have a bar of their own: all of them
    up to ``most``; past that ``most - 1``, and one more bar adds up the rest."""
    return count if count <= most else most - 1


def bars(
    items: Sequence[tuple[str, str, int]],
    *,
    length: int = 360,
    row: int = 26,
    most: int = MOST,
    rest: str = "",
) -> Bars:
    """Horizontal bars, one a row, longest first: ``items`` are (key, label, value). Past
    ``most`` bars, the rest are added up in one last bar labelled ``rest`` (key ``""``)."""
    ordered = sorted(items, key=lambda item: (-item[2], item[0]))
    own = own_bars(len(ordered), most)
    if own < len(ordered):
        ordered = [*ordered[:own], ("", rest, sum(value for _, _, value in ordered[own:]))]
    top = max((value for _, _, value in ordered), default=0) or 1
    laid = [
        Bar(label, key, value, 8 + i * row, round(length * value / top, 1))
        for i, (key, label, value) in enumerate(ordered)
    ]
    return Bars(laid, LABEL_WIDTH + length + 80, 8 + row * len(laid) + 4)


@dataclass(frozen=True, slots=True)
class Day:
    day: date
    x: int
    settlements: int
    flags: int
    settlements_height: float
    flags_height: float


@dataclass(frozen=True, slots=True)
class Columns:
    days: list[Day]
    width: int
    height: int  # of the plot; labels go below it
    top: int  # the largest value, the scale's top


def columns(days: Sequence[tuple[date, int, int]], *, height: int = 140, step: int = 22) -> Columns:
    """A pair of columns per day (settlements, flags), on one scale."""
    top = max((max(s, f) for _, s, f in days), default=0) or 1
    laid = [
        Day(d, 40 + i * step, s, f, round(height * s / top, 1), round(height * f / top, 1))
        for i, (d, s, f) in enumerate(days)
    ]
    return Columns(laid, 40 + step * len(laid) + 10, height, top)
