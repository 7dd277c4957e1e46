"""Film geometry: film sizes, Image Display Formats, cells and fitting images into them.

Pure functions and values, no I/O: the composer (:mod:`cloudfilm.film.compose`) and the
virtual DICOM printer both lay out sheets with them.

Film sizes are the Defined Terms of Film Size ID (2010,0050), PS3.3 C.13.5.1 (Basic Film Box
Presentation Module). Sizes are given portrait (the shorter side is the width); ``LANDSCAPE``
(Film Orientation (2010,0040)) turns the sheet. ``10INX14IN`` is 25.7 × 36.4 cm as the
standard notes.

Image Display Format (2010,0010), PS3.3 C.13.5.1:

* ``STANDARD\\C,R``: equal boxes in R rows and C columns (note: **columns first**);
* ``ROW\\R1,R2,...``: rows of equal height, R1 boxes in the first row, R2 in the second...;
* ``COL\\C1,C2,...``: columns of equal width, C1 boxes in the first column...

Image boxes are numbered from 1 (Image Position (2020,0010), C.13.8): ``STANDARD`` and ``ROW``
left to right, then top to bottom; ``COL`` top to bottom, then left to right. ``SLIDE``,
``SUPERSLIDE`` and ``CUSTOM\\i`` are printer-defined and refused with a precise message.

Lengths on the sheet are in millimetres; pixels are those of the sheet image at ``dpi`` dots
per inch (25.4 mm). A rectangle is ``x, y, width, height`` in sheet pixels, origin top left.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from cloudfilm.core.errors import MalformedRequest

__all__ = [
    "FILM_SIZES",
    "MAX_BOXES_PER_LINE",
    "MM_PER_INCH",
    "DisplayFormat",
    "FilmSize",
    "InvalidLayout",
    "Magnification",
    "Orientation",
    "Rect",
    "SheetGeometry",
    "density_to_gray",
    "fit_image",
    "match_film_size",
    "parse_display_format",
    "parse_film_size",
    "parse_layout",
    "parse_magnification",
    "parse_orientation",
    "sheet_geometry",
]

MM_PER_INCH = 25.4
#: Most image boxes in one row or column of a format (a guard against hostile values).
MAX_BOXES_PER_LINE = 16
#: Densities are in hundredths of optical density (PS3.3 C.13.5.1); this one reads as black.
_DMAX = 300


class InvalidLayout(MalformedRequest):
    """An Image Display Format, film size, orientation or density that cannot be used."""

    code = "invalid-layout"


class Orientation(StrEnum):
    """Film Orientation (2010,0040): PORTRAIT is vertical, LANDSCAPE horizontal."""

    PORTRAIT = "PORTRAIT"
    LANDSCAPE = "LANDSCAPE"


class Magnification(StrEnum):
    """Magnification Type (2010,0060): how an image is resized into its box.

    ``NONE`` means no magnification: the image keeps one film pixel per image pixel and is only
    reduced (bilinear) when it is larger than its box.
    """

    REPLICATE = "REPLICATE"
    BILINEAR = "BILINEAR"
    CUBIC = "CUBIC"
    NONE = "NONE"


@dataclass(frozen=True)
class FilmSize:
    """A film size: its Film Size ID and its portrait width and height in millimetres."""

    id: str
    width_mm: float
    height_mm: float

    def dimensions_mm(self, orientation: Orientation) -> tuple[float, float]:
        """Width and height of the sheet in millimetres, as oriented."""
        if orientation is Orientation.LANDSCAPE:
            return self.height_mm, self.width_mm
        return self.width_mm, self.height_mm

    def pixels(self, orientation: Orientation, dpi: float) -> tuple[int, int]:
        """Width and height of the sheet image in pixels at ``dpi`` dots per inch."""
        width, height = self.dimensions_mm(orientation)
        return mm_to_px(width, dpi), mm_to_px(height, dpi)


def _inches(width: float, height: float) -> tuple[float, float]:
    return round(width * MM_PER_INCH, 3), round(height * MM_PER_INCH, 3)


#: Film Size ID (2010,0050) Defined Terms, PS3.3 C.13.5.1, portrait dimensions in mm.
FILM_SIZES: dict[str, FilmSize] = {
    size.id: size
    for size in (
        FilmSize("8INX10IN", *_inches(8, 10)),
        FilmSize("8_5INX11IN", *_inches(8.5, 11)),
        FilmSize("10INX12IN", *_inches(10, 12)),
        FilmSize("10INX14IN", 257.0, 364.0),  # "corresponds with 25.7CMX36.4CM"
        FilmSize("11INX14IN", *_inches(11, 14)),
        FilmSize("11INX17IN", *_inches(11, 17)),
        FilmSize("14INX14IN", *_inches(14, 14)),
        FilmSize("14INX17IN", *_inches(14, 17)),
        FilmSize("24CMX24CM", 240.0, 240.0),
        FilmSize("24CMX30CM", 240.0, 300.0),
        FilmSize("A4", 210.0, 297.0),
        FilmSize("A3", 297.0, 420.0),
    )
}

FormatKind = Literal["STANDARD", "ROW", "COL"]


@dataclass(frozen=True)
class Rect:
    """A rectangle of the sheet image, in pixels (origin top left)."""

    x: int
    y: int
    width: int
    height: int

    @property
    def right(self) -> int:
        """First column to the right of the rectangle."""
        return self.x + self.width

    @property
    def bottom(self) -> int:
        """First row below the rectangle."""
        return self.y + self.height

    def box(self) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` as Pillow takes it."""
        return self.x, self.y, self.right, self.bottom


@dataclass(frozen=True)
class DisplayFormat:
    """A parsed Image Display Format (2010,0010)."""

    kind: FormatKind
    #: STANDARD: (columns, rows); ROW: boxes in each row; COL: boxes in each column.
    counts: tuple[int, ...]

    @property
    def capacity(self) -> int:
        """How many image boxes the format has."""
        if self.kind == "STANDARD":
            return self.counts[0] * self.counts[1]
        return sum(self.counts)

    def dicom(self) -> str:
        """The value as written in Image Display Format, e.g. ``STANDARD\\4,5``."""
        return f"{self.kind}\\{','.join(str(n) for n in self.counts)}"

    def __str__(self) -> str:
        return self.dicom()

    def cells(self, area: Rect, gutter: int = 0) -> list[Rect]:
        """The image boxes inside ``area``, in Image Position order, ``gutter`` pixels apart.

        Raises :class:`InvalidLayout` when the boxes would be smaller than one pixel.
        """
        if self.kind == "STANDARD":
            columns, rows = self.counts
            return [
                _split(line, columns, gutter, horizontal=True)[column]
                for line in _split(area, rows, gutter, horizontal=False)
                for column in range(columns)
            ]
        horizontal_lines = self.kind == "ROW"
        lines = _split(area, len(self.counts), gutter, horizontal=not horizontal_lines)
        return [
            box
            for line, count in zip(lines, self.counts, strict=True)
            for box in _split(line, count, gutter, horizontal=horizontal_lines)
        ]


def _split(area: Rect, count: int, gutter: int, *, horizontal: bool) -> list[Rect]:
    """``count`` equal parts of ``area`` side by side (``horizontal``) or stacked."""
    length = area.width if horizontal else area.height
    usable = length - gutter * (count - 1)
    if usable < count:
        raise InvalidLayout(f"{count} image boxes do not fit in {length} pixels")
    edges = [round(i * usable / count) for i in range(count + 1)]
    parts = []
    for i in range(count):
        start, size = edges[i] + i * gutter, edges[i + 1] - edges[i]
        if horizontal:
            parts.append(Rect(area.x + start, area.y, size, area.height))
        else:
            parts.append(Rect(area.x, area.y + start, area.width, size))
    return parts


# ------------------------------------------------------------------------------- parsing

_COUNTS = re.compile(r"\d{1,3}(,\d{1,3})*")
_SHORT = re.compile(r"(\d{1,3})\s*[x×*]\s*(\d{1,3})", re.IGNORECASE)


def parse_display_format(value: str) -> DisplayFormat:
    """Parse an Image Display Format (2010,0010) as a print SCU sends it (PS3.3 C.13.5.1).

    Case and blanks around the parts are not significant. Raises :class:`InvalidLayout` for
    anything else, for a count of 0 or more than :data:`MAX_BOXES_PER_LINE`, and for the
    printer-defined ``SLIDE``, ``SUPERSLIDE`` and ``CUSTOM\\i`` formats.
    """
    text = str(value).strip().upper()
    kind, sep, rest = text.partition("\\")
    kind = kind.strip()
    if kind in ("SLIDE", "SUPERSLIDE", "CUSTOM"):
        raise InvalidLayout(
            f"Image Display Format {kind} is printer-defined and not supported; use "
            "STANDARD\\C,R, ROW\\R1,R2,... or COL\\C1,C2,..."
        )
    if kind not in ("STANDARD", "ROW", "COL") or not sep:
        raise InvalidLayout(
            f"{value!r} is not an Image Display Format (STANDARD\\C,R, ROW\\R1,R2,... or "
            "COL\\C1,C2,...)"
        )
    counts_text = re.sub(r"\s+", "", rest)
    if not _COUNTS.fullmatch(counts_text):
        raise InvalidLayout(f"{value!r}: the counts after {kind}\\ must be whole numbers, a,b,...")
    counts = tuple(int(n) for n in counts_text.split(","))
    if kind == "STANDARD" and len(counts) != 2:
        raise InvalidLayout(f"{value!r}: STANDARD takes two counts, columns and rows (C,R)")
    if len(counts) > MAX_BOXES_PER_LINE:
        raise InvalidLayout(f"{value!r}: at most {MAX_BOXES_PER_LINE} rows or columns")
    if any(not 1 <= n <= MAX_BOXES_PER_LINE for n in counts):
        raise InvalidLayout(f"{value!r}: each count must be between 1 and {MAX_BOXES_PER_LINE}")
    return DisplayFormat(kind, counts)  # type: ignore[arg-type]  # kind checked above


def parse_layout(value: str) -> DisplayFormat:
    """A layout as staff write it: ``4x5`` (columns × rows, as ``STANDARD\\4,5``) or any Image
    Display Format (see :func:`parse_display_format`)."""
    short = _SHORT.fullmatch(str(value).strip())
    if short:
        return parse_display_format(f"STANDARD\\{short.group(1)},{short.group(2)}")
    return parse_display_format(value)


def parse_film_size(value: str) -> FilmSize:
    """A Film Size ID such as ``14INX17IN`` or ``A3`` (case and blanks not significant)."""
    key = re.sub(r"\s+", "", str(value)).upper()
    found = FILM_SIZES.get(key)
    if found is None:
        raise InvalidLayout(f"{value!r} is not a Film Size ID; use one of {', '.join(FILM_SIZES)}")
    return found


def parse_orientation(value: str) -> Orientation:
    """``PORTRAIT`` or ``LANDSCAPE`` (Film Orientation, any case)."""
    try:
        return Orientation(str(value).strip().upper())
    except ValueError:
        message = f"{value!r} is not a film orientation (PORTRAIT or LANDSCAPE)"
        raise InvalidLayout(message) from None


def parse_magnification(value: str) -> Magnification:
    """A Magnification Type: ``REPLICATE``, ``BILINEAR``, ``CUBIC`` or ``NONE`` (any case)."""
    try:
        return Magnification(str(value).strip().upper())
    except ValueError:
        choices = ", ".join(m.value for m in Magnification)
        raise InvalidLayout(f"{value!r} is not a magnification type ({choices})") from None


def density_to_gray(value: str | int | None, default: int = 0) -> int:
    """The 8-bit gray shown for a film density (Border Density, Empty Image Density).

    ``BLACK`` is 0, ``WHITE`` 255; a number is hundredths of optical density (PS3.3
    C.13.5.1, e.g. ``150`` = 1.5 OD), shown as its transmitted light ``10^-OD`` in display
    gamma 2.2, with 3.0 OD and above black. None keeps ``default``.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    text = str(value).strip().upper()
    if text == "BLACK":
        return 0
    if text == "WHITE":
        return 255
    if not text.isdigit():
        raise InvalidLayout(f"density {value!r} is not BLACK, WHITE or hundredths of OD")
    density = int(text)
    if density >= _DMAX:
        return 0
    return round(255 * math.pow(10.0, -density / 100 / 2.2))


def match_film_size(
    width_mm: float, height_mm: float, tolerance_mm: float
) -> tuple[FilmSize, Orientation] | None:
    """The film size (and orientation) whose dimensions are within ``tolerance_mm`` of these."""
    for size in FILM_SIZES.values():
        for orientation in Orientation:
            w, h = size.dimensions_mm(orientation)
            if abs(w - width_mm) <= tolerance_mm and abs(h - height_mm) <= tolerance_mm:
                return size, orientation
    return None


# -------------------------------------------------------------------------------- geometry


def mm_to_px(mm: float, dpi: float) -> int:
    """A length on the film in whole sheet pixels."""
    return max(0, round(mm / MM_PER_INCH * dpi))


@dataclass(frozen=True)
class SheetGeometry:
    """Where everything goes on a sheet image."""

    width: int
    height: int
    dpi: float
    #: The band at the top for the patient and exam text; None without one.
    header: Rect | None
    #: The image boxes, in Image Position order.
    cells: tuple[Rect, ...]


def sheet_geometry(
    display_format: DisplayFormat,
    size: FilmSize,
    orientation: Orientation,
    dpi: float,
    *,
    header_mm: float = 0.0,
    margin_mm: float = 3.0,
    gutter_mm: float = 1.5,
) -> SheetGeometry:
    """Lay out a sheet: a margin all round, an optional header band, then the image boxes.

    Parameters
    ----------
    display_format
        The boxes (:func:`parse_display_format`).
    size, orientation
        The film.
    dpi
        Sheet pixels per inch (25.4 mm).
    header_mm
        Height of the band for the patient and exam text; 0 for none.
    margin_mm, gutter_mm
        Space around the sheet's content and between boxes.

    Raises
    ------
    InvalidLayout
        When the boxes do not fit (a box would be less than one pixel).
    """
    if not 10 <= dpi <= 1200:
        raise InvalidLayout(f"a resolution of {dpi} dpi is outside 10-1200")
    width, height = size.pixels(orientation, dpi)
    margin, gutter = mm_to_px(margin_mm, dpi), mm_to_px(gutter_mm, dpi)
    header_px = mm_to_px(header_mm, dpi)
    header = Rect(margin, margin, width - 2 * margin, header_px) if header_px else None
    top = margin + (header_px + gutter if header_px else 0)
    area = Rect(margin, top, width - 2 * margin, height - top - margin)
    if area.width < 1 or area.height < 1:
        raise InvalidLayout(f"no room for images on {size.id} at {dpi} dpi")
    cells = tuple(display_format.cells(area, gutter))
    return SheetGeometry(width, height, dpi, header, cells)


def fit_image(
    columns: int,
    rows: int,
    cell: Rect,
    *,
    aspect: float = 1.0,
    magnification: Magnification = Magnification.CUBIC,
) -> Rect:
    """Where an image of ``columns`` × ``rows`` pixels goes in ``cell``: as large as fits,
    aspect ratio kept, centred.

    ``aspect`` is the physical height of a pixel over its width (row spacing / column spacing,
    Pixel Spacing (0028,0030) or Pixel Aspect Ratio (0028,0034)); the image is shown at its
    true shape. With :attr:`Magnification.NONE` the image is never enlarged.
    """
    if columns < 1 or rows < 1:
        raise InvalidLayout(f"an image of {columns} × {rows} pixels cannot be placed")
    true_height = rows * aspect
    scale = min(cell.width / columns, cell.height / true_height)
    if magnification is Magnification.NONE:
        scale = min(scale, 1.0, 1.0 / aspect)
    width = max(1, min(cell.width, math.floor(columns * scale + 0.5)))
    height = max(1, min(cell.height, math.floor(true_height * scale + 0.5)))
    x = cell.x + (cell.width - width) // 2
    y = cell.y + (cell.height - height) // 2
    return Rect(x, y, width, height)
