"""Read-only look-ups for retrieval: the instances of a study, a series or one instance.

One SELECT per request, joined over the hierarchy, so that a retrieve or ``/metadata`` of a
300-instance study costs one round trip to the index. Rows come back in the order viewers
expect: series by Series Number, instances by Instance Number (then arrival order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, bindparam, select

from cloudfilm.core.errors import NotFound
from cloudfilm.index.models import Instance, Series, Study


@dataclass(frozen=True)
class StoredInstance:
    """Where one stored instance lives and what it is."""

    pk: int
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    dataset_offset: int
    size_bytes: int
    sha256: str
    number_of_frames: int | None
    rows: int | None
    columns: int | None


_COLUMNS: tuple[Any, ...] = (
    Instance.pk,
    Study.study_uid,
    Series.series_uid,
    Instance.sop_instance_uid,
    Instance.sop_class_uid,
    Instance.transfer_syntax_uid,
    Instance.blob_key,
    Instance.dataset_offset,
    Instance.size_bytes,
    Instance.sha256,
    Instance.number_of_frames,
    Instance.rows,
    Instance.columns,
)


def _statement(by_series: bool, by_instance: bool) -> Select[Any]:
    stmt = (
        select(*_COLUMNS)
        .select_from(Instance)
        .join(Series, Series.pk == Instance.series_pk)
        .join(Study, Study.pk == Series.study_pk)
        .where(Study.study_uid == bindparam("study"))
    )
    if by_series:
        stmt = stmt.where(Series.series_uid == bindparam("series"))
    if by_instance:
        stmt = stmt.where(Instance.sop_instance_uid == bindparam("sop"))
    return stmt.order_by(Series.series_number, Series.pk, Instance.instance_number, Instance.pk)


#: The four look-ups, built once: building a SELECT costs more CPU than SQLite running it
#: (≈ 0.5 ms per request, measured on /rendered).
_STATEMENTS = {(s, i): _statement(s, i) for s in (False, True) for i in (False, True)}


def find_instances(
    conn: Connection,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> list[StoredInstance]:
    """Instances of a study (optionally one series, or one instance), in display order.

    Raises
    ------
    NotFound
        When nothing matches (an unknown study, a series of another study, ...).
    """
    stmt = _STATEMENTS[(series_uid is not None, sop_instance_uid is not None)]
    params = {"study": study_uid, "series": series_uid, "sop": sop_instance_uid}
    found = [StoredInstance(*row) for row in conn.execute(stmt, params)]
    if not found:
        raise NotFound(_missing(study_uid, series_uid, sop_instance_uid))
    return found


def headers_of(conn: Connection, pks: list[int]) -> dict[int, str]:
    """Cached DICOM JSON headers of the given instance rows, by primary key."""
    rows = conn.execute(select(Instance.pk, Instance.header_json).where(Instance.pk.in_(pks))).all()
    return {pk: header for pk, header in rows}


def _missing(study_uid: str, series_uid: str | None, sop_instance_uid: str | None) -> str:
    if sop_instance_uid is not None:
        return f"instance {sop_instance_uid} of series {series_uid} of study {study_uid} not found"
    if series_uid is not None:
        return f"series {series_uid} of study {study_uid} not found"
    return f"study {study_uid} not found"
