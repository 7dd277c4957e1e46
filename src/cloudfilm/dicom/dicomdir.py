"""DICOMDIR: the directory of a file-set on DICOM media (PS3.10 Section 8, PS3.3 Annex F).

:class:`DicomDirBuilder` collects one entry per file (its header attributes, its File ID and the
transfer syntax it is written in) and :meth:`DicomDirBuilder.encode` writes the Basic Directory
IOD (PS3.3 F.3) as a Part 10 file in Explicit VR Little Endian:

* a PATIENT record per patient (Patient ID and Issuer), below it a STUDY record per study, a
  SERIES record per series and one leaf record per file: IMAGE for images, and SR DOCUMENT,
  ENCAP DOC, PRESENTATION, KEY OBJECT DOC... for the SOP classes PS3.3 F.4 names;
* the record keys of PS3.3 F.5 (pydicom's ``DIRECTORY_RECORDERS`` make the leaf records), the
  Referenced File ID and the referenced SOP Class, SOP Instance and Transfer Syntax UIDs;
* the offsets that link the records (PS3.3 F.3.2.1), counted in bytes from the first byte of
  the file (the preamble).

Archives hold odd data: when a Type 1 record key is missing from an instance, a value is
invented the way DCMTK's ``dcmmkdir --invent`` does (the series or instance position for a
number, the media creation date for a date) so that every stored file is listed.

Text from the index is Unicode (DICOM JSON), so every record holding non-ASCII text carries
Specific Character Set ``ISO_IR 192`` (UTF-8) whatever the source instance used.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import DIRECTORY_RECORDERS
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

from cloudfilm.core.config import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

logger = logging.getLogger(__name__)

__all__ = [
    "DicomDirBuilder",
    "check_file_id",
    "header_from_json",
    "leaf_record_type",
]

#: A File ID component (PS3.10 8.2, PS3.12 ISO 9660 profiles): 1 to 8 of A-Z, 0-9 and _.
_COMPONENT = re.compile(r"^[A-Z0-9_]{1,8}$")
#: Most components in a File ID (PS3.10 8.5).
MAX_FILE_ID_DEPTH = 8
_UTF8 = "ISO_IR 192"
#: VRs whose values use the Specific Character Set (PS3.5 6.1.2.3).
_TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})

#: Leaf record types (PS3.3 Table F.4-1) by SOP Class UID; anything else is an IMAGE.
_LEAF_BY_CLASS = {
    "1.2.840.10008.5.1.4.1.1.481.2": "RT DOSE",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT STRUCTURE SET",
    "1.2.840.10008.5.1.4.1.1.481.4": "RT TREAT RECORD",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT PLAN",
    "1.2.840.10008.5.1.4.1.1.481.6": "RT TREAT RECORD",
    "1.2.840.10008.5.1.4.1.1.481.7": "RT TREAT RECORD",
    "1.2.840.10008.5.1.4.1.1.481.8": "RT PLAN",
    "1.2.840.10008.5.1.4.1.1.481.9": "RT TREAT RECORD",
    "1.2.840.10008.5.1.4.1.1.88.59": "KEY OBJECT DOC",
    "1.2.840.10008.5.1.4.1.1.131": "PRESENTATION",
    "1.2.840.10008.5.1.4.1.1.4.2": "SPECTROSCOPY",
    "1.2.840.10008.5.1.4.1.1.66": "RAW DATA",
    "1.2.840.10008.5.1.4.1.1.66.1": "REGISTRATION",
    "1.2.840.10008.5.1.4.1.1.66.2": "FIDUCIAL",
    "1.2.840.10008.5.1.4.1.1.66.3": "REGISTRATION",
    "1.2.840.10008.5.1.4.1.1.66.5": "SURFACE",
    "1.2.840.10008.5.1.4.1.1.66.6": "TRACT",
    "1.2.840.10008.5.1.4.1.1.67": "VALUE MAP",
    "1.2.840.10008.5.1.4.1.1.68.1": "SURFACE SCAN",
    "1.2.840.10008.5.1.4.1.1.68.2": "SURFACE SCAN",
    "1.2.840.10008.5.1.4.1.1.77.1.5.3": "STEREOMETRIC",
    "1.2.840.10008.5.1.4.1.1.90.1": "ASSESSMENT",
}
_LEAF_BY_PREFIX = (
    ("1.2.840.10008.5.1.4.1.1.88.", "SR DOCUMENT"),
    ("1.2.840.10008.5.1.4.1.1.11.", "PRESENTATION"),
    ("1.2.840.10008.5.1.4.1.1.9.", "WAVEFORM"),
    ("1.2.840.10008.5.1.4.1.1.104.", "ENCAP DOC"),
    ("1.2.840.10008.5.1.4.1.1.78.", "MEASUREMENT"),
)

_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
_SEQUENCE_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
#: (0004,1220) Directory Record Sequence, explicit VR, undefined length.
_SEQUENCE_HEADER = struct.pack("<HH", 0x0004, 0x1220) + b"SQ\x00\x00" + b"\xff\xff\xff\xff"


def check_file_id(components: Sequence[str]) -> None:
    """Refuse a File ID that DICOM media cannot hold (PS3.10 8.2 and 8.5).

    Raises
    ------
    ValueError
        When there are no or more than 8 components, or a component is not 1 to 8 characters
        of upper-case letters, digits and underscore.
    """
    if not 1 <= len(components) <= MAX_FILE_ID_DEPTH:
        raise ValueError(f"a File ID has 1 to {MAX_FILE_ID_DEPTH} components, not {components}")
    for part in components:
        if not _COMPONENT.match(part):
            raise ValueError(f"{part!r} is not a File ID component (1-8 of A-Z, 0-9, _)")


def leaf_record_type(sop_class_uid: str, header: Dataset) -> str:
    """The Directory Record Type (0004,1430) of the record that references one file."""
    if "EncapsulatedDocument" in header or "MIMETypeOfEncapsulatedDocument" in header:
        return "ENCAP DOC"
    found = _LEAF_BY_CLASS.get(sop_class_uid)
    if found is not None:
        return found
    for prefix, record_type in _LEAF_BY_PREFIX:
        if sop_class_uid.startswith(prefix):
            return record_type
    return "IMAGE"


def header_from_json(text: str) -> Dataset:
    """A header Dataset from the index's cached DICOM JSON; bulk data references dropped."""
    data: dict[str, Any] = json.loads(text)
    _drop_bulk(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Dataset.from_json(data)


def _drop_bulk(obj: dict[str, Any]) -> None:
    for tag in list(obj):
        attr = obj[tag]
        if not isinstance(attr, dict):
            continue
        if "BulkDataURI" in attr:
            del obj[tag]
            continue
        if attr.get("vr") == "SQ":
            for item in attr.get("Value", []):
                if isinstance(item, dict):
                    _drop_bulk(item)


@dataclass
class _Node:
    """A directory record and the records one level below it."""

    record: Dataset
    children: list[_Node] = field(default_factory=list)
    index: dict[str, _Node] = field(default_factory=dict)
    offset: int = 0


class DicomDirBuilder:
    """Collects the files of a file-set and encodes its DICOMDIR.

    Memory holds only the directory records (a few hundred bytes per file), never the files.
    """

    def __init__(self, file_set_id: str = "CLOUDFILM") -> None:
        self.file_set_id = file_set_id[:16]
        self._root = _Node(Dataset())
        self._today = datetime.now()
        self._instance_uid = generate_uid()  # once: the header's size must not change
        self.count = 0

    def add(self, header: Dataset, file_id: Sequence[str], transfer_syntax: str) -> None:
        """List one file.

        Parameters
        ----------
        header
            The instance's attributes (at least the identifying UIDs; pixel data not needed).
        file_id
            Its path on the media as File ID components, e.g. ``("DICOM", "PT000001", ...)``.
        transfer_syntax
            The transfer syntax the file is written in (Referenced Transfer Syntax UID in File).
        """
        check_file_id(file_id)
        patient = self._child(
            self._root, f"{_text(header, 'PatientID')}\x00{_text(header, 'IssuerOfPatientID')}",
            lambda n: self._patient_record(header, n),
        )  # fmt: skip
        study = self._child(
            patient, _text(header, "StudyInstanceUID"), lambda n: self._study_record(header, n)
        )
        series = self._child(
            study, _text(header, "SeriesInstanceUID"), lambda n: _series_record(header, n)
        )
        sop_class = _text(header, "SOPClassUID")
        leaf = _leaf_record(header, sop_class, len(series.children) + 1)
        leaf.ReferencedFileID = list(file_id)
        leaf.ReferencedSOPClassUIDInFile = sop_class
        leaf.ReferencedSOPInstanceUIDInFile = _text(header, "SOPInstanceUID")
        leaf.ReferencedTransferSyntaxUIDInFile = transfer_syntax
        series.children.append(_Node(_finish(leaf)))
        self.count += 1

    def _child(self, parent: _Node, key: str, make: Any) -> _Node:
        node = parent.index.get(key)
        if node is None:
            node = _Node(_finish(make(len(parent.children) + 1)))
            parent.index[key] = node
            parent.children.append(node)
        return node

    def _patient_record(self, header: Dataset, number: int) -> Dataset:
        record = Dataset()
        record.DirectoryRecordType = "PATIENT"
        record.PatientName = header.get("PatientName") or ""
        record.PatientID = _text(header, "PatientID") or f"NOID{number:04d}"
        if _text(header, "IssuerOfPatientID"):
            record.IssuerOfPatientID = _text(header, "IssuerOfPatientID")
        for keyword in ("PatientBirthDate", "PatientSex"):
            if _text(header, keyword):
                setattr(record, keyword, _text(header, keyword))
        return record

    def _study_record(self, header: Dataset, number: int) -> Dataset:
        record = Dataset()
        record.DirectoryRecordType = "STUDY"
        record.StudyDate = _first(header, "StudyDate", "SeriesDate", "AcquisitionDate",
                                  "ContentDate") or self._today.strftime("%Y%m%d")  # fmt: skip
        record.StudyTime = _first(header, "StudyTime", "SeriesTime", "AcquisitionTime",
                                  "ContentTime") or self._today.strftime("%H%M%S")  # fmt: skip
        record.StudyDescription = _text(header, "StudyDescription")
        record.StudyInstanceUID = _text(header, "StudyInstanceUID")
        record.StudyID = _text(header, "StudyID") or str(number)
        record.AccessionNumber = _text(header, "AccessionNumber")
        return record

    def encode(self) -> bytes:
        """The DICOMDIR file: preamble, File Meta Information and the Basic Directory IOD."""
        nodes = list(_depth_first(self._root))
        head_size = len(self._head(0, 0))
        position = head_size + len(_SEQUENCE_HEADER)
        for node in nodes:  # offsets first: record sizes do not depend on their values
            node.offset = position
            position += 8 + len(_encode_record(node.record))
        items = []
        _link(self._root)
        for node in nodes:
            _link(node)
            body = _encode_record(node.record)
            items.append(_ITEM + struct.pack("<L", len(body)) + body)
        first = self._root.children[0].offset if self._root.children else 0
        last = self._root.children[-1].offset if self._root.children else 0
        head = self._head(first, last)
        if len(head) != head_size:  # offsets are UL, fixed size: this cannot happen
            raise RuntimeError("DICOMDIR header changed size while offsets were set")
        return head + _SEQUENCE_HEADER + b"".join(items) + _SEQUENCE_END

    def _head(self, first: int, last: int) -> bytes:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
        meta.MediaStorageSOPInstanceUID = self._instance_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        ds = Dataset()
        ds.FileSetID = self.file_set_id
        ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = first
        ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = last
        ds.FileSetConsistencyFlag = 0
        out = DicomBytesIO()
        out.is_little_endian, out.is_implicit_VR = True, False
        out.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(out, meta, enforce_standard=True)
        write_dataset(out, ds)
        return bytes(out.getvalue())


def _series_record(header: Dataset, number: int) -> Dataset:
    record = Dataset()
    record.DirectoryRecordType = "SERIES"
    record.Modality = _text(header, "Modality") or "OT"
    record.SeriesInstanceUID = _text(header, "SeriesInstanceUID")
    record.SeriesNumber = _integer(header, "SeriesNumber") or number
    for keyword in ("SeriesDescription", "SeriesDate", "SeriesTime", "BodyPartExamined"):
        if _text(header, keyword):
            setattr(record, keyword, _text(header, keyword))
    return record


def _leaf_record(header: Dataset, sop_class: str, number: int) -> Dataset:
    """The leaf record (PS3.3 F.5) of one file; a missing Instance Number is its position."""
    record_type = leaf_record_type(sop_class, header)
    source = Dataset()
    source.update(header)
    if _integer(header, "InstanceNumber") is None:
        source.InstanceNumber = number
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            record: Dataset = DIRECTORY_RECORDERS[record_type](source)
    except (ValueError, KeyError, AttributeError) as exc:
        # The instance lacks a Type 1 key of its record type: list it with what it has.
        logger.warning("%s record of %s: %s", record_type, header.get("SOPInstanceUID"), exc)
        record = Dataset()
        record.InstanceNumber = source.InstanceNumber
        for keyword in ("ContentDate", "ContentTime"):
            if keyword in source:
                setattr(record, keyword, source[keyword].value)
    record.DirectoryRecordType = record_type
    return record


def _finish(record: Dataset) -> Dataset:
    """Add the record attributes every record has (PS3.3 F.3.2.2) and its character set."""
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    _to_unicode(record)
    if _has_non_ascii(record):
        record.SpecificCharacterSet = _UTF8
    return record


def _to_unicode(ds: Dataset) -> None:
    """Make text values plain ``str``: a value read from a file may hold its original bytes,
    which pydicom would write again in the source's character set instead of UTF-8."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _to_unicode(item)
        elif elem.VR in _TEXT_VRS and elem.value is not None:
            if isinstance(elem.value, MultiValue | list | tuple):
                elem.value = [str(v) for v in elem.value]
            else:
                elem.value = str(elem.value)


def _has_non_ascii(ds: Dataset) -> bool:
    for elem in ds:
        if elem.VR == "SQ":
            if any(_has_non_ascii(item) for item in elem.value):
                return True
        elif elem.VR in _TEXT_VRS and elem.value:
            values = elem.value if elem.VM > 1 else [elem.value]
            if any(not str(v).isascii() for v in values):
                return True
    return False


def _depth_first(node: _Node) -> list[_Node]:
    """Records in the order they are written: each followed by the records below it."""
    order: list[_Node] = []
    for child in node.children:
        order.append(child)
        order.extend(_depth_first(child))
    return order


def _link(node: _Node) -> None:
    """Set a node's children's next-record offsets and its own lower-level offset."""
    for current, following in zip(node.children, node.children[1:], strict=False):
        current.record.OffsetOfTheNextDirectoryRecord = following.offset
    if node.children:
        node.record.OffsetOfReferencedLowerLevelDirectoryEntity = node.children[0].offset


def _encode_record(record: Dataset) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_dataset(out, record)
    return bytes(out.getvalue())


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _first(ds: Dataset, *keywords: str) -> str:
    for keyword in keywords:
        value = _text(ds, keyword)
        if value:
            return value
    return ""


def _integer(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
