"""Films printed to the virtual DICOM printer: which study each sheet belongs to, and the
sheets waiting for staff to attach them.

A print request (PS3.4 Annex H) carries no patient or study data: film session, film box and
image box attributes only. A printed sheet is matched to a study, in this order:

1. **accession number**: a Film Session Label (2000,0050) equal to the Accession Number of
   exactly one study (sites configure the modality to put it there) wins; of several studies
   with it, the one the calling AE sent most recently;
2. **calling AE and time**: the study whose instances the calling AE (C-STORE source
   ``dimse:<AE>``) sent most recently, within ``print_match_minutes``; when that AE sent
   none, the same with the other AEs of its institution (``related_aes``);
3. otherwise, or when the runner-up study's last instance arrived less than
   ``print_match_margin_seconds`` before the most recent study's first (two exams sent at
   about the same time, or interleaved), the match is not confident: the sheet is kept as
   an **unmatched film** (a PNG blob and a ``printed_film`` row naming the candidate
   studies) until :func:`attach` stores it in a study. Nothing printed is dropped.

A matched sheet is stored at once with :func:`cloudfilm.film.sheets.store_sheet` (source
``print:<AE>``), so a print acknowledged to the modality is durable either way.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from PIL import Image
from sqlalchemy import desc, func, select, update

from cloudfilm.archive import Archive
from cloudfilm.core.errors import Conflict, NotFound
from cloudfilm.film.compose import ComposedSheet
from cloudfilm.film.layout import (
    SheetGeometry,
    parse_display_format,
    parse_film_size,
    parse_orientation,
)
from cloudfilm.film.sheets import StoredFilm, sheet_png, store_sheet
from cloudfilm.index.models import Instance, PrintedFilm, Series, Study, utcnow

logger = logging.getLogger(__name__)

__all__ = [
    "KeptFilm",
    "PrintedSheet",
    "StudyMatch",
    "UnmatchedFilm",
    "attach",
    "keep_printed",
    "match_study",
    "printed_film",
    "unmatched_film_png",
    "unmatched_films",
]

#: Most candidate studies remembered for an unmatched film.
MAX_CANDIDATES = 5


@dataclass(frozen=True)
class PrintedSheet:
    """A composed sheet from a print request and what the request said about it."""

    sheet: ComposedSheet
    calling_ae: str
    film_session_label: str = ""
    #: Code of the calling peer's institution ('' for none) and its key.
    institution: str = ""
    institution_pk: int | None = None
    #: Other AE titles of the caller's institution (tried when the caller sent nothing).
    related_aes: tuple[str, ...] = ()
    #: Whether the sheet carries annotation text (Burned In Annotation).
    annotated: bool = False


@dataclass(frozen=True)
class StudyMatch:
    """The study a sheet goes to (None: not confident) and how that was decided."""

    study_uid: str | None
    #: ``accession``, ``calling-ae``, ``institution``; or why there is no match.
    reason: str
    candidates: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeptFilm:
    """Where a printed sheet went: a study (``stored``) or the unmatched films."""

    match: StudyMatch
    stored: StoredFilm | None = None
    unmatched_id: int | None = None


@dataclass(frozen=True)
class UnmatchedFilm:
    """A printed sheet waiting for (or given) a study."""

    id: int
    created_at: datetime
    calling_ae: str
    institution: str
    film_session_label: str
    candidates: list[str]
    reason: str
    display_format: str
    film_size: str
    orientation: str
    dpi: int
    images: int
    attached_study_uid: str | None
    attached_sop_instance_uid: str | None

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "calling_ae": self.calling_ae,
            "institution": self.institution,
            "film_session_label": self.film_session_label,
            "candidates": self.candidates,
            "reason": self.reason,
            "display_format": self.display_format,
            "film_size": self.film_size,
            "orientation": self.orientation,
            "dpi": self.dpi,
            "images": self.images,
            "attached_study_uid": self.attached_study_uid,
            "attached_sop_instance_uid": self.attached_sop_instance_uid,
        }


# ------------------------------------------------------------------------------ matching


def match_study(
    archive: Archive,
    calling_ae: str,
    *,
    label: str = "",
    related_aes: Sequence[str] = (),
    now: datetime | None = None,
) -> StudyMatch:
    """The study a sheet printed by ``calling_ae`` belongs to (see the module notes)."""
    settings = archive.settings
    now = now or datetime.now(UTC)
    since = now - timedelta(minutes=settings.print_match_minutes)
    margin = settings.print_match_margin_seconds
    label = label.strip()
    own = _recent_studies(archive, [calling_ae], since)
    if label:
        with archive.engine.connect() as conn:
            by_accession = list(
                conn.execute(select(Study.study_uid).where(Study.accession_number == label))
                .scalars()
                .all()
            )
        if len(by_accession) == 1:
            return StudyMatch(by_accession[0], "accession", tuple(by_accession))
        sent = [uid for uid, _, _ in own if uid in by_accession]
        if sent:
            return StudyMatch(sent[0], "accession", tuple(by_accession[:MAX_CANDIDATES]))
        if by_accession:
            return StudyMatch(
                None,
                f"{len(by_accession)} studies have accession number {label}",
                tuple(by_accession[:MAX_CANDIDATES]),
            )
    recent, how = own, "calling-ae"
    if not recent and related_aes:
        recent, how = _recent_studies(archive, related_aes, since), "institution"
    candidates = tuple(uid for uid, _, _ in recent)
    if not recent:
        minutes = settings.print_match_minutes
        return StudyMatch(None, f"{calling_ae} sent no study in the last {minutes} minutes")
    if len(recent) > 1 and _seconds_between(recent[0][1], recent[1][2]) <= margin:
        return StudyMatch(
            None, f"{calling_ae} sent several studies within {margin:g} s", candidates
        )
    return StudyMatch(recent[0][0], how, candidates)


def _recent_studies(
    archive: Archive, ae_titles: Sequence[str], since: datetime
) -> list[tuple[str, datetime, datetime]]:
    """Studies with instances these AEs sent since ``since``, latest arrival first: Study
    Instance UID, first and last arrival."""
    sources = [f"dimse:{ae}"[:100] for ae in dict.fromkeys(ae_titles) if ae]
    if not sources:
        return []
    last = func.max(Instance.received_at).label("last")
    stmt = (
        select(Study.study_uid, func.min(Instance.received_at), last)
        .join(Series, Series.study_pk == Study.pk)
        .join(Instance, Instance.series_pk == Series.pk)
        .where(Instance.source.in_(sources), Instance.received_at >= since)
        .group_by(Study.pk, Study.study_uid)
        .order_by(desc("last"))
        .limit(MAX_CANDIDATES)
    )
    with archive.engine.connect() as conn:
        return [(str(uid), first, at) for uid, first, at in conn.execute(stmt)]


def _seconds_between(first: datetime, second: datetime) -> float:
    if (first.tzinfo is None) != (second.tzinfo is None):
        first, second = first.replace(tzinfo=None), second.replace(tzinfo=None)
    return abs((first - second).total_seconds())


# ------------------------------------------------------------------------------- keeping


def keep_printed(archive: Archive, printed: PrintedSheet) -> KeptFilm:
    """Store a printed sheet in its study, or keep it as an unmatched film (durably, either
    way, before this returns).

    Raises
    ------
    CloudFilmError
        When neither the study nor the unmatched films could take it.
    """
    match = match_study(
        archive,
        printed.calling_ae,
        label=printed.film_session_label,
        related_aes=printed.related_aes,
    )
    if match.study_uid is not None:
        stored = store_sheet(
            archive,
            match.study_uid,
            printed.sheet,
            annotated=printed.annotated,
            source=f"print:{printed.calling_ae}",
            institution=printed.institution_pk,
        )
        return KeptFilm(match, stored=stored)
    return KeptFilm(match, unmatched_id=_keep_unmatched(archive, printed, match))


def _keep_unmatched(archive: Archive, printed: PrintedSheet, match: StudyMatch) -> int:
    """The sheet as a PNG blob (fsync'd) and then its row; the blob goes if the row fails."""
    sheet = printed.sheet
    key = f"printed/{uuid.uuid4().hex}.png"
    archive.blobs.put(key, io.BytesIO(sheet_png(sheet.image, sheet.geometry.dpi)))
    row = PrintedFilm(
        calling_ae=printed.calling_ae[:16],
        institution=printed.institution[:64],
        film_session_label=printed.film_session_label[:64],
        candidates=list(match.candidates),
        reason=match.reason[:200],
        blob_key=key,
        display_format=sheet.display_format.dicom()[:64],
        film_size=sheet.size.id,
        orientation=sheet.orientation.value,
        dpi=round(sheet.geometry.dpi),
        images=sum(p is not None for p in sheet.placements),
        annotated=printed.annotated,
    )
    try:
        with archive.sessions.begin() as session:
            session.add(row)
            session.flush()
            film_id = int(row.pk)
    except Exception:
        archive.blobs.delete(key)
        raise
    logger.info("printed film %d from %s kept unmatched: %s", film_id, row.calling_ae, row.reason)
    return film_id


# ------------------------------------------------------------------------------ for staff


def unmatched_films(
    archive: Archive,
    *,
    include_attached: bool = False,
    institution: str | None = None,
    newest_first: bool = False,
    limit: int | None = None,
    offset: int = 0,
) -> list[UnmatchedFilm]:
    """The printed films kept unmatched, oldest first (and, if asked, those attached since).

    ``institution``: only the films printed by a peer of the institution with this code
    (None: every film); ``limit`` and ``offset`` page through them.
    """
    order = desc(PrintedFilm.pk) if newest_first else PrintedFilm.pk
    stmt = select(PrintedFilm).order_by(order).offset(offset).limit(limit)
    if not include_attached:
        stmt = stmt.where(PrintedFilm.attached_study_uid.is_(None))
    if institution is not None:
        stmt = stmt.where(PrintedFilm.institution == institution)
    with archive.sessions() as session:
        return [_film(row) for row in session.execute(stmt).scalars()]


def printed_film(archive: Archive, film_id: int) -> UnmatchedFilm:
    """One printed film, waiting or attached. Raises :class:`NotFound`."""
    with archive.sessions() as session:
        row = session.get(PrintedFilm, film_id)
        if row is None:
            raise NotFound(f"no printed film {film_id}")
        return _film(row)


def _film(row: PrintedFilm) -> UnmatchedFilm:
    return UnmatchedFilm(
        id=row.pk,
        created_at=row.created_at,
        calling_ae=row.calling_ae,
        institution=row.institution,
        film_session_label=row.film_session_label,
        candidates=list(row.candidates or ()),
        reason=row.reason,
        display_format=row.display_format,
        film_size=row.film_size,
        orientation=row.orientation,
        dpi=row.dpi,
        images=row.images,
        attached_study_uid=row.attached_study_uid,
        attached_sop_instance_uid=row.attached_sop_instance_uid,
    )


def unmatched_film_png(archive: Archive, film_id: int) -> bytes:
    """The PNG of an unmatched film. Raises :class:`NotFound`."""
    with archive.sessions() as session:
        row = session.get(PrintedFilm, film_id)
        if row is None:
            raise NotFound(f"no printed film {film_id}")
        key = row.blob_key
    with archive.blobs.open(key) as fp:
        return fp.read()


def attach(archive: Archive, film_id: int, study_uid: str) -> StoredFilm:
    """Store an unmatched film in a study (its film series) and mark it attached.

    The film is claimed first, so that two staff attaching it at once store it once.

    Raises
    ------
    NotFound
        No such film, or no such study.
    Conflict
        The film is already attached to a study.
    """
    with archive.sessions() as session:
        row = session.get(PrintedFilm, film_id)
        if row is None:
            raise NotFound(f"no printed film {film_id}")
        if row.attached_study_uid:
            raise Conflict(f"printed film {film_id} is already in study {row.attached_study_uid}")
        film = _film(row)
        key, annotated, institution = row.blob_key, row.annotated, row.institution
    with archive.engine.connect() as conn:
        found = conn.execute(select(Study.pk).where(Study.study_uid == study_uid)).first()
    if found is None:
        raise NotFound(f"study {study_uid} not found")
    _claim(archive, film_id, study_uid)
    try:
        with archive.blobs.open(key) as fp:
            image = Image.open(io.BytesIO(fp.read()))
            image.load()
        size = parse_film_size(film.film_size)
        orientation = parse_orientation(film.orientation)
        geometry = SheetGeometry(image.width, image.height, float(film.dpi), None, ())
        sheet = ComposedSheet(
            image, geometry, parse_display_format(film.display_format), size, orientation
        )
        stored = store_sheet(
            archive,
            study_uid,
            sheet,
            annotated=annotated,
            source=f"print:{film.calling_ae}",
            institution=_institution_pk(archive, institution),
        )
    except Exception:
        _claim(archive, film_id, None)
        raise
    with archive.sessions.begin() as session:
        session.execute(
            update(PrintedFilm)
            .where(PrintedFilm.pk == film_id)
            .values(attached_sop_instance_uid=stored.sop_instance_uid, attached_at=utcnow())
        )
    logger.info("printed film %d attached to study %s", film_id, study_uid)
    return replace(stored, images=film.images, source="print")


def _claim(archive: Archive, film_id: int, study_uid: str | None) -> None:
    """Mark the film attached to ``study_uid`` (None: release the claim)."""
    stmt = update(PrintedFilm).where(PrintedFilm.pk == film_id)
    if study_uid is not None:
        stmt = stmt.where(PrintedFilm.attached_study_uid.is_(None))
    with archive.sessions.begin() as session:
        done = session.execute(stmt.values(attached_study_uid=study_uid))
    if study_uid is not None and not done.rowcount:  # type: ignore[attr-defined]
        raise Conflict(f"printed film {film_id} was attached meanwhile")


def _institution_pk(archive: Archive, code: str) -> int | None:
    if not code:
        return None
    from cloudfilm.access.visibility import institution_pk_of

    return institution_pk_of(archive, code)
