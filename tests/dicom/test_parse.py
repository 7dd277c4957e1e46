"""Parsing received data: layouts, transfer syntaxes, completeness, character sets."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cloudfilm.core.errors import InvalidDicom
from cloudfilm.dicom.charset import pn_search_key
from cloudfilm.dicom.json import header_json_dict
from cloudfilm.dicom.parse import parse_instance
from support.instances import bare, make_dataset, part10

CHARSET = Path(__file__).resolve().parents[3] / "shared/testdata/fo-dicom/charset"
FO = Path(__file__).resolve().parents[3] / "shared/testdata/fo-dicom"


def test_part10_offsets() -> None:
    data = part10(make_dataset())
    parsed = parse_instance(io.BytesIO(data))
    assert parsed.header_prefix == b""
    assert parsed.transfer_syntax == ExplicitVRLittleEndian
    ds = pydicom.dcmread(io.BytesIO(data))
    assert data[parsed.dataset_offset :] == bare(ds, implicit=False)


def test_meta_without_preamble_gets_one() -> None:
    data = part10(make_dataset())[128 + 4 :]
    parsed = parse_instance(io.BytesIO(data))
    assert parsed.header_prefix == b"\x00" * 128 + b"DICM"
    assert parsed.dataset_offset == 132 + parsed.received_dataset_offset


@pytest.mark.parametrize("implicit", [True, False])
def test_bare_dataset_syntax_is_guessed(implicit: bool) -> None:
    parsed = parse_instance(io.BytesIO(bare(make_dataset(), implicit=implicit)))
    assert parsed.transfer_syntax == (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    )
    header = pydicom.dcmread(io.BytesIO(parsed.header_prefix + b""), stop_before_pixels=True)
    assert header.file_meta.TransferSyntaxUID == parsed.transfer_syntax


def test_missing_sequence_delimiter_is_tolerated() -> None:
    parsed = parse_instance(io.BytesIO((FO / "GH1339.dcm").read_bytes()))
    assert "sequence delimiter" in " ".join(parsed.warnings)


def test_truncated_inside_a_sequence_item() -> None:
    data = (FO / "test_SR.dcm").read_bytes()
    with pytest.raises(InvalidDicom, match="truncated"):
        parse_instance(io.BytesIO(data[: len(data) // 2]))


@pytest.mark.parametrize(
    ("file", "alphabetic", "ideographic"),
    [
        ("chrGB2312.dcm", "Zhang^XiaoDong", "张^小东"),  # ISO 2022 IR 58
        ("chrX2.dcm", "Wang^XiaoDong", "王^小东"),  # GB18030
        ("chrX1.dcm", "Wang^XiaoDong", "王^小東"),  # UTF-8
        ("chrI2.dcm", "Hong^Gildong", "洪^吉洞"),  # ISO 2022 IR 149
        ("chrH31.dcm", "Yamada^Tarou", "山田^太郎"),  # ISO 2022 IR 87
    ],
)
def test_person_names_decode_without_escape_sequences(
    file: str, alphabetic: str, ideographic: str
) -> None:
    parsed = parse_instance(io.BytesIO((CHARSET / file).read_bytes()))
    name = parsed.dataset.PatientName
    assert name.alphabetic == alphabetic and name.ideographic == ideographic
    header = header_json_dict(parsed.dataset)
    assert header["00100010"]["Value"][0]["Ideographic"] == ideographic


def test_ir58_round_trip_writes_escape_sequences() -> None:
    """PS3.5 K.2: the ideographic group starts with ESC $ ) A and GB2312 with the high bit set."""
    ds = pydicom.Dataset()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 58"]
    ds.PatientName = "Zhang^XiaoDong=张^小东="
    out = pydicom.filebase.DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(out, ds)
    raw = out.getvalue()
    assert b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab" in raw


def test_large_binary_values_become_bulk_data_uris() -> None:
    ds = make_dataset()
    ds.add_new(0x00091010, "OB", b"\x01" * 5000)
    ds.add_new(0x00091011, "OB", b"\x02" * 10)
    parsed = parse_instance(io.BytesIO(part10(ds)))
    header = header_json_dict(parsed.dataset, parsed.pixel_data_vr)
    assert header["00091010"] == {"vr": "OB", "BulkDataURI": "bulkdata/00091010"}
    assert "InlineBinary" in header["00091011"]
    assert header["7FE00010"]["BulkDataURI"] == "bulkdata/7FE00010"
    json.dumps(header)


def test_pn_search_key() -> None:
    assert pn_search_key("Wang^XiaoDong=王^小東") == "|WANG^XIAODONG|王^小東|"
    assert pn_search_key("Doe^John^^^") == "|DOE^JOHN|"
    assert pn_search_key(None) == "||"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    try:
        parse_instance(io.BytesIO(data))
    except InvalidDicom:
        pass


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=1, max_value=2000), st.binary(max_size=40))
def test_damaged_real_files_never_crash(cut: int, junk: bytes) -> None:
    data = part10(make_dataset())
    damaged = data[: len(data) - cut] + junk
    try:
        parse_instance(io.BytesIO(damaged))
    except InvalidDicom:
        pass
