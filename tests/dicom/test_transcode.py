"""Transcoding stored data sets: uncompressed ↔ uncompressed, compressed → uncompressed, and
uncompressed → lossless compressed, with the SOP Instance UID and the text kept."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from cloudfilm.core.errors import NotAcceptable
from cloudfilm.dicom.parse import parse_instance
from cloudfilm.dicom.synth import generate_studies
from cloudfilm.dicom.transcode import can_transcode, to_part10, transcode_to

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata"


def _source(name: str) -> tuple[bytes, int, str]:
    path = TESTDATA / name if "/" in name else get_testdata_file(name)
    assert path is not None, name
    data = Path(path).read_bytes()
    parsed = parse_instance(io.BytesIO(data))
    return data, parsed.received_dataset_offset, parsed.transfer_syntax


def _read(data: bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


def _pixels(data: bytes) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _read(data).pixel_array


def _convert(source: tuple[bytes, int, str], target: str) -> bytes:
    return to_part10(source[0], source[1], source[2], target)


@pytest.mark.parametrize(
    "name",
    [
        "dicomParser/CT1_UNC.implicit_little_endian.dcm",
        "dicomParser/CT1_UNC.explicit_big_endian.dcm",
        "MR_small_bigendian.dcm",
        "SC_rgb_expb_32bit_2frame.dcm",
        "OBXXXX1A_expb_2frame.dcm",
    ],
)
def test_implicit_and_big_endian_become_explicit_little_endian(name: str) -> None:
    """WADO-URI (PS3.18) returns these originals as Explicit VR Little Endian."""
    source = _source(name)
    result = _convert(source, ExplicitVRLittleEndian)
    ds, original = _read(result), _read(source[0])
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not ds.original_encoding[0] and ds.original_encoding[1]  # explicit, little
    assert ds.SOPInstanceUID == original.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    np.testing.assert_array_equal(ds.pixel_array, original.pixel_array)
    for element in original:
        if element.tag != 0x7FE00010 and element.VR not in ("SQ", "UN", "OW", "OB"):
            assert ds[element.tag].value == element.value, element


@pytest.mark.parametrize(
    "target", [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian]
)
def test_explicit_little_endian_to_other_uncompressed_and_back(target: str) -> None:
    source = _source("CT_small.dcm")
    there = _convert(source, target)
    assert _read(there).file_meta.TransferSyntaxUID == target
    np.testing.assert_array_equal(_pixels(there), _pixels(source[0]))
    parsed = parse_instance(io.BytesIO(there))
    back = _read(to_part10(there, parsed.received_dataset_offset, target, ExplicitVRLittleEndian))
    original = _read(source[0])
    for element in original:  # private elements lose their VR in implicit VR (become UN)
        if not element.tag.is_private and element.tag != 0xFFFCFFFC:  # padding is dropped
            assert back[element.tag].value == element.value, element
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("SC_rgb_dcmtk_+eb+cy+s2.dcm", "1.2.840.10008.1.2.4.50"),  # JPEG baseline, YBR_FULL_422
        ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51"),  # JPEG extended 12 bit
        ("JPEG-LL.dcm", "1.2.840.10008.1.2.4.70"),  # JPEG lossless
        (
            "dicomParser/encapsulated/multi-frame/CT0012.fragmented_no_bot_jpeg_lossless.57.dcm",
            "1.2.840.10008.1.2.4.57",
        ),
        ("emri_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),  # JPEG-LS, 10 frames
        ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),  # JPEG 2000 lossless
        ("US1_J2KI.dcm", "1.2.840.10008.1.2.4.91"),  # JPEG 2000, YBR_ICT colour
        ("SC_rgb_rle_2frame.dcm", "1.2.840.10008.1.2.5"),  # RLE colour, 2 frames
        (
            "dicomParser/encapsulated/multi-frame/CT0012.not_fragmented_no_bot_rle.dcm",
            "1.2.840.10008.1.2.5",
        ),
    ],
)
def test_compressed_becomes_explicit_little_endian(name: str, syntax: str) -> None:
    """What a DIMSE sender needs when the peer accepts only uncompressed data."""
    source = _source(name)
    assert source[2] == syntax
    assert can_transcode(syntax, ExplicitVRLittleEndian)
    result = _convert(source, ExplicitVRLittleEndian)
    ds = _read(result)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPInstanceUID == _read(source[0]).SOPInstanceUID
    np.testing.assert_array_equal(ds.pixel_array, _pixels(source[0]))
    if ds.SamplesPerPixel == 3:
        assert ds.PhotometricInterpretation == "RGB" and ds.PlanarConfiguration == 0
    lossy = syntax in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.91")
    assert (ds.get("LossyImageCompression") == "01") == lossy


def test_ybr_jpeg_is_marked_rgb_after_decompression() -> None:
    source = _source("SC_rgb_dcmtk_+eb+cy+s2.dcm")
    assert _read(source[0]).PhotometricInterpretation == "YBR_FULL_422"
    ds = _read(_convert(source, ExplicitVRLittleEndian))
    assert ds.PhotometricInterpretation == "RGB"
    assert ds.LossyImageCompressionMethod == "ISO_10918_1"
    reference = _pixels(_source("SC_rgb.dcm")[0])  # the same picture, never compressed
    assert np.abs(ds.pixel_array.astype(int) - reference).mean() < 5


@pytest.mark.parametrize("target", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
@pytest.mark.parametrize("name", ["CT_small.dcm", "SC_rgb_2frame.dcm", "MR_small_bigendian.dcm"])
def test_lossless_targets_round_trip_exactly(name: str, target: str) -> None:
    source = _source(name)
    assert can_transcode(source[2], target)
    compressed = _convert(source, target)
    ds = _read(compressed)
    assert ds.file_meta.TransferSyntaxUID == target
    assert ds.SOPInstanceUID == _read(source[0]).SOPInstanceUID
    assert "LossyImageCompression" not in ds or ds.LossyImageCompression == "00"
    np.testing.assert_array_equal(ds.pixel_array, _pixels(source[0]))
    parsed = parse_instance(io.BytesIO(compressed))
    back = to_part10(compressed, parsed.received_dataset_offset, target, ExplicitVRLittleEndian)
    np.testing.assert_array_equal(_pixels(back), _pixels(source[0]))


def test_impossible_conversions_are_not_acceptable() -> None:
    assert not can_transcode(ExplicitVRLittleEndian, JPEGBaseline8Bit)  # no lossy derived data
    assert not can_transcode(ExplicitVRLittleEndian, "1.2.3.4")
    assert not can_transcode("1.2.840.10008.1.2.4.100", ExplicitVRLittleEndian)  # MPEG-2 video
    assert can_transcode(JPEGBaseline8Bit, JPEGBaseline8Bit)  # as stored
    source = _source("CT_small.dcm")
    with pytest.raises(NotAcceptable, match="cannot transcode"):
        transcode_to(*source, JPEGBaseline8Bit)
    rgb32 = _source("SC_rgb_32bit.dcm")
    with pytest.raises(NotAcceptable, match="cannot be encoded"):
        transcode_to(*rgb32, JPEGLSLossless)


def test_same_syntax_returns_the_stored_bytes() -> None:
    data, offset, ts = _source("JPEG-LL.dcm")
    assert transcode_to(data, offset, ts, ts) == data[offset:]
    assert transcode_to(io.BytesIO(data), offset, ts, ts) == data[offset:]


def test_data_set_without_pixels() -> None:
    source = _source("fo-dicom/test_SR.dcm")
    result = _read(_convert(source, ImplicitVRLittleEndian))
    original = _read(source[0])
    assert result.ContentSequence[0].ConceptNameCodeSequence[0].CodeValue == (
        original.ContentSequence[0].ConceptNameCodeSequence[0].CodeValue
    )


@pytest.mark.parametrize("charset", ["ir58", "gb18030"])
def test_chinese_text_is_copied_byte_for_byte(charset: str) -> None:
    """ISO 2022 IR 58 survives implicit → explicit (pydicom alone would drop its escapes)."""
    ds = next(
        generate_studies(
            modality="CT",
            slices=1,
            rows=16,
            columns=16,
            charset=charset,
            transfer_syntax="implicit",
        )
    )
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    parsed = parse_instance(io.BytesIO(data))
    assert parsed.transfer_syntax == ImplicitVRLittleEndian
    original_name = parsed.dataset.get_item("PatientName").value
    assert any(byte > 0x7F for byte in original_name)  # Chinese in the name
    result = transcode_to(
        data, parsed.received_dataset_offset, parsed.transfer_syntax, ExplicitVRLittleEndian
    )
    assert b"PN" + len(original_name).to_bytes(2, "little") + original_name in result
    assert str(
        _read(
            _convert(
                (data, parsed.received_dataset_offset, parsed.transfer_syntax),
                ExplicitVRLittleEndian,
            )
        ).PatientName
    ) == str(ds.PatientName)
