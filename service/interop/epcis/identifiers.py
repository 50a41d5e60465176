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
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from biip import BiipException
from biip.gs1_digital_link_uris import GS1DigitalLinkURI
from epcpy.epc_schemes.pgln import PGLN
from epcpy.epc_schemes.sgln import SGLN
from epcpy.epc_schemes.sgtin import SGTIN
from epcpy.epc_schemes.sscc import SSCC
from epcpy.utils.common import ConvertException

from service.core.codes import ParsedCode, is_gln, try_parse_code

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
# A Digital Link's identity is its path: the primary key and its key qualifiers; its query
# string carries data attributes only (GS1 Digital Link URI Syntax). A link whose query names
# a primary key, or a qualifier of its own key, names two things or one by halves and is
# none of ours (found by a probe: "/01/G/21/XYZ?21=0042" moved pack 0042, "?00=<SSCC>" a
# whole case, a link to a GLN or a GIAI with "?01=…&21=…" a pack). The primary keys and
# their qualifiers as the standard has them (biip's table of them is private); a lot (10) is
# a data attribute of an SSCC, as in GS1's own example "/00/…?02=…&37=25&10=…".
_QUALIFIERS: Final[Mapping[str, frozenset[str]]] = {
    "01": frozenset({"22", "10", "21", "235"}),
    "8006": frozenset({"22", "10", "21"}),
    "8010": frozenset({"8011"}),
    "414": frozenset({"254", "7040"}),
    "415": frozenset({"8020"}),
    "417": frozenset({"7040"}),
    "8017": frozenset({"8019"}),
    "8018": frozenset({"8019"}),
    "8004": frozenset({"7040"}),
    **{key: frozenset() for key in ("00", "253", "255", "401", "402", "8003", "8013")},
}
# ... and their convenience alphas, which older versions of the standard allowed
_ALPHAS: Final[Mapping[str, str]] = {
    **{"gtin": "01", "cpv": "22", "lot": "10", "ser": "21", "sscc": "00", "gln": "414", "glnx": "254"},
    **{"party": "417", "giai": "8004", "grai": "8003", "itip": "8006", "cpid": "8010", "cpsn": "8011"},
    **{"gsrn": "8018", "gsrnp": "8017", "srin": "8019", "gdti": "253", "gcn": "255", "ginc": "401"},
    **{"gsin": "402", "gmn": "8013", "refno": "8020", "payto": "415"},
}
# The paths that name a pack or a container: (01) with its serial (21), its lot (10) before
# it or not, and (00). A variant (22) or a third party's serial (235) names what no code of
# this service says.
_CODE_PATHS: Final = frozenset({("01", "21"), ("01", "10", "21"), ("00",)})


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
    """The (AI, value) pairs of a GS1 Digital Link URI's path, its primary key first, or
    None if it is not one or its query string names a primary key or a qualifier of its
    own (``_QUALIFIERS``). Read by ``biip`` once its percent-encoded unreserved characters
    are decoded, which leaves the same URI (RFC 3986, 6.2.2.2): ``/%34%31%34/`` is
    ``/414/``, which ``biip`` looks for before it decodes. Its data attributes are checked
    by ``biip`` as before, and not returned."""
    if not _is_web(uri) or len(uri) > MAX_LENGTH:
        return None
    decoded = _ESCAPE.sub(_unreserved, uri)
    try:
        parts = urlsplit(decoded)
        link = GS1DigitalLinkURI.parse(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))
        pairs = [(e.ai.ai, e.value) for e in link.element_strings]
        if parts.query:
            query = parse_qsl(parts.query, keep_blank_values=True)
            named = {_ALPHAS.get(key.lower(), key) for key, _ in query}
            if not named.isdisjoint(_QUALIFIERS) or not named.isdisjoint(_QUALIFIERS.get(pairs[0][0], ())):
                return None
            GS1DigitalLinkURI.parse(decoded)  # its data attributes, as biip checks them
    except (BiipException, ValueError):
        return None
    return pairs


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
        if tuple(ai for ai, _ in pairs) not in _CODE_PATHS:
            return None
        element_string = f"(00){ais['00']}" if "00" in ais else f"(01){ais['01']}(21){ais['21']}"
    else:
        parsed = try_parse_code(uri)
        return parsed.canonical if parsed else None
    if element_string is None:
        return None
    parsed = try_parse_code(element_string)
    return parsed.canonical if parsed else None


def labelled(uri: str) -> ParsedCode | None:
    """The code an identifier names, with its label's lot (AI 10) and expiry (17), when
    it carries either: a Digital Link's ``/10/`` lot and ``?17=`` expiry, an element
    string's (10) and (17). None otherwise (an EPC URN never carries them)."""
    return _labelled(uri) if len(uri) <= MAX_LENGTH else None


@functools.lru_cache(maxsize=1 << 12)
def _labelled(uri: str) -> ParsedCode | None:
    if _is_epc(uri):
        return None
    if _is_web(uri):
        pairs = _digital_link(uri)
        if pairs is None or tuple(ai for ai, _ in pairs) not in (("01", "10", "21"), ("01", "21")):
            return None
        ais = dict(pairs)
        # its expiry, a data attribute in the query string (biip checked it is a date)
        query = dict(parse_qsl(urlsplit(_ESCAPE.sub(_unreserved, uri)).query))
        expiry = f"(17){query['17']}" if "17" in query else ""
        lot = f"(10){ais['10']}" if "10" in ais else ""
        parsed = try_parse_code(f"(01){ais['01']}{expiry}{lot}(21){ais['21']}")
    else:
        parsed = try_parse_code(uri)
    return parsed if parsed is not None and (parsed.lot is not None or parsed.expiry is not None) else None


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
