"""Transcoding a stored data set to another transfer syntax (derived data; originals stay).

Where a standard or a client requires another syntax -- WADO-URI returns Implicit VR and Big
Endian originals as Explicit VR Little Endian (PS3.18 9.2 / 8.7.3.5), WADO-RS negotiates a
transfer syntax through Accept (PS3.18 8.7.3.5.2), a DIMSE peer may accept only uncompressed
data (PS3.4 C.4.2.1.5 / C.4.3.1.5) -- the stored data set is re-encoded here. The SOP Instance
UID is never changed: the pixels are the same image (PS3.3 C.12.1.1.1; DIMSE transcoding keeps
the UID).

What is produced
----------------
* Uncompressed targets (Implicit VR LE, Explicit VR LE, Explicit VR BE, Deflated Explicit VR LE)
  from any readable source: compressed pixel data is decoded frame by frame; YBR_FULL,
  YBR_FULL_422, YBR_ICT and YBR_RCT become ``RGB`` with PlanarConfiguration 0 (PS3.3
  C.7.6.3.1.2/3), as DCMTK's ``dcmdjpeg`` does.
* Lossless compressed targets with an installed encoder: RLE Lossless (PS3.5 G), JPEG-LS
  Lossless (PS3.5 A.4.3) and JPEG 2000 Lossless (PS3.5 A.4.4); each frame is one fragment and
  a Basic Offset Table is written.
* After decoding a lossy source (JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000 part 1
  or HTJ2K that may be lossy), Lossy Image Compression (0028,2110) is set to ``01`` and the
  method (0028,2114) is added when absent, as PS3.3 C.7.6.1.1.5 requires; existing values are
  kept.

Text is copied byte for byte (only element headers are rewritten), so character sets pydicom
cannot re-encode exactly (ISO 2022 IR 58) survive a change of VR encoding. Memory is bounded by
one decoded frame plus, for compressed targets, the compressed frames.
"""

from __future__ import annotations

import io
import logging
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

import numpy as np
import numpy.typing as npt
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from cloudfilm.core.errors import InvalidDicom, NotAcceptable
from cloudfilm.dicom.frames import NATIVE_SYNTAXES, DecodedFrame, FrameReader
from cloudfilm.dicom.parse import build_file_header

logger = logging.getLogger(__name__)

__all__ = [
    "COMPRESSED_TARGETS",
    "LOSSY_SYNTAXES",
    "can_transcode",
    "to_part10",
    "transcode_into",
    "transcode_to",
]

#: Compressed syntaxes we can write (lossless only: derived data must not lose information).
COMPRESSED_TARGETS = frozenset({RLELossless, JPEGLSLossless, JPEG2000Lossless})
#: Source syntaxes whose decoding yields pixels that went through lossy compression, with the
#: Lossy Image Compression Method (0028,2114) defined terms of PS3.3 C.7.6.1.1.5.1.
LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",
}
_SWAP = {"US": 2, "SS": 2, "OW": 2, "AT": 2, "UL": 4, "SL": 4, "FL": 4, "OF": 4, "OL": 4,
         "FD": 8, "OD": 8, "SV": 8, "UV": 8, "OV": 8}  # fmt: skip
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM",
             "UC", "UR", "UT"}  # fmt: skip
_UNDEFINED = 0xFFFFFFFF


def can_transcode(source_ts: str, target_ts: str) -> bool:
    """Whether data in ``source_ts`` can be re-encoded in ``target_ts`` here.

    True for the same syntax (returned unchanged), for any readable source (native, or a
    compressed syntax with an installed decoder) to an uncompressed syntax, and to the lossless
    compressed syntaxes of :data:`COMPRESSED_TARGETS` whose encoder is installed. Whether a
    particular image fits the encoder (bit depth, colour model) is known only when it is
    encoded: :func:`transcode_to` then raises :class:`NotAcceptable`.
    """
    if source_ts == target_ts:
        return True
    return _can_read(source_ts) and _can_write(target_ts)


def _can_read(ts: str) -> bool:
    if ts in NATIVE_SYNTAXES:
        return True
    try:
        return bool(get_decoder(UID(ts)).is_available)
    except (NotImplementedError, ValueError):
        return False


def _can_write(ts: str) -> bool:
    if ts in NATIVE_SYNTAXES:
        return True
    if ts not in COMPRESSED_TARGETS:
        return False
    try:
        return bool(get_encoder(UID(ts)).is_available)
    except (NotImplementedError, ValueError):
        return False


def transcode_to(
    blob: bytes | BinaryIO, dataset_offset: int, source_ts: str, target_ts: str
) -> bytes:
    """The data set (no File Meta Information) re-encoded in ``target_ts``.

    Parameters
    ----------
    blob
        The stored Part 10 blob (bytes or a seekable stream).
    dataset_offset
        Offset of the first byte after group 0002.
    source_ts, target_ts
        Transfer Syntax UIDs of the stored data and of the result.

    Returns
    -------
    bytes
        The data set bytes; the stored bytes unchanged when both syntaxes are equal.

    Raises
    ------
    NotAcceptable
        When the conversion is impossible (see :func:`can_transcode`) or the image does not
        fit the target's encoder.
    InvalidDicom
        When the stored data cannot be parsed.
    """
    out = io.BytesIO()
    transcode_into(blob, dataset_offset, source_ts, target_ts, out)
    return out.getvalue()


def to_part10(
    blob: bytes | BinaryIO,
    dataset_offset: int,
    source_ts: str,
    target_ts: str,
    *,
    sop_class_uid: str | None = None,
    sop_instance_uid: str | None = None,
    source_ae: str | None = None,
) -> bytes:
    """A complete Part 10 file (PS3.10 7.1) of the data set re-encoded in ``target_ts``.

    The File Meta Information is generated (our implementation UID and version name) with
    ``target_ts`` and the SOP Class and Instance UIDs given (the archive's index values, which
    may come from the received meta header) or else the data set's. See :func:`transcode_to`.
    """
    out = io.BytesIO()
    header = transcode_into(blob, dataset_offset, source_ts, target_ts, out)
    sop_class = sop_class_uid or str(header.get("SOPClassUID", "") or "").strip("\x00 ")
    sop_instance = sop_instance_uid or str(header.get("SOPInstanceUID", "") or "").strip("\x00 ")
    if not sop_class or not sop_instance:
        raise InvalidDicom("SOP Class or Instance UID missing; cannot build a file header")
    return build_file_header(sop_class, sop_instance, target_ts, source_ae) + out.getvalue()


def transcode_into(
    blob: bytes | BinaryIO,
    dataset_offset: int,
    source_ts: str,
    target_ts: str,
    out: BinaryIO,
) -> Dataset:
    """Write the data set re-encoded in ``target_ts`` to ``out``; streaming variant.

    Returns the header (elements before Pixel Data) as written, for callers that need its
    UIDs. Raises like :func:`transcode_to`.
    """
    fp: BinaryIO = io.BytesIO(blob) if isinstance(blob, bytes | bytearray) else blob
    if not can_transcode(source_ts, target_ts):
        raise NotAcceptable(f"cannot transcode {_name(source_ts)} to {_name(target_ts)}")
    reader = FrameReader(fp, dataset_offset, source_ts)
    if source_ts == target_ts:
        fp.seek(dataset_offset)
        while chunk := fp.read(1 << 20):
            out.write(chunk)
        return reader.header
    if target_ts == DeflatedExplicitVRLittleEndian:
        with tempfile.SpooledTemporaryFile(max_size=64 << 20) as plain:
            header = _transcode(reader, ExplicitVRLittleEndian, plain)  # type: ignore[arg-type]
            plain.seek(0)
            deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
            written = 0
            while chunk := plain.read(1 << 20):
                written += out.write(deflater.compress(chunk))
            written += out.write(deflater.flush())
            if written % 2:  # PS3.5 A.5: the deflated stream is padded to an even length
                out.write(b"\x00")
        return header
    return _transcode(reader, target_ts, out)


def _name(ts: str) -> str:
    uid = UID(ts)
    return f"{uid.name} ({ts})" if uid.is_transfer_syntax else ts


def _transcode(reader: FrameReader, target_ts: str, out: BinaryIO) -> Dataset:
    implicit = target_ts == ImplicitVRLittleEndian
    little = target_ts != ExplicitVRBigEndian
    header = reader.header
    trailing = _trailing(reader)
    writer = _Writer(out, implicit, little, swap=little != reader.little, header=header)
    if reader.pixel_tag is None:
        writer.dataset(header)
        writer.dataset(trailing)
        return header
    if target_ts in COMPRESSED_TARGETS:
        _to_compressed(reader, target_ts, writer)
    elif not reader.encapsulated:
        writer.dataset(header)
        _native_to_native(reader, writer)
    else:
        _decompress(reader, writer)
    writer.dataset(trailing)
    return header


def _trailing(reader: FrameReader) -> Dataset:
    """Elements after the pixel element (rare; the writer drops trailing padding)."""
    if reader.end_offset >= reader.size:
        return Dataset()
    reader.fp.seek(reader.end_offset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = read_dataset(reader.fp, reader.implicit, reader.little, defer_size=None)
        except Exception:
            logger.warning("unreadable elements after Pixel Data were dropped")
            return Dataset()
    return ds


def _native_to_native(reader: FrameReader, writer: _Writer) -> None:
    tag = reader.pixel_tag
    assert tag is not None
    if reader.implicit:
        vr = {0x7FE00008: "OF", 0x7FE00009: "OD"}.get(
            tag, "OB" if reader.bits_allocated <= 8 else "OW"
        )
    else:
        vr = reader.pixel_vr
    bits = reader.bits_allocated
    unit = 1 if writer.little else (bits // 8 if bits >= 16 else (2 if vr == "OW" else 1))
    writer.element_header(tag, vr, reader.value_length)
    for chunk in reader.iter_raw_value():
        writer.out.write(_swap(chunk, unit) if unit > 1 else chunk)


def _decode_all(reader: FrameReader, as_rgb: bool) -> Iterator[DecodedFrame]:
    for index in range(reader.number_of_frames):
        yield reader.decode(index, as_rgb=as_rgb)


def _decompress(reader: FrameReader, writer: _Writer) -> None:
    if reader.bits_allocated == 1:
        raise NotAcceptable("1-bit encapsulated pixel data cannot be decompressed")
    frames = _decode_all(reader, as_rgb=True)
    first = next(frames)
    header = reader.header
    _describe(header, first)
    _mark_lossy(header, reader.transfer_syntax)
    frame_size = first.pixels.size * first.pixels.dtype.itemsize
    total = frame_size * reader.number_of_frames
    if total >= _UNDEFINED - 1:
        raise NotAcceptable("decompressed pixel data would exceed 4 GiB (PS3.5 7.1.1)")
    writer.dataset(header)
    writer.element_header(
        0x7FE00010, "OB" if first.bits_allocated <= 8 else "OW", total + total % 2
    )
    writer.pixels(first.pixels)
    for frame in frames:
        if frame.pixels.size * frame.pixels.dtype.itemsize != frame_size:
            raise NotAcceptable("frames decode to different sizes; cannot write native data")
        writer.pixels(frame.pixels)
    if total % 2:
        writer.out.write(b"\x00")


def _describe(header: Dataset, frame: DecodedFrame) -> None:
    """Image Pixel values of the decoded pixels (PS3.3 C.7.6.3)."""
    header.PhotometricInterpretation = frame.photometric_interpretation
    header.BitsAllocated = frame.pixels.dtype.itemsize * 8 if frame.bits_allocated > 1 else 1
    if frame.samples_per_pixel > 1:
        header.PlanarConfiguration = 0


def _mark_lossy(header: Dataset, source_ts: str) -> None:
    method = LOSSY_SYNTAXES.get(source_ts)
    if method is None:
        return
    if str(header.get("LossyImageCompression", "") or "").strip() == "":
        header.LossyImageCompression = "01"
    if "LossyImageCompressionMethod" not in header:
        header.LossyImageCompressionMethod = method


def _to_compressed(reader: FrameReader, target_ts: str, writer: _Writer) -> None:
    if reader.pixel_tag != 0x7FE00010:
        raise NotAcceptable("float pixel data cannot be compressed")
    encoder = get_encoder(UID(target_ts))
    header = reader.header
    encoded: list[bytes] = []
    described = False
    for frame in _decode_all(reader, as_rgb=reader.encapsulated):
        if not described:
            _describe(header, frame)
            described = True
        opts: dict[str, Any] = {
            "rows": frame.pixels.shape[0],
            "columns": frame.pixels.shape[1],
            "samples_per_pixel": frame.samples_per_pixel,
            "bits_allocated": frame.pixels.dtype.itemsize * 8,
            "bits_stored": frame.bits_stored or frame.pixels.dtype.itemsize * 8,
            "pixel_representation": frame.pixel_representation,
            "photometric_interpretation": frame.photometric_interpretation,
            "planar_configuration": 0,
            "number_of_frames": 1,
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                encoded.append(encoder.encode(_native(frame.pixels), **opts))
            except Exception as exc:
                raise NotAcceptable(
                    f"this image cannot be encoded as {_name(target_ts)}: {exc}"
                ) from exc
    if reader.encapsulated:
        _mark_lossy(header, reader.transfer_syntax)
    offsets, position = [], 0
    for frame_bytes in encoded:
        offsets.append(position)
        position += 8 + len(frame_bytes) + len(frame_bytes) % 2
    if position >= _UNDEFINED:
        raise NotAcceptable("compressed pixel data exceeds the Basic Offset Table's 4 GiB")
    writer.dataset(header)
    writer.element_header(0x7FE00010, "OB", _UNDEFINED)
    writer.item(struct.pack(f"<{len(offsets)}L", *offsets))
    for frame_bytes in encoded:
        writer.item(frame_bytes + (b"\x00" if len(frame_bytes) % 2 else b""))
    writer.out.write(struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))


def _native(arr: npt.NDArray[Any]) -> npt.NDArray[Any]:
    return arr if arr.dtype.byteorder in "=|<" else arr.astype(arr.dtype.newbyteorder("<"))


def _swap(data: bytes, unit: int) -> bytes:
    usable = len(data) - len(data) % unit
    view = np.frombuffer(data[:usable], dtype=f"<u{unit}")
    return view.byteswap().tobytes() + data[usable:]


class _Writer:
    """Writes elements in one encoding, copying raw values (text byte for byte)."""

    def __init__(
        self, out: BinaryIO, implicit: bool, little: bool, *, swap: bool, header: Dataset
    ) -> None:
        self.out, self.implicit, self.little, self.swap = out, implicit, little, swap
        self.e = "<" if little else ">"
        self.pixel_representation = int(header.get("PixelRepresentation", 0) or 0)
        self.charset = header.get("SpecificCharacterSet", "ISO_IR 6") or "ISO_IR 6"

    def element_header(self, tag: int, vr: str, length: int) -> None:
        e = self.e
        head = struct.pack(e + "HH", tag >> 16, tag & 0xFFFF)
        if self.implicit:
            self.out.write(head + struct.pack(e + "L", length))
        elif vr in _LONG_VRS:
            self.out.write(head + vr.encode() + b"\x00\x00" + struct.pack(e + "L", length))
        else:
            self.out.write(head + vr.encode() + struct.pack(e + "H", length))

    def item(self, value: bytes) -> None:
        self.out.write(struct.pack("<HHL", 0xFFFE, 0xE000, len(value)) + value)

    def pixels(self, arr: npt.NDArray[Any]) -> None:
        dtype = arr.dtype.newbyteorder("<" if self.little else ">")
        self.out.write(np.ascontiguousarray(arr, dtype=dtype).tobytes())

    def dataset(self, ds: Dataset) -> None:
        for tag in sorted(ds.keys()):
            if (tag.element == 0 and tag.group > 6) or tag.group in (0x0002, 0xFFFC, 0xFFFE):
                # Group lengths are retired (PS3.5 7.2); the meta group belongs to the file
                # header; padding and stray item tags are not data elements.
                continue
            if int(tag) in (0x7FE00008, 0x7FE00009, 0x7FE00010):
                continue
            self.element(ds, tag)

    def element(self, ds: Dataset, tag: Any) -> None:
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement) and self._copy_raw(raw):
            return
        elem = ds[tag]
        if elem.VR == "SQ":
            self.element_header(int(tag), "SQ", _UNDEFINED)
            for item in elem.value:
                self.out.write(struct.pack(self.e + "HHL", 0xFFFE, 0xE000, _UNDEFINED))
                self.dataset(item)
                self.out.write(struct.pack(self.e + "HHL", 0xFFFE, 0xE00D, 0))
            self.out.write(struct.pack(self.e + "HHL", 0xFFFE, 0xE0DD, 0))
            return
        self._pydicom_element(ds, elem)

    def _copy_raw(self, raw: RawDataElement) -> bool:
        """Write a raw element with its value bytes; False when pydicom must convert it."""
        if raw.length == _UNDEFINED or (raw.value is None and raw.length):
            return False
        vr = raw.VR or _dictionary_vr(int(raw.tag))
        if vr is None or vr == "SQ" or " or " in vr:
            return False
        value = bytes(raw.value or b"")
        if self.swap and vr in _SWAP:
            value = _swap(value, _SWAP[vr])
        if len(value) % 2:
            value += b" " if vr in _TEXT_VRS else b"\x00"
        if not self.implicit and vr not in _LONG_VRS and len(value) > 0xFFFF:
            vr = "UN"  # too long for a 16-bit length field (PS3.5 6.2.2)
        self.element_header(int(raw.tag), vr, len(value))
        self.out.write(value)
        return True

    def _pydicom_element(self, ds: Dataset, elem: DataElement) -> None:
        buffer = DicomBytesIO()
        buffer.is_little_endian = self.little
        buffer.is_implicit_VR = self.implicit
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if " or " in elem.VR:
                elem = self._resolve_vr(ds, elem)
            if self.swap and elem.VR in _SWAP and isinstance(elem.value, bytes):
                elem.value = _swap(elem.value, _SWAP[elem.VR])
            charset = self.charset
            write_data_element(buffer, elem, [charset] if isinstance(charset, str) else charset)
        self.out.write(buffer.getvalue())

    def _resolve_vr(self, ds: Dataset, elem: DataElement) -> DataElement:
        """An explicit VR for an ambiguous one (PS3.5 Annex A notes; pydicom's rules)."""
        try:
            elem = cast(DataElement, correct_ambiguous_vr_element(elem, ds, self.little))
        except Exception:
            logger.debug("ambiguous VR of %s left to the fallback", elem.tag)
        if " or " in elem.VR:
            if elem.VR.startswith("US or SS"):
                vr = "SS" if self.pixel_representation else "US"
                if isinstance(elem.value, bytes):
                    elem.value = _numbers(elem.value, vr, self.e)
                elem.VR = vr
            else:
                elem.VR = "OW"
        return elem


def _numbers(value: bytes, vr: str, e: str) -> int | list[int]:
    code = "h" if vr == "SS" else "H"
    numbers = list(struct.unpack(f"{e}{len(value) // 2}{code}", value[: len(value) // 2 * 2]))
    return numbers[0] if len(numbers) == 1 else numbers


def _dictionary_vr(tag: int) -> str | None:
    group, element = tag >> 16, tag & 0xFFFF
    if group % 2:
        return "LO" if 0x0010 <= element <= 0x00FF else "UN"  # private creator / private data
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"
