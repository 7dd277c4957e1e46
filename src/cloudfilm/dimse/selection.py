"""Which stored instances a C-MOVE or C-GET identifier names (PS3.4 C.4.2.2.1, C.4.3.2.1).

A retrieve identifier holds the Query/Retrieve Level and the unique keys down to it: Patient ID
(PATIENT), Study Instance UID (STUDY), Series Instance UID (SERIES), SOP Instance UID (IMAGE);
the key of the level itself is required and may be a list of UIDs. Read-only queries on the
index models; nothing here writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudfilm.core.errors import InvalidQuery
from cloudfilm.index.matching import Level
from cloudfilm.index.models import Instance, Patient, Series, Study

PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"

#: Retrieve SOP classes and the levels of their information model.
RETRIEVE_MODELS: dict[str, tuple[Level, ...]] = {
    PATIENT_ROOT_MOVE: (Level.PATIENT, Level.STUDY, Level.SERIES, Level.INSTANCE),
    PATIENT_ROOT_GET: (Level.PATIENT, Level.STUDY, Level.SERIES, Level.INSTANCE),
    STUDY_ROOT_MOVE: (Level.STUDY, Level.SERIES, Level.INSTANCE),
    STUDY_ROOT_GET: (Level.STUDY, Level.SERIES, Level.INSTANCE),
}

#: The unique key of each level (PS3.4 C.6.1.1, C.6.2.1).
UNIQUE_KEYS: dict[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.INSTANCE: "SOPInstanceUID",
}
_ORDER = [Level.PATIENT, Level.STUDY, Level.SERIES, Level.INSTANCE]
_UID = re.compile(r"^[0-9A-Za-z._-]{1,64}$")


@dataclass(frozen=True)
class StoredInstance:
    """Where one stored instance's original bytes are, and how they are encoded."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    blob_key: str
    #: Offset of the first data set byte (after group 0002) in the blob.
    dataset_offset: int
    study_uid: str


@dataclass(frozen=True)
class RetrieveRequest:
    """A retrieve identifier, understood: the level and its unique keys (UID lists split)."""

    level: Level
    patient_id: str | None = None
    issuer: str | None = None
    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_instance_uids: tuple[str, ...] = ()


def parse_retrieve_identifier(identifier: Dataset, model: str) -> RetrieveRequest:
    """Read a C-MOVE/C-GET identifier (PS3.4 C.4.2.2.1).

    Raises
    ------
    InvalidQuery
        For a missing or invalid level, a missing unique key of that level, or a malformed UID.
    """
    levels = RETRIEVE_MODELS.get(model)
    if levels is None:
        raise InvalidQuery(f"{model} is not a supported retrieve model")
    raw_level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    try:
        level = Level(raw_level)
    except ValueError:
        raise InvalidQuery(f"Query/Retrieve Level {raw_level[:16]!r} is not valid") from None
    if level not in levels:
        raise InvalidQuery(f"level {level.value} is not part of this information model")
    depth = _ORDER.index(level)
    values = {lvl: _text(identifier.get(UNIQUE_KEYS[lvl])) for lvl in _ORDER[: depth + 1]}
    if not values[level]:
        raise InvalidQuery(f"{UNIQUE_KEYS[level]} is required for a {level.value} retrieve")
    return RetrieveRequest(
        level=level,
        patient_id=values.get(Level.PATIENT) or None,
        issuer=_text(identifier.get("IssuerOfPatientID")) or None,
        study_uids=_uids("StudyInstanceUID", values.get(Level.STUDY, "")),
        series_uids=_uids("SeriesInstanceUID", values.get(Level.SERIES, "")),
        sop_instance_uids=_uids("SOPInstanceUID", values.get(Level.INSTANCE, "")),
    )


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)  # type: ignore[attr-defined]
    return str(value).strip()


def _uids(keyword: str, text: str) -> tuple[str, ...]:
    uids = tuple(u.strip().rstrip("\x00") for u in text.split("\\") if u.strip())
    for uid in uids:
        if not _UID.match(uid):
            raise InvalidQuery(f"{keyword}: {uid[:64]!r} is not a UID")
    return uids


def select_instances(session: Session, request: RetrieveRequest) -> list[StoredInstance]:
    """The stored instances a retrieve names, by study, series and instance number."""
    stmt = (
        select(
            Instance.sop_class_uid,
            Instance.sop_instance_uid,
            Instance.transfer_syntax_uid,
            Instance.blob_key,
            Instance.dataset_offset,
            Study.study_uid,
        )
        .select_from(Instance)
        .join(Series, Series.pk == Instance.series_pk)
        .join(Study, Study.pk == Series.study_pk)
    )
    if request.patient_id is not None:
        stmt = stmt.join(Patient, Patient.pk == Study.patient_pk).where(
            Patient.patient_id == request.patient_id
        )
        if request.issuer is not None:
            stmt = stmt.where(Patient.issuer == request.issuer)
    if request.study_uids:
        stmt = stmt.where(Study.study_uid.in_(request.study_uids))
    if request.series_uids:
        stmt = stmt.where(Series.series_uid.in_(request.series_uids))
    if request.sop_instance_uids:
        stmt = stmt.where(Instance.sop_instance_uid.in_(request.sop_instance_uids))
    stmt = stmt.order_by(
        Study.pk, Series.series_number, Series.pk, Instance.instance_number, Instance.pk
    )
    return [
        StoredInstance(sop_class, sop_instance, syntax, key, offset, study_uid)
        for sop_class, sop_instance, syntax, key, offset, study_uid in session.execute(stmt)
    ]
