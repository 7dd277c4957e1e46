"""Derived data for DICOMweb: instances transcoded by ``cloudfilm.dicom.transcode``.

A transcoded instance is written to a spool (memory up to ``spool_memory_bytes``, then the data
folder's ``tmp/``) behind a generated File Meta Information header, and streamed from there, so
memory stays bounded by the spool size whatever the instance size.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

from cloudfilm.archive import Archive
from cloudfilm.dicom import transcode
from cloudfilm.dicom.parse import build_file_header
from cloudfilm.dicomweb.lookup import StoredInstance
from cloudfilm.storage.base import CHUNK

logger = logging.getLogger(__name__)


def can_transcode(source: str, target: str) -> bool:
    """True when an instance stored in ``source`` can be sent in ``target``."""
    return transcode.can_transcode(source, target)


@dataclass
class Transcoded:
    """A Part 10 file in a new transfer syntax: generated header + spooled data set."""

    header: bytes
    body: IO[bytes]
    size: int

    def chunks(self) -> Iterator[bytes]:
        try:
            yield self.header
            self.body.seek(0)
            while chunk := self.body.read(CHUNK):
                yield chunk
        finally:
            self.body.close()

    def close(self) -> None:
        self.body.close()


def transcoded(archive: Archive, inst: StoredInstance, target: str) -> Transcoded:
    """Transcode one stored instance to ``target``.

    Raises
    ------
    NotAcceptable
        When the image does not fit the target's encoder (known only when encoding).
    InvalidDicom
        When the stored data cannot be parsed.
    """
    settings = archive.settings
    spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - closed by Transcoded
        max_size=settings.spool_memory_bytes, dir=str(settings.tmp_dir)
    )
    try:
        with archive.blobs.open(inst.blob_key) as fp:
            transcode.transcode_into(
                fp, inst.dataset_offset, inst.transfer_syntax_uid, target, cast(Any, spool)
            )
        size = spool.tell()
    except BaseException:
        spool.close()
        raise
    header = build_file_header(inst.sop_class_uid, inst.sop_instance_uid, target)
    return Transcoded(header, cast(IO[bytes], spool), len(header) + size)
