"""EPCIS identifiers → this service's codes and GLNs (pure).

EPC pure-identity URNs (``urn:epc:id:sgtin:…``, ``sscc``, ``sgln``, ``pgln``) are decoded
by ``epcpy`` (GS1's Tag Data Standard: company-prefix split, %-escapes in serials), GS1
Digital Link URIs by ``biip``; both give GS1 element strings (epcpy's in canonical
order without brackets), which
:func:`service.core.codes.parse_code` then validates and puts in canonical form
(``01<GTIN>21<serial>``, ``00<SSCC>``) exactly as it does for scanned codes. Nothing here
parses GS1 syntax by hand.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Final

from biip import BiipException
from biip.gs1_digital_link_uris import GS1DigitalLinkURI
from epcpy.epc_schemes.pgln import PGLN
from epcpy.epc_schemes.sgln import SGLN
from epcpy.epc_schemes.sgtin import SGTIN
from epcpy.epc_schemes.sscc import SSCC
from epcpy.utils.common import ConvertException

from service.core.codes import is_gln, try_parse_code

_EPC_ID: Final = "urn:epc:id:"
_SGTIN_PATTERN: Final = "urn:epc:idpat:sgtin:"
MAX_LENGTH: Final = 300  # an identifier longer than this is none this service knows
_EPCPY_REFUSALS: Final = (ConvertException, ValueError, IndexError, KeyError, AttributeError)  # they vary
# Each as the unbracketed element string, the canonical form core.codes reads on its fast
# path (the bracketed one goes through biip again: five times the cost of epcpy itself).
# epcpy's SGTIN element string is always "(01)" + 14 digits + "(21)" + the serial.
_CODE_SCHEMES: Final[Mapping[str, Callable[[str], str]]] = {
    "sgtin": lambda uri: "01{}21{}".format(*_gtin_and_serial(SGTIN(uri).gs1_element_string())),
    "sscc": lambda uri: f"00{SSCC(uri).gs1_key()}",
}
_GLN_SCHEMES: Final[Mapping[str, Callable[[str], str]]] = {
    "sgln": lambda uri: SGLN(uri).gs1_key(),
    "pgln": lambda uri: PGLN(uri).gs1_key(),
}


def _gtin_and_serial(element_string: str) -> tuple[str, str]:
    if element_string[:4] != "(01)" or element_string[18:22] != "(21)":
        raise ValueError(f"not an SGTIN element string: {element_string!r}")
    return element_string[4:18], element_string[22:]


def _epc(uri: str, schemes: Mapping[str, Callable[[str], str]]) -> str | None:
    """What ``epcpy`` makes of a pure-identity URI (``urn:epc:id:<scheme>:…``) of one of
    ``schemes``, or None (another scheme, too long, or refused)."""
    if len(uri) > MAX_LENGTH:
        return None
    decode = schemes.get(uri[len(_EPC_ID) :].split(":", 1)[0])
    if decode is None:
        return None
    try:
        return decode(uri)
    except _EPCPY_REFUSALS:
        return None


def _digital_link(uri: str) -> dict[str, str] | None:
    """The AIs of a GS1 Digital Link URI (path and query), or None if it is not one."""
    if not uri.startswith(("http://", "https://")) or len(uri) > MAX_LENGTH:
        return None
    try:
        link = GS1DigitalLinkURI.parse(uri)
    except (BiipException, ValueError):
        return None
    return {e.ai.ai: e.value for e in link.element_strings}


def to_code(uri: str) -> str | None:
    """The canonical trace code an EPC names (an SGTIN: ``01<GTIN>21<serial>``; an SSCC:
    ``00<SSCC>``), or None for anything else (a class-level ``lgtin``, a GIAI, ...).
    A plain code in any form /v1/events accepts is taken too."""
    return _to_code(uri) if len(uri) <= MAX_LENGTH else None


# A pack's EPC comes back in event after event (commission, pack, ship, receive, ...), and
# a document often names it twice (commission and ship): decoding is most of what a
# capture costs in Python, so the answers are remembered (pure functions of the string;
# only strings up to MAX_LENGTH, so that the cache's size is bounded in bytes too).
@functools.lru_cache(maxsize=1 << 16)
def _to_code(uri: str) -> str | None:
    element_string: str | None = None
    if uri.startswith(_EPC_ID):
        element_string = _epc(uri, _CODE_SCHEMES)
    elif uri.startswith(("http://", "https://")):
        ais = _digital_link(uri)
        if ais is None:
            return None
        if "00" in ais:
            element_string = f"(00){ais['00']}"
        elif "01" in ais and "21" in ais:
            element_string = f"(01){ais['01']}(21){ais['21']}"
    else:
        parsed = try_parse_code(uri)
        return parsed.canonical if parsed else None
    if element_string is None:
        return None
    parsed = try_parse_code(element_string)
    return parsed.canonical if parsed else None


def pattern_product(uri: str) -> str | None:
    """The GTIN an EPC pattern of one product's instances names
    (``urn:epc:idpat:sgtin:<company>.<item>.*``), or None for any other string."""
    if not uri.startswith(_SGTIN_PATTERN) or not uri.endswith(".*") or len(uri) > MAX_LENGTH:
        return None
    element_string = _epc(f"{_EPC_ID}sgtin:{uri[len(_SGTIN_PATTERN) : -2]}.0", _CODE_SCHEMES)
    parsed = try_parse_code(element_string) if element_string else None
    return parsed.product_id if parsed else None


def to_location(uri: str) -> str | None:
    """A location identifier in one form, ``414<GLN>`` with ``254<extension>`` where it
    has one: from an SGLN URN (whose extension ``0`` is none, as the Tag Data Standard
    has it), a Digital Link with AI 414 (and 254), or a bare GLN. None for anything else."""
    return _to_location(uri) if len(uri) <= MAX_LENGTH else None


@functools.lru_cache(maxsize=1 << 12)
def _to_location(uri: str) -> str | None:
    gln: str | None = None
    extension: str | None = None
    if uri.startswith(f"{_EPC_ID}sgln:"):
        element_string = _epc(uri, {"sgln": lambda u: SGLN(u).gs1_element_string()})
        if element_string is not None and element_string.startswith("(414)"):
            gln, _, extension = element_string[len("(414)") :].partition("(254)")
            extension = None if extension == "0" else extension
    elif (ais := _digital_link(uri)) is not None:
        gln, extension = ais.get("414"), ais.get("254")
    else:
        gln = uri
    if gln is None or not is_gln(gln):
        return None
    return f"414{gln}" + (f"254{extension}" if extension else "")


def to_gln(uri: str) -> str | None:
    """The GLN (13 digits) a location or party identifier names: ``urn:epc:id:sgln:…``
    (any extension: a sub-location of that GLN), ``urn:epc:id:pgln:…``, or a Digital
    Link with AI 414 or 417. None for anything else."""
    return _to_gln(uri) if len(uri) <= MAX_LENGTH else None


@functools.lru_cache(maxsize=1 << 12)
def _to_gln(uri: str) -> str | None:
    gln: str | None = None
    if uri.startswith(_EPC_ID):
        gln = _epc(uri, _GLN_SCHEMES)
    else:
        ais = _digital_link(uri)
        if ais is not None:
            gln = ais.get("414") or ais.get("417")
    return gln if gln is not None and is_gln(gln) else None
