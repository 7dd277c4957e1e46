"""Which studies an institution may see: rows of ``study_access`` (owner or holder), and the
studies a patient's active consent opens to it (``cloudfilm.patients.consent``).

The archive writes them as instances arrive (``Archive.store(institution=...)``); checks of
one study ask :func:`institution_sees`, and queries add :func:`study_condition` to their
``WHERE`` so that paging counts only what the principal may see.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, exists, false, or_, select

from cloudfilm.index.models import Institution, Patient, Study, StudyAccess, utcnow

if TYPE_CHECKING:
    from cloudfilm.api.deps import Principal
    from cloudfilm.archive import Archive


def institution_sees(engine: Engine, institution_pk: int, study_uid: str) -> bool:
    """Whether the institution owns or holds the study (False for an unknown study)."""
    stmt = select(
        exists()
        .where(StudyAccess.study_pk == Study.pk)
        .where(Study.study_uid == study_uid, StudyAccess.institution_pk == institution_pk)
    )
    with engine.connect() as conn:
        return bool(conn.execute(stmt).scalar())


def principal_sees(
    engine: Engine, institution_pk: int, username: str | None, study_uid: str
) -> bool:
    """Whether the institution owns or holds the study, or an active consent of its patient
    covers it for the institution (and ``username``, for a consent naming one doctor)."""
    from cloudfilm.patients.consent import consent_condition

    stmt = select(
        exists().where(
            Study.study_uid == study_uid,
            or_(
                Study.pk.in_(
                    select(StudyAccess.study_pk).where(StudyAccess.institution_pk == institution_pk)
                ),
                consent_condition(institution_pk, username, utcnow()),
            ),
        )
    )
    with engine.connect() as conn:
        return bool(conn.execute(stmt).scalar())


def institution_sees_patient(
    engine: Engine, institution_pk: int, patient_id: str, issuer: str = ""
) -> bool:
    """Whether the institution owns or holds at least one study of the patient."""
    stmt = select(
        exists()
        .where(StudyAccess.study_pk == Study.pk, StudyAccess.institution_pk == institution_pk)
        .where(Study.patient_pk == Patient.pk, Patient.patient_id == patient_id)
        .where(Patient.issuer == issuer)
    )
    with engine.connect() as conn:
        return bool(conn.execute(stmt).scalar())


def institution_condition(institution_pk: int | None) -> Any:
    """A condition on ``Study`` keeping the studies the institution owns or holds (an unknown
    institution, ``None``, keeps none)."""
    if institution_pk is None:
        return false()
    return Study.pk.in_(
        select(StudyAccess.study_pk).where(StudyAccess.institution_pk == institution_pk)
    )


def study_condition(principal: Principal) -> Any | None:
    """A condition on ``Study`` that keeps the studies ``principal`` may see; None for all."""
    if principal.study_uids is not None:
        return Study.study_uid.in_(sorted(principal.study_uids))
    if principal.institution_pk is not None and not principal.all_institutions:
        from cloudfilm.patients.consent import consent_condition

        username = principal.id if principal.kind == "user" else None
        return or_(
            Study.pk.in_(
                select(StudyAccess.study_pk).where(
                    StudyAccess.institution_pk == principal.institution_pk
                )
            ),
            consent_condition(principal.institution_pk, username, utcnow()),
        )
    if principal.kind in ("development",) or principal.all_institutions:
        return None
    return false()  # sees nothing


def institution_pk_of(archive: Archive, code: str) -> int | None:
    """The key of the institution with ``code`` ('' or unknown: None), cached per archive
    (institutions are added, never renamed)."""
    if not code:
        return None
    cache: dict[str, int] = archive.__dict__.setdefault("_institution_pks", {})
    if code not in cache:
        with archive.engine.connect() as conn:
            pk = conn.execute(
                select(Institution.pk).where(Institution.code == code)
            ).scalar_one_or_none()
        if pk is None:
            return None
        cache[code] = pk
    return cache[code]


def share_visible(principal: Principal, study_uids: Collection[str], created_by: str) -> bool:
    """Whether a staff principal may see, print or change a cloud film: one of all
    institutions sees every film; others a film whose studies they all see, or a film still
    waiting for its images (no study yet) that they issued themselves."""
    if principal.kind == "development" or principal.all_institutions:
        return True
    if study_uids:
        return all(principal.can_change_study(uid) for uid in study_uids)
    return created_by == principal.label
