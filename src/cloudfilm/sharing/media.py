"""Download of originals: a ZIP laid out as DICOM media (IHE PDI, PS3.10 Section 8).

The ZIP holds, at its root, ``README.TXT`` (Chinese and English), the files under ``DICOM/``
with ISO 9660-safe File IDs (``DICOM/PT000001/ST000001/SE000001/IM000001``: at most 8
upper-case letters, digits or ``_`` per component, PS3.10 8.2 / PS3.12) and, last, the
``DICOMDIR`` that lists them (:mod:`cloudfilm.dicom.dicomdir`). Unpacked on a disk, CD or USB
stick it is a file-set that a PACS or viewer imports as it would a patient CD.

Each file is the stored Part 10 blob, byte for byte, unless ``transfer_syntax`` asks for
Explicit VR Little Endian (the transfer syntax of the General Purpose profiles, PS3.11): then
instances in another syntax are transcoded (derived data, see
:mod:`cloudfilm.dicom.transcode`); one that cannot be decoded is kept as stored, and the
DICOMDIR names the syntax each file really has.

The archive is never built in memory: :func:`media_zip` is a generator of chunks. Python's
``zipfile`` writes to a non-seekable sink, so each entry carries a data descriptor with the
CRC-32 computed while streaming (APPNOTE 4.3.9), and ZIP64 records appear when an entry or the
archive passes 4 GiB. Memory holds one chunk, the headers of one batch of instances and the
directory records (a few hundred bytes per file). Uncompressed DICOM is deflated at
``deflate_level`` (saving about half of a CT over a phone link); compressed pixel data is
stored as is.
"""

from __future__ import annotations

import logging
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cloudfilm.archive import Archive
from cloudfilm.core.errors import CloudFilmError, NotFound
from cloudfilm.dicom.dicomdir import DicomDirBuilder, header_from_json
from cloudfilm.dicomweb import derived
from cloudfilm.dicomweb.lookup import StoredInstance, headers_of
from cloudfilm.dicomweb.wado import coalesce
from cloudfilm.storage.base import CHUNK

logger = logging.getLogger(__name__)

__all__ = ["README_NAME", "MediaSummary", "media_zip"]

README_NAME = "README.TXT"
DICOMDIR_NAME = "DICOMDIR"
#: Instances whose cached headers are read per index round trip.
HEADER_BATCH = 100
#: Size of the chunks the generator yields, in bytes (about).
ZIP_CHUNK = 1024 * 1024
#: Transfer syntaxes worth deflating (pixel data not compressed already).
_DEFLATABLE = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian})


@dataclass
class MediaSummary:
    """What a finished :func:`media_zip` wrote (filled in as it streams)."""

    files: int = 0
    bytes: int = 0
    transcoded: int = 0
    #: SOP Instance UIDs kept as stored although another transfer syntax was asked for.
    kept_as_stored: list[str] = field(default_factory=list)
    #: SOP Instance UIDs deleted from the archive while the ZIP was being written.
    missing: list[str] = field(default_factory=list)


class _Sink:
    """A write-only stream that hands what ``zipfile`` writes to the generator."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    def take(self) -> Iterator[bytes]:
        parts, self._parts = self._parts, []
        yield from parts


class _Layout:
    """Assigns File IDs: one folder per patient, study and series, numbered in order."""

    def __init__(self) -> None:
        self._folders: dict[tuple[str, ...], str] = {}
        self._counts: dict[tuple[str, ...], int] = {}

    def file_id(self, header: Dataset, study_uid: str, series_uid: str) -> tuple[str, ...]:
        patient = (str(header.get("PatientID", "")), str(header.get("IssuerOfPatientID", "")))
        path: tuple[str, ...] = ("DICOM",)
        for prefix, key in (("PT", patient), ("ST", (study_uid,)), ("SE", (series_uid,))):
            full = (*path, *key)
            if full not in self._folders:
                self._folders[full] = self._next(path, prefix)
            path = (*path, self._folders[full])
        return (*path, self._next(path, "IM"))

    def _next(self, parent: tuple[str, ...], prefix: str) -> str:
        count = self._counts.get(parent, 0) + 1
        self._counts[parent] = count
        return f"{prefix}{count:06d}"


def media_zip(
    archive: Archive,
    instances: Sequence[StoredInstance],
    *,
    readme: str,
    transfer_syntax: str | None = None,
    deflate_level: int = 1,
    summary: MediaSummary | None = None,
) -> Iterator[bytes]:
    """Stream a ZIP of ``instances`` laid out as DICOM media (see the module docstring).

    Parameters
    ----------
    archive
        Where the instances are stored.
    instances
        What to include (already checked against the caller's principal), in display order.
    readme
        Text of ``README.TXT`` (written UTF-8 with a byte order mark and CRLF line ends, which
        Windows Notepad shows correctly in Chinese).
    transfer_syntax
        None for the originals as stored; ``1.2.840.10008.1.2.1`` to transcode to Explicit VR
        Little Endian.
    deflate_level
        zlib level (1-9) for uncompressed DICOM, the README and the DICOMDIR; 0 stores all.
    summary
        Filled in while streaming, for logging and audit by the caller.
    """
    summary = summary if summary is not None else MediaSummary()
    return coalesce(
        _entries(archive, instances, readme, transfer_syntax, deflate_level, summary), ZIP_CHUNK
    )


def _entries(
    archive: Archive,
    instances: Sequence[StoredInstance],
    readme: str,
    transfer_syntax: str | None,
    deflate_level: int,
    summary: MediaSummary,
) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", allowZip64=True) as zf:
        writer = _MediaWriter(archive, zf, sink, transfer_syntax, deflate_level, summary)
        text = "\ufeff" + readme.replace("\r\n", "\n").replace("\n", "\r\n")
        yield from writer.entry(README_NAME, [text.encode("utf-8")], deflate_level)
        for start in range(0, len(instances), HEADER_BATCH):
            batch = instances[start : start + HEADER_BATCH]
            with archive.engine.connect() as conn:
                headers = headers_of(conn, [i.pk for i in batch])
            for inst in batch:
                cached = headers.get(inst.pk)
                if cached is None:
                    summary.missing.append(inst.sop_instance_uid)
                    continue
                yield from writer.instance(inst, _header(cached, inst))
        encoded = writer.directory.encode()
        yield from writer.entry(DICOMDIR_NAME, [encoded], deflate_level)
    yield from sink.take()  # the central directory
    summary.bytes = sink.tell()
    logger.info(
        "media ZIP: %d files, %d bytes, %d transcoded, %d kept as stored, %d vanished",
        summary.files, summary.bytes, summary.transcoded, len(summary.kept_as_stored),
        len(summary.missing),
    )  # fmt: skip


def _header(cached: str, inst: StoredInstance) -> Dataset:
    """The cached header; only the UIDs when it cannot be read (records then invent keys)."""
    try:
        return header_from_json(cached)
    except Exception as exc:  # a header the archive kept but pydicom cannot rebuild
        logger.warning("header of %s unreadable for DICOMDIR: %s", inst.sop_instance_uid, exc)
        return Dataset()


@dataclass
class _MediaWriter:
    """Writes the entries of one ZIP and collects its DICOMDIR records."""

    archive: Archive
    zf: zipfile.ZipFile
    sink: _Sink
    transfer_syntax: str | None
    deflate_level: int
    summary: MediaSummary
    directory: DicomDirBuilder = field(default_factory=DicomDirBuilder)
    layout: _Layout = field(default_factory=_Layout)

    def instance(self, inst: StoredInstance, header: Dataset) -> Iterator[bytes]:
        """One file: the stored blob, or its transcoded copy; then its DICOMDIR records."""
        written_syntax = inst.transfer_syntax_uid
        chunks: Iterator[bytes]
        size = inst.size_bytes
        prepared = _transcoded(self.archive, inst, self.transfer_syntax, self.summary)
        if prepared is not None:
            chunks, size = prepared.chunks(), prepared.size
            written_syntax = str(self.transfer_syntax)
        else:
            try:
                chunks = _opened(_blob_chunks(self.archive, inst))
            except NotFound:
                self.summary.missing.append(inst.sop_instance_uid)
                return
        file_id = self.layout.file_id(header, inst.study_uid, inst.series_uid)
        level = self.deflate_level if written_syntax in _DEFLATABLE else 0
        yield from self.entry("/".join(file_id), chunks, level, size)
        header.SOPClassUID = inst.sop_class_uid  # the index's values, as the archive knows
        header.SOPInstanceUID = inst.sop_instance_uid  # the file
        header.StudyInstanceUID = inst.study_uid
        header.SeriesInstanceUID = inst.series_uid
        self.directory.add(header, file_id, written_syntax)
        self.summary.files += 1
        if prepared is not None:
            self.summary.transcoded += 1

    def entry(
        self, name: str, chunks: Iterator[bytes] | list[bytes], level: int, size: int | None = None
    ) -> Iterator[bytes]:
        """One ZIP entry, streamed; ``size`` (when known) decides whether it needs ZIP64."""
        info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED if level else zipfile.ZIP_STORED
        if level:
            # The per-entry level is ``_compresslevel`` up to Python 3.12, ``compress_level``
            # after.
            attribute = "compress_level" if hasattr(info, "compress_level") else "_compresslevel"
            setattr(info, attribute, level)
        if size is None:
            size = sum(len(c) for c in chunks) if isinstance(chunks, list) else 0
        info.file_size = size
        with self.zf.open(info, "w", force_zip64=size >= zipfile.ZIP64_LIMIT) as out:
            for chunk in chunks:
                out.write(chunk)
                yield from self.sink.take()
        yield from self.sink.take()  # the data descriptor


def _blob_chunks(archive: Archive, inst: StoredInstance) -> Iterator[bytes]:
    with archive.blobs.open(inst.blob_key) as fp:
        while chunk := fp.read(CHUNK):
            yield chunk


def _opened(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Start a blob's generator now, so that a vanished blob is known before its entry."""
    first = next(chunks, b"")

    def rest() -> Iterator[bytes]:
        yield first
        yield from chunks

    return rest()


def _transcoded(
    archive: Archive, inst: StoredInstance, target: str | None, summary: MediaSummary
) -> derived.Transcoded | None:
    """The instance in ``target``; None to write it as stored (already there, or impossible)."""
    if target is None or inst.transfer_syntax_uid == target:
        return None
    if not derived.can_transcode(inst.transfer_syntax_uid, target):
        summary.kept_as_stored.append(inst.sop_instance_uid)
        return None
    try:
        return derived.transcoded(archive, inst, target)
    except NotFound:
        return None  # vanished: the stored path notices and skips it
    except CloudFilmError as exc:
        logger.warning("%s kept as stored: %s", inst.sop_instance_uid, exc.message)
        summary.kept_as_stored.append(inst.sop_instance_uid)
        return None
