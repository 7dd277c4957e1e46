"""Exports of the audit trail: JSON lines that re-verify, DICOM audit messages that parse."""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from audit_support import execute

from cloudfilm.archive import Archive
from cloudfilm.audit import AuditRecord, AuditTrail
from cloudfilm.audit.export import AuditFilter, event_for, export, parse_actor
from cloudfilm.audit.trail import GENESIS_HASH, chain_hash
from cloudfilm.index.models import AuditEvent

pytestmark = pytest.mark.db

T0 = datetime(2026, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)
RECORDS = [
    AuditRecord(
        "sign-in", actor_kind="user", actor_id="alice", institution="hosp-a",
        address="192.0.2.10", agent="Mozilla/5.0", at=T0,
    ),
    AuditRecord(
        "sign-in-failed", outcome="denied", actor_kind="anonymous", address="192.0.2.66",
        detail="username mallory", at=T0 + timedelta(seconds=1),
    ),
    AuditRecord(
        "view", actor_kind="user", actor_id="alice", institution="hosp-a", address="192.0.2.10",
        patient_id="P-张三", study_uid="1.2.840.1", at=T0 + timedelta(minutes=1),
    ),
    AuditRecord(
        "query", actor_kind="apikey", actor_id="0a1b2c3d4e5f", institution="hosp-b",
        detail="GET /dicomweb/studies 200\nline two", at=T0 + timedelta(minutes=2),
    ),
    AuditRecord(
        "retrieve", actor_kind="peer", actor_id="PACS_B", institution="hosp-b",
        address="pacs-b.example", patient_id="P1", study_uid="1.2.840.2",
        at=T0 + timedelta(hours=1),
    ),
    AuditRecord(
        "download", actor_kind="share", actor_id="s-123", patient_id="P1",
        study_uid="1.2.840.2", at=T0 + timedelta(hours=2),
    ),
    AuditRecord(
        "store", actor_kind="peer", actor_id="CT1", institution="hosp-a", patient_id="P1",
        study_uid="1.2.840.2", at=T0 + timedelta(hours=3),
    ),
    AuditRecord("delete", actor_kind="cli", actor_id="root", study_uid="1.2.840.3",
                at=T0 + timedelta(days=1)),
    AuditRecord("share-create", actor_kind="user", actor_id="bob", study_uid="1.2.840.2",
                outcome="failure", detail="ctrl \x01 char", at=T0 + timedelta(days=2)),
    AuditRecord("view-rendered", actor_kind="share", actor_id="s-123", at=T0 + timedelta(days=3)),
    AuditRecord("something-new", at=T0 + timedelta(days=4)),
]  # fmt: skip


@pytest.fixture
def filled(archive: Archive, trail: AuditTrail) -> Archive:
    for rec in RECORDS:
        trail.record(rec)
    assert trail.flush(timeout=120)
    return archive


def exported(archive: Archive, fmt: str = "jsonl", **where: object) -> list[str]:
    out = io.StringIO()
    count = export(archive, out, fmt, AuditFilter(**where))  # type: ignore[arg-type]
    lines = out.getvalue().splitlines()
    assert len(lines) == count
    return lines


def test_json_lines_round_trip_and_re_verify(filled: Archive) -> None:
    rows = [json.loads(line) for line in exported(filled)]
    assert len(rows) == len(RECORDS)
    prev = GENESIS_HASH
    for seq, (row, rec) in enumerate(zip(rows, RECORDS, strict=True), start=1):
        assert row["seq"] == seq
        assert row["prev_hash"] == prev
        assert chain_hash(prev, row) == row["hash"]  # an export verifies on its own
        prev = row["hash"]
        assert rec.at is not None
        assert datetime.fromisoformat(row["at"]) == rec.at
        for name in ("action", "outcome", "actor_kind", "actor_id", "institution", "address",
                     "agent", "patient_id", "study_uid", "detail"):  # fmt: skip
            assert row[name] == getattr(rec, name), name
    assert set(rows[0]) == {c.name for c in AuditEvent.__table__.columns}


def test_filters(filled: Archive) -> None:
    def actions(**where: object) -> list[str]:
        return [json.loads(line)["action"] for line in exported(filled, **where)]

    assert actions(action="view") == ["view"]
    assert actions(study_uid="1.2.840.2") == ["retrieve", "download", "store", "share-create"]
    assert actions(patient_id="P-张三") == ["view"]
    assert actions(actor_kind="user", actor_id="alice") == ["sign-in", "view"]
    assert actions(actor_kind="share") == ["download", "view-rendered"]
    assert actions(institution="hosp-b") == ["query", "retrieve"]
    assert actions(since=T0 + timedelta(hours=1), until=T0 + timedelta(hours=3)) == [
        "retrieve", "download",
    ]  # fmt: skip
    naive = (T0 + timedelta(days=2)).replace(tzinfo=None)
    assert actions(since=naive) == ["share-create", "view-rendered", "something-new"]
    shanghai = (T0 + timedelta(days=2)).astimezone(ZoneInfo("Asia/Shanghai"))
    assert actions(since=shanghai) == ["share-create", "view-rendered", "something-new"]
    assert actions(action="view", patient_id="nobody") == []


def test_parse_actor() -> None:
    assert parse_actor("user:alice") == ("user", "alice")
    assert parse_actor("share") == ("share", None)
    assert parse_actor("peer:AE:X") == ("peer", "AE:X")
    with pytest.raises(ValueError):
        parse_actor(":alice")


EXPECTED_EVENTS = {
    "sign-in": ("110114", "E", "0"),
    "sign-in-failed": ("110114", "E", "4"),
    "view": ("110103", "R", "0"),
    "query": ("110112", "E", "0"),
    "retrieve": ("110104", "R", "0"),
    "download": ("110106", "R", "0"),
    "store": ("110104", "C", "0"),
    "delete": ("110105", "D", "0"),
    "share-create": ("110113", "C", "8"),
    "view-rendered": ("110103", "R", "0"),
    "something-new": ("110100", "E", "0"),
}


def test_dicom_audit_messages_are_well_formed_with_the_right_event(filled: Archive) -> None:
    lines = exported(filled, "dicom")
    assert len(lines) == len(RECORDS)
    for line, rec in zip(lines, RECORDS, strict=True):
        message = ET.fromstring(line)  # each line is a whole document
        assert message.tag == "AuditMessage"
        tags = [child.tag for child in message]  # the order PS3.15 A.5.1 prescribes
        assert re.fullmatch(
            r"EventIdentification (ActiveParticipant )+AuditSourceIdentification"
            r"( ParticipantObjectIdentification)*",
            " ".join(tags),
        ), tags
        event = message.find("EventIdentification")
        assert event is not None
        event_id = event.find("EventID")
        assert event_id is not None
        code, action_code, outcome = EXPECTED_EVENTS[rec.action]
        assert event_id.get("csd-code") == code, rec.action
        assert event_id.get("codeSystemName") == "DCM"
        assert event.get("EventActionCode") == action_code
        assert event.get("EventOutcomeIndicator") == outcome
        assert rec.at is not None
        assert datetime.fromisoformat(event.get("EventDateTime", "")) == rec.at
        requestor = message.find("ActiveParticipant")
        assert requestor is not None and requestor.get("UserIsRequestor") == "true"
        assert requestor.get("UserID", "").startswith(rec.actor_kind)
        source = message.find("AuditSourceIdentification")
        assert source is not None and source.get("AuditSourceID") == filled.settings.dimse_ae_title
        objects = {
            o.find("ParticipantObjectIDTypeCode").get("csd-code"): o.get("ParticipantObjectID")  # type: ignore[union-attr]
            for o in message.findall("ParticipantObjectIdentification")
        }
        expected = {}
        if rec.patient_id:
            expected["2"] = rec.patient_id
        if rec.study_uid:
            expected["110180"] = rec.study_uid
        assert objects == expected
    # Transfers name both ends with their roles.
    retrieve = ET.fromstring(lines[4])
    roles = [
        (p.get("UserIsRequestor"), p.find("RoleIDCode").get("csd-code"))  # type: ignore[union-attr]
        for p in retrieve.findall("ActiveParticipant")
    ]
    assert roles == [("true", "110152"), ("false", "110153")]
    # Line breaks and control characters in values do not break the one-message-a-line form.
    query = ET.fromstring(lines[3]).find("EventIdentification/EventOutcomeDescription")
    assert query is not None and query.text == "query: GET /dicomweb/studies 200\nline two"


def test_event_mapping_falls_back_by_first_word() -> None:
    assert event_for("retrieve-frames").event_id.code == "110104"
    assert event_for("consent-give").event_id.code == "110113"
    assert event_for("audit-export").event_id.code == "110101"
    assert event_for("zzz").event_id.code == "110100"


def test_exported_json_shows_tampering_too(filled: Archive) -> None:
    execute(filled, "UPDATE audit_event SET actor_id = 'eve' WHERE seq = 3")
    rows = [json.loads(line) for line in exported(filled)]
    assert chain_hash(rows[2]["prev_hash"], rows[2]) != rows[2]["hash"]
