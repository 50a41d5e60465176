"""What an investigator reads on every page and on a flag's or organisation's: who is
signed in, when a pending flag opens, an organisation's kind in the reader's language
(a probe of the console found each missing)."""

from __future__ import annotations

import re

import pytest
from litestar.testing import AsyncTestClient

from tests.helpers import Api, world
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
