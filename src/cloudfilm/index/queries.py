"""Finding studies in the index (the CLI's ``studies`` and ``show``; QIDO builds on these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from cloudfilm.index.models import Instance, Patient, Series, Study


@dataclass
class StudyQuery:
    """Filters for ``find_studies``; every filter is optional."""

    #: Person name pattern; ``*`` and ``?`` wildcards; case-insensitive; matches any
    #: component group (alphabetic, ideographic, phonetic). Without wildcards: a substring.
    patient_name: str | None = None
    patient_id: str | None = None
    #: Inclusive ``YYYYMMDD`` bounds.
    date_from: str | None = None
    date_to: str | None = None
    modality: str | None = None
    accession_number: str | None = None
    study_uid: str | None = None
    limit: int | None = None
    offset: int = 0


@dataclass
class StudySummary:
    study_uid: str
    patient_name: str | None
    patient_id: str
    birth_date: str | None
    sex: str | None
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    modalities: list[str]
    description: str | None
    institution_name: str | None
    series: int
    instances: int
    size_bytes: int
    series_list: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        if not self.series_list:
            data.pop("series_list")
        return data


def like_pattern(pattern: str, *, substring: bool) -> str:
    """A SQL LIKE pattern (escape ``\\``) from a DICOM wildcard pattern (PS3.4 C.2.2.2.4)."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    if "*" in pattern or "?" in pattern:
        return escaped.replace("*", "%").replace("?", "_")
    return f"%{escaped}%" if substring else escaped


def name_condition(pattern: str) -> Any:
    """Condition on ``Patient.patient_name_key`` for a name pattern, in any component group."""
    text = pattern.strip().upper()
    wild = "*" in text or "?" in text
    body = like_pattern(text, substring=False)
    if wild:
        return Patient.patient_name_key.like(f"%|{body}|%", escape="\\")
    return Patient.patient_name_key.like(f"%{body}%", escape="\\")


def _study_select(query: StudyQuery) -> Select[Any]:
    stmt: Select[Any] = select(Study, Patient)  # type: ignore[assignment]
    stmt = stmt.join(Patient, Patient.pk == Study.patient_pk)
    if query.patient_name:
        stmt = stmt.where(name_condition(query.patient_name))
    if query.patient_id:
        stmt = stmt.where(
            Patient.patient_id.like(like_pattern(query.patient_id, substring=False), escape="\\")
        )
    if query.date_from:
        stmt = stmt.where(Study.study_date >= query.date_from)
    if query.date_to:
        stmt = stmt.where(Study.study_date <= query.date_to)
    if query.modality:
        padded = "\\" + Study.modalities + "\\"
        stmt = stmt.where(
            padded.like(
                f"%\\\\{like_pattern(query.modality.upper(), substring=False)}\\\\%",
                escape="\\",
            )
        )
    if query.accession_number:
        stmt = stmt.where(Study.accession_number == query.accession_number)
    if query.study_uid:
        stmt = stmt.where(Study.study_uid == query.study_uid)
    stmt = stmt.order_by(Study.study_date.desc(), Study.pk.desc()).offset(query.offset)
    if query.limit is not None:
        stmt = stmt.limit(query.limit)
    return stmt


def find_studies(session: Session, query: StudyQuery) -> list[StudySummary]:
    return [_summary(study, patient) for study, patient in session.execute(_study_select(query))]


def count_studies(session: Session) -> int:
    return int(session.execute(select(func.count(Study.pk))).scalar_one())


def study_detail(session: Session, study_uid: str) -> StudySummary | None:
    found = find_studies(session, StudyQuery(study_uid=study_uid))
    if not found:
        return None
    summary = found[0]
    rows = session.execute(
        select(Series)
        .join(Study, Study.pk == Series.study_pk)
        .where(Study.study_uid == study_uid)
        .order_by(Series.series_number, Series.pk)
    ).scalars()
    for series in rows:
        summary.series_list.append(
            {
                "series_uid": series.series_uid,
                "series_number": series.series_number,
                "modality": series.modality,
                "description": series.description,
                "body_part": series.body_part,
                "instances": series.num_instances,
                "size_bytes": series.size_bytes,
            }
        )
    return summary


def archive_totals(session: Session) -> dict[str, int]:
    """Numbers of patients, studies, series, instances and stored bytes."""
    return {
        "patients": int(session.execute(select(func.count(Patient.pk))).scalar_one()),
        "studies": int(session.execute(select(func.count(Study.pk))).scalar_one()),
        "series": int(session.execute(select(func.count(Series.pk))).scalar_one()),
        "instances": int(session.execute(select(func.count(Instance.pk))).scalar_one()),
        "bytes": int(
            session.execute(select(func.coalesce(func.sum(Instance.size_bytes), 0))).scalar_one()
        ),
    }


def _summary(study: Study, patient: Patient) -> StudySummary:
    return StudySummary(
        study_uid=study.study_uid,
        patient_name=patient.patient_name,
        patient_id=patient.patient_id,
        birth_date=patient.birth_date,
        sex=patient.sex,
        study_date=study.study_date,
        study_time=study.study_time,
        accession_number=study.accession_number,
        modalities=[m for m in study.modalities.split("\\") if m],
        description=study.description,
        institution_name=study.institution_name,
        series=study.num_series,
        instances=study.num_instances,
        size_bytes=study.size_bytes,
    )
