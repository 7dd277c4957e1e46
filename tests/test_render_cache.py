"""The rendered-image cache: hits, the size bound, LRU eviction, threads and processes."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from cloudfilm.render_cache import RenderCache, cache_key


def _key(cache: RenderCache, n: int, sop: str = "1.2.3") -> str:
    return cache.key(sop, n, {"window": [40, 400], "quality": 90, "media": "image/jpeg"})


def test_put_then_get(tmp_path: Path) -> None:
    cache = RenderCache(tmp_path / "rendered", 10_000)
    key = _key(cache, 0)
    assert cache.get(key) is None
    cache.put(key, b"jpeg bytes")
    assert cache.get(key) == b"jpeg bytes"
    assert cache.get(_key(cache, 1)) is None
    assert RenderCache(tmp_path / "rendered", 10_000).get(key) == b"jpeg bytes"  # on disk


def test_keys_depend_on_instance_frame_and_parameters() -> None:
    base = cache_key("1.2.3", 0, {"a": 1, "b": 2})
    assert base == cache_key("1.2.3", 0, {"b": 2, "a": 1})  # canonical
    assert (
        len(
            {
                base,
                cache_key("1.2.4", 0, {"a": 1, "b": 2}),
                cache_key("1.2.3", 1, {"a": 1, "b": 2}),
                cache_key("1.2.3", 0, {"a": 1, "b": 3}),
            }
        )
        == 4
    )


def test_bad_keys_are_refused(tmp_path: Path) -> None:
    cache = RenderCache(tmp_path, 1000)
    with pytest.raises(ValueError):
        cache.get("../../etc/passwd")


def test_size_stays_bounded(tmp_path: Path) -> None:
    cache = RenderCache(tmp_path, 50_000)
    for n in range(100):
        cache.put(_key(cache, n), os.urandom(1_000))
    assert cache.size() <= 50_000
    assert cache.size() >= 40_000  # evicts down to the low water mark, not everything


def test_least_recently_used_goes_first(tmp_path: Path) -> None:
    cache = RenderCache(tmp_path, 10_000)
    keys = [_key(cache, n) for n in range(10)]
    for n, key in enumerate(keys):
        cache.put(key, bytes(900))
        path = cache._path(key)
        os.utime(path, (time.time() - 1000 + n, time.time() - 1000 + n))  # older first
    assert cache.get(keys[0]) is not None  # a hit makes the oldest the newest
    for n in range(10, 14):
        cache.put(_key(cache, n), bytes(900))
    assert cache.get(keys[0]) is not None
    assert cache.get(keys[1]) is None and cache.get(keys[2]) is None
    assert cache.size() <= 10_000


def test_invalidate_drops_every_rendering_of_an_instance(tmp_path: Path) -> None:
    cache = RenderCache(tmp_path, 100_000)
    cache.put(_key(cache, 0, "1.2.3"), b"a")
    cache.put(_key(cache, 1, "1.2.3"), b"b")
    cache.put(_key(cache, 0, "9.9"), b"c")
    cache.invalidate("1.2.3")
    assert cache.get(_key(cache, 0, "1.2.3")) is None and cache.get(_key(cache, 1, "1.2.3")) is None
    assert cache.get(_key(cache, 0, "9.9")) == b"c"


def test_zero_disables_and_oversized_entries_are_skipped(tmp_path: Path) -> None:
    off = RenderCache(tmp_path / "off", 0)
    off.put(_key(off, 0), b"x")
    assert off.get(_key(off, 0)) is None and not (tmp_path / "off").exists()
    small = RenderCache(tmp_path / "small", 10)
    small.put(_key(small, 0), bytes(11))
    assert small.get(_key(small, 0)) is None


def test_threads_share_a_cache(tmp_path: Path) -> None:
    cache = RenderCache(tmp_path, 200_000)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for n in range(100):
                key = _key(cache, n % 30, f"1.{worker % 2}")
                data = cache.get(key)
                if data is not None:
                    assert data == key.encode() * 40  # whole, never torn
                cache.put(key, key.encode() * 40)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert cache.size() <= 200_000


def _process_worker(root: str, worker: int) -> None:
    cache = RenderCache(Path(root), 60_000)
    for n in range(150):
        key = cache.key(f"{worker}.{n}", 0, {})
        cache.put(key, bytes([worker]) * 1_000)
        data = cache.get(key)
        assert data is None or data == bytes([worker]) * 1_000


def test_processes_share_a_cache(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_process_worker, args=(str(tmp_path), w)) for w in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    cache = RenderCache(tmp_path, 60_000)
    assert cache.size() <= 60_000 + 3 * RenderCache.RESCAN_EVERY * 1_000  # bounded per process
    cache.evict()
    assert cache.size() <= 60_000
    assert not [p for p in tmp_path.rglob(".tmp-*")]
