"""Opaque paging cursors (``next_cursor`` handed out, ``cursor`` taken back): a list's
position in URL-safe base64, behind a letter naming the list, so that one list's cursor
is never taken as another's."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import TypeVar

from service.api.errors import bad_input

T = TypeVar("T")


def cursor(kind: str, position: str) -> str:
    """The cursor of ``position`` in the list named by the letter ``kind``."""
    return base64.urlsafe_b64encode(f"{kind}{position}".encode()).decode().rstrip("=")


def position(kind: str, given: str, read: Callable[[str], T]) -> T:
    """The position a cursor of the list ``kind`` holds, as ``read`` reads it (raising
    ValueError for one it refuses); a 400 naming ``cursor`` for anything this service did
    not hand out."""
    try:
        raw = base64.urlsafe_b64decode(given + "=" * (-len(given) % 4)).decode()
        if not raw.startswith(kind):
            raise ValueError(given)
        return read(raw[len(kind) :])
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError):
        raise bad_input("cursor", "not a cursor this service handed out") from None
