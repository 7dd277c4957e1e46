"""Blob storage backends behind the ``BlobStore`` protocol."""

from __future__ import annotations

from cloudfilm.core.config import Settings
from cloudfilm.storage.base import BlobInfo, BlobStore
from cloudfilm.storage.fs import FileBlobStore
from cloudfilm.storage.memory import MemoryBlobStore

__all__ = ["BlobInfo", "BlobStore", "FileBlobStore", "MemoryBlobStore", "open_blob_store"]


def open_blob_store(settings: Settings) -> BlobStore:
    """The blob store the settings name."""
    if settings.storage == "s3":
        from cloudfilm.storage.s3 import S3BlobStore

        return S3BlobStore.from_settings(settings)
    return FileBlobStore(settings.blob_dir)
