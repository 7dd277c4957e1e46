"""Frame extraction from stored blobs: native and encapsulated, with and without offset tables."""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate_extended, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cloudfilm.core.errors import NotFound
from cloudfilm.dicom.frames import FrameReader, decoded_frame, frame_count, read_frame
from cloudfilm.dicom.parse import parse_instance

TESTDATA = Path(__file__).resolve().parents[3] / "shared" / "testdata"
ENCAPSULATED = sorted((TESTDATA / "dicomParser" / "encapsulated").glob("*/*.dcm"))


def _open(path: str | Path) -> tuple[bytes, int, str]:
    data = Path(path).read_bytes()
    parsed = parse_instance(io.BytesIO(data))
    return data, parsed.received_dataset_offset, parsed.transfer_syntax


def _reference(path: str | Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames") or 1)
    return ds, arr if frames > 1 else arr[None]


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class CountingStream(io.BytesIO):
    """Counts the bytes read, to show that a frame read does not read the whole file."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_testdata_is_present() -> None:
    assert len(ENCAPSULATED) >= 17


@pytest.mark.parametrize("path", ENCAPSULATED, ids=lambda p: p.name)
def test_every_frame_decodes_like_pydicom(path: Path) -> None:
    data, offset, ts = _open(path)
    ds, reference = _reference(path)
    reader = FrameReader(io.BytesIO(data), offset, ts)
    assert reader.number_of_frames == len(reference)
    assert frame_count(io.BytesIO(data), offset, ts) == len(reference)
    for index in range(reader.number_of_frames):
        decoded = reader.decode(index).pixels
        assert decoded.dtype == reference.dtype
        np.testing.assert_array_equal(decoded, reference[index])
        if reader.encapsulated:  # the compressed bitstream, as pydicom's helpers see it
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = list(generate_frames(ds.PixelData, number_of_frames=len(reference)))
            assert reader.frame_bytes(index) == expected[index]
        else:  # native: the raw bytes of the frame are the slice of pixel_array
            assert (
                reader.frame_bytes(index)
                == reference[index].astype("<" + reference.dtype.str[1:]).tobytes()
            )


def test_offset_table_and_no_table_give_the_same_frames() -> None:
    folder = TESTDATA / "dicomParser" / "encapsulated" / "multi-frame"
    with_bot = _open(folder / "CT0012.not_fragmented_bot_jpeg_ls.80.dcm")
    without = _open(folder / "CT0012.not_fragmented_no_bot_jpeg_ls.80.dcm")
    reader = FrameReader(io.BytesIO(with_bot[0]), with_bot[1], with_bot[2])
    assert reader.basic_offsets and reader.basic_offsets[0] == 0
    for index in range(2):
        assert read_frame(io.BytesIO(with_bot[0]), *with_bot[1:], index) == read_frame(
            io.BytesIO(without[0]), *without[1:], index
        )


def test_fragmented_frames_without_table_are_split_at_frame_starts() -> None:
    path = (
        TESTDATA
        / "dicomParser/encapsulated/multi-frame/IM00001.fragmented_no_bot_jpeg_baseline.50.dcm"
    )
    data, offset, ts = _open(path)
    reader = FrameReader(io.BytesIO(data), offset, ts)
    assert len(reader.fragments) > reader.number_of_frames == 8
    assert not reader.basic_offsets
    for index in range(reader.number_of_frames):
        frame = reader.frame_bytes(index)
        assert frame.startswith(b"\xff\xd8") and frame.rstrip(b"\x00").endswith(b"\xff\xd9")


def _jpeg_ls_frames() -> tuple[Dataset, list[bytes]]:
    path = (
        TESTDATA / "dicomParser/encapsulated/multi-frame/CT0012.not_fragmented_bot_jpeg_ls.80.dcm"
    )
    ds = pydicom.dcmread(path)
    return ds, list(generate_frames(ds.PixelData, number_of_frames=2))


def test_extended_offset_table() -> None:
    ds, frames = _jpeg_ls_frames()
    ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
        frames
    )
    ds["PixelData"].is_undefined_length = True
    data, offset, ts = _open_bytes(_part10(ds))
    reader = FrameReader(io.BytesIO(data), offset, ts)
    assert not reader.basic_offsets and len(reader._extended_offsets()) == 2
    assert [reader.frame_bytes(i) for i in range(2)] == frames
    np.testing.assert_array_equal(reader.decode(1).pixels, ds.pixel_array[1])


def test_offset_table_that_does_not_match_is_ignored() -> None:
    ds, frames = _jpeg_ls_frames()
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate(frames, has_bot=True)
    data = bytearray(_part10(ds))
    bot = data.find(b"\xfe\xff\x00\xe0\x08\x00\x00\x00")
    data[bot + 12 : bot + 16] = struct.pack("<L", 12345)  # a second offset pointing nowhere
    blob, offset, ts = _open_bytes(bytes(data))
    assert read_frame(io.BytesIO(blob), offset, ts, 1) == frames[1]


def _open_bytes(data: bytes) -> tuple[bytes, int, str]:
    parsed = parse_instance(io.BytesIO(data))
    return data, parsed.received_dataset_offset, parsed.transfer_syntax


def _bit_dataset(frames: np.ndarray[Any, Any]) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = ds.PixelRepresentation = 0
    packed = np.packbits(frames.ravel(), bitorder="little").tobytes()
    ds.PixelData = packed + (b"\x00" if len(packed) % 2 else b"")
    ds["PixelData"].VR = "OB"
    return ds


def test_one_bit_frames_are_repacked_from_their_first_bit() -> None:
    """PS3.5 8.1.1: 15-bit frames are not byte aligned; each comes back as its own bits."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 2, size=(3, 3, 5), dtype=np.uint8)
    data, offset, ts = _open_bytes(_part10(_bit_dataset(frames)))
    for index in range(3):
        expected = np.packbits(frames[index].ravel(), bitorder="little").tobytes()
        assert read_frame(io.BytesIO(data), offset, ts, index) == expected
        np.testing.assert_array_equal(
            decoded_frame(io.BytesIO(data), offset, ts, index), frames[index]
        )


@pytest.mark.parametrize(
    ("big", "little"),
    [
        ("MR_small_bigendian.dcm", "MR_small.dcm"),
        ("SC_rgb_expb_16bit_2frame.dcm", "SC_rgb_16bit_2frame.dcm"),
        ("SC_rgb_expb_32bit_2frame.dcm", "SC_rgb_32bit_2frame.dcm"),
    ],
)
def test_big_endian_frames_come_back_little_endian(big: str, little: str) -> None:
    big_path, little_path = get_testdata_file(big), get_testdata_file(little)
    assert big_path and little_path
    b = _open(big_path)
    le = _open(little_path)
    frames = FrameReader(io.BytesIO(le[0]), le[1], le[2]).number_of_frames
    for index in range(frames):
        assert read_frame(io.BytesIO(b[0]), b[1], b[2], index) == read_frame(
            io.BytesIO(le[0]), le[1], le[2], index
        )


def test_signed_pixels_decode_signed() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path
    data, offset, ts = _open(path)
    pixels = decoded_frame(io.BytesIO(data), offset, ts, 0)
    assert pixels.dtype == np.int16
    np.testing.assert_array_equal(pixels, pydicom.dcmread(path).pixel_array)


def test_bits_stored_below_bits_allocated_is_masked() -> None:
    path = get_testdata_file("MR_small.dcm")
    assert path
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.astype(np.uint16)
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
    ds.PixelData = ((arr & 0x0FFF) | 0xA000).astype("<u2").tobytes()  # junk above bit 11
    data, offset, ts = _open_bytes(_part10(ds))
    np.testing.assert_array_equal(decoded_frame(io.BytesIO(data), offset, ts, 0), arr & 0x0FFF)


def test_deflated_data_set() -> None:
    path = TESTDATA / "dicomParser" / "deflate" / "image_dfl"
    data, offset, ts = _open(path)
    assert ts == "1.2.840.10008.1.2.1.99"
    np.testing.assert_array_equal(
        decoded_frame(io.BytesIO(data), offset, ts, 0), _reference(path)[1][0]
    )


def test_a_frame_read_does_not_read_the_whole_file() -> None:
    path = TESTDATA / "dicomParser/encapsulated/multi-frame/IM00001.implicit_little_endian.dcm"
    data, offset, ts = _open(path)
    stream = CountingStream(data)
    frame = FrameReader(stream, offset, ts).frame_bytes(7)
    assert stream.bytes_read < len(data) // 4 + len(frame)


def test_missing_frame_and_missing_pixels_are_not_found() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path
    data, offset, ts = _open(path)
    with pytest.raises(NotFound, match="frame 2 does not exist"):
        read_frame(io.BytesIO(data), offset, ts, 1)
    sr = TESTDATA / "fo-dicom" / "test_SR.dcm"
    blob, sr_offset, sr_ts = _open(sr)
    assert frame_count(io.BytesIO(blob), sr_offset, sr_ts) == 0
    with pytest.raises(NotFound, match="no pixel data"):
        read_frame(io.BytesIO(blob), sr_offset, sr_ts, 0)
