"""What the console shows of stored text is what is stored: every value isolated (a
direction character in it cannot reorder the text around it), and an identifier's
hidden characters shown, so that two different identifiers never look the same."""

from __future__ import annotations

import re
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from tests.helpers import Api, cn20, event, world
from tests.integration.test_console import _sign_in, browser  # noqa: F401 - the fixture
from tests.integration.test_nhsa import MED, _world, envelope, nhsa
from tests.integration.test_nhsa_ledger import purchase

pytestmark = pytest.mark.asyncio(loop_scope="session")

RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE
# the probe's catalogue code: shown raw, it reads exactly as MED does
SPOOF = "XJ01CAA040A0010101\u202e65240"
NAME = f"Honest Pharmacy {RLO}"  # an override left open: it would reverse what follows


async def pharmacy_named_with_an_override(admin: Api) -> dict[str, Any]:
    """The world, and P3 (named ``NAME``) holding one pack; its code is ``w["code"]``."""
    w = await world(admin)
    await admin.ok(
        "POST", "/v1/orgs", {"id": "P3", "name": NAME, "kind": "pharmacy", "region": "450103"}, 201
    )
    p3 = await admin.key_for("org", "P3")
    code = cn20(w["unit"], 77)
    await w["keys"]["M1"].events(
        event("commission", "M1", [code], 0, lot="L1", expiry="2030-12-31"),
        event("ship", "M1", [code], 1, to="P3"),
    )
    await p3.events(event("receive", "P3", [code], 2))
    w["code"] = code
    return w


def _isolated_everywhere(html: str, value: str) -> None:
    """Every place ``value`` is shown starts an isolate: ``<bdi>`` in HTML, U+2068 in the
    SVG's plain text."""
    places = [m.start() for m in re.finditer(re.escape(value), html)]
    assert places
    for at in places:
        assert html[:at].endswith(("<bdi>", "\u2068")), html[at - 80 : at + 40]


async def test_a_name_with_an_open_override_is_isolated_wherever_it_is_shown(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    w = await pharmacy_named_with_an_override(admin)
    await _sign_in(browser, w["inv"].key)
    code_page = await browser.get("/console/codes", params={"q": w["code"]})
    assert code_page.status_code == 200
    # the custodian line, the events table, the timeline's lane and its tooltip
    assert code_page.text.count(NAME) >= 4
    _isolated_everywhere(code_page.text, NAME)
    assert "(<bdi>P3</bdi>)" in code_page.text
    org_page = await browser.get("/console/orgs/P3")
    _isolated_everywhere(org_page.text, NAME)
    lot_page = await browser.get(f"/console/lots/{w['unit']}/L1")
    _isolated_everywhere(lot_page.text, NAME)


async def test_a_catalogue_code_holding_an_override_shows_it_and_never_reads_as_another(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
    db: Any,
) -> None:
    """The probe's 3503 upload: a ledger row that looked exactly like the real catalogue
    code. Stored before the intake refused such codes (the update stands for that)."""
    w = await _world(admin)
    p2 = w["keys"]["P2"]
    await nhsa(p2, envelope("3503", {"purcinfo": purchase("C011", 5000)}))
    await db.execute("UPDATE nhsa_records SET med_list_codg = $1 WHERE fixmedins_bchno = 'C011'", SPOOF)
    inv = await admin.key_for("investigator")
    await _sign_in(browser, inv.key)
    page = await browser.get("/console/orgs/P2")
    assert page.status_code == 200
    ledger = page.text[page.text.index('id="ledger-h"') :]
    assert f"<bdi>{MED}</bdi></a></td>" in ledger
    assert "<bdi>XJ01CAA040A0010101\\u202e65240</bdi></a></td>" in ledger
    assert RLO not in page.text
