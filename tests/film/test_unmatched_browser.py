"""An unmatched printed film, end to end: a modality (pynetdicom) sends two studies at once
and prints a sheet over DICOM Print Management; a technologist signs in in Chromium, finds
the sheet on the unmatched-films page with its preview and the two candidates, attaches it,
and sees it in the study and first on the patient's cloud film page.

Debian's chromium through Playwright; the DIMSE server and the web server live on loopback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "dimse"))
sys.path.insert(0, str(Path(__file__).parents[1] / "sharing"))

from share_support import ThreadServer
from test_dimse_print import PrintJob, pattern, run_print, send_study
from unmatched_support import PASSWORD, make_hospitals

from cloudfilm.api.app import create_app
from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.dimse import DimseServer
from cloudfilm.film.printed import printed_film, unmatched_films
from cloudfilm.film.sheets import FILM_SERIES, film_sheets
from cloudfilm.sharing.links import ShareLinks, ShareRequest

pytestmark = [pytest.mark.db, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]  # fmt: skip
DESK = {"width": 1280, "height": 900}


@pytest.fixture
def site(archive: Archive, settings: Settings) -> Iterator[tuple[str, int, Settings]]:
    """A production web server and a DIMSE server on the archive: (origin, DIMSE port)."""
    production = settings.model_copy(update={"env": "production", "secret_key": "y" * 40})
    make_hospitals(archive, production)  # CT-A1 of hospital A may store and print
    dimse = DimseServer(archive, host="127.0.0.1", port=0, ae_title="CLOUDFILM")
    dimse.start()
    web = ThreadServer(create_app(production, archive))
    try:
        yield web.origin, dimse.port, production
    finally:
        web.stop()
        dimse.stop()


def test_print_unmatched_then_attach_in_the_browser(
    site: tuple[str, int, Settings], archive: Archive
) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    origin, port, settings = site
    earlier = send_study(port, "CT-A1", seed=81, accession="ACC-81")
    later = send_study(port, "CT-A1", seed=82, accession="ACC-82")  # at once: ambiguous
    job = PrintJob([pattern(0), pattern(1)], "STANDARD\\2,1")
    assert run_print(port, job, "CT-A1").statuses["print"] == 0x0000
    (waiting,) = unmatched_films(archive)
    assert set(waiting.candidates) == {earlier, later}

    dialogs: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            context = browser.new_context(viewport=DESK, locale="zh-CN")
            page = context.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
            page.goto(f"{origin}/staff/")
            page.wait_for_url("**/staff/signin?next=*")
            page.fill("#username", "tech-a")
            page.fill("#password", PASSWORD)
            page.click("#signin-submit")
            page.wait_for_url(f"{origin}/staff/")
            page.click("#nav-films")
            page.wait_for_url(f"{origin}/staff/films/unmatched")
            assert page.locator("h1").inner_text() == "未匹配的打印胶片"
            film = page.locator(f"#film-{waiting.id}")
            assert film.locator(".film-ae").inner_text() == "CT-A1"
            preview = film.locator(f"#film-{waiting.id}-preview")
            preview.scroll_into_view_if_needed()
            page.wait_for_function(
                "id => { const i = document.getElementById(id);"
                " return i.complete && i.naturalWidth > 0; }",
                arg=f"film-{waiting.id}-preview",
            )
            width, height = preview.evaluate("i => [i.naturalWidth, i.naturalHeight]")
            assert height > width  # a portrait 14×17 in sheet
            rows = film.locator("table.suggestions tbody tr")
            assert rows.count() == 2
            uids = [rows.nth(i).get_attribute("data-study-uid") for i in range(2)]
            assert set(uids) == {earlier, later}
            assert all("打印时的候选" in rows.nth(i).inner_text() for i in range(2))
            film.locator(f"tr[data-study-uid='{later}'] input[type=radio]").check()
            page.click(f"#film-{waiting.id}-attach")  # asks first (staff.js), then attaches
            page.wait_for_selector("#attached-notice")
            assert dialogs and "关联" in dialogs[0]
            assert page.locator("#no-films").count() == 1  # nothing waits any more
            page.click("#attached-study")
            page.wait_for_url(f"{origin}/staff/studies/{later}")
            assert FILM_SERIES in page.locator("#series-table").inner_text()
            (sheet,) = film_sheets(archive, later)
            assert printed_film(archive, waiting.id).attached_study_uid == later
            assert film_sheets(archive, earlier) == []

            # the patient's cloud film page shows the film sheet first
            issued = ShareLinks(archive, settings).issue(
                ShareRequest(study_uids=[later], secret="none")
            )
            patient = browser.new_context(viewport={"width": 390, "height": 844})
            phone = patient.new_page()
            phone.goto(f"{origin}/s/{issued.token}")
            first = phone.locator(".series-list .thumb").first
            assert first.get_attribute("data-series") == sheet.series_uid
            assert FILM_SERIES in first.inner_text()
        finally:
            browser.close()
