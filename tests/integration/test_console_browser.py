"""The console in a real browser: Debian's Chromium driven by Playwright, against the
service started as a child process on the tests' own database and Valkey.

Skipped, saying how to get it, where ``/usr/bin/chromium`` is missing (``.ci/run``
installs it from the distribution's packages). Playwright's own browser downloads are
never used: there may be no network."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from benchkit.localrun import free_port, start_service, stop_service
from tests.helpers import Api
from tests.integration.console_story import CANONICAL, EVIL, RAW_SCAN, journey

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SHOTS = Path(os.environ.get("TRACE_SCREENSHOTS", "/tmp"))  # screenshots for people to look at

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="browser tests need Debian's Chromium: apt-get install chromium (.ci/run does this)",
    ),
]


@pytest.fixture
def service_url(server_urls: tuple[str, str], db_url: str, tmp_path: Path) -> Iterator[str]:
    """``tracecode serve`` on the tests' servers (a real port, as a person would use it)."""
    port = free_port()
    env = {
        **os.environ,
        "TRACE_DATABASE_URL": db_url,
        "TRACE_REDIS_URL": server_urls[1],
        "TRACE_PSN_SECRET": "test-secret-of-the-browser-tests",
        "TRACE_LOG_LEVEL": "warning",
    }
    proc = start_service(env, port, tmp_path / "service.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_service(proc)


@pytest_asyncio.fixture(loop_scope="session")
async def page(service_url: str) -> AsyncIterator[object]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            context = await browser.new_context(base_url=service_url, viewport={"width": 1280, "height": 900})
            yield await context.new_page()
        finally:
            await browser.close()


async def _sign_in(page: Any, key: str) -> None:
    """Sign in on the sign-in page, in Chinese (the default), and land on code search."""
    from playwright.async_api import expect

    await page.goto("/console/signin")
    await page.get_by_label("API 密钥").fill(key)
    await page.get_by_role("button", name="登录").click()
    await expect(page).to_have_url("/console/codes")


async def test_sign_in_search_a_raw_scan_and_see_its_timeline_and_flags(admin: Api, page: object) -> None:
    from playwright.async_api import Page, expect

    assert isinstance(page, Page)
    w = await journey(admin)
    blocked: list[str] = []  # anything the Content-Security-Policy refused
    page.on(
        "console", lambda msg: blocked.append(msg.text) if "Content Security Policy" in msg.text else None
    )

    await page.goto("/console")
    await expect(page).to_have_url("/console/signin?next=%2Fconsole%2Fcodes")
    await page.get_by_label("API 密钥").fill(w["inv"].key)
    await page.get_by_role("button", name="登录").click()
    await expect(page).to_have_url("/console/codes")

    await page.get_by_label("追溯码").fill(RAW_SCAN)  # GS separator and ]d2, as a scanner types
    await page.get_by_role("button", name="查询").click()
    await expect(page.get_by_role("heading", name=CANONICAL)).to_be_visible()
    timeline = page.locator("svg.timeline")
    await expect(timeline).to_be_visible()
    await expect(timeline.locator("g.mark")).to_have_count(9)
    await expect(timeline.locator("g.mark.via")).to_have_count(2)  # the case's ship and receive
    await expect(timeline.locator("g.mark.implicit")).to_have_count(1)
    await expect(page.locator("table.flags").get_by_text("流向异常")).to_be_visible()
    await expect(page.get_by_text(EVIL).first).to_be_visible()  # markup shown as text
    await page.screenshot(path=str(SHOTS / "console-code.png"), full_page=True)

    await page.locator("table.flags a[href^='/console/flags/']").last.click()
    await expect(page.get_by_role("heading", level=2, name="变更状态")).to_be_visible()
    await page.screenshot(path=str(SHOTS / "console-flag.png"), full_page=True)
    assert blocked == []


async def test_follow_a_lot_recall_it_and_judge_an_organisation(admin: Api, page: object) -> None:
    from playwright.async_api import Page, expect

    assert isinstance(page, Page)
    w = await journey(admin)
    blocked: list[str] = []
    page.on(
        "console", lambda msg: blocked.append(msg.text) if "Content Security Policy" in msg.text else None
    )
    await page.goto("/console/signin")
    await page.get_by_label("API 密钥").fill(w["inv"].key)
    await page.get_by_role("button", name="登录").click()
    await page.goto("/console/codes?q=" + CANONICAL)

    await page.get_by_role("link", name="查看批次").click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("L9")
    by_state = page.locator("section", has=page.get_by_role("heading", name="按状态"))
    await expect(by_state.locator("svg.bars rect.bar-received")).to_have_count(1)
    await page.get_by_label("召回原因").fill("污染")
    await page.get_by_role("button", name="召回", exact=True).click()  # not confirmed yet
    await expect(by_state.locator("svg.bars rect.bar-received")).to_have_count(1)  # nothing recalled
    await page.get_by_label("我确认召回").check()
    await page.get_by_role("button", name="召回", exact=True).click()
    await expect(page.get_by_role("status")).to_contain_text("1 个追溯码改为召回状态")
    await expect(by_state.locator("svg.bars rect.bar-recalled")).to_have_count(1)
    await expect(by_state.locator("table")).to_contain_text("已召回")
    where = page.locator("section", has=page.get_by_role("heading", name="召回的追溯码在何处"))
    await expect(where.locator("svg.bars rect.bar-received")).to_have_count(1)  # still on the shelf
    await page.screenshot(path=str(SHOTS / "console-lot.png"), full_page=True)

    await (
        page.locator("section", has=page.get_by_role("heading", name="按持有方")).get_by_role("link").click()
    )
    await expect(page).to_have_url("/console/orgs/X1")
    await expect(page.get_by_role("heading", level=1)).to_contain_text(EVIL)  # markup shown as text
    await expect(page.locator("svg.daily")).to_be_visible()
    await expect(page.get_by_role("heading", name="待处理预警")).to_be_visible()
    await page.screenshot(path=str(SHOTS / "console-org.png"), full_page=True)
    assert blocked == []


async def test_a_new_flag_appears_in_the_queue_without_reloading(admin: Api, page: object) -> None:
    from playwright.async_api import Page, expect

    from tests.helpers import cn20, event, world

    assert isinstance(page, Page)
    w = await world(admin)
    inv = await admin.key_for("investigator")
    await page.goto("/console/signin")
    await page.get_by_label("API 密钥").fill(inv.key)
    await page.get_by_role("button", name="登录").click()
    await page.goto("/console/flags/pending")
    live = page.locator("section.live")
    await expect(live).to_be_hidden()  # nothing new yet
    await page.wait_for_timeout(500)  # the page's stream is open
    # a pharmacy receives a code nobody commissioned: an UNKNOWN_CODE flag, pending (a late
    # upload may explain it), on the feed
    code = cn20("8123456", 424242)
    out = await w["keys"]["P1"].events(event("receive", "P1", [code], 0))
    assert [f["kind"] for f in out["flags"]] == ["UNKNOWN_CODE"]
    await expect(live).to_be_visible(timeout=15_000)
    await expect(live.locator("li").first).to_contain_text(code)
    await expect(live.locator("li a").first).to_have_attribute(
        "href", f"/console/flags/{out['flags'][0]['flag_id']}"
    )
    # its organisation as the table shows it: the name linked to its page, then the id
    # (it showed the id alone: a probe)
    await expect(live.locator("li").first).to_contain_text("P1 Ltd (P1)")
    await expect(live.locator("li").first.locator('a[href="/console/orgs/P1"]')).to_have_text("P1 Ltd")
    await page.screenshot(path=str(SHOTS / "console-flags-live.png"), full_page=True)
    # the pending flag's page says when its grace window ends
    await live.locator("li a[href^='/console/flags/']").first.click()
    await expect(page.locator("dd.grace")).to_contain_text("转为「待处理」")
    await page.screenshot(path=str(SHOTS / "console-flag-pending.png"), full_page=True)


async def test_the_live_list_shows_only_the_flags_the_page_would_list(admin: Api, page: object) -> None:
    """On /console/flags?kind=EXPIRED a new pending DIVERSION appeared live (a probe): the
    stream ignored the page's filters and that the queue lists no pending flag."""
    from playwright.async_api import Page, expect

    from tests.helpers import cn20, event, world

    assert isinstance(page, Page)
    w = await world(admin)
    await page.goto("/console/signin")
    await page.get_by_label("API 密钥").fill(w["inv"].key)
    await page.get_by_role("button", name="登录").click()
    await page.goto("/console/flags?kind=EXPIRED")
    live = page.locator("section.live")
    await page.wait_for_timeout(500)  # the page's stream is open
    m1, p1 = w["keys"]["M1"], w["keys"]["P1"]
    held, stale = cn20(w["unit"], 1), cn20(w["unit"], 2)
    await m1.events(
        event("commission", "M1", [held], 0, lot="L1", expiry="2030-12-31"),
        event("commission", "M1", [stale], 0, lot="OLD", expiry="2020-01-31"),
        event("ship", "M1", [held, stale], 1, to="P1"),
    )
    await p1.events(event("receive", "P1", [held, stale], 2))
    # first what the page does not list: a pending DIVERSION (P9 sells P1's pack), an
    # open OUT_OF_REGION; then an EXPIRED flag, which it does
    out = await w["keys"]["P9"].events(event("dispense", "P9", [held], 3))
    assert {f["kind"] for f in out["flags"]} == {"DIVERSION", "OUT_OF_REGION"}
    expired = await p1.events(event("dispense", "P1", [stale], 4))
    (flag,) = [f for f in expired["flags"] if f["kind"] == "EXPIRED"]
    await expect(live.locator("li")).to_have_count(1, timeout=15_000)
    flag_link = live.locator("li a[href^='/console/flags/']")  # the organisation has a link too
    await expect(flag_link).to_have_attribute("href", f"/console/flags/{flag['flag_id']}")
    await expect(live.locator("li")).to_contain_text(stale)


async def test_work_a_flag_with_a_note_then_bulk_dismiss_at_tablet_width(admin: Api, page: object) -> None:
    from playwright.async_api import Page, expect

    assert isinstance(page, Page)
    w = await journey(admin)
    await page.set_viewport_size({"width": 768, "height": 1024})  # a tablet held upright
    await page.goto("/console/signin")
    await page.get_by_label("API 密钥").fill(w["inv"].key)
    await page.keyboard.press("Enter")  # the keyboard is enough
    await expect(page).to_have_url("/console/codes")
    flag_id = w["open_flags"][0]
    await page.goto(f"/console/flags/{flag_id}")
    await page.get_by_label("状态").select_option("investigating")
    await page.get_by_label("备注").fill("called <the> pharmacy")
    await page.get_by_role("button", name="保存").click()
    history = page.locator("table.history")
    await expect(history).to_contain_text("called <the> pharmacy")  # as text
    await expect(history).to_contain_text("调查中")
    # nothing wider than the screen
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await page.screenshot(path=str(SHOTS / "console-flag-tablet.png"), full_page=True)

    await page.goto("/console/flags?status=investigating")
    await page.get_by_label("选择", exact=True).check()  # select all
    await page.locator("#bulk-status").select_option("dismissed")
    await page.locator("#bulk-note").fill("bulk")
    await page.get_by_role("button", name="保存").click()
    await expect(page.get_by_role("status")).to_contain_text("已更新 1 条预警")
    assert (await w["inv"].ok("GET", f"/v1/flags/{flag_id}"))["status"] == "dismissed"
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await page.screenshot(path=str(SHOTS / "console-flags-tablet.png"), full_page=True)


async def test_a_bulk_dismissal_of_several_flags_is_confirmed_first(admin: Api, page: object) -> None:
    """One click dismissed every ticked flag (a probe). The button now opens a page that
    lists them, with a way back that changes nothing; confirming changes them. The
    header names the key signed in."""
    from playwright.async_api import Page, expect

    from tests.helpers import world
    from tests.integration.test_console_stale import _resold

    assert isinstance(page, Page)
    w = await world(admin)
    ids = await _resold(w, range(71, 74))
    blocked: list[str] = []  # anything the Content-Security-Policy refused
    page.on(
        "console", lambda msg: blocked.append(msg.text) if "Content Security Policy" in msg.text else None
    )
    await _sign_in(page, w["inv"].key)
    await expect(page.locator("header .who")).to_have_text(f"已登录：{w['inv'].key.split('.')[0]}（调查员）")
    queue = "/console/flags?kind=DUPLICATE&status=open"
    await page.goto(queue)
    await page.get_by_label("选择", exact=True).check()  # select all
    await page.locator("#bulk-status").select_option("dismissed")
    await page.locator("#bulk-note").fill("till error")
    await page.get_by_role("button", name="保存").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("确认批量变更")
    await expect(page.locator("p.confirm-what")).to_have_text("将把以下 3 条预警改为「已排除」：")
    await expect(page.locator("ul.confirm-flags li a")).to_have_text(sorted(ids, key=int, reverse=True))
    await page.screenshot(path=str(SHOTS / "console-flags-confirm.png"), full_page=True)
    await page.get_by_role("link", name="返回，不作任何更改").click()
    await expect(page).to_have_url(queue)
    for flag_id in ids:
        assert (await w["inv"].ok("GET", f"/v1/flags/{flag_id}"))["status"] == "open"

    await page.get_by_label("选择", exact=True).check()
    await page.locator("#bulk-status").select_option("dismissed")
    await page.get_by_role("button", name="保存").click()
    await page.get_by_role("button", name="确认：将 3 条预警改为「已排除」").click()
    await expect(page).to_have_url(queue)
    await expect(page.get_by_role("status")).to_contain_text("已更新 3 条预警")
    for flag_id in ids:
        assert (await w["inv"].ok("GET", f"/v1/flags/{flag_id}"))["status"] == "dismissed"
    assert blocked == []


async def test_an_org_key_and_a_form_without_its_token_are_refused(admin: Api, page: object) -> None:
    from playwright.async_api import Page, expect

    assert isinstance(page, Page)
    w = await journey(admin)
    await page.goto("/console/signin")
    await page.get_by_label("API 密钥").fill(w["keys"]["P1"].key)  # a pharmacy's key
    await page.get_by_role("button", name="登录").click()
    await expect(page.get_by_role("alert")).to_be_visible()
    await expect(page).to_have_url("/console/signin")
    await page.screenshot(path=str(SHOTS / "console-signin-refused.png"), full_page=True)

    await page.get_by_label("API 密钥").fill(w["inv"].key)
    await page.get_by_role("button", name="登录").click()
    await page.goto(f"/console/flags/{w['open_flags'][0]}")
    # the form posted without its CSRF token (as a page of another site would): refused
    await page.locator('input[name="_csrf_token"]').first.evaluate("input => input.remove()")
    await page.locator("form.change").evaluate(
        "form => form.querySelector('input[name=_csrf_token]')?.remove()"
    )
    await page.get_by_label("备注").fill("forged")
    await page.get_by_role("button", name="保存").click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("出错了 (403)")
    assert (await w["inv"].ok("GET", f"/v1/flags/{w['open_flags'][0]}"))["status"] == "open"


# the left edges of the glyphs of the first ``needle`` in the element's text, in the
# text's order (HTML or SVG text): increasing when it reads left to right as stored
_GLYPH_LEFTS = """([element, needle]) => {
  const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
  const nodes = [];
  let text = "";
  while (walker.nextNode()) {
    nodes.push([walker.currentNode, text.length]);
    text += walker.currentNode.data;
  }
  const at = text.indexOf(needle);
  if (at < 0) return null;
  const lefts = [];
  for (let i = at; i < at + needle.length; i++) {
    const [node, start] = nodes.filter(([, s]) => s <= i).pop();
    const range = document.createRange();
    range.setStart(node, i - start);
    range.setEnd(node, i - start + 1);
    lefts.push(range.getBoundingClientRect().left);
  }
  return lefts;
}"""


async def test_an_open_override_in_a_name_reorders_nothing_after_it(admin: Api, page: object) -> None:
    """The probe's pharmacy named "Honest Pharmacy" and an unclosed U+202E: its id after
    the name read "(3P)" in the custodian line, the timeline's lane and the events table."""
    from playwright.async_api import Page

    from tests.integration.test_console_shown import pharmacy_named_with_an_override

    assert isinstance(page, Page)
    w = await pharmacy_named_with_an_override(admin)
    await _sign_in(page, w["inv"].key)
    await page.goto("/console/codes?q=" + w["code"])
    places = {
        "custodian": page.locator("dl.facts dt:text-is('持有方') + dd"),
        "lane": page.locator("svg.timeline text.lane-label").last,
        "events": page.locator("table.events tbody tr").last,
    }
    for where, element in places.items():
        lefts = await page.evaluate(_GLYPH_LEFTS, [await element.element_handle(), "(P3)"])
        assert lefts is not None, where
        assert lefts == sorted(set(lefts)), (where, lefts)  # left to right, as stored
    await page.screenshot(path=str(SHOTS / "console-isolated-name.png"), full_page=True)


async def test_organisations_named_dot_and_dot_dot_open_from_their_links(admin: Api, page: object) -> None:
    """The registry takes "." and ".." as organisation ids; their links
    (/console/orgs/..) opened /console/ instead, as a browser resolves such a path
    segment, even percent-encoded (a probe)."""
    from playwright.async_api import Page, expect

    from tests.helpers import cn20, event, world

    assert isinstance(page, Page)
    w = await world(admin)
    codes = {}
    for serial, org in enumerate((".", ".."), start=1):
        await admin.ok(
            "POST",
            "/v1/orgs",
            {"id": org, "name": f"Dots {org}", "kind": "pharmacy", "region": "450103"},
            201,
        )
        codes[org] = cn20(w["unit"], serial)
        await admin.events(
            event("commission", "M1", [codes[org]], 0, lot="L1", expiry="2030-12-31"),
            event("ship", "M1", [codes[org]], 1, to=org),
            event("receive", org, [codes[org]], 2),
        )
    await _sign_in(page, w["inv"].key)
    for org, code in codes.items():
        await page.goto("/console/codes?q=" + code)
        await page.locator("dl.facts dt:text-is('持有方') + dd a").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text(f"Dots {org} ({org})")


async def test_lots_a_path_cannot_hold_open_from_their_codes_and_are_recalled(
    admin: Api, page: object
) -> None:
    """GS1 lets a lot hold "/" and "%" and be "..": their links went to a 404, or the
    browser resolved ".." to another page, so their recall could not be reached (a probe)."""
    from playwright.async_api import Page, expect

    from tests.helpers import cn20, event, world

    assert isinstance(page, Page)
    w = await world(admin)
    codes = {lot: cn20(w["unit"], serial) for serial, lot in enumerate(("A/B%2.", ".."), start=1)}
    for lot, code in codes.items():
        await admin.events(
            event("commission", "M1", [code], 0, lot=lot, expiry="2030-12-31"),
            event("ship", "M1", [code], 1, to="P1"),
            event("receive", "P1", [code], 2),
        )
    await _sign_in(page, w["inv"].key)
    for lot, code in codes.items():
        await page.goto("/console/codes?q=" + code)
        await page.get_by_role("link", name="查看批次").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text(f"批次 {lot}")
        by_state = page.locator("section", has=page.get_by_role("heading", name="按状态"))
        await expect(by_state.locator("svg.bars rect.bar-received")).to_have_count(1)
        await page.get_by_label("召回原因").fill(f"污染 {lot}")
        await page.get_by_label("我确认召回").check()
        await page.get_by_role("button", name="召回", exact=True).click()
        await expect(page.get_by_role("status")).to_contain_text("1 个追溯码改为召回状态")
        await expect(page.get_by_role("heading", level=1)).to_have_text(f"批次 {lot}")
        await expect(by_state.locator("svg.bars rect.bar-recalled")).to_have_count(1)
        await expect(page.locator("dl.facts")).to_contain_text(f"污染 {lot}")
    await page.screenshot(path=str(SHOTS / "console-lot-dots.png"), full_page=True)


async def test_the_queue_says_when_its_live_updates_stop(admin: Api, page: object) -> None:
    """The live list stopped without a word when the session ended (a probe): the page
    kept looking live. The service ends the stream saying the session has ended (here at
    the first flag after the key's revocation), and the page says so, with a link to sign
    in again that comes back here; a stream the browser gives up on (refused) is said too."""
    from playwright.async_api import Page, expect

    from tests.helpers import cn20, event, world

    assert isinstance(page, Page)
    w = await world(admin)
    made = await admin.ok("POST", "/v1/keys", {"role": "investigator"}, 201)
    await _sign_in(page, made["secret"])
    await page.goto("/console/flags/pending?kind=UNKNOWN_CODE")
    ended = page.locator("p.live-ended")
    await expect(ended).to_be_hidden()
    await page.wait_for_timeout(500)  # the page's stream is open
    await admin.ok("DELETE", f"/v1/keys/{made['key_id']}")
    # a flag: the stream checks the key before it goes out (else at its 15 s check)
    await w["keys"]["P1"].events(event("receive", "P1", [cn20("8123456", 515151)], 0))
    await expect(ended).to_be_visible(timeout=20_000)
    await expect(ended).to_contain_text("实时更新已停止：会话已结束")
    await expect(ended).to_have_attribute("role", "alert")
    await expect(page.locator("p.live-stopped")).to_be_hidden()
    await page.screenshot(path=str(SHOTS / "console-live-ended.png"), full_page=True)
    await ended.get_by_role("link").click()
    await expect(page).to_have_url("/console/signin?next=%2Fconsole%2Fflags%2Fpending%3Fkind%3DUNKNOWN_CODE")
    await page.get_by_label("API 密钥").fill(w["inv"].key)
    await page.get_by_role("button", name="登录").click()
    await expect(page).to_have_url("/console/flags/pending?kind=UNKNOWN_CODE")
    await expect(page.locator("table.flags")).to_contain_text(cn20("8123456", 515151))

    # in English, a stream the browser gives up on: said as stopped
    await page.get_by_role("button", name="English").click()
    await page.route("**/console/flags/pending/live*", lambda route: route.fulfill(status=503, body="away"))
    await page.reload()
    stopped = page.locator("p.live-stopped")
    await expect(stopped).to_be_visible(timeout=20_000)
    await expect(stopped).to_contain_text("Live updates stopped")
    await expect(page.locator("p.live-ended")).to_be_hidden()


async def test_a_colleagues_change_marks_its_row_and_is_listed_as_a_change(admin: Api, page: object) -> None:
    """A probe: a flag a colleague confirmed appeared in the live list as if new, while
    its row below still showed it open, ready to tick. Now its row shows its status now,
    who changed it, and cannot be ticked; a flag the page now lists because of a change
    (back to open) is listed as a change, and a new flag as new."""
    from playwright.async_api import Page, expect

    from tests.helpers import cn20, event, world

    assert isinstance(page, Page)
    w = await world(admin)
    m1, p1 = w["keys"]["M1"], w["keys"]["P1"]
    codes = [cn20(w["unit"], s) for s in (61, 62, 63)]
    await m1.events(
        event("commission", "M1", codes, 0, lot="L1", expiry="2030-12-31"),
        event("ship", "M1", codes, 1, to="P1"),
    )
    await p1.events(event("receive", "P1", codes, 2), event("dispense", "P1", codes[:2], 3))
    resold = await p1.events(event("dispense", "P1", codes[:2], 4))
    row_id, back_id = (f["flag_id"] for f in resold["flags"])
    colleague = await admin.key_for("investigator")
    await colleague.ok("PATCH", f"/v1/flags/{back_id}", {"status": "investigating"})
    await _sign_in(page, w["inv"].key)
    await page.goto("/console/flags?kind=DUPLICATE&status=open")
    row = page.locator(f'table.flags tr[data-flag="{row_id}"]')
    await expect(row).to_contain_text("待处理")
    await expect(page.locator(f'table.flags tr[data-flag="{back_id}"]')).to_have_count(0)
    await row.locator('input[name="flag_id"]').check()
    await page.wait_for_timeout(500)  # the page's stream is open

    await colleague.ok("PATCH", f"/v1/flags/{row_id}", {"status": "confirmed", "note": "resold"})
    await expect(row.locator("td.status-cell")).to_contain_text("已确认", timeout=15_000)
    await expect(row.locator("td.status-cell")).to_contain_text(colleague.key.split(".")[0])
    await expect(row.locator("td.status-cell")).to_contain_text("打开此页后已被更改")
    await expect(row.locator('input[name="flag_id"]')).to_be_disabled()
    await expect(row.locator('input[name="flag_id"]')).not_to_be_checked()
    live = page.locator("section.live")
    await expect(live).to_be_hidden()  # not listed as if new

    await colleague.ok("PATCH", f"/v1/flags/{back_id}", {"status": "open", "note": "not yet"})
    changed = live.locator("li", has=page.locator(f'a[href="/console/flags/{back_id}"]'))
    await expect(changed).to_contain_text("状态变更", timeout=15_000)
    await expect(changed).to_contain_text(colleague.key.split(".")[0])
    await p1.events(event("dispense", "P1", [codes[0]], 5))  # sold once more: a new DUPLICATE
    await expect(live.locator("li").first).to_contain_text("新预警", timeout=15_000)
    await expect(live.locator("li")).to_have_count(2)
    await expect(live.locator("h2")).to_have_text("新到与变更的预警（实时）")
    await page.screenshot(path=str(SHOTS / "console-flags-live-changed.png"), full_page=True)

    # "select all" leaves the changed row out
    await page.get_by_label("选择", exact=True).check()
    await expect(row.locator('input[name="flag_id"]')).not_to_be_checked()


# what a browser does when its tab goes to the background or comes back (Playwright's
# headless pages are all shown): the page's visibility, and its visibilitychange event
_VISIBILITY = """hidden => {
  Object.defineProperty(document, "hidden", {configurable: true, get: () => hidden});
  const state = hidden ? "hidden" : "visible";
  Object.defineProperty(document, "visibilityState", {configurable: true, get: () => state});
  document.dispatchEvent(new Event("visibilitychange"));
}"""
# a tab opened in the background (a middle click): hidden from its first script on
_OPENED_HIDDEN = """Object.defineProperty(document, "hidden", {configurable: true, get: () => true});
Object.defineProperty(document, "visibilityState", {configurable: true, get: () => "hidden"});"""


async def test_many_queue_tabs_leave_the_console_usable_and_catch_up_when_shown(
    admin: Api, page: object
) -> None:
    """Each queue tab held its live stream, and the browser keeps six connections to a
    host: with six queue tabs open every other page waited (a probe). A hidden tab now
    closes its stream; shown again, it opens it where it was, and lists what came
    meanwhile."""
    from playwright.async_api import Page, expect

    from tests.helpers import cn20, event, world

    assert isinstance(page, Page)
    w = await world(admin)
    await _sign_in(page, w["inv"].key)
    queues = [
        "/console/flags",
        "/console/flags/pending?kind=UNKNOWN_CODE",
        "/console/flags?kind=DIVERSION",
        "/console/flags?kind=DUPLICATE",
        "/console/flags?status=open",
        "/console/flags/pending",
        "/console/flags?kind=OUT_OF_REGION",
        "/console/flags?kind=EXPIRED",
    ]
    tabs = []
    for n, queue in enumerate(queues):
        tab = await page.context.new_page()
        if n % 2:  # opened in the background
            await tab.add_init_script(_OPENED_HIDDEN)
        await tab.goto(queue)
        await expect(tab.get_by_role("heading", level=1)).to_be_visible()
        if not n % 2:  # looked at, then left for another tab
            await tab.wait_for_timeout(300)  # its stream is open
            await tab.evaluate(_VISIBILITY, True)
        tabs.append(tab)
    # eight queue tabs open: another page still loads, and a form still answers
    await page.goto("/console/flags?kind=DUPLICATE", timeout=15_000)
    await expect(page.get_by_role("heading", level=1)).to_have_text("预警")
    await page.get_by_role("button", name="筛选").click()
    await expect(page.locator("select[name=kind]")).to_have_value("DUPLICATE")

    # a flag the background tab's queue lists, raised while it is hidden: listed once shown
    unknown = cn20("8123456", 626262)
    out = await w["keys"]["P1"].events(event("receive", "P1", [unknown], 0))
    assert [f["kind"] for f in out["flags"]] == ["UNKNOWN_CODE"]
    background = tabs[1]
    live = background.locator("section.live")
    await expect(live).to_be_hidden()
    await background.bring_to_front()
    await background.evaluate(_VISIBILITY, False)
    await expect(live).to_be_visible(timeout=15_000)
    await expect(live.locator("li")).to_have_count(1)
    await expect(live.locator("li").first).to_contain_text(unknown)
    # and one raised while it is shown arrives as before
    later = cn20("8123456", 626263)
    await w["keys"]["P1"].events(event("receive", "P1", [later], 1))
    await expect(live.locator("li")).to_have_count(2, timeout=15_000)
    await expect(live.locator("li").first).to_contain_text(later)
    for tab in tabs:
        await tab.close()


# per count link of the counts table: [the right edge of its number, the right edge of
# its column's heading's text]
_COUNT_EDGES = """table => {
  const heads = Array.from(table.querySelectorAll("thead th"));
  const edges = [];
  for (const link of table.querySelectorAll("tbody td a")) {
    const column = Array.from(link.closest("tr").children).indexOf(link.closest("td"));
    const range = document.createRange();
    range.selectNodeContents(heads[column]);
    edges.push([link.getBoundingClientRect().right, range.getBoundingClientRect().right]);
  }
  return edges;
}"""


async def test_each_count_stands_under_its_status_in_both_languages(admin: Api, page: object) -> None:
    """The counts were right-aligned under left-aligned status names: in Chinese a
    count stood nearer the next column's name than its own (a probe)."""
    from playwright.async_api import Page

    assert isinstance(page, Page)
    w = await journey(admin)
    await _sign_in(page, w["inv"].key)
    for lang in ("zh", "en"):
        await page.goto("/console/flags")
        table = page.locator("table.counts")
        edges = await table.evaluate(_COUNT_EDGES)
        assert edges
        for number, heading in edges:
            assert abs(number - heading) <= 2, (lang, edges)
        if lang == "zh":
            await page.get_by_role("button", name="English").click()


async def test_a_skip_link_leads_to_the_content_and_counts_are_named_by_kind_and_status(
    admin: Api, page: object
) -> None:
    """The counts' links were named by their bare numbers ("1", "2"), and nothing let a
    keyboard skip the header (a probe)."""
    import re

    from playwright.async_api import Page, expect

    assert isinstance(page, Page)
    w = await journey(admin)
    await _sign_in(page, w["inv"].key)
    await page.goto("/console/flags")
    await page.keyboard.press("Tab")  # the first stop
    skip = page.get_by_role("link", name="跳到主要内容")
    await expect(skip).to_be_focused()
    box = await skip.bounding_box()
    assert box is not None
    assert box["x"] >= 0  # seen once focused
    await page.keyboard.press("Enter")
    await expect(page.locator("main")).to_be_focused()
    await expect(page).to_have_url("/console/flags#main")

    counts = page.locator("table.counts")
    await expect(counts.get_by_role("link", name=re.compile(r"^超区域，待处理：\d+ 条$"))).to_have_count(1)
    for link in await counts.get_by_role("link").all():
        label = await link.get_attribute("aria-label")
        assert label is not None
        assert label.endswith(f"：{await link.inner_text()} 条")
    await page.get_by_role("button", name="English").click()
    await expect(
        page.locator("table.counts").get_by_role("link", name=re.compile(r"^Out of region, open: \d+$"))
    ).to_have_count(1)


async def test_a_flag_and_the_queue_read_at_phone_width(admin: Api, page: object) -> None:
    """At 375 px a flag's evidence stood in a column one character wide beside its long
    names, pushed off the screen, and the queue and its status pills (待/处/理) broke the
    page's width (a walkthrough). Now each name stands above its value, and a wide table
    scrolls inside itself."""
    from playwright.async_api import Page

    assert isinstance(page, Page)
    w = await journey(admin)
    await _sign_in(page, w["inv"].key)
    await page.set_viewport_size({"width": 375, "height": 812})
    await page.goto(f"/console/flags/{w['open_flags'][0]}")
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    widths = await page.locator("dl.facts > dd").evaluate_all(
        "dds => dds.map(d => d.getBoundingClientRect().width)"
    )
    assert widths
    assert min(widths) > 250, widths  # the screen's width, less the margins
    await page.screenshot(path=str(SHOTS / "console-flag-phone.png"), full_page=True)
    await page.goto("/console/flags")
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    pills = await page.locator("table.flags span.status").evaluate_all(
        "spans => spans.map(s => s.getClientRects().length)"
    )
    assert pills
    assert set(pills) == {1}, pills  # each on one line
    await page.screenshot(path=str(SHOTS / "console-flags-phone.png"), full_page=True)


async def _sent_after_the_session_ended(
    admin: Api, page: Any, status: str, note: str
) -> tuple[dict[str, Any], str]:
    """The journey's first open flag, its change (``status``, ``note``) sent by an
    investigator whose key was revoked meanwhile: the page is the sign-in page, to come
    back to the flag. The world, and the flag's id."""
    from playwright.async_api import expect

    w = await journey(admin)
    made = await admin.ok("POST", "/v1/keys", {"role": "investigator"}, 201)
    await _sign_in(page, made["secret"])
    flag_id = w["open_flags"][0]
    await page.goto(f"/console/flags/{flag_id}")
    await page.get_by_label("状态").select_option(status)
    await page.get_by_label("备注").fill(note)
    await admin.ok("DELETE", f"/v1/keys/{made['key_id']}")
    await page.get_by_role("button", name="保存").click()
    await expect(page).to_have_url(f"/console/signin?next=%2Fconsole%2Fflags%2F{flag_id}")
    return w, flag_id


async def test_a_change_sent_after_the_session_ended_is_filled_in_again_after_signing_in(
    admin: Api, page: object
) -> None:
    """A status and note sent once the session had ended (the key revoked, or expired)
    saved nothing, and signing in came back to the flag with its form empty: the typed
    note was lost (a walkthrough). The page now fills them in again, says so, and saves
    nothing until sent again."""
    from playwright.async_api import Page, expect

    assert isinstance(page, Page)
    note = "药房承认转售，已取证 <见附件>"
    w, flag_id = await _sent_after_the_session_ended(admin, page, "confirmed", note)
    await page.get_by_label("API 密钥").fill(w["inv"].key)
    await page.get_by_role("button", name="登录").click()
    await expect(page).to_have_url(f"/console/flags/{flag_id}")
    await expect(page.locator("p.draft-restored")).to_be_visible()
    await expect(page.get_by_label("备注")).to_have_value(note)
    await expect(page.get_by_label("状态")).to_have_value("confirmed")
    assert (await w["inv"].ok("GET", f"/v1/flags/{flag_id}"))["status"] == "open"  # nothing saved yet
    await page.get_by_role("button", name="保存").click()
    await expect(page.locator("table.history")).to_contain_text(note)
    assert (await w["inv"].ok("GET", f"/v1/flags/{flag_id}"))["status"] == "confirmed"
    # saved: the page opened again starts empty
    await page.reload()
    await expect(page.get_by_label("备注")).to_have_value("")
    await expect(page.locator("p.draft-restored")).to_be_hidden()


async def test_a_change_filled_in_again_is_refused_when_the_flag_moved_meanwhile(
    admin: Api, page: object
) -> None:
    """The change filled in again after signing in is the change made against the status
    the page showed then: when a colleague moved the flag meanwhile, saving it is refused
    as stale and says who did (a review: it overwrote their change)."""
    from playwright.async_api import Page, expect

    assert isinstance(page, Page)
    w, flag_id = await _sent_after_the_session_ended(admin, page, "dismissed", "not a diversion")
    await w["inv"].ok("PATCH", f"/v1/flags/{flag_id}", {"status": "confirmed", "note": "resold"})
    await page.get_by_label("API 密钥").fill(w["inv"].key)
    await page.get_by_role("button", name="登录").click()
    await expect(page.get_by_label("备注")).to_have_value("not a diversion")
    await page.get_by_role("button", name="保存").click()
    await expect(page.locator("p.stale")).to_be_visible()
    assert (await w["inv"].ok("GET", f"/v1/flags/{flag_id}"))["status"] == "confirmed"
