"""Rendering frames to JPEG/PNG/GIF: LUT pipeline, colour models, viewport, annotation."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut

from cloudfilm.core.errors import CloudFilmError, InvalidQuery, NotAcceptable, NotFound
from cloudfilm.dicom import render
from cloudfilm.dicom.parse import parse_instance
from cloudfilm.dicom.render import (
    Window,
    display_pixels,
    render_frame,
    render_instance,
    render_multiframe_gif,
    render_thumbnail,
)
from cloudfilm.dicom.synth import generate_studies

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata"

#: Files of ../shared/testdata with pixel data that cannot be rendered, and why.
EXPECTED_FAILURES = {
    "fo-dicom/GH1146.dcm": "Pixel Data holds 0 bytes",  # empty pixel data
    "fo-dicom/GH1376.dcm": "undefined length in a native",  # encapsulated data, wrong syntax
    "fo-dicom/genFile.dcm": "cannot be decoded",  # no JPEG SOI marker: not JPEG data
    # a UN sequence in implicit VR inside big endian data: pydicom cannot read the header
    "fo-dicom/GH177_D_CLUNIE_CT1_IVRLE_BigEndian_undefined_length.dcm": "cannot parse",
}


def _ct() -> Dataset:
    return next(generate_studies(modality="CT", slices=1, rows=64, columns=64))


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _stored(data: bytes) -> tuple[bytes, int, str]:
    parsed = parse_instance(io.BytesIO(data))
    return data, parsed.received_dataset_offset, parsed.transfer_syntax


def _file(name: str) -> tuple[bytes, int, str]:
    path = TESTDATA / name if "/" in name else get_testdata_file(name)
    assert path is not None, name
    return _stored(Path(path).read_bytes())


def _png(data: bytes) -> Any:
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image)


def _linear(x: float, c: float, w: float) -> float:
    """PS3.3 C.11.2.1.2.1 for an 8-bit output."""
    if x <= c - 0.5 - (w - 1) / 2:
        return 0.0
    if x > c - 0.5 + (w - 1) / 2:
        return 255.0
    return ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0


def test_ct_with_known_window_gives_the_expected_values() -> None:
    ds = _ct()
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    center, width = 40.0, 400.0
    out = _png(
        render_instance(*_stored(_part10(ds)), 0, window=(center, width), media_type="image/png")
    )
    assert out.shape == (64, 64) and out.dtype == np.uint8
    for y, x in [(32, 32), (0, 0), (20, 40), (45, 15), (10, 50)]:
        assert abs(int(out[y, x]) - round(_linear(hu[y, x], center, width))) <= 1, (y, x)
    assert out[0, 0] == 0  # air (-1000 HU) is black in a soft tissue window


def test_rescale_is_applied_before_the_window() -> None:
    ds = _ct()
    plain = _png(render_frame(ds, ds.pixel_array, window=(40, 400), media_type="image/png"))
    ds.RescaleIntercept = -100  # every value 100 HU lower: same picture with a window 100 lower
    shifted = _png(render_frame(ds, ds.pixel_array, window=(-60, 400), media_type="image/png"))
    np.testing.assert_array_equal(plain, shifted)


def test_default_window_is_the_instances_first_window() -> None:
    ds = _ct()
    assert list(ds.WindowCenter) == [40.0, -600.0]
    default = display_pixels(ds, ds.pixel_array)
    np.testing.assert_array_equal(default, display_pixels(ds, ds.pixel_array, window=(40, 400)))


def test_without_a_window_the_pixel_range_is_used() -> None:
    ds = _ct()
    del ds.WindowCenter, ds.WindowWidth
    out = display_pixels(ds, ds.pixel_array)
    hu = ds.pixel_array
    assert out[hu == hu.min()].max() == 0 and out[hu == hu.max()].min() == 255


@pytest.mark.parametrize(
    ("function", "formula"),
    [
        ("LINEAR_EXACT", lambda x, c, w: np.clip((x - c) / w + 0.5, 0, 1) * 255),
        ("SIGMOID", lambda x, c, w: 255 / (1 + np.exp(-4 * (x - c) / w))),
    ],
)
def test_voi_lut_functions(function: str, formula: Any) -> None:
    ds = _ct()
    ds.VOILUTFunction = function
    hu = ds.pixel_array.astype(float)
    out = display_pixels(ds, ds.pixel_array)
    np.testing.assert_allclose(out, np.rint(formula(hu, 40.0, 400.0)), atol=1)
    as_parameter = display_pixels(
        ds, ds.pixel_array, window=(40, 400, function.lower().replace("_", "-"))
    )
    np.testing.assert_array_equal(out, as_parameter)


def test_monochrome1_is_inverted() -> None:
    ds = _ct()
    mono2 = display_pixels(ds, ds.pixel_array, window=(40, 400))
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_array_equal(display_pixels(ds, ds.pixel_array, window=(40, 400)), 255 - mono2)
    chest = _png(render_instance(*_file("fo-dicom/CR-MONO1-10-chest"), media_type="image/png"))
    rows, columns = chest.shape
    mediastinum = chest[rows // 3 : rows // 2, columns // 2 - 10 : columns // 2 + 10].mean()
    lung = chest[rows // 3 : rows // 2, columns // 4 - 10 : columns // 4 + 10].mean()
    assert mediastinum > lung + 40  # dense tissue bright, lungs dark: inverted correctly


def test_signed_data_without_rescale() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path
    ds = pydicom.dcmread(path)
    assert ds.PixelRepresentation == 1
    out = display_pixels(ds, ds.pixel_array, window=(100, 200))
    values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = np.array([_linear(v, 100, 200) for v in values.ravel()]).reshape(values.shape)
    np.testing.assert_allclose(out, np.rint(expected), atol=1)


def test_modality_lut_sequence() -> None:
    path = get_testdata_file("mlut_18.dcm")
    assert path
    ds = pydicom.dcmread(path)
    assert "ModalityLUTSequence" in ds
    modality = apply_modality_lut(ds.pixel_array, ds).astype(float)
    out = display_pixels(ds, ds.pixel_array, window=(2000, 4000))
    expected = np.vectorize(lambda v: _linear(v, 2000, 4000))(modality)
    np.testing.assert_allclose(out, np.rint(expected), atol=1)


def test_voi_lut_sequence() -> None:
    path = get_testdata_file("vlut_04.dcm")
    assert path
    ds = pydicom.dcmread(path)
    assert "VOILUTSequence" in ds and "WindowCenter" not in ds
    mapped = apply_voi_lut(ds.pixel_array, ds).astype(float)
    bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    out = display_pixels(ds, ds.pixel_array)
    np.testing.assert_allclose(out, np.rint(mapped * 255 / (2**bits - 1)), atol=1)
    assert out.min() != out.max()


@pytest.mark.parametrize(
    "name",
    [
        "fo-dicom/TestPattern_Palette.dcm",
        "OT-PAL-8-face.dcm",
        "fo-dicom/TestPattern_Palette_16.dcm",
    ],
)
def test_palette_color(name: str) -> None:
    data, offset, ts = _file(name)
    out = _png(render_instance(data, offset, ts, media_type="image/png"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        ds.file_meta.TransferSyntaxUID = ts
        rgb = apply_color_lut(ds.pixel_array, ds)
    if rgb.dtype != np.uint8:
        rgb = (rgb >> 8).astype(np.uint8)
    assert out.shape == rgb.shape
    np.testing.assert_array_equal(out, rgb)
    assert np.ptp(out.astype(int), axis=2).max() > 100  # really in colour


def test_rgb_pixels_are_kept() -> None:
    data, offset, ts = _file("fo-dicom/TestPattern_RGB.dcm")
    out = _png(render_instance(data, offset, ts, media_type="image/png"))
    np.testing.assert_array_equal(out, pydicom.dcmread(io.BytesIO(data)).pixel_array)


@pytest.mark.parametrize(
    "name",
    ["SC_rgb_dcmtk_+eb+cy+s2.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_ybr_full_uncompressed.dcm"],
)
def test_ybr_is_shown_as_rgb(name: str) -> None:
    out = _png(render_instance(*_file(name), media_type="image/png"))
    reference = pydicom.dcmread(get_testdata_file("SC_rgb.dcm")).pixel_array  # type: ignore[arg-type]
    assert out.shape == reference.shape
    assert np.abs(out.astype(int) - reference).mean() < 5


def test_ybr_full_pixels_given_unconverted_are_converted() -> None:
    ds = pydicom.dcmread(get_testdata_file("SC_ybr_full_uncompressed.dcm"))  # type: ignore[arg-type]
    from pydicom.pixels import pixel_array

    raw = pixel_array(ds, raw=True)  # still YCbCr
    out = display_pixels(ds, raw, photometric="YBR_FULL")
    np.testing.assert_allclose(out, ds.pixel_array, atol=2)


def test_multiframe_gif_has_every_frame() -> None:
    data, offset, ts = _file("emri_small.dcm")
    gif = Image.open(io.BytesIO(render_multiframe_gif(data, offset, ts)))
    assert gif.format == "GIF" and gif.n_frames == 10
    color = Image.open(io.BytesIO(render_multiframe_gif(*_file("SC_rgb_rle_2frame.dcm"))))
    assert color.n_frames == 2


def test_gif_single_frame_and_other_frames() -> None:
    data, offset, ts = _file("emri_small.dcm")
    first = _png(render_instance(data, offset, ts, 0, media_type="image/png"))
    last = _png(render_instance(data, offset, ts, 9, media_type="image/png"))
    assert not np.array_equal(first, last)
    assert (
        Image.open(io.BytesIO(render_instance(data, offset, ts, 3, media_type="image/gif"))).format
        == "GIF"
    )
    with pytest.raises(NotFound):
        render_instance(data, offset, ts, 10)


def test_viewport_fits_and_never_enlarges() -> None:
    data, offset, ts = _file("fo-dicom/CT-MONO2-16-ankle")
    size = Image.open(io.BytesIO(render_instance(data, offset, ts))).size
    assert size == (512, 512)
    assert Image.open(io.BytesIO(render_instance(data, offset, ts, viewport=(128, 64)))).size == (
        64,
        64,
    )
    assert Image.open(io.BytesIO(render_instance(data, offset, ts, viewport=(100, 300)))).size == (
        100,
        100,
    )
    assert Image.open(
        io.BytesIO(render_instance(data, offset, ts, viewport=(1024, 2048)))
    ).size == (512, 512)
    region = render_instance(data, offset, ts, viewport=(64, 64, 0, 0, 256, 128))
    assert Image.open(io.BytesIO(region)).size == (64, 32)


def test_viewport_region_and_flip() -> None:
    ds = _ct()
    base = _png(render_frame(ds, ds.pixel_array, media_type="image/png"))
    crop = _png(
        render_frame(ds, ds.pixel_array, viewport=(64, 64, 8, 4, 16, 32), media_type="image/png")
    )
    np.testing.assert_array_equal(crop, base[4:36, 8:24])
    flipped = _png(
        render_frame(ds, ds.pixel_array, viewport=(64, 64, 0, 0, -64, 64), media_type="image/png")
    )
    np.testing.assert_array_equal(flipped, base[:, ::-1])


def test_jpeg_quality_changes_the_size() -> None:
    data, offset, ts = _file("fo-dicom/CT-MONO2-16-ankle")
    small = render_instance(data, offset, ts, quality=10)
    large = render_instance(data, offset, ts, quality=95)
    assert len(small) < len(large) / 2
    assert Image.open(io.BytesIO(small)).format == "JPEG"


def test_bad_parameters() -> None:
    ds = _ct()
    with pytest.raises(InvalidQuery):
        render_frame(ds, ds.pixel_array, quality=0)
    with pytest.raises(InvalidQuery):
        render_frame(ds, ds.pixel_array, window=(40, 0))
    with pytest.raises(InvalidQuery):
        render_frame(ds, ds.pixel_array, window=(40, 400, "cubic"))
    with pytest.raises(InvalidQuery):
        render_frame(ds, ds.pixel_array, viewport=(0, 0))
    with pytest.raises(InvalidQuery):
        render_frame(ds, ds.pixel_array, annotation="everything")
    with pytest.raises(NotAcceptable):
        render_frame(ds, ds.pixel_array, media_type="image/webp")
    assert Window.of((1, 2, "LINEAR-EXACT")).function == "LINEAR_EXACT"


def test_annotation_burns_in_text() -> None:
    ds = _ct()
    plain = _png(render_frame(ds, ds.pixel_array, media_type="image/png"))
    patient = _png(render_frame(ds, ds.pixel_array, media_type="image/png", annotation="patient"))
    both = _png(
        render_frame(
            ds, ds.pixel_array, media_type="image/png", annotation=["patient", "technique"]
        )
    )
    top, bottom = slice(0, 12), slice(52, 64)
    assert not np.array_equal(plain[top], patient[top])
    np.testing.assert_array_equal(plain[bottom], patient[bottom])
    assert not np.array_equal(plain[bottom], both[bottom])


def test_chinese_names_use_a_cjk_font_or_fall_back() -> None:
    ds = _ct()
    assert "张" in str(ds.PatientName)
    shown = render._person_name(ds.PatientName)
    if render._has_cjk_font():
        assert shown.startswith("张伟")
    else:
        assert shown == "Zhang Wei"  # the alphabetic group, never boxes
    render_frame(ds, ds.pixel_array, annotation="patient")  # draws either way


def test_thumbnail_is_a_small_jpeg_of_the_middle_frame() -> None:
    data, offset, ts = _file("emri_small.dcm")
    thumb = Image.open(io.BytesIO(render_thumbnail(data, offset, ts)))
    assert thumb.format == "JPEG" and max(thumb.size) <= 128
    big = _file("fo-dicom/CT-MONO2-16-ankle")
    assert Image.open(io.BytesIO(render_thumbnail(*big))).size == (128, 128)
    middle = _png(render_instance(data, offset, ts, 5, media_type="image/png"))
    assert np.abs(np.asarray(thumb).astype(int) - middle).mean() < 10


def _testdata_files() -> list[Path]:
    """The shared test files that the archive stores (``tests/expected_outcomes.csv``): a
    file parse refuses never reaches rendering, so it is not a case here."""
    table = Path(__file__).parents[1] / "expected_outcomes.csv"
    with table.open(encoding="utf-8", newline="") as fp:
        refused = {
            row["relative_path"]
            for row in csv.DictReader(fp)
            if row["source"] == "testdata" and row["outcome"] not in ("stored", "duplicate")
        }
    skip = {".md", ".txt"}
    return sorted(
        p
        for p in TESTDATA.rglob("*")
        if p.is_file()
        and p.suffix not in skip
        and p.name not in ("LICENSE", "DICOMDIR")
        and str(p.relative_to(TESTDATA)) not in refused
    )


@pytest.mark.parametrize("path", _testdata_files(), ids=lambda p: str(p.relative_to(TESTDATA)))
def test_every_testdata_file_renders_or_fails_clearly(path: Path) -> None:
    name = str(path.relative_to(TESTDATA))
    data = path.read_bytes()
    parsed = parse_instance(io.BytesIO(data))
    try:
        out = render_instance(data, parsed.received_dataset_offset, parsed.transfer_syntax)
    except NotFound as exc:
        assert "no pixel data" in exc.message
        assert name not in EXPECTED_FAILURES
        return
    except CloudFilmError as exc:
        assert name in EXPECTED_FAILURES, f"{name}: {exc.message}"
        assert EXPECTED_FAILURES[name] in exc.message
        return
    assert name not in EXPECTED_FAILURES, "expected to fail but rendered: update the table"
    image = Image.open(io.BytesIO(out))
    image.load()
    assert image.format == "JPEG" and min(image.size) > 0


def test_expected_failures_exist() -> None:
    for name in EXPECTED_FAILURES:
        assert (TESTDATA / name).is_file(), name
