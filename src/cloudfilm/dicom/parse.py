"""Parsing what arrives: Part 10 files, files without a preamble, bare datasets.

``parse_instance`` reads only the header (everything before Pixel Data), checks that the data is
structurally complete (no element runs past the end of the data), and returns what the archive
needs: the identifying UIDs, the layout of the received bytes (where the dataset starts) and,
when the data came without a File Meta Information header, the header to prepend
(PS3.10 7.1).
"""

from __future__ import annotations

import io
import logging
import re
import struct
import tempfile
import warnings
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from cloudfilm.core.config import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from cloudfilm.core.errors import InvalidDicom, MissingIdentifier
from cloudfilm.dicom.charset import guess_undeclared_charset

logger = logging.getLogger(__name__)

PIXEL_DATA_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)
_UID_RE = re.compile(r"^[0-9A-Za-z._-]{1,64}$")
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
                    b"UT", b"UV"}  # fmt: skip
_ALL_VRS = _LONG_LENGTH_VRS | {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD",
                               b"IS", b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM",
                               b"UI", b"UL", b"US"}  # fmt: skip
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


@dataclass
class ParsedInstance:
    """The header of one received instance and the layout of its bytes."""

    dataset: Dataset
    transfer_syntax: str
    #: Bytes to put before the received bytes to make a Part 10 file (empty when received whole).
    header_prefix: bytes
    #: Offset of the first dataset byte (after group 0002) in the *received* bytes.
    received_dataset_offset: int
    #: Size of the received bytes.
    received_size: int
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    #: VR of Pixel Data when present ("OB"/"OW"), for the DICOM JSON BulkDataURI entry.
    pixel_data_vr: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def dataset_offset(self) -> int:
        """Offset of the first dataset byte in the stored Part 10 blob."""
        return len(self.header_prefix) + self.received_dataset_offset

    @property
    def stored_size(self) -> int:
        return len(self.header_prefix) + self.received_size


def parse_instance(
    fp: BinaryIO,
    *,
    transfer_syntax: str | None = None,
    source_ae: str | None = None,
) -> ParsedInstance:
    """Parse the header of received DICOM data.

    Parameters
    ----------
    fp
        Seekable stream positioned at the first received byte.
    transfer_syntax
        Transfer syntax of a bare dataset (known from the DIMSE presentation context). Ignored
        when the data has a File Meta Information header.
    source_ae
        Calling AE title, written as Source Application Entity Title (0002,0016) in a
        generated header.

    Raises
    ------
    InvalidDicom
        When the data is not DICOM, is truncated, or cannot be decoded.
    MissingIdentifier
        When SOP Class/Instance UID, Study or Series Instance UID is missing or unusable.
    """
    fp.seek(0, io.SEEK_END)
    size = fp.tell()
    fp.seek(0)
    if size == 0:
        raise InvalidDicom("empty data")
    head = fp.read(132)
    has_preamble = len(head) == 132 and head[128:132] == b"DICM"
    meta_start = 132 if has_preamble else 0
    fp.seek(meta_start)
    file_meta: FileMetaDataset | None = None
    if fp.read(2) == b"\x02\x00":
        fp.seek(meta_start)
        try:
            file_meta = _read_file_meta_info(fp)
        except Exception as exc:
            raise InvalidDicom(f"unreadable File Meta Information: {exc}") from exc
    elif has_preamble:
        raise InvalidDicom("Part 10 preamble without File Meta Information (group 0002)")
    else:
        fp.seek(0)
    offset = fp.tell()
    if offset >= size:
        raise InvalidDicom("no data set after the File Meta Information")

    ts = _transfer_syntax(fp, file_meta, transfer_syntax, offset)
    parsed_warnings: list[str] = []
    dataset, pixel_vr = _read_header(fp, ts, offset, size, parsed_warnings)
    sop_class, sop_instance = _sop_uids(dataset, file_meta, parsed_warnings)
    study_uid = _require_uid(dataset, "StudyInstanceUID")
    series_uid = _require_uid(dataset, "SeriesInstanceUID")

    charset = guess_undeclared_charset(dataset)
    if charset:
        parsed_warnings.append(f"undeclared character set, decoded as {charset}")
        dataset.SpecificCharacterSet = charset
        dataset.set_original_encoding(
            dataset.original_encoding[0], dataset.original_encoding[1], charset
        )

    if file_meta is not None and has_preamble:
        prefix = b""
    elif file_meta is not None:
        prefix = b"\x00" * 128 + b"DICM"
    else:
        prefix = build_file_header(sop_class, sop_instance, ts, source_ae)
    return ParsedInstance(
        dataset=dataset,
        transfer_syntax=ts,
        header_prefix=prefix,
        received_dataset_offset=offset,
        received_size=size,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_uid=study_uid,
        series_uid=series_uid,
        pixel_data_vr=pixel_vr,
        warnings=parsed_warnings,
    )


def build_file_header(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str | None = None
) -> bytes:
    """Preamble, ``DICM`` and a File Meta Information group for a bare dataset (PS3.10 7.1)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if source_ae:
        meta.SourceApplicationEntityTitle = source_ae.strip()[:16]
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return bytes(buffer.getvalue())


def _transfer_syntax(
    fp: BinaryIO, file_meta: FileMetaDataset | None, hint: str | None, offset: int
) -> str:
    declared = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if declared:
        return str(declared).strip("\x00 ")
    if hint:
        return hint
    fp.seek(offset)
    first = fp.read(6)
    if len(first) < 6:
        raise InvalidDicom("data too short to be a DICOM data set")
    group_le = struct.unpack("<H", first[:2])[0]
    group_be = struct.unpack(">H", first[:2])[0]
    explicit = first[4:6].isalpha() and first[4:6].isupper()
    if explicit and group_be < group_le and group_be in (0x0008, 0x0002):
        return ExplicitVRBigEndian
    if group_le > 0x7FE0 and group_le != 0xFFFE:
        raise InvalidDicom("not DICOM: no preamble, no meta header and no plausible first tag")
    return ExplicitVRLittleEndian if explicit else ImplicitVRLittleEndian


def _read_header(
    fp: BinaryIO, ts: str, offset: int, size: int, notes: list[str]
) -> tuple[Dataset, str | None]:
    """Read the data set up to Pixel Data; check that the whole data set is complete."""
    uid = UID(ts)
    stream: BinaryIO = fp
    start = offset
    if ts == DeflatedExplicitVRLittleEndian:
        stream = _inflate(fp, offset)
        start = 0
        size = stream.seek(0, io.SEEK_END)
    if uid.is_private or not uid.is_transfer_syntax:
        implicit, little = False, True
        if ts == "1.2.840.10008.1.2.5.1":  # not a real TS; keep tolerant
            implicit = False
    else:
        implicit, little = uid.is_implicit_VR, uid.is_little_endian
    walker = _check_complete(stream, start, size, implicit, little, notes)
    if walker.foreign_ranges:
        stream, start = _without_ranges(stream, start, walker), 0
        notes.append(
            "UN sequence of undefined length in a big endian data set (implicit VR little "
            "endian inside, PS3.5 6.2.2): kept in the file, not indexed"
        )
    stream.seek(start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dataset = read_dataset(
                stream, implicit, little, stop_when=_at_pixel_data, defer_size=None
            )
        except Exception as exc:
            raise InvalidDicom(f"cannot parse the data set: {exc}") from exc
    if not len(dataset):
        raise InvalidDicom("not DICOM: no data elements could be read")
    return dataset, walker.pixel_vr


def _without_ranges(fp: BinaryIO, start: int, walker: _ElementWalker) -> BinaryIO:
    """The header (up to Pixel Data) with the given element byte ranges cut out."""
    end = walker.pixel_start if walker.pixel_start is not None else walker.size
    out = io.BytesIO()
    position = start
    for cut_start, cut_end in [*walker.foreign_ranges, (end, end)]:
        fp.seek(position)
        out.write(fp.read(cut_start - position))
        position = cut_end
    out.seek(0)
    return out


def _at_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in PIXEL_DATA_TAGS


def _inflate(fp: BinaryIO, offset: int) -> BinaryIO:
    fp.seek(offset)
    out = tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024)  # noqa: SIM115 - returned
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        while chunk := fp.read(1024 * 1024):
            out.write(inflater.decompress(chunk))
        out.write(inflater.flush())
    except zlib.error as exc:
        raise InvalidDicom(f"deflated data set cannot be inflated: {exc}") from exc
    out.seek(0)
    return out  # type: ignore[return-value]


def _check_complete(
    fp: BinaryIO, start: int, size: int, implicit: bool, little: bool, notes: list[str]
) -> _ElementWalker:
    """Walk the top-level elements; raise InvalidDicom when one runs past the end.

    Returns the VR of Pixel Data (7FE0,0010) when present. The walk reads only element
    headers (8 or 12 bytes each) and seeks over values, so it costs nothing for large pixels.
    """
    walker = _ElementWalker(fp, size, implicit, little)
    fp.seek(start)
    try:
        walker.walk_dataset(end=size, top=True)
    except _Truncated as exc:
        if start == 0 and fp.tell() - start <= 512:
            raise InvalidDicom(f"not DICOM (no header, unreadable first elements: {exc})") from exc
        raise InvalidDicom(f"truncated or corrupt data: {exc}") from exc
    notes.extend(walker.notes)
    return walker


class _Truncated(Exception):
    pass


class _ElementWalker:
    def __init__(self, fp: BinaryIO, size: int, implicit: bool, little: bool) -> None:
        self.fp, self.size, self.implicit = fp, size, implicit
        self.endian = "<" if little else ">"
        self.pixel_vr: str | None = None
        self.notes: list[str] = []
        #: Offset of the top-level Pixel Data element, when present.
        self.pixel_start: int | None = None
        #: Top-level UN elements of undefined length in a big endian data set: their items
        #: are implicit VR little endian (PS3.5 6.2.2), which pydicom cannot read there.
        self.foreign_ranges: list[tuple[int, int]] = []

    def _read(self, n: int) -> bytes:
        data = self.fp.read(n)
        if len(data) < n:
            raise _Truncated(f"data ends inside an element header at byte {self.fp.tell()}")
        return data

    def walk_dataset(self, end: int | None, top: bool = False) -> str | None:
        """Walk elements until ``end`` (defined length) or an item delimiter (end=None)."""
        saved_implicit = self.implicit
        self._detect_vr_mode()
        try:
            return self._walk_elements(end, top)
        finally:
            self.implicit = saved_implicit

    def _detect_vr_mode(self) -> None:
        """Like pydicom and fo-dicom, trust the bytes over the transfer syntax.

        Some writers put explicit VR sequences in implicit VR data sets (and the reverse);
        the first element of each data set or item tells which encoding it really uses.
        """
        pos = self.fp.tell()
        peek = self.fp.read(6)
        self.fp.seek(pos)
        if len(peek) == 6 and peek[:2] != b"\xfe\xff" and peek[:2] != b"\xff\xfe":
            self.implicit = peek[4:6] not in _ALL_VRS

    def _walk_elements(self, end: int | None, top: bool) -> str | None:
        e = self.endian
        while end is None or self.fp.tell() < end:
            pos = self.fp.tell()
            if pos >= self.size:
                if end is None:
                    raise _Truncated("data ends before an item delimiter")
                break
            if top and self.size - pos < 8:
                break  # trailing padding shorter than an element header: ignored by readers
            group, elem = struct.unpack(e + "HH", self._read(4))
            tag = (group << 16) | elem
            if tag in (_ITEM_END, _SEQ_END):
                self._read(4)
                return self.pixel_vr
            vr, length = self._vr_length(group)
            if tag == 0x7FE00010 and top:
                self.pixel_vr = vr or ("OW" if not self.implicit else None)
                self.pixel_start = pos
            if length == _UNDEFINED and vr == "UN":
                self._walk_un_sequence(pos, top)
            elif length == _UNDEFINED:
                self._walk_undefined(vr, pixel_data=top and tag == 0x7FE00010)
            else:
                if self.fp.tell() + length > self.size:
                    raise _Truncated(
                        f"element ({group:04X},{elem:04X}) declares {length} bytes "
                        f"but only {self.size - self.fp.tell()} remain"
                    )
                self.fp.seek(length, io.SEEK_CUR)
        return self.pixel_vr

    def _vr_length(self, group: int) -> tuple[str | None, int]:
        e = self.endian
        if self.implicit or group == 0xFFFE:
            return None, int(struct.unpack(e + "L", self._read(4))[0])
        vr = self._read(2)
        if vr in _LONG_LENGTH_VRS:
            self._read(2)
            return vr.decode("latin-1"), int(struct.unpack(e + "L", self._read(4))[0])
        return vr.decode("latin-1"), int(struct.unpack(e + "H", self._read(2))[0])

    def _walk_un_sequence(self, start: int, top: bool) -> None:
        """UN of undefined length: its items are implicit VR little endian (PS3.5 6.2.2)."""
        saved = (self.endian, self.implicit)
        self.endian, self.implicit = "<", True
        try:
            self._walk_undefined("UN")
        finally:
            self.endian, self.implicit = saved
        if top and self.endian == ">":
            self.foreign_ranges.append((start, self.fp.tell()))

    def _walk_undefined(self, vr: str | None, pixel_data: bool = False) -> None:
        """A sequence or encapsulated pixel data of undefined length: walk its items."""
        e = self.endian
        while True:
            if pixel_data and self.fp.tell() == self.size:
                # Every fragment is whole but the Sequence Delimitation Item is missing
                # (seen in the wild, e.g. fo-dicom GH1339): readable, so kept.
                self.notes.append("encapsulated Pixel Data lacks its sequence delimiter")
                return
            group, elem = struct.unpack(e + "HH", self._read(4))
            length = int(struct.unpack(e + "L", self._read(4))[0])
            tag = (group << 16) | elem
            if tag == _SEQ_END:
                return
            if tag != _ITEM:
                raise _Truncated(f"expected an item tag, found ({group:04X},{elem:04X})")
            if length == _UNDEFINED:
                self.walk_dataset(end=None)
            else:
                if self.fp.tell() + length > self.size:
                    raise _Truncated(
                        f"item declares {length} bytes but only {self.size - self.fp.tell()} remain"
                    )
                self.fp.seek(length, io.SEEK_CUR)


def _sop_uids(ds: Dataset, meta: FileMetaDataset | None, notes: list[str]) -> tuple[str, str]:
    sop_class = _clean_uid(ds.get("SOPClassUID"))
    sop_instance = _clean_uid(ds.get("SOPInstanceUID"))
    if meta is not None:
        if not sop_class and _clean_uid(meta.get("MediaStorageSOPClassUID")):
            sop_class = _clean_uid(meta.get("MediaStorageSOPClassUID"))
            notes.append("SOP Class UID taken from the File Meta Information")
        if not sop_instance and _clean_uid(meta.get("MediaStorageSOPInstanceUID")):
            sop_instance = _clean_uid(meta.get("MediaStorageSOPInstanceUID"))
            notes.append("SOP Instance UID taken from the File Meta Information")
    if not sop_class:
        raise MissingIdentifier("SOP Class UID (0008,0016) is missing")
    if not sop_instance:
        raise MissingIdentifier("SOP Instance UID (0008,0018) is missing")
    for name, value in (("SOP Class UID", sop_class), ("SOP Instance UID", sop_instance)):
        if not _UID_RE.match(value):
            raise MissingIdentifier(f"{name} {value[:80]!r} is not a usable UID")
    return sop_class, sop_instance


def _require_uid(ds: Dataset, keyword: str) -> str:
    try:
        value = _clean_uid(ds.get(keyword))
    except Exception as exc:
        raise MissingIdentifier(f"{keyword} cannot be read: {exc}") from exc
    label = {"StudyInstanceUID": "(0020,000D)", "SeriesInstanceUID": "(0020,000E)"}[keyword]
    if not value:
        raise MissingIdentifier(f"{keyword} {label} is missing")
    if not _UID_RE.match(value):
        raise MissingIdentifier(f"{keyword} {value[:80]!r} is not a usable UID")
    return value


def _clean_uid(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        value = value[0] if value else ""
    return str(value).strip("\x00 ")
