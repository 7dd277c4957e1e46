"""Film geometry: film sizes, Image Display Formats (PS3.3 C.13.5.1), boxes and fitting."""

from __future__ import annotations

import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudfilm.core.config import FilmSizeId
from cloudfilm.film.layout import (
    FILM_SIZES,
    DisplayFormat,
    InvalidLayout,
    Magnification,
    Orientation,
    Rect,
    density_to_gray,
    fit_image,
    match_film_size,
    parse_display_format,
    parse_film_size,
    parse_layout,
    parse_magnification,
    parse_orientation,
    sheet_geometry,
)

AREA = Rect(10, 20, 1000, 1200)


@pytest.mark.parametrize("columns", range(1, 6))
@pytest.mark.parametrize("rows", range(1, 7))
def test_standard_layouts_from_1x1_to_5x6(columns: int, rows: int) -> None:
    layout = parse_layout(f"{columns}x{rows}")
    assert layout == parse_display_format(f"STANDARD\\{columns},{rows}")
    assert layout.dicom() == f"STANDARD\\{columns},{rows}"
    assert layout.capacity == columns * rows
    cells = layout.cells(AREA, gutter=4)
    assert len(cells) == columns * rows
    # Row-major Image Position order: left to right, then top to bottom.
    for position, cell in enumerate(cells):
        row, column = divmod(position, columns)
        assert cell.x == cells[column].x and cell.y == cells[row * columns].y
    assert sorted({c.x for c in cells}) == [c.x for c in cells[:columns]]
    # Equal boxes (within a pixel of rounding), inside the area, 4 pixels apart, none overlap.
    assert max(c.width for c in cells) - min(c.width for c in cells) <= 1
    assert max(c.height for c in cells) - min(c.height for c in cells) <= 1
    assert cells[0].x == AREA.x and cells[0].y == AREA.y
    assert cells[-1].right == AREA.right and cells[-1].bottom == AREA.bottom
    if columns > 1:
        assert cells[1].x - cells[0].right == 4
    if rows > 1:
        assert cells[columns].y - cells[0].bottom == 4


def test_row_and_col_formats() -> None:
    row = parse_display_format("ROW\\2,3")
    assert (row.kind, row.counts, row.capacity) == ("ROW", (2, 3), 5)
    cells = row.cells(Rect(0, 0, 600, 400))
    # Two rows: two boxes in the first, three in the second, numbered row by row.
    assert [(c.x, c.y) for c in cells] == [(0, 0), (300, 0), (0, 200), (200, 200), (400, 200)]
    assert {(c.width, c.height) for c in cells[:2]} == {(300, 200)}
    col = parse_display_format(" col \\ 1, 2 ")
    assert col.dicom() == "COL\\1,2"
    cells = col.cells(Rect(0, 0, 600, 400))
    # Two columns, numbered top to bottom in each, then the next column.
    assert [(c.x, c.y, c.width, c.height) for c in cells] == [
        (0, 0, 300, 400), (300, 0, 300, 200), (300, 200, 300, 200),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "not an Image Display Format"),
        ("STANDARD", "not an Image Display Format"),
        ("STANDARD\\", "whole numbers"),
        ("STANDARD\\4", "two counts"),
        ("STANDARD\\4,5,6", "two counts"),
        ("STANDARD\\0,5", "between 1 and 16"),
        ("STANDARD\\17,1", "between 1 and 16"),
        ("STANDARD\\a,b", "whole numbers"),
        ("STANDARD\\4,-5", "whole numbers"),
        ("STANDARD\\4.5,5", "whole numbers"),
        ("ROW\\", "whole numbers"),
        ("ROW\\" + ",".join(["1"] * 17), "at most 16"),
        ("GRID\\2,2", "not an Image Display Format"),
        ("SLIDE", "printer-defined"),
        ("SUPERSLIDE", "printer-defined"),
        ("CUSTOM\\1", "printer-defined"),
        ("4x0", "between 1 and 16"),
        ("4x", "not an Image Display Format"),
    ],
)
def test_bad_display_formats_are_refused(value: str, words: str) -> None:
    with pytest.raises(InvalidLayout, match=words) as raised:
        parse_layout(value)
    assert raised.value.status == 400


@given(st.text(max_size=40))
def test_parsing_any_text_gives_a_format_or_invalid_layout(text: str) -> None:
    try:
        parsed = parse_display_format(text)
    except InvalidLayout:
        return
    assert parse_display_format(parsed.dicom()) == parsed
    assert 1 <= parsed.capacity <= 16 * 16


@given(st.sampled_from(["STANDARD", "ROW", "COL"]), st.lists(st.integers(1, 16), min_size=1))
def test_formats_round_trip(kind: str, counts: list[int]) -> None:
    counts = counts[:2] if kind == "STANDARD" else counts[:16]
    if kind == "STANDARD" and len(counts) == 1:
        counts = counts * 2
    parsed = parse_display_format(f"{kind}\\{','.join(map(str, counts))}")
    assert parsed == DisplayFormat(kind, tuple(counts))  # type: ignore[arg-type]
    assert len(parsed.cells(Rect(0, 0, 2000, 2000), gutter=2)) == parsed.capacity


def test_film_sizes_are_the_defined_terms() -> None:
    assert list(FILM_SIZES) == list(typing.get_args(FilmSizeId))
    size = parse_film_size(" 14inx17in ")
    assert size.pixels(Orientation.PORTRAIT, 150) == (2100, 2550)
    assert size.pixels(Orientation.LANDSCAPE, 150) == (2550, 2100)
    assert parse_film_size("A3").dimensions_mm(Orientation.PORTRAIT) == (297.0, 420.0)
    assert parse_film_size("10INX14IN").dimensions_mm(Orientation.LANDSCAPE) == (364.0, 257.0)
    assert parse_film_size("11INX14IN").dimensions_mm(Orientation.PORTRAIT) == (279.4, 355.6)
    with pytest.raises(InvalidLayout, match="14INX17IN"):
        parse_film_size("15INX15IN")
    assert match_film_size(431.8, 355.6, 0.2) == (FILM_SIZES["14INX17IN"], Orientation.LANDSCAPE)
    assert match_film_size(300.0, 300.0, 1.0) is None


def test_orientation_magnification_and_density() -> None:
    assert parse_orientation("landscape") is Orientation.LANDSCAPE
    assert parse_magnification("cubic") is Magnification.CUBIC
    with pytest.raises(InvalidLayout, match="PORTRAIT or LANDSCAPE"):
        parse_orientation("sideways")
    with pytest.raises(InvalidLayout, match="REPLICATE"):
        parse_magnification("LANCZOS")
    assert density_to_gray("BLACK") == 0
    assert density_to_gray("white") == 255
    assert density_to_gray(None, 7) == 7
    assert density_to_gray("0") == 255
    assert density_to_gray(300) == 0
    assert 255 > density_to_gray("20") > density_to_gray("150") > density_to_gray("250") > 0
    with pytest.raises(InvalidLayout, match="hundredths of OD"):
        density_to_gray("GREY")


def test_sheet_geometry_leaves_room_for_the_header() -> None:
    layout = parse_layout("4x5")
    size = parse_film_size("14INX17IN")
    plain = sheet_geometry(layout, size, Orientation.PORTRAIT, 150)
    banded = sheet_geometry(layout, size, Orientation.PORTRAIT, 150, header_mm=14)
    assert (plain.width, plain.height, plain.header) == (2100, 2550, None)
    assert banded.header is not None and banded.header.height == round(14 / 25.4 * 150)
    assert banded.cells[0].y > banded.header.bottom
    assert all(c.bottom <= banded.height and c.right <= banded.width for c in banded.cells)
    small = parse_film_size("8INX10IN")
    with pytest.raises(InvalidLayout, match="16 image boxes do not fit"):
        sheet_geometry(parse_layout("16x16"), small, Orientation.PORTRAIT, 10, header_mm=230)
    with pytest.raises(InvalidLayout, match="outside 10-1200"):
        sheet_geometry(layout, small, Orientation.PORTRAIT, 5)


def test_fit_keeps_the_aspect_ratio_and_centres() -> None:
    cell = Rect(100, 50, 400, 300)
    wide = fit_image(512, 256, cell)
    assert (wide.width, wide.height) == (400, 200)
    assert (wide.x, wide.y) == (100, 100)  # centred vertically
    square = fit_image(512, 512, cell)
    assert (square.x, square.y, square.width, square.height) == (150, 50, 300, 300)
    # Pixels twice as tall as wide (Pixel Spacing 1.0 \ 0.5) are shown at their true shape.
    tall = fit_image(200, 100, cell, aspect=2.0)
    assert tall.width == tall.height == 300
    # NONE never enlarges; it still reduces what is too large.
    small = fit_image(64, 32, cell, magnification=Magnification.NONE)
    assert (small.width, small.height) == (64, 32)
    assert fit_image(800, 800, cell, magnification=Magnification.NONE).height == 300
