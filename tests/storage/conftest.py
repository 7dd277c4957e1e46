"""Fixtures of the storage tests: a real SeaweedFS S3 server and the three blob stores."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cloudfilm.storage import BlobStore, FileBlobStore, MemoryBlobStore
from cloudfilm.storage.s3 import S3BlobStore
from support.seaweed import SeaweedServer


@pytest.fixture(scope="session")
def s3_bucket() -> str:
    """A bucket name unique to this test session (the store creates it on first use)."""
    return f"cloudfilm-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_s3_store(seaweed_s3: SeaweedServer, s3_bucket: str) -> Callable[..., S3BlobStore]:
    """Build S3 stores on the session's server and bucket.

    Each gets a prefix of its own, so tests do not see each other's blobs; keyword arguments
    override the constructor's (``prefix``, ``secret_key``, ``endpoint`` ...).
    """

    def make(**options: Any) -> S3BlobStore:
        settings: dict[str, Any] = {
            "endpoint": seaweed_s3.endpoint,
            "bucket": s3_bucket,
            "access_key": seaweed_s3.access_key,
            "secret_key": seaweed_s3.secret_key,
            "region": seaweed_s3.region,
            "prefix": f"t-{uuid.uuid4().hex[:12]}",
        }
        settings.update(options)
        return S3BlobStore(**settings)

    return make


def make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if kind == "file":
        return FileBlobStore(tmp_path / "blobs")
    if kind == "memory":
        return MemoryBlobStore()
    assert kind == "s3", kind
    make: Callable[..., S3BlobStore] = request.getfixturevalue("make_s3_store")
    return make()


@pytest.fixture(params=["file", "memory", "s3"])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """Each backend in turn, empty."""
    return make_store(request.param, request, tmp_path)


@pytest.fixture(params=["file", "s3"])
def validating_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """The backends that check keys (the memory store takes any string)."""
    return make_store(request.param, request, tmp_path)


@pytest.fixture
def file_store(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "blobs")


@pytest.fixture
def s3_blob_store(make_s3_store: Callable[..., S3BlobStore]) -> S3BlobStore:
    return make_s3_store()
