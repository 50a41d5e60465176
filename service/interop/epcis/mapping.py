"""One EPCIS 2.0 event → the record kept of it and, where its CBV business step moves
custody, the same :class:`~service.core.events.Incoming` command /v1/events builds (pure).

| EPCIS event                                          | command      |
|------------------------------------------------------|--------------|
| ObjectEvent ADD, bizStep commissioning               | commission (lot, expiry from ``ilmd``) |
| ObjectEvent, bizStep shipping, a registered destination | ship (``destinationList``; none: a warning) |
| ObjectEvent, bizStep receiving                       | receive (``from``: ``sourceList``) |
| ObjectEvent, bizStep dispensing / retail_selling     | dispense (disposition partially_dispensed: refused) |
| ObjectEvent, bizStep destroying / decommissioning    | destroy      |
| ObjectEvent OBSERVE / DELETE, disposition destroyed  | destroy (whatever the step) |
| AggregationEvent ADD / DELETE with a ``parentID``    | pack / unpack (none named: all, at its time) |

A dispense's ``setl_id`` is the settlement its ``bizTransactionList`` names in a business
transaction of :data:`SETTLEMENT_TYPE` (:func:`settlement_of`). An event carrying an
``errorDeclaration`` declares the event under its eventID
erroneous: it is kept and queryable, with no custody effect. Everything else (other
types, steps and actions) is kept and queryable, with no custody effect. The acting
organisation is the one holding the event's ``bizLocation`` (else ``readPoint``) GLN; the
one a ship goes to, or a receive comes from, is read by :func:`custody_glns`.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Collection, Container, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final

import msgspec

from service.core.codes import ParsedCode
from service.core.custody import product_of
from service.core.events import Incoming, Rejection, shape_errors, take_codes, time_problem
from service.core.sales import SETL_ID_MEANS, SETL_ID_SHAPE
from service.interop.epcis.identifiers import (
    MAX_LENGTH,
    labelled,
    location_gln,
    pattern_product,
    to_code,
    to_gln,
    to_location,
)

# GS1's JSON-LD contexts (every version): the query document names the standard one itself
GS1_CONTEXT_PREFIX: Final = "https://ref.gs1.org/standards/epcis/"
# uuid5 namespace of the facts made from EPCIS events whose eventID is not a UUID URN
NAMESPACE: Final = uuid.UUID("2f6b0c1e-6d0b-5c1a-9a63-4f3c1e0e7a51")
_UUID_URN: Final = "urn:uuid:"  # read in any case (_uuid_of)
EVENT_TYPES: Final = frozenset(
    {"ObjectEvent", "AggregationEvent", "TransactionEvent", "TransformationEvent", "AssociationEvent"}
)
_STEP_PREFIXES: Final = ("https://ref.gs1.org/cbv/BizStep-", "urn:epcglobal:cbv:bizstep:", "cbv:BizStep-")
_DISP_PREFIXES: Final = ("https://ref.gs1.org/cbv/Disp-", "urn:epcglobal:cbv:disp:", "cbv:Disp-")
_SDT_PREFIXES: Final = ("https://ref.gs1.org/cbv/SDT-", "urn:epcglobal:cbv:sdt:", "cbv:SDT-")
_LOCATION: Final = "a location: an SGLN (urn:epc:id:sgln:…), or a GS1 Digital Link with AI 414"
_PARTY: Final = "a party's GLN: a PGLN or an SGLN, or a GS1 Digital Link with AI 417 or 414"
# what a source or destination of each CBV type names (another type's: any URI)
_SOURCE_DEST_TYPES: Final = {
    "owning_party": (to_gln, _PARTY),
    "possessing_party": (to_gln, _PARTY),
    "location": (to_location, _LOCATION),
}
# Where goods are, by the CBV's source/destination types: the location, else the party in
# possession. An owning party names ownership, not custody (CBV), and is read only where
# the list names neither (a ship to its new owner, as the commonest simple ship is sent)
_CUSTODY_TYPES: Final = ("location", "possessing_party", "owning_party")
# the CBV steps that move custody on an ObjectEvent (_command); on another type or action,
# none: a warning (_no_effect)
_CUSTODY_STEPS: Final = frozenset(
    {
        "commissioning",
        "shipping",
        "receiving",
        "dispensing",
        "retail_selling",
        "destroying",
        "decommissioning",
    }
)
_MAX_LOT: Final = 64  # as /v1/events takes a lot
_LOT_KEYS: Final = ("cbvmda:lotNumber", "urn:epcglobal:cbv:mda:lotNumber", "lotNumber")
_EXPIRY_KEYS: Final = (
    "cbvmda:itemExpirationDate",
    "urn:epcglobal:cbv:mda:itemExpirationDate",
    "itemExpirationDate",
)

# the lists of instance identifiers an event may carry (stored, indexed: bounded in length)
_EPC_LISTS: Final = ("epcList", "childEPCs", "inputEPCList", "outputEPCList")
_QUANTITY_LISTS: Final = ("quantityList", "childQuantityList", "inputQuantityList", "outputQuantityList")
# lists whose order carries no meaning (an event's contents compare them in one order)
_UNORDERED_LISTS: Final = (
    *_EPC_LISTS,
    *_QUANTITY_LISTS,
    "sourceList",
    "destinationList",
    "bizTransactionList",
)
_ACTIONS: Final = ("ADD", "OBSERVE", "DELETE")
_OFFSET: Final = re.compile(r"[+-](?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00)")  # GS1's schema's pattern
_URI: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")  # a scheme, then no space
# the roles an EPC is matched in by the queries' parameters (match_keys, query_keys)
_EPC_ROLES: Final = {
    "epcList": "epc",
    "childEPCs": "epc",
    "parentID": "parent",
    "inputEPCList": "io",
    "outputEPCList": "io",
}
_QUERY_ROLES: Final = {
    "MATCH_epc": ("epc",),
    "MATCH_anyEPC": ("epc", "parent", "io"),
    "MATCH_parentID": ("parent",),
}
# the places kept as match keys, by role, and the query parameter matching each
_PLACE_ROLES: Final = {"bizLocation": "location", "readPoint": "readpoint"}
_PLACE_PARAMETERS: Final = {"EQ_bizLocation": "location", "EQ_readPoint": "readpoint"}
# The business-transaction type naming the insurance settlement a dispense is (the CBV has
# none for an insurance claim): the CBV's form of a type (``https://ref.gs1.org/cbv/BTT-po``)
# under this service's own namespace, as its problem types are. Its ``bizTransaction`` is
# SETTLEMENT_URI followed by the settlement id: the dispense's ``setl_id`` on /v1/events
SETTLEMENT_TYPE: Final = "https://tracecode.example/cbv/BTT-setl"
SETTLEMENT_URI: Final = "https://tracecode.example/setl/"
_SETL_ID: Final = re.compile(SETL_ID_SHAPE)  # fullmatch, as /v1/events and NHSA read setl_id
MAX_EVENT_ID: Final = 1000  # an eventID is kept as a key: PostgreSQL's index holds ~2,700 bytes

# /v1/events' field names (core.events.shape_errors) as this format names them
_FIELDS: Final = {
    "at": "eventTime",
    "lot": "ilmd.cbvmda:lotNumber",
    "expiry": "ilmd.cbvmda:itemExpirationDate",
    "to": "destinationList",
    "parent": "parentID",
    "setl_id": "bizTransactionList",
}


class EventError(Exception):
    """The event cannot be taken: the standard's ``ValidationException`` naming ``field``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Record:
    """An EPCIS event as kept: the body as received (with its eventID filled in when it
    had none) and the columns the queries use."""

    event_id: str
    fact_id: uuid.UUID
    type: str
    event_time: datetime
    action: str | None
    biz_step: str | None
    biz_location: str | None
    epcs: tuple[str, ...]
    parent_id: str | None
    body: dict[str, Any]
    match_keys: tuple[str, ...]  # its identifiers in one form (:func:`match_keys`)


@dataclass(frozen=True, slots=True)
class Mapped:
    record: Record
    command: Incoming | None  # None: kept, no custody effect
    refused: tuple[Rejection, ...]  # identifiers of a custody event that are not codes
    warning: tuple[str, str] | None = None  # (field, message): why a step moves no custody


def _cbv(value: object, prefixes: tuple[str, ...]) -> str | None:
    """A CBV term's bare name (``shipping``) from any of its spellings; other URIs as given."""
    if not isinstance(value, str):
        return None
    for prefix in prefixes:
        if value.startswith(prefix):
            return value[len(prefix) :]
    return value


def biz_step(value: object) -> str | None:
    """The CBV business step's bare name (``shipping``); other URIs as given."""
    return _cbv(value, _STEP_PREFIXES)


def disposition(value: object) -> str | None:
    """The CBV disposition's bare name (``destroyed``); other URIs as given."""
    return _cbv(value, _DISP_PREFIXES)


def disposition_spellings(value: str) -> list[str]:
    """Every way a capture may have written the disposition ``value`` names (EQ_disposition
    reads the stored JSON, as written): a CBV disposition by its bare name and each of its
    prefixed forms, in whichever form it is asked for; another URI as given."""
    bare = disposition(value) or value
    if ":" in bare:  # not a CBV term: a URI or CURIE of its own
        return [value]
    return list(dict.fromkeys([value, bare, *(prefix + bare for prefix in _DISP_PREFIXES)]))


def _id_of(value: object) -> str | None:
    if isinstance(value, dict):
        ident = value.get("id")
        return ident if isinstance(ident, str) else None
    return None


def location_glns(event: Mapping[str, Any]) -> list[str]:
    """The GLNs of the event's read point and business location (the places it happened),
    as :func:`to_location` reads them (:func:`_check` refuses an event with another)."""
    glns = []
    for key in ("bizLocation", "readPoint"):
        ident = _id_of(event.get(key))
        gln = location_gln(ident) if ident else None
        if gln:
            glns.append(gln)
    return glns


def party_glns(event: Mapping[str, Any], key: str) -> list[str]:
    """The GLNs named by ``sourceList`` / ``destinationList`` (owning party or location)."""
    items = event.get(key)
    out: list[str] = []
    if isinstance(items, list):
        for item in items:
            ident = item.get(key[: -len("List")]) if isinstance(item, dict) else None
            gln = to_gln(ident) if isinstance(ident, str) else None
            if gln and gln not in out:
                out.append(gln)
    return out


def custody_glns(event: Mapping[str, Any], key: str) -> list[str]:
    """The GLNs ``sourceList`` / ``destinationList`` names as where the goods come from or
    go, whatever the list's order: those of its entries of the first of
    :data:`_CUSTODY_TYPES` it has."""
    items = event.get(key)
    by_type: dict[str, list[str]] = {}
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        ident = item.get(key[: -len("List")])
        gln = to_gln(ident) if isinstance(ident, str) else None
        type_ = _cbv(item.get("type"), _SDT_PREFIXES)
        if gln and type_ in _CUSTODY_TYPES:
            by_type.setdefault(type_, []).append(gln)
    return next((by_type[t] for t in _CUSTODY_TYPES if t in by_type), [])


def all_glns(event: Mapping[str, Any]) -> list[str]:
    return [*location_glns(event), *party_glns(event, "sourceList"), *party_glns(event, "destinationList")]


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _too_long(event: Mapping[str, Any]) -> tuple[str, str] | None:
    """(field, message) for an identifier longer than is kept as an index key: the eventID,
    and every EPC (instances, classes, the parent); None if all fit."""
    given = event.get("eventID")
    if isinstance(given, str) and len(given) > MAX_EVENT_ID:
        return "eventID", f"is longer than {MAX_EVENT_ID} characters"
    named: list[tuple[str, object]] = [("parentID", event.get("parentID"))]
    for key in _EPC_LISTS:
        items = event.get(key)
        named += [(f"{key}[{i}]", v) for i, v in enumerate(items if isinstance(items, list) else [])]
    for key in _QUANTITY_LISTS:
        items = event.get(key)
        for i, item in enumerate(items if isinstance(items, list) else []):
            named.append((f"{key}[{i}].epcClass", item.get("epcClass") if isinstance(item, dict) else None))
    for field, value in named:
        if isinstance(value, str) and len(value) > MAX_LENGTH:
            return field, f"is longer than {MAX_LENGTH} characters"
    return None


def epc_count(event: Mapping[str, Any]) -> int:
    """How many EPCs the event's lists name (what /v1/events counts as a request's codes)."""
    return sum(len(items) for key in _EPC_LISTS if isinstance(items := event.get(key), list))


def epcs_of(event: Mapping[str, Any]) -> tuple[str, ...]:
    """Every EPC the event names (instances and classes), as given: what MATCH_anyEPC sees."""
    found: list[str] = []
    for key in _EPC_LISTS:
        found.extend(_strings(event.get(key)))
    for key in _QUANTITY_LISTS:
        items = event.get(key)
        if isinstance(items, list):
            classes = (i.get("epcClass") for i in items if isinstance(i, dict))
            found.extend(c for c in classes if isinstance(c, str))
    parent = event.get("parentID")
    if isinstance(parent, str):
        found.append(parent)
    return tuple(dict.fromkeys(found))


def read_time(raw: object) -> datetime | None:
    """An RFC 3339 date-time as the service reads one everywhere (``at`` on /v1/events, a
    query's bounds: msgspec's parser), or None if it is none. It may lack an offset."""
    try:
        return msgspec.convert(raw, datetime)
    except msgspec.ValidationError:
        return None


def _sorted(items: list[Any]) -> list[Any]:
    return sorted(items, key=lambda item: msgspec.json.encode(item, order="sorted"))


def content(event: Mapping[str, Any], *, places: bool = True) -> dict[str, Any]:
    """What an event says, as read: without what is not the event's own (``eventID``,
    ``recordTime`` the repository sets, the ``@context`` a document or the event brings),
    the time as its instant, instance identifiers (the EPC lists, ``parentID``) as the
    codes they name, the CBV step and disposition by bare name, the places and parties
    (``bizLocation``, ``readPoint``, sources and destinations with their CBV type by bare
    name) as :func:`_source_dest` reads them, and the lists whose order means nothing
    (EPCs, quantities, sources, destinations, transactions) in one order. Two events with
    equal contents are one event. ``places=False``: the places and parties as written,
    as the version before read them (:func:`former_ids`)."""
    out = {k: v for k, v in event.items() if k not in ("eventID", "recordTime", "@context")}
    at = read_time(out.get("eventTime"))
    if at is not None and at.tzinfo is not None:
        out["eventTime"] = at.astimezone(UTC).isoformat()
    for key, read in (("bizStep", biz_step), ("disposition", disposition)):
        if isinstance(out.get(key), str):
            out[key] = read(out[key])
    if isinstance(out.get("parentID"), str):
        out["parentID"] = to_code(out["parentID"]) or out["parentID"]
    for key in _EPC_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [(to_code(v) or v) if isinstance(v, str) else v for v in out[key]]
    for key in ("bizLocation", "readPoint") if places else ():
        value = out.get(key)
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            out[key] = {**value, "id": to_location(value["id"]) or value["id"]}
    for key in ("sourceList", "destinationList") if places else ():
        if isinstance(out.get(key), list):
            out[key] = [_source_dest(item, key[: -len("List")]) for item in out[key]]
    for key in _UNORDERED_LISTS:
        if isinstance(out.get(key), list):
            out[key] = _sorted(out[key])
    return out


def _source_dest(item: object, name: str) -> object:
    """A ``source`` / ``destination`` (``name``) entry as read: its CBV type by bare name
    (``https://ref.gs1.org/cbv/SDT-location`` is ``location``), and the GLN of a party or
    the location it names as :data:`_SOURCE_DEST_TYPES` reads that type (an SGLN URN and a
    Digital Link alike); another type's URI as given."""
    if not isinstance(item, dict):
        return item
    type_ = _cbv(item.get("type"), _SDT_PREFIXES)
    out = {**item, "type": type_} if type_ is not None else dict(item)
    ident = item.get(name)
    if type_ in _SOURCE_DEST_TYPES and isinstance(ident, str):
        read, _ = _SOURCE_DEST_TYPES[type_]
        out[name] = read(ident) or ident
    return out


def _made_id(digest: str) -> tuple[str, uuid.UUID]:
    fact_id = uuid.uuid5(NAMESPACE, digest)
    return f"{_UUID_URN}{fact_id}", fact_id


def _hash(value: Mapping[str, Any]) -> str:
    return hashlib.sha256(msgspec.json.encode(value, order="sorted")).hexdigest()


def former_ids(event: Mapping[str, Any]) -> list[str]:
    """The eventIDs the event was kept under by earlier versions, where :func:`identify`
    now names it otherwise: a ``urn:uuid:`` eventID as written, where it is not in
    :func:`canonical_id`'s form; for an event without one, the id its JSON as sent (its
    ``@context`` and the time as written) gave it before its :func:`content` named it,
    then the id its content gave it before that read its places and parties."""
    given = _given_id(event)
    if given is not None:
        return [given] if canonical_id(given) != given else []
    as_sent = {k: v for k, v in event.items() if k not in ("eventID", "recordTime")}
    return [_made_id(_hash(as_sent))[0], _made_id(_hash(content(event, places=False)))[0]]


def _given_id(event: Mapping[str, Any]) -> str | None:
    given = event.get("eventID")
    return given if isinstance(given, str) and given else None


def _uuid_of(event_id: str) -> uuid.UUID | None:
    """The UUID a ``urn:uuid:`` eventID names (its ``urn:uuid:`` in any case), or None."""
    if event_id[: len(_UUID_URN)].lower() != _UUID_URN:
        return None
    try:
        return uuid.UUID(event_id[len(_UUID_URN) :])
    except ValueError:
        return None


def canonical_id(event_id: str) -> str:
    """An eventID as this service keeps and looks it up: one that names a UUID as
    ``urn:uuid:`` and the UUID in lower case (RFC 9562: a UUID compares case-insensitively,
    and so do the URN's ``urn`` and ``uuid``, RFC 8141), so that one UUID is one event
    however it is written (found by a probe: ``urn:uuid:6A1F…`` after ``urn:uuid:6a1f…`` was
    another event under the same fact id); any other as given."""
    named = _uuid_of(event_id)
    return f"{_UUID_URN}{named}" if named is not None else event_id


def _code_keys(role: str, code: str) -> list[str]:
    product = product_of(code)  # the GTIN of an SGTIN: what a pattern of it names
    return [f"{role}:{code}", *([f"{role}:product:{product}"] if product else [])]


def match_keys(event: Mapping[str, Any]) -> tuple[str, ...]:
    """What GET /epcis/events matches the event's identifiers by, whatever form they
    were written in: ``<role>:<code>`` and ``<role>:product:<GTIN>`` for each EPC that
    names a code (role ``epc``: ``epcList``, ``childEPCs``; ``parent``; ``io``: the
    transformation's lists), ``location:<414…>`` for ``bizLocation`` and
    ``readpoint:<414…>`` for ``readPoint`` (kept since EQ_readPoint was offered: an event
    captured before is matched by its readPoint as written)."""
    keys: list[str] = []
    for key, role in _EPC_ROLES.items():
        value = event.get(key)
        for raw in value if isinstance(value, list) else [value]:
            code = to_code(raw) if isinstance(raw, str) else None
            if code is not None:
                keys += _code_keys(role, code)
    for key, role in _PLACE_ROLES.items():
        location = _id_of(event.get(key))
        place = to_location(location) if location is not None else None
        if place is not None:
            keys.append(f"{role}:{place}")
    return tuple(dict.fromkeys(keys))


def query_keys(parameter: str, values: Sequence[str]) -> list[str]:
    """The :func:`match_keys` a query parameter's values match (``MATCH_epc``,
    ``MATCH_anyEPC``, ``MATCH_parentID``: codes in any form, and EPC patterns of one
    product; ``EQ_bizLocation``, ``EQ_readPoint``: locations in any form). Raises ValueError for an EPC
    pattern of anything else."""
    keys: list[str] = []
    for value in values:
        if parameter in _PLACE_PARAMETERS:
            place = to_location(value)
            keys += [f"{_PLACE_PARAMETERS[parameter]}:{place}"] if place is not None else []
            continue
        roles = _QUERY_ROLES[parameter]
        if value.startswith("urn:epc:idpat:"):
            product = pattern_product(value)
            if product is None:
                pattern = "urn:epc:idpat:sgtin:<company>.<item>.*"
                raise ValueError(f"{value[:100]}: of EPC patterns, one product's only ({pattern})")
            keys += [f"{role}:product:{product}" for role in roles]
        elif (code := to_code(value)) is not None:
            keys += [f"{role}:{code}" for role in roles]
    return keys


def identify(event: Mapping[str, Any], earlier: Container[str] = ()) -> tuple[str, uuid.UUID]:
    """(eventID, fact id). A ``urn:uuid:`` eventID is the fact id itself, kept in its
    :func:`canonical_id` form; another eventID (e.g. the CBV ``ni:///sha-256;…`` hash) is
    named by uuid5 of it; an event without one is given ``urn:uuid:<uuid5 of the SHA-256
    of its content>`` (:func:`content`), so it is one fact however it is sent again (not
    the CBV's canonical event hash) — unless one of its :func:`former_ids` is one of
    ``earlier`` (the eventIDs stored already): an event stored under that id before keeps
    it when sent again as it was."""
    former = next((i for i in former_ids(event) if i in earlier), None) if earlier else None
    given = _given_id(event)
    if given is not None:
        named = _uuid_of(given)
        return former or canonical_id(given), named if named is not None else uuid.uuid5(NAMESPACE, given)
    if former is not None:
        return former, uuid.UUID(former[len(_UUID_URN) :])
    return _made_id(_hash(content(event)))


def _time(event: Mapping[str, Any], now: datetime) -> datetime:
    raw = event.get("eventTime")
    if raw is None:
        raise EventError("eventTime", "is required")
    at = read_time(raw)
    if at is None:
        raise EventError("eventTime", "is not an RFC 3339 date-time (2026-03-02T08:00:00+08:00)")
    problem = time_problem(at, now)
    if problem:
        raise EventError("eventTime", problem)
    return at.astimezone(UTC)


def _check(event: Mapping[str, Any]) -> None:
    """The fields this service reads, as GS1's schema has them, whether or not it is
    configured (its formats are not checked where it names the errors: found by a
    probe). Raises EventError naming the first bad one."""
    # an empty or non-string eventID was taken as none, the event kept under an id of its
    # contents while the queries answered the bad value back (found by a probe)
    if "eventID" in event and not _is_uri(event["eventID"]):
        raise EventError("eventID", "must be a URI (urn:uuid:…, or the CBV's ni:///sha-256;… hash)")
    offset = event.get("eventTimeZoneOffset")
    if not (isinstance(offset, str) and _OFFSET.fullmatch(offset)):
        raise EventError("eventTimeZoneOffset", "is required: an offset from -14:00 to +14:00 (+08:00)")
    if event.get("type") != "TransformationEvent" and event.get("action") not in _ACTIONS:
        raise EventError("action", f"is required: one of {', '.join(_ACTIONS)}")
    for key in _EPC_LISTS:
        items = event.get(key)
        if key in event and not isinstance(items, list):
            raise EventError(key, "must be a list of EPCs")
        for i, item in enumerate(items or ()):
            if not isinstance(item, str):
                raise EventError(f"{key}[{i}]", "must be an EPC (a string)")
    if "parentID" in event and not _is_uri(event["parentID"]):
        raise EventError("parentID", "must be a URI")
    # a location is one this service reads, whose GLN the caller checks is the capturing
    # organisation's: another URI (a GLN in a Digital Link's query string, ...) was stored
    # unchecked, and matched by no EQ_bizLocation (found by a probe)
    for key in ("bizLocation", "readPoint"):
        if key not in event:
            continue
        if not isinstance(event[key], dict):
            raise EventError(key, "must be an object with the location's id")
        ident = event[key].get("id")
        if not (_is_uri(ident) and to_location(ident)):
            raise EventError(f"{key}.id", f"must be {_LOCATION}")
    for key in ("sourceList", "destinationList"):
        items = event.get(key)
        if key in event and not isinstance(items, list):
            raise EventError(key, "must be a list")
        name = key[: -len("List")]
        for i, item in enumerate(items or ()):
            if not (isinstance(item, dict) and _is_uri(item.get(name))):
                raise EventError(f"{key}[{i}].{name}", "must be a URI (a PGLN or SGLN)")
            type_ = _cbv(item.get("type"), _SDT_PREFIXES)
            if type_ in _SOURCE_DEST_TYPES:
                read, named = _SOURCE_DEST_TYPES[type_]
                if read(item[name]) is None:
                    raise EventError(f"{key}[{i}].{name}", f"must be {named}")


def settlement_of(event: Mapping[str, Any]) -> str | None:
    """The settlement id the event's ``bizTransactionList`` names in a business
    transaction of :data:`SETTLEMENT_TYPE` (None: none), the others being kept as they
    are. Raises EventError naming the value when it is not :data:`SETTLEMENT_URI` and a
    settlement id (core.sales.SETL_ID_SHAPE), or when a second one names another
    settlement (a dispense is one sale)."""
    items = event.get("bizTransactionList")
    found: str | None = None
    for i, item in enumerate(items if isinstance(items, list) else ()):
        if not (
            isinstance(item, dict) and _names_settlement(item.get("type"), f"bizTransactionList[{i}].type")
        ):
            continue
        value = item.get("bizTransaction")
        setl_id = (
            value[len(SETTLEMENT_URI) :]
            if isinstance(value, str) and value.startswith(SETTLEMENT_URI)
            else ""
        )
        field = f"bizTransactionList[{i}].bizTransaction"
        if not _SETL_ID.fullmatch(setl_id):
            raise EventError(
                field,
                f"must be {SETTLEMENT_URI}<setl_id>, the settlement's id ({SETL_ID_MEANS}), as setl_id"
                " on /v1/events",
            )
        if found is not None and setl_id != found:
            raise EventError(
                field, f"names a second settlement ({found} and {setl_id}): a dispense is one sale"
            )
        found = setl_id
    return found


def _names_settlement(value: object, field: str) -> bool:
    """Is a business transaction's ``type`` :data:`SETTLEMENT_TYPE`, its scheme and host
    in any case (RFC 3986: the same URI)? One that differs from it only in the case of
    its path or a trailing '/' is refused naming ``field``: read as another type, the
    dispense would lose its settlement without a word, and the insurer's settlement of
    the pack be refused as a resale (found by a probe)."""
    if not isinstance(value, str):
        return False
    scheme, _, rest = value.partition("://")
    host, slash, path = rest.partition("/")
    if f"{scheme.lower()}://{host.lower()}{slash}{path}" == SETTLEMENT_TYPE:
        return True
    if value.lower().rstrip("/") == SETTLEMENT_TYPE.lower():
        raise EventError(
            field, f"reads like {SETTLEMENT_TYPE}, this service's settlement type, but is not it"
        )
    return False


def is_uri(value: object) -> bool:
    """A URI or a CURIE: a scheme (or prefix), a colon, then no space."""
    return isinstance(value, str) and _URI.fullmatch(value) is not None


_is_uri = is_uri


def _ilmd(event: Mapping[str, Any], keys: tuple[str, ...]) -> object:
    ilmd = event.get("ilmd")
    if isinstance(ilmd, dict):
        for key in keys:
            if key in ilmd:
                return ilmd[key]
    return None


def _codes(
    event_id: uuid.UUID, raws: list[str], kind: str, extra: Mapping[str, Any]
) -> tuple[tuple[str, ...], list[Rejection], tuple[ParsedCode, ...]]:
    """The event's codes, those refused, and the labels of those a dispense scanned with
    a lot or expiry (``Incoming.labels``), by /v1/events' rule (``core.events.take_codes``):
    an EPC read as its code, a Digital Link's or element string's label as its lot and
    expiry."""
    scanned = []
    for raw in raws:
        code = to_code(raw)
        scanned.append((raw, code, labelled(raw) if code is not None else None))
    codes, refused, labels = take_codes(event_id, kind, scanned, extra.get("lot"), extra.get("expiry"))
    return tuple(codes), refused, labels


def own_context(document: Mapping[str, Any]) -> list[Any]:
    """The document's ``@context`` entries beyond GS1's own (the namespaces its extensions
    use, such as ``{"example": "http://ns.example.com/epcis/"}``)."""
    given = document.get("@context")
    entries = given if isinstance(given, list) else [given] if given is not None else []
    return [c for c in entries if not (isinstance(c, str) and c.startswith(GS1_CONTEXT_PREFIX))]


def merged_context(document: Sequence[Any], event: object) -> list[Any]:
    """An event's ``@context`` as kept: the document's own entries (:func:`own_context`),
    then the event's own (a string, an object or a list of them), which JSON-LD reads
    after the document's, as it did where the event sat in its document. An event that
    brought its own kept only that (found by a probe: a document's ``example:`` prefix
    was lost from an event naming ``other:``)."""
    given = event if isinstance(event, list) else [event] if event is not None else []
    return [*document, *(c for c in given if c not in document)]


def unpacks_all(event: Mapping[str, Any]) -> str | None:
    """The container's code when ``event`` is an AggregationEvent DELETE naming no
    children, which disaggregates all of them (EPCIS 2.0): the caller looks up what the
    container held at the event's time (:func:`map_event`'s ``contents``). None for any
    other event."""
    if event.get("type") != "AggregationEvent" or event.get("action") != "DELETE":
        return None
    if _strings(event.get("childEPCs")) or event.get("childQuantityList"):
        return None
    parent = event.get("parentID")
    return to_code(parent) if isinstance(parent, str) and len(parent) <= MAX_LENGTH else None


def map_event(
    event: Mapping[str, Any],
    orgs_by_gln: Mapping[str, str],
    actor: str,
    now: datetime,
    context: Sequence[Any] = (),
    contents: Mapping[str, Collection[str]] | None = None,
    earlier: Container[str] = (),
) -> Mapped:
    """Map one event (already shape-checked). ``orgs_by_gln``: organisation id by GLN;
    ``actor``: the capturing organisation (it must hold the event's locations: the
    caller checks); ``context``: the capture document's :func:`own_context`, kept with
    each event (before the event's own ``@context``: :func:`merged_context`), so that
    its extensions keep their meaning wherever a query returns it; ``contents``: the codes the container of an
    event that :func:`unpacks_all` held at its time; ``earlier``: those of the events' :func:`former_ids`
    stored already (:func:`identify`). Raises EventError."""
    type_ = event.get("type")
    if not isinstance(type_, str) or type_ not in EVENT_TYPES:  # (a list is not hashable)
        raise EventError("type", f"must be one of {', '.join(sorted(EVENT_TYPES))}")
    too_long = _too_long(event)
    if too_long:
        raise EventError(*too_long)
    at = _time(event, now)
    _check(event)
    setl_id = settlement_of(event)
    event_id, fact_id = identify(event, earlier)
    action = event.get("action") if isinstance(event.get("action"), str) else None
    step = biz_step(event.get("bizStep"))
    body = dict(event)
    body.setdefault("eventID", event_id)
    if context:
        body["@context"] = merged_context(context, event.get("@context"))
    parent = event.get("parentID") if isinstance(event.get("parentID"), str) else None
    record = Record(
        event_id=event_id,
        fact_id=fact_id,
        type=str(type_),
        event_time=at,
        action=action,
        biz_step=step,
        biz_location=_id_of(event.get("bizLocation")),
        epcs=epcs_of(event),
        parent_id=parent,
        body=body,
        match_keys=match_keys(event),
    )
    command, refused, warning = _command(event, record, orgs_by_gln, actor, now, contents or {}, setl_id)
    return Mapped(record, command, tuple(refused), warning)


def _no_effect(record: Record, done: str = "stored with no custody effect") -> tuple[str, str] | None:
    """(field, message) for an event whose step is one :func:`_command` moves custody by
    but that it maps to none (an AggregationEvent OBSERVE shipping, an ObjectEvent ADD
    receiving, ...), or maps to a pack or unpack only (``done``: an AggregationEvent ADD
    or DELETE), or None: it is stored, and its sender told (found by probes)."""
    if record.biz_step not in _CUSTODY_STEPS:
        return None
    sent = " ".join(filter(None, (record.type, record.action)))
    return (
        "bizStep",
        f"{record.biz_step} on {sent}: {done} (the step moves custody on an ObjectEvent naming"
        " the codes, with the action the README's table names; an AggregationEvent ADD or"
        " DELETE packs and unpacks); send it so under a new eventID",
    )


def _command(
    event: Mapping[str, Any],
    record: Record,
    orgs_by_gln: Mapping[str, str],
    actor: str,
    now: datetime,
    contents: Mapping[str, Collection[str]],
    setl_id: str | None = None,
) -> tuple[Incoming | None, list[Rejection], tuple[str, str] | None]:
    if "errorDeclaration" in event:
        # it declares the event under its eventID erroneous (EPCIS 2.0): kept and
        # queryable as such, never done, whether or not that event was captured here
        return None, [], None
    kind: str | None = None
    warning: tuple[str, str] | None = None
    extra: dict[str, Any] = {}
    raws = _strings(event.get("epcList"))
    held: tuple[str, ...] = ()  # the codes an unpack of all the children takes
    if record.type == "ObjectEvent":
        step, action = record.biz_step, record.action
        state = disposition(event.get("disposition"))  # what the objects are after it
        if state == "destroyed" and action in ("OBSERVE", "DELETE"):
            kind = "destroy"
        elif step == "commissioning" and action == "ADD":
            kind = "commission"
            lot, expiry = _ilmd(event, _LOT_KEYS), _ilmd(event, _EXPIRY_KEYS)
            # found by a probe: one that was not read was refused as missing ("a commission needs the lot")
            if lot is not None and not isinstance(lot, str):
                raise EventError(_FIELDS["lot"], "must be a string (the lot as printed on the pack)")
            if lot is not None and len(lot) > _MAX_LOT:
                raise EventError(
                    _FIELDS["lot"], f"is longer than {_MAX_LOT} characters (as lot on /v1/events)"
                )
            extra["lot"] = lot
            try:  # as /v1/events reads ``expiry``
                extra["expiry"] = msgspec.convert(expiry, date) if expiry is not None else None
            except msgspec.ValidationError:
                raise EventError(_FIELDS["expiry"], "is not a date (YYYY-MM-DD)") from None
        elif step == "shipping" and action == "OBSERVE":
            dest = custody_glns(event, "destinationList")
            known = {orgs_by_gln[g] for g in dest if g in orgs_by_gln}
            if dest and not known:
                raise EventError("destinationList", "names no GLN of a registered organisation")
            others = known - {actor}
            if len(others) > 1:  # which one has the goods would be a guess
                named = ", ".join(sorted(others))
                raise EventError("destinationList", f"names more than one organisation to ship to: {named}")
            if known:
                kind, extra["to"] = "ship", next(iter(others), actor)
            else:  # GS1's own example ships so: kept, and the sender told (its receive would be a DIVERSION)
                warning = (
                    "destinationList",
                    "names no destination GLN: stored with no custody effect (a ship needs the"
                    " organisation it goes to); send it again under a new eventID naming it",
                )
        elif step == "receiving" and action == "OBSERVE":
            kind = "receive"
            sources = {orgs_by_gln[g] for g in custody_glns(event, "sourceList") if g in orgs_by_gln}
            others = sources - {actor}
            extra["from_org"] = next(iter(others)) if len(others) == 1 else None  # (several: unsaid)
        elif step in ("dispensing", "retail_selling") and action == "OBSERVE":
            if state == "partially_dispensed":  # a split pack: how many units, EPCIS does not say
                raise EventError(
                    "disposition",
                    "partially_dispensed: the units dispensed are not in the event (a quantityList"
                    " counts a class, not units of a pack); send this dispense with its quantity"
                    " in smallest units to POST /v1/events, or settle it with its units",
                )
            kind = "dispense"
        elif step in ("destroying", "decommissioning") and action in ("OBSERVE", "DELETE"):
            kind = "destroy"
    elif record.type == "AggregationEvent" and record.action in ("ADD", "DELETE") and record.parent_id:
        kind = "pack" if record.action == "ADD" else "unpack"
        parent = to_code(record.parent_id)
        if parent is None:
            raise EventError("parentID", "is not an SGTIN or SSCC")
        extra["parent"] = parent
        raws = _strings(event.get("childEPCs"))
        if unpacks_all(event) == parent:
            held = tuple(sorted(contents.get(parent, ())))
        # it packs or unpacks; a step that moves custody (a DELETE destroying, an ADD
        # shipping) does not move it here, and its sender is told so (found by a probe: the
        # packs of a case "destroyed" so were only unpacked, dispensable, without a word)
        done = "packed into" if kind == "pack" else "unpacked from"
        warning = _no_effect(record, f"its children were {done} the parent, and nothing more")
    if kind is None:
        return None, [], warning or _no_effect(record)
    # what each type needs is /v1/events' rule (core.events.shape_errors), named in EPCIS terms
    errors = shape_errors(
        type_=kind,
        at=record.event_time,
        now=now,
        to=extra.get("to"),
        parent=extra.get("parent"),
        lot=extra.get("lot"),
        expiry=extra.get("expiry"),
        quantity=None,
        setl_id=setl_id,
    )
    if errors:
        name, message = errors[0]
        raise EventError(_FIELDS.get(name, name), message)
    classes = _classes_only(event) or warning
    if not raws and not held:
        return None, [], classes
    codes, refused, labels = _codes(record.fact_id, raws, kind, extra) if raws else (held, [], ())
    command = Incoming(
        event_id=record.fact_id,
        type=kind,
        at=record.event_time,
        org=actor,
        codes=codes,
        ref=record.event_id[:200],
        labels=labels,
        setl_id=setl_id,
        **extra,
    )
    return command, refused, classes


def _classes_only(event: Mapping[str, Any]) -> tuple[str, str] | None:
    """(field, message) for an event that moves a quantity of a product class (a
    ``quantityList``): stored, but custody follows packs by their serial codes, so the
    class's quantity moves nothing, and the sender is told (found by a probe)."""
    for key in _QUANTITY_LISTS:
        if isinstance(event.get(key), list) and event[key]:
            return (
                key,
                "counts a product class, not packs: its quantity is stored with no custody effect"
                " (custody follows each pack by its serial code); send the packs in the EPC list",
            )
    return None
