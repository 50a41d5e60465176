"""POST /v1/nhsa: the national medical-insurance platform's 进销存 uploads, in its own
request and response envelopes. The translation lives in ``service/interop/nhsa/``; the
facts go through the same use case as POST /v1/events."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Controller, Request, post
from litestar.exceptions import PermissionDeniedException

from service.api.auth import principal_of, requires
from service.api.deps import Services
from service.api.openapi import BEARER, WITH_BODY, problems
from service.core.auth import Role
from service.core.events import Incoming, Rejection
from service.interop.nhsa import envelope as nhsa
from service.interop.nhsa import sales
from service.usecases.events import ingest
from service.usecases.registry import get_org, org_by_fixmedins_code

OK, FAILED = "1", "0"  # retRslt (⚠ FIELDS.md does not say which is which; 1 = success here)


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


class NhsaOutput(msgspec.Struct, omit_defaults=True, rename={"sel_err": "selinfoErrDetail"}):
    result: NhsaResult
    sel_err: list[NhsaRowError] | None = None  # batch forms: the rows not (wholly) taken
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
    return NhsaOut(
        infcode=-1 if err is not None else 0,
        inf_refmsgid=nhsa.ref_msgid(region, received, secrets.randbelow(10**10)),
        refmsg_time=nhsa.stamp(received),
        respond_time=nhsa.stamp(datetime.now(UTC)),
        err_msg=err[:200] if err is not None else None,
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


class NhsaController(Controller):
    path = "/v1/nhsa"
    tags = ["nhsa"]
    guards = [requires(Role.ORG)]
    security = BEARER

    @post("/", status_code=200, responses=problems(*WITH_BODY))
    async def upload(self, request: Request[Any, Any, Any], services: Services) -> NhsaOut:
        """An NHSA 进销存 upload (3505/3505A sale, 3506/3506A sale return) in the platform's
        envelope; answered in its response envelope (``infcode`` -1 names the bad field,
        and then nothing is stored)."""
        received = datetime.now(UTC)
        principal = principal_of(request)
        try:
            body = msgspec.json.decode(await request.body())
        except msgspec.DecodeError:
            return _answer(received, "000000", "(body): is not JSON", None)
        try:
            env = nhsa.parse(body)
        except nhsa.FieldError as exc:
            return _answer(received, "000000", f"{exc.field}: {exc.message}", None)
        region = env.mdtrtarea_admvs
        if principal.role is Role.ORG:
            own = await get_org(services.pool, principal.org or "")
            if own is None or own.fixmedins_code != env.fixmedins_code:
                raise PermissionDeniedException(
                    f"fixmedins_code: this key uploads only for organisation {principal.org}"
                    + (f" (fixmedins_code {own.fixmedins_code})" if own and own.fixmedins_code else "")
                )
        else:
            own = await org_by_fixmedins_code(services.pool, env.fixmedins_code)
            if own is None:
                return _answer(received, region, "fixmedins_code: no organisation has this code", None)

        records, errors = sales.translate(env, own.id, received)
        if errors and (not env.batch or not records):
            first = errors[0]
            return _answer(
                received,
                region,
                f"{first.field}: {first.message}",
                NhsaOutput(
                    result=NhsaResult(FAILED, f"{first.field}: {first.message}"),
                    sel_err=[_row_error(e.row, f"{e.field}: {e.message}") for e in errors]
                    if env.batch
                    else None,
                ),
            )
        events: list[Incoming] = [e for r in records for e in r.events]
        refused: list[Rejection] = [x for r in records for x in r.refused]
        result = await ingest(services.pool, events, refused)
        if result.flags:
            services.feed_wake()

        record_of = {e.event_id: r for r in records for e in r.events}
        record_of.update((x.event_id, r) for r in records for x in r.refused)
        by_row: dict[int, list[str]] = {}
        rejected = []
        for x in result.rejected:
            rec = record_of.get(x.event_id)
            bchno = nhsa.text(rec.row.get("fixmedins_bchno")) if rec else None
            rejected.append(NhsaRejected(bchno, x.code, x.reason))
            if rec is not None:
                by_row.setdefault(rec.index, []).append(f"{x.code}: {x.reason}")
        row_errors = [_row_error(e.row, f"{e.field}: {e.message}") for e in errors]
        row_errors += [
            _row_error(r.row, "trace codes refused: " + "; ".join(by_row[r.index]))
            for r in records
            if r.index in by_row
        ]
        failed = bool(row_errors)
        message = "; ".join(e.msg_rslt for e in row_errors) if failed else "success"
        output = NhsaOutput(
            result=NhsaResult(FAILED if failed else OK, message[:200]),
            sel_err=row_errors if env.batch else None,
            tracecode=NhsaTracecode(
                accepted=result.accepted_codes,
                duplicates=result.duplicates,
                rejected=rejected,
                flags=[NhsaFlag(str(f.flag_id), f.kind, f.code) for f in result.flags],
            ),
        )
        return _answer(received, region, None, output)
