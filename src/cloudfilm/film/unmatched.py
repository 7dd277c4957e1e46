"""Unmatched printed films for staff: who sees which, the studies a film may belong to, and
attaching it to one (the staff page ``/staff/films/unmatched`` and ``/api/films/unmatched``).

**Who sees a film.** An unmatched film belongs to the institution of the peer that printed it
(``printed_film.institution``, the code of the calling peer's institution). A user or API key
sees the films of its own institution; the platform admin (and the development principal)
every film. A film printed by a peer without an institution is seen by the platform admin
only. A film another institution printed is answered like one that does not exist (404).

**Who attaches.** Every role that works on the staff pages (``shares``: platform admin,
admin, technologist, radiologist; API keys, which are technologists) may attach a film of
its institution: attaching files a sheet the institution's own modality already printed,
it adds no new image content, so it follows the staff pages rather than ``store`` (which a
radiologist lacks). A referring doctor gets 403, a share link never gets here.

**Suggestions** (:func:`suggest_studies`): the candidates the matcher remembered, then the
studies whose instances the calling AE — or another AE of its institution — sent within
``print_match_minutes`` before or after the print. Only studies the caller may see are
suggested. They are ranked: the matcher's candidates in its order, then those the calling
AE sent, then those of a modality the calling AE sends (a CT console prints CT studies),
then by how close to the print their last instance arrived.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select

from cloudfilm.access.visibility import study_condition
from cloudfilm.api.deps import Principal
from cloudfilm.archive import Archive
from cloudfilm.audit import AuditRecord, trail_for
from cloudfilm.core.errors import Conflict, Forbidden, MalformedRequest, NotFound
from cloudfilm.film.printed import UnmatchedFilm, attach, printed_film, unmatched_films
from cloudfilm.film.sheets import StoredFilm
from cloudfilm.index.models import Instance, Patient, Series, Study

__all__ = [
    "AttachTarget",
    "Suggestion",
    "attach_target",
    "attach_visible",
    "institution_aes",
    "may_attach",
    "suggest_studies",
    "visible_film",
    "visible_films",
    "visible_study",
]

#: Most studies suggested for one film.
MAX_SUGGESTIONS = 8
#: Most studies looked at around the print (before ranking).
_NEAR_LIMIT = 40
#: Most recent instances of the calling AE whose modality says what it usually sends.
_MODALITY_SAMPLE = 200
#: A DICOM UID (PS3.5 9.1): digits in components separated by dots, at most 64 characters
#: (leading zeros, which PS3.5 forbids, are let through: such UIDs are stored as received).
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DIGITS_AND_DOTS = re.compile(r"^[0-9.]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


# ---------------------------------------------------------------------------------- access


def may_attach(principal: Principal) -> bool:
    """Whether the principal may list and attach unmatched films (see the module notes)."""
    return principal.can_manage_shares()


def _sees_all(principal: Principal) -> bool:
    return principal.kind == "development" or principal.all_institutions


def film_visible(principal: Principal, film: UnmatchedFilm) -> bool:
    """Whether the principal may see this film: its institution's, or all for the platform."""
    if _sees_all(principal):
        return True
    if principal.kind not in ("user", "apikey") or not principal.institution:
        return False
    return film.institution == principal.institution[:64]


def _require(principal: Principal) -> None:
    if not may_attach(principal):
        raise Forbidden("only hospital staff may see and attach unmatched films")


def visible_films(
    archive: Archive,
    principal: Principal,
    *,
    include_attached: bool = False,
    limit: int | None = None,
    offset: int = 0,
) -> list[UnmatchedFilm]:
    """The unmatched films the principal may see, newest first."""
    _require(principal)
    if not _sees_all(principal) and not principal.institution:
        return []
    return unmatched_films(
        archive,
        include_attached=include_attached,
        institution=None if _sees_all(principal) else principal.institution[:64],
        newest_first=True,
        limit=limit,
        offset=offset,
    )


def visible_film(archive: Archive, principal: Principal, film_id: int) -> UnmatchedFilm:
    """One film the principal may see; another institution's is :class:`NotFound` like a
    missing one (the same message)."""
    _require(principal)
    try:
        film = printed_film(archive, film_id)
    except NotFound:
        film = None
    if film is None or not film_visible(principal, film):
        raise NotFound(f"no printed film {film_id}")
    return film


# ----------------------------------------------------------------------------- suggestions


@dataclass(frozen=True)
class Suggestion:
    """A study a film may belong to, with what staff need to recognise it."""

    study_uid: str
    patient_name: str | None
    patient_id: str
    modalities: tuple[str, ...]
    study_date: str | None
    accession_number: str | None
    description: str | None
    #: When its first and last instances arrived (any source).
    first_received: datetime | None
    last_received: datetime | None
    #: AE titles that sent it over DIMSE within the window around the print.
    sent_by: tuple[str, ...] = ()
    #: ``candidate`` (remembered by the matcher), ``calling-ae`` or ``institution``.
    why: str = "candidate"
    #: Whether one of its modalities is one the calling AE sends.
    same_modality: bool = False
    #: Seconds from the print to its last instance (negative: it arrived before).
    seconds_from_print: float | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "study_uid": self.study_uid,
            "patient_name": self.patient_name,
            "patient_id": self.patient_id,
            "modalities": list(self.modalities),
            "study_date": self.study_date,
            "accession_number": self.accession_number,
            "description": self.description,
            "first_received": _iso(self.first_received),
            "last_received": _iso(self.last_received),
            "sent_by": list(self.sent_by),
            "why": self.why,
            "same_modality": self.same_modality,
            "seconds_from_print": self.seconds_from_print,
        }


def _iso(value: datetime | None) -> str | None:
    return _aware(value).isoformat() if value is not None else None


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything is stored in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def institution_aes(archive: Archive) -> dict[str, list[str]]:
    """The AE titles of the known peers, by institution code (peers without one left out)."""
    from cloudfilm.dimse.peers import PeerDirectory  # the DIMSE stack only when needed

    found: dict[str, list[str]] = {}
    for peer in PeerDirectory(archive).all():
        if peer.institution:
            found.setdefault(peer.institution[:64], []).append(peer.ae_title)
    return found


def _related_aes(
    archive: Archive, film: UnmatchedFilm, by_institution: Mapping[str, Sequence[str]] | None
) -> list[str]:
    """The calling AE, then the other known AEs of its institution."""
    if not film.institution:
        return [film.calling_ae]
    if by_institution is None:
        by_institution = institution_aes(archive)
    others = by_institution.get(film.institution, ())
    return [film.calling_ae, *(ae for ae in others if ae != film.calling_ae)]


def suggest_studies(
    archive: Archive,
    principal: Principal,
    film: UnmatchedFilm,
    *,
    limit: int = MAX_SUGGESTIONS,
    aes: Mapping[str, Sequence[str]] | None = None,
) -> list[Suggestion]:
    """The studies ``film`` may belong to, most likely first (see the module notes).

    ``aes``: :func:`institution_aes`, when the caller suggests for several films at once.
    """
    condition = study_condition(principal)
    window = timedelta(minutes=archive.settings.print_match_minutes)
    printed_at = _aware(film.created_at)
    sources = {f"dimse:{ae}"[:100]: ae for ae in _related_aes(archive, film, aes)}
    near_stmt = (
        select(Study.study_uid, Instance.source)
        .join(Series, Series.study_pk == Study.pk)
        .join(Instance, Instance.series_pk == Series.pk)
        .where(Instance.source.in_(sorted(sources)))
        .where(Instance.received_at >= printed_at - window)
        .where(Instance.received_at <= printed_at + window)
        .group_by(Study.study_uid, Instance.source)
        .order_by(func.max(Instance.received_at).desc())
        .limit(_NEAR_LIMIT)
    )
    if condition is not None:
        near_stmt = near_stmt.where(condition)
    sent_by: dict[str, list[str]] = {}
    with archive.engine.connect() as conn:
        for uid, source in conn.execute(near_stmt):
            sent_by.setdefault(uid, []).append(sources[source or ""])
        own_modalities = _modalities_sent(conn, f"dimse:{film.calling_ae}"[:100])
    remembered = [uid for uid in film.candidates if principal.can_view_study(uid)]
    uids = list(dict.fromkeys([*remembered, *sent_by]))
    found = {s.study_uid: s for s in _studies(archive, uids, condition)}
    suggestions = []
    for uid in uids:
        study = found.get(uid)
        if study is None:  # a candidate deleted since, or not visible
            continue
        senders = tuple(sent_by.get(uid, ()))
        why = (
            "candidate"
            if uid in remembered
            else "calling-ae"
            if film.calling_ae in senders
            else "institution"
        )
        seconds = (
            round((study.last_received - printed_at).total_seconds(), 1)
            if study.last_received is not None
            else None
        )
        suggestions.append(
            replace(
                study,
                sent_by=senders,
                why=why,
                same_modality=bool(own_modalities & set(study.modalities)),
                seconds_from_print=seconds,
            )
        )

    def rank(s: Suggestion) -> tuple[int, int, int, float]:
        order = remembered.index(s.study_uid) if s.study_uid in remembered else len(remembered)
        distance = abs(s.seconds_from_print) if s.seconds_from_print is not None else 1e12
        return (order, s.why != "calling-ae", not s.same_modality, distance)

    return sorted(suggestions, key=rank)[:limit]


def visible_study(archive: Archive, principal: Principal, study_uid: str) -> Suggestion | None:
    """A study the principal may see, as a suggestion would show it (None otherwise)."""
    found = _studies(archive, [study_uid], study_condition(principal))
    return found[0] if found else None


def _modalities_sent(conn: Connection, source: str) -> set[str]:
    """The modalities of the latest instances one source sent."""
    latest = (
        select(Instance.series_pk)
        .where(Instance.source == source)
        .order_by(Instance.received_at.desc())
        .limit(_MODALITY_SAMPLE)
        .subquery()
    )
    stmt = select(Series.modality).where(Series.pk.in_(select(latest.c.series_pk))).distinct()
    return {m for m in conn.execute(stmt).scalars() if m}


def _studies(archive: Archive, uids: Sequence[str], condition: Any) -> list[Suggestion]:
    """The studies of ``uids`` the condition keeps, with their patients and arrival times."""
    if not uids:
        return []
    arrivals = (
        select(
            Series.study_pk.label("study_pk"),
            func.min(Instance.received_at).label("first"),
            func.max(Instance.received_at).label("last"),
        )
        .join(Instance, Instance.series_pk == Series.pk)
        .group_by(Series.study_pk)
        .subquery()
    )
    stmt = (
        select(Study, Patient, arrivals.c.first, arrivals.c.last)
        .join(Patient, Patient.pk == Study.patient_pk)
        .outerjoin(arrivals, arrivals.c.study_pk == Study.pk)
        .where(Study.study_uid.in_(sorted(set(uids))))
    )
    if condition is not None:
        stmt = stmt.where(condition)
    with archive.sessions() as session:
        return [
            Suggestion(
                study_uid=study.study_uid,
                patient_name=patient.patient_name,
                patient_id=patient.patient_id,
                modalities=tuple(m for m in study.modalities.split("\\") if m),
                study_date=study.study_date,
                accession_number=study.accession_number,
                description=study.description,
                first_received=_aware(first) if first is not None else None,
                last_received=_aware(last) if last is not None else None,
            )
            for study, patient, first, last in session.execute(stmt)
        ]


# -------------------------------------------------------------------------------- attaching


@dataclass(frozen=True)
class AttachTarget:
    """The study staff chose: a Study Instance UID, or an accession number to look up."""

    study_uid: str | None = None
    accession_number: str | None = None
    #: What was typed, to show in the form again.
    typed: str = field(default="", compare=False)


def attach_target(chosen: str | None, typed: str | None) -> AttachTarget:
    """What the attach form (or the API body) names: ``typed`` (a Study Instance UID or an
    accession number, as staff typed it) wins over ``chosen`` (a suggested study's UID).

    A value of digits and dots is meant as a UID and must be a valid one (400 otherwise);
    anything else is an accession number (at most 64 characters, no control characters).
    """
    typed = (typed or "").strip()
    chosen = (chosen or "").strip()
    if typed:
        if _CONTROL.search(typed) or len(typed) > 64:
            raise MalformedRequest(
                "a Study Instance UID or an accession number has at most 64 characters "
                "and no control characters"
            )
        if _DIGITS_AND_DOTS.match(typed):
            return AttachTarget(study_uid=_check_uid(typed), typed=typed)
        return AttachTarget(accession_number=typed, typed=typed)
    if chosen:
        return AttachTarget(study_uid=_check_uid(chosen))
    raise MalformedRequest("choose a suggested study, or type a Study Instance UID or accession")


def _check_uid(value: str) -> str:
    if len(value) > 64 or not _UID.match(value):
        raise MalformedRequest(f"{value[:80]!r} is not a valid Study Instance UID")
    return value


def _resolve(archive: Archive, principal: Principal, target: AttachTarget) -> Suggestion:
    """The study the target names, among those the principal may see."""
    condition = study_condition(principal)
    if target.study_uid is not None:
        found = _studies(archive, [target.study_uid], condition)
        if not found:  # not in the archive, or not visible: the same answer
            raise NotFound(f"study {target.study_uid} not found")
        return found[0]
    accession = target.accession_number or ""
    stmt = select(Study.study_uid).where(Study.accession_number == accession)
    if condition is not None:
        stmt = stmt.where(condition)
    with archive.engine.connect() as conn:
        uids = list(conn.execute(stmt.limit(11)).scalars())
    if not uids:
        raise NotFound(f"no study with accession number {accession}")
    if len(uids) > 1:
        raise Conflict(
            f"{len(uids) if len(uids) <= 10 else 'more than 10'} studies have accession number "
            f"{accession}; choose one of them, or type its Study Instance UID"
        )
    return _studies(archive, uids, condition)[0]


def attach_visible(
    archive: Archive,
    principal: Principal,
    film_id: int,
    target: AttachTarget,
    *,
    address: str = "",
    agent: str = "",
) -> tuple[StoredFilm, Suggestion]:
    """Attach a film the principal sees to a study it sees; audited (``store-film``).

    Raises
    ------
    NotFound
        No such film (or another institution's), no such study (or one not visible).
    Conflict
        The film is already in a study; an accession number names several studies.
    Forbidden
        A role that may not attach films.
    """
    film = visible_film(archive, principal, film_id)
    if film.attached_study_uid is not None:
        where = (
            f" ({film.attached_study_uid})"
            if principal.can_view_study(film.attached_study_uid)
            else ""
        )
        raise Conflict(f"printed film {film_id} is already attached to a study{where}")
    study = _resolve(archive, principal, target)
    stored = attach(archive, film_id, study.study_uid)
    trail_for(archive).record(
        AuditRecord(
            action="store-film",
            actor_kind=principal.kind,
            actor_id=principal.id,
            institution=principal.institution,
            address=address,
            agent=agent,
            patient_id=study.patient_id,
            study_uid=study.study_uid,
            detail=(
                f"printed film {film_id} from {film.calling_ae} attached as "
                f"{stored.sop_instance_uid}"
            ),
        )
    )
    return stored, study
