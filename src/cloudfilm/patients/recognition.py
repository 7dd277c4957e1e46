"""Recognition records (互认): for an earlier exam of another institution, a doctor records
whether it was accepted — and a repeat exam avoided — or not, with a reason; and the
per-institution figures staff and the platform administrator see.

Figures, per institution, over a period (by the time of each record or consent):

* ``exams_shared`` — distinct exams of other institutions that active-or-past consents opened
  to it (consents confirmed in the period; an "all exams" consent counts the patient's exams
  of other institutions at the time of asking);
* ``exams_reviewed``, ``exams_accepted``, ``exams_not_accepted`` — distinct exams with a
  record (the latest record of an exam decides);
* ``repeat_exams_avoided`` — the exams accepted (each one is an exam not done again);
* ``printed_films_saved`` — the film sheets of the accepted exams (film that a repeat exam
  would have printed again), at least one per accepted exam;
* ``shared_by_others`` and ``accepted_by_others`` for the institution's own exams seen
  elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, select

from cloudfilm.archive import Archive
from cloudfilm.core.errors import InvalidQuery
from cloudfilm.index.models import (
    Consent,
    ConsentStudy,
    Instance,
    Institution,
    PatientLink,
    Recognition,
    Series,
    Study,
    StudyAccess,
    utcnow,
)

__all__ = ["RecognitionInfo", "figures", "record", "records_for_study"]


@dataclass(frozen=True)
class RecognitionInfo:
    study_uid: str
    institution: str
    username: str
    accepted: bool
    reason: str
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "study_uid": self.study_uid,
            "institution": self.institution,
            "username": self.username,
            "accepted": self.accepted,
            "reason": self.reason,
            "created_at": self.created_at.isoformat(),
        }


def _owner(conn: Any, study_uid: str) -> int | None:
    found = conn.execute(
        select(StudyAccess.institution_pk)
        .join(Study, Study.pk == StudyAccess.study_pk)
        .where(Study.study_uid == study_uid, StudyAccess.relation == "owner")
    ).scalar()
    return int(found) if found is not None else None


def record(
    archive: Archive,
    study_uid: str,
    *,
    institution_pk: int,
    username: str,
    accepted: bool,
    reason: str,
) -> RecognitionInfo:
    """Record a decision on another institution's exam.

    Raises
    ------
    InvalidQuery
        The exam is the institution's own (nothing to recognise), a refusal without a
        reason, or a reason over 400 characters or with control characters.
    """
    reason = reason.strip()
    if len(reason) > 400 or any(ord(ch) < 32 and ch not in "\n\t" for ch in reason):
        raise InvalidQuery("reason: at most 400 characters, no control characters")
    if not accepted and not reason:
        raise InvalidQuery("say why the exam is not accepted")
    with archive.engine.begin() as conn:
        owner = _owner(conn, study_uid)
        own = conn.execute(
            select(StudyAccess.study_pk)
            .join(Study, Study.pk == StudyAccess.study_pk)
            .where(Study.study_uid == study_uid, StudyAccess.institution_pk == institution_pk)
        ).first()
        if own is not None:
            raise InvalidQuery("this exam is your institution's own: there is nothing to recognise")
        now = utcnow()
        conn.execute(
            insert(Recognition).values(
                study_uid=study_uid, institution_pk=institution_pk, origin_institution_pk=owner,
                username=username[:200], accepted=accepted, reason=reason, created_at=now,
            )
        )  # fmt: skip
        code = conn.execute(
            select(Institution.code).where(Institution.pk == institution_pk)
        ).scalar_one()
    return RecognitionInfo(study_uid, code, username, accepted, reason, now)


def records_for_study(
    archive: Archive, study_uid: str, institution_pk: int | None = None
) -> list[RecognitionInfo]:
    """The decisions recorded on an exam (by one institution when given), newest first."""
    query = (
        select(Recognition, Institution.code)
        .join(Institution, Institution.pk == Recognition.institution_pk)
        .where(Recognition.study_uid == study_uid)
        .order_by(Recognition.created_at.desc(), Recognition.pk.desc())
    )
    if institution_pk is not None:
        query = query.where(Recognition.institution_pk == institution_pk)
    with archive.sessions() as session:
        return [
            RecognitionInfo(r.study_uid, code, r.username, r.accepted, r.reason, r.created_at)
            for r, code in session.execute(query).all()
        ]


def figures(
    archive: Archive,
    *,
    institution_pks: list[int] | None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """The recognition figures of each institution (all when ``institution_pks`` is None)."""
    with archive.engine.connect() as conn:
        query = select(Institution.pk, Institution.code, Institution.name).order_by(
            Institution.code
        )
        if institution_pks is not None:
            query = query.where(Institution.pk.in_(institution_pks))
        rows = conn.execute(query).all()
        return [_figures_of(conn, pk, code, name, since, until) for pk, code, name in rows]


def _between(column: Any, since: datetime | None, until: datetime | None) -> list[Any]:
    conditions = []
    if since is not None:
        conditions.append(column >= since)
    if until is not None:
        conditions.append(column < until)
    return conditions


def _latest_decisions(
    conn: Any, where: list[Any], since: datetime | None, until: datetime | None
) -> dict[str, bool]:
    rows = conn.execute(
        select(Recognition.study_uid, Recognition.accepted)
        .where(*where, *_between(Recognition.created_at, since, until))
        .order_by(Recognition.created_at, Recognition.pk)
    ).all()
    return {uid: accepted for uid, accepted in rows}


def _shared(
    conn: Any, grantee: int | None, owner: int | None, since: datetime | None,
    until: datetime | None,
) -> set[str]:  # fmt: skip
    """Exams of other institutions opened by consents to ``grantee`` (or exams of ``owner``
    opened to others), confirmed in the period."""
    base = [Consent.confirmed_at.is_not(None), *_between(Consent.confirmed_at, since, until)]
    if grantee is not None:
        base.append(Consent.grantee_institution_pk == grantee)
    named = (
        select(ConsentStudy.study_uid, Consent.grantee_institution_pk)
        .join(Consent, Consent.pk == ConsentStudy.consent_pk)
        .where(*base, Consent.all_exams.is_(False))
    )
    everything = (
        select(Study.study_uid, Consent.grantee_institution_pk)
        .join(PatientLink, PatientLink.patient_pk == Study.patient_pk)
        .join(Consent, Consent.platform_patient_pk == PatientLink.platform_patient_pk)
        .where(*base, Consent.all_exams.is_(True))
    )
    found: set[str] = set()
    for query in (named, everything):
        for uid, to in conn.execute(query).all():
            holders = set(
                conn.execute(
                    select(StudyAccess.institution_pk)
                    .join(Study, Study.pk == StudyAccess.study_pk)
                    .where(Study.study_uid == uid)
                ).scalars()
            )
            if to in holders:
                continue  # its own exam: not shared with it
            if owner is None or _owner(conn, uid) == owner:
                found.add(uid)
    return found


def _film_sheets(conn: Any, study_uids: list[str]) -> int:
    if not study_uids:
        return 0
    per_study = dict(
        conn.execute(
            select(Study.study_uid, func.count(Instance.pk))
            .join(Series, Series.study_pk == Study.pk)
            .join(Instance, Instance.series_pk == Series.pk)
            .where(Study.study_uid.in_(study_uids), and_(Series.description == "Film"))
            .group_by(Study.study_uid)
        ).all()
    )
    return sum(max(1, int(per_study.get(uid, 0))) for uid in study_uids)


def _figures_of(
    conn: Any, pk: int, code: str, name: str | None, since: datetime | None,
    until: datetime | None,
) -> dict[str, Any]:  # fmt: skip
    decided = _latest_decisions(conn, [Recognition.institution_pk == pk], since, until)
    accepted = sorted(uid for uid, yes in decided.items() if yes)
    by_others = _latest_decisions(conn, [Recognition.origin_institution_pk == pk], since, until)
    return {
        "institution": code,
        "institution_name": name or code,
        "exams_shared": len(_shared(conn, pk, None, since, until)),
        "exams_reviewed": len(decided),
        "exams_accepted": len(accepted),
        "exams_not_accepted": len(decided) - len(accepted),
        "repeat_exams_avoided": len(accepted),
        "printed_films_saved": _film_sheets(conn, accepted),
        "shared_by_others": len(_shared(conn, None, pk, since, until)),
        "accepted_by_others": sum(1 for yes in by_others.values() if yes),
    }
