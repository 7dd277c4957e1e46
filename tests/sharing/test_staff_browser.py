"""A member of staff in Chromium: search a patient, issue a cloud film, see the link and the
code, print the card, revoke the film; the patient's link then gives the 410 page.

Debian's chromium through Playwright, a desktop viewport, a live server on loopback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from share_support import People, token_of

from cloudfilm.sharing.links import ShareLinks, ShareState, utcnow

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]  # fmt: skip
DESK = {"width": 1280, "height": 900}


def test_search_issue_print_and_revoke(origin: str, people: People, links: ShareLinks) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    dialogs: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            context = browser.new_context(viewport=DESK, locale="zh-CN")
            page = context.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
            page.goto(f"{origin}/staff/")
            assert page.locator("h1").inner_text() == "查找检查"
            page.fill("input[name=name]", "张三")
            page.fill("input[name=date_from]", "2026-01-01")
            page.click("#search-submit")
            rows = page.locator("#study-results tbody tr")
            assert rows.count() == 1  # A's newer study only
            name = rows.first.locator(".patient-name")
            assert "<script>alert(1)</script>" in name.inner_text()  # text, never run
            name.click()
            page.wait_for_url(f"**/staff/studies/{people.a1.study}")
            assert page.locator("#study-accession").inner_text() == "ACC-A1"
            page.select_option("#expires", "90d")
            page.check("input[name=protection][value=code]")
            page.check("input[name=download]")
            page.uncheck("input[name=reshare]")
            page.fill("#label", "门诊 front desk")
            page.click("#issue-submit")
            page.wait_for_selector("#issued")
            assert page.locator("h1").inner_text() == "云胶片已签发"
            link = page.locator("#issued-link").inner_text()
            code = page.locator("#issued-code").inner_text()
            info = links.find(token_of(link))
            assert info is not None and info.study_uids == (people.a1.study,)
            assert info.permissions == {"view", "download"} and info.label == "门诊 front desk"
            assert links.verify(info, code)
            assert (info.expires_at - utcnow()).days in (89, 90)
            assert page.locator(".share-qr").evaluate("img => img.naturalWidth") > 0
            card = page.locator("#card-pdf").get_attribute("href")
            assert card == f"/api/shares/{info.id}/card.pdf"
            pdf = context.request.get(f"{origin}{card}")
            assert pdf.status == 200 and pdf.body().startswith(b"%PDF-")

            page.click("#nav-shares")
            row = page.locator(f"#share-{info.id}")
            assert row.get_attribute("data-state") == "active"
            row.locator("button.danger").click()  # asks first (staff.js), then revokes
            page.wait_for_selector(f"#share-{info.id}[data-state=revoked]")
            assert dialogs and "撤回" in dialogs[0]
            assert links.get(info.id).state(utcnow()) is ShareState.REVOKED
            assert page.locator(f"#share-{info.id} button.danger").count() == 0

            gone = page.goto(f"{origin}/s/{token_of(link)}")
            assert gone is not None and gone.status == 410
            assert page.locator("h1").inner_text() == "此链接已撤回"
        finally:
            browser.close()
