"""Local filesystem blob store (the embedded default).

Durability follows the usual POSIX recipe: write to a temporary name in the same filesystem,
``fsync`` the file, ``rename`` it into place, then ``fsync`` the folder so the new name itself
survives a power cut. Only then does ``put`` return.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

from cloudfilm.core.errors import NotFound, OutOfResources, StorageFailure
from cloudfilm.storage.base import KEY_PREFIXES, BlobInfo, RangeReader, copy_hashing


class FileBlobStore:
    """Blobs as files under ``root``; temporary files under ``root/.tmp``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._make_key_folders()

    def _make_key_folders(self) -> None:
        """Create the folders of the key layout once, so that ``put`` never has to."""
        created = False
        for prefix in KEY_PREFIXES:
            folder = self.root / prefix
            if not folder.is_dir():
                folder.mkdir(exist_ok=True)
                created = True
        if created:
            _fsync_dir(self.root)

    def _path(self, key: str) -> Path:
        if not key or key.startswith(("/", ".")) or ".." in key.split("/"):
            raise ValueError(f"invalid blob key {key!r}")
        return self.root / key

    def put(self, key: str, source: BinaryIO) -> BlobInfo:
        final = self._path(key)
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        try:
            with open(tmp, "wb") as out:
                info = copy_hashing(source, out.write)
                out.flush()
                os.fsync(out.fileno())
            created = _make_parents(final.parent, self.root)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            for folder in created:
                _fsync_dir(folder.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OutOfResources(f"disk full while writing blob: {exc}") from exc
            raise StorageFailure(f"cannot write blob {key}: {exc}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)  # a failing source: leave nothing behind
            raise
        return info

    def open(self, key: str) -> BinaryIO:
        try:
            return cast(BinaryIO, open(self._path(key), "rb"))
        except FileNotFoundError as exc:
            raise NotFound(f"blob {key} is missing") from exc

    def open_range(self, key: str, start: int, end: int | None = None) -> BinaryIO:
        return cast(BinaryIO, RangeReader(self.open(key), start, end))

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def keys(self) -> Iterator[str]:
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            base = Path(dirpath)
            found += [
                (base / name).relative_to(self.root).as_posix()
                for name in filenames
                if not name.startswith(".")
            ]
        return iter(sorted(found))

    def clean_temporary(self) -> int:
        """Remove temporary files left by an interrupted ``put``; returns how many."""
        count = 0
        for tmp in self._tmp.glob("*.part"):
            tmp.unlink(missing_ok=True)
            count += 1
        return count


def _make_parents(folder: Path, root: Path) -> list[Path]:
    """Create ``folder`` and missing parents below ``root``; return those created, deepest last."""
    missing: list[Path] = []
    current = folder
    while current != root and not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
    return list(reversed(missing))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
