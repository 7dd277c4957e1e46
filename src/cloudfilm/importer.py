"""Importing files, folders, ZIP archives and DICOMDIR media into the archive."""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cloudfilm.archive import Archive, StoreResult, StoreStatus

logger = logging.getLogger(__name__)

#: Media Storage Directory Storage (PS3.10 8.6): a DICOMDIR is an index, not an instance.
DICOMDIR_SOP_CLASS = b"1.2.840.10008.1.3.10"


@dataclass
class ImportItem:
    """One thing to store: a label for messages and a way to open it."""

    label: str
    size: int
    opener: Callable[[], BinaryIO]


@dataclass
class ImportReport:
    counts: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in StoreStatus})
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (label, status, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    stored_uids: list[str] = field(default_factory=list)

    def add(self, label: str, result: StoreResult, size: int) -> None:
        self.counts[result.status.value] += 1
        self.bytes += size
        if result.status is StoreStatus.STORED and result.sop_instance_uid:
            self.stored_uids.append(result.sop_instance_uid)
        if not result.ok:
            self.problems.append((label, result.status.value, result.reason or ""))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def failed(self) -> bool:
        return bool(self.counts["rejected"] or self.counts["conflict"])


def collect(paths: list[Path]) -> Iterator[ImportItem | tuple[str, str]]:
    """Items to store from files, folders (recursively), ZIP archives and DICOMDIRs.

    Yields ``(label, reason)`` for what is skipped on purpose (DICOMDIR index files).
    Raises FileNotFoundError for a path that does not exist.
    """
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield from _from_file(Path(root) / name)
        elif _is_dicomdir(path):
            yield from collect_dicomdir(path)
        else:
            yield from _from_file(path)


def _from_file(path: Path) -> Iterator[ImportItem | tuple[str, str]]:
    if zipfile.is_zipfile(path) and path.suffix.lower() == ".zip":
        yield from _from_zip(path)
        return
    if _is_dicomdir(path):
        yield (str(path), "DICOMDIR (media index, not an instance)")
        return
    yield ImportItem(str(path), path.stat().st_size, _opener(path))


def _opener(path: Path) -> Callable[[], BinaryIO]:
    def open_file() -> BinaryIO:
        return path.open("rb")

    return open_file


def dicomdir_files(path: Path) -> list[Path]:
    """The files a DICOMDIR references (Referenced File ID, PS3.10 8.5), that exist."""
    from pydicom import dcmread

    ds = dcmread(path, force=True)
    base = path.parent
    found: list[Path] = []
    for record in ds.get("DirectoryRecordSequence", []):
        ref = record.get("ReferencedFileID")
        if not ref:
            continue
        parts = [ref] if isinstance(ref, str) else list(ref)
        candidate = base.joinpath(*parts)
        if not candidate.exists():  # media written in upper case, copied to lower case
            candidate = base.joinpath(*[p.lower() for p in parts])
        if candidate.exists():
            found.append(candidate)
    return found


def collect_dicomdir(path: Path) -> Iterator[ImportItem]:
    for file in dicomdir_files(path):
        yield ImportItem(str(file), file.stat().st_size, _opener(file))


def _from_zip(path: Path) -> Iterator[ImportItem | tuple[str, str]]:
    with zipfile.ZipFile(path) as archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
    for member in members:
        label = f"{path}!{member.filename}"
        if Path(member.filename).name.upper() == "DICOMDIR":
            yield (label, "DICOMDIR (media index, not an instance)")
            continue

        def opener(m: zipfile.ZipInfo = member) -> BinaryIO:
            zf = zipfile.ZipFile(path)
            return zf.open(m)  # type: ignore[return-value]

        yield ImportItem(label, member.file_size, opener)


def _is_dicomdir(path: Path) -> bool:
    if path.name.upper() == "DICOMDIR":
        return True
    try:
        with path.open("rb") as fp:
            head = fp.read(512)
    except OSError:
        return False
    return head[128:132] == b"DICM" and DICOMDIR_SOP_CLASS in head


def import_items(
    archive: Archive,
    items: Iterator[ImportItem | tuple[str, str]],
    report: ImportReport,
    progress: Callable[[int], None] | None = None,
    institution: int | None = None,
) -> ImportReport:
    """Store each item, adding its outcome to ``report``; ``institution`` (a key) owns or
    holds the studies imported (see ``Archive.store``)."""
    for item in items:
        if isinstance(item, tuple):
            report.skipped.append(item)
            continue
        try:
            with item.opener() as fp:
                result = archive.store(fp, source="import", institution=institution)
        except OSError as exc:
            report.problems.append((item.label, "rejected", f"cannot read: {exc}"))
            report.counts["rejected"] += 1
            continue
        if archive.settings.dimse_routes:  # forward per the routing rules (docs/dimse.md)
            from cloudfilm.dimse.routing import route_stored

            route_stored(archive, result, origin="import")
        report.add(item.label, result, item.size)
        if progress:
            progress(item.size)
    return report
