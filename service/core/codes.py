"""Drug trace-code parsing and normalisation (pure: no I/O, no framework imports).

Accepted inputs (ASCII space, tab, CR and LF around a code are dropped, :func:`strip_code`;
everything else is strict):

* **CN20** – exactly 20 ASCII digits (China's drug trace code). Canonical: the digits.
  Any 20-digit string is CN20, even one that would also read as a GS1 element string
  (e.g. ``00`` + SSCC-18, or ``01`` + GTIN + ``21`` + 2-digit serial).
* **GS1** – element string from a DataMatrix with AIs (01) and (21), optionally (17)
  and (10), in any order. Canonical: ``01<GTIN14>21<serial>``.
* **SSCC** – AI (00) alone. Canonical: ``00<SSCC18>``.

GS1/SSCC input forms: bracketed HRI ``(01)…(21)…``, or raw with GS (``\\x1d``) as FNC1
separator, optionally prefixed by the ``]d2`` symbology identifier and/or a GS.

AI data is parsed and validated by ``biip``; on top of it this module adds what biip
does not enforce (see the quirk notes in ``_parse_raw_gs1`` and ``_to_parsed``).
"""

from __future__ import annotations

import datetime
import enum
import re
from typing import Final

import msgspec
from biip import BiipException, ParseConfig
from biip.checksums import gs1_standard_check_digit
from biip.gs1_element_strings import GS1ElementString

__all__ = [
    "NOT_A_CODE",
    "PRODUCT_ID_RULE",
    "CodeKind",
    "InvalidCode",
    "ParsedCode",
    "as_typed",
    "is_gln",
    "is_product_id",
    "parse_code",
    "strip_code",
    "try_parse_code",
]

MAX_RAW_LENGTH: Final = 200
# what every answer says of a string that is no code (a reason's detail, a filter's 400)
NOT_A_CODE: Final = "not a CN20 code, GS1 element string or SSCC"

# What may surround a code and is dropped: ASCII space, tab, CR, LF (a scanner's or a
# form's). Nothing else: str.strip() would also drop U+3000, U+00A0, U+2028, \x1c-\x1f,
# \x85, ..., and then a code one route refuses would be taken by another (found by a probe:
# NHSA 3505 took a code ending in U+3000 that /v1/events refused).
_WHITESPACE: Final = " \t\r\n"
_GS: Final = "\x1d"
_SYMBOLOGY_DATAMATRIX: Final = "]d2"
_ALLOWED_AIS: Final = frozenset({"00", "01", "10", "17", "21"})

# GS1 AI encodable character set 82 (same class biip uses for AIs 10 and 21).
_CSET82: Final = r"""[!"%-?A-Z_a-z]"""
# Already-canonical GS1 code: AI 21 is last, so its variable-length serial needs no GS.
_CANONICAL_GS1_RE: Final = re.compile(rf"01([0-9]{{14}})21({_CSET82}{{1,20}})")
# Bracketed HRI: "(AI)data" repeated. Data may contain "(" only where it cannot be
# mistaken for an AI token; GS never appears in HRI.
_HRI_RE: Final = re.compile(r"(?:\([0-9]{2,4}\)(?:[^(\x1d]|\((?![0-9]{2,4}\)))+)+")
_HRI_TOKEN_RE: Final = re.compile(r"\(([0-9]{2,4})\)((?:[^(\x1d]|\((?![0-9]{2,4}\)))+)")

_BIIP_CONFIG: Final = ParseConfig(separator_chars=(_GS,))


class CodeKind(enum.StrEnum):
    CN20 = "cn20"
    GS1 = "gs1"
    SSCC = "sscc"


class ParsedCode(msgspec.Struct, frozen=True):
    canonical: str
    """CN20: the 20 digits; GS1: ``01<GTIN14>21<serial>``; SSCC: ``00<SSCC18>``."""
    kind: CodeKind
    product_id: str | None
    """CN20: first 7 digits; GS1: the GTIN-14; SSCC: None."""
    serial: str | None
    """CN20: last 13 digits; GS1: the AI 21 serial; SSCC: the 18-digit SSCC."""
    lot: str | None
    """GS1 AI (10), if present."""
    expiry: datetime.date | None
    """GS1 AI (17), if present (day 00 = last day of the month)."""


class InvalidCode(ValueError):
    """The input is not a valid trace code; the message says briefly why."""


def parse_code(raw: str) -> ParsedCode:
    """Parse and validate a trace code, returning its canonical form and parts.

    Raises:
        InvalidCode: if ``raw`` is not a str or not a valid CN20, GS1 or SSCC code.
    """
    if not isinstance(raw, str):
        raise InvalidCode(f"expected str, got {type(raw).__name__}")
    if len(raw) > MAX_RAW_LENGTH:
        raise InvalidCode(f"longer than {MAX_RAW_LENGTH} characters")
    text = strip_code(raw)

    # Fast path: CN20 (the common case). Two canonical GS1 forms are also 20 digits:
    # "00"+SSCC and "01"+GTIN+"21"+2-digit serial. They are read as such when their
    # check digit holds, so canonical forms always parse back to themselves; real CN20
    # codes begin with 8 (China's product-identifier prefix), so none is misread.
    if len(text) == 20 and text.isascii() and text.isdigit():
        if text.startswith("00") and _check_digit_ok(text[2:]):
            return ParsedCode(text, CodeKind.SSCC, None, text[2:], None, None)
        if text.startswith("01") and text[16:18] == "21" and _check_digit_ok(text[2:16]):
            return ParsedCode(text, CodeKind.GS1, text[2:16], text[18:], None, None)
        return ParsedCode(text, CodeKind.CN20, text[:7], text[7:], None, None)

    if not text:
        raise InvalidCode("empty code")
    if not text.isascii():
        # Also guards biip, whose patterns use \d and str.isdecimal() (Unicode digits).
        raise InvalidCode("non-ASCII characters")

    # Fast path: already-canonical GS1 (same result as the biip path, ~50x cheaper).
    m = _CANONICAL_GS1_RE.fullmatch(text)
    if m is not None:
        gtin, serial = m.group(1, 2)
        if not _check_digit_ok(gtin):
            raise InvalidCode(f"invalid GTIN check digit in (01){gtin}")
        return ParsedCode(text, CodeKind.GS1, gtin, serial, None, None)

    if text[0] == "(":
        return _to_parsed(_parse_hri(text))
    if text.startswith(_SYMBOLOGY_DATAMATRIX):
        return _to_parsed(_parse_raw_gs1(text[len(_SYMBOLOGY_DATAMATRIX) :].lstrip(_GS)))
    if text[0] == _GS:
        return _to_parsed(_parse_raw_gs1(text.lstrip(_GS)))
    try:
        return _to_parsed(_parse_raw_gs1(text))
    except InvalidCode as exc:
        if len(text) == 20 or text.isdigit():
            # Probably a mistyped CN20: say so rather than only citing GS1 AIs.
            msg = f"not CN20 (needs 20 digits, got {len(text)} chars) nor GS1 ({exc})"
            raise InvalidCode(msg) from None
        raise


def strip_code(raw: str) -> str:
    """``raw`` without the ASCII space, tab, CR and LF around it: the only characters
    dropped around a trace code, on every route (what :func:`parse_code` reads)."""
    return raw.strip(_WHITESPACE)


# Full-width forms of the printable ASCII characters (U+FF01-U+FF5E, what a Chinese
# input method types in its full-width mode), each read as the one it stands for, and the
# space, half- or full-width (U+3000), that a person types inside a code, read as none.
# Other Unicode spaces (U+00A0, U+2003, ...) are no one's typing: still not a code.
_TYPED: Final = {
    **{0xFF01 + i: chr(0x21 + i) for i in range(0x5E)},
    ord(" "): None,
    0x3000: None,  # the ideographic space: the full-width form of the space
}


def as_typed(raw: str) -> str:
    """``raw`` as a person meant it, for a search typed by a person (the console's) only:
    its full-width ASCII forms read as ASCII and its spaces dropped. No code holds a space
    (GS1 leaves it out of the characters of a serial or lot) or a non-ASCII character, so a
    code as written is unchanged; and each full-width form is the very character it looks
    like, so what reads as a code afterwards is the one on the screen. Not NFKC, which also
    reads ① as 1, ² as 2 and Ⅻ as XII: a code nobody typed. The API's codes stay strict
    (:func:`parse_code`)."""
    return raw.translate(_TYPED)


def try_parse_code(raw: str) -> ParsedCode | None:
    """Like :func:`parse_code`, but return None instead of raising InvalidCode."""
    try:
        return parse_code(raw)
    except InvalidCode:
        return None


# A code whose own label (GS1 AIs 10, 17) says another lot or expiry than the pack's
# record: at a commission one of them is wrong (the code is refused); at a sale or a scan
# the pack in hand was not made as the code's record says (a serial copied onto another
# lot's packaging: a fake), so it is not dispensable, and a sale of it is flagged.
LABEL_MISMATCH: Final = "LABEL_MISMATCH"


def label_disagrees(code: ParsedCode, lot: str | None, expiry: datetime.date | None) -> str | None:
    """What the label of ``code`` as scanned says against ``lot`` and ``expiry`` (the
    commission's, or the pack's record), or None when it agrees or says nothing of them
    (a CN20 code, an element string without AIs 10 and 17, a record without them)."""
    said = []
    if code.lot is not None and lot is not None and code.lot != lot:
        said.append(f"lot {code.lot} (the record: {lot})")
    if code.expiry is not None and expiry is not None and code.expiry != expiry:
        said.append(f"expiry {code.expiry.isoformat()} (the record: {expiry.isoformat()})")
    return f"the label says {' and '.join(said)}" if said else None


PRODUCT_ID_RULE: Final = "must be a 7-digit CN20 product identifier beginning with 8, or a GTIN-14"


def is_product_id(value: str) -> bool:
    """True for a 7-digit CN20 product identifier beginning with 8 or a GTIN-14 with a
    valid check digit (:data:`PRODUCT_ID_RULE`).

    A CN20 product identifier begins with 8 (China's prefix): that is what keeps a CN20
    apart from the 20-digit canonical GS1 and SSCC forms (:func:`parse_code`). A product
    registered as ``0110614`` or ``0006901`` would have codes read as another maker's GS1
    pack or as an SSCC (found by a probe)."""
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        return False
    if len(value) == 7:
        return value[0] == "8"
    return len(value) == 14 and _check_digit_ok(value)


def is_gln(value: str) -> bool:
    """A GS1 Global Location Number: 13 digits with a valid check digit."""
    return len(value) == 13 and value.isascii() and value.isdigit() and _check_digit_ok(value)


def _check_digit_ok(digits: str) -> bool:
    """GS1 mod-10 check over an ASCII-digit string (GTIN-14 or SSCC-18)."""
    return gs1_standard_check_digit(digits[:-1]) == ord(digits[-1]) - 48


def _parse_hri(text: str) -> list[GS1ElementString]:
    # biip's GS1Message.parse_hri is not used: it deletes all whitespace (and GS, which
    # str.split() treats as whitespace) inside the data and silently skips text it
    # cannot tokenise, e.g. "(21)AB(C)" yields serial "AB".
    if _HRI_RE.fullmatch(text) is None:
        raise InvalidCode("malformed bracketed GS1 element string")
    elements: list[GS1ElementString] = []
    for ai, data in _HRI_TOKEN_RE.findall(text):
        if ai not in _ALLOWED_AIS:
            raise InvalidCode(f"unsupported GS1 AI ({ai})")
        try:
            element = GS1ElementString.parse(ai + data, config=_BIIP_CONFIG)
        except (BiipException, ValueError) as exc:
            raise InvalidCode(f"invalid GS1 data for AI ({ai}): {exc}") from None
        elements.append(element)
    return elements


def _parse_raw_gs1(text: str) -> list[GS1ElementString]:
    # Same loop as biip's GS1Message.parse, plus a check biip lacks: a variable-length
    # field must be followed by GS or the end of data. biip stops AI 21/10 data at 20
    # chars or at the first char outside the charset and carries on parsing the rest as
    # new AIs, so e.g. a 25-char serial could come out as a 20-char serial plus a lot.
    if not text:
        raise InvalidCode("no GS1 data")
    elements: list[GS1ElementString] = []
    pos = 0
    end = len(text)
    while pos < end:
        try:
            element = GS1ElementString.extract(text[pos:], config=_BIIP_CONFIG)
        except (BiipException, ValueError) as exc:
            raise InvalidCode(f"invalid GS1 data: {exc}") from None
        ai = element.ai.ai
        if ai not in _ALLOWED_AIS:
            raise InvalidCode(f"unsupported GS1 AI ({ai})")
        pos += len(element)
        if element.ai.separator_required and pos < end and text[pos] != _GS:
            raise InvalidCode(f"AI ({ai}) data too long or has an invalid character at offset {pos}")
        while pos < end and text[pos] == _GS:
            pos += 1
        elements.append(element)
    return elements


def _to_parsed(elements: list[GS1ElementString]) -> ParsedCode:
    by_ai: dict[str, GS1ElementString] = {}
    for element in elements:
        ai = element.ai.ai
        if ai in by_ai:
            raise InvalidCode(f"duplicate GS1 AI ({ai})")
        by_ai[ai] = element

    # biip does not raise on a bad GTIN/SSCC check digit inside a message: it records
    # the error in element.gtin_error / element.sscc_error and leaves .gtin/.sscc None.
    sscc = by_ai.get("00")
    if sscc is not None:
        if "01" in by_ai:
            raise InvalidCode("both SSCC (00) and GTIN (01) present")
        if len(by_ai) != 1:
            raise InvalidCode("SSCC (00) must not be combined with other AIs")
        if sscc.sscc is None:
            raise InvalidCode(f"invalid SSCC: {sscc.sscc_error}")
        return ParsedCode("00" + sscc.value, CodeKind.SSCC, None, sscc.value, None, None)

    gtin = by_ai.get("01")
    if gtin is None:
        raise InvalidCode("GS1 code without GTIN (01) or SSCC (00)")
    if gtin.gtin is None:
        raise InvalidCode(f"invalid GTIN: {gtin.gtin_error}")
    serial = by_ai.get("21")
    if serial is None:
        raise InvalidCode("GS1 code without serial (21)")
    lot = by_ai.get("10")
    expiry = by_ai.get("17")
    return ParsedCode(
        canonical=f"01{gtin.value}21{serial.value}",
        kind=CodeKind.GS1,
        product_id=gtin.value,
        serial=serial.value,
        lot=None if lot is None else lot.value,
        expiry=None if expiry is None else expiry.date,
    )
