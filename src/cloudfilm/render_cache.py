"""A size-bounded disk cache of rendered images (derived data only; safe to delete at any time).

Layout: ``root/<hh>/<sop-hash>/<params-hash>.bin`` where ``sop-hash`` is the SHA-256 of the SOP
Instance UID (so that every rendering of an instance can be dropped at once when the instance is
deleted) and ``params-hash`` the SHA-256 of the frame number and the rendering parameters.

Several threads and processes may share one cache: entries are written to a temporary file and
renamed into place (readers see a whole file or none), hits refresh the file's modification time
(the LRU clock: ``atime`` is unreliable on ``noatime``/``relatime`` mounts), and eviction removes
the least recently used files until the total is under 90 % of the bound. Each process keeps an
estimate of the total and rescans the folder when the estimate passes the bound or every
:attr:`RenderCache.RESCAN_EVERY` writes, so the bound holds across processes within one
rescan period of writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["RenderCache", "cache_key"]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_key(sop_instance_uid: str, frame: int | None, params: Mapping[str, Any]) -> str:
    """The key of one rendering: ``<sop-hash>/<params-hash>`` (parameters in canonical JSON)."""
    canonical = json.dumps(
        {"frame": frame, "params": params}, sort_keys=True, separators=(",", ":"), default=str
    )
    return f"{_sha(sop_instance_uid)}/{_sha(canonical)}"


class RenderCache:
    """Rendered images on disk, bounded to ``max_bytes`` (0 disables the cache).

    Parameters
    ----------
    root
        Folder of the cache (created when missing), e.g. ``data_dir/cache/rendered``.
    max_bytes
        Upper bound of the total size of the cached files, in bytes.
    """

    #: Rescan the folder after this many writes, to see other processes' entries.
    RESCAN_EVERY = 256
    #: Eviction stops when the total is at or below this fraction of ``max_bytes``.
    LOW_WATER = 0.9

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max(0, int(max_bytes))
        self._lock = threading.Lock()
        self._estimate: int | None = None
        self._writes = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def key(self, sop_instance_uid: str, frame: int | None, params: Mapping[str, Any]) -> str:
        """See :func:`cache_key`."""
        return cache_key(sop_instance_uid, frame, params)

    def _path(self, key: str) -> Path:
        instance, _, rendering = key.partition("/")
        if not instance or not rendering or not all(c in "0123456789abcdef" for c in instance):
            raise ValueError(f"not a render cache key: {key!r}")
        if not all(c in "0123456789abcdef" for c in rendering):
            raise ValueError(f"not a render cache key: {key!r}")
        return self.root / instance[:2] / instance / f"{rendering}.bin"

    def get(self, key: str) -> bytes | None:
        """The cached bytes, or None. A hit makes the entry the most recently used."""
        if not self.enabled:
            return None
        path = self._path(key)
        try:
            data = path.read_bytes()
            os.utime(path)
        except FileNotFoundError:  # never cached, or evicted meanwhile
            return None
        except OSError as exc:
            logger.warning("render cache read failed for %s: %s", path, exc)
            return None
        return data

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` (atomically), then evict if over the bound."""
        if not self.enabled or len(data) > self.max_bytes:
            return
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:  # a full disk must not break rendering
            logger.warning("render cache write failed for %s: %s", path, exc)
            return
        with self._lock:
            self._writes += 1
            if self._estimate is not None:
                self._estimate += len(data)
            rescan = (
                self._estimate is None
                or self._estimate > self.max_bytes
                or self._writes % self.RESCAN_EVERY == 0
            )
        if rescan:
            self.evict()

    def invalidate(self, sop_instance_uid: str) -> None:
        """Drop every rendering of one instance (call when the instance is deleted)."""
        instance = _sha(sop_instance_uid)
        shutil.rmtree(self.root / instance[:2] / instance, ignore_errors=True)
        with self._lock:
            self._estimate = None

    def clear(self) -> None:
        """Drop everything."""
        shutil.rmtree(self.root, ignore_errors=True)
        with self._lock:
            self._estimate = 0

    def size(self) -> int:
        """Total size of the cached files, in bytes (a scan)."""
        return sum(size for _, size, _ in self._scan())

    def evict(self) -> int:
        """Remove least recently used entries until the total is at or below the low water mark.

        Returns the number of bytes removed.
        """
        entries = self._scan()
        total = sum(size for _, size, _ in entries)
        removed = 0
        if total > self.max_bytes:
            target = int(self.max_bytes * self.LOW_WATER)
            entries.sort(key=lambda entry: entry[2])
            for path, size, _ in entries:
                if total - removed <= target:
                    break
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass  # another process evicted it
                except OSError as exc:
                    logger.warning("render cache eviction failed for %s: %s", path, exc)
                    continue
                removed += size
        with self._lock:
            self._estimate = total - removed
        return removed

    def _scan(self) -> list[tuple[Path, int, float]]:
        entries: list[tuple[Path, int, float]] = []
        stale = time.time() - 3600
        if not self.root.is_dir():
            return entries
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                path = Path(dirpath) / name
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                if name.startswith(".tmp-"):
                    if stat.st_mtime < stale:  # left by a crashed writer
                        path.unlink(missing_ok=True)
                    continue
                entries.append((path, stat.st_size, stat.st_mtime))
        return entries
