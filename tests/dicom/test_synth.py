"""Tests for the synthetic study generator :mod:`cloudfilm.dicom.synth`."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.charset
import pytest
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pydicom.valuerep import PersonName

from cloudfilm.dicom import synth
from cloudfilm.dicom.synth import (
    CHARSETS,
    MODALITIES,
    TRANSFER_SYNTAXES,
    generate_studies,
    write_studies,
)

# Small geometry per modality so the whole file stays fast.
SMALL: dict[str, dict[str, Any]] = {
    "CT": {"modality": "CT", "rows": 64, "columns": 64, "slices": 3},
    "MR": {"modality": "MR", "rows": 48, "columns": 48, "slices": 3},
    "CR": {"modality": "CR", "rows": 120, "columns": 150},
    "US": {"modality": "US", "rows": 48, "columns": 64, "slices": 4},
}
COMPRESSED = ("rle", "jpegls", "jpeg2000")
IDENTITY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyID", "StudyDescription", "SeriesDescription", "SeriesNumber",
    "Modality", "BodyPartExamined", "InstitutionName", "ReferringPhysicianName", "Manufacturer",
    "SpecificCharacterSet", "InstanceNumber",
)  # fmt: skip


def _part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _reread(ds: Dataset) -> Dataset:
    return pydicom.dcmread(io.BytesIO(_part10(ds)))


def _hu(ds: Dataset) -> np.ndarray[Any, np.dtype[np.float64]]:
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@pytest.fixture
def ir58_fixed_pydicom(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """pydicom with its ISO 2022 IR 58 bug fixed (what ``cloudfilm.dicom`` applies on import)."""
    fixed = tuple(e for e in pydicom.charset.handled_encodings if e != "iso_ir_58")
    monkeypatch.setattr(pydicom.charset, "handled_encodings", fixed)
    yield


@pytest.fixture
def ir58_vanilla_pydicom(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """pydicom 3.0.2 as shipped: ``iso_ir_58`` wrongly listed as escaping by itself."""
    monkeypatch.setattr(
        pydicom.charset, "handled_encodings", ("iso2022_jp", "iso2022_jp_2", "iso_ir_58")
    )
    yield


def test_public_constants() -> None:
    assert TRANSFER_SYNTAXES == {
        "explicit": "1.2.840.10008.1.2.1",
        "implicit": "1.2.840.10008.1.2",
        "rle": "1.2.840.10008.1.2.5",
        "jpegls": "1.2.840.10008.1.2.4.80",
        "jpeg2000": "1.2.840.10008.1.2.4.90",
    }
    assert CHARSETS == ("utf8", "gb18030", "ir58")
    assert MODALITIES == ("CT", "MR", "CR", "US")


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    kwargs = {**SMALL["CT"], "patients": 2, "seed": 7}
    first = write_studies(tmp_path / "a", **kwargs)
    second = write_studies(tmp_path / "b", **kwargs)
    assert [p.relative_to(tmp_path / "a") for p in first] == [
        p.relative_to(tmp_path / "b") for p in second
    ]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second, strict=True))


def test_other_seed_gives_other_uids_and_ids() -> None:
    def ids(seed: int) -> set[str]:
        out: set[str] = set()
        for ds in generate_studies(seed=seed, **SMALL["CT"]):
            out |= {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}
            out |= {ds.FrameOfReferenceUID, ds.PatientID, ds.AccessionNumber}
        return out

    assert ids(1).isdisjoint(ids(2))


def test_uids_are_unique_and_valid() -> None:
    datasets = list(generate_studies(**SMALL["CT"], patients=2, studies_per_patient=2))
    sops = [ds.SOPInstanceUID for ds in datasets]
    assert len(sops) == len(set(sops)) == 12
    assert len({ds.StudyInstanceUID for ds in datasets}) == 4
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 4
    for ds in datasets:
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert uid.startswith("2.25.") and len(uid) <= 64 and uid.is_valid
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    # Same seed, other modality: same patient, other study.
    mr = next(iter(generate_studies(**SMALL["MR"])))
    assert mr.PatientID == datasets[0].PatientID
    assert mr.StudyInstanceUID not in {ds.StudyInstanceUID for ds in datasets}


@pytest.mark.parametrize(
    ("modality", "slices", "per_study"), [("CT", 4, 4), ("MR", 2, 2), ("CR", 9, 1), ("US", 5, 1)]
)
def test_counts(modality: str, slices: int, per_study: int) -> None:
    kwargs = {**SMALL[modality], "slices": slices, "patients": 3, "studies_per_patient": 2}
    datasets = list(generate_studies(**kwargs))
    assert len(datasets) == 3 * 2 * per_study
    assert len({ds.StudyInstanceUID for ds in datasets}) == 6
    assert len({ds.PatientID for ds in datasets}) == 3
    assert len({str(ds.PatientName) for ds in datasets}) == 3
    for study in {ds.StudyInstanceUID for ds in datasets}:
        members = [ds for ds in datasets if ds.StudyInstanceUID == study]
        assert len({ds.SeriesInstanceUID for ds in members}) == 1
        assert sorted(ds.InstanceNumber for ds in members) == list(range(1, per_study + 1))


def test_many_patients_get_distinct_names_and_ids() -> None:
    datasets = list(generate_studies(modality="CR", rows=16, columns=16, patients=120, seed=3))
    assert len({str(ds.PatientName) for ds in datasets}) == 120
    assert len({ds.PatientID for ds in datasets}) == 120
    assert all(ds.PatientID.startswith("CF") and ds.PatientSex in "MF" for ds in datasets)


@pytest.mark.parametrize(
    ("modality", "shape", "dtype"),
    [
        ("CT", (64, 64), np.int16),
        ("MR", (48, 48), np.uint16),
        ("CR", (120, 150), np.uint16),
        ("US", (4, 48, 64, 3), np.uint8),
    ],
)
def test_modality_pixels_and_identity(modality: str, shape: tuple[int, ...], dtype: type) -> None:
    for ds in generate_studies(**SMALL[modality]):
        back = _reread(ds)
        assert back.pixel_array.shape == shape
        assert back.pixel_array.dtype == dtype
        assert back.Modality == modality
        for keyword in IDENTITY:
            assert keyword in back and back[keyword].value not in (None, ""), keyword
        assert back.Manufacturer == "cloudfilm synth"
        if modality in ("MR", "CR"):
            assert back.BitsStored == 12 and int(back.pixel_array.max()) <= 4095


def test_specific_modality_attributes() -> None:
    mr = next(iter(generate_studies(**SMALL["MR"])))
    assert mr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert mr.MagneticFieldStrength > 0 and mr.EchoTime > 0 and mr.RepetitionTime > 0
    cr = next(iter(generate_studies(modality="CR", slices=40)))  # default 2500×3000
    assert (cr.Rows, cr.Columns, cr.ViewPosition) == (2500, 3000, "PA")
    assert cr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1"
    assert [float(v) for v in cr.ImagerPixelSpacing] == pytest.approx([0.14, 0.14])
    us = next(iter(generate_studies(modality="US", slices=50, rows=32, columns=40)))
    assert us.SOPClassUID == "1.2.840.10008.5.1.4.1.1.3.1"
    assert us.NumberOfFrames == 30 and us.FrameTime > 0 and us.CineRate == 30
    assert (us.PhotometricInterpretation, us.SamplesPerPixel, us.PlanarConfiguration) == (
        "RGB",
        3,
        0,
    )
    frames = us.pixel_array
    assert not np.array_equal(frames[0], frames[1])  # the sector image moves
    assert not np.array_equal(frames[..., 0], frames[..., 1])  # really colour: overlays


def test_default_ct_geometry() -> None:
    first, second = generate_studies(slices=2)
    for ds in (first, second):
        assert (ds.Rows, ds.Columns) == (512, 512)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 16, 1)
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([0.703125] * 2, abs=1e-5)
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.WindowCenter] == [40, -600]
        assert [float(v) for v in ds.WindowWidth] == [400, 1500]
        assert float(ds.SliceLocation) == float(ds.ImagePositionPatient[2])
        assert ds.pixel_array.shape == (512, 512)
    step = float(first.ImagePositionPatient[2]) - float(second.ImagePositionPatient[2])
    assert step == pytest.approx(float(first.SliceThickness))
    assert float(first.SpacingBetweenSlices) == float(first.SliceThickness)
    assert (first.InstanceNumber, second.InstanceNumber) == (1, 2)
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID


def test_ct_phantom_hounsfield_units() -> None:
    slices = list(generate_studies(modality="CT", rows=128, columns=128, slices=3))
    ds = slices[1]  # mid chest, 150 mm below the lung apex
    hu = _hu(_reread(ds))
    assert hu[0, 0] == hu[-1, -1] == hu[0, -1] == -1000  # air around the patient
    assert hu.max() > 300  # bone
    spacing = float(ds.PixelSpacing[0])
    x0, y0 = (float(v) for v in ds.ImagePositionPatient[:2])
    for lung_x in (-70.0, 75.0):  # both lungs, 5 mm behind the body centre line
        col, row = round((lung_x - x0) / spacing), round((5.0 - y0) / spacing)
        assert hu[row - 3 : row + 4, col - 3 : col + 4].mean() < -500
    # Scrolling shows change: neighbouring slices differ, far ones a lot.
    apex, base = generate_studies(modality="CT", rows=64, columns=64, slices=2, seed=0)
    assert not np.array_equal(apex.pixel_array, base.pixel_array)
    assert np.array_equal(hu, _hu(ds))


@pytest.mark.parametrize("modality", MODALITIES)
def test_transfer_syntaxes_round_trip_losslessly(modality: str) -> None:
    reference = [_reread(ds).pixel_array for ds in generate_studies(**SMALL[modality])]
    for name in ("implicit", *COMPRESSED):
        datasets = list(generate_studies(**SMALL[modality], transfer_syntax=name))
        assert len(datasets) == len(reference)
        for ds, expected in zip(datasets, reference, strict=True):
            assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[name]
            back = _reread(ds)
            assert back.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[name]
            np.testing.assert_array_equal(back.pixel_array, expected, err_msg=name)
            if name == "implicit":
                assert back.original_encoding == (True, True)


def test_compressed_instances_keep_their_uids() -> None:
    plain = next(iter(generate_studies(**SMALL["CT"])))
    packed = next(iter(generate_studies(**SMALL["CT"], transfer_syntax="jpegls")))
    assert packed.SOPInstanceUID == plain.SOPInstanceUID
    assert len(_part10(packed)) < len(_part10(plain))


@pytest.mark.parametrize("charset", CHARSETS)
def test_charset_round_trip(charset: str, ir58_fixed_pydicom: None) -> None:
    ds = next(iter(generate_studies(**SMALL["CR"], charset=charset)))
    assert str(ds.PatientName) == "Zhang^Wei=张^伟"  # in memory, before writing
    raw = _part10(ds)
    back = pydicom.dcmread(io.BytesIO(raw))
    assert str(back.PatientName) == "Zhang^Wei=张^伟"
    assert back.PatientName.alphabetic == "Zhang^Wei"
    assert back.PatientName.ideographic == "张^伟"
    assert back.PatientName.family_name == "Zhang"
    assert back.InstitutionName == "云胶片示范医院"
    assert back.StudyDescription == "胸部正位片"
    assert str(back.ReferringPhysicianName) == "Li^Ming=李^明"


def _ir58_checks(raw: bytes) -> None:
    # PS3.5 Annex K: value 1 empty, G1 designated by ESC $ ) A after every delimiter,
    # GB2312 bytes with the high bit set (EUC-CN).
    assert b"\x00\\ISO 2022 IR 58" in raw
    zhang, wei = "张".encode("gb2312"), "伟".encode("gb2312")
    assert zhang == b"\xd5\xc5" and all(byte >= 0x80 for byte in zhang + wei)
    assert b"Zhang^Wei=\x1b$)A" + zhang + b"^\x1b$)A" + wei in raw
    assert b"Li^Ming=\x1b$)A" + "李".encode("gb2312") + b"^\x1b$)A" in raw
    assert b"\x1b$)A" + "云胶片示范医院".encode("gb2312") in raw


def _first_raw(charset: str) -> bytes:
    return _part10(next(iter(generate_studies(**SMALL["CR"], charset=charset))))


def test_charset_raw_bytes(ir58_fixed_pydicom: None) -> None:
    utf8, gb18030 = _first_raw("utf8"), _first_raw("gb18030")
    assert b"ISO_IR 192" in utf8 and b"Zhang^Wei=" + "张^伟".encode() in utf8
    assert b"GB18030" in gb18030
    assert b"Zhang^Wei=" + "张^伟".encode("gb18030") in gb18030
    _ir58_checks(_first_raw("ir58"))
    ds = next(iter(generate_studies(**SMALL["CR"], charset="ir58")))
    assert ds.InstitutionName == "云胶片示范医院"  # pydicom fixed: values stay str


def test_ir58_correct_even_with_unpatched_pydicom(ir58_vanilla_pydicom: None) -> None:
    """pydicom 3.0.2 mishandles ISO 2022 IR 58 both ways; synth's own encoding covers it."""
    encodings = convert_encodings(["", "ISO 2022 IR 58"])
    # The bug: GB2312 bytes without the ESC $ ) A designation ...
    assert PersonName("Zhang^Wei=张^伟").encode(encodings) == b"Zhang^Wei=\xd5\xc5^\xce\xb0"
    # ... yet synth's file is right (PN via original_string, LO pre-encoded as bytes).
    ds = next(iter(generate_studies(**SMALL["CR"], charset="ir58")))
    assert str(ds.PatientName) == "Zhang^Wei=张^伟"
    assert isinstance(ds.InstitutionName, bytes)
    raw = _part10(ds)
    _ir58_checks(raw)
    # ... and reading it back keeps the escape sequence in the text (the other half of the bug).
    back = pydicom.dcmread(io.BytesIO(raw))
    assert str(back.PatientName) == "Zhang^Wei=\x1b$)A张^\x1b$)A伟"


def test_ir58_encoder_matches_standard_example() -> None:
    # PS3.5 Annex K.2 example "Zhang^XiaoDong=张^小东=" (value padding left out).
    expected = bytes.fromhex(
        "5a 68 61 6e 67 5e 58 69 61 6f 44 6f 6e 67 3d"  # Zhang^XiaoDong=
        "1b 24 29 41 d5 c5 5e 1b 24 29 41 d0 a1 b6 ab 3d"  # ESC$)A 张 ^ ESC$)A 小东 =
    )
    assert synth._encode_iso2022_ir58("Zhang^XiaoDong=张^小东=", "^=\\") == expected


def test_ir58_bytes_equal_fixed_pydicom(ir58_fixed_pydicom: None) -> None:
    encodings = convert_encodings(["", "ISO 2022 IR 58"])
    for value in ("Zhang^Wei=张^伟", "Li^Ming=李^明"):
        ours = synth._encode_iso2022_ir58(value, "^=\\")
        assert PersonName(value).encode(encodings) == ours
    assert pydicom.charset.encode_string("云胶片示范医院", encodings) == (
        synth._encode_iso2022_ir58("云胶片示范医院", "\\")
    )


def test_write_studies_layout(tmp_path: Path) -> None:
    paths = write_studies(tmp_path, **SMALL["MR"], patients=2, transfer_syntax="rle")
    assert len(paths) == 6
    for path in paths:
        data = path.read_bytes()
        assert data[:128] == bytes(128) and data[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        assert path.relative_to(tmp_path).parts == (
            ds.PatientID,
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            f"{ds.InstanceNumber}.dcm",
        )
        assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES["rle"]
        assert ds.pixel_array.shape == (48, 48)


def test_implicit_files_are_implicit(tmp_path: Path) -> None:
    (path,) = write_studies(tmp_path, **SMALL["US"], transfer_syntax="implicit")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert ds.original_encoding == (True, True)
    assert ds.pixel_array.shape == (4, 48, 64, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"modality": "PT"},
        {"transfer_syntax": "jpeg"},
        {"charset": "latin1"},
        {"slices": 0},
        {"patients": 0},
        {"studies_per_patient": 0},
        {"rows": 4},
        {"columns": 0},
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        generate_studies(**kwargs)
