"""Two tabs, or two investigators, on one flag: a change made against a status the flag
no longer has changes nothing and says so (found by a probe: the second save silently
overwrote the first, one flag or a bulk change of many); and a bulk change that does
nothing says why."""

from __future__ import annotations

import html
import re
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from tests.helpers import Api, cn20, event, world
from tests.integration.test_console import _TOKEN, _confirmed, _sign_in, browser  # noqa: F401 - the fixture

pytestmark = pytest.mark.asyncio(loop_scope="session")

_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
_FLAG_IDS = re.compile(r'name="flag_id" value="(\d+)"')


def _form(page: str, action: str) -> dict[str, str]:
    """The hidden fields of the page's form posted to ``action``, as the browser sends them."""
    start = page.index(f'action="{action}"')
    body = page[start : page.index("</form>", start)]
    return {name: html.unescape(value) for name, value in _HIDDEN.findall(body)}


async def _resold(w: dict[str, Any], serials: range) -> list[str]:
    """Packs sold by P1 and sold again: an open DUPLICATE each."""
    m, p1 = w["keys"]["M1"], w["keys"]["P1"]
    codes = [cn20(w["unit"], s) for s in serials]
    await m.events(
        event("commission", "M1", codes, 0, lot="L1", expiry="2030-01-01"),
        event("ship", "M1", codes, 1, to="P1"),
    )
    await p1.events(event("receive", "P1", codes, 2), event("dispense", "P1", codes, 3))
    out = await p1.events(event("dispense", "P1", codes, 4))
    return [f["flag_id"] for f in out["flags"]]


def _key_id(api: Api) -> str:
    return api.key.split(".")[0]


async def test_a_tab_that_shows_a_stale_status_changes_nothing_and_says_who_did(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """Tab A and tab B open one flag (open); A confirms it with a note; B, still showing
    open, dismisses it: a 409 page saying the flag is confirmed now, by whom and when, with
    the flag as it is and B's note still in its field; nothing of B's is stored."""
    w = await world(admin)
    (flag_id,) = await _resold(w, range(1, 2))
    await _sign_in(browser, w["inv"].key)
    path = f"/console/flags/{flag_id}"
    tab_a, tab_b = (await browser.get(path)).text, (await browser.get(path)).text
    for tab in (tab_a, tab_b):
        assert _form(tab, path)["expected_status"] == "open"
    a = await browser.post(
        path,
        data={**_form(tab_a, path), "status": "confirmed", "note": "tab A: confirmed resale"},
        follow_redirects=False,
    )
    assert a.status_code == 303
    b = await browser.post(
        path,
        data={**_form(tab_b, path), "status": "dismissed", "note": "tab B: <till> error"},
        follow_redirects=False,
    )
    assert b.status_code == 409, b.text
    said = re.search(r'<p class="error stale" role="alert">(.*?)</p>', b.text, re.S)
    assert said is not None, b.text
    assert "「待处理」" in said.group(1)  # what B's page showed
    assert "现为「已确认」" in said.group(1)  # what it is now
    assert _key_id(w["inv"]) in said.group(1)  # who
    assert '<span class="status status-confirmed">已确认</span>' in b.text  # the flag as it is
    assert '>tab B: &lt;till&gt; error</textarea>' in b.text  # the note, to send again
    assert _form(b.text, path)["expected_status"] == "confirmed"  # a new decision: on this
    stored = await w["inv"].ok("GET", f"/v1/flags/{flag_id}")
    assert stored["status"] == "confirmed"
    assert [h["note"] for h in stored["history"]] == ["tab A: confirmed resale"]
    # in English too
    browser.cookies.set("console_lang", "en", path="/console")
    again = await browser.post(
        path, data={**_form(tab_b, path), "note": "only a note"}, follow_redirects=False
    )
    assert again.status_code == 409
    assert "was open when you opened the page" in again.text
    assert "it is now confirmed" in again.text
    assert len((await w["inv"].ok("GET", f"/v1/flags/{flag_id}"))["history"]) == 1
    # decided again on what the page shows now: saved
    done = await browser.post(
        path, data={**_form(b.text, path), "status": "dismissed"}, follow_redirects=False
    )
    assert done.status_code == 303
    assert (await w["inv"].ok("GET", f"/v1/flags/{flag_id}"))["status"] == "dismissed"


async def test_the_second_investigator_to_take_a_flag_learns_who_took_it(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    w = await world(admin)
    (flag_id,) = await _resold(w, range(11, 12))
    path = f"/console/flags/{flag_id}"
    first, second = w["inv"], await admin.key_for("investigator")
    await _sign_in(browser, second.key)
    seen_by_second = (await browser.get(path)).text
    sessions_second = httpx.Cookies(browser.cookies)
    browser.cookies.clear()
    await _sign_in(browser, first.key)
    seen_by_first = (await browser.get(path)).text
    taken = await browser.post(
        path,
        data={**_form(seen_by_first, path), "status": "investigating", "note": "mine"},
        follow_redirects=False,
    )
    assert taken.status_code == 303
    browser.cookies = sessions_second
    refused = await browser.post(
        path,
        data={**_form(seen_by_second, path), "status": "investigating", "note": "mine too"},
        follow_redirects=False,
    )
    assert refused.status_code == 409
    assert "现为「调查中」" in refused.text
    assert f"由 <bdi>{_key_id(first)}</bdi>" in refused.text
    stored = await first.ok("GET", f"/v1/flags/{flag_id}")
    assert [(h["note"], h["by_key"]) for h in stored["history"]] == [("mine", _key_id(first))]


async def test_a_bulk_change_skips_the_flags_changed_since_and_names_them(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """Two tabs on the open DUPLICATEs tick the same three; B confirms them and a fourth,
    and is asked to confirm that; meanwhile A dismisses the three; then B confirms: only
    the fourth is confirmed (the statuses B's rows showed went through its confirmation
    page), and the notice names the three, each with its status now."""
    w = await world(admin)
    ids = await _resold(w, range(21, 25))
    await _sign_in(browser, w["inv"].key)
    queue = "/console/flags?kind=DUPLICATE&status=open"
    tab_a, tab_b = (await browser.get(queue)).text, (await browser.get(queue)).text
    assert set(_FLAG_IDS.findall(tab_a)) == set(ids)
    three, fourth = ids[:3], ids[3]
    b_asked = await browser.post(
        "/console/flags/bulk",
        data={
            **_form(tab_b, "/console/flags/bulk"),
            "flag_id": [*three, fourth],
            "status": "confirmed",
            "note": "B",
        },
        follow_redirects=False,
    )
    assert b_asked.status_code == 200
    a_sent = {**_form(tab_a, "/console/flags/bulk"), "flag_id": three, "status": "dismissed", "note": "A"}
    a_asked = await browser.post("/console/flags/bulk", data=a_sent, follow_redirects=False)
    a = await _confirmed(browser, a_asked)
    assert a.status_code == 303
    assert "已更新 3 条预警" in (await browser.get(queue)).text
    b = await _confirmed(browser, b_asked)
    assert b.headers["location"] == queue
    page = (await browser.get(queue)).text
    assert '<p class="notice" role="status">已更新 1 条预警。</p>' in page
    said = re.search(r'<p class="error stale" role="alert">(.*?)</p>', page, re.S)
    assert said is not None, page
    assert said.group(1).startswith("3 条预警未更改")
    for flag_id in three:
        assert f'<a href="/console/flags/{flag_id}"><bdi>{flag_id}</bdi></a>（现为「已排除」）' in said.group(
            1
        )
    assert f"/console/flags/{fourth}" not in said.group(1)
    for flag_id in three:
        stored = await w["inv"].ok("GET", f"/v1/flags/{flag_id}")
        assert (stored["status"], [h["note"] for h in stored["history"]]) == ("dismissed", ["A"])
    assert (await w["inv"].ok("GET", f"/v1/flags/{fourth}"))["status"] == "confirmed"


@pytest.mark.parametrize(
    ("sent", "says"),
    [
        ({"status": "dismissed", "note": "x"}, "请先勾选要变更的预警"),  # nothing ticked
        ({"flag_id": ["{id}"], "status": "", "note": ""}, "请选择新的状态或填写备注"),  # keep each, no note
        ({"flag_id": ["{id}"], "status": "dismissed", "note": "x" * 2001}, "备注最多 2000 个字符"),
        ({"flag_id": ["{id}"], "status": "auto_cleared"}, "请选择一个可设置的状态"),
    ],
)
async def test_a_bulk_change_that_does_nothing_says_why(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
    sent: dict[str, Any],
    says: str,
) -> None:
    """It said only "0 flags updated" (a probe), though the README has the notice tell
    why a bulk change did nothing."""
    w = await world(admin)
    (flag_id,) = await _resold(w, range(31, 32))
    await _sign_in(browser, w["inv"].key)
    queue = "/console/flags?kind=DUPLICATE&status=open"
    page = (await browser.get(queue)).text
    data = {k: [v.format(id=flag_id) for v in vs] if isinstance(vs, list) else vs for k, vs in sent.items()}
    done = await browser.post(
        "/console/flags/bulk",
        data={**_form(page, "/console/flags/bulk"), **data},
        follow_redirects=False,
    )
    assert done.headers["location"] == queue
    after = (await browser.get(queue)).text
    said = re.search(r'<p class="error" role="alert">(.*?)</p>', after, re.S)
    assert said is not None, after
    assert says in said.group(1)
    assert "已更新" not in after
    stored = await w["inv"].ok("GET", f"/v1/flags/{flag_id}")
    assert (stored["status"], stored["history"]) == ("open", [])


async def test_a_page_opened_for_another_key_saves_nothing(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """Tab 1 opens a flag and the queue as investigator A; tab 2 signs in as B, which
    replaces the browser's one session. A form sent from tab 1 was saved under B, whose
    holder never saw it: now nothing changes and the page says why (both forms)."""
    w = await world(admin)
    (flag_id,) = await _resold(w, range(1, 2))
    other = await admin.key_for("investigator")
    await _sign_in(browser, w["inv"].key)
    path = f"/console/flags/{flag_id}"
    tab_1 = (await browser.get(path)).text
    queue = (await browser.get("/console/flags")).text
    assert _form(tab_1, path)["rendered_for"] == _key_id(w["inv"])
    await _sign_in(browser, other.key)  # tab 2
    refused = await browser.post(
        path, data={**_form(tab_1, path), "status": "dismissed", "note": "from tab 1"}, follow_redirects=False
    )
    assert refused.status_code == 400, refused.text
    assert "此页面是为另一把密钥打开的" in refused.text
    assert '>from tab 1</textarea>' in refused.text  # the note, to send again
    bulk = await browser.post(
        "/console/flags/bulk",
        data={**_form(queue, "/console/flags/bulk"), "flag_id": str(flag_id), "note": "from tab 1"},
        follow_redirects=True,
    )
    assert "此页面是为另一把密钥打开的" in bulk.text, bulk.text
    stored = await w["inv"].ok("GET", f"/v1/flags/{flag_id}")
    assert (stored["status"], stored["history"]) == ("open", [])
    # the page as tab 2 sees it now names B, and its form is taken
    tab_2 = (await browser.get(path)).text
    assert _form(tab_2, path)["rendered_for"] == _key_id(other)
    done = await browser.post(path, data={**_form(tab_2, path), "note": "from tab 2"}, follow_redirects=False)
    assert done.status_code == 303
    history = (await w["inv"].ok("GET", f"/v1/flags/{flag_id}"))["history"]
    assert [h["note"] for h in history] == ["from tab 2"]
