"""Composing a film sheet: images laid out in the boxes of a film, with annotations.

The composer takes images already rendered to 8-bit display values (the print SCP gets them so
from the modality; :func:`cell_from_frame` renders a stored DICOM frame with a window through
:func:`cloudfilm.dicom.render.display_pixels`) and lays them out with
:mod:`cloudfilm.film.layout`: each image as large as its box allows, aspect ratio kept (Pixel
Spacing makes non-square pixels square on film), centred.

Annotations, when asked for:

* on the sheet, a band at the top: patient name (Chinese names need a CJK font: the one cloud
  film cards use, :func:`cloudfilm.sharing.card.find_card_font`), patient ID, sex and age on
  the left; hospital, exam date, modality and description on the right (:func:`sheet_text`);
* in each image: series and image numbers top left, the window bottom left, orientation letters
  at the four edges (R/L, A/P, H/F from Image Orientation (Patient) (0020,0037), PS3.3
  C.7.6.2.1.1, or Patient Orientation (0020,0020) for projection images), and a scale bar
  bottom right.

The scale bar has a round length in mm (1, 2, 5, 10, 20, 50, 100... mm, at most 30 % of the
image's width) drawn ``mm / column spacing × scale`` sheet pixels long, where the column
spacing is the second value of Pixel Spacing (0028,0030) (or of the frame's Pixel Measures
functional group) and the scale is sheet pixels per image pixel. Without Pixel Spacing, Imager
Pixel Spacing (0018,1164) is used and the label says the length is at the detector (PS3.3
10.7.1.3: the patient is magnified there); without either the label reads "uncalibrated".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from cloudfilm.core.errors import Unprocessable
from cloudfilm.dicom.render import Window, default_window, display_pixels, functional_group
from cloudfilm.film.layout import (
    DisplayFormat,
    FilmSize,
    Magnification,
    Orientation,
    Rect,
    SheetGeometry,
    fit_image,
    sheet_geometry,
)
from cloudfilm.sharing.card import CardFontMissing, find_card_font

logger = logging.getLogger(__name__)

__all__ = [
    "CellImage",
    "CellPlacement",
    "ComposedSheet",
    "EdgeLetters",
    "ScaleBar",
    "SheetStyle",
    "SheetText",
    "Spacing",
    "cell_from_frame",
    "compose_sheet",
    "direction_letters",
    "orientation_letters",
    "pixel_spacing",
    "sheet_layout",
    "sheet_text",
]

U8 = npt.NDArray[np.uint8]
Ink = int | tuple[int, int, int]
#: Scale bar lengths, in mm.
BAR_LENGTHS_MM = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
#: Most of an image's width a scale bar takes.
BAR_FRACTION = 0.3
#: Height of the sheet's header band, in mm.
HEADER_MM = 14.0
#: A direction cosine below this does not earn its letter (a few degrees of tilt).
_OBLIQUE = 0.25
_AXES = (("L", "R"), ("P", "A"), ("H", "F"))  # + and - of x, y, z in DICOM LPS
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}
_RESAMPLING = {
    Magnification.REPLICATE: Image.Resampling.NEAREST,
    Magnification.BILINEAR: Image.Resampling.BILINEAR,
    Magnification.CUBIC: Image.Resampling.BICUBIC,
    Magnification.NONE: Image.Resampling.BILINEAR,
}


# ----------------------------------------------------------------------------- cell values


@dataclass(frozen=True)
class Spacing:
    """Physical size of a pixel: Pixel Spacing's row spacing (vertical) and column spacing
    (horizontal), in mm, and whether they hold at the patient or only at the detector."""

    row_mm: float
    column_mm: float
    plane: Literal["patient", "detector"] = "patient"


@dataclass(frozen=True)
class EdgeLetters:
    """Patient directions towards the four edges of an image (e.g. ``A``, ``L``, ``P``, ``R``
    for an axial slice shown in the usual way)."""

    top: str
    right: str
    bottom: str
    left: str


@dataclass(frozen=True)
class CellImage:
    """One image for a box: 8-bit display values and what its annotations say."""

    #: rows × columns (gray) or rows × columns × 3 (RGB), ``uint8``.
    pixels: U8
    spacing: Spacing | None = None
    letters: EdgeLetters | None = None
    #: Lines at the top left (series and image numbers).
    corner_text: tuple[str, ...] = ()
    #: The line at the bottom left (the window).
    window_text: str | None = None
    #: Polarity (2020,0020) REVERSE: shown inverted.
    reverse: bool = False

    def __post_init__(self) -> None:
        shape = self.pixels.shape
        if self.pixels.dtype != np.uint8 or not (
            len(shape) == 2 or (len(shape) == 3 and shape[2] == 3)
        ):
            raise ValueError(f"cell pixels must be uint8 rows×columns[×3], not {shape}")

    @property
    def aspect(self) -> float:
        """Physical height over width of one pixel."""
        if self.spacing is None:
            return 1.0
        return self.spacing.row_mm / self.spacing.column_mm

    def within(self, box: Rect, magnification: Magnification = Magnification.CUBIC) -> CellImage:
        """This image with no more pixels than ``box`` shows of it: an image larger than its
        box is reduced now (Pixel Spacing scaled to match), so that a sheet of large images
        holds only what it shows in memory. Smaller images are returned as they are."""
        rows, columns = self.pixels.shape[:2]
        shown = fit_image(columns, rows, box, aspect=self.aspect, magnification=magnification)
        if shown.width >= columns or shown.height >= rows:
            return self
        image = Image.fromarray(self.pixels, "RGB" if self.pixels.ndim == 3 else "L")
        smaller = image.resize(
            (shown.width, shown.height), _RESAMPLING[magnification], reducing_gap=3.0
        )
        spacing = self.spacing
        if spacing is not None:
            spacing = Spacing(
                spacing.row_mm * rows / shown.height,
                spacing.column_mm * columns / shown.width,
                spacing.plane,
            )
        return replace(self, pixels=np.asarray(smaller, dtype=np.uint8), spacing=spacing)


@dataclass(frozen=True)
class SheetText:
    """The header band's lines: ``left`` aligned left (the first line larger), ``right``
    aligned right."""

    left: tuple[str, ...] = ()
    right: tuple[str, ...] = ()


@dataclass(frozen=True)
class SheetStyle:
    """How a sheet is drawn."""

    #: Sheet pixels per inch (25.4 mm).
    dpi: float = 150.0
    #: Draw the header band and the per-image annotations.
    annotate: bool = True
    #: With ``annotate``, also label each image (numbers, window, letters, scale bar); the
    #: virtual printer turns this off: a printed image carries its own annotations.
    label_images: bool = True
    magnification: Magnification = Magnification.CUBIC
    #: Gray (0-255) around and between the boxes (Border Density, see ``density_to_gray``).
    border: int = 0
    #: Gray (0-255) of box area without an image (Empty Image Density).
    empty: int = 0
    #: TrueType CJK font (the ``card_font_path`` setting); None finds a Debian one.
    font_path: Path | None = None


@dataclass(frozen=True)
class ScaleBar:
    """A drawn scale bar: ``length_px`` sheet pixels from ``(x, y)`` rightwards (``mm`` is
    None and nothing is drawn but the label for an uncalibrated image)."""

    mm: float | None
    x: int
    y: int
    length_px: int
    thickness: int
    label: str


@dataclass(frozen=True)
class CellPlacement:
    """Where one image went: its box, its rectangle and scale (sheet pixels per image pixel)."""

    cell: Rect
    image: Rect
    scale_x: float
    scale_y: float
    scale_bar: ScaleBar | None = None


@dataclass
class ComposedSheet:
    """A composed film sheet."""

    image: Image.Image
    geometry: SheetGeometry
    display_format: DisplayFormat
    size: FilmSize
    orientation: Orientation
    #: One per box, in Image Position order; None for an empty box.
    placements: list[CellPlacement | None] = field(default_factory=list)

    @property
    def pixels(self) -> U8:
        """The sheet as a numpy array (rows × columns, or × 3 for colour)."""
        return np.asarray(self.image, dtype=np.uint8)


# ------------------------------------------------------------------------ from DICOM frames


def cell_from_frame(
    header: Dataset,
    pixels: npt.NDArray[Any],
    *,
    window: Window | None = None,
    frame_index: int = 0,
    photometric: str | None = None,
) -> CellImage:
    """A box's image from a decoded frame: rendered with ``window`` (None: the image's own,
    see :func:`cloudfilm.dicom.render.default_window`), with its annotations."""
    interpretation = str(photometric or header.get("PhotometricInterpretation") or "").strip()
    grayscale = pixels.ndim == 2 and interpretation != "PALETTE COLOR"
    used = window
    if grayscale and used is None:
        used = default_window(header, pixels, frame_index)
    values = display_pixels(
        header, pixels, window=used, frame_index=frame_index, photometric=photometric
    )
    window_text = None
    if grayscale:
        window_text = f"W {used.width:g} L {used.center:g}" if used else "VOI LUT"
    return CellImage(
        pixels=values,
        spacing=pixel_spacing(header, frame_index),
        letters=orientation_letters(header, frame_index),
        corner_text=_numbers(header, frame_index),
        window_text=window_text,
    )


def pixel_spacing(ds: Dataset, frame_index: int = 0) -> Spacing | None:
    """Pixel Spacing of the frame (Pixel Measures functional group, PS3.3 C.7.6.16.2.1) or of
    the image (0028,0030); else Imager Pixel Spacing (0018,1164) at the detector; else None."""
    group = functional_group(ds, frame_index, "PixelMeasuresSequence")
    for source, keyword, plane in (
        (group, "PixelSpacing", "patient"),
        (ds, "PixelSpacing", "patient"),
        (ds, "ImagerPixelSpacing", "detector"),
    ):
        if source is None:
            continue
        pair = _positive_pair(source.get(keyword))
        if pair is not None:
            return Spacing(pair[0], pair[1], plane)  # type: ignore[arg-type]
    return None


def orientation_letters(ds: Dataset, frame_index: int = 0) -> EdgeLetters | None:
    """Patient directions at the image's edges.

    From Image Orientation (Patient) of the frame (Plane Orientation functional group) or the
    image: the row cosines point to the right edge, the column cosines to the bottom edge
    (PS3.3 C.7.6.2.1.1). Else from Patient Orientation (0020,0020): its two values are the
    directions of the rows and the columns (C.7.6.1.1.1). None when neither is usable.
    """
    group = functional_group(ds, frame_index, "PlaneOrientationSequence")
    cosines = _cosines(group.get("ImageOrientationPatient") if group is not None else None)
    if cosines is None:
        cosines = _cosines(ds.get("ImageOrientationPatient"))
    if cosines is not None:
        row, column = cosines[:3], cosines[3:]
        return EdgeLetters(
            top=direction_letters([-c for c in column]),
            right=direction_letters(row),
            bottom=direction_letters(column),
            left=direction_letters([-r for r in row]),
        )
    value = ds.get("PatientOrientation")
    values = [str(v).strip().upper() for v in (value or [])] if not isinstance(value, str) else []
    if len(values) == 2 and all(values):
        return EdgeLetters(
            top=_opposite(values[1]), right=values[0], bottom=values[1], left=_opposite(values[0])
        )
    return None


def direction_letters(vector: Sequence[float]) -> str:
    """Letters of a direction in DICOM patient coordinates (LPS), strongest first: ``L``/``R``
    for x, ``P``/``A`` for y, ``H``/``F`` for z; components under 0.25 are left out."""
    order = sorted(range(3), key=lambda i: -abs(vector[i]))
    return "".join(_AXES[i][0 if vector[i] > 0 else 1] for i in order if abs(vector[i]) >= _OBLIQUE)


def sheet_text(ds: Dataset, hospital: str | None = None) -> SheetText:
    """The header band of a sheet for the study of ``ds`` (a stored instance's header)."""
    name = _person_name(ds.get("PatientName"))
    sex = str(ds.get("PatientSex") or "").strip()
    age = str(ds.get("PatientAge") or "").strip().lstrip("0") or _date(ds.get("PatientBirthDate"))
    patient_id = str(ds.get("PatientID") or "").strip()
    accession = str(ds.get("AccessionNumber") or "").strip()
    institution = hospital or str(ds.get("InstitutionName") or "").strip()
    exam = " ".join(
        part
        for part in (
            _date(ds.get("StudyDate")),
            str(ds.get("Modality") or "").strip(),
            str(ds.get("StudyDescription") or "").strip(),
        )
        if part
    )
    left = (
        _join(name, sex, age),
        _join(f"ID {patient_id}" if patient_id else "", f"Acc {accession}" if accession else ""),
    )
    return SheetText(
        left=tuple(line for line in left if line),
        right=tuple(line for line in (institution, exam) if line),
    )


def _numbers(ds: Dataset, frame_index: int) -> tuple[str, ...]:
    series, instance = ds.get("SeriesNumber"), ds.get("InstanceNumber")
    parts = [f"Se {series}" if series not in (None, "") else ""]
    parts.append(f"Im {instance}" if instance not in (None, "") else "")
    frames = _int(ds.get("NumberOfFrames"), 1)
    if frames > 1:
        parts.append(f"Fr {frame_index + 1}/{frames}")
    line = _join(*parts)
    return (line,) if line else ()


def _positive_pair(value: Any) -> tuple[float, float] | None:
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(pair) != 2 or not all(np.isfinite(v) and v > 0 for v in pair):
        return None
    return pair[0], pair[1]


def _cosines(value: Any) -> list[float] | None:
    try:
        cosines = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(cosines) != 6 or not all(np.isfinite(c) for c in cosines):
        return None
    if min(np.linalg.norm(cosines[:3]), np.linalg.norm(cosines[3:])) < 0.5:
        return None
    return cosines


def _opposite(letters: str) -> str:
    return "".join(_OPPOSITE.get(ch, "") for ch in letters)


def _person_name(value: Any) -> str:
    """The name as printed: ideographic (Chinese) and alphabetic groups, ``^`` as spaces."""
    if not value:
        return ""
    name = value if isinstance(value, PersonName) else PersonName(str(value))
    alphabetic = " ".join(str(name.alphabetic or "").replace("^", " ").split())
    ideographic = str(name.ideographic or "").replace("^", "").strip()
    return _join(ideographic, alphabetic)


def _date(value: Any) -> str:
    text = str(value or "").strip()
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _join(*parts: str) -> str:
    return "  ".join(part for part in parts if part)


# ------------------------------------------------------------------------------- composing


def compose_sheet(
    cells: Sequence[CellImage | None],
    display_format: DisplayFormat,
    size: FilmSize,
    orientation: Orientation,
    *,
    style: SheetStyle | None = None,
    header: SheetText | None = None,
) -> ComposedSheet:
    """Compose a sheet: ``cells[i]`` goes in image box ``i + 1`` (Image Position order).

    Fewer images than boxes leave the last boxes empty; None leaves that box empty. The sheet
    is grayscale unless an image is in colour. ``header`` is drawn only when ``style.annotate``.

    Raises
    ------
    Unprocessable
        More images than the format has boxes.
    InvalidLayout
        When the boxes do not fit the film at this resolution.
    """
    style = style or SheetStyle()
    if len(cells) > display_format.capacity:
        raise Unprocessable(
            f"{len(cells)} images do not fit the {display_format.capacity} image boxes of "
            f"{display_format.dicom()}"
        )
    geometry = sheet_layout(display_format, size, orientation, style, header=header is not None)
    color = any(c is not None and c.pixels.ndim == 3 for c in cells)
    mode = "RGB" if color else "L"
    sheet = Image.new(mode, (geometry.width, geometry.height), _ink(mode, style.border))
    draw = ImageDraw.Draw(sheet)
    fonts = _Fonts(style.font_path)
    placements: list[CellPlacement | None] = []
    for index, box in enumerate(geometry.cells):
        draw.rectangle(_inclusive(box), fill=_ink(mode, style.empty))
        cell = cells[index] if index < len(cells) else None
        if cell is None:
            placements.append(None)
            continue
        placement = _place(sheet, cell, box, style)
        if style.annotate and style.label_images:
            placement = _annotate_cell(draw, cell, placement, fonts, style.dpi)
        placements.append(placement)
    if geometry.header is not None and header is not None:
        _draw_header(draw, geometry.header, header, fonts, style.border)
    return ComposedSheet(sheet, geometry, display_format, size, orientation, placements)


def sheet_layout(
    display_format: DisplayFormat,
    size: FilmSize,
    orientation: Orientation,
    style: SheetStyle,
    *,
    header: bool,
) -> SheetGeometry:
    """The geometry :func:`compose_sheet` uses: with a header band when annotating a sheet
    that has header text. Its boxes tell callers how large to render images
    (:meth:`CellImage.within`)."""
    band = HEADER_MM if style.annotate and header else 0.0
    return sheet_geometry(display_format, size, orientation, style.dpi, header_mm=band)


def _place(sheet: Image.Image, cell: CellImage, box: Rect, style: SheetStyle) -> CellPlacement:
    rows, columns = cell.pixels.shape[:2]
    rect = fit_image(columns, rows, box, aspect=cell.aspect, magnification=style.magnification)
    values = 255 - cell.pixels if cell.reverse else cell.pixels
    image = Image.fromarray(values, "RGB" if values.ndim == 3 else "L")
    if (rect.width, rect.height) != (columns, rows):
        image = image.resize(
            (rect.width, rect.height), _RESAMPLING[style.magnification], reducing_gap=3.0
        )
    if image.mode != sheet.mode:
        image = image.convert(sheet.mode)
    sheet.paste(image, (rect.x, rect.y))
    return CellPlacement(box, rect, rect.width / columns, rect.height / rows)


def _ink(mode: str, gray: int) -> Ink:
    return gray if mode == "L" else (gray, gray, gray)


def _inclusive(rect: Rect) -> tuple[int, int, int, int]:
    """Pillow's rectangle() includes its second corner."""
    return rect.x, rect.y, rect.right - 1, rect.bottom - 1


# ----------------------------------------------------------------------------- annotations


class _Fonts:
    """Fonts of one composition, by pixel size (FreeType faces are not shared across threads:
    each composition loads its own)."""

    def __init__(self, configured: Path | None) -> None:
        self._path: str | None = None
        self._index = 0
        try:
            font = find_card_font(configured)
            self._path, self._index = str(font.path), font.index
        except CardFontMissing as exc:
            logger.warning("film annotations without a CJK font: %s", exc.message)
        self._cache: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}

    def get(self, px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        px = max(6, px)
        if px not in self._cache:
            self._cache[px] = self._load(px)
        return self._cache[px]

    def _load(self, px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        if self._path is not None:
            return ImageFont.truetype(self._path, px, index=self._index)
        try:
            return ImageFont.truetype("DejaVuSans.ttf", px)
        except OSError:
            return ImageFont.load_default(px)


def _text_px(box: Rect, dpi: float) -> int:
    """Annotation text height in a box: 1/18 of the box, between 5 and 10 points."""
    return int(np.clip(round(min(box.width, box.height) / 18), dpi * 5 / 72, dpi * 10 / 72))


def _annotate_cell(
    draw: ImageDraw.ImageDraw, cell: CellImage, placement: CellPlacement, fonts: _Fonts, dpi: float
) -> CellPlacement:
    rect = placement.image
    px = _text_px(placement.cell, dpi)
    font, pad = fonts.get(px), max(2, px // 3)
    pen = _Pen(draw, font, px, rgb=draw.mode == "RGB")
    for i, line in enumerate(cell.corner_text):
        pen.text((rect.x + pad, rect.y + pad + i * (px + pad // 2)), line, "la")
    if cell.window_text:
        pen.text((rect.x + pad, rect.bottom - pad), cell.window_text, "ld")
    if cell.letters is not None:
        letters = cell.letters
        middle_x, middle_y = rect.x + rect.width // 2, rect.y + rect.height // 2
        pen.text((middle_x, rect.y + pad), letters.top, "ma")
        pen.text((rect.right - pad, middle_y), letters.right, "rm")
        pen.text((middle_x, rect.bottom - pad), letters.bottom, "md")
        pen.text((rect.x + pad, middle_y), letters.left, "lm")
    bar = _scale_bar(cell.spacing, placement, px, pad)
    if bar is not None:
        if bar.mm is not None:
            pen.bar(bar)
        pen.text((rect.right - pad, bar.y - 3 * bar.thickness - pad), bar.label, "rd")
    return CellPlacement(placement.cell, rect, placement.scale_x, placement.scale_y, bar)


def _scale_bar(
    spacing: Spacing | None, placement: CellPlacement, px: int, pad: int
) -> ScaleBar | None:
    """The longest round length that takes at most 30 % of the image's width, or the
    "uncalibrated" label."""
    rect = placement.image
    thickness = max(2, px // 6)
    y = rect.bottom - pad - thickness
    if spacing is None:
        return ScaleBar(None, rect.right - pad, y, 0, thickness, "uncalibrated")
    px_per_mm = placement.scale_x / spacing.column_mm
    fitting = [mm for mm in BAR_LENGTHS_MM if mm * px_per_mm <= BAR_FRACTION * rect.width]
    if not fitting or fitting[-1] * px_per_mm < 8:
        return None  # an image too small for a bar worth reading
    mm = fitting[-1]
    length = round(mm * px_per_mm)
    suffix = " mm" if spacing.plane == "patient" else " mm (detector)"
    return ScaleBar(float(mm), rect.right - pad - length, y, length, thickness, f"{mm}{suffix}")


class _Pen:
    """White annotations with a black outline, readable on dark and bright images alike."""

    def __init__(
        self,
        draw: ImageDraw.ImageDraw,
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
        px: int,
        *,
        rgb: bool,
    ) -> None:
        self.draw, self.font = draw, font
        self.white: Ink = (255, 255, 255) if rgb else 255
        self.black: Ink = (0, 0, 0) if rgb else 0
        self.stroke = max(1, px // 10)

    def text(self, xy: tuple[int, int], text: str, anchor: str) -> None:
        if text:
            self.draw.text(
                xy, text, font=self.font, fill=self.white, anchor=anchor,
                stroke_width=self.stroke, stroke_fill=self.black,
            )  # fmt: skip

    def bar(self, bar: ScaleBar) -> None:
        """The bar (exactly ``length_px`` wide) on a black outline, with end ticks above it."""
        x0, x1, y = bar.x, bar.x + bar.length_px - 1, bar.y
        tick = bar.thickness * 3  # the label is drawn above the ticks
        self.draw.rectangle((x0 - 1, y - tick - 1, x1 + 1, y + bar.thickness), fill=self.black)
        self.draw.rectangle((x0, y, x1, y + bar.thickness - 1), fill=self.white)
        for x in (x0, x1 - bar.thickness + 1):
            self.draw.rectangle((x, y - tick, x + bar.thickness - 1, y), fill=self.white)


def _draw_header(
    draw: ImageDraw.ImageDraw, band: Rect, text: SheetText, fonts: _Fonts, background: int
) -> None:
    """The patient and exam lines in the band, dark on a light border and light on a dark one."""
    rgb = draw.mode == "RGB"
    ink = 255 if background < 128 else 0
    fill: Ink = (ink, ink, ink) if rgb else ink
    lines = max(len(text.left), len(text.right), 1)
    step = band.height / (lines + 0.25)
    for column, anchor, x in (
        (text.left, "la", band.x),
        (text.right, "ra", band.right),
    ):
        for i, line in enumerate(column):
            size = round(step * (0.82 if i == 0 and column is text.left else 0.7))
            y = band.y + round(i * step + (step - size) / 2)
            draw.text((x, y), line, font=fonts.get(size), fill=fill, anchor=anchor)
