"""3505 sale and 3506 sale return (and their batch forms 3505A / 3506A) as the service's
own events: a sale is a ``dispense`` of the codes it carries, a sale return a ``return``.

Event ids are uuid5 of (institution, interface, ``fixmedins_bchno``, code), so a record
uploaded twice, or once as 3505 and again in a 3505A batch, is one fact: the events
table's unique id makes every retry a duplicate, also when retries race. Pure: no I/O."""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from hashlib import sha1, sha256
from typing import Any
from uuid import UUID

import msgspec
from asyncpg.pgproto.pgproto import UUID as FastUUID

from service.core.codes import NOT_A_CODE, ParsedCode, strip_code, try_parse_code
from service.core.events import Incoming, scanned_labels, time_problem
from service.core.ledger import Entry
from service.core.sales import SETL_ID_MEANS, SETL_ID_SHAPE
from service.core.settlement import person_hash, person_number_problem
from service.interop.nhsa.envelope import (
    DATE_FIELDS,
    NUMBER,
    NUMERIC_FIELDS,
    SALE,
    SALE_RETURN,
    TIME_FIELDS,
    Envelope,
    FieldError,
    calendar_date,
    catalogue_item,
    china_time,
    code_text,
    flag01,
    lot_dates,
    lower_keys,
    optional_text,
    price,
    required_texts,
    rx_flag,
    text,
    whole_units,
    wrapper_path,
)

# uuid5 namespace of events translated from NHSA uploads (fixed forever: ids depend on it)
NAMESPACE = UUID("6b1d3f0e-5a35-4c35-9e05-0b5a3505a000")
SETL_ID = re.compile(SETL_ID_SHAPE)  # fullmatch

# required row fields (FIELDS.md; ⚠ fields that only one source requires are not)
_ITEM = ("med_list_codg", "fixmedins_hilist_id", "fixmedins_hilist_name", "fixmedins_bchno", "rx_flag")
_COMMON = ("manu_lotnum", "mdtrt_sn", "sel_retn_opter_name")
REQUIRED = {
    SALE: (*_ITEM, *_COMMON, "prsc_dr_name", "phar_name", "phar_prac_cert_no", "rtal_docno"),
    SALE_RETURN: (*_ITEM, *_COMMON, "psn_cert_type"),
}
# FIELDS.md's lengths of the item block every 3501–3506 row carries; a sale checks those
# of its required fields (MAX_LENGTH), 3501–3504 every one given (inventory.MAX_LENGTH)
ITEM_LENGTH = {
    "med_list_codg": 50,
    "fixmedins_hilist_id": 30,
    "fixmedins_hilist_name": 200,
    "fixmedins_bchno": 30,
    "manu_lotnum": 30,
    "memo": 500,
}
MAX_LENGTH = {
    **ITEM_LENGTH,
    "mdtrt_sn": 30,
    "rtal_docno": 40,
    "prsc_dr_name": 50,
    "phar_name": 50,
    "phar_prac_cert_no": 50,
    "sel_retn_opter_name": 50,
    "psn_cert_type": 6,
}
# each interface's required fields with their limits, med_list_codg and fixmedins_bchno first
_FIRST = ("med_list_codg", "fixmedins_bchno")
_CHECKED = {
    interface: tuple((key, MAX_LENGTH.get(key)) for key in (*_FIRST, *(k for k in keys if k not in _FIRST)))
    for interface, keys in REQUIRED.items()
}
MAX_CODE_LENGTH = 100


@dataclass(slots=True)
class Record:
    """One row of an upload, translated."""

    index: int
    path: str  # e.g. input.selinfoDetail[2]
    row: dict[str, Any]  # as sent, keys in lower case
    events: list[Incoming] = field(default_factory=list)
    entry: Entry | None = None  # the ledger's record of it (None: a deletion)
    deletes: tuple[str, ...] = ()  # a 3507 deletion: the interfaces whose record it deletes


@dataclass(frozen=True, slots=True)
class RowError:
    index: int
    row: dict[str, Any]  # as sent, keys in lower case (for the error list)
    field: str  # full path, e.g. input.selinfoDetail[2].sel_retn_cnt
    message: str


def id_namespace(secret: bytes) -> bytes:
    """The namespace of this installation's NHSA event ids, derived from its secret: an
    id is then no function of an upload's public fields alone, so another organisation
    cannot store an event under a sale's id before the sale arrives (it would be refused,
    EVENT_ID_TAKEN). Ids stay the same for the same record while the secret does; a
    record sent again after a change of secret is still one fact (its ledger key)."""
    return hmac.new(secret, b"tracecode/nhsa/event-ids", sha256).digest()[:16]


def event_id(ids: bytes, fixmedins_code: str, interface: str, bchno: str, code: str) -> UUID:
    """uuid5 of "nhsa/…" in the namespace ``ids`` (``id_namespace``), computed as
    ``uuid.uuid5`` does, in a third of its time (an upload makes one per sale): the version
    and variant bits set on the integer, and the UUID built as asyncpg's own (a
    ``uuid.UUID`` that skips the checks of its constructor, and that asyncpg writes
    without asking for its bytes)."""
    name = f"nhsa/{fixmedins_code}/{interface}/{bchno}/{code}".encode()
    digest = int.from_bytes(sha1(ids + name, usedforsecurity=False).digest()[:16])
    return FastUUID((digest & _UUID5_CLEAR | _UUID5_SET).to_bytes(16))


_UUID5_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))  # the version and variant bits
_UUID5_SET = (0x5000 << 64) | (0x8000 << 48)  # version 5, RFC 4122 variant


PERSON_FIELDS = ("psn_no", "certno", "psn_name")
# What is never kept of a row, however spelled (``psnNo``, ``PSN_NO``, ``certNo``) and
# wherever (the row, a trace-code item, any object nested in it): the insured person,
# and the ID-card numbers of the prescriber and the pharmacist (FIELDS.md: 证件号码;
# their names and practice certificate numbers are kept). Compared without "_" and case.
_NEVER_KEPT = frozenset(k.replace("_", "") for k in (*PERSON_FIELDS, "prsc_dr_certno", "phar_certno"))
# The documented row fields (FIELDS.md, 3501–3506) that are none of those: a row of these
# alone, with scalar values and bare trace-code items, is kept as it came (no copy)
_DOCUMENTED = frozenset(
    (
        "aprvno", "bchno", "drug_prod_barc", "drugtracinfo", "drug_trac_codg", "dynt_no", "expy_end",
        "finl_trns_pric", "fixmedins_bchno", "fixmedins_hilist_id", "fixmedins_hilist_name",
        "hi_feesetl_type", "inv_chg_opter_name", "inv_chg_time", "inv_chg_type", "inv_cnt", "invdate",
        "manu_date", "manu_lotnum", "mdtrt_setl_type", "mdtrt_sn", "med_list_codg", "medins_prod_purc_no",
        "medins_prod_sel_no", "memo", "phar_cert_type", "phar_name", "phar_prac_cert_no", "pric",
        "prod_geay_flag", "prodentp_name", "prsc_dr_cert_type", "prsc_dr_name", "psn_cert_type",
        "purc_invo_codg", "purc_invo_no", "purc_retn_cnt", "purc_retn_opter_name", "purc_retn_stoin_time",
        "rtal_docno", "rx_circ_flag", "rx_flag", "rxno", "sel_retn_cnt", "sel_retn_opter_name",
        "sel_retn_time", "setl_id", "shelf_posi", "spler_name", "spler_pmtno", "stoout_no", "trdn_flag",
    )
)  # fmt: skip


def kept_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row as kept with the ledger: the person (and the ID-card numbers of the
    prescriber and pharmacist) is never stored, however its keys are spelled and wherever
    a system repeats them (each trace-code item, an object of its own)."""
    # the common case, a row of documented fields with scalar values but for its bare
    # trace-code items, is kept as it came: asked at C speed but for those items (a row
    # of a 1,000-row upload in about a microsecond)
    if _DOCUMENTED.issuperset(row):
        kinds = list(map(type, row.values()))
        if dict not in kinds:
            lists = kinds.count(list)
            if not lists:
                return row
            items = row.get("drugtracinfo")
            if lists == 1 and type(items) is list:
                for item in items:
                    if type(item) is not dict or len(item) != 1 or "drug_trac_codg" not in item:
                        break
                else:
                    return row
    return {
        k: v if type(v) in _SCALARS else _scrubbed(v, k, 1)
        for k, v in row.items()
        if k in _DOCUMENTED or k.replace("_", "").lower() not in _NEVER_KEPT
    }


def _scrubbed(value: Any, field: str, depth: int) -> Any:
    """``value`` (of the row's ``field``, ``depth`` levels down) without what is never
    kept. A row field nested deeper than any NHSA row is refused (naming the field), not
    walked down to the interpreter's recursion limit."""
    if depth > MAX_NESTING:
        raise FieldError(field, f"nests objects or arrays more than {MAX_NESTING} levels deep")
    if type(value) is dict:  # a documented field is none to drop, a scalar holds no key
        return {
            k: v if type(v) in _SCALARS else _scrubbed(v, field, depth + 1)
            for k, v in value.items()
            if k in _DOCUMENTED or k.replace("_", "").lower() not in _NEVER_KEPT
        }
    if type(value) is list:
        return [v if type(v) in _SCALARS else _scrubbed(v, field, depth + 1) for v in value]
    return value


MAX_NESTING = 16


_SCALARS = frozenset({str, int, float, bool, type(None)})


Build = Callable[[Envelope, str, datetime, bytes, int, str, dict[str, Any]], Record]


def translate(
    envelope: Envelope, org: str, now: datetime, ids: bytes, build: Build | None = None
) -> tuple[list[Record], list[RowError]]:
    """Each row as events of ``org`` (the uploading institution's organisation) and its
    ledger record, or the first problem of the row."""
    records: list[Record] = []
    errors: list[RowError] = []
    for i, raw in enumerate(envelope.rows):
        path = wrapper_path(envelope, i)
        row: dict[str, Any] = raw if isinstance(raw, dict) else {}  # as sent, if lower_keys refuses it
        try:
            if not isinstance(raw, dict):
                raise FieldError(path, "must be an object")
            row = lower_keys(raw)
            records.append((build or _record)(envelope, org, now, ids, i, path, row))
        except FieldError as exc:
            name = exc.field if exc.field.startswith(path) else f"{path}.{exc.field}"
            errors.append(RowError(i, row, name, exc.message))
    return records, errors


def keep_persons(records: list[Record], secret: bytes) -> None:
    """Give each sale and return record its insured person (``psn_no``) as the keyed hash
    every path that keeps a person keeps (:func:`service.core.settlement.person_hash`):
    the number itself is never kept (:func:`kept_row`), and a 3511 or 3513 query by
    ``psn_no`` finds the person's records by the hash."""
    for r in records:
        psn_no = text(r.row.get("psn_no"))
        if r.entry is not None and psn_no:
            r.entry = msgspec.structs.replace(r.entry, psn_hash=person_hash(secret, psn_no))


def person_number(row: dict[str, Any]) -> str | None:
    """A sale's or return's insured person (``psn_no``, optional) as read: a look-alike of
    a number (full-width digits, an invisible character inside) is refused naming it, as
    a settlement's is (:func:`service.core.settlement.person_number_problem`): kept as its
    hash it would be a person of its own, whom a 3511/3513 query by the real number, and
    the real person's purchase count, miss (found by a probe)."""
    psn_no = text(row.get("psn_no"))
    if psn_no is not None and (problem := person_number_problem(psn_no)) is not None:
        raise FieldError("psn_no", problem)
    return psn_no


def raw_codes(row: dict[str, Any]) -> list[tuple[str, str]]:
    """The trace codes a row carries, in order, each with the field it came in
    (``drugtracinfo[1].drug_trac_codg``): ``drugtracinfo`` as an array of
    ``{"drug_trac_codg"}`` or as one such object (older builds), then the legacy single
    ``drug_trac_codg`` (a comma-separated list is split, as [A] builds its array). Each
    without the ASCII whitespace around it only, as every route reads a code
    (:func:`service.core.codes.strip_code`): a code with U+3000 around it is no code."""
    out: list[tuple[str, str]] = []
    node = row.get("drugtracinfo")
    if isinstance(node, str) and not node.strip():
        node = None  # "" for an absent field, as for every other field
    if node is not None and not isinstance(node, dict | list):
        raise FieldError("drugtracinfo", "must be an array of {drug_trac_codg} objects")
    single = isinstance(node, dict)  # older builds: one object, not an array
    items = [node] if single else node if isinstance(node, list) else []
    for j, item in enumerate(items):
        at = "drugtracinfo" if single else f"drugtracinfo[{j}]"
        if not isinstance(item, dict):
            raise FieldError(at, "must be an object {drug_trac_codg}")
        value = item.get("drug_trac_codg")
        if type(value) is str and len(item) == 1 and (stripped := strip_code(value)):
            out.append((f"{at}.drug_trac_codg", stripped))  # the common case first: no key to lower
            continue
        try:
            item = lower_keys(item)
        except FieldError as exc:
            raise FieldError(f"{at}.{exc.field}", exc.message) from None
        code = code_text(item, "drug_trac_codg", f"{at}.drug_trac_codg")
        if code is not None:
            out.append((f"{at}.drug_trac_codg", code))
        elif item.get("drug_trac_code") not in (None, ""):
            # one older [B] 3501A model's misspelling (FIELDS.md: a bug): read as no code,
            # the count was stored without its packs (found by a probe)
            raise FieldError(
                f"{at}.drug_trac_code", "is no field of the trace-code node: the code goes in drug_trac_codg"
            )
    legacy = code_text(row, "drug_trac_codg", "drug_trac_codg")
    if legacy is not None:
        # [B] sends the legacy code alongside the array: a code in both is one scan (one
        # repeated within either field is still a repeat)
        listed = {_canonical(c) for _, c in out}
        out += [("drug_trac_codg", c) for c in _legacy_codes(legacy) if _canonical(c) not in listed]
    for at, code in out:
        if len(code) > MAX_CODE_LENGTH:
            raise FieldError(at, f"is longer than {MAX_CODE_LENGTH} characters")
    return out


def read_codes(row: dict[str, Any]) -> list[ParsedCode]:
    """The row's trace codes, read (:func:`raw_codes`). A code that is no code, or one
    listed twice, makes the row a bad row (FieldError naming its field): nothing of it is
    stored, and the row is sent again corrected under the same ``fixmedins_bchno``. It
    used to be stored without that code and answered ``retRslt`` "0", so a system that
    took "0" for "not stored" sent the corrected sale under a new serial and the ledger
    counted the sale twice; or under the same serial, refused as other contents (found
    by a probe)."""
    out: list[ParsedCode] = []
    seen: dict[str, str] = {}
    for at, raw in raw_codes(row):
        parsed = try_parse_code(raw)
        if parsed is None:
            raise FieldError(at, f"{NOT_A_CODE}: {raw!r}")
        if parsed.canonical in seen:
            raise FieldError(at, f"is the code of {seen[parsed.canonical]} again")
        seen[parsed.canonical] = at
        out.append(parsed)
    return out


def _legacy_codes(legacy: str) -> list[str]:
    """The codes of a legacy ``drug_trac_codg``: a comma-separated list, as [A] builds its
    array, unless a piece is no code and the whole is one: a GS1 serial may hold a comma
    (``(01)…(21)A,B`` is one pack; split, it sold pack ``(01)…(21)A``: found by a probe)."""
    pieces = [c for c in (strip_code(c) for c in legacy.split(",")) if c]
    if len(pieces) > 1 and any(try_parse_code(c) is None for c in pieces) and try_parse_code(legacy):
        return [legacy]
    return pieces


_CODE_FIELDS = frozenset(("drugtracinfo", "drug_trac_codg"))


def same_record(first: dict[str, Any], again: dict[str, Any]) -> bool:
    """Is ``again`` the record ``first`` sent once more (rows as kept: keys in lower case,
    no person fields)? Compared as read, not as spelled: a number for the string of its
    digits, a quantity or price in another form (24, "24.0000"; "12.5", "12.50"; not
    another field: "000123" is not "123"), a time or date in another spelling of the
    same instant or day, "" or null for a missing field, the legacy ``drug_trac_codg`` for
    ``drugtracinfo``, a code in another of its forms (GS1 element string, CN20). A code
    of a split sale in another place is another record (a split sale draws its units in
    the order listed); the packs of a whole-pack sale may come in any order."""
    return first == again or _as_read(first) == _as_read(again)


def _as_read(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in _CODE_FIELDS:
            continue
        read: Any = value if isinstance(value, list | dict) else text(value)
        if key in NUMERIC_FIELDS and isinstance(read, str) and NUMBER.fullmatch(read):
            read = Decimal(read)  # compared by value
        elif isinstance(read, str) and (key in TIME_FIELDS or key in DATE_FIELDS):
            read = _when(key, read)
        if read is not None:
            out[key] = read
    try:
        codes = [_canonical(c) for _, c in raw_codes(row)]
        out[" codes"] = codes if text(row.get("trdn_flag")) == "1" else sorted(codes)
    except FieldError:  # not readable: only the same spelling is the same record
        out[" codes"] = [row.get(k) for k in sorted(_CODE_FIELDS)]
    return out


def _when(key: str, got: str) -> datetime | date | str:
    """A time as the instant it names, a date as its day (as the row was read: a
    ``T`` for the space, fractions of a second, an offset, a date sent as a date-time
    at midnight); one that does not read, as spelled (found by a probe: a resend whose
    serializer wrote ``2026-10-01T09:00:00`` for ``2026-10-01 09:00:00`` was refused as
    other contents, and sent under a new serial, counted twice)."""
    try:
        return china_time(got, key) if key in TIME_FIELDS else calendar_date(got, key)
    except FieldError:
        return got


def _canonical(code: str) -> str:
    parsed = try_parse_code(code)
    return parsed.canonical if parsed is not None else code


def _record(
    envelope: Envelope, org: str, now: datetime, ids: bytes, index: int, path: str, row: dict[str, Any]
) -> Record:
    interface = envelope.interface
    med_list_codg, bchno = required_texts(row, _CHECKED[interface])[:2]
    catalogue_item(med_list_codg)
    rx_flag(row)
    split = flag01(row.get("trdn_flag"), "trdn_flag")
    count = whole_units(row.get("sel_retn_cnt"), "sel_retn_cnt")
    at = china_time(row.get("sel_retn_time"), "sel_retn_time")
    problem = time_problem(at, now)
    if problem:
        raise FieldError("sel_retn_time", problem)
    lot_dates(row, manu=interface == SALE, expy=False)  # ⚠ expy_end optional per [B] and [Q]
    if row.get("finl_trns_pric") not in (None, ""):
        price(row.get("finl_trns_pric"), "finl_trns_pric")
    setl_id = optional_text(row, "setl_id", "setl_id")
    if setl_id is not None and not SETL_ID.fullmatch(setl_id):
        raise FieldError("setl_id", f"must be {SETL_ID_MEANS}")
    person_number(row)
    scanned = read_codes(row)

    kind = "dispense" if interface == SALE else "return"
    fixmedins_code = envelope.fixmedins_code
    canonical = [parsed.canonical for parsed in scanned]
    # codes whose labels carry a lot or expiry
    labelled = {p.canonical: p for p in scanned if p.lot is not None or p.expiry is not None}

    billed = med_list_codg if kind == "dispense" else None
    if kind == "dispense" and split and canonical:
        # a split sale (拆零) draws sel_retn_cnt smallest units from its codes in order
        packs, quantity = [tuple(canonical)], count
    else:
        # whole packs, one event per code. A return restores the whole of the sale it
        # undoes (⚠ a partial return of a split sale restores all).
        packs, quantity = [(code,) for code in canonical], None
    event_ids = [event_id(ids, fixmedins_code, interface, bchno, "+".join(codes)) for codes in packs]
    events = [
        Incoming(i, kind, at, org, codes, quantity=quantity, setl_id=setl_id, ref=bchno, med_list_codg=billed,
                 labels=scanned_labels(kind, [labelled[c] for c in codes if c in labelled])
                 if labelled else ())
        for i, codes in zip(event_ids, packs, strict=True)
    ]  # fmt: skip
    entry = Entry(
        org=org,
        interface=interface,
        bchno=bchno,
        med_list_codg=med_list_codg,
        kind="sale" if kind == "dispense" else "sale_return",
        units=count,
        at=at,
        codes=tuple(canonical),
        event_ids=tuple(event_ids),
        row=kept_row(row),
    )
    return Record(index, path, row, events, entry)
