"""Export the audit trail: JSON lines, or DICOM audit messages (PS3.15 A.5).

Both formats stream rows in ``seq`` order a page at a time, so memory stays bounded whatever
the size of the trail.

**JSON lines**: one object per row with every column, ``at`` as ISO 8601 UTC with
microseconds (the form the hash covers), so an exported slice can be re-verified with
:func:`cloudfilm.audit.trail.chain_hash`.

**DICOM**: one ``AuditMessage`` (PS3.15 A.5.1, the RFC 3881-derived DICOM audit message
schema) per row, **one message per line**, without an XML declaration (UTF-8): each line is
a complete, well-formed XML document, ready to hand to a syslog sender line by line (the ATNA
transport carries one message per syslog record) or to parse on its own. Line breaks inside
values are written as character references. The mapping of our actions to the DICOM Event ID
(CID 400) and Event Type Code is ``EVENTS`` below and the table in docs/audit.md.
"""

from __future__ import annotations

import ipaddress
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TextIO

from sqlalchemy import ColumnElement, Engine, and_, or_, select

from cloudfilm.audit.trail import iso_utc
from cloudfilm.index.models import AuditEvent, Institution, Study, StudyAccess

if TYPE_CHECKING:
    from cloudfilm.archive import Archive

#: Rows read per transaction.
PAGE_ROWS = 1000
Format = Literal["jsonl", "dicom"]
#: Every column, in the table's order.
COLUMNS = tuple(c.name for c in AuditEvent.__table__.columns)


@dataclass(frozen=True)
class AuditFilter:
    """Which rows to export; every condition given must hold.

    ``since`` is inclusive, ``until`` exclusive; naive times are taken as UTC.
    """

    since: datetime | None = None
    until: datetime | None = None
    actor_kind: str | None = None
    actor_id: str | None = None
    action: str | None = None
    patient_id: str | None = None
    study_uid: str | None = None
    institution: str | None = None
    outcome: str | None = None
    #: Only the events an institution's admin may read (its code): those of its own people
    #: and machines (the actor's institution), and every event on a study it owns.
    visible_to: str | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        t = AuditEvent.__table__.c
        found: list[ColumnElement[bool]] = []
        if self.visible_to is not None:
            owned = (
                select(Study.study_uid)
                .join(StudyAccess, StudyAccess.study_pk == Study.pk)
                .join(Institution, Institution.pk == StudyAccess.institution_pk)
                .where(Institution.code == self.visible_to, StudyAccess.relation == "owner")
            )
            found.append(or_(t.institution == self.visible_to, t.study_uid.in_(owned)))
        if self.since is not None:
            found.append(t.at >= _utc(self.since))
        if self.until is not None:
            found.append(t.at < _utc(self.until))
        for column, value in (
            (t.actor_kind, self.actor_kind),
            (t.actor_id, self.actor_id),
            (t.action, self.action),
            (t.patient_id, self.patient_id),
            (t.study_uid, self.study_uid),
            (t.institution, self.institution),
            (t.outcome, self.outcome),
        ):
            if value is not None:
                found.append(column == value)
        return found


def _utc(at: datetime) -> datetime:
    # SQLite keeps the UTC wall time without a zone: compare in UTC on every backend.
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def parse_actor(value: str) -> tuple[str, str | None]:
    """``KIND:ID`` → (kind, id); ``KIND`` or ``KIND:`` → (kind, None). The id may hold ``:``."""
    kind, _, actor_id = value.partition(":")
    if not kind:
        raise ValueError(f"{value!r}: expected KIND:ID, e.g. user:alice or share:abc123")
    return kind, actor_id or None


def iter_rows(engine: Engine, where: AuditFilter | None = None) -> Iterator[dict[str, Any]]:
    """Matching rows as dicts (every column, ``at`` as ISO 8601 UTC), in ``seq`` order."""
    table = AuditEvent.__table__
    conditions = (where or AuditFilter()).conditions()
    after = 0
    while True:
        with engine.connect() as conn:
            page = conn.execute(
                select(table)
                .where(and_(table.c.seq > after, *conditions))
                .order_by(table.c.seq)
                .limit(PAGE_ROWS)
            ).all()
        if not page:
            return
        for row in page:
            item = dict(row._mapping)
            item["at"] = iso_utc(item["at"])
            yield item
        after = int(page[-1].seq)


def newest_rows(
    engine: Engine, where: AuditFilter | None = None, before: int | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """One page of matching rows, newest first: at most ``limit`` rows with ``seq`` below
    ``before`` (all when None), as :func:`iter_rows` gives them."""
    table = AuditEvent.__table__
    conditions = (where or AuditFilter()).conditions()
    if before is not None:
        conditions.append(table.c.seq < before)
    with engine.connect() as conn:
        page = conn.execute(
            select(table).where(and_(*conditions)).order_by(table.c.seq.desc()).limit(limit)
        ).all()
    rows = []
    for row in page:
        item = dict(row._mapping)
        item["at"] = iso_utc(item["at"])
        rows.append(item)
    return rows


def export(
    archive: Archive, out: TextIO, fmt: Format = "jsonl", where: AuditFilter | None = None
) -> int:
    """Write the matching rows to ``out`` in ``fmt``; returns the number of rows written."""
    count = 0
    for line in export_lines(archive, fmt, where):
        out.write(line)
        count += 1
    return count


def export_lines(
    archive: Archive, fmt: Format = "jsonl", where: AuditFilter | None = None
) -> Iterator[str]:
    """The matching rows in ``fmt``, one line (ending in a newline) per row, streamed."""
    source_id = archive.settings.dimse_ae_title
    for row in iter_rows(archive.engine, where):
        if fmt == "jsonl":
            yield json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"
        else:
            yield dicom_audit_message(row, source_id) + "\n"


# ---------------------------------------------------------------------- DICOM audit messages


@dataclass(frozen=True)
class Code:
    """A coded value as the audit schema writes it: ``csd-code``, ``codeSystemName``,
    ``originalText`` (the DICOM Code Meaning)."""

    code: str
    system: str
    meaning: str


def _dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


@dataclass(frozen=True)
class EventKind:
    """How one of our actions is written as a DICOM audit event (PS3.15 A.5.3)."""

    event_id: Code
    #: EventActionCode: C create, R read, U update, D delete, E execute.
    action_code: str
    event_type: Code | None = None
    #: Role of the requesting actor in a transfer (110152 destination, 110153 source).
    requestor_role: Code | None = None


SOURCE_ROLE = _dcm("110153", "Source Role ID")
DESTINATION_ROLE = _dcm("110152", "Destination Role ID")
ACCESSED = _dcm("110103", "DICOM Instances Accessed")
TRANSFERRED = _dcm("110104", "DICOM Instances Transferred")
SECURITY_ALERT = _dcm("110113", "Security Alert")
OBJECT_SECURITY_CHANGED = _dcm("110135", "Object Security Attributes Changed")
USER_SECURITY_CHANGED = _dcm("110137", "User Security Attributes Changed")
AUTHENTICATION = _dcm("110114", "User Authentication")
LOGIN = _dcm("110122", "Login")
LOGOUT = _dcm("110123", "Logout")

#: Our actions → DICOM audit events (PS3.15 A.5.3; Event IDs from CID 400, types CID 401-403).
EVENTS: dict[str, EventKind] = {
    "sign-in": EventKind(AUTHENTICATION, "E", LOGIN),
    "sign-in-failed": EventKind(AUTHENTICATION, "E", LOGIN),
    "oauth-token": EventKind(AUTHENTICATION, "E", LOGIN),
    "sign-out": EventKind(AUTHENTICATION, "E", LOGOUT),
    "view": EventKind(ACCESSED, "R"),
    "share-open": EventKind(ACCESSED, "R"),
    "share-view": EventKind(ACCESSED, "R"),
    "query": EventKind(_dcm("110112", "Query"), "E"),
    "retrieve": EventKind(TRANSFERRED, "R", requestor_role=DESTINATION_ROLE),
    "download": EventKind(_dcm("110106", "Export"), "R", requestor_role=DESTINATION_ROLE),
    "send": EventKind(_dcm("110106", "Export"), "R", requestor_role=DESTINATION_ROLE),
    "store": EventKind(TRANSFERRED, "C", requestor_role=SOURCE_ROLE),
    "import": EventKind(_dcm("110107", "Import"), "C", requestor_role=SOURCE_ROLE),
    "delete": EventKind(_dcm("110105", "DICOM Study Deleted"), "D"),
    "share-create": EventKind(SECURITY_ALERT, "C", OBJECT_SECURITY_CHANGED),
    "share-revoke": EventKind(SECURITY_ALERT, "D", OBJECT_SECURITY_CHANGED),
    "share-renew": EventKind(SECURITY_ALERT, "U", OBJECT_SECURITY_CHANGED),
    "consent-give": EventKind(SECURITY_ALERT, "C", OBJECT_SECURITY_CHANGED),
    "consent-withdraw": EventKind(SECURITY_ALERT, "D", OBJECT_SECURITY_CHANGED),
    "recognition": EventKind(_dcm("110111", "Procedure Record"), "C"),
    "patient-link": EventKind(_dcm("110110", "Patient Record"), "U"),
    "patient-merge": EventKind(_dcm("110110", "Patient Record"), "U"),
    "patient-split": EventKind(_dcm("110110", "Patient Record"), "U"),
    "update": EventKind(_dcm("110110", "Patient Record"), "U"),
    "audit-export": EventKind(_dcm("110101", "Audit Log Used"), "R"),
    "audit-search": EventKind(_dcm("110101", "Audit Log Used"), "R"),
    "user-create": EventKind(SECURITY_ALERT, "C", USER_SECURITY_CHANGED),
    "user-disable": EventKind(SECURITY_ALERT, "U", USER_SECURITY_CHANGED),
    "user-enable": EventKind(SECURITY_ALERT, "U", USER_SECURITY_CHANGED),
    "user-password-reset": EventKind(SECURITY_ALERT, "U", USER_SECURITY_CHANGED),
    "user-role": EventKind(SECURITY_ALERT, "U", _dcm("110136", "Security Roles Changed")),
    "apikey-create": EventKind(SECURITY_ALERT, "C", USER_SECURITY_CHANGED),
    "apikey-revoke": EventKind(SECURITY_ALERT, "D", USER_SECURITY_CHANGED),
    "institution-create": EventKind(SECURITY_ALERT, "C", _dcm("110129", "Security Configuration")),
    "admin-view": EventKind(_dcm("110100", "Application Activity"), "R"),
}
#: Actions not in ``EVENTS`` (nor their first word, e.g. ``view-rendered`` → ``view``).
FALLBACK = EventKind(_dcm("110100", "Application Activity"), "E")
OUTCOME_INDICATORS = {"success": "0", "denied": "4", "failure": "8"}
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
STUDY_INSTANCE_UID = _dcm("110180", "Study Instance UID")

#: Characters XML 1.0 cannot carry, even as references.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def event_for(action: str) -> EventKind:
    """The DICOM audit event of one of our actions."""
    return EVENTS.get(action) or EVENTS.get(action.split("-", 1)[0]) or FALLBACK


def _x(value: object) -> str:
    return _NOT_XML.sub("\ufffd", str(value))


def _code(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(
        parent,
        tag,
        {"csd-code": code.code, "codeSystemName": code.system, "originalText": code.meaning},
    )


def _access_point_type(address: str) -> str:
    """NetworkAccessPointTypeCode: 2 for an IP address, 1 for a machine name."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return "1"
    return "2"


def dicom_audit_message(row: dict[str, Any], source_id: str) -> str:
    """One row as a PS3.15 A.5.1 ``AuditMessage``, on one line.

    ``source_id`` is the AuditSourceID (our AE title). The requesting actor is the first
    ActiveParticipant (``UserID`` ``kind:id``, ``UserName`` with its institution); cloudfilm
    is the second, with the other role in a transfer. The patient (RFC 3881 Patient Number)
    and the study (110180) are ParticipantObjects when the row names them. ``detail`` is the
    EventOutcomeDescription; the user agent and the chain columns are not carried.
    """
    kind = event_for(str(row["action"]))
    root = ET.Element("AuditMessage")
    event = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": kind.action_code,
            "EventDateTime": _x(row["at"]),
            "EventOutcomeIndicator": OUTCOME_INDICATORS.get(str(row["outcome"]), "8"),
        },
    )
    _code(event, "EventID", kind.event_id)
    if kind.event_type is not None:
        _code(event, "EventTypeCode", kind.event_type)
    description = f"{row['action']}: {row['detail']}" if row["detail"] else str(row["action"])
    ET.SubElement(event, "EventOutcomeDescription").text = _x(description)

    actor_kind, actor_id = str(row["actor_kind"]), str(row["actor_id"])
    user = {"UserID": _x(f"{actor_kind}:{actor_id}" if actor_id else actor_kind)}
    if row["institution"]:
        user["UserName"] = _x(f"{actor_id or actor_kind}@{row['institution']}")
    user["UserIsRequestor"] = "true"
    if row["address"]:
        user["NetworkAccessPointID"] = _x(row["address"])
        user["NetworkAccessPointTypeCode"] = _access_point_type(str(row["address"]))
    requestor = ET.SubElement(root, "ActiveParticipant", user)
    if kind.requestor_role is not None:
        _code(requestor, "RoleIDCode", kind.requestor_role)
        ours = ET.SubElement(
            root, "ActiveParticipant", {"UserID": _x(source_id), "UserIsRequestor": "false"}
        )
        other = DESTINATION_ROLE if kind.requestor_role == SOURCE_ROLE else SOURCE_ROLE
        _code(ours, "RoleIDCode", other)

    source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": _x(source_id)})
    # AuditSourceTypeCode 4: application server process (PS3.15 A.5.1).
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": "4"})

    if row["patient_id"]:
        patient = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": _x(row["patient_id"]),
                "ParticipantObjectTypeCode": "1",  # person
                "ParticipantObjectTypeCodeRole": "1",  # patient
            },
        )
        _code(patient, "ParticipantObjectIDTypeCode", PATIENT_NUMBER)
    if row["study_uid"]:
        study = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": _x(row["study_uid"]),
                "ParticipantObjectTypeCode": "2",  # system object
                "ParticipantObjectTypeCodeRole": "3",  # report
            },
        )
        _code(study, "ParticipantObjectIDTypeCode", STUDY_INSTANCE_UID)
    xml = ET.tostring(root, encoding="unicode")
    # ElementTree escapes line breaks in attributes, not in text: keep one message per line.
    return xml.replace("\r", "&#13;").replace("\n", "&#10;")
