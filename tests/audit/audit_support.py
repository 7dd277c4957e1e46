"""Helpers of the audit tests."""

from __future__ import annotations

from sqlalchemy import text

from cloudfilm.archive import Archive
from cloudfilm.audit import AuditRecord, AuditTrail


def record_many(trail: AuditTrail, count: int, **fields: str) -> None:
    """Record ``count`` views of varied content and wait until they are committed."""
    for i in range(count):
        trail.record(
            AuditRecord(
                "view",
                actor_kind=fields.get("actor_kind", "user"),
                actor_id=fields.get("actor_id", f"user{i % 3}"),
                institution="hosp-a",
                address="203.0.113.7",
                patient_id=f"P{i % 5}",
                study_uid=f"1.2.3.{i % 7}",
                detail=f"event {i}",
            )
        )
    assert trail.flush(timeout=120)


def execute(archive: Archive, sql: str) -> None:
    with archive.engine.begin() as conn:
        conn.execute(text(sql))


def count_rows(archive: Archive) -> int:
    with archive.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM audit_event")).scalar_one())
