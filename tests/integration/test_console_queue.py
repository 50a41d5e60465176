"""The console's flag queue keeps its filters across pages and refuses, visibly, a filter
it cannot apply; signing in again ends the browser's previous session."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from tests.helpers import Api, cn20, event, world
from tests.integration.test_console import _confirmed, _sign_in, browser, pending_diversion  # noqa: F401 - the fixture

pytestmark = pytest.mark.asyncio(loop_scope="session")

_FLAG_IDS = re.compile(r'name="flag_id" value="(\d+)"')


async def _sold(w: dict[str, Any], serial: int, resales: int) -> list[str]:
    """A pack sold by P1, then dispensed again ``resales`` times: one DUPLICATE each."""
    m, p1 = w["keys"]["M1"], w["keys"]["P1"]
    code = cn20(w["unit"], serial)
    await m.events(
        event("commission", "M1", [code], 0, lot="L1", expiry="2030-01-01"),
        event("ship", "M1", [code], 1, to="P1"),
    )
    await p1.events(event("receive", "P1", [code], 2), event("dispense", "P1", [code], 3))
    out = await p1.events(*[event("dispense", "P1", [code], 4 + i) for i in range(resales)])
    return [f["flag_id"] for f in out["flags"]]


async def test_the_next_page_keeps_the_code_filter(admin: Api, browser: AsyncTestClient) -> None:  # type: ignore[type-arg]  # noqa: F811
    w = await world(admin)
    other = await _sold(w, 900, 5)  # older flags of another code
    mine = await _sold(w, 901, 55)
    code = cn20(w["unit"], 901)
    await _sign_in(browser, w["inv"].key)
    first = await browser.get("/console/flags", params={"code": code})
    assert set(_FLAG_IDS.findall(first.text)) <= set(mine)
    nav = first.text[first.text.index('<nav class="paging"') :]
    found = re.search(r'<a href="([^"]*before=[^"]+)"', nav)
    assert found
    second = await browser.get(found.group(1).replace("&amp;", "&"))
    shown = set(_FLAG_IDS.findall(second.text))
    assert shown
    assert shown <= set(mine)
    assert not shown & set(other)


@pytest.mark.parametrize(
    "query",
    [
        {"until": "9999-12-31"},
        {"since": "0001-01-01"},
        {"region": "1101011"},
        {"org": "X" * 65},
        # past any form value's 2,000 characters they were dropped, and every flag listed
        {"org": "X" * 3000},
        {"code": "8" * 3000},
        # the sold pack's code with U+00A0 after it: not a code, as on the API (found by a
        # probe: the console dropped Unicode whitespace around a code); a full-width space
        # (U+3000) is a person's typing, read as the search reads it (below)
        {"code": "81234560000000000902\xa0"},
        {"code": "81234560000000000902\u2003"},
        {"kind": "K" * 3000},
        {"since": "2026-01-01" + " " * 10 + "x" * 2500},
        {"med_list_codg": "X" * 3000},
    ],
)
async def test_a_filter_the_api_would_refuse_is_shown_as_refused(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
    query: dict[str, str],
) -> None:
    w = await world(admin)
    await _sold(w, 902, 1)
    await _sign_in(browser, w["inv"].key)
    page = await browser.get("/console/flags", params=query)
    assert page.status_code == 400  # no search ran
    assert 'role="alert"' in page.text
    assert _FLAG_IDS.findall(page.text) == []


async def test_signing_in_again_ends_the_previous_session(admin: Api, browser: AsyncTestClient) -> None:  # type: ignore[type-arg]  # noqa: F811
    boss = await admin.key_for("admin")
    inv = await admin.key_for("investigator")
    await _sign_in(browser, boss.key)
    first = browser.cookies.get("console_session")
    await _sign_in(browser, inv.key)  # the same browser, another key
    assert browser.cookies.get("console_session") != first
    browser.cookies.clear()
    browser.cookies.set("console_session", first, path="/console")
    assert (await browser.get("/console/flags", follow_redirects=False)).status_code == 303


async def test_a_stock_imbalance_flag_reads_and_links_to_its_catalogue_item(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """Its code is a catalogue item (med_list_codg), not a trace code: it had no label
    in either language, its links answered "Not a CN20 code", and the queue could not
    be filtered by it (a probe)."""
    from tests.integration.test_nhsa import _world, envelope, nhsa, sale
    from tests.integration.test_nhsa_ledger import OTHER, purchase

    w = await _world(admin)
    p2 = w["keys"]["P2"]
    await nhsa(p2, envelope("3503", {"purcinfo": {**purchase("C010", 10), "med_list_codg": OTHER}}))
    out = await nhsa(p2, envelope("3505", {"selinfo": sale("B110", [], 14, med_list_codg=OTHER)}))
    (flag,) = out["output"]["tracecode"]["flags"]
    other = await _sold(w, 903, 1)  # a DUPLICATE, of a trace code
    inv = await admin.key_for("investigator")
    await _sign_in(browser, inv.key)
    item_link = f'<a href="/console/flags?med_list_codg={OTHER}">'
    queue = await browser.get("/console/flags")
    assert "kind.STOCK_IMBALANCE" not in queue.text
    assert queue.text.count("进销存不平") >= 3  # the counts, the kind filter, its row
    assert item_link in queue.text
    assert f'href="/console/codes?q={OTHER}"' not in queue.text
    # the queue filtered by the catalogue item, as GET /v1/flags?med_list_codg=
    by_item = await browser.get("/console/flags", params={"med_list_codg": OTHER})
    assert 'role="alert"' not in by_item.text
    assert _FLAG_IDS.findall(by_item.text) == [flag["flag_id"]]
    assert set(other) <= set(_FLAG_IDS.findall(queue.text))
    both = await browser.get("/console/flags", params={"med_list_codg": OTHER, "code": cn20(w["unit"], 903)})
    assert 'role="alert"' in both.text
    assert _FLAG_IDS.findall(both.text) == []
    page = await browser.get(f"/console/flags/{flag['flag_id']}")
    assert "<h1>预警 " + flag["flag_id"] + ": 进销存不平" in page.text
    assert item_link in page.text
    assert 'href="/console/orgs/P2#ledger-h"' in page.text
    # its evidence reads in order, the record's kind in words (a walkthrough: the balance
    # after came before the balance before, and the kind read "sale")
    names = re.findall(r"<dt>([^<]+)</dt>", page.text[page.text.index('<dl class="refs">') :])
    assert names.index("变动前结存") < names.index("变动后结存"), names
    assert "<dd>销售</dd>" in page.text
    org = await browser.get("/console/orgs/P2")
    assert item_link in org.text  # its open flag
    assert f'<a href="/console/flags?med_list_codg={OTHER}&amp;org=P2">' in org.text  # its ledger row
    browser.cookies.set("console_lang", "en", path="/console")
    assert "Stock imbalance" in (await browser.get("/console/flags")).text


async def test_a_bulk_change_naming_a_flag_twice_changes_it_once(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """flag_id=4&flag_id=8&flag_id=4 answered changed=3 and wrote two identical history
    rows for flag 4 (a probe)."""
    w = await world(admin)
    first, second = await _sold(w, 904, 2)
    await _sign_in(browser, w["inv"].key)
    queue = await browser.get("/console/flags")
    token = re.search(r'name="_csrf_token" value="([^"]+)"', queue.text)
    assert token
    answer = await browser.post(
        "/console/flags/bulk",
        data={"flag_id": [first, second, first], "status": "investigating", "_csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert set(_FLAG_IDS.findall(answer.text)) == {first, second}  # confirmed first, each once
    assert len(_FLAG_IDS.findall(answer.text)) == 2
    answer = await _confirmed(browser, answer)
    assert answer.status_code == 303
    assert "已更新 2 条预警" in (await browser.get(answer.headers["location"])).text
    for flag_id in (first, second):
        history = (await w["inv"].ok("GET", f"/v1/flags/{flag_id}"))["history"]
        assert [h["status"] for h in history] == ["investigating"]


async def test_a_search_longer_than_a_code_says_so(admin: Api, browser: AsyncTestClient) -> None:  # type: ignore[type-arg]  # noqa: F811
    """A search of more than 200 characters rendered an empty page with no word (a probe)."""
    inv = await admin.key_for("investigator")
    await _sign_in(browser, inv.key)
    for q in ("8" * 201, "8" * 3000):
        page = await browser.get("/console/codes", params={"q": q})
        assert page.status_code == 200
        assert "追溯码最多 200 个字符" in page.text


async def test_a_persons_purchases_billed_without_codes_link_to_their_item(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """An EXCESS_PURCHASE of an item billed without codes names the item as its code (its
    refs name it among the items): the console links it as an item, not as a trace code
    (whose page would find nothing)."""
    from tests.integration.test_person_limits import EXEMPT, exempt_sale

    w = await world(admin)
    await admin.ok("POST", "/v1/products", EXEMPT, 201)
    big = await w["insurer"].ok("POST", "/v1/settlements", exempt_sale("CQ-1", "CQ", 100, 60))
    [flag] = big["flags"]
    assert (flag["kind"], flag["code"]) == ("EXCESS_PURCHASE", "MEX")
    await _sign_in(browser, w["inv"].key)
    page = await browser.get(f"/console/flags/{flag['flag_id']}")
    assert '<a href="/console/flags?med_list_codg=MEX">' in page.text
    assert 'href="/console/codes?q=MEX"' not in page.text
    queue = await browser.get("/console/flags")
    assert '<a href="/console/flags?med_list_codg=MEX">' in queue.text


@pytest.mark.parametrize(
    "typed",
    [
        "8123456 0000000000904",  # as a label prints it
        "８１２３４５６００００００００００９０４",  # a Chinese input method's full-width digits
        "81234560000000000904\u3000",  # with its full-width space after it
    ],
)
async def test_the_code_filter_reads_a_code_as_a_person_types_it_as_the_search_does(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
    typed: str,
) -> None:
    """The queue's code filter refused what the code search reads (spaces inside a code,
    full-width digits: ``core.codes.as_typed``): it now filters by the code they spell,
    says so, and keeps it on the live list's link."""
    w = await world(admin)
    others = await _sold(w, 905, 1)
    mine = await _sold(w, 904, 2)
    code = cn20(w["unit"], 904)
    assert code == "81234560000000000904"
    await _sign_in(browser, w["inv"].key)
    page = await browser.get("/console/flags", params={"code": typed})
    assert page.status_code == 200
    assert 'role="alert"' not in page.text, page.text
    assert sorted(_FLAG_IDS.findall(page.text)) == sorted(mine)
    assert not set(_FLAG_IDS.findall(page.text)) & set(others)
    assert f"已按追溯码 <bdi>{code}</bdi> 筛选" in page.text
    # the live list's link keeps the filter, which its stream reads as the page does
    live = re.search(r'data-live="/console/flags/live\?([^"]*)"', page.text)
    assert live is not None
    kept = await browser.get(f"/console/flags?{html.unescape(live[1])}")
    assert sorted(_FLAG_IDS.findall(kept.text)) == sorted(mine)
    # the code as written reads as it is: nothing to say
    plain = await browser.get("/console/flags", params={"code": code})
    assert sorted(_FLAG_IDS.findall(plain.text)) == sorted(mine)
    assert "已按追溯码" not in plain.text


async def test_a_refused_filter_is_a_400_naming_its_labels_and_says_no_flags_found(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """A refused filter answered 200 with "No flags" under the error, though no search
    ran, and named the parameters ("kind, region, since") on Chinese pages too (a probe)."""
    inv = await admin.key_for("investigator")
    await _sign_in(browser, inv.key)
    for queue in ("/console/flags", "/console/flags/pending"):
        refused = await browser.get(queue, params={"kind": "NOPE", "region": "x", "since": "yesterday"})
        assert refused.status_code == 400
        assert '<p class="error" role="alert">筛选条件无效：类型、地区、起</p>' in refused.text
        assert "没有预警" not in refused.text
    assert "没有预警" in (await browser.get("/console/flags", params={"kind": "EXPIRED"})).text
    browser.cookies.set("console_lang", "en", path="/console")
    refused = await browser.get("/console/flags", params={"med_list_codg": "X", "code": "nonsense"})
    assert refused.status_code == 400
    assert "Invalid filter: Code, Catalogue item</p>" in refused.text
    assert "No flags" not in refused.text
    # an organisation that is not registered: refused as the API refuses it, not a
    # misspelt organisation shown as one with no flags (a probe)
    for queue in ("/console/flags", "/console/flags/pending"):
        refused = await browser.get(queue, params={"org": "NOPE"})
        assert refused.status_code == 400, refused.text
        assert "Invalid filter: Organisation <a href=" in refused.text
        assert "No flags" not in refused.text


async def test_the_status_select_shows_the_status_filtered_by_pending_too(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """/console/flags?status=pending listed pending flags while its status select showed
    "any": it had no pending option (a probe)."""
    inv = await admin.key_for("investigator")
    await _sign_in(browser, inv.key)
    for status in ("pending", "open", "auto_cleared"):
        page = (await browser.get("/console/flags", params={"status": status})).text
        select = page[
            page.index('<select name="status">') : page.index(
                "</select>", page.index('<select name="status">')
            )
        ]
        assert re.findall(r'<option value="(\w*)" selected>', select) == [status]


async def test_the_queue_says_how_many_pending_flags_its_filters_also_select(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """The queue's "any" status leaves pending flags out, as the API does: filtered by a
    kind whose flags were all pending, it said "no flags" while its counts showed them,
    and an investigator took it for none (found by a walkthrough). It now says how many
    pending flags the filters also select, and links to them."""
    w = await world(admin)
    code, flag_id = await pending_diversion(w, 950)
    await _sign_in(browser, w["inv"].key)
    page = (await browser.get("/console/flags", params={"kind": "DIVERSION", "code": code})).text
    assert not _FLAG_IDS.findall(page)
    notice = re.search(r'<p class="notice pending-also" role="status">(.*?)</p>', page, re.S)
    assert notice is not None, page
    assert "1" in notice.group(1)
    link = re.search(r'href="([^"]+)"', notice.group(1))
    assert link is not None
    pending = (await browser.get(html.unescape(link.group(1)))).text
    assert _FLAG_IDS.findall(pending) == [str(flag_id)]
    select = page[page.index('<select name="status">') :]
    assert re.match(r'<select name="status"><option value="">[^<]*(待定|pending)', select), select[:200]
    # a status asked for, or the pending queue itself: nothing more to say
    for path, params in (
        ("/console/flags", {"kind": "DIVERSION", "status": "open"}),
        ("/console/flags/pending", {}),
    ):
        assert "pending-also" not in (await browser.get(path, params=params)).text


async def test_the_queue_of_work_to_do_lists_open_and_investigating_flags_only(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """Dismissed, confirmed and auto-cleared flags stayed in the queue among the ones to
    work on, and a status filter takes one status (a walkthrough). "To do" lists the
    open and investigating ones, newest first, across its pages."""
    w = await world(admin)
    flags = await _sold(w, 960, 4)  # four DUPLICATEs, open
    inv = w["inv"]
    await inv.ok("PATCH", f"/v1/flags/{flags[0]}", {"status": "investigating"})
    await inv.ok("PATCH", f"/v1/flags/{flags[1]}", {"status": "dismissed", "note": "a test"})
    await inv.ok("PATCH", f"/v1/flags/{flags[2]}", {"status": "confirmed", "note": "resold"})
    await _sign_in(browser, inv.key)
    code = cn20(w["unit"], 960)
    page = (await browser.get("/console/flags", params={"status": "to_do", "code": code})).text
    assert _FLAG_IDS.findall(page) == [str(flags[3]), str(flags[0])], page
    assert '<option value="to_do" selected>' in page
    everything = (await browser.get("/console/flags", params={"code": code})).text
    assert sorted(_FLAG_IDS.findall(everything)) == sorted(map(str, flags))
