"""The cloud film card: masked names, PDF text, QR codes that scan to exactly the link."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pypdf
import pytest
import zxingcpp
from PIL import Image

from cloudfilm.core.errors import NotFound
from cloudfilm.sharing import card
from cloudfilm.sharing.card import (
    CardFontMissing,
    CardInfo,
    card_response,
    find_card_font,
    mask_name,
    render_card_pdf,
    render_card_png,
)

URL = "https://films.example-hospital.cn/s/Yq3mZ0b-9dXv2LkP7sWq_A"
INFO = CardInfo(
    hospital="北京协和医院 放射科",
    patient_name="Zhang^Xiaosan=张^小三",
    exam="胸部 CT 平扫",
    modality="CT",
    study_date="20240501",
    url=URL,
    access_code="482913",
    expires_at=datetime(2026, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=8))),
)

try:
    find_card_font()
    FONT_MISSING = ""
except CardFontMissing as exc:
    FONT_MISSING = exc.message
needs_font = pytest.mark.skipif(bool(FONT_MISSING), reason=FONT_MISSING)


@pytest.mark.parametrize(
    ("name", "masked"),
    [
        ("张三", "张*"),
        ("张小三", "张*三"),
        ("欧阳小明", "欧**明"),
        ("张", "*"),
        ("张^三", "张*"),
        ("欧阳^小明", "欧**明"),
        ("Zhang^San=张^三", "张*"),
        ("Zhang^San=张^三=zhāng^sān", "张*"),
        ("Zhang^San", "Z**** S**"),
        ("John Smith", "J*** S****"),
        ("Smith^John", "S**** J***"),
        ("Smith^John^Paul^Dr.^Jr.", "S**** J*** P***"),
        ("Mary-Jane^O'Neil", "M***-J*** O'N***"),
        ("阿不都·热合曼", "阿**·**曼"),
        ("=李^四", "李*"),
        ("Wang^Fang^^^", "W*** F***"),
        ("", ""),
        (None, ""),
        ("^^^", ""),
    ],
)
def test_mask_name(name: str | None, masked: str) -> None:
    assert mask_name(name) == masked


def _pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(data)).pages)


def _decode(image: Image.Image) -> list[str]:
    return [code.text for code in zxingcpp.read_barcodes(image)]


def _render_pdf_page(data: bytes, folder: Path) -> Image.Image:
    if shutil.which("pdftoppm") is None:
        message = "needs pdftoppm (Debian package poppler-utils) to render the card"
        if os.environ.get("CLOUDFILM_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    (folder / "card.pdf").write_bytes(data)
    subprocess.run(
        ["pdftoppm", "-r", "150", "-png", "-singlefile", str(folder / "card.pdf"),
         str(folder / "page")], check=True,
    )  # fmt: skip
    return Image.open(folder / "page.png")


@needs_font
def test_pdf_holds_the_card_text(tmp_path: Path) -> None:
    data = render_card_pdf(INFO)
    reader = pypdf.PdfReader(io.BytesIO(data))
    assert len(reader.pages) == 1
    box = reader.pages[0].mediabox
    assert (round(float(box.width) / 72 * 25.4), round(float(box.height) / 72 * 25.4)) == (148, 210)
    text = _pdf_text(data)
    for expected in ("北京协和医院 放射科", "张*三", "胸部 CT 平扫", "2024-05-01", URL, "482913",
                     "2026-05-01 14:00 (UTC+08:00)", "提取码", "Access code", "如何查看",
                     "用手机相机或微信扫描二维码", "Scan the QR code"):  # fmt: skip
        assert expected in text, expected
    assert "小" not in text and "Xiaosan" not in text  # the full name is not on the card
    fonts = reader.pages[0]["/Resources"]["/Font"]
    descendant = next(iter(fonts.values())).get_object()["/DescendantFonts"][0].get_object()
    assert "/FontFile2" in descendant["/FontDescriptor"].get_object()  # embedded TrueType


@needs_font
def test_pdf_qr_code_scans_to_the_link(tmp_path: Path) -> None:
    page = _render_pdf_page(render_card_pdf(INFO), tmp_path)
    assert _decode(page) == [URL]


@needs_font
def test_png_card_scans_to_the_link() -> None:
    image = Image.open(io.BytesIO(render_card_png(INFO)))
    assert image.format == "PNG" and image.width == 1080
    assert abs(image.height / image.width - 210 / 148) < 0.01
    assert _decode(image) == [URL]


@needs_font
def test_long_values_still_fit_one_page(tmp_path: Path) -> None:
    long_url = "https://cloudfilm.regional-health-platform.example.gov.cn/hospital-42/s/" + "A" * 22
    info = replace(
        INFO,
        hospital="Peking Union Medical College Hospital, Department of Radiology " * 3,
        exam="CT chest abdomen pelvis with contrast, low dose, 3D reconstructions " * 4,
        url=long_url,
    )
    data = render_card_pdf(info)
    assert len(pypdf.PdfReader(io.BytesIO(data)).pages) == 1
    assert "…" in _pdf_text(data)  # over-long lines are cut, not spilled
    assert _decode(_render_pdf_page(data, tmp_path)) == [long_url]
    assert _decode(Image.open(io.BytesIO(render_card_png(info)))) == [long_url]


@needs_font
def test_english_card_without_code() -> None:
    info = replace(
        INFO, languages=("en",), access_code=None, expires_at=None, patient_name="Smith^John"
    )
    text = _pdf_text(render_card_pdf(info))
    assert "S**** J***" in text and "No expiry" in text and "identity check" in text
    assert "Access code" not in text and "提取码" not in text and "482913" not in text


@needs_font
def test_expiry_in_utc_and_dicom_dates() -> None:
    info = replace(INFO, expires_at=datetime(2027, 1, 2, 3, 4, tzinfo=UTC), study_date="2024")
    text = _pdf_text(render_card_pdf(info))
    assert "2027-01-02 03:04 (UTC+00:00)" in text and "2024" in text


@needs_font
def test_card_response() -> None:
    pdf = card_response(INFO, "pdf")
    assert pdf.media_type == "application/pdf" and bytes(pdf.body).startswith(b"%PDF-")
    assert pdf.headers["cache-control"] == "no-store, private"
    assert pdf.headers["content-disposition"] == 'inline; filename="cloudfilm-card.pdf"'
    png = card_response(INFO, "png")
    assert png.media_type == "image/png" and bytes(png.body).startswith(b"\x89PNG")
    with pytest.raises(NotFound):
        card_response(INFO, "svg")


def test_missing_or_unsuitable_fonts_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CardFontMissing, match="not a file"):
        find_card_font(Path("/nonexistent/font.ttf"))
    latin = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    if latin.is_file():
        with pytest.raises(CardFontMissing, match="no Chinese"):
            find_card_font(latin)
    monkeypatch.setattr(card, "FONT_CANDIDATES", (Path("/nonexistent/a.ttc"),))
    with pytest.raises(CardFontMissing, match="fonts-wqy-microhei"):
        find_card_font()


def test_card_info_is_checked() -> None:
    with pytest.raises(ValueError):
        replace(INFO, languages=("fr",))
    with pytest.raises(ValueError):
        replace(INFO, url="")
