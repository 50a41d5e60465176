"""What an investigator reads on every page and on a flag's or organisation's: who is
signed in, when a pending flag opens, an organisation's kind in the reader's language
(a probe of the console found each missing)."""

from __future__ import annotations

import html
import re
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.config import Settings
from service.console.pages import when
from tests.helpers import Api, cn20, event, received, world
from tests.integration.test_console import _TOKEN, _sign_in, browser  # noqa: F401 - the fixture

pytestmark = pytest.mark.asyncio(loop_scope="session")

_WHO = re.compile(r'<span class="who">(.*?)</span>', re.S)


def _who(page: str) -> str:
    found = _WHO.search(page)
    assert found is not None, page
    return found.group(1)


async def test_the_header_names_the_signed_in_key_and_its_role_and_follows_another_sign_in(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """Two tabs share the browser's session: signing in with the admin's key in the
    second replaces the investigator's, and the first tab's next page names the admin.
    The key's id is shown, never its secret."""
    w = await world(admin)
    inv_id, admin_id = (api.key.split(".")[0] for api in (w["inv"], admin))
    await _sign_in(browser, w["inv"].key)
    first_tab = (await browser.get("/console/flags")).text
    assert _who(first_tab) == f"已登录：<bdi>{inv_id}</bdi>（调查员）"
    assert w["inv"].key.split(".")[1] not in first_tab
    await _sign_in(browser, admin.key)  # the second tab
    for path in ("/console/flags", "/console/codes", "/console/flags/pending", "/console/orgs/P1"):
        page = (await browser.get(path)).text
        assert _who(page) == f"已登录：<bdi>{admin_id}</bdi>（管理员）", path
        assert inv_id not in page
        assert admin.key.split(".")[1] not in page
    # an error page too, and in English
    browser.cookies.set("console_lang", "en", path="/console")
    missing = await browser.get("/console/flags/99999999")
    assert missing.status_code == 404
    assert _who(missing.text) == f"Signed in: <bdi>{admin_id}</bdi> (admin)"
    # signed out: no one is named
    token = _TOKEN.search(missing.text)
    assert token is not None
    out = await browser.post("/console/signout", data={"_csrf_token": token.group(1)}, follow_redirects=False)
    assert out.status_code == 303
    assert '<span class="who">' not in (await browser.get("/console/signin")).text


@pytest.mark.parametrize(
    ("org", "zh", "en"),
    [
        ("M1", "药品生产企业", "manufacturer"),
        ("D1", "药品批发企业", "distributor"),
        ("H1", "医疗机构", "hospital"),
        ("P1", "零售药店", "pharmacy"),
    ],
)
async def test_an_organisations_kind_is_shown_in_the_readers_language(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
    org: str,
    zh: str,
    en: str,
) -> None:
    """It read "pharmacy" in the Chinese console (a probe)."""
    w = await world(admin)
    await _sign_in(browser, w["inv"].key)
    kind = re.compile(r"<dt>(?:类型|Kind)</dt><dd>(.*?)</dd>")
    found = kind.search((await browser.get(f"/console/orgs/{org}")).text)
    assert found is not None
    assert found.group(1) == zh
    browser.cookies.set("console_lang", "en", path="/console")
    found = kind.search((await browser.get(f"/console/orgs/{org}")).text)
    assert found is not None
    assert found.group(1) == en


async def test_a_pending_flags_page_says_when_its_grace_window_ends(
    admin: Api, settings: Settings, db: Any
) -> None:
    """A pending flag's page did not say when it would open (a probe): it says so, from
    the service's grace window (here 6 hours, not the default 48) counted from when the
    flag became pending, and once that has passed, that the next check opens it."""
    app = create_app(replace(settings, flag_grace_hours=6, flag_promote_seconds=3600))
    async with AsyncTestClient(app=app) as c:
        w = await world(Api(c, admin.key))  # the same keys, asked of this service
        out = await w["keys"]["P1"].events(event("receive", "P1", [cn20("8123456", 737373)], 0))
        ((flag_id, kind),) = [(f["flag_id"], f["kind"]) for f in out["flags"]]
        assert kind == "UNKNOWN_CODE"
        assert (await w["inv"].ok("GET", f"/v1/flags/{flag_id}"))["status"] == "pending"
        await _sign_in(c, w["inv"].key)
        since = await db.fetchval("SELECT updated_at FROM flags WHERE flag_id = $1", int(flag_id))
        page = (await c.get(f"/console/flags/{flag_id}")).text
        grace = re.search(r'<dt>宽限期</dt><dd class="grace">(.*?)</dd>', page)
        assert grace is not None, page
        ends = when(since + timedelta(hours=6))
        assert grace.group(1).startswith(f"至 {ends}（自 {when(since)} 转为待定起 6 小时）")
        assert "每 3600 秒检查一次" in grace.group(1)
        c.cookies.set("console_lang", "en", path="/console")
        page = (await c.get(f"/console/flags/{flag_id}")).text
        assert f"until {ends} (6 h from {when(since)}, when it became pending)" in page
        # the window has passed (the promotion looks again within the hour)
        # the time computed here: Citus refuses a STABLE function of a column in an UPDATE
        became = await db.fetchval("SELECT updated_at FROM flags WHERE flag_id = $1", int(flag_id))
        await db.execute(
            "UPDATE flags SET updated_at = $2 WHERE flag_id = $1", int(flag_id), became - timedelta(hours=7)
        )
        page = (await c.get(f"/console/flags/{flag_id}")).text
        assert (
            f"ended at {when(since - timedelta(hours=1))} with nothing explaining it: it opens at the next "
            "check (every 3600 s)."
        ) in page
        # an open flag has no grace window
        await w["inv"].ok("PATCH", f"/v1/flags/{flag_id}", {"status": "open"})
        assert "Grace window" not in (await c.get(f"/console/flags/{flag_id}")).text


async def test_a_flags_page_is_titled_as_one_flag_and_says_when_it_has_no_history(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """The English flag page was titled "Flags 4: Diversion" (the queue's plural), and a
    new flag's history was a table of headings alone (a probe)."""
    from tests.integration.console_story import journey

    w = await journey(admin)
    flag_id = w["open_flags"][0]
    await _sign_in(browser, w["inv"].key)
    zh = (await browser.get(f"/console/flags/{flag_id}")).text
    assert re.search(rf"<h1>预警 {flag_id}: ", zh)
    assert '<p class="muted history-none">尚无处理记录。</p>' in zh
    assert '<table class="history">' not in zh
    browser.cookies.set("console_lang", "en", path="/console")
    en = (await browser.get(f"/console/flags/{flag_id}")).text
    assert re.search(rf"<title>Flag {flag_id} · ", en)
    assert re.search(rf"<h1>Flag {flag_id}: ", en)
    assert "No history yet." in en
    assert "<h1>Flag 99999</h1>" in (await browser.get("/console/flags/99999")).text
    # once something happened, its history
    await w["inv"].ok("PATCH", f"/v1/flags/{flag_id}", {"note": "called"})
    en = (await browser.get(f"/console/flags/{flag_id}")).text
    assert '<table class="history">' in en
    assert "No history yet." not in en


async def test_a_flags_evidence_is_marked_as_the_english_it_is_written_in(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """A flag's evidence is stored as the rules write it, in English; on the Chinese
    pages it was marked as Chinese, so a screen reader read it with a Chinese voice (a
    probe). It is marked lang="en" wherever it is shown: the queue, the flag, the code."""
    from tests.integration.console_story import journey

    w = await journey(admin)
    flag_id = w["open_flags"][0]
    flag = await w["inv"].ok("GET", f"/v1/flags/{flag_id}")
    await _sign_in(browser, w["inv"].key)
    marked = re.compile(r'<bdi lang="en">([^<]*)</bdi>')
    for path, params in (
        (f"/console/flags/{flag_id}", {}),
        ("/console/flags", {"kind": flag["kind"]}),
        ("/console/codes", {"q": flag["code"]}),
    ):
        page = (await browser.get(path, params=params)).text
        assert '<html lang="zh-CN">' in page or '<html lang="zh' in page, path
        shown = [html.unescape(m) for m in marked.findall(page)]
        assert flag["detail"] in shown, (path, shown)


async def test_a_duplicates_page_links_the_earlier_sale_to_its_row_on_the_codes_page(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """A flag's page showed its refs as raw JSON, and its event ids matched nothing on
    the code's page, which showed no event id: with two sales listed, the investigator
    could not tell which one a DUPLICATE names as the earlier (a probe). Each event's
    row carries an anchor and its id's first 8 characters (the whole in a title) and its
    document no.; the flag's page links each event it names to that row, its other
    refs listed under labels in the reader's language."""
    w = await world(admin)
    [code] = await received(w, "P1", [4242])
    p1 = w["keys"]["P1"]
    first = event("dispense", "P1", [code], 10, ref="RX-0001")
    await p1.events(first)
    again = event("dispense", "P1", [code], 20, ref="RX-0002")
    [flag] = (await p1.events(again))["flags"]
    assert flag["kind"] == "DUPLICATE"
    await _sign_in(browser, w["inv"].key)
    page = (await browser.get(f"/console/flags/{flag['flag_id']}")).text
    refs = re.search(r'<dl class="refs">(.*?)</dl>', page, re.S)
    assert refs is not None, page
    shown = dict(re.findall(r"<dt>(.*?)</dt>\s*<dd>(.*?)</dd>", refs.group(1), re.S))
    for named, listed in (("事件", again), ("此前售出的事件", first)):
        link = f'href="/console/codes?q={code}#event-{listed["event_id"]}"'
        assert link in shown[named], shown
        assert f">{html.escape(listed['event_id'][:8])}<" in shown[named].replace("<bdi>", "").replace(
            "</bdi>", ""
        )
    assert "earlier_events" not in page  # no raw JSON
    code_page = (await browser.get("/console/codes", params={"q": code})).text
    anchors = re.findall(r'<tr[^>]* id="event-([^"]+)">(.*?)</tr>', code_page, re.S)
    assert len(anchors) == len({a for a, _ in anchors})  # an id once on the page
    rows = dict(anchors)
    for listed, ref in ((first, "RX-0001"), (again, "RX-0002")):
        row = rows[listed["event_id"]]
        assert f'<abbr title="{listed["event_id"]}"><bdi>{listed["event_id"][:8]}</bdi></abbr>' in row
        assert f"单据号 <bdi>{ref}</bdi>" in row
    browser.cookies.set("console_lang", "en", path="/console")
    page = (await browser.get(f"/console/flags/{flag['flag_id']}")).text
    assert "<dt>Earlier sales (events)</dt>" in page
    code_page = (await browser.get("/console/codes", params={"q": code})).text
    assert "document no. <bdi>RX-0001</bdi>" in code_page


async def test_a_code_nothing_is_known_of_links_the_flags_that_name_it(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """A settlement of a code never commissioned raises UNKNOWN_CODE on it, yet the
    code's page said only that nothing was known of it, with no way to its flag (a
    walkthrough). It says flags name it, and links them."""
    from tests.helpers import pack_claim

    w = await world(admin)
    unknown = cn20(w["unit"], 777)
    refused = await w["insurer"].ok("POST", "/v1/settlements", pack_claim("S777", unknown, 0))
    assert refused["decision"] == "rejected"
    (flag,) = (await w["inv"].ok("GET", f"/v1/flags?code={unknown}&status=pending"))["items"]
    await _sign_in(browser, w["inv"].key)
    page = (await browser.get("/console/codes", params={"q": unknown})).text
    assert "系统中没有此追溯码的任何记录" in page
    said = re.search(r'<p class="unknown-flags">(.*?)</p>', page, re.S)
    assert said is not None, page
    links = re.findall(r'<a href="([^"]+)">([^<]+)</a>', said.group(1))
    assert [text for _, text in links] == ["1 条待定预警"], links
    listed = (await browser.get(html.unescape(links[0][0]))).text
    assert f'name="flag_id" value="{flag["flag_id"]}"' in listed
    # a code no flag names says nothing more
    other = (await browser.get("/console/codes", params={"q": cn20(w["unit"], 778)})).text
    assert "系统中没有此追溯码的任何记录" in other
    assert "unknown-flags" not in other


async def test_an_expired_pack_and_its_lot_say_they_are_expired(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """Neither a pack's page nor its lot's marked it expired, and the lot's page did not
    show its expiry at all (a walkthrough): both mark it as verify judges it, and the
    lot's answer lists the expiry dates its codes carry (⚠ our addition)."""
    w = await world(admin)
    old, fresh = cn20(w["unit"], 880), cn20(w["unit"], 881)
    await w["keys"]["M1"].events(
        event("commission", "M1", [old], 0, lot="LX1", expiry="2025-01-31"),
        event("commission", "M1", [fresh], 0, lot="LX2", expiry="2099-12-31"),
    )
    assert (await w["inv"].ok("GET", f"/v1/lots/{w['unit']}/LX1"))["expiries"] == ["2025-01-31"]
    await _sign_in(browser, w["inv"].key)
    for code, lot, expiry, is_expired in (
        (old, "LX1", "2025-01-31", True),
        (fresh, "LX2", "2099-12-31", False),
    ):
        page = (await browser.get("/console/codes", params={"q": code})).text
        shown = re.search(r"<dt>有效期至</dt><dd>(.*?)</dd>", page, re.S)
        assert shown is not None, page
        assert expiry in shown.group(1), shown.group(1)
        assert ("已过期" in shown.group(1)) is is_expired, shown.group(1)
        lot_page = (await browser.get(f"/console/lots/{w['unit']}/{lot}")).text
        shown = re.search(r"<dt>有效期至</dt><dd>(.*?)</dd>", lot_page, re.S)
        assert shown is not None, lot_page
        assert expiry in shown.group(1), shown.group(1)
        assert ("已过期" in shown.group(1)) is is_expired, shown.group(1)


async def test_an_organisation_is_found_by_part_of_its_name_and_from_a_refused_filter(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """An organisation was reachable only through a code or a flag, and the queue's
    filter took only its exact id: typing its name gave "invalid filter" and no way on
    (a walkthrough). /console/orgs finds it by a part of its name or id, any case, and a
    refused organisation filter links there with what was typed."""
    w = await world(admin)
    await admin.ok("PATCH", "/v1/orgs/P1", {"fixmedins_code": "P45010300077"})
    await _sign_in(browser, w["inv"].key)
    for typed in ("p1 ltd", "P1", "P45010300077"):
        page = (await browser.get("/console/orgs", params={"q": typed})).text
        listed = re.findall(r'<td><a href="(/console/orgs/[^"]+)">', page)
        assert "/console/orgs/P1" in listed, (typed, listed)
    ltd = (await browser.get("/console/orgs", params={"q": "ltd"})).text
    assert len(re.findall(r'<td><a href="/console/orgs/', ltd)) == 6  # the world's six
    assert "没有符合的机构" in (await browser.get("/console/orgs", params={"q": "nobody"})).text
    assert 'href="/console/orgs"' in ltd  # the menu's entry
    queue = await browser.get("/console/flags", params={"org": "P1 Ltd"})
    assert queue.status_code == 400
    found = re.search(r'<a href="(/console/orgs\?q=[^"]+)">', queue.text)
    assert found is not None, queue.text
    assert html.unescape(found.group(1)) == "/console/orgs?q=P1+Ltd"


async def test_a_flag_history_and_the_header_name_who_holds_the_key(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """Who moved a flag read as a bare key id (k_9a20…), so "who has this flag" had no
    answer (a walkthrough). A key made with a name (⚠ our addition) is named, with its
    id beside it, in the flag's history, in a stale change's notice and in the header."""
    w = await world(admin)
    code = cn20(w["unit"], 890)
    await w["keys"]["M1"].events(event("commission", "M1", [code], 0, lot="L1", expiry="2030-12-31"))
    await w["keys"]["P1"].events(event("receive", "P1", [code], 1))  # never shipped to it
    (flag,) = (await w["inv"].ok("GET", f"/v1/flags?code={code}&status=pending"))["items"]
    made = await admin.ok("POST", "/v1/keys", {"role": "investigator", "name": "王<调查员>"}, 201)
    await _sign_in(browser, made["secret"])
    page = (await browser.get(f"/console/flags/{flag['flag_id']}")).text
    assert f'<span class="who">已登录：<bdi>王&lt;调查员&gt;</bdi> · <bdi>{made["key_id"]}</bdi>' in page, (
        _who(page)
    )
    token = _TOKEN.search(page).group(1)  # type: ignore[union-attr]
    moved = await browser.post(
        f"/console/flags/{flag['flag_id']}",
        data={"status": "investigating", "note": "called them", "_csrf_token": token},
        follow_redirects=True,
    )
    row = re.search(r"<td><bdi>called them</bdi></td><td>(.*?)</td></tr>", moved.text, re.S)
    assert row is not None, moved.text
    assert (
        row.group(1)
        == f'<bdi>王&lt;调查员&gt;</bdi> <span class="muted">(<bdi>{made["key_id"]}</bdi>)</span>'
    )
