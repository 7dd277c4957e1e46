"""Automatic cloud films: a share for every study that becomes stable (docs/sharing.md).

With ``auto_share_enabled``, each ``cloudfilm serve`` process runs an :class:`AutoSharer` in
a background thread (a ``cloudfilm.dimse.jobs.JobLoop``, the loop of the DIMSE queue). Every
``auto_share_poll_seconds`` it:

1. **finds** studies that are stable — no instance arrived for ``auto_share_stable_seconds``
   (``Study.updated_at``), changed within ``auto_share_max_age_hours``, matching
   ``auto_share_modalities`` and ``auto_share_source_aes`` — and that have no ``AutoShare`` row
   yet, and inserts one row per study (``INSERT … ON CONFLICT DO NOTHING`` on the unique
   ``study_uid``: when two processes find the same study, one row results);
2. **claims** due rows with ``jobs.claim`` (one statement; ``FOR UPDATE SKIP LOCKED`` on
   PostgreSQL), so one worker at a time works a row, and a row whose worker died is taken
   again when its lease lapses (the rows survive restarts);
3. **shares** each claimed study in one transaction that first marks the row done under the
   claim's token (``UPDATE … WHERE claimed_by = token``: a worker whose lease lapsed and was
   taken over changes nothing) and then issues the share. The share and the done mark commit
   together or not at all, so a study never gets two automatic shares.

A study that already has a share issued by staff keeps it: a share issued by accession number
before the images arrived (``pending``) is resolved to the study (``outcome = "resolved"``),
and an active share staff issued for the study is recorded (``existing``); only otherwise is a
new one issued (``issued``). A study that cannot be shared as configured (a birth-date check
for a patient without a birth date, an accession number of several patients) is marked
``failed`` with the reason; database errors are retried with the queue's back-off
(``dimse_retry_*``).

Nothing secret is logged: the token and the code of a new share are never written anywhere but
the index (hashed and sealed); staff print the card from the staff page or ``/api/shares``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.core.errors import CloudFilmError
from cloudfilm.dimse import jobs
from cloudfilm.index.models import AutoShare, Instance, Series, Share, ShareStudy, Study
from cloudfilm.index.queries import like_pattern
from cloudfilm.sharing.links import ShareLinks, ShareRequest, utcnow

logger = logging.getLogger(__name__)

#: Most studies taken up, and most rows claimed, in one step.
BATCH = 50
#: ``created_by`` of automatic shares.
CREATED_BY = "auto"


@dataclass(frozen=True)
class AutoResult:
    """What one claimed study got."""

    study_uid: str
    share_id: str
    #: ``issued``, ``resolved`` or ``existing`` (see the module docstring).
    outcome: str


class AutoSharer:
    """Finds stable studies and gives each one cloud film (see the module docstring)."""

    def __init__(self, archive: Archive, worker: str | None = None) -> None:
        self.archive = archive
        self.settings = archive.settings
        self.links = ShareLinks(archive)
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"

    def step(self, now: datetime | None = None) -> bool:
        """Take up the studies stable at ``now`` and share the due ones; False when idle."""
        self.discover(now)
        held = jobs.claim(self.archive, AutoShare, worker=self.worker, limit=BATCH)
        for pk in held.pks:
            self.work(held, pk)
        return bool(held.pks)

    # ------------------------------------------------------------------------ finding

    def discover(self, now: datetime | None = None) -> int:
        """Insert a row for each stable study that has none; returns how many were found."""
        now = now or utcnow()
        settings = self.settings
        stable_before = now - timedelta(seconds=settings.auto_share_stable_seconds)
        oldest = now - timedelta(hours=settings.auto_share_max_age_hours)
        taken = exists().where(AutoShare.study_uid == Study.study_uid)
        stmt = (
            select(Study.study_uid)
            .where(Study.updated_at <= stable_before, Study.updated_at >= oldest)
            .where(Study.num_instances > 0, ~taken, *self._filters())
            .order_by(Study.updated_at, Study.pk)
            .limit(BATCH)
        )
        with self.archive.sessions.begin() as session:
            uids = list(session.scalars(stmt))
            if uids:
                session.execute(self._insert_new(), [{"study_uid": uid} for uid in uids])
        if uids:
            logger.info("automatic cloud films: %d stable stud(ies) taken up", len(uids))
        return len(uids)

    def _filters(self) -> list[Any]:
        settings = self.settings
        conditions: list[Any] = []
        if settings.auto_share_modalities:
            padded = "\\" + Study.modalities + "\\"
            conditions.append(
                or_(
                    *(
                        padded.like(f"%\\\\{like_pattern(m, substring=False)}\\\\%", escape="\\")
                        for m in settings.auto_share_modalities
                    )
                )
            )
        if settings.auto_share_source_aes:
            sources = [f"dimse:{ae}" for ae in settings.auto_share_source_aes]
            conditions.append(
                exists()
                .where(Series.study_pk == Study.pk, Instance.series_pk == Series.pk)
                .where(Instance.source.in_(sources))
            )
        return conditions

    def _insert_new(self) -> Any:
        """``INSERT INTO auto_share … ON CONFLICT (study_uid) DO NOTHING`` for this database."""
        dialect = postgresql if self.archive.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(AutoShare).on_conflict_do_nothing(index_elements=["study_uid"])

    # ------------------------------------------------------------------------ sharing

    def work(self, held: jobs.Claim, pk: int) -> AutoResult | None:
        """Share the study of claimed row ``pk``; None when it failed or the claim was lost."""
        with self.archive.sessions() as session:
            study_uid = session.scalar(select(AutoShare.study_uid).where(AutoShare.pk == pk))
        if study_uid is None:
            return None
        try:
            return self._share(held, pk, study_uid)
        except CloudFilmError as exc:  # cannot be shared as configured: retrying will not help
            logger.warning("automatic cloud film for study %s refused: %s", study_uid, exc.message)
            jobs.fail(self.archive, held, {pk: exc.message}, hopeless=True)
        except SQLAlchemyError as exc:
            jobs.fail(self.archive, held, {pk: _describe(exc)})
        return None

    def _share(self, held: jobs.Claim, pk: int, study_uid: str) -> AutoResult | None:
        pending = self._pending_shares(study_uid)
        for share_id in pending:
            self.links.get(share_id)  # attaches the arrived study (as opening the link would)
        now = utcnow()
        with self.archive.sessions.begin() as session:
            mine = session.execute(
                update(AutoShare)
                .where(AutoShare.pk == pk, AutoShare.claimed_by == held.token)
                .where(AutoShare.state == "running")
                .values(
                    state="done",
                    claimed_by=None,
                    locked_until=None,
                    last_error="",
                    updated_at=now,
                    finished_at=now,
                )
            )
            if mine.rowcount != 1:  # type: ignore[attr-defined]
                logger.info(
                    "automatic cloud film for study %s: taken over by another worker", study_uid
                )
                return None
            existing = _active_root_share(session, study_uid, now)
            if existing is not None:
                share_id, outcome = existing, "resolved" if existing in pending else "existing"
            else:
                share_id = self.links.issue_in(session, self._request(study_uid, now), now).info.id
                outcome = "issued"
            session.execute(
                update(AutoShare)
                .where(AutoShare.pk == pk)
                .values(share_id=share_id, outcome=outcome)
            )
        logger.info("automatic cloud film %s for study %s (%s)", share_id, study_uid, outcome)
        return AutoResult(study_uid, share_id, outcome)

    def _pending_shares(self, study_uid: str) -> list[str]:
        """Shares issued by staff for the study's accession number before the images came."""
        with self.archive.sessions() as session:
            accession = session.scalar(
                select(Study.accession_number).where(Study.study_uid == study_uid)
            )
            if not accession:
                return []
            return list(
                session.scalars(
                    select(Share.id)
                    .where(Share.accession_number == accession, Share.pending.is_(True))
                    .where(Share.parent_id.is_(None), Share.revoked_at.is_(None))
                    .order_by(Share.created_at, Share.id)
                )
            )

    def _request(self, study_uid: str, now: datetime) -> ShareRequest:
        days = self.settings.auto_share_days
        return ShareRequest(
            study_uids=[study_uid],
            expires_at=now + timedelta(days=days) if days else None,
            secret=self.settings.auto_share_protection,
            permissions=self.settings.auto_share_permissions,
            created_by=CREATED_BY,
        )


def _active_root_share(session: Session, study_uid: str, now: datetime) -> str | None:
    """The oldest active share issued by staff (not a reshare) that reaches the study."""
    return session.scalar(
        select(Share.id)
        .join(ShareStudy, ShareStudy.share_id == Share.id)
        .where(ShareStudy.study_uid == study_uid, Share.parent_id.is_(None))
        .where(Share.revoked_at.is_(None), Share.expires_at > now)
        .order_by(Share.created_at, Share.id)
        .limit(1)
    )


def _describe(exc: SQLAlchemyError) -> str:
    """A short reason for the job's ``last_error``: the driver's message, without the SQL
    statement and its parameters."""
    original = getattr(exc, "orig", None) or exc
    first = str(original).strip().splitlines()
    return f"{type(original).__name__}: {first[0] if first else ''}"[:400]


@contextlib.contextmanager
def auto_share_beside(settings: Settings) -> Iterator[AutoSharer | None]:
    """While the body runs (``cloudfilm serve``): the automatic cloud films in a background
    thread when ``auto_share_enabled``; nothing otherwise."""
    if not settings.auto_share_enabled:
        yield None
        return
    archive = Archive.open(settings)
    sharer = AutoSharer(archive)
    loop = jobs.JobLoop("auto-share", sharer.step, settings.auto_share_poll_seconds)
    loop.start()
    logger.info(
        "automatic cloud films: studies stable for %d s, checked every %g s",
        settings.auto_share_stable_seconds,
        settings.auto_share_poll_seconds,
    )
    try:
        yield sharer
    finally:
        loop.stop()
        archive.close()
