"""``cloudfilm audit verify|export`` as a subprocess on the archive of ``cli_env``."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from audit_support import execute, record_many

from cloudfilm.archive import Archive
from cloudfilm.audit import AuditTrail, close_trail

pytestmark = pytest.mark.db


def run(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudfilm.cli", "audit", *map(str, args)],
        env={**env, "PYTHONIOENCODING": "utf-8", "CLOUDFILM_LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=180,
    )


def test_verify_exit_codes(archive: Archive, trail: AuditTrail, cli_env: dict[str, str]) -> None:
    record_many(trail, 12)
    close_trail(archive)
    ok = run(cli_env, "verify")
    assert ok.returncode == 0, ok.stderr
    assert "intact" in ok.stderr
    body = json.loads(run(cli_env, "verify", "--json").stdout)
    assert body["ok"] and body["rows"] == 12 and body["head_checked"]

    execute(archive, "UPDATE audit_event SET patient_id = 'P9' WHERE seq = 4")
    bad = run(cli_env, "verify")
    assert bad.returncode == 1
    assert "edited at seq 4" in bad.stderr
    body = json.loads(run(cli_env, "verify", "--json").stdout)
    assert body["problem"] == {"kind": "edited", "seq": 4, "message": body["problem"]["message"]}


def test_verify_detects_a_cut_off_tail(
    archive: Archive, trail: AuditTrail, cli_env: dict[str, str]
) -> None:
    record_many(trail, 12)
    close_trail(archive)
    execute(archive, "DELETE FROM audit_event WHERE seq >= 11")
    bad = run(cli_env, "verify")
    assert bad.returncode == 1
    assert "truncated at seq 12" in bad.stderr


def test_export_to_a_file_in_both_formats(
    archive: Archive, trail: AuditTrail, cli_env: dict[str, str], tmp_path: Path
) -> None:
    record_many(trail, 10)
    close_trail(archive)
    out = tmp_path / "audit.jsonl"
    done = run(cli_env, "export", "--actor", "user:user1", "--output", out)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["seq"] for r in rows] == [2, 5, 8]
    assert {r["actor_id"] for r in rows} == {"user1"}

    dicom = run(cli_env, "export", "--format", "dicom", "--patient", "P0", "--since", "2000-01-01")
    assert dicom.returncode == 0, dicom.stderr
    messages = [ET.fromstring(line) for line in dicom.stdout.splitlines()]
    assert len(messages) == 2  # rows 1 and 6
    for message in messages:
        assert message.find("EventIdentification/EventID").get("csd-code") == "110103"  # type: ignore[union-attr]

    # Each export is itself recorded ("Audit Log Used"), and the chain stays intact.
    listed = run(cli_env, "export", "--action", "audit-export")
    assert len(listed.stdout.splitlines()) == 2
    assert run(cli_env, "verify").returncode == 0


def test_export_refuses_bad_options(archive: Archive, cli_env: dict[str, str]) -> None:
    assert run(cli_env, "export", "--format", "xml").returncode == 2
    assert run(cli_env, "export", "--since", "yesterday").returncode == 2
    assert run(cli_env, "export", "--actor", ":x").returncode == 2
