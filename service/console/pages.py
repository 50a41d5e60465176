"""The console's pages: each handler reads a form or query, calls the same use cases as
the API (``service/usecases``), and renders a template. No rule lives here."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, get_args
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from litestar import Controller, Request, get, post
from litestar.datastructures import Cookie
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, ServerSentEvent, Template
from litestar.response.sse import ServerSentEventMessage
from litestar.utils.scope.state import ScopeState
from redis.exceptions import RedisError

from service import feed
from service.api.flags import KINDS, STATUSES, Settable
from service.console import auth, charts, lots
from service.console.i18n import CATALOGUES, Translate, language, translator
from service.console.text import visible
from service.console.timeline import layout
from service.core.codes import ParsedCode, as_typed, is_product_id, strip_code, try_parse_code
from service.core.events import bound_problem
from service.core.flags import code_is_item, status_set_by
from service.core.rules import CHINA, expired, local_date
from service.usecases import codes as code_usecases
from service.usecases import flags as flag_usecases
from service.usecases import investigation
from service.usecases import nhsa as nhsa_usecases
from service.usecases import registry as registry_usecases
from service.usecases.errors import Invalid, Stale

LANG_COOKIE = "console_lang"
PAGE_SIZE = 50
DAYS = 30  # an organisation's daily chart
MAX_LOT = 64  # as the API's lot field (service/api/types.py Short)
MAX_CODE = 200  # a code as typed or scanned, as the API's code parameter
LIVE_BLOCK_MS = 800  # one wait on the stream (below the Redis client's 1 s socket timeout)
LIVE_RECHECK_SECONDS = 15  # how often an idle live stream checks its key still counts (and before a flag)
LIVE_MAX_SECONDS = 600  # then the stream ends; the browser reconnects where it left off
ENDED_EVENT = "ended"  # a live stream's last message when its session has ended
# where a live stream has read to (a stream entry's id), told every check when it moved
# without a flag sent: a page that closes its stream (hidden) opens it again from there
POSITION_EVENT = "position"
STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")  # a Redis stream entry's id
# a live stream's route: told "ended" without a session (:func:`to_signin`), and renewing
# none (the browser keeps it open by itself: only a person's requests extend a session)
LIVE_OPT = {"stream": True, auth.NOT_RENEWED: True}


def _confirmation(
    request: Req, wanted: list[tuple[int, str | None]], status: str, note: str | None, issued: int
) -> str:
    """What confirms a bulk change of status: when it was asked (``issued``, seconds since
    the epoch) and a digest, under a key of the service's own, of that time, the signed-in
    key's id and the change's choices (each flag with the status its row showed, the
    status, the note). A change of status of more than one flag is made only with it, so
    a form that did not come from the confirmation page of those very choices, asked of
    the key signed in now within :data:`CONFIRM_SECONDS`, changes nothing
    (:func:`_confirmed`). Every such change is asked about, whatever the status: a
    status a person sets is never undone by an automatic clear, and a pending or
    auto-cleared flag cannot be made so again."""
    key = hmac.new(request.app.state.settings.psn_secret, b"tracecode console bulk change", hashlib.sha256)
    if note is not None:  # as a browser sends it back from a hidden field: CRLF line breaks
        note = note.replace("\r\n", "\n").replace("\r", "\n")
    chosen = json.dumps(
        [
            auth.principal(request).key_id,
            issued,
            [[flag_id, shown] for flag_id, shown in wanted],
            status,
            note,
        ],
        ensure_ascii=False,
    )
    return f"{issued}.{hmac.new(key.digest(), chosen.encode(), hashlib.sha256).hexdigest()}"


def _confirmed(
    request: Req, given: object, wanted: list[tuple[int, str | None]], status: str, note: str | None
) -> bool:
    """Does the form's confirmation field confirm these choices, for the key signed in
    now, asked no more than :data:`CONFIRM_SECONDS` ago? (A page left open longer, or
    opened before signing in as another key, asks again.)"""
    if not isinstance(given, str):  # absent, or a file
        return False
    issued, _, _ = given.partition(".")
    if not (issued.isascii() and issued.isdigit() and len(issued) <= 12):
        return False
    if not -CONFIRM_SKEW_SECONDS <= _now() - int(issued) <= CONFIRM_SECONDS:
        return False
    return _confirms(given, _confirmation(request, wanted, status, note, int(issued)))


def _now() -> int:
    """Seconds since the epoch (a bulk confirmation's time)."""
    return int(datetime.now(UTC).timestamp())


def _confirms(given: str, expected: str) -> bool:
    """Is the form's confirmation field the one expected? Compared as bytes: any text a
    form may carry (compare_digest refuses a str that is not ASCII with a TypeError: a
    crafted "é" was a 500)."""
    return hmac.compare_digest(given.encode(), expected.encode())


def names_item(flag: Mapping[str, Any]) -> bool:
    """Is the flag's code a catalogue item (``core.flags.code_is_item``)?"""
    return code_is_item(flag.get("code") or "", flag.get("refs") or {})


# a flag's refs that name events (``core.flags``, ``core.settlement``, ``core.ledger``):
# each links to its row on the code's page (:func:`event_url`); a return's is an event
EVENT_REFS = frozenset({"events", "earlier_events", "returned_by", "cleared_by"})
# a flag's refs that name organisations: each links to its page
ORG_REFS = frozenset({"holder", "last_shipped_to", "custodian", "orgs"})


def event_anchor(event_id: object) -> str:
    """The id of an event's row on its code's page (``code.html``)."""
    return f"event-{event_id}"


def event_url(code: str, event_id: object) -> str:
    """An event's row on the page of the code ``code`` (a flag's evidence names it)."""
    return (
        "/console/codes?"
        + urlencode({"q": code}, quote_via=quote)
        + "#"
        + quote(event_anchor(event_id), safe="")
    )


def short_id(event_id: object) -> str:
    """An event's id as a table shows it: its first 8 characters (a UUID's first group);
    the full id goes beside it, in a title."""
    return str(event_id)[:8]


def anchored_rows(events: list[dict[str, Any]]) -> set[int]:
    """The rows of a code's events table that carry their event's anchor: one per event
    id (an id is unique on a page). A move that took the pack out of its case shows an
    implicit unpack under its own id before it: the move's row is the anchor."""
    first: dict[str, int] = {}
    for i, e in enumerate(events):
        key = str(e.get("event_id"))
        if key not in first or (events[first[key]].get("implicit") and not e.get("implicit")):
            first[key] = i
    return set(first.values())


# refs a reader compares, in the order they are read (jsonb keeps an object's keys
# shortest first: "balance_after" came before "balance_before", a walkthrough); the rest
# after them, as stored
_READ_IN_ORDER = (
    "med_list_codg", "items", "interface", "fixmedins_bchno", "kind", "units",
    "balance_before", "balance_after", "units_in", "units_out", "last_count", "last_count_at",
)  # fmt: skip
REF_ORDER = {key: i for i, key in enumerate(_READ_IN_ORDER)}


def refs_shown(flag: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """A flag's refs as its page lists them: (key, how, value), ``how`` one of
    ``events`` (a list of event ids, linked to the code's page when the flag's code is
    a trace code: :func:`event_url`), ``orgs`` (organisation ids), ``list``, ``map``
    (a nested object: its keys and values), ``yes_no`` or ``text``."""
    refs = flag.get("refs") or {}
    if not isinstance(refs, Mapping):
        return [("", "text", refs)]
    out: list[tuple[str, str, Any]] = []
    for key, value in sorted(refs.items(), key=lambda ref: REF_ORDER.get(ref[0], len(REF_ORDER))):
        values = value if isinstance(value, list) else [value]
        if key in EVENT_REFS and isinstance(value, list):
            how = "events"
        elif key in ORG_REFS and all(isinstance(v, str) for v in values):
            how, value = "orgs", values
        elif isinstance(value, list):
            how = "list"
        elif isinstance(value, Mapping):
            how = "map"
        elif isinstance(value, bool):
            how = "yes_no"
        else:
            how = "text"
        out.append((key, how, value))
    return out


# the statuses a person may set (the rest are the service's own): the API's workflow
SETTABLE = get_args(Settable)

Req = Request[Any, Any, Any]
# a flag form's field for the status its page showed (per row in the queue: ``_<id>``)
EXPECTED = "expected_status"
# the key a form's page was rendered for: signed in since with another key (a second tab
# replaced the browser's one session), its change would be saved under a key whose holder
# never saw the page
RENDERED_FOR = "rendered_for"


def _rendered_for_another(request: Req, rendered_for: object) -> bool:
    """Was the form's page rendered for another key than the one signed in now? A form
    that names none (a page from before this check) is not refused."""
    shown = _text(rendered_for)
    return shown is not None and shown != auth.principal(request).key_id


# a route's opt: a form that saves something (lost when sent without a session)
SAVES = "saves"
# a bulk change's field that confirms it (:func:`_confirmation`), and how long it holds
CONFIRM = "confirm"
CONFIRM_SECONDS = 15 * 60
CONFIRM_SKEW_SECONDS = 60  # a confirmation asked of another process, its clock ahead


def _typed_code(value: str) -> tuple[ParsedCode | None, str | None]:
    """A code typed into the console (the search, the queue's filter): as every route
    reads one (only ASCII whitespace around it dropped), else as a person types it
    (``core.codes.as_typed``: spaces inside, full-width forms; the API stays strict); and
    the code read, when only its typed form reads as one (the page says so)."""
    raw = strip_code(value)
    parsed = try_parse_code(raw)
    if parsed is None and (typed := as_typed(raw)) != raw:
        parsed = try_parse_code(typed)
        return parsed, parsed.canonical if parsed is not None else None
    return parsed, None


def _text(value: object, limit: int = 2000) -> str | None:
    """A form or query value as text: None when absent or empty; NUL cannot be stored."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or "\x00" in value or len(value) > limit:
        return None
    return value


def _note(value: object) -> tuple[bool, str | None]:
    """(readable, the note): a note that is too long, holds NUL or is not text (a file) is
    refused, as the API refuses it, and then nothing changes; a blank one is no note."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return True, None
    note = _text(value)
    return note is not None, note


def _here(request: Req) -> str:
    """The page's own URL, to come back to: its path encoded again (a lot may hold "#" or
    "?"), and its query as sent."""
    query = request.url.query
    return quote(request.url.path, safe="/") + (f"?{query}" if query else "")


def page(
    request: Req, name: str, status_code: int = 200, *, headers: dict[str, str] | None = None, **context: Any
) -> Template:
    """Render ``name`` with the labels of the reader's language."""
    lang = language(request.cookies.get(LANG_COOKIE))
    return Template(
        template_name=name,
        status_code=status_code,
        headers=headers,
        context={
            "t": translator(lang),
            "lang": lang,
            "other_lang": next(code for code in CATALOGUES if code != lang),
            "path": _here(request),
            "signed_in": "principal" in request.state.dict(),
            # who this page was rendered for: the session's key as the guard found it on
            # this request (another key signed in from another tab shows at the next page)
            "who": request.state.dict().get("principal"),
            "names_item": names_item,
            "notice": _take_notice(request),
            **context,
        },
    )


NOTICE = "notice"  # the session's key for a page's one-time notice


def _query_of(query: str) -> list[list[str]]:
    """A URL's query as its decoded (name, value) pairs, in order (as a session keeps
    them: lists)."""
    return [[name, value] for name, value in parse_qsl(query, keep_blank_values=True)]


def _leave_notice(
    request: Req, url: str, key: str, *args: int, error: bool = False, stale: list[list[str]] | None = None
) -> None:
    """What an action did (or why it did nothing), for the page at ``url`` to show once,
    the next time it is rendered. Kept in the server-side session, never in the URL:
    anyone can write a count in a link (a probe showed "99,999 codes set to recalled" on a
    lot never recalled). The page is its path and its query: a lot whose page is
    addressed in the query (:func:`lot_url`) shares its path with every other such lot.
    ``stale``: the flags a bulk change left alone, as [flag id, status now], because
    their status was no longer the one their rows showed."""
    parts = urlsplit(url)
    request.session[NOTICE] = {
        "path": unquote(parts.path),
        "query": _query_of(parts.query),
        "key": key,
        "args": list(args),
        "error": error,
        "stale": stale or [],
    }


def _take_notice(request: Req) -> dict[str, Any] | None:
    """The notice left for this page, if any; it is shown once."""
    session = request.scope.get("session")
    notice = session.get(NOTICE) if isinstance(session, dict) else None
    if not isinstance(notice, dict) or notice.get("path") != request.scope["path"]:
        return None
    if notice.get("query", []) != _query_of(request.scope["query_string"].decode("latin-1")):
        return None
    del session[NOTICE]  # type: ignore[union-attr]
    return notice


def when(value: datetime | None) -> str:
    """A time in China time, to the minute."""
    return value.astimezone(CHINA).strftime("%Y-%m-%d %H:%M") if value else ""


ORGS_LISTED = 50  # organisations an organisation search lists
# the queue's choice of the flags still to work on, and what it selects
TO_DO = "to_do"
TO_DO_STATUSES = ("open", "investigating")


def past_expiry(day: date | None) -> bool:
    """Is a pack of this expiry date expired today, as verify judges it (a page said
    nothing of it: a walkthrough)?"""
    return expired(day, local_date(datetime.now(UTC)))


def _console_page(value: object) -> str | None:
    """``value`` if it is a console page's path (and query) to send the browser back to,
    never another site's; else None."""
    text = _text(value)
    return text if text is not None and (text == "/console" or text.startswith("/console/")) else None


def _after_signin(value: object) -> str | None:
    """The page to go on to once signed in (any console page but sign-in itself)."""
    back = _console_page(value)
    return None if back is None or back.startswith("/console/signin") else back


ENDED_COOKIE = "console_session_ended"  # for the sign-in page only, for a few minutes
UNSAVED_COOKIE = "console_unsaved"  # as that: a form sent without a session saved nothing


def to_signin(request: Req, _: auth.SignInRequired) -> Redirect | ServerSentEvent:
    """No session for this request: to the sign-in page, and back here once signed in
    (a page's GET; for a form, the page it was sent from). When the browser still had a
    session (its key revoked, the session gone), the sign-in page says it has ended; that
    is said with a cookie of its own, as a link could not. Found by a probe: both were
    silent, and a sign-in always went on to /console/codes. A live stream (its browser
    reconnecting) is told, as a stream, that the session has ended (:data:`ENDED_EVENT`):
    a redirect to a page is only an error to the browser's EventSource."""
    ended = auth.SESSION_KEY in request.cookies
    if request.route_handler.opt.get("stream"):
        return ServerSentEvent(
            [ServerSentEventMessage(event=ENDED_EVENT, data=ENDED_EVENT)],
            cookies=[_ended_cookie(request, ended)] if ended else [],
        )
    back: str | None
    if request.method in ("GET", "HEAD"):
        back = _here(request)
    elif (named := _form_next(request)) is not None:
        back = named
    else:
        sent_from = urlsplit(request.headers.get("referer", ""))
        back = _console_page(sent_from.path + (f"?{sent_from.query}" if sent_from.query else ""))
    back = _after_signin(back)
    # a form that saves something, sent without a session, saved nothing: the sign-in
    # page says so, and so does the page signing in goes back to (a probe: the change
    # was lost without a word)
    unsaved = request.method not in ("GET", "HEAD") and bool(request.route_handler.opt.get(SAVES))
    return Redirect(
        "/console/signin" + (f"?{urlencode({'next': back})}" if back else ""),
        status_code=303,
        cookies=[
            *([_ended_cookie(request, ended)] if ended else []),
            *([_signin_cookie(request, UNSAVED_COOKIE, True)] if unsaved else []),
        ],
    )


def _form_next(request: Req) -> str | None:
    """The console page a form names to come back to (its ``next``: the bulk form's
    queue), read from the form as the CSRF middleware parsed it before the guard (an
    exception handler cannot await the body). The page a form was sent from may be no
    page to go back to: the bulk confirmation answers a POST, and signing in went on to
    ``GET /console/flags/bulk``, a 405 (a probe)."""
    form = ScopeState.from_scope(request.scope).form
    value = form.get("next") if isinstance(form, dict) else None
    return _console_page(value)


def _ended_cookie(request: Req, ended: bool) -> Cookie:
    return _signin_cookie(request, ENDED_COOKIE, ended)


def _signin_cookie(request: Req, key: str, on: bool) -> Cookie:
    """A note for the sign-in page only, for a few minutes; off: gone."""
    return Cookie(
        key=key,
        value="1" if on else "",
        path="/console/signin",
        max_age=600 if on else 0,
        httponly=True,
        samesite="strict",
        secure=request.app.state.settings.secure_cookies,
    )


class SignInController(Controller):
    path = "/"
    opt = {"public": True}

    @get("/signin")
    async def signin_form(self, request: Req) -> Template:
        return page(
            request,
            "signin.html",
            refused=False,
            next_page=_after_signin(request.query_params.get("next")),
            ended=request.cookies.get(ENDED_COOKIE) == "1",
            unsaved=request.cookies.get(UNSAVED_COOKIE) == "1",
        )

    @post("/signin")
    async def signin(self, request: Req) -> Template | Redirect:
        form = await request.form()
        secret = _text(form.get("key"), 200)
        next_page = _after_signin(form.get("next"))
        unsaved = request.cookies.get(UNSAVED_COOKIE) == "1"
        found = await auth.principal_for_secret(request, secret) if secret else None
        if found is None or secret is None:
            return page(
                request,
                "signin.html",
                status_code=401,
                refused=True,
                next_page=next_page,
                ended=False,
                unsaved=unsaved,
            )
        await auth.start_session(request, secret)
        back = next_page or "/console/codes"
        if unsaved:  # said again where the form is
            _leave_notice(request, back, "signin.unsaved_after", error=True)
        return Redirect(
            back,
            status_code=303,
            cookies=[_ended_cookie(request, ended=False), _signin_cookie(request, UNSAVED_COOKIE, False)],
        )

    @post("/lang")
    async def switch_language(self, request: Req) -> Redirect:
        form = await request.form()
        lang = language(_text(form.get("lang")))
        back = _console_page(form.get("next")) or "/console"  # never a redirect off the console
        return Redirect(
            back,
            status_code=303,
            cookies=[
                Cookie(
                    key=LANG_COOKIE,
                    value=lang,
                    path="/console",
                    samesite="strict",
                    max_age=31536000,
                    secure=request.app.state.settings.secure_cookies,  # as every console cookie
                )
            ],
        )


class ConsoleController(Controller):
    path = "/"

    @get("/", opt={"public": True})  # only a redirect, to a page that asks for the session
    async def home(self) -> Redirect:
        return Redirect("/console/codes")

    @post("/signout")
    async def signout(self, request: Req) -> Redirect:
        auth.end_session(request)
        return Redirect("/console/signin", status_code=303)

    @get("/codes")
    async def code(self, request: Req, q: FromQuery[str | None] = None) -> Template:
        services = request.app.state.services
        if q is not None and len(q.strip()) > MAX_CODE:  # it was an empty page, saying nothing
            return page(request, "code.html", q="", found=None, invalid=False, too_long=True)
        if q is None or _text(q) is None:
            return page(request, "code.html", q="", found=None, invalid=False)
        raw = strip_code(q)  # as every route reads a code: only ASCII whitespace around it dropped
        parsed, read_as = _typed_code(raw)
        if parsed is None:
            return page(request, "code.html", q=raw, found=None, invalid=True)
        found = await code_usecases.history_of(services.pool, parsed.canonical)
        if found is None:
            # no record of the code, but flags may name it (a settlement of a code never
            # commissioned: UNKNOWN_CODE): said, with links (it read as nothing at all: a
            # walkthrough)
            naming = await flag_usecases.counts(services.pool, flag_usecases.FlagQuery(code=parsed.canonical))
            by_status = [(s, n) for c in naming.values() for s, n in c.items()]
            return page(
                request,
                "code.html",
                q=raw,
                found=None,
                invalid=False,
                unknown=parsed.canonical,
                unknown_flags=sum(n for s, n in by_status if s != "pending"),
                unknown_pending=sum(n for s, n in by_status if s == "pending"),
                read_as=read_as,
            )
        orgs = {
            o
            for e in found["events"]
            for o in (e.get("org"), e.get("to"), e.get("from"))
            if isinstance(o, str)
        }
        orgs |= {s["org"] for s in found["settlements"]} | {f["org"] for f in found["flags"] if f["org"]}
        if found["custodian"]:
            orgs.add(found["custodian"])
        named = await registry_usecases.get_orgs(services.pool, sorted(orgs))
        names = {org_id: org.name for org_id, org in named.items()}
        return page(
            request,
            "code.html",
            q=raw,
            found=found,
            invalid=False,
            read_as=read_as,
            names=names,
            timeline=layout(found["events"], names),
            anchored=anchored_rows(found["events"]),
        )

    @get("/flags")
    async def flags(self, request: Req) -> Template:
        return await self._queue(request, pending=False)

    @get("/flags/pending")
    async def pending(self, request: Req) -> Template:
        return await self._queue(request, pending=True)

    async def _queue(self, request: Req, *, pending: bool) -> Template:
        services = request.app.state.services
        params = request.query_params
        query, bad = _flag_query(params, pending=pending)
        # the code filtered by, when only its typed form reads as one (said, as the search says it)
        code_read_as = _typed_code(params.get("code", ""))[1] if query.code is not None else None
        before = _text(params.get("before"), 19)
        number = before is not None and before.isascii() and before.isdigit()  # "³" is a digit too
        before_id = int(before) if number and before and int(before) < 2**63 else None
        # a day range that ends before it starts selects nothing: said so, not an empty list
        reversed_dates = query.since is not None and query.until is not None and query.since >= query.until
        result = counts = None
        if not bad and not reversed_dates:
            try:
                result = await flag_usecases.search(
                    services.pool, query, before_id=before_id, limit=PAGE_SIZE
                )
            except Invalid as exc:  # an organisation that is not registered, refused as the API does
                bad.append(exc.field)
            else:
                # the counts of the flags the filters select, by kind and every status
                counts = await flag_usecases.counts(services.pool, query)
        kept = {
            k: v
            for k in ("kind", "status", "org", "region", "code", "med_list_codg", "since", "until")
            if (v := _text(params.get(k)))
        }
        if pending:
            kept.pop("status", None)
        # what a count's link keeps: the filters, its own kind and status apart
        count_filters = {k: v for k, v in kept.items() if k not in ("kind", "status")}
        # the queue's "any" status leaves pending flags out, as the API's does: how many
        # the filters also select there, so that none found here is not taken for none
        # at all (found by a walkthrough: no DIVERSION listed, 3 pending)
        pending_also = (
            sum(c.get("pending", 0) for c in counts.values())
            if counts and not pending and not query.status and not query.statuses
            else 0
        )
        pending_filters = {k: v for k, v in kept.items() if k != "status"}
        items = result.items if result else []
        named = await registry_usecases.get_orgs(services.pool, sorted({f["org"] for f in items if f["org"]}))
        return page(
            request,
            "flags.html",
            400 if bad else 200,  # a refused filter: no search ran
            pending=pending,
            items=items,
            names={org_id: org.name for org_id, org in named.items()},  # as the code page shows them
            next_link=(
                f"{request.url.path}?{urlencode({**kept, 'before': result.next_before})}"
                if result and result.next_before is not None
                else None
            ),
            first_link=f"{request.url.path}?{urlencode(kept)}" if before_id else None,
            # the new flags this page would list, as they come: the same filters, from
            # where the flag stream is as the page is rendered
            live_link=f"{request.url.path}/live?{urlencode(kept)}",
            live_after=await _feed_position(request) if not bad and not reversed_dates else None,
            # when the stream says the session has ended: to sign in, then back here
            signin_link=f"/console/signin?{urlencode({'next': _here(request)})}",
            filters=kept,
            bad=bad,
            filter_labels=FILTER_LABELS,
            reversed_dates=reversed_dates,
            code_read_as=code_read_as,
            counts=counts,
            count_filters=count_filters,
            pending_also=pending_also,
            pending_link=f"/console/flags/pending?{urlencode(pending_filters)}",
            kinds=KINDS,
            statuses=STATUSES,
            to_do=TO_DO,
            settable=SETTABLE,
        )

    @get("/flags/live", opt=LIVE_OPT)
    async def live(self, request: Req) -> ServerSentEvent:
        return self._live(request, pending=False)

    @get("/flags/pending/live", opt=LIVE_OPT)
    async def pending_live(self, request: Req) -> ServerSentEvent:
        return self._live(request, pending=True)

    def _live(self, request: Req, *, pending: bool) -> ServerSentEvent:
        """New and changed flags as they reach the feed's stream (server-sent events), for
        the queue's live list: new flags the queue page with these filters would list (a
        pending flag on the pending page only); a change of status of a flag the page
        lists now, or may show as a row (its filters but the status: a flag confirmed
        leaves the open queue, and its row must say so), told apart from a new flag
        (``published_change``: who, when). Ends when the session ends (signed out,
        expired, the key revoked). Read from the entry after ``Last-Event-ID`` (the
        browser's own reconnect) or ``after`` (the page's: it closes its stream while
        hidden, and opens it again where it was), else from now."""
        t = translator(language(request.cookies.get(LANG_COOKIE)))
        pool = request.app.state.services.pool
        query, bad = _flag_query(request.query_params, pending=pending)
        redis = request.app.state.redis
        given = _text(request.headers.get("last-event-id"), 40) or _text(
            request.query_params.get("after"), 40
        )
        after = given if given is not None and STREAM_ID.fullmatch(given) else "$"
        digest = auth.session_digest(request)

        async def events() -> AsyncIterator[ServerSentEventMessage]:
            nonlocal after
            told = after  # the position the page knows
            checked = started = asyncio.get_running_loop().time()
            yield ServerSentEventMessage(comment="live", retry=3000)
            while redis is not None and checked - started < LIVE_MAX_SECONDS:
                try:
                    if after == "$":  # from now on: the stream's last entry, once, not at every wait
                        after = await feed.last_entry(redis)
                    found = await feed.read_after(redis, after, block_ms=LIVE_BLOCK_MS)
                except (RedisError, OSError):
                    found = []
                    await asyncio.sleep(1)
                now = asyncio.get_running_loop().time()
                due = now - checked > LIVE_RECHECK_SECONDS
                if found or due:  # sign-out, expiry or revocation ends it, before any flag goes out
                    checked = now
                    if (
                        not await auth.session_lives(request)
                        or digest is None
                        or await auth.console_principal(request, digest) is None
                    ):
                        # said, so that the page says so (it stopped without a word: a probe)
                        yield ServerSentEventMessage(event=ENDED_EVENT, data=ENDED_EVENT)
                        return
                for entry_id, fields in found:
                    after = entry_id
                    if bad:
                        continue
                    entry = await _live(pool, query, fields, t)
                    if entry is not None:
                        yield ServerSentEventMessage(event="flag", id=after, data=entry)
                        told = after
                if due and after != told:
                    yield ServerSentEventMessage(event=POSITION_EVENT, id=after, data=after)
                    told = after
                elif due:
                    yield ServerSentEventMessage(comment="still here")

        return ServerSentEvent(events())

    @get("/flags/{flag_id:int}")
    async def flag(self, request: Req, flag_id: FromPath[int]) -> Template:
        return await self._flag_page(request, flag_id)

    async def _flag_page(
        self,
        request: Req,
        flag_id: int,
        error: str | None = None,
        *,
        expected: str | None = None,
        note: object = None,
    ) -> Template:
        """The flag's page: 404 for an unknown flag, 400 with ``error`` for a refused change;
        409 for a change made against the status ``expected``, which the flag no longer
        has (it says so, and who set the status it has, when). A refused change's note is
        in its field again, to send once more."""
        pool = request.app.state.services.pool
        found = await flag_usecases.read(pool, flag_id) if 0 < flag_id < 2**63 else None
        status_code = 404 if found is None else 409 if expected else 400 if error else 200
        org = await registry_usecases.get_org(pool, found["org"]) if found and found["org"] else None
        grace = await _grace(request, found) if found and found["status"] == "pending" else None
        set_by = status_set_by(found) if found and expected else None
        # who moved it, named when their keys were given names (a bare key id said nothing:
        # a walkthrough)
        movers = [h["by_key"] for h in found["history"] if h.get("by_key")] if found else []
        key_names = await registry_usecases.key_names(pool, movers + ([set_by["by_key"]] if set_by else []))
        return page(
            request,
            "flag.html",
            status_code,
            flag=found,
            grace=grace,
            flag_id=flag_id,
            settable=SETTABLE,
            error=error,
            stale=expected,
            set_by=set_by,
            key_names=key_names,
            note=note if isinstance(note, str) and (error or expected) else "",
            org_name=org.name if org else None,  # as the code page shows it
            refs=refs_shown(found) if found else [],
        )

    @post("/flags/{flag_id:int}", opt={SAVES: True})
    async def change_flag(self, request: Req, flag_id: FromPath[int]) -> Redirect | Template:
        form = await request.form()
        status = _text(form.get("status"))  # none: keep the flag's status
        readable, note = _note(form.get("note"))
        typed = form.get("note")
        # the status the page showed (a page opened before it was sent: none, no check)
        expected = _text(form.get(EXPECTED))
        if not 0 < flag_id < 2**63:  # no such flag (the database's ids are bigints)
            return await self._flag_page(request, flag_id)
        if _rendered_for_another(request, form.get(RENDERED_FOR)):
            return await self._flag_page(request, flag_id, "flags.other_key", note=typed)
        if (status is not None and status not in SETTABLE) or (
            expected is not None and expected not in STATUSES
        ):
            return await self._flag_page(request, flag_id, "flags.bad_status", note=typed)
        if not readable:
            return await self._flag_page(request, flag_id, "flags.bad_note", note=typed)
        if status is None and note is None:
            return await self._flag_page(request, flag_id, "flags.nothing")
        changed, stale = await self._change(request, [(flag_id, expected)], status, note)
        if stale:
            return await self._flag_page(request, flag_id, expected=expected, note=typed)
        if changed == 0:
            return await self._flag_page(request, flag_id)
        return Redirect(f"/console/flags/{flag_id}", status_code=303)

    @post("/flags/bulk", opt={SAVES: True})
    async def change_flags(self, request: Req) -> Redirect | Template:
        form = await request.form()
        status = _text(form.get("status"))
        # each flag once, however often the form names it (a repeated id was changed twice)
        ids = list(
            dict.fromkeys(
                int(v) for v in form.getall("flag_id", []) if v.isascii() and v.isdigit() and len(v) < 19
            )
        )
        # with the status each row showed (a row of a page opened before it was sent: none)
        wanted = [(flag_id, _text(form.get(f"{EXPECTED}_{flag_id}"))) for flag_id in ids]
        back = _console_page(form.get("next")) or "/console/flags"
        if not back.startswith("/console/flags"):
            back = "/console/flags"
        readable, note = _note(form.get("note"))
        # a change that does nothing says why (it said "0 flags updated": a probe)
        if _rendered_for_another(request, form.get(RENDERED_FOR)):
            _leave_notice(request, back, "flags.other_key", error=True)
        elif status is not None and status not in SETTABLE:
            _leave_notice(request, back, "flags.bad_status", error=True)
        elif not readable:
            _leave_notice(request, back, "flags.bad_note", error=True)
        elif not ids:
            _leave_notice(request, back, "flags.none_ticked", error=True)
        elif status is None and note is None:
            _leave_notice(request, back, "flags.nothing", error=True)
        elif (
            status is not None
            and len(wanted) > 1
            and not _confirmed(request, form.get(CONFIRM), wanted, status, note)
        ):
            # a change of status of many flags, not confirmed yet (or confirmed for other
            # choices, another key, too long ago): nothing changes; the page asks, its
            # form the same choices again
            return page(
                request,
                "flags_confirm.html",
                # the page to come back to (switching language, signing in again): the
                # queue it was asked from; its own address takes only a POST (a probe)
                path=back,
                wanted=wanted,
                status=status,
                note=note or "",
                back=back,
                confirm=_confirmation(request, wanted, status, note, _now()),
                statuses=STATUSES,
                again=bool(form.get(CONFIRM)),  # a confirmation that no longer holds
                minutes=CONFIRM_SECONDS // 60,
            )
        else:
            changed, stale = await self._change(request, wanted, status, note)
            _leave_notice(
                request, back, "flags.changed", changed, stale=[[f["flag_id"], f["status"]] for f in stale]
            )
        return Redirect(back, status_code=303)

    async def _change(
        self, request: Req, wanted: list[tuple[int, str | None]], status: str | None, note: str | None
    ) -> tuple[int, list[dict[str, Any]]]:
        """Each flag in ``wanted`` changed, if the status its page showed (None: unknown)
        is still its status; how many changed, and the flags that had moved on since, as
        they are now (``usecases.flags.change`` judges that, under the flag's lock)."""
        services = request.app.state.services
        who = auth.principal(request).key_id
        changed = 0
        stale: list[dict[str, Any]] = []
        for flag_id, expected in wanted:
            if expected is not None and expected not in STATUSES:
                expected = ""  # no status the flag may have: the page showed another
            try:
                done = await flag_usecases.change(
                    services.pool, flag_id, status, note, who, expected=expected
                )
            except Stale as exc:
                stale.append(exc.flag)
                continue
            if done is not None:
                changed += 1
        if changed:
            services.feed_wake()
        return changed, stale


class InvestigationController(Controller):
    """Where a lot is (and its recall), and what an organisation has done."""

    path = "/"

    @get("/lots/{product_id:str}/{lot:str}")
    async def lot(self, request: Req, product_id: FromPath[str], lot: FromPath[str]) -> Template:
        return await self._lot_page(request, product_id, lot)

    @get("/lots")
    async def lot_by_query(self, request: Req) -> Template:
        """The same page, for the lots a path cannot hold (see :func:`lot_url`)."""
        params = request.query_params
        return await self._lot_page(request, params.get("product_id", ""), params.get("lot", ""))

    async def _lot_page(self, request: Req, product_id: str, lot: str) -> Template:
        services = request.app.state.services
        if not _lot_named(product_id, lot):
            return page(request, "lot.html", status_code=404, product_id=product_id, lot=lot, summary=None)
        summary = await investigation.lot(services.pool, product_id, lot)
        products = await registry_usecases.get_products(services.pool, [product_id])
        if summary is None:
            return page(request, "lot.html", status_code=404, product_id=product_id, lot=lot, summary=None)
        t = translator(language(request.cookies.get(LANG_COOKIE)))
        # per organisation, the packs it still holds (the chart), and in the table also
        # those on their way to it, sold out and destroyed: by_custodian counts them all
        # as its stock (a probe read sold-out packs as stock on shelves)
        holding = lots.holdings(summary)
        # the holders with a bar of their own, named (the order and the count are the chart's)
        top = sorted(holding, key=lambda k: (-holding[k].held, k))[: charts.own_bars(len(holding))]
        holders = await registry_usecases.get_orgs(services.pool, [k for k in top if k not in lots.LABELS])
        others = lots.added(h for k, h in holding.items() if k not in top)

        def label(k: str) -> str:
            """An organisation's name, its bare id, or what a key of no organisation means."""
            return holders[k].name if k in holders else t(lots.LABELS[k]) if k in lots.LABELS else visible(k)

        return page(
            request,
            "lot.html",
            product_id=product_id,
            lot=lot,
            product=products.get(product_id),
            summary=summary,
            by_state=charts.bars([(k, t(f"state.{k}"), n) for k, n in summary["by_state"].items()]),
            recalled_by_state=charts.bars(
                [(k, t(f"state.{k}"), n) for k, n in summary["recalled_by_state"].items()]
            ),
            by_custodian=charts.bars(
                [(k, label(k), h.held) for k, h in holding.items()],
                rest=t("lot.others", len(holding) - len(top)),
            ),
            # the table's figures for each bar ("": the others, added up)
            holding={**{k: holding[k] for k in top}, "": others},
            known=set(holders),  # organisations with a page (not the keys of lots.LABELS)
        )

    @post("/lots/recall", opt={SAVES: True})
    async def recall(self, request: Req) -> Redirect:
        """The lot page's recall form: the lot in the form, as it is (any lot a path
        cannot hold too)."""
        form = await request.form()
        product_id, lot = (form.get(field) for field in ("product_id", "lot"))
        if not isinstance(product_id, str) or not isinstance(lot, str):  # absent, or a file
            product_id, lot = "", ""
        return await self._recall(request, form, product_id, lot)

    @post("/lots/{product_id:str}/{lot:str}/recall", opt={SAVES: True})
    async def recall_by_path(self, request: Req, product_id: FromPath[str], lot: FromPath[str]) -> Redirect:
        """Where the form was sent before (a page still open from then)."""
        return await self._recall(request, await request.form(), product_id, lot)

    async def _recall(self, request: Req, form: Any, product_id: str, lot: str) -> Redirect:
        services = request.app.state.services
        reason = _text(form.get("reason"))
        back = lot_url(product_id, lot)
        refused = None
        if not _lot_named(product_id, lot):
            refused = "product"
        elif reason is None or form.get("confirm") != "yes":
            refused = "reason" if reason is None else "confirm"
        else:
            try:
                done = await investigation.recall(
                    services.pool, product_id, lot, reason, auth.principal(request).key_id
                )
            except Invalid:
                refused = "product"
            else:
                if done.flags_raised:
                    services.feed_wake()
                _leave_notice(request, back, "lot.recalled_now", done.codes_recalled)
        if refused is not None:
            _leave_notice(request, back, f"lot.refused.{refused}", error=True)
        return Redirect(back, status_code=303)

    @get("/orgs/{org:str}")
    async def org(self, request: Req, org: FromPath[str]) -> Template:
        return await self._org_page(request, org)

    @get("/orgs")
    async def org_by_query(self, request: Req) -> Template:
        """The same page, for the ids a path cannot hold (see :func:`org_url`); without
        an ``id``, the organisations found by ``q``: a part of an id or a name, an NHSA
        institution code or a GLN (an organisation was reachable only through a code or
        a flag, and the queue's filter took only an exact id: a walkthrough)."""
        params = request.query_params
        if "id" in params:
            return await self._org_page(request, params.get("id", ""))
        wanted = _text(params.get("q"), 200)
        found = (
            await registry_usecases.find_orgs(request.app.state.services.pool, wanted, ORGS_LISTED + 1)
            if wanted
            else []
        )
        return page(
            request, "orgs.html", q=wanted or "", orgs=found[:ORGS_LISTED], more=len(found) > ORGS_LISTED
        )

    async def _org_page(self, request: Req, org: str) -> Template:
        services = request.app.state.services
        found = await registry_usecases.get_org(services.pool, org)
        if found is None:
            return page(request, "org.html", status_code=404, org_id=org, org=None)
        stats = await investigation.org_stats(services.pool, org)
        assert stats is not None  # None for an unknown organisation, and this one is known
        today = datetime.now(CHINA).date()
        daily = await investigation.org_daily(services.pool, org, DAYS, today)
        open_flags = await flag_usecases.search(
            services.pool, flag_usecases.FlagQuery(status="open", org=org), before_id=None, limit=PAGE_SIZE
        )
        ledger = await nhsa_usecases.ledger(services.pool, org, None)
        # each figure as many as its link lists: the queue lists every status but pending
        pending = stats["flags_by_status"].get("pending", 0)
        return page(
            request,
            "org.html",
            org_id=org,
            org=found,
            stats=stats,
            flags_listed=stats["flagged"] - pending,
            flags_pending=pending,
            days=charts.columns(daily),
            open_flags=open_flags.items,
            more_flags=open_flags.next_before is not None,
            ledger=ledger or [],
        )


async def _feed_position(request: Req) -> str | None:
    """Where the flag stream is now (its newest entry's id): the queue's live list starts
    there, so that it misses nothing that came after the page, even when its stream opens
    later (a tab opened in the background opens none until it is shown). None without
    Redis: then the stream starts when it opens."""
    redis = request.app.state.redis
    if redis is None:
        return None
    try:
        return await feed.last_entry(redis)
    except (RedisError, OSError):
        return None


async def _grace(request: Req, flag: dict[str, Any]) -> dict[str, Any] | None:
    """When a pending flag opens unless something explains it first: the end of its grace
    window (the service's ``TRACE_FLAG_GRACE_HOURS`` from when it became pending, as the
    promotion reads it), and how often the promotion looks (it opens at the first look
    after). None when the flag is no longer pending."""
    settings = request.app.state.settings
    window = timedelta(hours=settings.flag_grace_hours)
    pool = request.app.state.services.pool
    ends = await flag_usecases.grace_ends(pool, flag["code"], int(flag["flag_id"]), window)
    if ends is None:
        return None
    return {
        "ends": ends,
        "since": ends - window,
        "hours": f"{settings.flag_grace_hours:g}",
        "every": f"{settings.flag_promote_seconds:g}",
        "passed": ends <= datetime.now(ends.tzinfo),
    }


def org_url(org_id: str) -> str:
    """An organisation's page. The registry takes "." and ".." as ids, and browsers
    resolve such a path segment (also written %2E) before asking: /console/orgs/.. opened
    /console/ (found by a probe). Those two go in the query instead."""
    if org_id in (".", ".."):
        return f"/console/orgs?{urlencode({'id': org_id})}"
    return f"/console/orgs/{quote(org_id, safe='')}"


def lot_url(product_id: str, lot: str) -> str:
    """A lot's page. GS1 lets a lot hold "/" and "%" and be "." or "..": a "/" (also
    written %2F) splits the path, and browsers resolve "." and ".." (also written %2E)
    before asking (a probe: such a lot's page and recall could not be reached); a "%" is
    kept out of the path too (a proxy that decodes the path once more would ask for
    another lot). Those go in the query instead, as :func:`org_url`'s ids; any other lot
    keeps its path (links and bookmarks as before)."""
    if all(part not in ("", ".", "..") and "/" not in part and "%" not in part for part in (product_id, lot)):
        return f"/console/lots/{quote(product_id, safe='')}/{quote(lot, safe='')}"
    return "/console/lots?" + urlencode({"product_id": product_id, "lot": lot}, quote_via=quote)


def _lot_named(product_id: str, lot: str) -> bool:
    """A product id and lot that may name a lot (``/v1/lots``); what a recall takes
    besides is its use case's rule (``core.events.identifier_problem``)."""
    return is_product_id(product_id) and 0 < len(lot) <= MAX_LOT and "\x00" not in lot


def _may_list(query: flag_usecases.FlagQuery, flag: dict[str, str]) -> bool:
    """Might the queue with ``query`` list this flag (a stream entry), whatever its status?
    Read from the entry's own fields, which a flag keeps (its kind, code, organisation,
    region and activity time), without asking the database: False only when it never
    would. Most entries of a filtered queue's stream end here."""
    code, flag_id = flag.get("code", ""), flag.get("flag_id", "")
    if not code or not (flag_id.isascii() and flag_id.isdigit()):
        return False
    if query.code not in (None, code) or query.kind not in (None, flag.get("kind")):
        return False
    if query.org not in (None, flag.get("org")):
        return False
    if query.region is not None and not flag.get("region", "").startswith(query.region):
        return False
    if query.since is not None or query.until is not None:
        try:
            at = datetime.fromisoformat(flag.get("at", ""))
        except ValueError:
            return True  # the database says
        if (query.since is not None and at < query.since) or (query.until is not None and at >= query.until):
            return False
    return True


async def _listed(pool: Any, query: flag_usecases.FlagQuery, flag: dict[str, str]) -> bool:
    """Would the queue with ``query`` list this flag (a stream entry) now? Asked of the
    queue's own search, narrowed to the flag's code (a handful of rows, by their key)."""
    code, flag_id = flag.get("code", ""), flag.get("flag_id", "")
    if not _may_list(query, flag):
        return False
    found = await flag_usecases.search(pool, replace(query, code=code), before_id=int(flag_id) + 1, limit=1)
    return [f["flag_id"] for f in found.items] == [flag_id]


async def _live(pool: Any, query: flag_usecases.FlagQuery, flag: dict[str, str], t: Translate) -> str | None:
    """What the queue's live list is told of a stream entry (:func:`_live_entry`), or
    None when the page has no use for it. A new flag: when the page would list it. A
    change of status (the feed carries new flags and changes alike, each with its
    ``changed_at``; a change's is its history line's time): when the page would list the
    flag with its new status (``listed``), or it may be one of its rows (the page's
    filters but its status). Cheapest first: the entry's own fields (no query), then
    the page's search, and only for a flag it shows, which of the two the entry is (the
    flag's history) and its organisation's name."""
    status = flag.get("status", "")
    try:
        changed_at = datetime.fromisoformat(flag.get("changed_at", ""))
        flag_id = int(flag.get("flag_id", ""))
    except ValueError:
        return None
    if not _may_list(query, flag):
        return None
    code = flag.get("code", "")
    # would the page list the flag, or a row of it, with the entry's status?
    listed = query.lists(status)
    if await _listed(pool, replace(query, status=status, statuses=None), flag):
        change = await flag_usecases.published_change(pool, code, flag_id, changed_at)
        if change is None and not listed:
            return None  # a new flag of a status the page does not list
    else:
        # the flag has moved on since the entry (its change follows on the stream): a
        # new flag the page lists as it is now, or nothing
        if not await _listed(pool, query, flag):
            return None
        if await flag_usecases.published_change(pool, code, flag_id, changed_at) is not None:
            return None
        change, listed = None, True
    return _live_entry(flag, t, change, listed=listed, org_name=await _org_name(pool, flag.get("org", "")))


async def _org_name(pool: Any, org: str) -> str | None:
    """The name of the flag's organisation, as the table shows it beside its id (the
    registry's rows are cached by each process: no query once read)."""
    if not org:
        return None
    found = await registry_usecases.get_orgs(pool, [org])
    return found[org].name if org in found else None


def _live_entry(
    flag: dict[str, str], t: Translate, change: dict[str, Any] | None, *, listed: bool, org_name: str | None
) -> str:
    """One stream entry as the JSON the queue's script shows (as text, never markup; the
    identifiers with their hidden characters shown, as the pages show them). ``change``:
    the history line of a change of status (None: a new flag); ``listed``: would the
    page list the flag now (a change may be only for a row it shows); ``org_name``: the
    organisation's name, shown with its id and linked to its page as the table does."""
    at = datetime.fromisoformat(flag["at"]) if flag.get("at") else None
    org = flag.get("org", "")
    return json.dumps(
        {
            "flag_id": flag.get("flag_id", ""),
            "kind": t(f"kind.{flag.get('kind', '')}"),
            "status": t(f"status.{flag.get('status', '')}"),
            "status_key": flag.get("status", ""),  # its style (status-open, ...)
            "code": visible(flag.get("code", "")),
            "org": visible(org),
            "org_name": org_name or "",  # people's text: shown as written, isolated
            "org_url": org_url(org) if org else "",
            "at": when(at),
            "changed": change is not None,
            "listed": listed,
            # how the list and a row label it, in the reader's language
            "label": t("flags.live_changed") if change is not None else t("flags.live_new"),
            "by": visible(change["by_key"]) if change is not None else "",
            "changed_at": when(change["at"]) if change is not None else "",
            "row_label": t("flags.row_changed"),
        },
        ensure_ascii=False,
    )


def _day(value: str | None, field: str, bad: list[str]) -> datetime | None:
    """A date typed in the form, as the start of that day in China time (the years the
    API's ``since`` and ``until`` take)."""
    if value is None:
        return None
    try:
        day = datetime.combine(date.fromisoformat(value), time(), CHINA)
    except ValueError:
        bad.append(field)
        return None
    if bound_problem(day) is not None or day.year >= 9998:  # the whole day must fit too
        bad.append(field)
        return None
    return day


def _filter(params: Any, field: str, limit: int, bad: list[str]) -> str | None:
    """A text filter: one longer than the API takes is bad, not dropped (it would list
    every flag under a filter the form still shows), however long (one past any form
    value's 2,000 characters was dropped: found by a probe)."""
    value = params.get(field)
    if isinstance(value, str) and len(value.strip()) > limit:
        bad.append(field)
        return None
    return _text(value)


# each filter's label on the queue's form: a refused filter is named by it (the page
# listed the parameters' names, "kind, region, since", on Chinese pages too: a probe)
FILTER_LABELS = {
    "kind": "flags.kind",
    "status": "flags.status",
    "region": "flags.region",
    "org": "flags.org",
    "code": "flags.trace_code",
    "med_list_codg": "flags.item",
    "since": "flags.since",
    "until": "flags.until",
}


def _flag_query(params: Any, *, pending: bool) -> tuple[flag_usecases.FlagQuery, list[str]]:
    """The queue's filters, checked as the API checks them; the names of the bad ones."""
    bad: list[str] = []
    kind = _filter(params, "kind", 64, bad)
    if kind is not None and kind not in KINDS:
        bad.append("kind")
    status = "pending" if pending else _filter(params, "status", 64, bad)
    statuses = None
    if status == TO_DO:  # the work still to do: open and investigating (a walkthrough)
        status, statuses = None, TO_DO_STATUSES
    elif status is not None and status not in STATUSES:
        bad.append("status")
    region = _filter(params, "region", 6, bad)
    if region is not None and not (region.isascii() and region.isdigit()):
        bad.append("region")
    org = _filter(params, "org", 64, bad)
    since = _day(_filter(params, "since", 10, bad), "since", bad)
    until = _day(_filter(params, "until", 10, bad), "until", bad)
    if until is not None:
        until += timedelta(days=1)  # the whole last day
    code = _filter(params, "code", MAX_CODE, bad)
    canonical = None
    if code is not None:
        parsed, _ = _typed_code(params.get("code"))  # as the code search reads it
        if parsed is None:
            bad.append("code")
        else:
            canonical = parsed.canonical
    # a catalogue item, as the API's med_list_codg: the flags that name it (refs.items)
    item = _filter(params, "med_list_codg", 64, bad)
    if item is not None and code is not None:
        bad.append("med_list_codg")  # one or the other, as the API
    return flag_usecases.FlagQuery(kind, status, org, region, canonical, since, until, item, statuses), bad
