"""What the console's figures and forms say (found by a probe of the console): an
organisation's received packs count those in the cases it received, the queue's counts
follow its filters, its code filter is in the form, a reversed day range is said to be
one, organisations are named, and the search reads a code as a person types it."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from tests.helpers import Api, cn20, event, sscc, world
from tests.integration.test_console import _sign_in, browser  # noqa: F401 - the fixture

pytestmark = pytest.mark.asyncio(loop_scope="session")

_FLAG_IDS = re.compile(r'name="flag_id" value="(\d+)"')


async def _resold(w: dict[str, Any], org: str, serial: int, resales: int) -> str:
    """A pack received and sold by ``org``, then dispensed again ``resales`` times: one
    DUPLICATE flag each. Its code."""
    m, shop = w["keys"]["M1"], w["keys"][org]
    code = cn20(w["unit"], serial)
    await m.events(
        event("commission", "M1", [code], 0, lot="L1", expiry="2030-01-01"),
        event("ship", "M1", [code], 1, to=org),
    )
    await shop.events(event("receive", org, [code], 2), event("dispense", org, [code], 3))
    await shop.events(*[event("dispense", org, [code], 4 + i) for i in range(resales)])
    return code


def _counts(page: str) -> dict[str, int]:
    """The queue's counts table: each count's link (its query) and figure."""
    table = page[
        page.index('<table class="counts">') : page.index("</table>", page.index('<table class="counts">'))
    ]
    return {html.unescape(href): int(n) for href, n in re.findall(r'<a href="([^"]+)"[^>]*>(\d+)</a>', table)}


async def test_the_queue_counts_the_flags_its_filters_select(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """/console/flags?org=P1 counted every organisation's flags under "counts by kind
    and status"; each count now links to the flags it counts."""
    w = await world(admin)
    w["keys"]["H1"] = await admin.key_for("org", "H1")
    await _resold(w, "P1", 1, 2)
    await _resold(w, "H1", 2, 3)
    await _sign_in(browser, w["inv"].key)
    everyone = await browser.get("/console/flags")
    assert "（全部预警）" in everyone.text
    assert _counts(everyone.text) == {"/console/flags?kind=DUPLICATE&status=open": 5}
    p1 = await browser.get("/console/flags", params={"org": "P1"})
    assert "（符合当前筛选条件的预警，不限状态）" in p1.text
    counted = _counts(p1.text)
    assert counted == {"/console/flags?org=P1&kind=DUPLICATE&status=open": 2}
    listed = await browser.get(next(iter(counted)))
    assert len(_FLAG_IDS.findall(listed.text)) == 2
    # a status filter leaves every status counted (the table's columns); a kind, its row
    open_h1 = await browser.get("/console/flags", params={"org": "H1", "status": "dismissed"})
    assert _counts(open_h1.text) == {"/console/flags?org=H1&kind=DUPLICATE&status=open": 3}
    assert _counts((await browser.get("/console/flags", params={"kind": "EXPIRED"})).text) == {}


async def test_the_code_filter_is_in_the_queue_form(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """/console/flags?code=… listed one code's flags, but the form had no code field:
    the next "筛选" dropped it."""
    w = await world(admin)
    code = await _resold(w, "P1", 3, 1)
    await _resold(w, "P1", 4, 1)
    await _sign_in(browser, w["inv"].key)
    page = await browser.get("/console/flags", params={"code": code})
    form = page.text[
        page.text.index('class="filters"') : page.text.index("</form>", page.text.index('class="filters"'))
    ]
    assert f'name="code" value="{code}"' in form
    assert len(_FLAG_IDS.findall(page.text)) == 1


async def test_a_day_range_that_ends_before_it_starts_says_so(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """since after until listed nothing, silently, as if there were no flags."""
    w = await world(admin)
    await _resold(w, "P1", 5, 1)  # flagged on 2026-03-02
    await _sign_in(browser, w["inv"].key)
    both = await browser.get("/console/flags", params={"since": "2026-03-02", "until": "2026-03-02"})
    assert len(_FLAG_IDS.findall(both.text)) == 1  # one day, from its start to its end
    assert 'role="alert"' not in both.text
    reversed_ = await browser.get("/console/flags", params={"since": "2026-03-03", "until": "2026-03-02"})
    assert reversed_.status_code == 200
    assert "“起”日期晚于“止”日期" in reversed_.text
    assert 'role="alert"' in reversed_.text
    assert _FLAG_IDS.findall(reversed_.text) == []
    pending = await browser.get(
        "/console/flags/pending", params={"since": "2026-03-03", "until": "2026-03-02"}
    )
    assert "“起”日期晚于“止”日期" in pending.text


async def test_the_queue_and_a_flag_name_its_organisation(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """The queue and the flag page showed the bare id; the code page, the name too."""
    w = await world(admin)
    await admin.ok(
        "POST",
        "/v1/orgs",
        {"id": "P7", "name": "仁心 <b>药房</b>", "kind": "pharmacy", "region": "450103"},
        201,
    )
    w["keys"]["P7"] = await admin.key_for("org", "P7")
    await _resold(w, "P7", 6, 1)
    await _sign_in(browser, w["inv"].key)
    shown = (
        '<a href="/console/orgs/P7"><bdi>仁心 &lt;b&gt;药房&lt;/b&gt;</bdi></a> '
        '<span class="muted">(<bdi>P7</bdi>)</span>'
    )
    queue = await browser.get("/console/flags")
    assert shown in queue.text
    (flag_id,) = _FLAG_IDS.findall(queue.text)
    assert shown in (await browser.get(f"/console/flags/{flag_id}")).text
    # an organisation the registry does not know is a refused filter, as in the API
    assert (await browser.get("/console/flags", params={"org": "NOPE"})).status_code == 400


@pytest.mark.parametrize(
    "typed",
    [
        "8123456 0000000000083",  # as a label prints it
        "８１２３４５６０００００００００００８３",  # a Chinese input method's full-width digits
        "８１２３４５６\u3000０００００００００００８３",  # with its full-width space
        " 81 2345 600 0000 0000 083 ",
    ],
)
async def test_the_search_reads_a_code_as_a_person_types_it(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
    typed: str,
) -> None:
    """Spaces inside a code and full-width digits were refused as "not a code"; the page
    now searches for the code they spell, and says which code it searched for."""
    w = await world(admin)
    code = cn20(w["unit"], 83)
    assert code == "81234560000000000083"
    await w["keys"]["M1"].events(event("commission", "M1", [code], 0, lot="L1", expiry="2030-01-01"))
    await _sign_in(browser, w["inv"].key)
    page = await browser.get("/console/codes", params={"q": typed})
    assert page.status_code == 200
    assert f'<h2 id="code-h" class="code"><bdi>{code}</bdi></h2>' in page.text
    assert f"已按 <bdi>{code}</bdi> 查询" in page.text
    # the API's codes stay as strict as its contract says
    assert (await w["inv"].get(f"/v1/codes/{typed}/history")).status_code == 400


async def test_the_search_reads_a_typed_element_string_and_no_look_alike(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """An element string typed with spaces, or full-width brackets and letters, reads as
    its code; a character that only NFKC would read as a digit (①, ²) is no digit."""
    w = await world(admin)
    gtin = "06901234567892"
    await admin.ok(
        "POST",
        "/v1/products",
        {
            "product_id": gtin,
            "name": "Cefixime",
            "med_list_codg": "G1",
            "pack_units": 6,
            "manufacturer": "M1",
            "regions": ["45"],
        },
        201,
    )
    await w["keys"]["M1"].events(
        event("commission", "M1", [f"(01){gtin}(21)SER1"], 0, lot="L1", expiry="2030-01-01")
    )
    await _sign_in(browser, w["inv"].key)
    for typed in (f"(01) {gtin} (21) SER1", f"（０１）{gtin}（２１）ＳＥＲ１"):
        page = await browser.get("/console/codes", params={"q": typed})
        assert f'<h2 id="code-h" class="code"><bdi>01{gtin}21SER1</bdi></h2>' in page.text, typed
    for typed in ("①8123456000000000008３", "8123456000000000008²"):
        page = await browser.get("/console/codes", params={"q": typed})
        assert "不是有效的 CN20、GS1 元素串或 SSCC" in page.text, typed
        assert 'id="code-h"' not in page.text
    # a code as written is searched for as it is, with no word of reading it otherwise
    page = await browser.get("/console/codes", params={"q": f"01{gtin}21SER1"})
    assert 'id="code-h"' in page.text
    assert "已按" not in page.text


async def _stats(w: dict[str, Any], org: str) -> dict[str, Any]:
    stats: dict[str, Any] = await w["inv"].ok("GET", f"/v1/orgs/{org}/stats")
    return stats


async def test_a_received_case_counts_as_the_packs_in_it(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """The probe's case: M1 packs 12 packs into an SSCC and ships it to P1, which receives
    the case and dispenses the 12 packs. The organisation's page said received 1, sold 12:
    what an investigator looks for when a pharmacy sells what it never bought. The API's
    ``received`` keeps its meaning (the codes its receives named); ``received_packs``
    counts the packs, and the page shows both, each said for what it is."""
    w = await world(admin)
    m, p1 = w["keys"]["M1"], w["keys"]["P1"]
    packs = [cn20(w["unit"], 100 + i) for i in range(12)]
    case = sscc(23)
    await m.events(
        event("commission", "M1", packs, 0, lot="L1", expiry="2030-01-01"),
        event("pack", "M1", packs, 1, parent=case),
        event("ship", "M1", [case], 2, to="P1"),
    )
    await p1.events(event("receive", "P1", [case], 3), event("dispense", "P1", packs, 4))
    stats = await _stats(w, "P1")
    assert (stats["received"], stats["received_packs"], stats["dispensed"]) == (1, 12, 12)
    await _sign_in(browser, w["inv"].key)
    page = await browser.get("/console/orgs/P1")
    facts = page.text[page.text.index('<dl class="facts">') : page.text.index("</dl>")]
    figures = dict(re.findall(r"<dt>([^<]+)</dt><dd class=\"num\">(?:<a [^>]+>)?(\d+)", facts))
    assert figures["收货（追溯码，一箱计一个）"] == "1"
    assert figures["收货（药品包装，含箱内）"] == "12"
    assert figures["销售（追溯码）"] == "12"


async def test_received_packs_are_those_in_the_case_when_it_was_received(admin: Api) -> None:
    """A pallet counts the packs of its cases; a case, what its scans had put in it by
    the receipt: not the pack unpacked before it was shipped on, nor one packed into it
    after; a receipt of loose packs and a case of a case product counts each."""
    w = await world(admin)
    m, d1, p1 = w["keys"]["M1"], w["keys"]["D1"], w["keys"]["P1"]
    first = [cn20(w["unit"], 200 + i) for i in range(3)]
    second = [cn20(w["unit"], 210 + i) for i in range(4)]
    late = cn20(w["unit"], 220)
    loose = [cn20(w["unit"], 230 + i) for i in range(2)]
    boxed = [cn20(w["unit"], 240 + i) for i in range(5)]
    case_a, case_b, pallet = sscc(31), sscc(32), sscc(33)
    case_code = cn20(w["case"], 1)  # a code of the registry's case product
    await m.events(
        event("commission", "M1", [*first, *second, late, *loose, *boxed], 0, lot="L1", expiry="2030-01-01"),
        event("commission", "M1", [case_code], 0, lot="C1", expiry="2030-01-01"),
        event("pack", "M1", first, 1, parent=case_a),
        event("pack", "M1", second, 1, parent=case_b),
        event("pack", "M1", [case_a, case_b], 2, parent=pallet),
        event("pack", "M1", boxed, 2, parent=case_code),
        event("ship", "M1", [pallet, case_code, *loose], 3, to="D1"),
    )
    await d1.events(event("receive", "D1", [pallet, case_code, *loose], 4))
    stats = await _stats(w, "D1")
    assert (stats["received"], stats["received_packs"]) == (4, 3 + 4 + 5 + 2)
    # D1 takes one pack out of case A (an unpack scan) and sends the case on to P1,
    # which receives it; M1's scan of a pack into the case after that is not counted
    await d1.events(
        event("unpack", "D1", [case_a], 5, parent=pallet),
        event("unpack", "D1", [first[0]], 6, parent=case_a),
        event("ship", "D1", [case_a], 7, to="P1"),
    )
    await p1.events(event("receive", "P1", [case_a], 8))
    await p1.events(event("pack", "P1", [late], 9, parent=case_a))
    stats = await _stats(w, "P1")
    assert (stats["received"], stats["received_packs"]) == (1, 2)
    # D1's own figure is what it received, whatever it did with it afterwards
    assert (await _stats(w, "D1"))["received_packs"] == 3 + 4 + 5 + 2
