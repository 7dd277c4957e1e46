"""The archive on an S3 object store (a real SeaweedFS on loopback) behaves as on files."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudfilm.archive import Archive, StoreStatus
from cloudfilm.core.config import Settings
from cloudfilm.maintenance import check_archive
from cloudfilm.storage.s3 import S3BlobStore
from support.instances import make_dataset, part10

pytestmark = pytest.mark.db


@pytest.fixture
def s3_archive(settings: Settings, seaweed_s3: object, tmp_path: Path) -> Iterator[Archive]:
    server = seaweed_s3
    s3_settings = settings.model_copy(
        update={
            "storage": "s3",
            "s3_endpoint": server.endpoint,  # type: ignore[attr-defined]
            "s3_access_key": server.access_key,  # type: ignore[attr-defined]
            "s3_secret_key": server.secret_key,  # type: ignore[attr-defined]
            "s3_bucket": f"cf-{uuid.uuid4().hex[:12]}",
        }
    )
    with Archive.open(s3_settings) as archive:
        assert isinstance(archive.blobs, S3BlobStore)
        yield archive


def test_store_read_duplicate_delete_on_s3(s3_archive: Archive) -> None:
    ds = make_dataset()
    data = part10(ds)
    assert s3_archive.store(data).status is StoreStatus.STORED
    assert s3_archive.store(data).status is StoreStatus.DUPLICATE
    assert s3_archive.read_instance(ds.SOPInstanceUID) == data
    assert len(list(s3_archive.blobs.keys())) == 1
    report = check_archive(s3_archive)
    assert report.consistent_after and report.instances == 1
    s3_archive.delete_instance(ds.SOPInstanceUID)
    assert list(s3_archive.blobs.keys()) == []


def test_orphan_on_s3_is_reindexed_by_repair(s3_archive: Archive) -> None:
    import io

    data = part10(make_dataset())
    s3_archive.blobs.put("ab/cd/orphan.dcm", io.BytesIO(data))
    report = check_archive(s3_archive)
    assert report.orphan_blobs == ["ab/cd/orphan.dcm"] and not report.consistent_after
    repaired = check_archive(s3_archive, repair=True)
    assert repaired.consistent_after
    after = check_archive(s3_archive)
    assert after.consistent_after and after.instances == 1
