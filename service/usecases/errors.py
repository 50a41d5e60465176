"""Refusals a use case raises; the API turns each into its problem-details answer."""

from __future__ import annotations

from typing import Any


class Invalid(Exception):
    """The request names something the service cannot accept (an unknown organisation,
    a manufacturer that is not one, ...): a 400 naming ``field``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Conflict(Exception):
    """The id exists with different attributes, or another record holds a value that is
    unique (``field``, and what is wrong with it): a 409."""

    def __init__(self, field: str | None = None, message: str = "") -> None:
        super().__init__(f"{field}: {message}" if field else "conflict")
        self.field = field
        self.message = message


class Stale(Exception):
    """A change made against a status the flag no longer has (``core.flags.stale_change``):
    nothing changed. ``flag`` is the flag as it is, with its history (who moved it, when,
    to what); ``expected`` the status the change was made against: a 409."""

    def __init__(self, flag: dict[str, Any], expected: str) -> None:
        super().__init__(f"the flag's status is {flag['status']}, not {expected}")
        self.flag = flag
        self.expected = expected
