"""The NHSA request envelope: its fields checked, its ``input`` found, and the values the
rows carry (numbers as strings or numbers, China-time dates and times) read leniently
where institutions' systems are known to differ. Pure: no I/O, no clock."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

import msgspec

from service.core.codes import strip_code
from service.core.events import identifier_problem
from service.core.rules import CHINA


class FieldError(Exception):
    """A field of the envelope or of a row cannot be taken: ``infcode -1`` naming it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# interfaces this service takes, and the key under ``input`` that carries their rows:
# the single form one object, the batch form ("A") an array (None: no batch form)
STOCK_COUNT, INVENTORY_CHANGE, PURCHASE, PURCHASE_RETURN = "3501", "3502", "3503", "3504"
SALE, SALE_RETURN, DELETION = "3505", "3506", "3507"
INVENTORY_QUERY, SALE_QUERY, SALE_TRACE_QUERY = "3508", "3511", "3513"
QUERIES = (INVENTORY_QUERY, SALE_QUERY, SALE_TRACE_QUERY)
WRAPPERS: dict[str, tuple[str, str | None]] = {
    STOCK_COUNT: ("invinfo", "invinfoDetail"),
    INVENTORY_CHANGE: ("invinfo", "invinfoDetail"),
    PURCHASE: ("purcinfo", "purcinfoDetail"),
    PURCHASE_RETURN: ("purcinfo", "purcinfoDetail"),
    SALE: ("selinfo", "selinfoDetail"),
    SALE_RETURN: ("selinfo", "selinfoDetail"),
    DELETION: ("data", "goodDetail"),
    INVENTORY_QUERY: ("data", None),
    SALE_QUERY: ("data", None),
    SALE_TRACE_QUERY: ("data", None),
}
# the batch forms' list of rows not taken (3502A and 3504A per [B]; the others by analogy ⚠)
ERROR_LISTS = {
    STOCK_COUNT: "invinfoErrDetail",
    INVENTORY_CHANGE: "invinfoErrDetail",
    PURCHASE: "purcinfoErrDetail",
    PURCHASE_RETURN: "purcinfoErrDetail",
    SALE: "selinfoErrDetail",
    SALE_RETURN: "selinfoErrDetail",
    DELETION: "goodErrDetail",
}
# the platform's other queries: known, not taken
KNOWN_NOT_TAKEN = {"3509", "3510", "3512"}

# required envelope fields (FIELDS.md "Request envelope"; insuplc_admdvs is conditional)
REQUIRED = (
    "infno",
    "msgid",
    "mdtrtarea_admvs",
    "recer_sys_code",
    "infver",
    "opter_type",
    "opter",
    "opter_name",
    "inf_time",
    "fixmedins_code",
    "fixmedins_name",
    "input",
)
OPTIONAL = ("insuplc_admdvs", "dev_no", "dev_safe_info", "cainfo", "signtype", "sign_no")
MAX_LENGTH = {
    "msgid": 30,
    "mdtrtarea_admvs": 6,
    "insuplc_admdvs": 6,
    "recer_sys_code": 10,
    "dev_no": 100,
    "dev_safe_info": 2000,
    "cainfo": 1024,
    "signtype": 10,
    "infver": 6,
    "opter_type": 3,
    "opter": 30,
    "opter_name": 50,
    "fixmedins_code": 30,
    "fixmedins_name": 200,
    "sign_no": 30,
}
MAX_INPUT_ROWS = 10_000


@dataclass(frozen=True, slots=True)
class Envelope:
    infno: str  # as sent, e.g. "3505A"
    interface: str  # the interface it belongs to, e.g. "3505"
    batch: bool  # the "A" form: many rows
    msgid: str
    fixmedins_code: str
    fixmedins_name: str
    mdtrtarea_admvs: str
    inf_time: datetime  # UTC
    fields: dict[str, str]  # every other envelope field as sent (kept with the record)
    rows: list[Any]  # the rows under the wrapper (one for a single form), unchecked


def text(value: Any) -> str | None:
    """A string field as institutions send it: a string, or a number where a string was
    meant. Empty and blank strings are absent (systems send "" for fields they lack)."""
    if type(value) is str:  # the common case first: a row has a dozen such fields
        return value.strip() or None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value or None


def required_text(row: dict[str, Any], key: str, field: str, max_length: int | None = None) -> str:
    value = row.get(key)
    if (
        type(value) is str
        and (stripped := value.strip())
        and (max_length is None or len(stripped) <= max_length)
    ):
        return stripped  # the common case first, as in text()
    if (value is not None and not isinstance(value, str | int | float)) or isinstance(value, bool):
        raise FieldError(field, "must be a string")
    got = text(value)
    if got is None:
        raise FieldError(field, "is required")
    if max_length is not None and len(got) > max_length:
        raise FieldError(field, f"is longer than {max_length} characters")
    return got


def required_texts(row: dict[str, Any], fields: tuple[tuple[str, int | None], ...]) -> list[str]:
    """``required_text`` of each (key, max_length) in turn, the common case inline: a
    sale row has a dozen required fields, and 1,000 rows an upload."""
    out = []
    for key, max_length in fields:
        value = row.get(key)
        if (
            type(value) is str
            and (stripped := value.strip())
            and (max_length is None or len(stripped) <= max_length)
        ):
            out.append(stripped)
        else:
            out.append(required_text(row, key, key, max_length))
    return out


def catalogue_item(codg: str) -> str:
    """A row's ``med_list_codg``, the ledger's item, as read: a plain identifier
    (``core.events.identifier_problem``), so that no upload keeps an item that reads like
    another one (a direction mark inside it, say)."""
    if (problem := identifier_problem(codg)) is not None:
        raise FieldError("med_list_codg", problem)
    return codg


def optional_text(row: dict[str, Any], key: str, field: str, max_length: int | None = None) -> str | None:
    """``required_text`` of a field that may be absent (missing, null or blank). Another
    type (an array, an object, a boolean) is refused, not read as absent: a trace code or
    setl_id sent so would be lost silently."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return required_text(row, key, field, max_length)


def code_text(row: dict[str, Any], key: str, field: str, max_length: int | None = None) -> str | None:
    """A trace code's field: ``optional_text``, but only the whitespace every route drops
    around a code (ASCII space, tab, CR, LF: :func:`service.core.codes.strip_code`) is
    dropped, so a code ending in U+3000 or U+00A0 is refused here as on /v1/events (found
    by a probe: 3505 took it). Absent when missing, null or empty once that is dropped."""
    value = row.get(key)
    if type(value) is str:
        code = strip_code(value)
        if max_length is not None and len(code) > max_length:
            raise FieldError(field, f"is longer than {max_length} characters")
        return code or None
    return optional_text(row, key, field, max_length)


# ASCII digits only: Python's \d and Decimal also read other scripts' digits (٢٤, ２４)
NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)")
# the rows' quantities and prices (FIELDS.md's num fields): read as numbers, so "24" and
# 24.0000 are one value; every other field is text, where "000123" is not "123"
NUMERIC_FIELDS = frozenset(("inv_cnt", "pric", "cnt", "finl_trns_pric", "purc_retn_cnt", "sel_retn_cnt"))


def number(value: Any, field: str) -> Decimal:
    """A quantity or price: a JSON number or a numeric string ("24", "24.0000")."""
    if isinstance(value, bool) or value is None:
        raise FieldError(field, "is required" if value is None else "must be a number")
    raw = value.strip() if isinstance(value, str) else value
    if isinstance(raw, str) and not NUMBER.fullmatch(raw):
        raise FieldError(field, f"is not a number: {value!r}")
    if not isinstance(raw, str | int | float):
        raise FieldError(field, "must be a number")
    try:
        out = Decimal(str(raw))
    except InvalidOperation:
        raise FieldError(field, f"is not a number: {value!r}") from None
    if not out.is_finite():
        raise FieldError(field, "must be a finite number")
    return out


# num 16,6 (FIELDS.md): at most ten digits before the point
MAX_PRICE = Decimal(10) ** 10


def price(value: Any, field: str) -> Decimal:
    """A unit price (num 16,6): a number, not negative, below ten billion."""
    n = number(value, field)
    if n < 0:
        raise FieldError(field, f"must not be negative, not {n}")
    if n >= MAX_PRICE:
        raise FieldError(field, "is too large for num 16,6")
    return n


def whole_units(value: Any, field: str, *, maximum: int = 10_000_000) -> int:
    """A count of smallest units: a positive whole number (16,4 decimals allowed if zero)."""
    if type(value) is int and 1 <= value <= maximum:
        return value  # the common case first
    n = number(value, field)
    if n != n.to_integral_value():
        raise FieldError(field, f"must be a whole number of smallest units, not {n}")
    if not 1 <= n <= maximum:
        raise FieldError(field, f"must be between 1 and {maximum}")
    return int(n)


def flag01(value: Any, field: str) -> bool:
    """A 0/1 flag, sent as "0"/"1" or 0/1."""
    if value in ("0", "1") and type(value) is str:
        return bool(value == "1")  # the common case first
    if isinstance(value, bool):  # JSON true/false: not absent, and not 0/1 either
        raise FieldError(field, f"must be 0 or 1, not {str(value).lower()}")
    got = text(value)
    if got is None:
        raise FieldError(field, "is required")
    if got not in ("0", "1"):
        raise FieldError(field, f"must be 0 or 1, not {got!r}")
    return got == "1"


_DATETIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[ T]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,6})?")
_CHINA_OFFSET = datetime(2000, 1, 1, tzinfo=CHINA).isoformat()[-6:]  # "+08:00"
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}( [0-9]{2}:[0-9]{2}:[0-9]{2})?")


def china_time(value: Any, field: str) -> datetime:
    """``yyyy-MM-dd HH:mm:ss`` in China time (UTC+8), returned in UTC. A time that
    carries its own offset (RFC 3339) is taken as it says."""
    if (
        type(value) is str
        and len(value) == 19
        and value[4] == value[7] == "-"
        and value[10] == " "
        and value[13] == value[16] == ":"
    ):
        # the common case first, exactly yyyy-MM-dd HH:mm:ss: fromisoformat refuses what
        # is not ASCII digits there, as the pattern below does (each row has such a time)
        try:
            return datetime.fromisoformat(value + _CHINA_OFFSET).astimezone(UTC)
        except (ValueError, OverflowError):
            pass  # the full checks below name the problem
    got = text(value)
    if got is None:
        raise FieldError(field, "is required")
    matched = _DATETIME.match(got)
    if not matched:
        raise FieldError(field, f"is not a date-time yyyy-MM-dd HH:mm:ss: {got!r}")
    try:  # nothing after the time: China's offset (appended: datetime.replace costs more)
        parsed = datetime.fromisoformat(got if matched.end() < len(got) else got + _CHINA_OFFSET)
    except ValueError:
        raise FieldError(field, f"is not a valid date-time: {got!r}") from None
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 carried past the calendar by its offset
        raise FieldError(field, f"is out of range: {got!r}") from None


def calendar_date(value: Any, field: str) -> date:
    """``yyyy-MM-dd`` (a valid date-time is cut to its date)."""
    got = text(value)
    if got is None:
        raise FieldError(field, "is required")
    parsed = _calendar_date(got)
    if isinstance(parsed, str):
        raise FieldError(field, parsed)
    return parsed


@lru_cache(maxsize=4096)
def _calendar_date(got: str) -> date | str:
    """The date, or what is wrong with it. Cached: the rows of an upload repeat their
    lots' manufacture and expiry dates."""
    if not _DATE.fullmatch(got):
        return f"is not a date yyyy-MM-dd: {got!r}"
    try:
        day = date.fromisoformat(got[:10])
    except ValueError:
        return f"is not a valid date: {got!r}"
    try:  # a time sent with the date must be one (found by a probe: 25:61:99 was taken)
        if len(got) > 10:
            time.fromisoformat(got[11:])
    except ValueError:
        return f"is not a valid date-time: {got!r}"
    return day


# FIELDS.md's datetime and date fields of 3501–3506 rows (read in China time, as sent)
TIME_FIELDS = frozenset(("inv_chg_time", "purc_retn_stoin_time", "sel_retn_time"))
DATE_FIELDS = frozenset(("invdate", "manu_date", "expy_end"))


def as_answered(key: str, value: Any) -> Any:
    """A kept row's field as a query answers it: as read, not as sent, so that a record
    reads the same whoever sent it, and in 3511 as in 3513. A time in China time
    ``yyyy-MM-dd HH:mm:ss`` (sent as ``2026-03-05T16:30:00Z``, it is ``2026-03-06
    00:30:00``), a date ``yyyy-MM-dd``, a quantity or price a JSON number ("12.50" and
    12.5 are 12.5; its digits exactly, not a float's). Anything else, or a value that
    does not read (``""`` for an absent field), as sent."""
    try:
        if key in NUMERIC_FIELDS and value not in (None, ""):
            n = number(value, key)
            if n == n.to_integral_value():
                return int(n)
            return msgspec.Raw(format(n.normalize(), "f").encode())
        if key in TIME_FIELDS and value not in (None, ""):
            return china_time(value, key).astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S")
        if key in DATE_FIELDS and value not in (None, ""):
            return calendar_date(value, key).isoformat()
    except FieldError:
        pass
    return value


def lot_dates(row: dict[str, Any], *, manu: bool, expy: bool) -> None:
    """A row's ``manu_date`` and ``expy_end``, each read when given or required (``manu``,
    ``expy``); both given, the expiry is not before the production date."""
    made = None
    if manu or row.get("manu_date") not in (None, ""):
        made = calendar_date(row.get("manu_date"), "manu_date")
    if expy or row.get("expy_end") not in (None, ""):
        ends = calendar_date(row.get("expy_end"), "expy_end")
        if made is not None and ends < made:
            raise FieldError("expy_end", f"is before manu_date: {ends} < {made}")


# rx_flag, 处方药标志 (FIELDS.md's item block, [A] YbRxFlag): 0 no, 1 yes, 2 双跨 (dual
# OTC/Rx); ⚠ [A] sends "是"/"否" (yes/no) instead: a system in use, so taken as sent
RX_FLAGS = frozenset(("0", "1", "2", "是", "否"))


def rx_flag(row: dict[str, Any]) -> str:
    """A row's ``rx_flag`` (required): one of its codes."""
    got = required_text(row, "rx_flag", "rx_flag")
    if got not in RX_FLAGS:
        raise FieldError("rx_flag", f"must be 0, 1 or 2 (or 是/否), not {got!r}")
    return got


def lower_keys(row: dict[str, Any]) -> dict[str, Any]:
    """Row keys in lower case: some systems send spec columns in upper case
    (``MDTRT_SETL_TYPE``). A key sent in two casings is taken when both carry the same
    value, or one of them none (null or blank, as for an absent field); with different
    values it is refused naming it (FieldError): which one the institution meant would
    be a guess (found by a probe: ``BEGNDATE`` beside ``begndate``, one silently chosen)."""
    keys = "".join(row)
    if keys.lower() == keys:
        return row  # the common case, no upper-case letter: nothing to change (the row is only read)
    out: dict[str, Any] = {}
    sent: dict[str, str] = {}  # the spelling each key was first sent in
    for key, value in row.items():
        low = key.lower()
        if low in out and not _absent(value):
            first = out[low]
            if not _absent(first) and (type(first) is not type(value) or first != value):
                raise FieldError(low, f"is sent as {sent[low]!r} and as {key!r} with different values")
        if low not in out or _absent(out[low]):
            out[low] = value
            sent[low] = key
    return out


def _absent(value: Any) -> bool:
    """A field sent with no value: null, or a blank string (as :func:`text` reads it)."""
    return value is None or (type(value) is str and not value.strip())


def parse(body: Any) -> Envelope:
    """Check the envelope and find the rows of its ``input``. Raises FieldError."""
    if not isinstance(body, dict):
        raise FieldError("(body)", "must be a JSON object, the request envelope")
    fields: dict[str, str] = {}
    for key in (*REQUIRED, *OPTIONAL):
        if key == "input":
            continue
        value = (
            required_text(body, key, key, MAX_LENGTH.get(key))
            if key in REQUIRED
            else optional_text(body, key, key, MAX_LENGTH.get(key))
        )
        if value is not None:
            fields[key] = value
    infno = fields.pop("infno")
    batch = infno.upper().endswith("A")
    interface = infno[:-1] if batch else infno
    if interface not in WRAPPERS or (batch and WRAPPERS[interface][1] is None):
        if interface in KNOWN_NOT_TAKEN or interface in WRAPPERS:
            raise FieldError("infno", f"interface {infno} is not taken by this service yet")
        raise FieldError("infno", f"unknown interface {infno!r}")
    inf_time = china_time(fields.pop("inf_time"), "inf_time")
    raw_input = body.get("input")
    if isinstance(raw_input, str):  # some systems send input as a JSON string (≤ 40,000 chars)
        try:  # by the body's decoder, which refuses lone surrogates as json.loads does not
            raw_input = msgspec.json.decode(raw_input)
        except msgspec.DecodeError:
            raise FieldError("input", "is a string that is not JSON") from None
        except RecursionError:
            raise FieldError("input", "is a string nested too deeply") from None
    if not isinstance(raw_input, dict):
        raise FieldError("input", "must be an object holding the interface's wrapper")
    single_key, batch_key = WRAPPERS[interface]
    key = batch_key if batch and batch_key else single_key
    wrapped = raw_input.get(key)
    if interface == DELETION and not batch and wrapped is None and isinstance(raw_input.get(batch_key), list):
        # ⚠ some systems build goodDetail but post it as "3507": taken as the batch form
        batch, key, wrapped = True, batch_key or key, raw_input.get(batch_key)
    if wrapped is None:
        raise FieldError(f"input.{key}", "is required")
    if batch:
        if not isinstance(wrapped, list) or not wrapped:
            raise FieldError(f"input.{key}", "must be a non-empty array")
        if len(wrapped) > MAX_INPUT_ROWS:
            raise FieldError(f"input.{key}", f"has more than {MAX_INPUT_ROWS} rows")
        rows = list(wrapped)
    else:
        if not isinstance(wrapped, dict):
            raise FieldError(f"input.{key}", "must be an object")
        rows = [wrapped]
    return Envelope(
        infno=infno,
        interface=interface,
        batch=batch,
        msgid=fields.pop("msgid"),
        fixmedins_code=fields.pop("fixmedins_code"),
        fixmedins_name=fields.pop("fixmedins_name"),
        mdtrtarea_admvs=fields["mdtrtarea_admvs"],
        inf_time=inf_time,
        fields=fields,
        rows=rows,
    )


_REGION = re.compile(r"[0-9]{6}")


def region_of(body: Any) -> str:
    """The region an answer's ``inf_refmsgid`` begins with: the envelope's
    ``mdtrtarea_admvs`` when it reads as one (six digits), also when another field of
    the envelope was refused; else ``000000``."""
    region = text(body.get("mdtrtarea_admvs")) if isinstance(body, dict) else None
    return region if region is not None and _REGION.fullmatch(region) else "000000"


def wrapper_path(envelope: Envelope, index: int) -> str:
    """The JSON path of a row, as error messages name it: ``input.selinfoDetail[3]``."""
    single_key, batch_key = WRAPPERS[envelope.interface]
    return f"input.{batch_key}[{index}]" if envelope.batch else f"input.{single_key}"


def stamp(moment: datetime) -> str:
    """The response envelope's time format, yyyyMMddHHmmssSSS in China time."""
    local = moment.astimezone(CHINA)
    return local.strftime("%Y%m%d%H%M%S") + f"{local.microsecond // 1000:03d}"


def ref_msgid(region: str, moment: datetime, serial: int) -> str:
    """``inf_refmsgid``: region code (6) + time (14, China) + serial (10)."""
    return f"{region[:6]:0>6}{moment.astimezone(CHINA).strftime('%Y%m%d%H%M%S')}{serial % 10**10:010d}"
