"""The viewer in Chromium on a phone-sized page: images, gestures, tools, film, saving.

What the canvas shows is read back as pixels and compared with the server's own rendering
(WADO-RS /rendered of the same frame with the same window): the correlation must be at least
0.99. Touch gestures are sent through the DevTools protocol (Input.dispatchTouchEvent), as a
phone's touch screen would.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image
from viewer_support import HOSTILE_NAME, SR_FINDING, SR_IMPRESSION, Live

pytestmark = pytest.mark.db

VIEWER = "#viewer"


# ----------------------------------------------------------------------------- helpers


def open_viewer(page: Any, live: Live, study: str, lang: str = "en") -> dict[str, Any]:
    page.goto(f"{live.origin}/viewer/studies/{study}?lang={lang}")
    page.wait_for_selector(f"{VIEWER}[data-first-image]")
    page.locator(VIEWER).evaluate("node => node.scrollIntoView()")  # below the report
    return state(page)


def state(page: Any) -> dict[str, Any]:
    settle(page)
    return dict(page.evaluate("() => window.cloudfilmViewer.state()"))


def wait_state(page: Any, **expected: str) -> None:
    selector = VIEWER + "".join(f'[data-{k.replace("_", "-")}="{v}"]' for k, v in expected.items())
    page.wait_for_selector(selector, timeout=30_000)


def settle(page: Any) -> None:
    """Wait until the page has painted what the last action asked for (two frames)."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def canvas_pixels(page: Any, selector: str = ".viewer-image") -> np.ndarray:
    settle(page)
    url = page.evaluate(f"() => document.querySelector('{selector}').toDataURL('image/png')")
    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64)


def _visible_box(rect: dict[str, float], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Canvas pixels covered by the image, one pixel in from its edges: x0, y0, x1, y1."""
    x0, y0 = max(round(rect["x"]) + 1, 0), max(round(rect["y"]) + 1, 0)
    x1 = min(round(rect["x"] + rect["w"]) - 1, shape[1])
    y1 = min(round(rect["y"] + rect["h"]) - 1, shape[0])
    return x0, y0, x1, y1


def shown_image(page: Any) -> np.ndarray:
    """The part of the canvas covered by the image."""
    rect = state(page)["rect"]
    pixels = canvas_pixels(page)
    x0, y0, x1, y1 = _visible_box(rect, pixels.shape)
    return pixels[y0:y1, x0:x1]


def server_image(live: Live, page: Any, window: str | None) -> np.ndarray:
    """The server's /rendered of the frame on screen, scaled and cut as the canvas shows it."""
    s = state(page)
    study = page.get_attribute(VIEWER, "data-study")
    series = page.get_attribute(VIEWER, "data-series")
    config = page.evaluate("() => JSON.parse(document.getElementById('viewer-config').textContent)")
    listed = [se for st in config["studies"] for se in st["series"] if se["uid"] == series]
    slices = [(sop, f) for sop, frames in listed[0]["instances"] for f in range(1, frames + 1)]
    sop, frame = slices[s["shownIndex"]]
    url = (
        f"{live.origin}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        f"/frames/{frame}/rendered"
    )
    params = {"accept": "image/png"} | ({"window": window} if window else {})
    response = requests.get(url, params=params, timeout=30)
    response.raise_for_status()
    rect = s["rect"]
    image = Image.open(io.BytesIO(response.content)).convert("L")
    scaled = image.resize((round(rect["w"]), round(rect["h"])), Image.Resampling.BILINEAR)
    full = np.asarray(scaled, dtype=np.float64)
    x0, y0, x1, y1 = _visible_box(rect, canvas_pixels(page).shape)
    left, top = x0 - round(rect["x"]), y0 - round(rect["y"])
    return full[top : top + y1 - y0, left : left + x1 - x0]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def changed(before: np.ndarray, after: np.ndarray) -> bool:
    return before.shape != after.shape or float(np.abs(before - after).mean()) > 1.0


def gesture(page: Any, moves: list[list[tuple[float, float]]]) -> None:
    """Fingers down at ``moves[0]``, through each following position, then lifted."""
    cdp = page.context.new_cdp_session(page)
    try:
        for step, points in enumerate(moves):
            touches = [{"x": x, "y": y, "id": n} for n, (x, y) in enumerate(points)]
            kind = "touchStart" if step == 0 else "touchMove"
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": touches})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    finally:
        cdp.detach()


def stage_box(page: Any) -> dict[str, float]:
    box = page.locator(".viewer-stage").bounding_box()
    assert box is not None
    return dict(box)


# ------------------------------------------------------------------------------- tests


def test_first_image_matches_the_servers_rendering(page: Any, live: Live) -> None:
    s = open_viewer(page, live, live.demo.ct_study)
    assert s["total"] == 40 and s["shownIndex"] == 19  # the middle slice first
    assert page.locator('[data-ov="slice"]').inner_text() == "Image 20/40"
    assert correlation(shown_image(page), server_image(live, page, None)) >= 0.99
    wait_state(page, state="complete", loaded="40")
    page.locator(VIEWER).focus()
    page.keyboard.press("End")  # a slice loaded in the background, not the preview
    wait_state(page, index="39")
    assert correlation(shown_image(page), server_image(live, page, None)) >= 0.99


def test_scrolling_changes_slice_and_pixels(page: Any, live: Live) -> None:
    open_viewer(page, live, live.demo.ct_study)
    wait_state(page, state="complete")
    label = page.locator('[data-ov="slice"]')
    before = canvas_pixels(page)
    box = stage_box(page)
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, 500)  # ten wheel notches of 50
    wait_state(page, index="29")
    assert label.inner_text() == "Image 30/40"
    after = canvas_pixels(page)
    assert changed(before, after)
    # a swipe up (finger moves towards the top) goes back
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.7
    gesture(page, [[(x, y - step * 12)] for step in range(11)])
    index = int(page.get_attribute(VIEWER, "data-index"))
    assert index < 29
    assert changed(after, canvas_pixels(page))
    # the slider and the keyboard
    page.locator(".viewer-slider").fill("3")
    wait_state(page, index="2")
    assert label.inner_text() == "Image 3/40"
    page.locator(VIEWER).focus()
    page.keyboard.press("ArrowDown")
    wait_state(page, index="3")


def test_presets_and_window_drag_change_pixels(page: Any, live: Live) -> None:
    open_viewer(page, live, live.demo.ct_study)
    wait_state(page, state="complete")
    previous = shown_image(page)
    window_text = page.locator('[data-ov="window"]')
    for value in ("-600,1500", "50,350", "400,1800", "40,80", "60,400"):
        page.select_option(".viewer-preset", value)
        wait_state(page, window=value, quality="full")  # full-fidelity pixels, windowed here
        centre, width = value.split(",")
        assert window_text.inner_text() == f"W {width} L {centre}"
        current = shown_image(page)
        assert changed(previous, current), value
        assert correlation(current, server_image(live, page, value)) >= 0.99, value
        previous = current
    # neighbours get their pixels too: the next slice shows at full quality
    page.locator(VIEWER).focus()
    page.keyboard.press("ArrowDown")
    wait_state(page, index="20", quality="full")
    # a drag with the window tool
    page.click('[data-tool="window"]')
    box = stage_box(page)
    page.mouse.move(box["x"] + 100, box["y"] + 200)
    page.mouse.down()
    page.mouse.move(box["x"] + 220, box["y"] + 120, steps=6)
    page.mouse.up()
    assert window_text.inner_text() != "W 400 L 60"
    assert changed(previous, shown_image(page))
    # back to the image's own window
    page.select_option(".viewer-preset", "auto")
    wait_state(page, window="auto", quality="display")
    assert correlation(shown_image(page), server_image(live, page, None)) >= 0.99


def test_zoom_pan_invert_and_reset(page: Any, live: Live) -> None:
    open_viewer(page, live, live.demo.ct_study)
    wait_state(page, state="complete")
    before = canvas_pixels(page)
    box = stage_box(page)
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    gesture(page, [[(cx - 40 - step * 15, cy), (cx + 40 + step * 15, cy)] for step in range(8)])
    zoomed = state(page)
    assert zoomed["zoom"] > 2
    assert zoomed["rect"]["w"] > box["width"] * 2
    after = canvas_pixels(page)
    assert changed(before, after)
    percent = int(zoomed["zoom"] * 100 + 0.5)  # JS rounds half up
    assert page.locator('[data-ov="zoom"]').inner_text() == f"Zoom {percent}%"
    page.mouse.move(cx, cy)
    page.keyboard.down("Control")
    page.mouse.wheel(0, 300)  # ctrl+wheel (a trackpad pinch) zooms out
    page.keyboard.up("Control")
    assert state(page)["zoom"] < zoomed["zoom"]
    page.click('[data-tool="zoom"]')  # the zoom tool pans by dragging
    moved = state(page)["rect"]
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 60, cy + 30, steps=4)
    page.mouse.up()
    panned = state(page)["rect"]
    assert (round(panned["x"] - moved["x"]), round(panned["y"] - moved["y"])) == (60, 30)
    page.click('[data-action="invert"]')
    inverted = state(page)
    assert inverted["invert"] is True
    page.click('[data-action="reset"]')
    reset = state(page)
    assert reset["zoom"] == 1 and reset["invert"] is False
    assert correlation(canvas_pixels(page), before) >= 0.99


def test_measurement_in_mm_and_uncalibrated(page: Any, live: Live) -> None:
    open_viewer(page, live, live.demo.ct_study)
    wait_state(page, state="complete")
    page.click('[data-tool="measure"]')
    box = stage_box(page)
    s = state(page)
    scale = s["rect"]["w"] / s["imageWidth"]  # canvas pixels per image pixel
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 50, y)
    page.mouse.down()
    page.mouse.move(box["x"] + 50 + 100 * scale, y, steps=5)  # 100 image pixels
    page.mouse.up()
    spacing = float(live.demo.ct[0].PixelSpacing[1])
    assert page.get_attribute(VIEWER, "data-measure") == f"{100 * spacing:.1f} mm"
    # an image without Pixel Spacing says so
    open_viewer(page, live, live.demo.mr_study)
    wait_state(page, state="complete")
    page.click('[data-tool="measure"]')
    page.mouse.move(box["x"] + 50, y)
    page.mouse.down()
    page.mouse.move(box["x"] + 250, y, steps=5)
    page.mouse.up()
    assert "not calibrated" in page.get_attribute(VIEWER, "data-measure")


def test_film_view_and_saving_images(page: Any, live: Live) -> None:
    open_viewer(page, live, live.demo.ct_study)
    wait_state(page, state="complete")
    with page.expect_download() as saved:
        page.click('[data-action="save"]')
    view = Image.open(saved.value.path())
    assert view.format == "PNG"
    assert view.size == tuple(canvas_pixels(page).shape[::-1])
    page.click('[data-action="film"]')
    page.wait_for_selector('.film[data-state="ready"]')
    page.select_option(".film-layout", "4x5")
    page.wait_for_selector('.film[data-state="ready"]')
    assert page.locator(".film-page").inner_text() == "Sheet 1/2"
    sheet = canvas_pixels(page, ".film-sheet")
    assert sheet.shape[1] == 1600
    # 20 cells of images: every cell of the grid holds image content
    header, cell = 64, 1600 // 4
    for row in range(5):
        for col in range(4):
            block = sheet[header + row * cell + 20 : header + (row + 1) * cell - 20,
                          col * cell + 20 : (col + 1) * cell - 20]  # fmt: skip
            assert block.std() > 10, (row, col)
    with page.expect_download() as film:
        page.click('[data-film="save"]')
    assert Image.open(film.value.path()).format == "JPEG"
    page.click('[data-film="next"]')
    page.wait_for_selector('.film[data-state="ready"]')
    assert page.locator(".film-page").inner_text() == "Sheet 2/2"
    page.click('[data-film="close"]')
    assert page.locator(".film").is_hidden()


def test_wechat_gets_a_plain_link_to_the_image(browser: Any, live: Live) -> None:
    agent = (
        "Mozilla/5.0 (Linux; Android 13) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/116.0 Mobile Safari/537.36 MicroMessenger/8.0.47"
    )
    context = browser.new_context(viewport={"width": 390, "height": 844}, user_agent=agent)
    tab = context.new_page()
    try:
        open_viewer(tab, live, live.demo.ct_study, lang="zh")
        tab.click('[data-action="save"]')
        dialog = tab.locator(".saved")
        dialog.wait_for(state="visible")
        href = tab.get_attribute(".saved-link", "href")
        assert href and href.startswith("data:image/png;base64,")
        assert tab.get_attribute(".saved-image", "src") == href
        assert "长按" in dialog.inner_text()
    finally:
        context.close()


def test_hostile_name_is_shown_as_text(page: Any, live: Live) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    open_viewer(page, live, live.demo.mr_study)
    assert page.locator(".patient-name").inner_text() == HOSTILE_NAME.replace("^", " ")
    assert page.locator('[data-ov="patient"]').inner_text() == HOSTILE_NAME.replace("^", " ")
    assert dialogs == []


def test_languages_and_reports(page: Any, live: Live) -> None:
    open_viewer(page, live, live.demo.ct_study, lang="zh")
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    assert page.locator('[data-ov="slice"]').inner_text() == "图像 20/40"
    assert page.locator('[data-tool="window"]').inner_text() == "窗宽窗位"
    report = page.locator(".report-text")
    assert SR_FINDING in report.inner_text() and SR_IMPRESSION in report.inner_text()
    assert report.locator("b").count() == 0  # markup in the SR stays text
    pdf = page.get_attribute(".report-pdf-link", "href")
    answer = page.request.get(live.origin + pdf)
    assert answer.status == 200 and answer.headers["content-type"] == "application/pdf"
    assert answer.body().startswith(b"%PDF-")
    with page.expect_navigation():
        page.click("a.lang-switch")
    page.wait_for_selector(f"{VIEWER}[data-first-image]")
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.locator('[data-ov="slice"]').inner_text() == "Image 20/40"
    assert "Verified" in page.locator(".report").inner_text()


def test_ultrasound_cine_plays_its_frames(page: Any, live: Live) -> None:
    open_viewer(page, live, live.demo.us_study)
    wait_state(page, state="complete")
    assert page.locator('[data-ov="slice"]').inner_text() == "Frame 1/6"  # cine from its start
    assert correlation(shown_image(page), server_image(live, page, None)) >= 0.99
    # every frame drawn while playing, as the page records it (no sampling from outside)
    page.evaluate(
        """() => {
            const viewer = document.getElementById('viewer');
            window.framesSeen = new Set();
            new MutationObserver(() => window.framesSeen.add(viewer.dataset.index))
                .observe(viewer, {attributes: true, attributeFilter: ['data-index']});
        }"""
    )
    page.click('[data-action="cine"]')
    assert page.get_attribute('[data-action="cine"]', "aria-pressed") == "true"
    for _ in range(400):
        if page.evaluate("() => window.framesSeen.size") == 6:
            break
        page.wait_for_timeout(50)
    assert sorted(page.evaluate("() => [...window.framesSeen]")) == [str(n) for n in range(6)]
    page.click('[data-action="cine"]')
    assert page.get_attribute('[data-action="cine"]', "aria-pressed") == "false"


def test_thumbnails_switch_series(page: Any, live: Live) -> None:
    open_viewer(page, live, live.demo.ct_study)
    thumb = page.locator(".thumb").first
    assert thumb.locator("img").evaluate("img => img.complete && img.naturalWidth > 0")
    thumb.click()
    wait_state(page, state="complete")
    assert state(page)["total"] == 40
