"""Fixtures of the audit tests: a trail that writes a head line after every batch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cloudfilm.archive import Archive
from cloudfilm.audit import AuditTrail, close_trail, trail_for
from cloudfilm.core.config import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"audit_head_seconds": 0.0, "audit_flush_seconds": 0.05})


@pytest.fixture
def trail(archive: Archive) -> Iterator[AuditTrail]:
    yield trail_for(archive)
    close_trail(archive, timeout=30)
