"""The blob store protocol: where the bytes of each stored instance live.

A blob is addressed by a key chosen by the archive (``"ab/cd/<uuid>.dcm"``). Backends know
nothing of DICOM, HTTP or the index.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

#: Size of the chunks blobs are copied in, in bytes.
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class BlobInfo:
    """What a completed ``put`` wrote: size in bytes and SHA-256 hex digest."""

    size: int
    sha256: str


@runtime_checkable
class BlobStore(Protocol):
    """Durable storage of immutable blobs."""

    def put(self, key: str, source: BinaryIO) -> BlobInfo:
        """Write ``source`` (read to its end) under ``key``.

        Returns only once the blob is durable (fsync'd, or acknowledged by the object store).
        A blob that already exists under ``key`` is replaced atomically.
        """
        ...

    def open(self, key: str) -> BinaryIO:
        """Open the blob for reading. Raises ``cloudfilm.core.errors.NotFound``."""
        ...

    def open_range(self, key: str, start: int, end: int | None = None) -> BinaryIO:
        """Open bytes ``start`` (inclusive) to ``end`` (exclusive, None = to the end)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob; removing a missing blob is not an error."""
        ...

    def exists(self, key: str) -> bool: ...

    def keys(self) -> Iterator[str]:
        """Every key in the store (for consistency checks and backups)."""
        ...


#: Blob keys are ``{2 hex digits}/{32 hex digits}.dcm``: 256 folders, few enough that a file
#: store makes them all once (no ``mkdir`` and folder fsync on the store path).
KEY_PREFIXES = tuple(f"{i:02x}" for i in range(256))


def new_blob_key() -> str:
    """A fresh random key in the layout of ``KEY_PREFIXES``."""
    name = uuid.uuid4().hex
    return f"{name[:2]}/{name}.dcm"


def copy_hashing(source: BinaryIO, write: object) -> BlobInfo:
    """Copy ``source`` to the callable ``write`` in chunks, hashing as it goes."""
    digest = hashlib.sha256()
    size = 0
    writer = write  # a bound ``write`` method
    while chunk := source.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        writer(chunk)  # type: ignore[operator]
    return BlobInfo(size=size, sha256=digest.hexdigest())


def sha256_of(source: BinaryIO) -> BlobInfo:
    """Size and SHA-256 of a stream, read to its end."""
    return copy_hashing(source, lambda _chunk: None)


class RangeReader:
    """A read-only window ``[start, end)`` over a seekable stream; closes the stream."""

    def __init__(self, raw: BinaryIO, start: int, end: int | None) -> None:
        raw.seek(start)
        self._raw = raw
        self._left = None if end is None else max(0, end - start)

    def read(self, size: int = -1) -> bytes:
        if self._left is not None:
            size = self._left if size < 0 else min(size, self._left)
        data = self._raw.read(size)
        if self._left is not None:
            self._left -= len(data)
        return data

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> RangeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
