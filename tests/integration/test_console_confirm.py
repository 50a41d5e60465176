"""A bulk change of status of more than one flag is asked about first, on a page of its
own (a probe: one click dismissed fifty flags, with no way back). The form that sends it
changes nothing by itself; the page lists the flags and carries the same choices, with
a confirmation bound to them."""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import urlencode

import pytest
from litestar.testing import AsyncTestClient

from service.console import pages
from tests.helpers import Api, world
from tests.integration.test_console import _confirmed, _expire_session, _fields, _sign_in, browser  # noqa: F401 - the fixture
from tests.integration.test_console_stale import _form, _resold

pytestmark = pytest.mark.asyncio(loop_scope="session")

QUEUE = "/console/flags?kind=DUPLICATE&status=open"
BULK = "/console/flags/bulk"


async def _history(w: dict[str, object], flag_id: str) -> tuple[str, list[str | None]]:
    stored = await w["inv"].ok("GET", f"/v1/flags/{flag_id}")  # type: ignore[attr-defined]
    return stored["status"], [h["note"] for h in stored["history"]]


async def _queue(client: AsyncTestClient, key: str, lang: str | None = None) -> str:  # type: ignore[type-arg]
    """Signed in with ``key`` (in ``lang``: the console's cookie), the queue's page."""
    await _sign_in(client, key)
    if lang is not None:
        client.cookies.set("console_lang", lang, path="/console")
    return (await client.get(QUEUE)).text


async def _bulk(client: AsyncTestClient, queue: str, ids: list[str], status: str, **extra: str) -> Any:  # type: ignore[type-arg]
    """The queue's bulk form sent for ``ids``: the page that asks first, or the change."""
    return await client.post(
        BULK, data={**_form(queue, BULK), "flag_id": ids, "status": status, **extra}, follow_redirects=False
    )


async def test_dismissing_several_flags_asks_first_and_changes_nothing_until_confirmed(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    w = await world(admin)
    ids = await _resold(w, range(41, 44))
    queue = await _queue(browser, w["inv"].key)
    two = ids[:2]
    asked = await _bulk(browser, queue, two, "dismissed", note="<b>till</b> error")
    assert asked.status_code == 200
    page = asked.text
    assert "<h1>确认批量变更</h1>" in page
    assert "将把以下 2 条预警改为「已排除」" in page
    listed = re.findall(r'<li><a href="/console/flags/(\d+)">\1</a> （页面显示为「待处理」）</li>', page)
    assert listed == two
    assert "<bdi>&lt;b&gt;till&lt;/b&gt; error</bdi>" in page  # the note, as text
    assert f'<a href="{QUEUE.replace("&", "&amp;")}">返回，不作任何更改</a>' in page  # the way back
    for flag_id in ids:  # nothing changed yet
        assert await _history(w, flag_id) == ("open", [])
    # the confirmation's form: the same choices, the rows' statuses, its CSRF token
    sent = _fields(page, BULK)
    assert sent["flag_id"] == two
    assert {sent[f"expected_status_{i}"][0] for i in two} == {"open"}
    assert (sent["status"], sent["note"], sent["next"]) == (["dismissed"], ["<b>till</b> error"], [QUEUE])
    assert sent["_csrf_token"]
    assert sent["confirm"]

    # without its CSRF token: refused
    forged = {k: v for k, v in sent.items() if k != "_csrf_token"}
    assert (await browser.post(BULK, data=forged, follow_redirects=False)).status_code == 403
    # a confirmation of other choices confirms nothing: asked again, nothing changed
    others = ({"status": ["confirmed"]}, {"flag_id": ids}, {"flag_id": [two[0], ids[2]]}, {"note": ["x"]})
    for other in others:
        again = await browser.post(BULK, data={**sent, **other}, follow_redirects=False)
        assert again.status_code == 200, other
        assert "<h1>确认批量变更</h1>" in again.text
    for flag_id in ids:
        assert await _history(w, flag_id) == ("open", [])

    done = await _confirmed(browser, asked)
    assert done.status_code == 303
    assert done.headers["location"] == QUEUE
    assert "已更新 2 条预警" in (await browser.get(QUEUE)).text
    for flag_id in two:
        assert await _history(w, flag_id) == ("dismissed", ["<b>till</b> error"])
    assert await _history(w, ids[2]) == ("open", [])


async def test_one_flag_or_a_note_alone_is_not_asked_about(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    w = await world(admin)
    ids = await _resold(w, range(51, 54))
    queue = await _queue(browser, w["inv"].key)
    one = await _bulk(browser, queue, ids[:1], "confirmed")
    assert one.status_code == 303
    assert await _history(w, ids[0]) == ("confirmed", [None])
    noted = await _bulk(browser, queue, ids[1:], "", note="seen")
    assert noted.status_code == 303
    for flag_id in ids[1:]:
        assert await _history(w, flag_id) == ("open", ["seen"])


async def test_taking_several_flags_into_investigation_is_asked_about_in_english_too(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """Every change of status of many flags is asked about, not only closing ones: what
    a person sets is never undone by an automatic clear, and a pending flag cannot be
    made pending again."""
    w = await world(admin)
    ids = await _resold(w, range(61, 63))
    queue = await _queue(browser, w["inv"].key, "en")
    asked = await _bulk(browser, queue, ids, "investigating")
    assert asked.status_code == 200
    assert "These 2 flags will be set to investigating:" in asked.text
    assert "Go back without changing anything" in asked.text
    assert "Confirm: set 2 flags to investigating" in asked.text
    for flag_id in ids:
        assert await _history(w, flag_id) == ("open", [])
    assert (await _confirmed(browser, asked)).status_code == 303
    for flag_id in ids:
        assert (await _history(w, flag_id))[0] == "investigating"


async def test_a_confirmation_that_is_not_ascii_text_is_asked_about_again(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """A crafted confirmation field (text beyond ASCII) confirms nothing: the page asks
    again, as for any other confirmation of other choices (it was a 500)."""
    w = await world(admin)
    ids = await _resold(w, range(71, 73))
    queue = await _queue(browser, w["inv"].key)
    for forged in ("é", "\u00e9" * 64, "１２"):
        asked = await _bulk(browser, queue, ids, "dismissed", confirm=forged)
        assert asked.status_code == 200, asked.text
        assert "<h1>确认批量变更</h1>" in asked.text
    for flag_id in ids:
        assert await _history(w, flag_id) == ("open", [])


async def test_a_confirmation_asked_of_another_key_changes_nothing_and_asks_again(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """A confirmation is bound to the key signed in when it was asked: a page opened
    under key A, sent after signing in as B in the same browser, changes nothing; the page
    asks B again, saying why, and B's own confirmation is taken."""
    w = await world(admin)
    ids = await _resold(w, range(81, 83))
    other = await admin.key_for("investigator")
    queue = await _queue(browser, w["inv"].key)
    asked = await _bulk(browser, queue, ids, "dismissed")
    assert asked.status_code == 200
    assert "此确认已失效" not in asked.text
    await _sign_in(browser, other.key)
    again = await _confirmed(browser, asked)
    assert again.status_code == 200, again.text
    assert "<h1>确认批量变更</h1>" in again.text
    assert "此确认已失效（选择有变、已换用其他密钥登录，或已超过 15 分钟）" in again.text
    for flag_id in ids:
        assert await _history(w, flag_id) == ("open", [])
    assert (await _confirmed(browser, again)).status_code == 303
    for flag_id in ids:
        stored = await w["inv"].ok("GET", f"/v1/flags/{flag_id}")
        assert [(h["status"], h["by_key"]) for h in stored["history"]] == [
            ("dismissed", other.key.split(".")[0])
        ]


async def test_a_confirmation_older_than_fifteen_minutes_changes_nothing_and_asks_again(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A confirmation page left open for longer than 15 minutes asks again (what the
    person saw may no longer be so); one sent in time is taken."""
    w = await world(admin)
    ids = await _resold(w, range(91, 93))
    queue = await _queue(browser, w["inv"].key, "en")
    asked = await _bulk(browser, queue, ids, "confirmed")
    issued = int(time.time())
    monkeypatch.setattr(pages, "_now", lambda: issued + 15 * 60 + 1, raising=False)
    again = await _confirmed(browser, asked)
    assert again.status_code == 200, again.text
    assert "That confirmation no longer holds" in again.text
    assert "older than 15 minutes" in again.text
    for flag_id in ids:
        assert await _history(w, flag_id) == ("open", [])
    # the page asked again: its confirmation holds for 15 minutes from then
    monkeypatch.setattr(pages, "_now", lambda: issued + 2 * 15 * 60, raising=False)
    assert (await _confirmed(browser, again)).status_code == 303
    for flag_id in ids:
        assert (await _history(w, flag_id))[0] == "confirmed"


async def test_the_confirmation_page_comes_back_to_its_queue_after_signing_in_or_switching_language(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
    server_urls: tuple[str, str],
) -> None:
    """The confirmation page answers a POST: its address takes no GET. Its language
    switch went to ``GET /console/flags/bulk`` (a 405 page), and so did signing in again
    after its session ended, the notice that the change was not saved lost (a probe).
    Both come back to the queue it was asked from."""

    from tests.integration.test_console_session_end import AGAIN

    w = await world(admin)
    ids = await _resold(w, range(95, 97))
    queue = await _queue(browser, w["inv"].key)
    asked = await _bulk(browser, queue, ids, "dismissed")
    assert "<h1>确认批量变更</h1>" in asked.text
    lang = _fields(asked.text, "/console/lang")
    assert lang["next"] == [QUEUE]
    switched = await browser.post(
        "/console/lang", data={k: v[0] for k, v in lang.items()}, follow_redirects=False
    )
    assert switched.headers["location"] == QUEUE
    browser.cookies.set("console_lang", "zh", path="/console")

    await _expire_session(browser, server_urls[1])  # the session expires in Valkey
    lost = await browser.post(
        BULK,
        data=_fields(asked.text, BULK),
        headers={"referer": f"http://testserver.local{BULK}"},  # the confirmation's address
        follow_redirects=False,
    )
    assert lost.status_code == 303
    assert lost.headers["location"] == "/console/signin?" + urlencode({"next": QUEUE})
    signin = await browser.get(lost.headers["location"])
    back = await browser.post(
        "/console/signin",
        data={"key": w["inv"].key, **_fields(signin.text, "/console/signin")},
        follow_redirects=False,
    )
    assert back.headers["location"] == QUEUE
    landed = await browser.get(QUEUE)
    assert landed.status_code == 200
    assert AGAIN in landed.text  # the change was not saved: send it again
    for flag_id in ids:
        assert await _history(w, flag_id) == ("open", [])
