"""A phone opens a cloud film link in Chromium: the code page, then the exam; the 410 page.

Debian's chromium through Playwright, phone-sized viewport, a live server on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from share_support import People, ThreadServer, store_people, token_of
from sqlalchemy import update

from cloudfilm.api.app import create_app
from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.index.models import Share
from cloudfilm.sharing.links import ShareLinks, ShareRequest, utcnow

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]  # fmt: skip
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, Archive, People]]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    settings = Settings(data_dir=tmp_path / "data", min_free_bytes=0, storage="file")
    with Archive.open(settings) as archive:
        people = store_people(archive)
        server = ThreadServer(create_app(settings, archive))
        try:
            yield server.origin, archive, people
        finally:
            server.stop()


def test_phone_enters_the_code_and_sees_the_exam(site: tuple[str, Archive, People]) -> None:
    from playwright.sync_api import sync_playwright

    origin, archive, people = site
    links = ShareLinks(archive)
    issued = links.issue(ShareRequest(study_uids=[people.a1.study], secret="code"))
    expired = links.issue(ShareRequest(study_uids=[people.a1.study], secret="code"))
    with archive.sessions.begin() as session:
        session.execute(update(Share).where(Share.id == expired.info.id)
                        .values(expires_at=utcnow() - timedelta(hours=1)))  # fmt: skip
    dialogs: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            context = browser.new_context(viewport=PHONE, locale="zh-CN", is_mobile=True)
            page = context.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            url = f"{origin}/s/{token_of(issued.link)}"
            page.goto(url)
            assert page.locator("h1").inner_text() == "请输入访问码"
            assert page.locator("#answer").get_attribute("inputmode") == "numeric"
            page.fill("#answer", "000000" if issued.code != "000000" else "111111")
            page.click("button[type=submit]")
            assert "访问码不正确" in page.locator("#share-error").inner_text()
            page.fill("#answer", issued.code or "")
            page.click("button[type=submit]")
            page.wait_for_url(url)
            assert "CT chest A1" in page.content()
            name = page.locator(".patient-name").first.inner_text()
            assert "<script>alert(1)</script>" in name  # shown as text, never run
            assert "cloudfilm_share" not in page.evaluate("document.cookie")  # HttpOnly
            cookies = {c["name"]: c for c in context.cookies()}
            assert cookies["cloudfilm_share"]["path"] == f"/s/{token_of(issued.link)}"
            assert cookies["cloudfilm_share"]["sameSite"] == "Lax"
            page.goto(url + "?lang=en")
            assert "CT chest A1" in page.content()
            gone = page.goto(f"{origin}/s/{token_of(expired.link)}")
            assert gone is not None and gone.status == 410
            assert page.locator("h1").inner_text() == "This link has expired"
            assert page.locator("form[action$='/renew']").count() == 1
        finally:
            browser.close()
    assert dialogs == []
