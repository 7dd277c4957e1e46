"""Composing sheets: pixels where they belong, annotations, orientation letters, the scale bar.

Expected pixels come from :func:`cloudfilm.dicom.render.render_frame` (the WADO /rendered
pipeline) applied to the synthetic CT with the same window, resized with Pillow; the scale bar
is measured in the composed image.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from film_support import correlation, longest_white_run, resized
from PIL import Image
from pydicom.dataset import Dataset

from cloudfilm.core.errors import Unprocessable
from cloudfilm.dicom.render import WINDOW_PRESETS, Window, render_frame
from cloudfilm.dicom.synth import generate_studies
from cloudfilm.film.compose import (
    CellImage,
    EdgeLetters,
    SheetStyle,
    SheetText,
    Spacing,
    cell_from_frame,
    compose_sheet,
    direction_letters,
    orientation_letters,
    pixel_spacing,
    sheet_text,
)
from cloudfilm.film.layout import Orientation, parse_film_size, parse_layout

A4, FILM_14X17 = parse_film_size("A4"), parse_film_size("14INX17IN")


@pytest.fixture(scope="module")
def ct() -> list[Dataset]:
    return list(generate_studies(seed=11, slices=12, rows=128, columns=128, charset="gb18030"))


def _rendered(ds: Dataset, window: Window | None) -> np.ndarray:
    win = None if window is None else (window.center, window.width)
    png = render_frame(ds, ds.pixel_array, window=win, media_type="image/png")
    return np.asarray(Image.open(io.BytesIO(png)))


@pytest.mark.parametrize(
    ("layout", "orientation", "window"),
    [
        ("4x3", Orientation.PORTRAIT, None),
        ("3x4", Orientation.LANDSCAPE, WINDOW_PRESETS["lung"]),
        ("ROW\\2,3,4", Orientation.PORTRAIT, Window(40, 400)),
        ("1x1", Orientation.PORTRAIT, WINDOW_PRESETS["bone"]),
    ],
)
def test_each_box_shows_its_image_with_the_window(
    ct: list[Dataset], layout: str, orientation: Orientation, window: Window | None
) -> None:
    display_format = parse_layout(layout)
    images = ct[: display_format.capacity]
    cells = [cell_from_frame(ds, ds.pixel_array, window=window) for ds in images]
    sheet = compose_sheet(
        cells, display_format, FILM_14X17, orientation, style=SheetStyle(annotate=False)
    )
    pixels = sheet.pixels
    assert pixels.shape == (sheet.geometry.height, sheet.geometry.width)
    assert len(sheet.placements) == display_format.capacity
    for ds, placement in zip(images, sheet.placements, strict=True):
        assert placement is not None
        rect = placement.image
        assert rect.width == rect.height  # square pixels, square image, aspect kept
        # Centred in its box.
        assert abs((rect.x - placement.cell.x) - (placement.cell.right - rect.right)) <= 1
        assert abs((rect.y - placement.cell.y) - (placement.cell.bottom - rect.bottom)) <= 1
        shown = pixels[rect.y : rect.bottom, rect.x : rect.right]
        expected = resized(_rendered(ds, window), rect.width, rect.height)
        assert correlation(shown, expected) >= 0.99
        # And not any other slice's pixels: the neighbouring image differs more.
        other = ct[(images.index(ds) + 6) % len(ct)]
        assert correlation(shown, resized(_rendered(other, window), rect.width, rect.height)) < (
            correlation(shown, expected)
        )


def test_annotations_leave_the_image_readable(ct: list[Dataset]) -> None:
    display_format = parse_layout("2x2")
    cells = [cell_from_frame(ds, ds.pixel_array) for ds in ct[:4]]
    plain = compose_sheet(cells, display_format, A4, Orientation.PORTRAIT,
                          style=SheetStyle(annotate=False))  # fmt: skip
    annotated = compose_sheet(cells, display_format, A4, Orientation.PORTRAIT,
                              header=sheet_text(ct[0]))  # fmt: skip
    assert annotated.geometry.header is not None and plain.geometry.header is None
    for ds, placement in zip(ct, annotated.placements, strict=False):
        assert placement is not None
        rect = placement.image
        # The centre of the image is free of text and matches the image.
        cx, cy, r = rect.x + rect.width // 2, rect.y + rect.height // 2, rect.width // 4
        centre = annotated.pixels[cy - r : cy + r, cx - r : cx + r]
        whole = resized(_rendered(ds, None), rect.width, rect.height)
        ox, oy = cx - rect.x, cy - rect.y
        assert correlation(centre, whole[oy - r : oy + r, ox - r : ox + r]) >= 0.99
        # The top left corner (air, black in this window) carries the white numbers.
        corner = (slice(0, rect.height // 8), slice(0, rect.width // 3))
        assert whole[corner].max() < 64
        assert annotated.pixels[rect.y : rect.bottom, rect.x : rect.right][corner].max() == 255
    band = annotated.geometry.header
    assert annotated.pixels[band.y : band.bottom, band.x : band.right].max() == 255


@pytest.mark.parametrize(
    ("spacing", "dpi", "layout"),
    [
        ((0.7, 0.7), 150, "4x5"),
        ((0.5, 0.5), 200, "2x2"),
        ((1.4, 0.7), 150, "3x3"),  # pixels twice as tall as wide
        ((0.1, 0.1), 100, "1x1"),  # a 25.6 mm field: a short bar
        ((2.5, 2.5), 300, "5x6"),
    ],
)
def test_scale_bar_is_as_long_as_it_claims(
    spacing: tuple[float, float], dpi: int, layout: str
) -> None:
    blank = np.zeros((256, 256), dtype=np.uint8)
    cell = CellImage(blank, spacing=Spacing(*spacing))
    display_format = parse_layout(layout)
    sheet = compose_sheet([cell], display_format, FILM_14X17, Orientation.PORTRAIT,
                          style=SheetStyle(dpi=dpi))  # fmt: skip
    placement = sheet.placements[0]
    assert placement is not None and placement.scale_bar is not None
    bar, rect = placement.scale_bar, placement.image
    assert bar.mm is not None and bar.label == f"{bar.mm:g} mm"
    # Aspect kept in millimetres: 256 × 0.7 mm wide, 256 × 1.4 mm tall → twice as tall.
    assert rect.height / rect.width == pytest.approx(spacing[0] / spacing[1], abs=0.02)
    # Measure: the longest horizontal white run in the bottom fifth of the image.
    strip = sheet.pixels[rect.bottom - rect.height // 5 : rect.bottom, rect.x : rect.right]
    _row, _start, length = longest_white_run(strip)
    # The bar's length in image pixels times the column spacing is the length it claims.
    claimed_px = bar.mm / spacing[1] * placement.scale_x
    assert abs(length - claimed_px) <= 1.0
    assert length / placement.scale_x * spacing[1] == pytest.approx(bar.mm, rel=0.02)
    assert length <= 0.3 * rect.width + 1  # a round length that fits


def test_scale_bar_on_a_ct_and_uncalibrated_images(ct: list[Dataset]) -> None:
    cell = cell_from_frame(ct[0], ct[0].pixel_array)
    assert cell.spacing is not None and cell.spacing.plane == "patient"
    sheet = compose_sheet([cell], parse_layout("2x2"), FILM_14X17, Orientation.PORTRAIT)
    placement = sheet.placements[0]
    assert placement is not None and placement.scale_bar is not None
    rect, bar = placement.image, placement.scale_bar
    strip = sheet.pixels[rect.bottom - rect.height // 8 : rect.bottom, rect.x : rect.right]
    _row, _start, length = longest_white_run(strip)
    assert bar.mm is not None
    assert abs(length - bar.mm / cell.spacing.column_mm * placement.scale_x) <= 1.0

    plain = CellImage(np.zeros((200, 200), dtype=np.uint8))
    sheet = compose_sheet([plain], parse_layout("1x1"), A4, Orientation.PORTRAIT)
    placement = sheet.placements[0]
    assert placement is not None and placement.scale_bar is not None
    assert placement.scale_bar.mm is None and placement.scale_bar.label == "uncalibrated"
    rect = placement.image
    strip = sheet.pixels[rect.bottom - rect.height // 5 : rect.bottom, rect.x : rect.right]
    assert longest_white_run(strip)[2] < 0.1 * rect.width  # text only, no bar

    detector = Dataset()
    detector.ImagerPixelSpacing = [0.15, 0.15]
    measured = pixel_spacing(detector)
    assert measured == Spacing(0.15, 0.15, "detector")
    sheet = compose_sheet([CellImage(plain.pixels, spacing=measured)], parse_layout("1x1"), A4,
                          Orientation.PORTRAIT)  # fmt: skip
    placement = sheet.placements[0]
    assert placement is not None and placement.scale_bar is not None
    assert placement.scale_bar.label.endswith("mm (detector)")


def _oriented(iop: list[float]) -> Dataset:
    ds = Dataset()
    ds.ImageOrientationPatient = iop
    return ds


@pytest.mark.parametrize(
    ("iop", "expected"),
    [
        ([1, 0, 0, 0, 1, 0], EdgeLetters(top="A", right="L", bottom="P", left="R")),  # axial
        ([0, 1, 0, 0, 0, -1], EdgeLetters(top="H", right="P", bottom="F", left="A")),  # sagittal
        ([1, 0, 0, 0, 0, -1], EdgeLetters(top="H", right="L", bottom="F", left="R")),  # coronal
        ([-1, 0, 0, 0, 1, 0], EdgeLetters(top="A", right="R", bottom="P", left="L")),  # flipped
        (  # axial tilted 30° about the left-right axis
            [1, 0, 0, 0, 0.866, -0.5],
            EdgeLetters(top="AH", right="L", bottom="PF", left="R"),
        ),
    ],
)
def test_orientation_letters(iop: list[float], expected: EdgeLetters) -> None:
    assert orientation_letters(_oriented(iop)) == expected


def test_orientation_letters_of_real_images_and_projections(ct: list[Dataset]) -> None:
    assert orientation_letters(ct[0]) == EdgeLetters("A", "L", "P", "R")
    assert direction_letters([0.05, -0.1, 0.99]) == "H"  # slight obliquity ignored
    chest = Dataset()
    chest.PatientOrientation = ["L", "F"]  # a PA chest radiograph
    assert orientation_letters(chest) == EdgeLetters(top="H", right="L", bottom="F", left="R")
    assert orientation_letters(Dataset()) is None
    enhanced = Dataset()
    group, plane = Dataset(), Dataset()
    plane.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    group.PlaneOrientationSequence = [plane]
    enhanced.SharedFunctionalGroupsSequence = [group]
    assert orientation_letters(enhanced, 3) == EdgeLetters("H", "P", "F", "A")


def test_letters_are_drawn_at_the_edges(ct: list[Dataset]) -> None:
    blank = np.zeros((128, 128), dtype=np.uint8)
    letters = orientation_letters(ct[0])
    with_letters = CellImage(blank, letters=letters)
    sheet = compose_sheet([with_letters, CellImage(blank)], parse_layout("2x1"), A4,
                          Orientation.LANDSCAPE)  # fmt: skip
    first, second = sheet.placements
    assert first is not None and second is not None
    for placement, expect_ink in ((first, True), (second, False)):
        rect = placement.image
        middle = rect.y + rect.height // 2
        left_edge = sheet.pixels[middle - 20 : middle + 20, rect.x : rect.x + 40]
        assert bool(left_edge.max() == 255) is expect_ink


def test_chinese_patient_name_is_drawn_with_a_cjk_font(ct: list[Dataset]) -> None:
    """Two names that differ only in their second character give different pixels: without a
    CJK font both would be the same missing-glyph box."""
    cell = CellImage(np.zeros((64, 64), dtype=np.uint8))
    layout = parse_layout("1x1")
    pixels = [
        compose_sheet([cell], layout, A4, Orientation.PORTRAIT, header=SheetText((name,))).pixels
        for name in ("黄伟", "黄娜", "黄伟")
    ]
    assert not np.array_equal(pixels[0], pixels[1])
    assert np.array_equal(pixels[0], pixels[2])
    text = sheet_text(ct[0])
    assert text.left[0].startswith(str(ct[0].PatientName.ideographic).replace("^", ""))
    assert any("CT" in line for line in text.right)


def test_colour_reverse_empty_boxes_and_too_many() -> None:
    rgb = np.zeros((50, 80, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    gray = np.full((50, 50), 30, dtype=np.uint8)
    style = SheetStyle(annotate=False, border=255, empty=128)
    sheet = compose_sheet([CellImage(rgb), CellImage(gray, reverse=True), None],
                          parse_layout("2x2"), A4, Orientation.PORTRAIT, style=style)  # fmt: skip
    assert sheet.image.mode == "RGB"
    first, second, third, fourth = sheet.placements
    assert first is not None and second is not None and third is None and fourth is None
    r = first.image
    assert tuple(sheet.pixels[r.y + r.height // 2, r.x + r.width // 2]) == (200, 0, 0)
    r = second.image
    assert tuple(sheet.pixels[r.y + r.height // 2, r.x + r.width // 2]) == (225, 225, 225)
    box = sheet.geometry.cells[3]
    assert tuple(sheet.pixels[box.y + 5, box.x + 5]) == (128, 128, 128)  # empty image density
    assert tuple(sheet.pixels[1, 1]) == (255, 255, 255)  # border density
    with pytest.raises(Unprocessable, match="5 images do not fit the 4 image boxes"):
        compose_sheet([CellImage(gray)] * 5, parse_layout("2x2"), A4, Orientation.PORTRAIT)
    with pytest.raises(ValueError, match="uint8"):
        CellImage(np.zeros((4, 4), dtype=np.uint16))  # type: ignore[arg-type]


def test_large_images_are_reduced_to_their_box_with_their_scale() -> None:
    big = np.zeros((1200, 1000), dtype=np.uint8)
    big[:, 500:] = 200
    cell = CellImage(big, spacing=Spacing(0.3, 0.2))  # 360 mm tall, 200 mm wide
    layout = parse_layout("4x5")
    box = compose_sheet([], layout, FILM_14X17, Orientation.PORTRAIT).geometry.cells[0]
    reduced = cell.within(box)
    rows, columns = reduced.pixels.shape
    assert rows <= box.height and columns <= box.width and rows * columns < big.size / 8
    assert reduced.spacing is not None
    assert rows * reduced.spacing.row_mm == pytest.approx(360, rel=0.01)
    assert columns * reduced.spacing.column_mm == pytest.approx(200, rel=0.01)
    assert CellImage(big[:10, :10]).within(box).pixels.shape == (10, 10)  # small: as it is
    # Composed from the reduced image, the scale bar is still true to the original spacing.
    sheet = compose_sheet([reduced], layout, FILM_14X17, Orientation.PORTRAIT)
    placement = sheet.placements[0]
    assert placement is not None and placement.scale_bar is not None
    rect, bar = placement.image, placement.scale_bar
    assert bar.mm is not None
    mm_per_sheet_pixel = 200 / rect.width
    strip = sheet.pixels[rect.bottom - rect.height // 5 : rect.bottom, rect.x : rect.right]
    assert abs(longest_white_run(strip, 255)[2] * mm_per_sheet_pixel - bar.mm) <= (
        mm_per_sheet_pixel
    )
