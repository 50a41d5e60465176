"""The investigator console through HTTP: sign-in and its refusals, CSRF, escaping,
revocation, the code page and the flag queue."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.config import Settings
from tests.helpers import Api, event, sscc
from tests.integration.console_story import BRACKETED, CANONICAL, EVIL, RAW_SCAN, journey

pytestmark = pytest.mark.asyncio(loop_scope="session")

_TOKEN = re.compile(r'name="_csrf_token" value="([^"]+)"')


@pytest_asyncio.fixture(loop_scope="session")
async def browser(client: AsyncTestClient) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """The shared test client with no cookies before or after (it is the session's)."""
    client.cookies.clear()
    yield client
    client.cookies.clear()


async def _token(c: AsyncTestClient, path: str = "/console/signin") -> str:  # type: ignore[type-arg]
    page = await c.get(path)
    assert page.status_code == 200, page.text
    found = _TOKEN.search(page.text)
    assert found
    return found.group(1)


async def _expire_session(c: AsyncTestClient, redis_url: str) -> None:  # type: ignore[type-arg]
    """The console session of ``c`` ends in Valkey, as when it expires."""
    import redis.asyncio as aioredis

    valkey = aioredis.from_url(redis_url)
    try:
        assert await valkey.delete(f"console:{c.cookies.get('console_session')}") == 1
    finally:
        await valkey.aclose()


async def _sign_in(c: AsyncTestClient, key: str) -> object:  # type: ignore[type-arg]
    token = await _token(c)
    return await c.post("/console/signin", data={"key": key, "_csrf_token": token}, follow_redirects=False)


_HIDDEN_FIELD = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


def _fields(page: str, action: str) -> dict[str, list[str]]:
    """Every hidden field of the page's form posted to ``action`` (repeated ones too), as
    the browser sends them."""
    start = page.index(f'action="{action}"')
    body = page[start : page.index("</form>", start)]
    fields: dict[str, list[str]] = {}
    for name, value in _HIDDEN_FIELD.findall(body):
        fields.setdefault(name, []).append(html.unescape(value))
    return fields


async def pending_diversion(w: dict[str, Any], serial: int) -> tuple[str, str]:
    """A pack of the world's product received by P1 and dispensed by D1, whose pack it is
    not: the code, and its pending DIVERSION flag's id."""
    from tests.helpers import cn20

    code = cn20(w["unit"], serial)
    await w["keys"]["M1"].events(
        event("commission", "M1", [code], 0, lot="L1", expiry="2030-12-31"),
        event("ship", "M1", [code], 1, to="P1"),
    )
    await w["keys"]["P1"].events(event("receive", "P1", [code], 2))
    out = await w["keys"]["D1"].events(event("dispense", "D1", [code], 3))
    (flag_id,) = [f["flag_id"] for f in out["flags"] if f["kind"] == "DIVERSION"]
    assert (await w["inv"].ok("GET", f"/v1/flags/{flag_id}"))["status"] == "pending"
    return code, flag_id


async def _confirmed(c: AsyncTestClient, asked: Any) -> Any:  # type: ignore[type-arg]
    """A bulk change of status of several flags answers a page that asks to confirm it:
    its form sent, as its button sends it."""
    assert asked.status_code == 200, asked.text
    assert 'name="confirm"' in asked.text, asked.text
    return await c.post(
        "/console/flags/bulk", data=_fields(asked.text, "/console/flags/bulk"), follow_redirects=False
    )


async def test_sign_in_and_out_with_an_investigator_key(admin: Api, browser: AsyncTestClient) -> None:  # type: ignore[type-arg]
    inv = await admin.key_for("investigator")
    assert (await browser.get("/console/codes", follow_redirects=False)).headers[
        "location"
    ] == "/console/signin?next=%2Fconsole%2Fcodes"
    resp = await _sign_in(browser, inv.key)
    assert resp.status_code == 303
    assert resp.headers["location"] == "/console/codes"
    cookie = next(c for c in resp.headers.get_list("set-cookie") if c.startswith("console_session="))  # type: ignore[attr-defined]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Max-Age=" in cookie
    assert "Path=/console" in cookie
    assert inv.key not in cookie  # the session holds no secret; the cookie only an id
    page = await browser.get("/console/codes")
    assert page.status_code == 200
    assert 'action="/console/signout"' in page.text
    csp = page.headers["content-security-policy"]
    assert "unsafe-inline" not in csp
    assert "script-src 'self'" in csp
    out = await browser.post(
        "/console/signout",
        data={"_csrf_token": _TOKEN.search(page.text).group(1)},
        follow_redirects=False,  # type: ignore[union-attr]
    )
    assert out.status_code == 303
    # the cookie ends with the session (found by a probe: it stayed 8 hours, valued "null")
    ended = next(c for c in out.headers.get_list("set-cookie") if c.startswith("console_session="))  # type: ignore[attr-defined]
    assert "Max-Age=0" in ended, ended
    assert (await browser.get("/console/codes", follow_redirects=False)).status_code == 303


async def test_admin_may_sign_in_and_other_roles_are_refused(admin: Api, browser: AsyncTestClient) -> None:  # type: ignore[type-arg]
    await admin.ok("POST", "/v1/orgs", {"id": "P1", "name": "P", "kind": "pharmacy", "region": "450103"}, 201)
    for key in ((await admin.key_for("org", "P1")).key, (await admin.key_for("insurer")).key, "nonsense"):
        resp = await _sign_in(browser, key)
        assert resp.status_code == 401  # type: ignore[attr-defined]
        assert not any(c.startswith("console_session=") for c in resp.headers.get_list("set-cookie"))  # type: ignore[attr-defined]
        assert (await browser.get("/console/flags", follow_redirects=False)).status_code == 303
    assert (await _sign_in(browser, admin.key)).status_code == 303  # type: ignore[attr-defined]
    assert (await browser.get("/console/flags")).status_code == 200
    # the API's bearer keys still work, and the console is not reachable with one
    assert (await admin.get("/v1/flags")).status_code == 200


async def test_forms_without_their_csrf_token_are_refused(admin: Api, browser: AsyncTestClient) -> None:  # type: ignore[type-arg]
    w = await journey(admin)
    await _token(browser)
    refused = await browser.post("/console/signin", data={"key": w["inv"].key}, follow_redirects=False)
    assert refused.status_code == 403
    assert (await _sign_in(browser, w["inv"].key)).status_code == 303  # type: ignore[attr-defined]
    flag_id = w["open_flags"][0]
    forged = await browser.post(
        f"/console/flags/{flag_id}",
        data={"status": "dismissed", "_csrf_token": "forged"},
        follow_redirects=False,
    )
    assert forged.status_code == 403
    assert (await w["inv"].ok("GET", f"/v1/flags/{flag_id}"))["status"] == "open"


async def test_a_revoked_key_ends_its_sessions_at_once(admin: Api, browser: AsyncTestClient) -> None:  # type: ignore[type-arg]
    out = await admin.ok("POST", "/v1/keys", {"role": "investigator"}, 201)
    assert (await _sign_in(browser, out["secret"])).status_code == 303  # type: ignore[attr-defined]
    assert (await browser.get("/console/flags")).status_code == 200
    await admin.ok("DELETE", f"/v1/keys/{out['key_id']}")
    after = await browser.get("/console/flags", follow_redirects=False)
    assert after.status_code == 303
    assert after.headers["location"] == "/console/signin?next=%2Fconsole%2Fflags"


async def test_code_page_from_a_raw_scan_shows_custody_and_escapes_names(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    w = await journey(admin)
    await _sign_in(browser, w["inv"].key)
    page = await browser.get("/console/codes", params={"q": RAW_SCAN})
    assert page.status_code == 200
    html = page.text
    assert CANONICAL in html
    assert "Cefixime 100mg x 6" in html
    assert "L9" in html
    assert "<dt>码制</dt><dd>GS1 元素串</dd>" in html  # its form in words (it read "层级 gs1")
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; Pharmacy" in html
    assert EVIL not in html
    svg = html[
        html.index('<svg class="timeline"') : html.index("</svg>", html.index('<svg class="timeline"'))
    ]
    marks = [set(m.split()) for m in re.findall(r'<g class="mark ([^"]+)"', svg)]
    assert len(marks) == 9  # 8 events and the implicit unpack
    assert {"type-ship", "via"} in [m & {"type-ship", "via"} for m in marks]  # the case's ship
    # picked out of the case by D1's ship, which reached the service after P1's receive
    assert {"type-unpack", "implicit", "late"} <= marks[4]
    assert {"type-ship", "late"} <= marks[5]
    assert "via" not in marks[5]
    assert sum("late" in m for m in marks) == 2
    assert svg.count('class="ship') == 3
    # its flags, each linked: the diversion a late upload cleared, the open one
    for flag_id in w["open_flags"]:
        assert f'href="/console/flags/{flag_id}"' in html
    assert "流向异常" in html
    assert "自动解除" in html
    # the case it moved in links to the case's page (a walkthrough: it was bare text)
    assert f'<a href="/console/codes?q={w["case"]}">' in html
    # and the cleared flag's explaining event links to its row here (it was a bare id)
    cleared = [
        f
        for f in (await w["inv"].ok("GET", f"/v1/flags?code={CANONICAL}"))["items"]
        if f["status"] == "auto_cleared"
    ]
    assert cleared
    flag_page = (await browser.get(f"/console/flags/{cleared[0]['flag_id']}")).text
    (explained_by,) = cleared[0]["refs"]["cleared_by"]
    assert f'#event-{explained_by}"' in flag_page, flag_page
    assert (await browser.get("/console/codes", params={"q": "not a code"})).status_code == 200


async def test_code_page_of_a_sold_then_returned_pack(admin: Api, browser: AsyncTestClient) -> None:  # type: ignore[type-arg]
    """The sales table: a sale without a settlement id, then given back by a return."""
    w = await journey(admin)
    await _sign_in(browser, w["inv"].key)
    x1 = await admin.key_for("org", "X1")
    await x1.events(event("dispense", "X1", [BRACKETED], 8))
    sold = await browser.get("/console/codes", params={"q": CANONICAL})
    assert sold.status_code == 200, sold.text
    row = re.search(r'<table class="settlements">.*?</table>', sold.text, re.S)
    assert row is not None
    assert "None" not in row.group(0)
    assert "—" in row.group(0)
    back = event("return", "X1", [BRACKETED], 9)
    await x1.events(back)
    returned = await browser.get("/console/codes", params={"q": CANONICAL})
    assert returned.status_code == 200, returned.text
    table = re.search(r'<table class="settlements">.*?</table>', returned.text, re.S)
    assert table is not None
    assert "已退货" in table.group(0)
    assert [c.strip() for c in re.findall(r"<td>([^<]*)</td>", table.group(0))][-2:] == ["", "✓"]


async def test_a_code_is_read_with_the_whitespace_around_it_as_the_api_reads_it(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    """Found by a probe: the code page dropped Unicode whitespace around a code (U+3000,
    U+00A0, ...), which the API refuses as INVALID_CODE; only ASCII space, tab, CR and LF
    around a code are dropped, on every route. The search reads a code as a person types
    it since (test_console_figures.py): the full-width space U+3000 is dropped, and the
    page says which code it searched for; no other Unicode space is."""
    inv = await admin.key_for("investigator")
    await _sign_in(browser, inv.key)
    unknown, invalid = "系统中没有此追溯码的任何记录", "不是有效的 CN20、GS1 元素串或 SSCC"
    page = await browser.get("/console/codes", params={"q": " \t81234560000000000011\r\n"})
    assert unknown in page.text
    assert invalid not in page.text
    page = await browser.get("/console/codes", params={"q": "81234560000000000011\u3000"})
    assert unknown in page.text
    assert "已按 <bdi" in page.text  # said: the code searched for is not what was typed
    for around in ("\xa0", "\u2003", "\u2028", "\x85"):
        page = await browser.get("/console/codes", params={"q": "81234560000000000011" + around})
        assert page.status_code == 200, repr(around)
        assert invalid in page.text, repr(around)
        assert unknown not in page.text, repr(around)


async def test_a_code_whose_serial_holds_a_slash_has_its_page_and_its_links(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    """AI (21) allows "/" (the API reads such a code's history in the query since a probe,
    /v1/codes/history?code=): the console names a code in the query, never in the path,
    so the pack's page opens from the search and from its case's list of contents."""
    await admin.ok(
        "POST", "/v1/orgs", {"id": "M1", "name": "M1", "kind": "manufacturer", "region": "450100"}, 201
    )
    product = {"product_id": "06901234000115", "name": "GS1", "med_list_codg": "G2", "pack_units": 20}
    await admin.ok("POST", "/v1/products", {**product, "manufacturer": "M1"}, 201)
    m1 = await admin.key_for("org", "M1")
    slashed, case = "(01)06901234000115(21)A/1&2", sscc(5)
    await m1.events(
        event("commission", "M1", [slashed], 0, lot="G1", expiry="2030-01-01"),
        event("pack", "M1", [slashed], 1, parent=case),
    )
    inv = await admin.key_for("investigator")
    await _sign_in(browser, inv.key)
    page = await browser.get("/console/codes", params={"q": slashed})
    assert page.status_code == 200, page.text
    assert "010690123400011521A/1&amp;2" in page.text
    assert "系统中没有此追溯码的任何记录" not in page.text
    holder = await browser.get("/console/codes", params={"q": case})
    link = re.search(r'<a href="(/console/codes\?q=010690123400011521A[^"]*)"', holder.text)
    assert link is not None, holder.text
    followed = await browser.get(html.unescape(link.group(1)))
    assert followed.status_code == 200
    assert "010690123400011521A/1&amp;2" in followed.text
    assert "系统中没有此追溯码的任何记录" not in followed.text


async def test_language_switch_and_unknown_code(admin: Api, browser: AsyncTestClient) -> None:  # type: ignore[type-arg]
    inv = await admin.key_for("investigator")
    await _sign_in(browser, inv.key)
    page = await browser.get("/console/codes", params={"q": "81234560000000000011"})
    assert "系统中没有此追溯码的任何记录" in page.text
    switched = await browser.post(
        "/console/lang",
        data={
            "lang": "en",
            "next": "https://evil.example/",
            "_csrf_token": _TOKEN.search(page.text).group(1),
        },  # type: ignore[union-attr]
        follow_redirects=False,
    )
    assert switched.headers["location"] == "/console"
    page = await browser.get("/console/codes", params={"q": "81234560000000000011"})
    assert "Nothing is known of this code." in page.text
    assert 'lang="en"' in page.text
    # the switch comes back to the page it was on, also a lot whose name holds "#"
    lot = await browser.get("/console/lots/06901234567892/L%231")
    assert 'name="next" value="/console/lots/06901234567892/L%231"' in lot.text


async def test_flag_queue_filters_changes_one_and_many(admin: Api, browser: AsyncTestClient) -> None:  # type: ignore[type-arg]
    w = await journey(admin)
    await _sign_in(browser, w["inv"].key)
    queue = await browser.get("/console/flags")
    assert queue.status_code == 200
    flag_id = w["open_flags"][0]
    assert f'value="{flag_id}"' in queue.text
    assert "超区域" in queue.text
    assert "流向异常" in queue.text  # in the counts (auto-cleared) …
    token = _TOKEN.search(queue.text).group(1)  # type: ignore[union-attr]
    none = await browser.get("/console/flags", params={"kind": "EXPIRED"})
    assert f'value="{flag_id}"' not in none.text
    bad = await browser.get("/console/flags", params={"since": "yesterday"})
    assert "since" in bad.text
    changed = await browser.post(
        f"/console/flags/{flag_id}",
        data={"status": "investigating", "note": "called <the> pharmacy", "_csrf_token": token},
        follow_redirects=False,
    )
    assert changed.status_code == 303
    detail = await browser.get(f"/console/flags/{flag_id}")
    assert "called &lt;the&gt; pharmacy" in detail.text
    assert "调查中" in detail.text
    stored = await w["inv"].ok("GET", f"/v1/flags/{flag_id}")
    assert stored["status"] == "investigating"
    assert [h["note"] for h in stored["history"]] == ["called <the> pharmacy"]
    bulk = await browser.post(
        "/console/flags/bulk",
        data={"flag_id": [str(flag_id)], "status": "dismissed", "note": "bulk", "_csrf_token": token},
        follow_redirects=False,
    )
    assert bulk.status_code == 303
    assert bulk.headers["location"] == "/console/flags"
    assert (await w["inv"].ok("GET", f"/v1/flags/{flag_id}"))["status"] == "dismissed"
    assert (
        '<p class="notice" role="status">已更新 1 条预警。</p>' in (await browser.get("/console/flags")).text
    )
    assert "已更新" not in (await browser.get("/console/flags")).text  # said once
    # sent from a filtered page, it comes back to that page
    again = await browser.post(
        "/console/flags/bulk",
        data={
            "flag_id": [str(flag_id)],
            "status": "open",
            "next": "/console/flags?kind=OUT_OF_REGION",
            "_csrf_token": token,
        },
        follow_redirects=False,
    )
    assert again.headers["location"] == "/console/flags?kind=OUT_OF_REGION"
    pending = await browser.get("/console/flags/pending")
    assert pending.status_code == 200


async def test_a_refused_flag_change_changes_nothing_and_says_why(
    admin: Api, browser: AsyncTestClient
) -> None:  # type: ignore[type-arg]
    """An unknown flag is a 404 page; a status that may not be set, or a note the API
    would refuse (too long, NUL), is a 400 naming it, and the flag is as it was."""
    w = await journey(admin)
    await _sign_in(browser, w["inv"].key)
    flag_id = w["open_flags"][0]
    for unknown in (999999, 0):
        assert (await browser.get(f"/console/flags/{unknown}")).status_code == 404
    page = await browser.get(f"/console/flags/{flag_id}")
    token = _TOKEN.search(page.text).group(1)  # type: ignore[union-attr]
    for status, note, says in (
        ("auto_cleared", "", "请选择一个可设置的状态"),
        ("investigating", "x" * 2001, "备注最多 2000 个字符"),
        ("investigating", "a\x00b", "备注最多 2000 个字符"),
    ):
        refused = await browser.post(
            f"/console/flags/{flag_id}",
            data={"status": status, "note": note, "_csrf_token": token},
            follow_redirects=False,
        )
        assert refused.status_code == 400, (status, refused.status_code)
        assert says in refused.text
    stored = await w["inv"].ok("GET", f"/v1/flags/{flag_id}")
    assert (stored["status"], stored["history"]) == ("open", [])
    for gone_id in (999999, 2**63):  # the second past the ids' bigint (it was a 500)
        gone = await browser.post(
            f"/console/flags/{gone_id}",
            data={"status": "investigating", "_csrf_token": token},
            follow_redirects=False,
        )
        assert gone.status_code == 404, (gone_id, gone.status_code)


async def test_lot_page_charts_the_units_and_recalls_with_a_reason_and_confirmation(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    from tests.integration.console_story import GTIN

    w = await journey(admin)
    await _sign_in(browser, w["inv"].key)
    code_page = (await browser.get("/console/codes", params={"q": RAW_SCAN})).text
    lot_path = f"/console/lots/{GTIN}/L9"
    assert f'href="{lot_path}"' in code_page
    page = await browser.get(lot_path)
    assert page.status_code == 200, page.text
    html = page.text
    assert "Cefixime 100mg x 6" in html
    assert html.count('<svg class="bars"') == 2
    assert 'class="bar bar-received"' in html  # the pack, in stock at X1
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; Pharmacy" in html  # its holder, as text
    assert EVIL not in html
    assert 'href="/console/orgs/X1"' in html
    token = _TOKEN.search(html)
    assert token
    recall = "/console/lots/recall"  # the lot in the form
    assert f'action="{recall}"' in html
    assert '<input type="hidden" name="lot" value="L9">' in html
    named = {"product_id": GTIN, "lot": "L9"}
    # no reason, or no confirmation: nothing recalled
    for form in ({"reason": "", "confirm": "yes"}, {"reason": "contaminated"}):
        answer = await browser.post(
            recall, data={**named, **form, "_csrf_token": token.group(1)}, follow_redirects=False
        )
        assert answer.status_code == 303
        assert answer.headers["location"] == lot_path
        assert '<p class="error" role="alert">请' in (await browser.get(lot_path)).text
    assert (await w["inv"].ok("GET", f"/v1/lots/{GTIN}/L9"))["recalled"] is False
    answer = await browser.post(
        recall,
        data={**named, "reason": "contaminated", "confirm": "yes", "_csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == lot_path
    lot = await w["inv"].ok("GET", f"/v1/lots/{GTIN}/L9")
    assert lot["recalled"] is True
    assert lot["by_state"] == {"recalled": 1}
    after = (await browser.get(answer.headers["location"])).text
    assert "已召回，1 个追溯码改为召回状态。" in after
    assert 'class="bar bar-recalled"' in after
    assert "contaminated" in after
    assert 'action="' + recall not in after  # a recalled lot offers no second recall
    # without the CSRF token the recall form is refused
    refused = await browser.post(
        recall, data={**named, "reason": "x", "confirm": "yes"}, follow_redirects=False
    )
    assert refused.status_code == 403
    assert (await browser.get(f"/console/lots/{GTIN}/NOPE")).status_code == 404


async def test_org_page_figures_daily_chart_open_flags_and_ledger(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    w = await journey(admin)
    await _sign_in(browser, w["inv"].key)
    page = await browser.get("/console/orgs/X1")
    assert page.status_code == 200, page.text
    html = page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; Pharmacy" in html
    assert EVIL not in html
    assert '<svg class="daily"' in html
    assert html.count('class="col-settlements"') == 30 + 1  # a column a day, and the legend's
    for flag_id in w["open_flags"]:
        assert f'href="/console/flags/{flag_id}"' in html
    assert "此机构没有上传进销存数据" in html  # X1 uploaded no ledger
    assert (await browser.get("/console/orgs/NOPE")).status_code == 404


async def test_a_lot_too_long_for_the_api_is_refused_by_the_console_too(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    """Found in review: the console's recall took a lot the API refuses, and a 4,000
    character one broke the recalls' key (a 500)."""
    from tests.integration.console_story import GTIN

    w = await journey(admin)
    await _sign_in(browser, w["inv"].key)
    long_lot = "L" * 4000
    assert (await browser.get(f"/console/lots/{GTIN}/{long_lot}")).status_code == 404
    token = await _token(browser, f"/console/lots/{GTIN}/L9")
    answer = await browser.post(
        f"/console/lots/{GTIN}/{long_lot}/recall",
        data={"reason": "x", "confirm": "yes", "_csrf_token": token},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    assert "没有此产品" in (await browser.get(answer.headers["location"])).text
    assert (await w["inv"].ok("GET", f"/v1/lots/{GTIN}/L9"))["recalled"] is False


async def test_the_static_files_carry_the_pages_security_headers(browser: AsyncTestClient) -> None:  # type: ignore[type-arg]
    """A probe found the console's CSS and script served without X-Content-Type-Options
    or the Content-Security-Policy that its pages send."""
    page = await browser.get("/console/signin")
    linked = re.findall(r'(?:href|src)="(/console/static/[^"]+)"', page.text)
    # the icon too: without it every page logged a 404 for /favicon.ico (a walkthrough)
    assert sorted(linked) == [
        "/console/static/console.css",
        "/console/static/console.js",
        "/console/static/favicon.svg",
    ]
    for path in linked:
        for method in ("GET", "HEAD"):
            answer = await browser.request(method, path)
            assert answer.status_code == 200, (method, path, answer.status_code)
            for name in ("content-security-policy", "x-content-type-options", "referrer-policy"):
                assert answer.headers.get(name) == page.headers[name], (method, path, name)
    assert (await browser.get("/console/static/console.css")).headers["content-type"].startswith("text/css")


# lots GS1 allows that a URL path cannot hold ("/", "%", dot segments), and one that it can
ODD_LOTS = ("A/B%2.", "..", ".", "%2E%2E", "a+b c&d=e#f?")
_LOT_LINK = re.compile(r'<a href="(/console/lots[^"]*)">')
_RECALL_FORM = re.compile(r'<form method="post" action="([^"]+)" class="change">(.*?)</form>', re.S)
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


async def test_every_lot_opens_from_its_code_and_is_recalled_from_its_page(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    """A lot holding "/" or "%", or that is "." or "..", had a page nobody could open (a
    404, or the browser went elsewhere) and so no recall (a probe)."""
    from tests.helpers import cn20, world

    w = await world(admin)
    codes = {lot: cn20(w["unit"], serial) for serial, lot in enumerate(ODD_LOTS, start=1)}
    for lot, code in codes.items():
        await admin.events(event("commission", "M1", [code], 0, lot=lot, expiry="2030-12-31"))
    await _sign_in(browser, w["inv"].key)
    pages = {}
    for lot, code in codes.items():
        link = _LOT_LINK.search((await browser.get("/console/codes", params={"q": code})).text)
        assert link, lot
        pages[lot] = html.unescape(link.group(1))
        page = await browser.get(pages[lot])
        assert page.status_code == 200, (lot, pages[lot], page.status_code)
        assert (
            f'<h1>批次 <span class="code"><bdi>{html.escape(lot, quote=True)}</bdi></span></h1>' in page.text
        )
    # each recalled through its page's form, in turn; each notice on its own lot's page
    for lot in ODD_LOTS:
        page = (await browser.get(pages[lot])).text
        form = _RECALL_FORM.search(page)
        assert form, lot
        fields = {name: html.unescape(value) for name, value in _HIDDEN.findall(form.group(2))}
        answer = await browser.post(
            html.unescape(form.group(1)),
            data={**fields, "reason": f"recall of {lot}", "confirm": "yes"},
            follow_redirects=False,
        )
        assert answer.status_code == 303, (lot, answer.status_code)
        assert answer.headers["location"] == pages[lot]
        for other in ODD_LOTS:  # another lot's page, addressed alike, does not take it
            if other != lot:
                assert 'class="notice"' not in (await browser.get(pages[other])).text, (lot, other)
        after = (await browser.get(pages[lot])).text
        assert "已召回，1 个追溯码改为召回状态。" in after, lot
        assert html.escape(f"recall of {lot}", quote=True) in after
        assert 'class="bar bar-recalled"' in after


async def test_secure_cookies_when_asked(settings: Settings) -> None:
    """TRACE_SECURE_COOKIES: behind TLS, the console's cookies are sent over HTTPS only
    (the CSRF cookie of the sign-in page; the session cookie is set by the same config)."""
    app = create_app(replace(settings, secure_cookies=True))
    async with AsyncTestClient(app=app, base_url="https://testserver.local") as c:  # Secure: sent back
        page = await c.get("/console/signin")
        token = _TOKEN.search(page.text).group(1)  # type: ignore[union-attr]
        form = {"lang": "en", "_csrf_token": token}
        lang = await c.post("/console/lang", data=form, follow_redirects=False)
    cookies = page.headers.get_list("set-cookie")
    assert any(k.startswith("console_csrf=") and "Secure" in k for k in cookies), cookies
    # the language cookie too (found by a probe: it was the one sent over plain HTTP)
    assert any(k.startswith("console_lang=") and "Secure" in k for k in lang.headers.get_list("set-cookie"))


async def test_org_page_flag_figures_agree_with_their_lists_and_the_chart_says_what_it_counts(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    """The flag figure counted pending flags its link does not list, and the daily chart
    counted pending and auto-cleared flags, and rejected claims as settlements (a probe)."""
    from datetime import datetime, time, timedelta

    from service.core.rules import CHINA
    from tests.helpers import cn20, pack_claim, world

    w = await world(admin)
    day = datetime.now(CHINA).date() - timedelta(days=1)
    start = datetime.combine(day, time(10), CHINA)

    def when(minutes: int) -> str:
        return (start + timedelta(minutes=minutes)).isoformat()

    m1, p1 = w["keys"]["M1"], w["keys"]["P1"]
    sold, late, unknown = (cn20(w["unit"], s) for s in (501, 502, 503))
    await m1.events(
        event("commission", "M1", [sold, late], 0, at=when(0), lot="L1", expiry="2030-12-31"),
        event("ship", "M1", [sold], 0, at=when(1), to="P1"),
    )
    await p1.events(
        event("receive", "P1", [sold], 0, at=when(2)), event("receive", "P1", [late], 0, at=when(3))
    )
    await m1.events(
        event("ship", "M1", [late], 0, at=when(2), to="P1")
    )  # explains P1's receive: auto-cleared
    paid = await w["insurer"].ok("POST", "/v1/settlements", {**pack_claim("S1", sold, 0), "at": when(4)})
    assert paid["decision"] == "accepted"
    refused = await w["insurer"].ok(
        "POST", "/v1/settlements", {**pack_claim("S2", unknown, 0), "at": when(5)}
    )
    assert refused["decision"] == "rejected"  # and a pending UNKNOWN_CODE
    await p1.events(event("dispense", "P1", [sold], 0, at=when(6)))  # sold again: an open DUPLICATE
    listed = (await w["inv"].ok("GET", "/v1/flags?org=P1"))["items"]
    pending = (await w["inv"].ok("GET", "/v1/flags?org=P1&status=pending"))["items"]
    assert sorted(f["status"] for f in listed) == ["auto_cleared", "open"]
    assert len(pending) == 1

    await _sign_in(browser, w["inv"].key)
    html = (await browser.get("/console/orgs/P1")).text
    figure = re.search(r'<a href="/console/flags\?org=P1">(\d+)</a>', html)
    assert figure is not None
    assert int(figure.group(1)) == len(listed)
    queue = await browser.get("/console/flags", params={"org": "P1"})
    assert len(re.findall(r'name="flag_id" value="\d+"', queue.text)) == len(listed)
    waiting = re.search(r'<a href="/console/flags/pending\?org=P1">(\d+)</a>', html)
    assert waiting is not None
    assert int(waiting.group(1)) == len(pending)
    # the day's figures: the paid settlement, not the rejected one; the open flag, not the
    # pending or the auto-cleared one; each series named for what it counts
    row = re.search(rf"<tr><td>{day}</td><td class=\"num\">(\d+)</td><td class=\"num\">(\d+)</td></tr>", html)
    assert row is not None
    assert row.groups() == ("1", "1")
    assert "结算（全额或部分支付）" in html
    # the settlements by decision and the units, as GET /v1/orgs/P1/stats (a walkthrough
    # found the page without them)
    stats = await w["inv"].ok("GET", "/v1/orgs/P1/stats")
    assert stats["settlements"] == {"accepted": 1, "rejected": 1}, stats
    assert '<dt>医保结算单</dt><dd class="num">全额支付 1、部分支付 0、拒付 1</dd>' in html, html
    assert f'{stats["settled"]} <span class="muted">（{stats["settled_units"]} 单位）</span>' in html
    assert "预警（不含待定与自动解除）" in html


async def test_a_note_alone_keeps_a_pending_flags_status(admin: Api, browser: AsyncTestClient) -> None:  # type: ignore[type-arg]
    """The status list preselected "open" when the flag's status could not be set
    (pending, auto-cleared): a note alone silently reopened the flag (a probe)."""
    from tests.helpers import world

    w = await world(admin)
    _, flag_id = await pending_diversion(w, 1)
    await _sign_in(browser, w["inv"].key)
    page = await browser.get(f"/console/flags/{flag_id}")
    select = re.search(r'<select id="status" name="status">(.*?)</select>', page.text, re.S)
    assert select is not None
    options = re.findall(r'<option value="([^"]*)"( selected)?>', select.group(1))
    # what the form sends untouched: the selected option, else the first
    sent = next((value for value, selected in options if selected), options[0][0])
    assert sent == ""
    assert "保持不变（待定）" in select.group(1)
    token = _TOKEN.search(page.text).group(1)  # type: ignore[union-attr]
    noted = await browser.post(
        f"/console/flags/{flag_id}",
        data={"status": sent, "note": "asked P1 for its shipment", "_csrf_token": token},
        follow_redirects=False,
    )
    assert noted.status_code == 303
    stored = await w["inv"].ok("GET", f"/v1/flags/{flag_id}")
    assert stored["status"] == "pending"
    assert [(h["status"], h["note"]) for h in stored["history"]] == [("pending", "asked P1 for its shipment")]
    nothing = await browser.post(
        f"/console/flags/{flag_id}", data={"status": "", "_csrf_token": token}, follow_redirects=False
    )
    assert nothing.status_code == 400
    assert "请选择新的状态或填写备注" in nothing.text
    assert len((await w["inv"].ok("GET", f"/v1/flags/{flag_id}"))["history"]) == 1
    # the same from the queue's bulk change, whose list starts with "keep each as it is"
    queue = await browser.get("/console/flags/pending")
    assert '<select id="bulk-status" name="status"><option value="" selected>' in queue.text
    await browser.post(
        "/console/flags/bulk",
        data={"flag_id": [flag_id], "status": "", "note": "and D1", "_csrf_token": token},
        follow_redirects=False,
    )
    stored = await w["inv"].ok("GET", f"/v1/flags/{flag_id}")
    assert [(h["status"], h["note"]) for h in stored["history"]][1:] == [("pending", "and D1")]


async def test_a_note_alone_does_not_restart_a_pending_flags_grace_window(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]
    db: Any,
    db_url: str,
) -> None:
    """A pending flag raised 47 hours ago gets a note; two hours later (49 after it was
    raised) the promotion opens it: its 48 hours run from when it was raised (API.md), so
    notes cannot keep a suspicion pending and out of the queue (found by a review: the
    note set its status again and restarted the window)."""
    from service.store.db import create_pool
    from service.usecases import flags as flag_usecases
    from tests.helpers import cn20, world

    w = await world(admin)
    out = await w["keys"]["P1"].events(event("receive", "P1", [cn20(w["unit"], 777)], 0))
    (flag_id,) = [f["flag_id"] for f in out["flags"]]

    async def ago(hours: int) -> None:  # a value, not updated_at - interval: Citus refuses that
        then = await db.fetchval("SELECT updated_at FROM flags WHERE flag_id = $1", int(flag_id))
        await db.execute(
            "UPDATE flags SET updated_at = $2 WHERE flag_id = $1", int(flag_id), then - timedelta(hours=hours)
        )

    await ago(47)
    await _sign_in(browser, w["inv"].key)
    page = await browser.get(f"/console/flags/{flag_id}")
    token = _TOKEN.search(page.text).group(1)  # type: ignore[union-attr]
    data = {"status": "", "note": "looking", "_csrf_token": token}
    noted = await browser.post(f"/console/flags/{flag_id}", data=data, follow_redirects=False)
    assert noted.status_code == 303
    await ago(2)
    pool = await create_pool(db_url, min_size=1, max_size=1)
    try:
        await flag_usecases.promote_due(pool, timedelta(hours=48))
    finally:
        await pool.close()
    stored = await w["inv"].ok("GET", f"/v1/flags/{flag_id}")
    assert stored["status"] == "open", stored
    assert [(h["status"], h["note"]) for h in stored["history"]][:1] == [("pending", "looking")], stored


async def test_a_notice_is_never_taken_from_the_url(admin: Api, browser: AsyncTestClient) -> None:  # type: ignore[type-arg]
    """/console/lots/…?recalled=99999 showed "99,999 codes set to recalled" on a lot never
    recalled, and ?changed=N on the queue a change nobody made (a probe)."""
    from tests.integration.console_story import GTIN

    w = await journey(admin)
    await _sign_in(browser, w["inv"].key)
    forged = await browser.get(f"/console/lots/{GTIN}/L9", params={"recalled": "99999", "refused": "reason"})
    assert forged.status_code == 200
    assert 'class="notice"' not in forged.text
    assert 'role="alert"' not in forged.text
    assert "改为召回状态" not in forged.text
    queue = await browser.get("/console/flags", params={"changed": "5"})
    assert 'class="notice"' not in queue.text
    # a notice left for one page is not shown on another
    token = _TOKEN.search(queue.text).group(1)  # type: ignore[union-attr]
    await browser.post(
        "/console/flags/bulk",
        data={"flag_id": w["open_flags"][:1], "status": "investigating", "_csrf_token": token},
        follow_redirects=False,
    )
    assert 'class="notice"' not in (await browser.get(f"/console/lots/{GTIN}/L9")).text
    assert "已更新 1 条预警" in (await browser.get("/console/flags")).text


async def test_a_lot_with_exactly_fifteen_holders_names_every_one(
    admin: Api, browser: AsyncTestClient
) -> None:  # type: ignore[type-arg]
    """The page fetched the names of 14 holders while the chart drew 15 bars: the 15th
    showed as a bare id (a probe)."""
    from tests.helpers import cn20, world

    w = await world(admin)
    holders = [f"Q{i:02d}" for i in range(15)]
    for org in holders:
        await admin.ok(
            "POST",
            "/v1/orgs",
            {"id": org, "name": f"药房 {org}", "kind": "pharmacy", "region": "450103"},
            201,
        )
    codes = [cn20(w["unit"], 600 + i) for i in range(15)]
    await admin.events(
        event("commission", "M1", codes, 0, lot="L15", expiry="2030-12-31"),
        *(event("ship", "M1", [code], 1, to=org) for code, org in zip(codes, holders, strict=True)),
        *(event("receive", org, [code], 2) for code, org in zip(codes, holders, strict=True)),
    )
    await _sign_in(browser, w["inv"].key)
    page = await browser.get(f"/console/lots/{w['unit']}/L15")
    assert page.status_code == 200
    table = page.text[page.text.index('id="by-custodian"') :]
    for org in holders:
        assert f'<a href="/console/orgs/{org}"><bdi>药房 {org}</bdi></a>' in table, org


_ROW = re.compile(r'<tr><td>(.*?)</td>((?:<td class="num">\d+</td>)+)</tr>')


def _custody(page: str) -> tuple[list[int], list[tuple[str, list[int]]]]:
    """The lot page's custodian section: its bars' values, and its table's rows (the
    organisation's name, its figures)."""
    section = page[page.index('<section aria-labelledby="by-custodian">') :]
    section = section[: section.index("</section>")]
    values = [int(v) for v in re.findall(r'<text class="bar-value"[^>]*>(\d+)</text>', section)]
    rows = [
        (re.sub(r"<[^>]+>", "", name), [int(n) for n in re.findall(r"\d+", figures)])
        for name, figures in _ROW.findall(section)
    ]
    return values, rows


async def test_a_lots_holders_are_charted_by_the_packs_they_still_hold(
    admin: Api, browser: AsyncTestClient
) -> None:  # type: ignore[type-arg]
    """The lot's chart 按持有方 counted every code under its last holder: sold-out and
    destroyed packs read as stock on that organisation's shelf (a probe: a pharmacy whose 12 packs were
    all sold showed 12). The chart shows what each still holds; its table also what is
    on its way, sold out and destroyed, in both languages. The recall's confirmation no
    longer says dispenses are refused (they are recorded and flagged)."""
    from tests.helpers import lot_with_packs_sold_destroyed_and_on_their_way, world

    w = await world(admin)
    await lot_with_packs_sold_destroyed_and_on_their_way(w, "L2611")
    await _sign_in(browser, w["inv"].key)
    path = f"/console/lots/{w['unit']}/L2611"
    page = (await browser.get(path)).text
    values, rows = _custody(page)
    # still held, of which shipped on their way, on their way to it, sold out, destroyed
    expected = [
        ("D1 Ltd", [2, 1, 0, 0, 1]),
        ("M1 Ltd", [2, 0, 0, 0, 0]),
        ("P1 Ltd", [2, 0, 0, 1, 0]),  # three packs there, one of them sold out
        ("H1 Ltd", [0, 0, 1, 0, 0]),
    ]
    assert rows == expected
    assert values == [2, 2, 2, 0]
    for header in ("仍持有", "其中已发出在途", "发往此处在途", "已售出", "已销毁"):
        assert f'<th scope="col">{header}</th>' in page, header
    assert "按持有方：仍持有的包装" in page
    assert 'href="/console/orgs/H1"' in page
    assert "销售时间在召回时或之后的销售照常记录，但会预警" in page
    assert "销售与结算将被拒绝" not in page
    browser.cookies.set("console_lang", "en", path="/console")
    try:
        page = (await browser.get(path)).text
    finally:
        browser.cookies.delete("console_lang", path="/console")
    assert _custody(page) == (values, rows)
    headers = ("Still held", "Of which shipped, on their way", "On their way to it", "dispensed", "destroyed")
    for header in headers:
        assert f'<th scope="col">{header}</th>' in page, header
    assert "By custodian: packs still held" in page
    assert "dispenses dated from the recall on are still recorded, and flagged" in page
    assert "later dispenses and settlements are refused" not in page


async def test_a_lots_packs_with_no_custodian_and_on_their_way_nowhere_named_are_two_rows(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]
    db: Any,
) -> None:
    """The API says "unknown" both for packs with no custodian and for packs on their
    way to no named organisation (an NHSA transfer out may name none): the lot page
    showed them as one row "unknown", its figures two things added up. Each is a row of
    its own now, labelled in both languages."""
    from tests.helpers import cn20, lot_with_packs_sold_destroyed_and_on_their_way, world

    w = await world(admin)
    await lot_with_packs_sold_destroyed_and_on_their_way(w, "L2612")
    # as stored by what leaves them unnamed: one of M1's packs with no custodian, and
    # the pack D1 shipped to H1 with no destination
    await db.execute("UPDATE codes SET custodian = NULL WHERE code = $1", cn20(w["unit"], 701))
    await db.execute("UPDATE codes SET destination = NULL WHERE code = $1", cn20(w["unit"], 706))
    await _sign_in(browser, w["inv"].key)
    path = f"/console/lots/{w['unit']}/L2612"
    _, rows = _custody((await browser.get(path)).text)
    # still held, of which shipped on their way, on their way to it, sold out, destroyed
    assert rows == [
        ("D1 Ltd", [2, 1, 0, 0, 1]),
        ("P1 Ltd", [2, 0, 0, 1, 0]),
        ("（无持有方记录）", [1, 0, 0, 0, 0]),
        ("M1 Ltd", [1, 0, 0, 0, 0]),
        ("（发往未注明的机构）", [0, 0, 1, 0, 0]),
    ]
    browser.cookies.set("console_lang", "en", path="/console")
    try:
        _, rows = _custody((await browser.get(path)).text)
    finally:
        browser.cookies.delete("console_lang", path="/console")
    assert [name for name, _ in rows] == [
        "D1 Ltd",
        "P1 Ltd",
        "(no custodian recorded)",
        "M1 Ltd",
        "(shipped to an organisation not named)",
    ]


async def test_a_session_that_ended_says_so_and_signing_in_again_returns_to_the_page(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]
    server_urls: tuple[str, str],
) -> None:
    """After expiry or revocation a page or form went to /console/signin with no word
    (signin.expired was never used), and signing in again led to /console/codes rather
    than the page the investigator was on (a probe)."""

    w = await journey(admin)
    await _sign_in(browser, w["inv"].key)
    here = "/console/flags?kind=OUT_OF_REGION&status=open"
    assert (await browser.get(here)).status_code == 200
    # the session gone from Valkey (expired there) while the browser still holds its id
    await _expire_session(browser, server_urls[1])  # the session expires in Valkey
    away = await browser.get(here, follow_redirects=False)
    assert away.status_code == 303
    assert (
        away.headers["location"]
        == "/console/signin?next=%2Fconsole%2Fflags%3Fkind%3DOUT_OF_REGION%26status%3Dopen"
    )
    signin = await browser.get(away.headers["location"])
    assert "会话已结束，请重新登录。" in signin.text
    assert f'name="next" value="{here.replace("&", "&amp;")}"' in signin.text
    back = await browser.post(
        "/console/signin",
        data={"key": w["inv"].key, "next": here, "_csrf_token": _TOKEN.search(signin.text).group(1)},  # type: ignore[union-attr]
        follow_redirects=False,
    )
    assert back.headers["location"] == here
    assert "会话已结束" not in (await browser.get("/console/signin")).text  # said once
    # a key revoked while a form is open: the form's page, once signed in again
    out = await admin.ok("POST", "/v1/keys", {"role": "investigator"}, 201)
    await _sign_in(browser, out["secret"])
    flag_page = f"/console/flags/{w['open_flags'][0]}"
    token = _TOKEN.search((await browser.get(flag_page)).text).group(1)  # type: ignore[union-attr]
    await admin.ok("DELETE", f"/v1/keys/{out['key_id']}")
    lost = await browser.post(
        flag_page,
        data={"status": "investigating", "_csrf_token": token},
        headers={"referer": f"http://testserver.local{flag_page}"},
        follow_redirects=False,
    )
    assert lost.headers["location"] == f"/console/signin?next={flag_page.replace('/', '%2F')}"
    assert "会话已结束" in (await browser.get(lost.headers["location"])).text
    assert (await w["inv"].ok("GET", f"/v1/flags/{w['open_flags'][0]}"))["status"] == "open"


async def test_a_first_visit_to_a_page_returns_there_after_signing_in_and_nowhere_else(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    inv = await admin.key_for("investigator")
    away = await browser.get("/console/flags/pending", follow_redirects=False)
    assert away.headers["location"] == "/console/signin?next=%2Fconsole%2Fflags%2Fpending"
    signin = await browser.get(away.headers["location"])
    assert "会话已结束" not in signin.text  # there was none
    assert "请先登录" in signin.text
    token = _TOKEN.search(signin.text).group(1)  # type: ignore[union-attr]
    for elsewhere in ("https://evil.example/", "//evil.example/console/", "/console/signin?next=/x"):
        answer = await browser.post(
            "/console/signin",
            data={"key": inv.key, "next": elsewhere, "_csrf_token": token},
            follow_redirects=False,
        )
        assert answer.headers["location"] == "/console/codes", elsewhere
        token = _TOKEN.search((await browser.get("/console/signin")).text).group(1)  # type: ignore[union-attr]
