"""Refusals a use case raises; the API turns each into its problem-details answer."""

from __future__ import annotations


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
