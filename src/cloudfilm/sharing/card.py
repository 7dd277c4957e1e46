"""The cloud film card: the printed A5 handout (PDF) and its picture (PNG), instead of film.

The card shows the hospital, the patient's name partly masked (:func:`mask_name`), the exam and
its date, a QR code of the link, the link printed in full, the access code, the expiry and short
instructions in Chinese and English. One layout (:func:`_layout`, in millimetres) is drawn by two
back ends: fpdf2 for the PDF (A5 portrait, 148 × 210 mm; vector text with the font embedded as
a subset, so the text can be searched and copied; the QR code drawn as vector rectangles) and
Pillow for the PNG (1080 pixels wide, about 185 dpi, QR modules on whole pixels).

Chinese needs a CJK font. fpdf2 embeds TrueType and OpenType/CFF fonts, but a CID-keyed CFF
font (Noto Sans CJK, Debian's ``fonts-noto-cjk``) is written with its own CMap, which pypdf
cannot map back to text; a TrueType CJK font gives an ``Identity-H`` font whose text every
extractor reads. The font is therefore the ``card_font_path`` setting, or the first TrueType
CJK font found among :data:`FONT_CANDIDATES` (Debian ``fonts-wqy-microhei``, then
``fonts-wqy-zenhei``, ``fonts-arphic-uming``); without one the card cannot be made and
:class:`CardFontMissing` says which package to install.
"""

from __future__ import annotations

import io
import re
import threading
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from fastapi import Response
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from fpdf import FPDF

from cloudfilm.core.errors import CloudFilmError, NotFound
from cloudfilm.web.headers import content_disposition
from cloudfilm.web.i18n import LANGUAGES, translator

__all__ = [
    "FONT_CANDIDATES",
    "CardFontMissing",
    "CardInfo",
    "card_response",
    "find_card_font",
    "mask_name",
    "render_card_pdf",
    "render_card_png",
]

#: TrueType CJK fonts from Debian packages, in order of preference.
FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),  # fonts-wqy-microhei
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),  # fonts-wqy-zenhei
    Path("/usr/share/fonts/truetype/arphic/uming.ttc"),  # fonts-arphic-uming
)

PAGE_W, PAGE_H = 148.0, 210.0  # A5 portrait, mm
MARGIN = 12.0
PNG_WIDTH = 1080  # pixels
_PT = 25.4 / 72  # mm per point
_INK = (31, 41, 55)
_MUTED = (100, 110, 125)
_ACCENT = (14, 92, 160)
_WHITE = (255, 255, 255)
_PALE = (232, 241, 250)

Rgb = tuple[int, int, int]


class CardFontMissing(CloudFilmError):
    """No font that can print Chinese is installed or configured."""

    status = 500
    code = "card-font-missing"


@dataclass(frozen=True)
class CardInfo:
    """What a card shows. The caller looks these up; the card only lays them out."""

    hospital: str
    #: The patient's name as stored (a DICOM Person Name, ``^`` and ``=`` allowed); masked.
    patient_name: str | None
    #: Exam description, e.g. the Study Description ("胸部CT平扫").
    exam: str
    modality: str | None
    #: Study date: a date, a DICOM ``YYYYMMDD`` string, or None.
    study_date: date | str | None
    #: The link the QR code holds, printed in full below it.
    url: str
    #: The access code printed on the card, or None (no code, or a patient check instead).
    access_code: str | None
    #: Shown in its own time zone (pass it in the hospital's zone); None: no expiry.
    expires_at: datetime | None
    #: Languages of the labels and instructions, in order (``zh``, ``en``).
    languages: tuple[str, ...] = ("zh", "en")

    def __post_init__(self) -> None:
        if not self.languages or any(lang not in LANGUAGES for lang in self.languages):
            raise ValueError(f"languages must be some of {LANGUAGES}, not {self.languages}")
        if not self.url:
            raise ValueError("a card needs the link")


# ------------------------------------------------------------------------------ masking

_PUNCT = set("·•‧・-‐－.'’ ")


def mask_name(name: str | None) -> str:
    """The patient's name with most letters replaced by ``*``, as printed on the card.

    Chinese (and other CJK) names keep their first and last characters: ``张三`` → ``张*``,
    ``张小三`` → ``张*三``, ``欧阳小明`` → ``欧**明``; a one-character name is fully masked.
    Latin names keep the first letter of each word: ``John Smith`` → ``J*** S****``. DICOM
    Person Names are understood: the ideographic group is preferred to the alphabetic one
    (``Zhang^San=张^三`` → ``张*``), components keep their order (``Smith^John`` →
    ``S**** J***``), and prefixes and suffixes (4th and 5th components) are left out.
    """
    if not name:
        return ""
    groups = name.split("=")
    ordered = groups[1:2] + groups[:1] + groups[2:3]
    chosen = next((g for g in ordered if g.strip("^ ")), "")
    parts = [c.strip() for c in chosen.split("^")[:3] if c.strip()]
    if any(_is_cjk(ch) for part in parts for ch in part):
        return _mask_cjk("".join("".join(part.split()) for part in parts))
    words = [word for part in parts for word in part.split()]
    return " ".join(_mask_word(word) for word in words)


def _is_cjk(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F") and ch.isalpha()


def _mask_cjk(text: str) -> str:
    letters = [i for i, ch in enumerate(text) if ch not in _PUNCT]
    keep = set(letters[:1] + letters[-1:]) if len(letters) > 2 else set(letters[:1])
    if len(letters) < 2:
        keep = set()
    return "".join(ch if i in keep or ch in _PUNCT else "*" for i, ch in enumerate(text))


def _mask_word(word: str) -> str:
    out, first = [], True
    for ch in word:
        if ch in _PUNCT:
            out.append(ch)
            first = True
        elif first:
            out.append(ch)
            first = False
        else:
            out.append("*")
    return "".join(out)


# -------------------------------------------------------------------------------- fonts


@dataclass(frozen=True)
class CardFont:
    path: Path
    #: Face of a TrueType collection (.ttc).
    index: int = 0


def find_card_font(configured: Path | None = None) -> CardFont:
    """The font cards are printed with: ``configured`` (the ``card_font_path`` setting) or the
    first of :data:`FONT_CANDIDATES` that exists. Raises :class:`CardFontMissing`."""
    if configured is not None:
        if not Path(configured).is_file():
            raise CardFontMissing(f"card_font_path {configured} is not a file")
        return _checked_font(Path(configured))
    for candidate in FONT_CANDIDATES:
        if candidate.is_file():
            return _checked_font(candidate)
    raise CardFontMissing(
        "no font that prints Chinese was found for cloud film cards: install the Debian "
        "package fonts-wqy-microhei (or set CLOUDFILM_CARD_FONT_PATH to a TrueType CJK font)"
    )


@cache
def _checked_font(path: Path) -> CardFont:
    """The font's face to use (a Simplified Chinese face of a collection); it must hold CJK."""
    # fontTools, fpdf2 and segno are imported when a card is made: the server should not
    # carry them in memory from its start for a page that is rarely printed.
    from fontTools.ttLib import TTCollection, TTFont

    try:
        if path.suffix.lower() in (".ttc", ".otc"):
            faces = TTCollection(str(path)).fonts
        else:
            faces = [TTFont(str(path), lazy=True)]
    except Exception as exc:
        raise CardFontMissing(f"{path} is not a font file fpdf2 can read: {exc}") from exc
    index = 0
    for i, face in enumerate(faces):
        family = str(face["name"].getDebugName(1) or "")
        if re.search(r"\b(SC|GB|CN)\b", family):
            index = i
            break
    cmap = faces[index].getBestCmap() or {}
    if ord("张") not in cmap or ord("A") not in cmap:
        raise CardFontMissing(f"{path} has no Chinese characters; cards need a CJK font")
    return CardFont(path, index)


@cache
def _measure_font(font: CardFont) -> ImageFont.FreeTypeFont:
    """The font at 1000 pixels per em, to measure advance widths."""
    return ImageFont.truetype(str(font.path), 1000, index=font.index)


#: One FreeType face is shared by the threads that render cards; FreeType faces are not
#: safe to use from two threads at once.
_MEASURE_LOCK = threading.Lock()


def _width(font: CardFont, text: str, size_pt: float) -> float:
    """Advance width of ``text`` at ``size_pt`` points, in millimetres."""
    with _MEASURE_LOCK:
        return _measure_font(font).getlength(text) / 1000 * size_pt * _PT


# ------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Text:
    x: float  # left edge, mm
    y: float  # baseline, mm
    size: float  # points
    text: str
    color: Rgb = _INK


@dataclass(frozen=True)
class _Box:
    x: float
    y: float
    w: float
    h: float
    color: Rgb


@dataclass(frozen=True)
class _Qr:
    x: float
    y: float
    size: float  # side of the symbol with its quiet zone, mm
    matrix: tuple[tuple[int, ...], ...]  # modules with the quiet zone; 1 = dark


_Op = _Text | _Box | _Qr


@dataclass
class _Page:
    font: CardFont
    ops: list[_Op] = field(default_factory=list)
    y: float = 0.0

    def box(self, x: float, y: float, w: float, h: float, color: Rgb) -> None:
        self.ops.append(_Box(x, y, w, h, color))

    def lines(
        self, text: str, size: float, width: float, *, x: float = MARGIN,
        align: Literal["left", "center", "right"] = "left", color: Rgb = _INK,
        leading: float = 1.35, max_lines: int = 0,
    ) -> None:  # fmt: skip
        """Wrap ``text`` into ``width`` mm from the cursor; the cursor moves below it."""
        wrapped = _wrap(self.font, text, size, width)
        if max_lines and len(wrapped) > max_lines:
            wrapped = wrapped[:max_lines]
            wrapped[-1] = _ellipsize(self.font, wrapped[-1], size, width)
        step = size * _PT * leading
        for line in wrapped:
            self.y += step
            offset = width - _width(self.font, line, size)
            left = x + {"left": 0.0, "center": offset / 2, "right": offset}[align]
            self.ops.append(_Text(left, self.y - step * 0.22, size, line, color))


_TOKEN = re.compile(r"[A-Za-z0-9'’\-.,;:!?%()]+|\s+|.")


def _wrap(font: CardFont, text: str, size: float, width: float) -> list[str]:
    """Greedy line breaking: Latin words stay whole, CJK breaks between any characters."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for token in _TOKEN.findall(paragraph):
            if _width(font, line + token, size) <= width:
                line += token
                continue
            if line.strip():
                lines.append(line.rstrip())
            line = "" if token.isspace() else token
            while _width(font, line, size) > width and len(line) > 1:  # a word wider than a line
                cut = len(line) - 1
                while cut > 1 and _width(font, line[:cut], size) > width:
                    cut -= 1
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line.rstrip())
    return [ln for ln in lines if ln] or [""]


def _ellipsize(font: CardFont, line: str, size: float, width: float) -> str:
    while line and _width(font, line + "…", size) > width:
        line = line[:-1]
    return line + "…"


def _label(info: CardInfo, key: str) -> str:
    return " / ".join(translator(lang)(key) for lang in info.languages)


def _study_date(value: date | str | None) -> str:
    if isinstance(value, date):
        return value.isoformat()
    text = (value or "").strip()
    if re.fullmatch(r"\d{8}", text):
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text or "—"


def _expiry(info: CardInfo) -> str:
    if info.expires_at is None:
        return _label(info, "card.no_expiry")
    when = info.expires_at.strftime("%Y-%m-%d %H:%M")
    offset = info.expires_at.utcoffset()
    if offset is None:
        return when
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{when} (UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d})"


def _layout(info: CardInfo, font: CardFont, qr_side: float) -> _Page:
    """Every mark of the card, in millimetres from the top left corner."""
    page = _Page(font)
    width = PAGE_W - 2 * MARGIN
    page.box(0, 0, PAGE_W, 28, _ACCENT)
    page.y = 4.5
    page.lines(info.hospital or " ", 16, width, align="center", color=_WHITE, max_lines=2)
    page.y = max(page.y, 16.5)
    page.lines(_label(info, "card.title"), 10, width, align="center", color=_PALE)
    page.y = 33
    exam = (info.exam or "").strip()
    if info.modality and not exam.upper().startswith(info.modality.upper()):
        exam = f"{info.modality} {exam}".strip()
    rows = (
        ("card.name", mask_name(info.patient_name) or "—"),
        ("card.exam", exam or "—"),
        ("card.date", _study_date(info.study_date)),
    )
    label_w = max(_width(font, _label(info, key), 8.5) for key, _ in rows) + 4
    for key, value in rows:
        top = page.y
        page.lines(_label(info, key), 8.5, label_w, color=_MUTED, leading=1.9)
        page.y = top
        page.lines(value, 12, width - label_w, x=MARGIN + label_w, max_lines=2)
        page.y = max(page.y, top + 8.5 * _PT * 1.9) + 1
    import segno

    matrix = tuple(tuple(row) for row in segno.make(info.url, error="m", micro=False).matrix)
    quiet = ((0,) * (len(matrix) + 8),) * 4
    padded = quiet + tuple((0,) * 4 + row + (0,) * 4 for row in matrix) + quiet
    page.ops.append(_Qr((PAGE_W - qr_side) / 2, page.y + 1, qr_side, padded))
    page.y += qr_side
    page.lines(info.url, 9, width, align="center", color=_ACCENT)
    if info.access_code:
        page.y += 3
        page.box(MARGIN + 14, page.y, width - 28, 14, _PALE)
        top = page.y
        page.y = top + 3.5
        page.lines(_label(info, "card.code"), 8.5, width - 32, x=MARGIN + 16, color=_MUTED)
        page.y = top + 2
        page.lines(info.access_code, 22, width - 32, x=MARGIN + 16, align="right", leading=1.2)
        page.y = top + 14
    page.y += 1
    page.lines(f"{_label(info, 'card.expires')}: {_expiry(info)}", 9, width, align="center")
    _instructions(page, info, width)
    return page


def _instructions(page: _Page, info: CardInfo, width: float) -> None:
    second = "card.step.code" if info.access_code else "card.step.check"
    for lang in info.languages:
        t = translator(lang)
        page.y += 2
        page.lines(t("card.howto"), 9.5, width, color=_ACCENT)
        for number, key in enumerate(("card.step.scan", second, "card.step.download"), 1):
            page.lines(f"{number}. {t(key)}", 8, width, leading=1.3)
    page.y += 1.5
    for lang in info.languages:
        page.lines(translator(lang)("card.privacy"), 7.5, width, color=_MUTED, leading=1.3)


def _fitted_layout(info: CardInfo, font: CardFont) -> _Page:
    """The layout with the largest QR code that lets everything fit on the page."""
    for side in (64.0, 58.0, 52.0, 46.0):
        page = _layout(info, font, side)
        if page.y <= PAGE_H - 6:
            break
    return page


# ------------------------------------------------------------------------------ drawing


def render_card_pdf(info: CardInfo, font_path: Path | None = None) -> bytes:
    """The card as a one-page A5 portrait PDF (vector text and QR code, font subset embedded)."""
    from fpdf import FPDF

    font = find_card_font(font_path)
    page = _fitted_layout(info, font)
    pdf = FPDF(orientation="portrait", unit="mm", format=(PAGE_W, PAGE_H))
    pdf.set_auto_page_break(False)
    pdf.set_margins(0, 0, 0)
    pdf.set_creator("cloudfilm")
    pdf.set_title(f"{_label(info, 'card.title')} - {info.hospital}")
    pdf.set_lang("zh-CN" if info.languages[0] == "zh" else "en")
    pdf.add_font("card", fname=str(font.path), collection_font_number=font.index)
    pdf.add_page()
    for op in page.ops:
        if isinstance(op, _Box):
            pdf.set_fill_color(*op.color)
            pdf.rect(op.x, op.y, op.w, op.h, style="F")
        elif isinstance(op, _Text):
            pdf.set_font("card", size=op.size)
            pdf.set_text_color(*op.color)
            pdf.text(op.x, op.y, op.text)
        else:
            _pdf_qr(pdf, op)
    return bytes(pdf.output())


def _pdf_qr(pdf: FPDF, qr: _Qr) -> None:
    module = qr.size / len(qr.matrix)
    pdf.set_fill_color(255, 255, 255)
    pdf.rect(qr.x, qr.y, qr.size, qr.size, style="F")
    pdf.set_fill_color(0, 0, 0)
    for r, row in enumerate(qr.matrix):
        for start, length in _runs(row):
            pdf.rect(qr.x + start * module, qr.y + r * module, length * module, module, "F")


def _runs(row: tuple[int, ...]) -> list[tuple[int, int]]:
    """(start, length) of each run of dark modules in a row."""
    runs, start = [], None
    for i, dark in enumerate((*row, 0)):
        if dark and start is None:
            start = i
        elif not dark and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def render_card_png(info: CardInfo, font_path: Path | None = None) -> bytes:
    """The card as a PNG, 1080 pixels wide, for sending by message."""
    font = find_card_font(font_path)
    page = _fitted_layout(info, font)
    scale = PNG_WIDTH / PAGE_W  # pixels per mm
    image = Image.new("RGB", (PNG_WIDTH, round(PAGE_H * scale)), _WHITE)
    draw = ImageDraw.Draw(image)
    fonts: dict[float, ImageFont.FreeTypeFont] = {}
    for op in page.ops:
        if isinstance(op, _Box):
            draw.rectangle(
                (op.x * scale, op.y * scale, (op.x + op.w) * scale - 1, (op.y + op.h) * scale - 1),
                fill=op.color,
            )
        elif isinstance(op, _Text):
            if op.size not in fonts:
                px = round(op.size * _PT * scale)
                fonts[op.size] = ImageFont.truetype(str(font.path), px, index=font.index)
            draw.text((op.x * scale, op.y * scale), op.text, font=fonts[op.size],
                      fill=op.color, anchor="ls")  # fmt: skip
        else:
            _png_qr(draw, op, scale)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _png_qr(draw: ImageDraw.ImageDraw, qr: _Qr, scale: float) -> None:
    """The QR code on whole pixels (a module of a fractional size blurs and scans badly)."""
    count = len(qr.matrix)
    module = max(1, int(qr.size * scale) // count)
    left = round((qr.x + qr.size / 2) * scale - module * count / 2)
    top = round((qr.y + qr.size / 2) * scale - module * count / 2)
    draw.rectangle((left, top, left + module * count - 1, top + module * count - 1), fill=_WHITE)
    for r, row in enumerate(qr.matrix):
        for start, length in _runs(row):
            x0, y0 = left + start * module, top + r * module
            draw.rectangle((x0, y0, x0 + length * module - 1, y0 + module - 1), fill=(0, 0, 0))


# ------------------------------------------------------------------------------- answer


def card_response(info: CardInfo, fmt: str, font_path: Path | None = None) -> Response:
    """The card as an HTTP answer: ``fmt`` is ``pdf`` or ``png``.

    The card holds the patient's link and access code: the answer must not be cached by the
    browser or by proxies (``Cache-Control: no-store``).
    """
    if fmt == "pdf":
        body, media_type = render_card_pdf(info, font_path), "application/pdf"
    elif fmt == "png":
        body, media_type = render_card_png(info, font_path), "image/png"
    else:
        raise NotFound(f"a card is available as pdf or png, not {fmt[:20]!r}")
    return Response(
        body,
        media_type=media_type,
        headers={
            "Content-Disposition": content_disposition(
                f"cloudfilm-card.{fmt}", f"cloudfilm-card.{fmt}", inline=True
            ),
            "Cache-Control": "no-store, private",
            "X-Content-Type-Options": "nosniff",
        },
    )
