"""The query engine shared by QIDO-RS and C-FIND: attribute matching on the index.

Matching follows PS3.4 C.2.2.2, as PS3.18 8.3.4 asks of QIDO-RS:

- universal matching: an empty value matches everything (the key is only returned);
- single value matching: the exact value; Person Names (PN) case-insensitively and in any
  component group (alphabetic, ideographic, phonetic);
- wildcard matching: ``*`` (any run) and ``?`` (one character);
- UID list matching: backslash-separated UIDs (``1.2\\1.3``);
- range matching for dates and times: ``A-B``, ``-B``, ``A-`` (inclusive).

Modalities in Study with several values (``CT\\MR``) matches studies holding any of them.
``fuzzy`` (QIDO ``fuzzymatching=true``) makes a PN key match names where every word of the key
begins some name component, in any group, case-insensitively (``xiao`` finds
``Wang^XiaoDong``). Values come back in DICOM string form (dates ``YYYYMMDD``, PN with ``=``
groups); counts and US/IS values as ``int``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Select, and_, func, or_, select, true
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from cloudfilm.core.errors import InvalidQuery
from cloudfilm.index.models import Instance, Patient, Series, Study
from cloudfilm.index.queries import like_pattern


class Level(StrEnum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    INSTANCE = "IMAGE"


@dataclass(frozen=True)
class Attribute:
    """How a DICOM keyword maps to the index: column, VR-like kind and level."""

    level: Level
    column: Any
    kind: str  # "str", "pn", "date", "time", "uid", "int", "modalities", "count"


_P, _ST, _SE, _I = Level.PATIENT, Level.STUDY, Level.SERIES, Level.INSTANCE

_patient_studies = (
    select(func.count(Study.pk)).where(Study.patient_pk == Patient.pk).scalar_subquery()
)
_patient_series = (
    select(func.coalesce(func.sum(Study.num_series), 0))
    .where(Study.patient_pk == Patient.pk)
    .scalar_subquery()
)
_patient_instances = (
    select(func.coalesce(func.sum(Study.num_instances), 0))
    .where(Study.patient_pk == Patient.pk)
    .scalar_subquery()
)

ATTRIBUTES: dict[str, Attribute] = {
    "PatientName": Attribute(_P, Patient.patient_name, "pn"),
    "PatientID": Attribute(_P, Patient.patient_id, "str"),
    "IssuerOfPatientID": Attribute(_P, Patient.issuer, "str"),
    "PatientBirthDate": Attribute(_P, Patient.birth_date, "date"),
    "PatientSex": Attribute(_P, Patient.sex, "str"),
    "NumberOfPatientRelatedStudies": Attribute(_P, _patient_studies, "count"),
    "NumberOfPatientRelatedSeries": Attribute(_P, _patient_series, "count"),
    "NumberOfPatientRelatedInstances": Attribute(_P, _patient_instances, "count"),
    "StudyInstanceUID": Attribute(_ST, Study.study_uid, "uid"),
    "StudyDate": Attribute(_ST, Study.study_date, "date"),
    "StudyTime": Attribute(_ST, Study.study_time, "time"),
    "AccessionNumber": Attribute(_ST, Study.accession_number, "str"),
    "StudyID": Attribute(_ST, Study.study_id, "str"),
    "StudyDescription": Attribute(_ST, Study.description, "str"),
    "ReferringPhysicianName": Attribute(_ST, Study.referring_physician_name, "pn"),
    "InstitutionName": Attribute(_ST, Study.institution_name, "str"),
    "TimezoneOffsetFromUTC": Attribute(_ST, Study.timezone_offset, "str"),
    "ModalitiesInStudy": Attribute(_ST, Study.modalities, "modalities"),
    "NumberOfStudyRelatedSeries": Attribute(_ST, Study.num_series, "count"),
    "NumberOfStudyRelatedInstances": Attribute(_ST, Study.num_instances, "count"),
    "SeriesInstanceUID": Attribute(_SE, Series.series_uid, "uid"),
    "Modality": Attribute(_SE, Series.modality, "str"),
    "SeriesNumber": Attribute(_SE, Series.series_number, "int"),
    "SeriesDescription": Attribute(_SE, Series.description, "str"),
    "BodyPartExamined": Attribute(_SE, Series.body_part, "str"),
    "StationName": Attribute(_SE, Series.station_name, "str"),
    "PerformedProcedureStepStartDate": Attribute(_SE, Series.performed_start_date, "date"),
    "PerformedProcedureStepStartTime": Attribute(_SE, Series.performed_start_time, "time"),
    "NumberOfSeriesRelatedInstances": Attribute(_SE, Series.num_instances, "count"),
    "SOPInstanceUID": Attribute(_I, Instance.sop_instance_uid, "uid"),
    "SOPClassUID": Attribute(_I, Instance.sop_class_uid, "uid"),
    "InstanceNumber": Attribute(_I, Instance.instance_number, "int"),
    "Rows": Attribute(_I, Instance.rows, "int"),
    "Columns": Attribute(_I, Instance.columns, "int"),
    "BitsAllocated": Attribute(_I, Instance.bits_allocated, "int"),
    "NumberOfFrames": Attribute(_I, Instance.number_of_frames, "int"),
}

_ORDER = [Level.PATIENT, Level.STUDY, Level.SERIES, Level.INSTANCE]

#: The patient-level counts and what each sums over the patient's studies.
_PATIENT_COUNTS: dict[str, Any] = {
    "NumberOfPatientRelatedStudies": None,
    "NumberOfPatientRelatedSeries": Study.num_series,
    "NumberOfPatientRelatedInstances": Study.num_instances,
}


def _scoped_count(keyword: str, scope: ColumnElement[bool]) -> Any:
    """A patient-level count over the studies in ``scope`` only (others are not revealed)."""
    column = _PATIENT_COUNTS[keyword]
    total = func.count(Study.pk) if column is None else func.coalesce(func.sum(column), 0)
    return (
        select(total).where(Study.patient_pk == Patient.pk, scope).scalar_subquery().label(keyword)
    )


#: Keywords each query level can match on and return (its own and the levels above).
SUPPORTED_KEYS: dict[Level, set[str]] = {
    level: {k for k, a in ATTRIBUTES.items() if _ORDER.index(a.level) <= _ORDER.index(level)}
    for level in _ORDER
}
# Patient-level counts make sense only at the patient level.
for _level in (Level.STUDY, Level.SERIES, Level.INSTANCE):
    SUPPORTED_KEYS[_level] -= {k for k in SUPPORTED_KEYS[_level] if k.startswith("NumberOfPatient")}
SUPPORTED_KEYS[Level.INSTANCE] -= {"NumberOfStudyRelatedSeries"}

#: The labelled columns each level selects (built once: labels are immutable).
_LABELLED: dict[Level, list[Any]] = {
    level: [ATTRIBUTES[k].column.label(k) for k in sorted(SUPPORTED_KEYS[level])]
    for level in _ORDER
}

_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_UID = re.compile(r"^[0-9A-Za-z._-]{1,64}$")


def unsupported_keys(level: Level, keys: Mapping[str, str]) -> list[str]:
    """Keys this level cannot match on (QIDO ignores them with a warning)."""
    return sorted(k for k in keys if k not in SUPPORTED_KEYS[level])


def build_query(
    level: Level,
    keys: Mapping[str, str],
    *,
    fuzzy: bool = False,
    study_uid: str | None = None,
    series_uid: str | None = None,
    columns: Collection[str] | None = None,
    scope: ColumnElement[bool] | None = None,
) -> Select[Any]:
    """The SELECT of the rows of ``level`` matching ``keys`` (unsupported keys ignored).

    ``columns``: only these keywords are selected (and, at the IMAGE level, not the cached
    header and blob columns); by default every supported keyword and those.
    ``scope``: a condition on ``Study`` keeping what the caller may see (None: everything);
    at the PATIENT level it keeps patients with a study in scope and counts only those.
    """
    selected = [c for c in _LABELLED[level] if columns is None or c.key in columns]
    selected = selected or _LABELLED[level][:1]  # a SELECT needs a column
    stmt: Select[Any]
    if level is Level.PATIENT:
        if scope is not None:
            selected = [_scoped_count(c.key, scope) if c.key in _PATIENT_COUNTS else c
                        for c in selected]  # fmt: skip
        stmt = select(*selected).select_from(Patient)
        if any(ATTRIBUTES[k].level is not Level.PATIENT for k in keys if k in ATTRIBUTES):
            raise InvalidQuery("a PATIENT level query matches only patient attributes")
        if scope is not None:
            in_scope = select(Study.pk).where(Study.patient_pk == Patient.pk, scope)
            stmt = stmt.where(in_scope.exists())
    else:
        stmt = select(*selected).select_from(Study).join(Patient, Patient.pk == Study.patient_pk)
        if level in (Level.SERIES, Level.INSTANCE):
            stmt = stmt.join(Series, Series.study_pk == Study.pk)
        if level is Level.INSTANCE:
            stmt = stmt.join(Instance, Instance.series_pk == Series.pk)
        if level is Level.INSTANCE and columns is None:
            stmt = stmt.add_columns(
                Instance.header_json.label("_header_json"),
                Instance.blob_key.label("_blob_key"),
                Instance.dataset_offset.label("_dataset_offset"),
                Instance.transfer_syntax_uid.label("_transfer_syntax"),
                Instance.size_bytes.label("_size_bytes"),
            )
        if scope is not None:
            stmt = stmt.where(scope)
    if study_uid is not None:
        stmt = stmt.where(Study.study_uid == study_uid)
    if series_uid is not None:
        stmt = stmt.where(Series.series_uid == series_uid)
    for keyword, value in keys.items():
        if keyword in SUPPORTED_KEYS[level] and value not in ("", None):
            stmt = stmt.where(match_condition(keyword, str(value), fuzzy=fuzzy))
    return stmt.order_by(*_order_by(level))


def query_rows(
    session: Session | Connection,
    level: Level,
    keys: Mapping[str, str],
    *,
    limit: int | None = None,
    offset: int = 0,
    fuzzy: bool = False,
    study_uid: str | None = None,
    series_uid: str | None = None,
    columns: Collection[str] | None = None,
    scope: ColumnElement[bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """Matching rows as dicts of DICOM keyword → value, streamed from the database.

    ``columns`` limits what is read to the keywords named (the rest are absent from the
    rows); a Core ``Connection`` saves the ORM session's work on a read. ``scope``: see
    :func:`build_query`.
    """
    stmt = build_query(
        level, keys, fuzzy=fuzzy, study_uid=study_uid, series_uid=series_uid, columns=columns,
        scope=scope,
    )  # fmt: skip
    if offset:
        stmt = stmt.offset(offset)
    if limit is not None:
        stmt = stmt.limit(limit)
    for row in session.execute(stmt):
        yield {k: _out(k, v) for k, v in row._mapping.items()}


def count_rows(
    session: Session,
    level: Level,
    keys: Mapping[str, str],
    *,
    fuzzy: bool = False,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> int:
    stmt = build_query(level, keys, fuzzy=fuzzy, study_uid=study_uid, series_uid=series_uid)
    return int(session.execute(select(func.count()).select_from(stmt.subquery())).scalar_one())


def match_condition(keyword: str, value: str, *, fuzzy: bool = False) -> ColumnElement[bool]:
    """The SQL condition for one matching key (PS3.4 C.2.2.2)."""
    attr = ATTRIBUTES[keyword]
    column = attr.column
    value = value.strip()
    if attr.kind == "pn":
        return _pn_condition(keyword, value, fuzzy)
    if attr.kind in ("date", "time"):
        return _range_condition(keyword, column, value, attr.kind)
    if attr.kind == "uid":
        uids = [u.strip() for u in value.split("\\") if u.strip()]
        bad = [u for u in uids if not _UID.match(u)]
        if bad:
            raise InvalidQuery(f"{keyword}: {bad[0][:64]!r} is not a UID")
        if not uids:  # only separators: nothing to match on, so universal
            return true()
        return column.in_(uids) if len(uids) > 1 else column == uids[0]  # type: ignore[no-any-return]
    if attr.kind in ("int", "count"):
        try:
            return column == int(value)  # type: ignore[no-any-return]
        except ValueError as exc:
            raise InvalidQuery(f"{keyword}: {value[:64]!r} is not a number") from exc
    if attr.kind == "modalities":
        padded = "\\" + column + "\\"
        wanted = [m.strip().upper() for m in value.split("\\") if m.strip()]
        # "\\\\" is an escaped literal backslash under ESCAPE '\\' (PostgreSQL's default too)
        return or_(
            *(
                padded.like(f"%\\\\{like_pattern(m, substring=False)}\\\\%", escape="\\")
                for m in wanted
            )
        )
    parts = [v for v in value.split("\\") if v]
    if len(parts) > 1:  # value list on a single-valued key: any of them (PS3.4 C.2.2.2.8)
        return or_(*(_text_condition(column, v) for v in parts))
    return _text_condition(column, value)


def _text_condition(column: Any, value: str) -> ColumnElement[bool]:
    if "*" in value or "?" in value:
        return column.like(like_pattern(value, substring=False), escape="\\")  # type: ignore[no-any-return]
    return column == value  # type: ignore[no-any-return]


def _pn_condition(keyword: str, value: str, fuzzy: bool) -> ColumnElement[bool]:
    if keyword == "PatientName":
        key_column = Patient.patient_name_key
    else:  # ReferringPhysicianName: no search key column; case-insensitive on the value
        column = ATTRIBUTES[keyword].column
        pattern = like_pattern(value.upper(), substring=False)
        return func.upper(column).like(pattern, escape="\\")
    text = value.upper()
    if fuzzy:
        words = [w for w in re.split(r"[\s^=,]+", text.replace("*", "").replace("?", "")) if w]
        return and_(
            *(
                or_(
                    key_column.like(f"%|{like_pattern(w, substring=False)}%", escape="\\"),
                    key_column.like(f"%^{like_pattern(w, substring=False)}%", escape="\\"),
                    key_column.like(f"% {like_pattern(w, substring=False)}%", escape="\\"),
                )
                for w in words
            )
        )
    groups = [g for g in text.split("=") if g.strip()] or [""]
    conditions = []
    for group in groups:
        body = like_pattern(group.strip().rstrip("^"), substring=False)
        conditions.append(key_column.like(f"%|{body}|%", escape="\\"))
    return or_(*conditions)


def _range_condition(keyword: str, column: Any, value: str, kind: str) -> ColumnElement[bool]:
    pattern = _DATE if kind == "date" else _TIME
    if kind == "time":
        value = value.replace(":", "")
    if "-" not in value:
        if "*" in value or "?" in value:
            return _text_condition(column, value)
        if not pattern.match(value):
            raise InvalidQuery(f"{keyword}: {value[:32]!r} is not a valid {kind}")
        return column == (value if kind == "date" else _pad_time(value))  # type: ignore[no-any-return]
    if value.count("-") != 1:
        raise InvalidQuery(f"{keyword}: {value[:32]!r} is not a {kind} range")
    low, high = (part.strip() for part in value.split("-"))
    if not low and not high:
        raise InvalidQuery(f"{keyword}: an empty range '-' matches nothing meaningful")
    conditions = []
    for bound, op in ((low, "ge"), (high, "le")):
        if not bound:
            continue
        if not pattern.match(bound):
            raise InvalidQuery(f"{keyword}: {bound[:32]!r} is not a valid {kind}")
        if kind == "time":
            bound = _pad_time(bound) if op == "ge" else _pad_time(bound, high=True)
        conditions.append(column >= bound if op == "ge" else column <= bound)
    if low and high and low > high:
        raise InvalidQuery(f"{keyword}: range {value!r} ends before it starts")
    return and_(column.is_not(None), *conditions)


def _pad_time(value: str, high: bool = False) -> str:
    """``HH``/``HHMM`` to ``HHMMSS``; an upper bound covers the whole hour or minute."""
    digits = value.split(".")[0]
    fill = "59" if high else "00"
    while len(digits) < 6:
        digits += fill
    return digits + ("." + value.split(".")[1] if "." in value else ("" if not high else ".999999"))


def _order_by(level: Level) -> list[Any]:
    if level is Level.PATIENT:
        return [Patient.patient_name, Patient.pk]
    if level is Level.STUDY:
        return [Study.study_date.desc(), Study.pk.desc()]
    if level is Level.SERIES:
        return [Study.pk, Series.series_number, Series.pk]
    return [Series.pk, Instance.instance_number, Instance.pk]


def _out(keyword: str, value: Any) -> Any:
    if value is None or keyword.startswith("_"):
        return value
    if keyword == "SeriesNumber" or ATTRIBUTES[keyword].kind in ("int", "count"):
        return int(value)
    return value
