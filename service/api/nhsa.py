"""POST /v1/nhsa: the national medical-insurance platform's 进销存 uploads, in its own
request and response envelopes. The translation lives in ``service/interop/nhsa/``; the
facts go through the same use case as POST /v1/events."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Controller, Request, Response, post
from litestar.enums import MediaType
from litestar.exceptions import PermissionDeniedException, TooManyRequestsException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIType, Schema

from service.api.auth import principal_of, requires
from service.api.deps import Services
from service.api.errors import failure, refuse_nul_in_url, text_field, text_problem
from service.api.openapi import BEARER, body, problems
from service.core.auth import Role
from service.core.rules import CHINA
from service.interop.nhsa import envelope as nhsa
from service.interop.nhsa import inventory, sales
from service.usecases import nhsa as usecase
from service.usecases.registry import get_org, org_by_fixmedins_code

OK, FAILED = "1", "0"  # retRslt (⚠ FIELDS.md does not say which is which; 1 = success here)

# The request envelope, for the OpenAPI document (the handler reads the body itself: an
# envelope that breaks this is answered in the response envelope, not as a problem).
_INFNOS = sorted({*nhsa.WRAPPERS, *(f"{i}A" for i, (_, batch) in nhsa.WRAPPERS.items() if batch is not None)})
ENVELOPE = Schema(
    type=OpenAPIType.OBJECT,
    required=list(nhsa.REQUIRED),
    properties={
        **{
            key: Schema(type=OpenAPIType.STRING, max_length=nhsa.MAX_LENGTH.get(key))
            for key in (*nhsa.REQUIRED, *nhsa.OPTIONAL)
            if key not in ("infno", "inf_time", "input")
        },
        "infno": Schema(
            type=OpenAPIType.STRING, enum=_INFNOS, description="the interface; A: the batch form"
        ),
        "inf_time": Schema(
            type=OpenAPIType.STRING,
            description="China time (UTC+8) unless it carries an offset",
            examples=["2026-03-05 10:00:00"],
        ),
        "input": Schema(
            one_of=[Schema(type=OpenAPIType.OBJECT), Schema(type=OpenAPIType.STRING)],
            description="the interface's rows under its wrapper: "
            + "; ".join(
                f"{i}: {single}" + (f" ({i}A: {batch}, an array)" if batch else "")
                for i, (single, batch) in sorted(nhsa.WRAPPERS.items())
            )
            + ". Fields as in the platform's interface documents (README, NHSA uploads); "
            "numbers may be sent as strings. Some systems send input as a JSON string: taken too.",
        ),
    },
)
EXAMPLE_SALE = {
    "infno": "3505",
    "msgid": "P45010300001202603051000000001",
    "mdtrtarea_admvs": "450103",
    "recer_sys_code": "YBXT",
    "infver": "V1.0",
    "opter_type": "1",
    "opter": "0001",
    "opter_name": "王药师",
    "inf_time": "2026-03-05 10:00:00",
    "fixmedins_code": "P45010300001",
    "fixmedins_name": "青秀大药房",
    "input": {
        "selinfo": {
            "med_list_codg": "XJ01CAA040A001010104256",
            "fixmedins_hilist_id": "YP0001",
            "fixmedins_hilist_name": "阿莫西林胶囊 0.25g*24",
            "fixmedins_bchno": "B20260305001",
            "rx_flag": "1",
            "prsc_dr_name": "李医生",
            "phar_name": "王药师",
            "phar_prac_cert_no": "YS450100001",
            "rtal_docno": "R20260305001",
            "manu_lotnum": "L2603",
            "manu_date": "2026-03-01",
            "expy_end": "2028-02-29",
            "psn_no": "45000012345678",
            "psn_cert_type": "01",
            "certno": "450103199001011234",
            "psn_name": "张三",
            "setl_id": "S0001",
            "mdtrt_sn": "MD2026030500001",
            "trdn_flag": "0",
            "finl_trns_pric": "12.5",
            "sel_retn_cnt": "1",
            "sel_retn_time": "2026-03-05 10:00:00",
            "sel_retn_opter_name": "王药师",
            "drugtracinfo": [{"drug_trac_codg": "81234560000000000011"}],
        }
    },
}


class NhsaResult(msgspec.Struct, rename={"ret_rslt": "retRslt", "msg_rslt": "msgRslt"}):
    ret_rslt: str
    msg_rslt: str


class NhsaRowError(msgspec.Struct, rename={"ret_rslt": "retRslt", "msg_rslt": "msgRslt"}):
    """One row of a batch form that was not (wholly) taken, named as the platform names it."""

    med_list_codg: str | None
    fixmedins_hilist_id: str | None
    fixmedins_hilist_name: str | None
    fixmedins_bchno: str | None
    ret_rslt: str
    msg_rslt: str
    memo: str | None = None


class NhsaRejected(msgspec.Struct):
    fixmedins_bchno: str | None
    code: str
    reason: str


class NhsaFlag(msgspec.Struct):
    flag_id: str
    kind: str
    code: str


class NhsaTracecode(msgspec.Struct):
    """Our additions: what the trace codes of the upload did here."""

    accepted: int  # codes taken
    duplicates: int  # events already stored (a record sent again)
    rejected: list[NhsaRejected]
    flags: list[NhsaFlag]
    records: int = 0  # ledger records stored now (a record sent again is not stored twice)
    deleted: list[str] = msgspec.field(default_factory=list)  # 3507: fixmedins_bchno deleted now


class NhsaOutput(
    msgspec.Struct,
    omit_defaults=True,
    rename={
        "sel_err": "selinfoErrDetail",
        "inv_err": "invinfoErrDetail",
        "purc_err": "purcinfoErrDetail",
        "good_err": "goodErrDetail",
        "page_num": "pageNum",
        "page_size": "pageSize",
        "record_counts": "recordCounts",
    },
):
    result: NhsaResult
    # batch forms: the rows not (wholly) taken, under the interface's own list name
    sel_err: list[NhsaRowError] | None = None
    inv_err: list[NhsaRowError] | None = None
    purc_err: list[NhsaRowError] | None = None
    good_err: list[NhsaRowError] | None = None
    data: list[dict[str, Any]] | None = None  # queries (3508/3511/3513): the rows found
    # queries: which page of how many records (⚠ our paging: page_num and page_size in
    # input.data; 3513's rows are the trace codes of the page's sales and returns)
    page_num: int | None = None
    page_size: int | None = None
    record_counts: int | None = None
    pages: int | None = None
    tracecode: NhsaTracecode | None = None


class NhsaOut(msgspec.Struct):
    """The platform's response envelope."""

    infcode: int  # 0 success, -1 failure (nothing stored)
    inf_refmsgid: str
    refmsg_time: str
    respond_time: str
    err_msg: str | None
    output: NhsaOutput | None


def _answer(received: datetime, region: str, err: str | None, output: NhsaOutput | None) -> NhsaOut:
    """The response envelope. A refusal (``err``) always carries ``output.result``, so a
    client may read ``retRslt`` on every answer."""
    message = err[:200] if err is not None else None
    if message is not None and output is None:
        output = NhsaOutput(result=NhsaResult(FAILED, message))
    return NhsaOut(
        infcode=-1 if err is not None else 0,
        inf_refmsgid=nhsa.ref_msgid(region, received, secrets.randbelow(10**10)),
        refmsg_time=nhsa.stamp(received),
        respond_time=nhsa.stamp(datetime.now(UTC)),
        err_msg=message,
        output=output,
    )


def _row_error(row: dict[str, Any], message: str) -> NhsaRowError:
    return NhsaRowError(
        med_list_codg=nhsa.text(row.get("med_list_codg")),
        fixmedins_hilist_id=nhsa.text(row.get("fixmedins_hilist_id")),
        fixmedins_hilist_name=nhsa.text(row.get("fixmedins_hilist_name")),
        fixmedins_bchno=nhsa.text(row.get("fixmedins_bchno")),
        ret_rslt=FAILED,
        msg_rslt=message[:200],
        memo=nhsa.text(row.get("memo")),
    )


def _output(
    env: nhsa.Envelope,
    result: NhsaResult,
    errors: list[NhsaRowError] | None,
    tracecode: NhsaTracecode | None = None,
) -> NhsaOutput:
    """The output, the batch form's error list under its interface's name."""
    out = NhsaOutput(result=result, tracecode=tracecode)
    if env.batch and errors is not None:
        name = {
            "selinfoErrDetail": "sel_err",
            "invinfoErrDetail": "inv_err",
            "purcinfoErrDetail": "purc_err",
            "goodErrDetail": "good_err",
        }[nhsa.ERROR_LISTS[env.interface]]
        setattr(out, name, errors)
    return out


def _refused(
    status: int, region: str, message: str, headers: dict[str, str] | None = None
) -> Response[NhsaOut]:
    """A refusal answered by an exception handler: the response envelope (``infcode`` -1,
    ``err_msg``), with the status and headers every route gives it."""
    return Response(
        _answer(datetime.now(UTC), region, message, None),
        status_code=status,
        headers=headers,
        media_type=MediaType.JSON,
    )


def _too_large(request: Request[Any, Any, Any], _exc: RequestEntityTooLarge) -> Response[NhsaOut]:
    """A body over the size limit, answered in the response envelope (a 35xx client reads
    ``infcode`` and ``err_msg``, not problem details), still with the 413 every route gives.
    Litestar stopped reading it at the limit (at once when its Content-Length said so):
    nothing was decoded, nothing stored."""
    limit = request.route_handler.resolve_request_max_body_size()
    message = (
        f"(body): is larger than the {limit} bytes this service takes in one request:"
        " nothing was stored; send the rows in smaller uploads"
    )
    return _refused(413, "000000", message)


def _too_many(_request: Request[Any, Any, Any], exc: TooManyRequestsException) -> Response[NhsaOut]:
    """A key over its rate limit (the limiter refused it before the body was read, so the
    region is unknown), answered in the response envelope, with the 429, ``Retry-After``
    and the ``RateLimit-*`` headers every route gives: nothing was stored."""
    return _refused(429, "000000", f"(key): {exc.detail}; nothing was stored", dict(exc.headers or {}))


def _failed(request: Request[Any, Any, Any], exc: Exception) -> Response[NhsaOut]:
    """The database unavailable (503, ``Retry-After``), or an error the service did not
    expect (500), answered in the response envelope a 35xx client reads. Whether the
    upload was stored is not known (the connection may have failed in its commit): it
    is sent again as it was, and a record sent twice is one fact."""
    status, detail, headers = failure(request, exc)
    return _refused(status, "000000", f"(service): {detail}; send the upload again as it is", headers)


class OtherInstitution(PermissionDeniedException):
    """An org key uploading for an institution (``fixmedins_code``) not its own: a 403,
    answered in the response envelope like every other refusal of an upload."""

    def __init__(self, region: str, message: str) -> None:
        super().__init__(message)
        self.region = region


def _other_institution(_request: Request[Any, Any, Any], exc: OtherInstitution) -> Response[NhsaOut]:
    """Nothing was stored; a 35xx client reads ``infcode`` and ``err_msg``, not problem
    details (found by a newcomer's walkthrough), and the status stays the 403 API.md gives
    a key acting outside its organisation."""
    return _refused(403, exc.region, exc.detail)


OTHER_INSTITUTION = ResponseSpec(
    data_container=NhsaOut,
    media_type=MediaType.JSON,
    description="The key's organisation is not the institution named by fixmedins_code (or has none):"
    " the response envelope, infcode -1, err_msg naming fixmedins_code; nothing stored (a key of a"
    " role that may not upload gets problem details)",
    generate_examples=False,
)


TOO_LARGE = ResponseSpec(
    data_container=NhsaOut,
    media_type=MediaType.JSON,
    description="The body is larger than the service accepts (TRACE_MAX_BODY_BYTES): the response "
    "envelope, infcode -1, err_msg naming the limit in bytes; nothing stored",
    generate_examples=False,
)

TOO_MANY = ResponseSpec(
    data_container=NhsaOut,
    media_type=MediaType.JSON,
    description="The key sent more than its rate limit (TRACE_RATE_LIMIT_ORG): the response envelope,"
    " infcode -1, err_msg naming the key's limit, with Retry-After; nothing stored",
    generate_examples=False,
)
FAILED_HERE = ResponseSpec(
    data_container=NhsaOut,
    media_type=MediaType.JSON,
    description="The database is unavailable (503, with Retry-After), or the service failed (500): the"
    " response envelope, infcode -1, err_msg starting (service); send the upload again as it is",
    generate_examples=False,
)


CONFLICT = (
    "a record of this type was uploaded with it before, with other contents, and stands as it was:"
    " send the correction under a new fixmedins_bchno"
)
DELETED_BEFORE = (
    "the record of this type uploaded with it was deleted (3507) and stays deleted:"
    " send it again under a new fixmedins_bchno"
)


class NhsaController(Controller):
    path = "/v1/nhsa"
    tags = ["nhsa"]
    guards = [requires(Role.ORG)]
    security = BEARER
    # the app's body checks (NUL, UTF-8) are the handler's: answered in the envelope
    before_request = staticmethod(refuse_nul_in_url)
    # and so is a body over the size limit (its status stays 413)
    # and so are a rate limit's 429 and a failure's 503 or 500 (a key's role refused, or
    # no key, stay problem details, as on every route: a client set up wrong)
    exception_handlers = {
        RequestEntityTooLarge: _too_large,
        OtherInstitution: _other_institution,
        TooManyRequestsException: _too_many,
        Exception: _failed,
    }

    @post(
        "/",
        status_code=200,
        responses={
            # problem details only for a client set up wrong (a NUL in the URL, no key or
            # one of another role); a body the handler reads, whatever its media type, is
            # answered in the envelope (so no 415: found by a probe of the contract)
            **problems(400, 401),
            403: OTHER_INSTITUTION,
            413: TOO_LARGE,
            429: TOO_MANY,
            500: FAILED_HERE,
            503: FAILED_HERE,
        },
        operation_class=body("The platform's request envelope", ENVELOPE, EXAMPLE_SALE, "application/json"),
    )
    async def upload(self, request: Request[Any, Any, Any], services: Services) -> NhsaOut:
        """An NHSA 进销存 upload in the platform's envelope (3501/3501A stock count,
        3502/3502A inventory change, 3503/3503A purchase, 3504/3504A purchase return,
        3505/3505A sale, 3506/3506A sale return, 3507/3507A deletion; 3508/3511/3513
        queries); answered in its response envelope (``infcode`` -1 names the bad field,
        and then nothing is stored)."""
        received = datetime.now(UTC)
        principal = principal_of(request)
        raw = await request.body()
        if (problem := text_problem(raw)) is not None:  # the app's check, answered in the envelope
            field = text_field(raw)
            return _answer(received, "000000", f"{'(body)' if field == 'body' else field}: {problem}", None)
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return _answer(received, "000000", "(body): is not JSON", None)
        except RecursionError:
            return _answer(received, "000000", "(body): is nested too deeply", None)
        raw_input = body.get("input") if isinstance(body, dict) else None
        if isinstance(raw_input, str) and (problem := text_problem(raw_input.encode())) is not None:
            # checked as the body is
            return _answer(received, nhsa.region_of(body), f"input: {problem}", None)
        try:
            env = nhsa.parse(body)
        except nhsa.FieldError as exc:
            return _answer(received, nhsa.region_of(body), f"{exc.field}: {exc.message}", None)
        region = env.mdtrtarea_admvs
        if principal.role is Role.ORG:
            own = await get_org(services.pool, principal.org or "")
            if own is not None and own.fixmedins_code != env.fixmedins_code:
                # read again: it may have been given its code since this worker kept it
                own = await get_org(services.pool, own.id, fresh=True)
            if own is None or own.fixmedins_code != env.fixmedins_code:
                raise OtherInstitution(
                    region,
                    f"fixmedins_code: this key uploads only for organisation {principal.org}"
                    + (f" (fixmedins_code {own.fixmedins_code})" if own and own.fixmedins_code else ""),
                )
        else:
            own = await org_by_fixmedins_code(services.pool, env.fixmedins_code)
            if own is None:
                return _answer(received, region, "fixmedins_code: no organisation has this code", None)

        if env.interface in nhsa.QUERIES:
            return await self._query(services, env, own.id, received)
        translate = sales.translate if env.interface in (nhsa.SALE, nhsa.SALE_RETURN) else inventory.translate
        records, errors = translate(env, own.id, received, sales.id_namespace(services.settings.psn_secret))
        sales.keep_persons(records, services.settings.psn_secret)
        if errors and (not env.batch or not records):
            first = errors[0]
            return _answer(
                received,
                region,
                f"{first.field}: {first.message}",
                _output(
                    env,
                    NhsaResult(FAILED, f"{first.field}: {first.message}"),
                    [_row_error(e.row, f"{e.field}: {e.message}") for e in errors],
                ),
            )
        kept = {"infno": env.infno, "fixmedins_name": env.fixmedins_name, **env.fields}
        try:
            done = await usecase.upload(services.pool, own.id, records, env.msgid, kept, received)
        except RecursionError:  # a row nested just short of the decoder's limit but past the
            # store's JSON encoder's (its stack is deeper): the transaction stored nothing
            return _answer(received, region, "input: is nested too deeply", None)
        result = done.result
        if result.flags:
            services.feed_wake()

        record_of = {e.event_id: r for r in records for e in r.events}
        by_row: dict[int, list[str]] = {}
        rejected = []
        for x in result.rejected:
            rec = record_of.get(x.event_id)
            bchno = nhsa.text(rec.row.get("fixmedins_bchno")) if rec else None
            rejected.append(NhsaRejected(bchno, x.code, x.reason))
            if rec is not None:
                by_row.setdefault(rec.index, []).append(f"{x.code}: {x.reason}")
        # each row not (wholly) taken and why, listed in the order of the rows
        why: list[tuple[int, dict[str, Any], str]] = [
            (e.index, e.row, f"{e.field}: {e.message}") for e in errors
        ]
        why += [
            (r.index, r.row, f"{r.path}.drugtracinfo: trace codes refused: " + "; ".join(by_row[r.index]))
            for r in records
            if r.index in by_row
        ]
        why += [
            (r.index, r.row, f"{r.path}.fixmedins_bchno: no record of this type was uploaded with it")
            for r in done.missing
        ]
        why += [(r.index, r.row, f"{r.path}.fixmedins_bchno: {CONFLICT}") for r in done.conflicts]
        why += [(r.index, r.row, f"{r.path}.fixmedins_bchno: {DELETED_BEFORE}") for r in done.deleted_before]
        why += [
            (
                r.index,
                r.row,
                f"{r.path}.fixmedins_bchno: names a {' and a '.join(interfaces)} record, and "
                "inv_data_type cannot tell which is meant: neither is deleted",
            )
            for r, interfaces in done.ambiguous
        ]
        row_errors = [_row_error(row, message) for _, row, message in sorted(why, key=lambda w: w[0])]
        unknown_or_conflicting = (
            len(done.missing) + len(done.conflicts) + len(done.ambiguous) + len(done.deleted_before)
        )
        if unknown_or_conflicting and (not env.batch or unknown_or_conflicting == len(records)):
            # no good row (the single record, or a batch whose rows all name unknown records,
            # conflict with stored ones, or are bad): -1, naming the first
            message = row_errors[0 if env.batch else -1].msg_rslt
            return _answer(received, region, message, _output(env, NhsaResult(FAILED, message), row_errors))
        failed = bool(row_errors)
        message = "; ".join(e.msg_rslt for e in row_errors) if failed else "success"
        output = _output(
            env,
            NhsaResult(FAILED if failed else OK, message[:200]),
            row_errors,
            tracecode=NhsaTracecode(
                accepted=result.accepted_codes,
                duplicates=result.duplicates,
                rejected=rejected,
                flags=[NhsaFlag(str(f.flag_id), f.kind, f.code) for f in result.flags],
                records=done.records_new,
                deleted=done.deleted,
            ),
        )
        return _answer(received, region, None, output)

    async def _query(self, services: Services, env: nhsa.Envelope, org: str, received: datetime) -> NhsaOut:
        """3508 stock (the counts, with the ledger's balance), 3511 sales and sale returns,
        3513 the trace codes of both: from this service's records of the institution."""
        region = env.mdtrtarea_admvs
        try:
            q = inventory.query(env)
        except nhsa.FieldError as exc:
            return _answer(received, region, f"{exc.field}: {exc.message}", None)
        filters: dict[str, Any] = {
            "begin": q.begin,
            "end": q.end,
            "med_list_codg": q.med_list_codg,
            "item": q.item,
            "bchno": q.bchno,
        }
        rows: list[dict[str, Any]] = []
        code = env.fixmedins_code
        if env.interface == nhsa.INVENTORY_QUERY:
            total, found = await usecase.records(
                services.pool, org, ("3501",), page=q.page_num, page_size=q.page_size, **filters
            )
            ledgers = {
                item["med_list_codg"]: item for item in await usecase.ledger(services.pool, org, None) or []
            }
            for r in found:
                item = ledgers.get(r["med_list_codg"], {})
                rows.append(
                    inventory.answer_row(
                        r,
                        code,
                        medinsListCodg=r["row_data"].get("fixmedins_hilist_id"),
                        medinsListName=r["row_data"].get("fixmedins_hilist_name"),
                        invCnt=r["units"],
                        ledgerBalance=item.get("balance"),
                    )
                )
        else:
            # sales and sale returns (⚠ FIELDS.md gives both the same 销售/退货 fields, read
            # as one record of the platform's): each row says which (infno), its count as sent
            total, found = await usecase.records(
                services.pool,
                org,
                (nhsa.SALE, nhsa.SALE_RETURN),
                page=q.page_num,
                page_size=q.page_size,
                **filters,
                code=q.code,
                mdtrt_id=q.mdtrt_id,
                psn_no=q.psn_no,
                secret=services.settings.psn_secret,
                traced=env.interface == nhsa.SALE_TRACE_QUERY,
            )
            for r in found:
                if env.interface == nhsa.SALE_QUERY:
                    rows.append(inventory.answer_row(r, code, selRetnCnt=r["units"], infno=r["interface"]))
                    continue
                data = r["row_data"]
                for c in r["codes"]:
                    if q.code is None or c == q.code:
                        rows.append(
                            {
                                "fixmedinsCode": code,
                                "fixmedinsBchno": r["fixmedins_bchno"],
                                "medListCodg": r["med_list_codg"],
                                "medinsListCodg": data.get("fixmedins_hilist_id"),
                                "mdtrtId": data.get("mdtrt_sn"),
                                "mdtrtSetlType": data.get("mdtrt_setl_type"),
                                "setlId": data.get("setl_id"),
                                "selRetnTime": r["at"].astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S"),
                                "drugTracCodg": c,
                                "infno": r["interface"],  # 3506: the code came back
                            }
                        )
        output = NhsaOutput(
            result=NhsaResult(OK, "success"),
            data=rows,
            page_num=q.page_num,
            page_size=q.page_size,
            record_counts=total,
            pages=-(-total // q.page_size),
        )
        return _answer(received, region, None, output)
