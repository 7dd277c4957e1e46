"""The audit trail: records reach the index as one hash chain, whatever happens meanwhile."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from audit_support import count_rows, execute, record_many

from cloudfilm.archive import Archive
from cloudfilm.audit import AuditRecord, AuditTrail, close_trail, trail_for
from cloudfilm.audit.trail import GENESIS_HASH, chain_hash
from cloudfilm.audit.verify import verify
from cloudfilm.core.config import Settings
from cloudfilm.index.models import AuditEvent


def test_record_cuts_fields_to_the_columns_and_refuses_bad_values() -> None:
    rec = AuditRecord("view", agent="x" * 5000, detail="a\x00b" + "d" * 2000, patient_id="张三")
    assert len(rec.agent) == AuditEvent.__table__.c.agent.type.length  # type: ignore[attr-defined]
    assert rec.detail.startswith("ab") and len(rec.detail) == 1000
    assert rec.patient_id == "张三"
    assert rec.at is not None and rec.at.tzinfo is not None
    naive = AuditRecord("view", at=datetime(2026, 1, 2, 3, 4, 5, 6))
    assert naive.at == datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    with pytest.raises(ValueError, match="outcome"):
        AuditRecord("view", outcome="ok")
    with pytest.raises(ValueError, match="action"):
        AuditRecord("")


def test_hash_covers_every_column_and_the_previous_hash() -> None:
    row = AuditRecord("view", at=datetime(2026, 1, 1, tzinfo=UTC)).row(1)
    base = chain_hash(GENESIS_HASH, row)
    assert chain_hash("1" * 64, row) != base
    for name, value in row.items():
        changed = {**row, name: value + 1 if isinstance(value, int) else f"{value}x"}
        if name == "at":
            changed["at"] = value + timedelta(microseconds=1)
        assert chain_hash(GENESIS_HASH, changed) != base, name


pytestmark_db = pytest.mark.db


@pytestmark_db
def test_trail_for_gives_one_trail_per_archive(archive: Archive) -> None:
    found: list[AuditTrail] = []
    threads = [threading.Thread(target=lambda: found.append(trail_for(archive))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(t) for t in found}) == 1
    first = found[0]
    assert close_trail(archive)
    again = trail_for(archive)
    assert again is not first
    close_trail(archive)


@pytestmark_db
def test_records_from_many_threads_form_one_verified_chain(
    archive: Archive, trail: AuditTrail
) -> None:
    def work(n: int) -> None:
        for i in range(150):
            trail.record(AuditRecord("query", actor_kind="apikey", actor_id=f"k{n}", detail=f"{i}"))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert trail.flush(timeout=120)
    assert trail.dropped == 0
    report = verify(archive)
    assert report.ok, report.summary()
    assert report.rows == count_rows(archive) == 1200
    assert report.last_seq == 1200
    assert report.head_checked and report.head_lines >= 1
    last_line = archive.settings.audit_head_file.read_text().splitlines()[-1].split()
    assert last_line[:2] == ["1200", report.last_hash]


@pytestmark_db
def test_empty_trail_verifies(archive: Archive) -> None:
    report = verify(archive)
    assert report.ok and report.rows == 0 and not report.head_checked


@pytestmark_db
def test_verify_detects_an_edited_row(archive: Archive, trail: AuditTrail) -> None:
    record_many(trail, 20)
    assert verify(archive).ok
    execute(archive, "UPDATE audit_event SET detail = 'nothing to see' WHERE seq = 7")
    problem = verify(archive).problem
    assert problem is not None and (problem.kind, problem.seq) == ("edited", 7)


@pytestmark_db
def test_verify_detects_a_deleted_middle_row(archive: Archive, trail: AuditTrail) -> None:
    record_many(trail, 20)
    execute(archive, "DELETE FROM audit_event WHERE seq = 10")
    problem = verify(archive).problem
    assert problem is not None and (problem.kind, problem.seq) == ("removed", 10)


@pytestmark_db
def test_verify_detects_a_row_replaced_with_a_relinked_one(
    archive: Archive, trail: AuditTrail
) -> None:
    record_many(trail, 5)
    # Row 3 gets another prev_hash (and a hash that matches it): the link to row 2 is broken.
    execute(archive, f"UPDATE audit_event SET prev_hash = '{'f' * 64}' WHERE seq = 3")
    problem = verify(archive).problem
    assert problem is not None and (problem.kind, problem.seq) == ("removed", 3)


@pytestmark_db
def test_verify_detects_a_cut_off_tail(archive: Archive, trail: AuditTrail) -> None:
    record_many(trail, 20)
    close_trail(archive)
    execute(archive, "DELETE FROM audit_event WHERE seq > 15")
    problem = verify(archive).problem
    assert problem is not None and (problem.kind, problem.seq) == ("truncated", 20)
    # New rows take the removed numbers: the head file still tells.
    record_many(trail_for(archive), 10)
    close_trail(archive)
    problem = verify(archive).problem
    assert problem is not None and problem.kind == "truncated"
    assert problem.seq in range(16, 21)


@pytestmark_db
def test_verify_checks_an_explicit_head_file_and_skips_torn_lines(
    archive: Archive, trail: AuditTrail, tmp_path: Path
) -> None:
    record_many(trail, 3)
    report = verify(archive)
    head = tmp_path / "head.log"
    head.write_text(f"3 {report.last_hash} 2026-01-01T00:00:00.000000Z\n2 abc")
    again = verify(archive, head)
    assert again.ok and again.head_lines == 1 and again.head_lines_skipped == 1
    head.write_text(f"4 {report.last_hash} 2026-01-01T00:00:00.000000Z\n")
    problem = verify(archive, head).problem
    assert problem is not None and (problem.kind, problem.seq) == ("truncated", 4)


@pytestmark_db
def test_a_failing_database_keeps_the_rows_and_writes_them_later(
    archive: Archive, trail: AuditTrail, caplog: pytest.LogCaptureFixture
) -> None:
    record_many(trail, 2)
    execute(archive, "ALTER TABLE audit_event RENAME TO audit_event_away")
    try:
        with caplog.at_level(logging.WARNING, logger="cloudfilm.audit.trail"):
            for i in range(3):
                trail.record(AuditRecord("download", patient_id="SECRET-PID", detail=f"d{i}"))
            trail.flush(timeout=0)  # ask for an attempt now
            deadline = time.monotonic() + 60
            while trail.last_error is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert trail.last_error is not None
            assert trail.pending == 3
    finally:
        execute(archive, "ALTER TABLE audit_event_away RENAME TO audit_event")
    assert trail.flush(timeout=120)
    assert trail.pending == 0 and trail.last_error is None
    report = verify(archive)
    assert report.ok, report.summary()
    assert report.rows == 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings, "a failed batch is logged"
    assert not any("SECRET-PID" in w for w in warnings)


@pytestmark_db
def test_a_full_queue_drops_and_counts(archive: Archive) -> None:
    trail = AuditTrail(archive, queue_limit=5)
    execute(archive, "ALTER TABLE audit_event RENAME TO audit_event_away")
    try:
        for _ in range(12):
            trail.record(AuditRecord("view"))
        assert trail.dropped == 7
        assert trail.pending == 5
    finally:
        execute(archive, "ALTER TABLE audit_event_away RENAME TO audit_event")
    assert trail.close(timeout=120)
    assert count_rows(archive) == 5
    trail.record(AuditRecord("view"))  # after close: dropped, counted
    assert trail.dropped == 8


WRITER = """
import sys, threading, time
from pathlib import Path
from cloudfilm.archive import Archive
from cloudfilm.audit import AuditRecord, close_trail, trail_for
from cloudfilm.core.config import Settings

name, rounds, per, meet = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
archive = Archive.open(Settings())
trail = trail_for(archive)
# Start writing only when both processes are ready, so that their batches interleave.
(meet / name).touch()
deadline = time.monotonic() + 120
while len(list(meet.iterdir())) < 2 and time.monotonic() < deadline:
    time.sleep(0.005)

def work(t):
    for r in range(rounds):
        for i in range(per):
            trail.record(AuditRecord("retrieve", actor_kind="peer", actor_id=f"{name}-{t}",
                                     detail=f"{r}/{i}"))
        assert trail.flush(timeout=120)

threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert close_trail(archive, timeout=120)
assert trail.dropped == 0
archive.close()
"""


@pytestmark_db
@pytest.mark.slow
def test_two_processes_append_to_one_chain(
    archive: Archive, settings: Settings, cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**cli_env, "CLOUDFILM_AUDIT_FLUSH_SECONDS": "0.01", "CLOUDFILM_AUDIT_HEAD_SECONDS": "0"}
    rounds, per = 30, 10
    meet = tmp_path / "meet"
    meet.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, name, str(rounds), str(per), str(meet)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    report = verify(archive)
    assert report.ok, report.summary()
    assert report.rows == 2 * 3 * rounds * per
    assert report.head_checked
    with archive.engine.connect() as conn:
        from sqlalchemy import text

        writers = conn.execute(text("SELECT DISTINCT actor_id FROM audit_event")).scalars()
        assert {w.split("-")[0] for w in writers} == {"a", "b"}
    assert os.path.getsize(settings.audit_head_file) > 0
