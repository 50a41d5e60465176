"""Fresh trace codes for test and load data, in the canonical forms that
``service.core.codes.parse_code`` gives back unchanged (tests/unit/test_benchkit.py checks it)."""

from __future__ import annotations

from biip.checksums import gs1_standard_check_digit  # the check digit service.core.codes verifies


def cn20(product_id: str, serial: int) -> str:
    """A CN20 code: the 7-digit product id and a 13-digit serial."""
    return f"{product_id}{serial:013d}"


def sscc(prefix: str, serial: int) -> str:
    """A canonical SSCC, ``00`` + 18 digits: ``prefix`` (extension digit and company
    prefix), the serial reference zero-padded to 17 digits in all, and the check digit."""
    body = prefix + str(serial).zfill(17 - len(prefix))
    if len(body) != 17 or not body.isdigit():
        raise ValueError(f"an SSCC body is 17 digits, got {body!r}")
    return f"00{body}{gs1_standard_check_digit(body)}"
