"""Closing an archive ends its audit trail: rows written, thread gone, no connection kept."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from cloudfilm.archive import Archive
from cloudfilm.audit import AuditRecord, trail_for
from cloudfilm.core.config import Settings
from cloudfilm.index.models import AuditEvent

pytestmark = pytest.mark.db


def test_close_flushes_and_stops_the_writer(settings: Settings) -> None:
    archive = Archive.open(settings)
    trail_for(archive).record(AuditRecord("view", actor_kind="user", actor_id="a"))
    writers = [t for t in threading.enumerate() if t.name == "cloudfilm-audit"]
    archive.close()
    assert all(not t.is_alive() for t in writers)  # a thread per archive would keep its pool
    with Archive.open(settings) as again, again.sessions() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == 1
