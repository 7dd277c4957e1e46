"""Helpers of the download and report tests: synthetic studies stored in an archive, ZIP reading."""

from __future__ import annotations

import io
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet

from cloudfilm.archive import Archive
from cloudfilm.dicom.synth import generate_studies


def store_synthetic(archive: Archive, **options: Any) -> list[Dataset]:
    """Store ``generate_studies(**options)``; the datasets, in order."""
    stored = []
    for ds in generate_studies(**options):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        result = archive.store(buffer.getvalue(), source="test")
        assert result.ok, result.reason
        stored.append(ds)
    return stored


def extract(body: bytes | Iterable[bytes], folder: Path) -> zipfile.ZipFile:
    """Unpack a ZIP (bytes, or the chunks of a stream) into ``folder``; CRCs are checked."""
    data = body if isinstance(body, bytes) else b"".join(body)
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None  # every entry's CRC-32 matches
    archive.extractall(folder)
    return archive


def read_file_set(folder: Path) -> FileSet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FileSet(pydicom.dcmread(folder / "DICOMDIR"))


def dcmread(path: str | Path, **kwargs: Any) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, **kwargs)
