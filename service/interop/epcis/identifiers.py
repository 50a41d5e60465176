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
import re
import string
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

_EPC_ID: Final = "urn:epc:id:"  # read in any case (_is_epc)
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
_SGLN_SCHEME: Final[Mapping[str, Callable[[str], str]]] = {"sgln": lambda uri: SGLN(uri).gs1_element_string()}
_ESCAPE: Final = re.compile("%[0-9A-Fa-f]{2}")
_UNRESERVED: Final = frozenset(string.ascii_letters + string.digits + "-._~")  # RFC 3986, 2.3


def _gtin_and_serial(element_string: str) -> tuple[str, str]:
    if element_string[:4] != "(01)" or element_string[18:22] != "(21)":
        raise ValueError(f"not an SGTIN element string: {element_string!r}")
    return element_string[4:18], element_string[22:]


def _is_epc(uri: str) -> bool:
    """Is ``uri`` an EPC pure-identity URN? Its ``urn:epc:id:`` in any case: "urn" and the
    namespace "epc" are case-insensitive (RFC 8141), and so is GS1's ``urn:epc:id:``, so
    ``URN:EPC:ID:SGLN:…`` is ``urn:epc:id:sgln:…`` (found by a probe: read as no location,
    it skipped the check that a location is the capturing organisation's)."""
    return uri[: len(_EPC_ID)].lower() == _EPC_ID


def _epc(uri: str, schemes: Mapping[str, Callable[[str], str]]) -> str | None:
    """What ``epcpy`` makes of a pure-identity URI (``urn:epc:id:<scheme>:…``, its prefix
    and scheme in any case) of one of ``schemes``, or None (another scheme, too long, or
    refused)."""
    if len(uri) > MAX_LENGTH or not _is_epc(uri):
        return None
    scheme, _, rest = uri[len(_EPC_ID) :].partition(":")
    decode = schemes.get(scheme.lower())
    if decode is None:
        return None
    try:
        return decode(f"{_EPC_ID}{scheme.lower()}:{rest}")  # epcpy reads the lower case only
    except _EPCPY_REFUSALS:
        return None


def _is_web(uri: str) -> bool:
    return uri[:8].lower().startswith(("http://", "https://"))  # a scheme is case-insensitive


def _unreserved(match: re.Match[str]) -> str:
    char = chr(int(match[0][1:], 16))
    return char if char in _UNRESERVED else match[0]


def _digital_link(uri: str) -> list[tuple[str, str]] | None:
    """The (AI, value) pairs of a GS1 Digital Link URI, its primary key (the first key of
    its path) first, or None if it is not one. Read by ``biip`` once its percent-encoded
    unreserved characters are decoded, which leaves the same URI (RFC 3986, 6.2.2.2):
    ``/%34%31%34/`` is ``/414/``, which ``biip`` looks for before it decodes."""
    if not _is_web(uri) or len(uri) > MAX_LENGTH:
        return None
    try:
        link = GS1DigitalLinkURI.parse(_ESCAPE.sub(_unreserved, uri))
    except (BiipException, ValueError):
        return None
    return [(e.ai.ai, e.value) for e in link.element_strings]


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
    if _is_epc(uri):
        element_string = _epc(uri, _CODE_SCHEMES)
    elif _is_web(uri):
        pairs = _digital_link(uri)
        if pairs is None:
            return None
        ais = dict(pairs)
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
    has it), a Digital Link whose primary key is AI 414 (and 254), or a bare GLN. None
    for anything else (a GLN in a Digital Link's query string is no key of it)."""
    place = _place(uri) if len(uri) <= MAX_LENGTH else None
    if place is None:
        return None
    gln, extension = place
    return f"414{gln}" + (f"254{extension}" if extension else "")


def location_gln(uri: str) -> str | None:
    """The GLN of the location :func:`to_location` reads, or None where it reads none."""
    place = _place(uri) if len(uri) <= MAX_LENGTH else None
    return place[0] if place is not None else None


@functools.lru_cache(maxsize=1 << 12)
def _place(uri: str) -> tuple[str, str | None] | None:
    """(GLN, extension or None) of a location identifier (:func:`to_location`)."""
    extension: str | None = None
    if _is_epc(uri):
        element_string = _epc(uri, _SGLN_SCHEME)
        if element_string is None or not element_string.startswith("(414)"):
            return None
        gln, _, extension = element_string[len("(414)") :].partition("(254)")
        extension = None if extension == "0" else extension
    elif _is_web(uri):
        pairs = _digital_link(uri)
        if pairs is None or pairs[0][0] != "414":
            return None
        gln, extension = pairs[0][1], dict(pairs).get("254")
    else:
        gln = uri
    return (gln, extension or None) if is_gln(gln) else None


def to_gln(uri: str) -> str | None:
    """The GLN (13 digits) a location or party identifier names: ``urn:epc:id:sgln:…``
    (any extension: a sub-location of that GLN), ``urn:epc:id:pgln:…``, or a Digital
    Link whose primary key is AI 414 or 417. None for anything else."""
    return _to_gln(uri) if len(uri) <= MAX_LENGTH else None


@functools.lru_cache(maxsize=1 << 12)
def _to_gln(uri: str) -> str | None:
    gln: str | None = None
    if _is_epc(uri):
        gln = _epc(uri, _GLN_SCHEMES)
    elif (pairs := _digital_link(uri)) is not None and pairs[0][0] in ("414", "417"):
        gln = pairs[0][1]
    return gln if gln is not None and is_gln(gln) else None
