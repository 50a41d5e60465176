"""A change sent after the session ended (expired, the key revoked) saves nothing; the
sign-in page says so, and so does the page signing in goes back to (found by a probe: the
investigator signed in again, landed on the page, and nothing said the change was lost).
A live stream asked for without a session says, as a stream, that the session ended."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from litestar.testing import AsyncTestClient

from tests.helpers import Api
from tests.integration.console_story import journey
from tests.integration.test_console import _TOKEN, _expire_session, _sign_in, browser  # noqa: F401 - the fixture

pytestmark = pytest.mark.asyncio(loop_scope="session")

UNSAVED = "您刚才提交的更改未保存"
UNSAVED_EN = "The change you just submitted was not saved"
AGAIN = "登录前提交的更改未保存，请在此页重新提交。"


async def test_a_flag_change_sent_after_the_session_expired_says_it_was_not_saved(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
    server_urls: tuple[str, str],
) -> None:
    w = await journey(admin)
    flag_id = w["open_flags"][0]
    flag_page = f"/console/flags/{flag_id}"
    await _sign_in(browser, w["inv"].key)
    token = _TOKEN.search((await browser.get(flag_page)).text).group(1)  # type: ignore[union-attr]
    await _expire_session(browser, server_urls[1])  # the session expires in Valkey
    lost = await browser.post(
        flag_page,
        data={"status": "confirmed", "note": "a long careful note", "_csrf_token": token},
        headers={"referer": f"http://testserver.local{flag_page}"},
        follow_redirects=False,
    )
    assert lost.status_code == 303
    signin = await browser.get(lost.headers["location"])
    assert UNSAVED in signin.text
    assert "会话已结束" in signin.text
    # a wrong key typed: still said
    refused = await browser.post(
        "/console/signin",
        data={"key": "nonsense", "next": flag_page, "_csrf_token": _TOKEN.search(signin.text).group(1)},  # type: ignore[union-attr]
        follow_redirects=False,
    )
    assert refused.status_code == 401
    assert UNSAVED in refused.text
    back = await browser.post(
        "/console/signin",
        data={"key": w["inv"].key, "next": flag_page, "_csrf_token": _TOKEN.search(refused.text).group(1)},  # type: ignore[union-attr]
        follow_redirects=False,
    )
    assert back.headers["location"] == flag_page
    landed = await browser.get(flag_page)
    assert f'<p class="error" role="alert">{AGAIN}</p>' in landed.text
    assert AGAIN not in (await browser.get(flag_page)).text  # said once
    assert UNSAVED not in (await browser.get("/console/signin")).text  # and no more there
    stored = await w["inv"].ok("GET", f"/v1/flags/{flag_id}")
    assert (stored["status"], stored["history"]) == ("open", [])


async def test_a_bulk_change_sent_with_a_revoked_key_says_it_was_not_saved_in_english_too(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    w = await journey(admin)
    out = await admin.ok("POST", "/v1/keys", {"role": "investigator"}, 201)
    await _sign_in(browser, out["secret"])
    browser.cookies.set("console_lang", "en", path="/console")
    queue = "/console/flags?status=open"
    token = _TOKEN.search((await browser.get(queue)).text).group(1)  # type: ignore[union-attr]
    await admin.ok("DELETE", f"/v1/keys/{out['key_id']}")
    lost = await browser.post(
        "/console/flags/bulk",
        data={"flag_id": w["open_flags"], "status": "dismissed", "next": queue, "_csrf_token": token},
        headers={"referer": f"http://testserver.local{queue}"},
        follow_redirects=False,
    )
    signin = await browser.get(lost.headers["location"])
    assert UNSAVED_EN in signin.text
    assert "Your session has ended" in signin.text
    for flag_id in w["open_flags"]:
        assert (await w["inv"].ok("GET", f"/v1/flags/{flag_id}"))["status"] == "open"


async def test_signing_out_or_opening_a_page_without_a_session_loses_nothing_and_says_nothing_of_it(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    inv = await admin.key_for("investigator")
    await _sign_in(browser, inv.key)
    token = _TOKEN.search((await browser.get("/console/codes")).text).group(1)  # type: ignore[union-attr]
    browser.cookies.delete("console_session")  # the cookie expired in the browser
    out = await browser.post("/console/signout", data={"_csrf_token": token}, follow_redirects=False)
    assert out.status_code == 303
    assert UNSAVED not in (await browser.get(out.headers["location"])).text
    away = await browser.get("/console/flags", follow_redirects=False)
    assert UNSAVED not in (await browser.get(away.headers["location"])).text


async def test_a_live_stream_without_a_session_says_it_has_ended(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
    server_urls: tuple[str, str],
) -> None:
    """The queue's EventSource, reconnecting after its session ended, got a redirect to
    the sign-in page: to the browser only an error, and the page said nothing (a probe)."""
    for live in ("/console/flags/live?kind=DUPLICATE", "/console/flags/pending/live"):
        answer = await browser.get(live, follow_redirects=False)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert "event: ended\r\ndata: ended" in answer.text, answer.text
    # one whose session has gone: the sign-in page it links to says the session ended
    inv = await admin.key_for("investigator")
    await _sign_in(browser, inv.key)
    await _expire_session(browser, server_urls[1])  # the session expires in Valkey
    answer = await browser.get("/console/flags/live", follow_redirects=False)
    assert "event: ended" in answer.text
    assert "会话已结束" in (await browser.get("/console/signin?next=%2Fconsole%2Fflags")).text


async def _session_ttl(server_urls: tuple[str, str], session_id: str, set_to: int | None = None) -> int:
    """The session's seconds left in Valkey (after setting them to ``set_to``)."""
    valkey = aioredis.from_url(server_urls[1])
    try:
        if set_to is not None:
            assert await valkey.expire(f"console:{session_id}", set_to)
        return int(await valkey.ttl(f"console:{session_id}"))
    finally:
        await valkey.aclose()


async def test_a_live_stream_renews_no_session_and_ends_when_it_expires(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
    server_urls: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each (re)connect of the queue's stream wrote the session with a fresh expiry: a
    workstation left with the queue open (its browser reconnecting every 10 minutes)
    stayed signed in for ever (a probe). Only a person's requests extend it now; the
    stream ends, saying so, once the session has expired."""
    from service.console import pages

    monkeypatch.setattr(pages, "LIVE_RECHECK_SECONDS", 0.2)
    monkeypatch.setattr(pages, "LIVE_MAX_SECONDS", 1)  # then the browser would reconnect
    inv = await admin.key_for("investigator")
    await _sign_in(browser, inv.key)
    session_id = browser.cookies.get("console_session")
    assert session_id
    assert await _session_ttl(server_urls, session_id) > 8 * 3600 - 60
    await _session_ttl(server_urls, session_id, set_to=100)  # 8 hours less 100 s have passed
    for live in ("/console/flags/live?kind=DUPLICATE", "/console/flags/pending/live"):
        answer = await browser.get(live)
        assert answer.status_code == 200
        assert "event: ended" not in answer.text  # still signed in
        assert "console_session" not in answer.headers.get("set-cookie", "")
        assert await _session_ttl(server_urls, session_id) <= 100
    # a page the person opens extends it
    assert (await browser.get("/console/flags")).status_code == 200
    assert await _session_ttl(server_urls, session_id) > 8 * 3600 - 60

    # the session expires while the stream is open: the stream says so, and ends
    monkeypatch.setattr(pages, "LIVE_MAX_SECONDS", 20)
    await _session_ttl(server_urls, session_id, set_to=2)
    answer = await browser.get("/console/flags/live")
    assert answer.text.endswith("event: ended\r\ndata: ended\r\n\r\n"), answer.text
    assert await _session_ttl(server_urls, session_id) < 0  # gone, not written again
