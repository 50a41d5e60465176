"""Under /console every error is a page in the reader's language with the console's
security headers, its status as the API would answer it; the API's problems unchanged."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.config import Settings
from tests.helpers import Api
from tests.integration.conftest import own_postgres
from tests.integration.test_console import _TOKEN, _sign_in, browser  # noqa: F401 - the fixture

pytestmark = pytest.mark.asyncio(loop_scope="session")


def assert_console_page(answer: object, status: int, says: str) -> None:
    """An HTML page saying ``says``, with the headers every console page has."""
    headers = answer.headers  # type: ignore[attr-defined]
    assert answer.status_code == status, (answer.status_code, answer.text)  # type: ignore[attr-defined]
    assert headers["content-type"].startswith("text/html"), headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"
    assert says in answer.text  # type: ignore[attr-defined]


async def test_console_errors_are_pages_with_the_consoles_headers(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """Found by a probe: these reached the browser as application/problem+json, and they
    and the CSRF refusal's page lacked the security headers."""
    assert_console_page(await browser.get("/console/nope"), 404, "没有此页面")  # not signed in
    inv = await admin.key_for("investigator")
    await _sign_in(browser, inv.key)
    assert_console_page(await browser.get("/console/nope/deeper"), 404, "没有此页面")
    assert_console_page(await browser.get("/console/flags/abc"), 404, "没有此页面")
    assert_console_page(await browser.get("/console/codes?q=a%00b"), 400, "请求无法处理")
    for method in ("PUT", "HEAD", "DELETE"):
        refused = await browser.request(method, "/console/flags")
        assert_console_page(refused, 405, "此页面不接受这种请求" if method != "HEAD" else "")
        assert "GET" in refused.headers["allow"]
    forged = await browser.post("/console/flags/bulk", data={"status": "open"})
    assert_console_page(forged, 403, "请求被拒绝")
    browser.cookies.set("console_lang", "en", path="/console")
    assert_console_page(await browser.get("/console/nope"), 404, "No such page.")
    # the API answers as it did
    api = await admin.get("/v1/nope")
    assert api.status_code == 404
    assert api.headers["content-type"].startswith("application/problem+json")


async def test_valkey_away_is_a_503_page(settings: Settings, admin: Api) -> None:
    """The console keeps its sessions in Valkey: with Valkey away, a page that needs the
    session is a 503 page that says so (it was problem+json)."""
    away = replace(settings, redis_url="redis://127.0.0.1:9/0")  # nothing listens there
    async with AsyncTestClient(app=create_app(away)) as client:
        client.cookies.set("console_session", "a" * 32, path="/console")
        answer = await client.get("/console/codes")
        assert_console_page(answer, 503, "Valkey")
        assert int(answer.headers["retry-after"]) > 0


async def test_postgresql_away_is_a_503_page(settings: Settings) -> None:
    """A PostgreSQL of this test's own, stopped under a signed-in console."""
    from service.cli import _create_key
    from service.embedded import stop_postgres

    # no Redis: the sessions are kept in memory, the feed stays out of it
    async with (
        own_postgres("tracecode-console-outage-") as (root, url),
        AsyncTestClient(app=create_app(replace(settings, database_url=url, redis_url=None))) as client,
    ):
        _, secret = await _create_key(url, "investigator", None)
        await _sign_in(client, secret)
        assert (await client.get("/console/flags")).status_code == 200
        await asyncio.to_thread(stop_postgres, root)
        answer = await client.get("/console/flags")
        assert_console_page(answer, 503, "数据库不可用")
        assert int(answer.headers["retry-after"]) > 0


async def test_an_error_page_no_route_took_has_the_header_when_signed_in(
    admin: Api,
    browser: AsyncTestClient,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    """A page that does not exist and a method a page does not take fail before any
    middleware: their pages showed no navigation, language switch, key or sign-out,
    signed in or not (a probe). Signed in, they show the header every page has, and its
    forms work."""
    inv = await admin.key_for("investigator")
    signed_out = await browser.get("/console/nope")
    assert 'action="/console/signout"' not in signed_out.text
    await _sign_in(browser, inv.key)
    key_id = inv.key.split(".")[0]
    for answer in (await browser.get("/console/nope/deeper"), await browser.put("/console/flags")):
        assert answer.status_code in (404, 405)
        assert_console_page(answer, answer.status_code, "出错了")
        assert '<nav aria-label="main">' in answer.text
        assert f"已登录：<bdi>{key_id}</bdi>（调查员）" in answer.text
        assert 'action="/console/signout"' in answer.text
        assert 'action="/console/lang"' in answer.text
    # its forms carry the CSRF token: switching language and signing out work from it
    page = (await browser.get("/console/nope")).text
    token = _TOKEN.search(page).group(1)  # type: ignore[union-attr]
    switched = await browser.post(
        "/console/lang",
        data={"_csrf_token": token, "lang": "en", "next": "/console/nope"},
        follow_redirects=False,
    )
    assert switched.status_code == 303
    assert "Signed in:" in (await browser.get("/console/nope")).text
    out = await browser.post("/console/signout", data={"_csrf_token": token}, follow_redirects=False)
    assert out.status_code == 303
    assert 'action="/console/signout"' not in (await browser.get("/console/nope")).text
