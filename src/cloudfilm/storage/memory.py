"""In-memory blob store, for tests of code above the storage layer."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import BinaryIO

from cloudfilm.core.errors import NotFound
from cloudfilm.storage.base import BlobInfo, copy_hashing


class MemoryBlobStore:
    """Blobs in a dict; thread-safe; nothing survives the process."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, key: str, source: BinaryIO) -> BlobInfo:
        buffer = io.BytesIO()
        info = copy_hashing(source, buffer.write)
        with self._lock:
            self._blobs[key] = buffer.getvalue()
        return info

    def open(self, key: str) -> BinaryIO:
        with self._lock:
            try:
                return io.BytesIO(self._blobs[key])
            except KeyError as exc:
                raise NotFound(f"blob {key} is missing") from exc

    def open_range(self, key: str, start: int, end: int | None = None) -> BinaryIO:
        data = self.open(key).getvalue()  # type: ignore[attr-defined]
        return io.BytesIO(data[start:end])

    def delete(self, key: str) -> None:
        with self._lock:
            self._blobs.pop(key, None)

    def exists(self, key: str) -> bool:
        with self._lock:
            return key in self._blobs

    def keys(self) -> Iterator[str]:
        with self._lock:
            return iter(sorted(self._blobs))
