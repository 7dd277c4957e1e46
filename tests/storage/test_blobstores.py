"""The BlobStore contract, run against every backend (file, memory, S3 on SeaweedFS).

Backend-specific guarantees follow: the file store's durability recipe and clean-up, and the
S3 store's metadata, failure mapping and bucket handling.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import socket
import stat
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest

import cloudfilm.storage.fs as fs_module
from cloudfilm.core.config import Settings
from cloudfilm.core.errors import NotFound, StorageFailure
from cloudfilm.storage import BlobInfo, BlobStore, FileBlobStore, open_blob_store
from cloudfilm.storage.s3 import S3BlobStore
from support.seaweed import SeaweedServer

MiB = 1024 * 1024
LARGE = 20 * MiB + 12_345  # three 8 MiB parts for the S3 store, the last one short


class PatternSource:
    """``size`` reproducible pseudo-random bytes, made as they are read.

    Every 64 KiB block differs, so swapped or repeated parts change the hash. ``max_read``
    caps what one ``read`` returns (a trickling network stream); ``fail_at`` makes ``read``
    raise ``error`` once that many bytes were handed out.
    """

    BLOCK = 64 * 1024

    def __init__(
        self,
        size: int,
        *,
        seed: int = 0,
        max_read: int | None = None,
        fail_at: int | None = None,
        error: type[Exception] = OSError,
    ) -> None:
        self.size = size
        self.seed = seed
        self.max_read = max_read
        self.fail_at = fail_at
        self.error = error
        self.position = 0
        self._cache: tuple[int, bytes] = (-1, b"")

    def _block(self, index: int) -> bytes:
        if self._cache[0] != index:
            rng = random.Random(self.seed * 1_000_003 + index)
            self._cache = (index, rng.randbytes(self.BLOCK))
        return self._cache[1]

    def slice(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the pattern (clipped to its size)."""
        end = min(end, self.size)
        out = bytearray()
        while start < end:
            index, offset = divmod(start, self.BLOCK)
            piece = self._block(index)[offset : offset + (end - start)]
            out += piece
            start += len(piece)
        return bytes(out)

    def read(self, size: int = -1) -> bytes:
        if self.fail_at is not None and self.position >= self.fail_at:
            raise self.error("the sender went away")
        limit = self.size if self.fail_at is None else min(self.size, self.fail_at)
        count = limit - self.position if size < 0 else min(size, limit - self.position)
        if self.max_read is not None:
            count = min(count, self.max_read)
        data = self.slice(self.position, self.position + count)
        self.position += len(data)
        return data

    def info(self) -> BlobInfo:
        digest = hashlib.sha256()
        for start in range(0, self.size, MiB):
            digest.update(self.slice(start, start + MiB))
        return BlobInfo(size=self.size, sha256=digest.hexdigest())


def pattern(size: int, seed: int = 0) -> bytes:
    return PatternSource(size, seed=seed).slice(0, size)


def put_bytes(store: BlobStore, key: str, data: bytes) -> BlobInfo:
    return store.put(key, io.BytesIO(data))


def read_all(store: BlobStore, key: str) -> bytes:
    with store.open(key) as stream:
        return stream.read()


def info_of(data: bytes) -> BlobInfo:
    return BlobInfo(size=len(data), sha256=hashlib.sha256(data).hexdigest())


def as_source(obj: object) -> BinaryIO:
    return cast(BinaryIO, obj)


def assert_s3_metadata(store: BlobStore, key: str, info: BlobInfo) -> None:
    """On S3, the object carries its size and SHA-256 (``x-amz-meta-sha256``)."""
    if isinstance(store, S3BlobStore):
        head = store._client.head_object(Bucket=store.bucket, Key=store.prefix + key)
        assert head["ContentLength"] == info.size
        assert head["Metadata"]["sha256"] == info.sha256


def assert_no_s3_leftovers(store: BlobStore) -> None:
    """On S3, no temporary object and no unfinished multipart upload remains."""
    if isinstance(store, S3BlobStore):
        client = store._client
        listed = client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix + ".tmp/")
        assert not listed.get("Contents"), listed.get("Contents")
        uploads = client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
        assert not uploads.get("Uploads"), uploads.get("Uploads")


# -- the contract, for every backend ---------------------------------------------------------


def test_is_a_blob_store(blob_store: BlobStore) -> None:
    assert isinstance(blob_store, BlobStore)
    assert list(blob_store.keys()) == []


def test_put_open_round_trip(blob_store: BlobStore) -> None:
    data = pattern(300_001, seed=1)
    info = put_bytes(blob_store, "ab/cd/one.dcm", data)
    assert info == info_of(data)
    assert blob_store.exists("ab/cd/one.dcm")
    assert read_all(blob_store, "ab/cd/one.dcm") == data
    assert_s3_metadata(blob_store, "ab/cd/one.dcm", info)


def test_put_from_a_trickling_source(blob_store: BlobStore) -> None:
    """A source whose ``read`` returns little at a time is still read to its end."""
    src = PatternSource(200_000, seed=2, max_read=999)
    info = blob_store.put("tr/ic/kle.dcm", as_source(src))
    assert info == src.info()
    assert read_all(blob_store, "tr/ic/kle.dcm") == src.slice(0, src.size)


def test_opened_blob_reads_like_a_file(blob_store: BlobStore) -> None:
    """``read(n)`` gives n bytes until the end, then b""; the stream is a context manager."""
    data = pattern(1000, seed=3)
    put_bytes(blob_store, "ab/cd/file.dcm", data)
    stream = blob_store.open("ab/cd/file.dcm")
    with stream:
        pieces = iter(lambda: stream.read(7), b"")
        chunks = list(pieces)
    assert [len(c) for c in chunks[:-1]] == [7] * (len(chunks) - 1)
    assert b"".join(chunks) == data


def test_put_empty_blob(blob_store: BlobStore) -> None:
    info = put_bytes(blob_store, "em/pt/y.dcm", b"")
    assert info == BlobInfo(size=0, sha256=hashlib.sha256(b"").hexdigest())
    assert blob_store.exists("em/pt/y.dcm")
    assert read_all(blob_store, "em/pt/y.dcm") == b""
    assert list(blob_store.keys()) == ["em/pt/y.dcm"]
    with blob_store.open_range("em/pt/y.dcm", 0) as stream:
        assert stream.read() == b""
    with blob_store.open_range("em/pt/y.dcm", 0, 10) as stream:
        assert stream.read() == b""
    assert_s3_metadata(blob_store, "em/pt/y.dcm", info)


def test_large_blob_is_streamed(blob_store: BlobStore) -> None:
    src = PatternSource(LARGE, seed=4, max_read=3 * MiB)
    expected = src.info()
    assert blob_store.put("la/rg/e.dcm", as_source(src)) == expected
    digest, size = hashlib.sha256(), 0
    with blob_store.open("la/rg/e.dcm") as stream:
        while chunk := stream.read(MiB):
            digest.update(chunk)
            size += len(chunk)
    assert BlobInfo(size=size, sha256=digest.hexdigest()) == expected
    # Across the first S3 part boundary (8 MiB), and the tail.
    with blob_store.open_range("la/rg/e.dcm", 8 * MiB - 5, 8 * MiB + 5) as stream:
        assert stream.read() == src.slice(8 * MiB - 5, 8 * MiB + 5)
    with blob_store.open_range("la/rg/e.dcm", LARGE - 100) as stream:
        assert stream.read() == src.slice(LARGE - 100, LARGE)
    assert list(blob_store.keys()) == ["la/rg/e.dcm"]
    assert_s3_metadata(blob_store, "la/rg/e.dcm", expected)
    assert_no_s3_leftovers(blob_store)


RANGES = [
    (0, 10),  # start
    (0, None),  # everything
    (100, 250),  # middle
    (990, None),  # end, open
    (990, 1000),  # end, exact
    (990, 5000),  # end past the size
    (999, 1000),  # last byte
    (1000, None),  # at the end
    (1000, 1010),
    (4000, None),  # beyond the end
    (4000, 5000),
    (500, 500),  # empty
    (600, 500),  # reversed
]


@pytest.mark.parametrize(("start", "end"), RANGES)
def test_open_range(blob_store: BlobStore, start: int, end: int | None) -> None:
    data = pattern(1000, seed=5)
    put_bytes(blob_store, "ra/ng/e.dcm", data)
    with blob_store.open_range("ra/ng/e.dcm", start, end) as stream:
        assert stream.read() == data[start:end]


def test_open_range_in_pieces(blob_store: BlobStore) -> None:
    data = pattern(1000, seed=6)
    put_bytes(blob_store, "ra/ng/e.dcm", data)
    with blob_store.open_range("ra/ng/e.dcm", 10, 110) as stream:
        chunks = [stream.read(30) for _ in range(5)]
    assert chunks == [data[10:40], data[40:70], data[70:100], data[100:110], b""]


def test_overwrite_replaces(blob_store: BlobStore) -> None:
    first, second = pattern(50_000, seed=7), pattern(100, seed=8)
    put_bytes(blob_store, "ov/er/write.dcm", first)
    info = put_bytes(blob_store, "ov/er/write.dcm", second)
    assert info == info_of(second)
    assert read_all(blob_store, "ov/er/write.dcm") == second
    assert list(blob_store.keys()) == ["ov/er/write.dcm"]
    assert_s3_metadata(blob_store, "ov/er/write.dcm", info)


def test_overwrite_is_atomic_for_readers(blob_store: BlobStore) -> None:
    """A reader racing with overwrites sees one whole version, never a mix or nothing."""
    versions = [pattern(40_000, seed=9), pattern(25_000, seed=10)]
    put_bytes(blob_store, "at/om/ic.dcm", versions[0])
    done = threading.Event()
    failures: list[BaseException] = []

    def overwrite() -> None:
        try:
            for round_ in range(30):
                put_bytes(blob_store, "at/om/ic.dcm", versions[round_ % 2])
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=overwrite)
    writer.start()
    seen: set[int] = set()
    try:
        while not done.is_set() or not seen:
            data = read_all(blob_store, "at/om/ic.dcm")
            assert data in versions, f"read {len(data)} bytes, neither version"
            seen.add(versions.index(data))
    finally:
        writer.join()
    assert not failures, failures
    assert read_all(blob_store, "at/om/ic.dcm") == versions[1]


FAILURES = [
    pytest.param(1000, OSError, id="early-OSError"),
    pytest.param(12 * MiB, OSError, id="after-12MiB-OSError"),  # S3: inside a multipart upload
    pytest.param(1000, RuntimeError, id="early-RuntimeError"),
    pytest.param(12 * MiB, RuntimeError, id="after-12MiB-RuntimeError"),
]


@pytest.mark.parametrize(("fail_at", "error"), FAILURES)
def test_failed_put_leaves_no_blob(
    blob_store: BlobStore, fail_at: int, error: type[Exception]
) -> None:
    src = PatternSource(LARGE, seed=11, fail_at=fail_at, error=error)
    with pytest.raises((error, StorageFailure)):
        blob_store.put("fa/il/ed.dcm", as_source(src))
    assert not blob_store.exists("fa/il/ed.dcm")
    with pytest.raises(NotFound):
        blob_store.open("fa/il/ed.dcm")
    assert list(blob_store.keys()) == []
    assert_no_s3_leftovers(blob_store)


@pytest.mark.parametrize(("fail_at", "error"), FAILURES)
def test_failed_overwrite_keeps_previous_blob(
    blob_store: BlobStore, fail_at: int, error: type[Exception]
) -> None:
    old = pattern(5000, seed=12)
    put_bytes(blob_store, "ke/ep/old.dcm", old)
    with pytest.raises((error, StorageFailure)):
        blob_store.put(
            "ke/ep/old.dcm", as_source(PatternSource(LARGE, seed=13, fail_at=fail_at, error=error))
        )
    assert read_all(blob_store, "ke/ep/old.dcm") == old
    assert list(blob_store.keys()) == ["ke/ep/old.dcm"]
    assert_s3_metadata(blob_store, "ke/ep/old.dcm", info_of(old))
    assert_no_s3_leftovers(blob_store)


def test_delete(blob_store: BlobStore) -> None:
    put_bytes(blob_store, "de/le/te.dcm", b"bye")
    put_bytes(blob_store, "de/le/keep.dcm", b"stay")
    blob_store.delete("de/le/te.dcm")
    assert not blob_store.exists("de/le/te.dcm")
    with pytest.raises(NotFound):
        blob_store.open("de/le/te.dcm")
    assert list(blob_store.keys()) == ["de/le/keep.dcm"]
    blob_store.delete("de/le/te.dcm")  # again: not an error
    blob_store.delete("ne/ve/r.dcm")  # never existed: not an error
    assert read_all(blob_store, "de/le/keep.dcm") == b"stay"


def test_missing_blob(blob_store: BlobStore) -> None:
    assert not blob_store.exists("mi/ss/ing.dcm")
    with pytest.raises(NotFound):
        blob_store.open("mi/ss/ing.dcm")
    with pytest.raises(NotFound):
        blob_store.open_range("mi/ss/ing.dcm", 0, 10)
    with pytest.raises(NotFound):
        blob_store.open_range("mi/ss/ing.dcm", 5, 5)


def test_keys_lists_exactly_what_was_put(blob_store: BlobStore) -> None:
    keys = ["ab/cd/x.dcm", "ab/cd/y.dcm", "ab/ef/z.dcm", "01/23/a.dcm", "ff/00/b.dcm"]
    for key in random.Random(14).sample(keys, len(keys)):
        put_bytes(blob_store, key, key.encode())
    assert list(blob_store.keys()) == sorted(keys)
    blob_store.delete("ab/cd/y.dcm")
    assert list(blob_store.keys()) == sorted(set(keys) - {"ab/cd/y.dcm"})
    stored = list(blob_store.keys())
    assert all(read_all(blob_store, key) == key.encode() for key in stored)


@pytest.mark.parametrize("key", ["../x", "/abs", "", "ab/../../x", ".tmp/x"])
def test_invalid_keys_are_rejected(validating_store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid blob key"):
        put_bytes(validating_store, key, b"evil")
    for call in (validating_store.open, validating_store.exists, validating_store.delete):
        with pytest.raises(ValueError, match="invalid blob key"):
            call(key)
    assert list(validating_store.keys()) == []


# -- the file store ----------------------------------------------------------------------------


@pytest.mark.parametrize("error", [OSError, RuntimeError])
def test_file_store_failed_put_leaves_no_part_file(
    file_store: FileBlobStore, error: type[Exception]
) -> None:
    src = PatternSource(3 * MiB, seed=15, fail_at=MiB + 7, error=error)
    with pytest.raises((error, StorageFailure)):
        file_store.put("pa/rt/ial.dcm", as_source(src))
    assert not file_store.exists("pa/rt/ial.dcm")
    assert not (file_store.root / "pa" / "rt" / "ial.dcm").exists()
    assert list((file_store.root / ".tmp").iterdir()) == []


def test_file_store_writes_nothing_outside_root(file_store: FileBlobStore, tmp_path: Path) -> None:
    for key in ("../x", "/abs"):
        with pytest.raises(ValueError):
            put_bytes(file_store, key, b"evil")
    assert not (tmp_path / "x").exists()
    assert list(file_store.keys()) == []


@pytest.mark.parametrize("existing", [False, True], ids=["new-folders", "overwrite"])
def test_file_store_put_fsyncs_file_then_folder(
    file_store: FileBlobStore, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    """Durability recipe: fsync the file, rename it into place, then fsync its folder."""
    key = "fs/yn/c.dcm"
    if existing:
        put_bytes(file_store, key, b"old")
    events: list[tuple[str, Any]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def spy_fsync(fd: int) -> None:
        st = os.fstat(fd)
        events.append(("fsync", (st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode))))
        real_fsync(fd)

    def spy_replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        events.append(("replace", Path(dst)))
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(fs_module.os, "fsync", spy_fsync)
    monkeypatch.setattr(fs_module.os, "replace", spy_replace)
    file_store.put(key, io.BytesIO(b"new data"))
    monkeypatch.undo()

    final = file_store.root / key

    def identity(path: Path) -> tuple[int, int, bool]:
        st = path.stat()
        return (st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode))

    assert events.count(("replace", final)) == 1
    replaced = events.index(("replace", final))
    file_synced = events.index(("fsync", identity(final)))  # the inode survives the rename
    folder_synced = events.index(("fsync", identity(final.parent)))
    assert file_synced < replaced < folder_synced
    if not existing:  # the new folders' own entries are made durable too
        for folder in (file_store.root / "fs", file_store.root):
            assert events.index(("fsync", identity(folder))) > replaced
    assert final.read_bytes() == b"new data"


# -- the S3 store ------------------------------------------------------------------------------


def test_s3_unreachable_endpoint_fails_fast() -> None:
    """A closed port gives StorageFailure at once, naming the endpoint, never the secret."""
    with socket.socket() as blocker:  # bound, never listening: connections are refused
        blocker.bind(("127.0.0.1", 0))
        port = blocker.getsockname()[1]
        store = S3BlobStore(
            endpoint=f"http://127.0.0.1:{port}",
            bucket="cloudfilm-unreachable",
            access_key="AKIDEXAMPLE",
            secret_key="super-secret-value",
            connect_timeout=0.5,
            max_attempts=1,
        )
        calls: list[Callable[[], object]] = [
            lambda: put_bytes(store, "ab/cd/x.dcm", b"data"),
            lambda: store.open("ab/cd/x.dcm"),
            lambda: store.exists("ab/cd/x.dcm"),
            lambda: list(store.keys()),
            lambda: store.delete("ab/cd/x.dcm"),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StorageFailure) as caught:
                call()
            assert time.monotonic() - started < 5
            message = str(caught.value)
            assert f"127.0.0.1:{port}" in message
            assert "cannot connect" in message
            assert "super-secret-value" not in message + repr(caught.value.__cause__)
            assert "super-secret-value" not in repr(store)


def test_s3_wrong_secret_is_refused(
    make_s3_store: Callable[..., S3BlobStore], seaweed_s3: SeaweedServer
) -> None:
    store = make_s3_store(secret_key="wrong-" + seaweed_s3.secret_key, max_attempts=1)
    with pytest.raises(StorageFailure, match="refused") as caught:
        put_bytes(store, "ab/cd/x.dcm", b"data")
    assert seaweed_s3.secret_key not in str(caught.value)
    assert seaweed_s3.access_key not in str(caught.value)


def test_s3_keys_sorted_across_folders(s3_blob_store: S3BlobStore) -> None:
    """SeaweedFS lists folder by folder ("ab/..." before "ab-z"); keys() still sorts."""
    keys = ["ab/cd/x.dcm", "ab-z.dcm", "ab0.dcm", "ab.c/d.dcm", "ab/cd-2/y.dcm", "0.dcm"]
    for key in keys:
        put_bytes(s3_blob_store, key, b"1")
    assert list(s3_blob_store.keys()) == sorted(keys)


def test_s3_prefixes_are_separate(make_s3_store: Callable[..., S3BlobStore]) -> None:
    one, two = make_s3_store(prefix="one"), make_s3_store(prefix="two/")
    put_bytes(one, "ab/cd/x.dcm", b"one")
    put_bytes(two, "ab/cd/x.dcm", b"two")
    put_bytes(two, "ab/cd/y.dcm", b"two")
    assert list(one.keys()) == ["ab/cd/x.dcm"]
    assert list(two.keys()) == ["ab/cd/x.dcm", "ab/cd/y.dcm"]
    assert read_all(one, "ab/cd/x.dcm") == b"one"
    assert one._client.head_object(Bucket=one.bucket, Key="one/ab/cd/x.dcm")


def test_s3_creates_missing_bucket(make_s3_store: Callable[..., S3BlobStore]) -> None:
    bucket = f"cloudfilm-new-{uuid.uuid4().hex[:12]}"
    store = make_s3_store(bucket=bucket, prefix="")
    assert list(store.keys()) == []
    store._client.head_bucket(Bucket=bucket)
    put_bytes(store, "ab/cd/x.dcm", b"x")
    # A second store, and creating a bucket that already exists, are fine.
    again = make_s3_store(bucket=bucket, prefix="")
    again._create_bucket()
    assert list(again.keys()) == ["ab/cd/x.dcm"]


def test_s3_from_settings(seaweed_s3: SeaweedServer, s3_bucket: str) -> None:
    settings = Settings(
        storage="s3",
        s3_endpoint=seaweed_s3.endpoint,
        s3_bucket=s3_bucket,
        s3_access_key=seaweed_s3.access_key,
        s3_secret_key=seaweed_s3.secret_key,
        s3_region=seaweed_s3.region,
    )
    store = open_blob_store(settings)
    assert isinstance(store, S3BlobStore)
    key = f"settings/{uuid.uuid4().hex}.dcm"
    assert put_bytes(store, key, b"configured") == info_of(b"configured")
    assert read_all(store, key) == b"configured"
    store.delete(key)


def test_s3_clean_temporary(s3_blob_store: S3BlobStore) -> None:
    client, bucket, prefix = s3_blob_store._client, s3_blob_store.bucket, s3_blob_store.prefix
    put_bytes(s3_blob_store, "ab/cd/x.dcm", b"kept")
    client.put_object(Bucket=bucket, Key=prefix + ".tmp/stray", Body=b"left over")
    client.create_multipart_upload(Bucket=bucket, Key=prefix + ".tmp/unfinished")
    assert list(s3_blob_store.keys()) == ["ab/cd/x.dcm"]  # temporary objects are not blobs
    assert s3_blob_store.clean_temporary() == 2
    assert_no_s3_leftovers(s3_blob_store)
    assert read_all(s3_blob_store, "ab/cd/x.dcm") == b"kept"


def test_s3_range_when_server_ignores_range(
    s3_blob_store: S3BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that answers a Range request with the whole object still gives the range."""
    data = pattern(1000, seed=16)
    put_bytes(s3_blob_store, "ig/no/re.dcm", data)
    real_get = s3_blob_store._client.get_object

    def get_without_range(**kwargs: Any) -> Any:
        kwargs.pop("Range", None)
        return real_get(**kwargs)

    monkeypatch.setattr(s3_blob_store._client, "get_object", get_without_range)
    for start, end in [(0, 10), (100, 250), (990, None), (990, 5000)]:
        with s3_blob_store.open_range("ig/no/re.dcm", start, end) as stream:
            assert stream.read() == data[start:end]


def test_s3_open_streams(s3_blob_store: S3BlobStore) -> None:
    """``open`` does not read the whole object up front: closing early is fine."""
    put_bytes(s3_blob_store, "st/re/am.dcm", pattern(3 * MiB, seed=17))
    stream = s3_blob_store.open("st/re/am.dcm")
    assert stream.read(10) == pattern(10, seed=17)
    stream.close()
    assert read_all(s3_blob_store, "st/re/am.dcm")[:10] == pattern(10, seed=17)


def test_s3_put_memory_is_bounded(make_s3_store: Callable[..., S3BlobStore]) -> None:
    """A large put holds a few parts in memory, not the blob (5 MiB parts, 4 in flight)."""
    store = make_s3_store(part_size=5 * MiB)
    put_bytes(store, "wa/rm/up.dcm", b"x")  # bucket check, connection pool
    src = PatternSource(48 * MiB, seed=18, max_read=MiB)
    tracemalloc.start()
    try:
        info = store.put("bo/un/ded.dcm", as_source(src))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info == src.info()
    assert peak < 40 * MiB, f"peak {peak / MiB:.1f} MiB for a 48 MiB blob"
    assert_s3_metadata(store, "bo/un/ded.dcm", info)
