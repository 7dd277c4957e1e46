"""The worker of the film printing queue (``cloudfilm.film.passthrough``): one sheet at a time,
printed on its film printer with the Print SCU (``cloudfilm.dimse.print_scu``).

A printer that cannot be reached, or refuses the session, gets the sheet again after the
back-off of every durable job (``dimse_retry_*``); a printer that is not a known peer, or a
sheet that is gone, fails the job at once. Each attempt is audited (``print-on-film``).
"""

from __future__ import annotations

import io
import logging

from PIL import Image
from pynetdicom import AE

from cloudfilm.archive import Archive
from cloudfilm.core.errors import CloudFilmError
from cloudfilm.dimse import jobs
from cloudfilm.dimse.peers import PeerDirectory
from cloudfilm.dimse.print_scu import FilmToPrint, PrintFailed, print_sheet
from cloudfilm.dimse.scu import CannotAssociate
from cloudfilm.film.sheets import film_image
from cloudfilm.index.models import FilmPrint, PrintedFilm

logger = logging.getLogger(__name__)

__all__ = ["FilmPrintWorker"]


class _Gone(Exception):
    """The sheet of a job is no longer there."""


class FilmPrintWorker:
    """Works the film printing queue: one due job per step."""

    def __init__(self, archive: Archive, ae: AE, worker: str) -> None:
        self.archive = archive
        self.ae = ae
        self.worker = worker
        self.directory = PeerDirectory(archive)

    def step(self) -> bool:
        """Print one sheet; False when nothing was due."""
        held = jobs.claim(self.archive, FilmPrint, worker=self.worker, limit=1)
        if not held.pks:
            return False
        (pk,) = held.pks
        with self.archive.sessions() as session:
            job = session.get(FilmPrint, pk)
            assert job is not None
            session.expunge(job)
        self._work(job, held)
        return True

    def _work(self, job: FilmPrint, held: jobs.Claim) -> None:
        peer = self.directory.get(job.printer)
        if peer is None:
            reason = f"{job.printer} is not a known peer (cloudfilm peers add)"
            self._failed(job, held, reason, hopeless=True)
            return
        try:
            film = self._film(job)
        except (_Gone, CloudFilmError) as exc:
            self._failed(job, held, f"sheet not found: {exc}", hopeless=True)
            return
        try:
            said = print_sheet(self.ae, peer, film, settings=self.archive.settings)
        except (CannotAssociate, PrintFailed) as exc:
            self._failed(job, held, str(exc))
            return
        jobs.succeed(self.archive, held, [job.pk])
        self._audit(job, "success", f"{job.printer}: {said}")
        logger.info("film print %d: sheet printed on %s", job.pk, job.printer)

    def _film(self, job: FilmPrint) -> FilmToPrint:
        if job.printed_film_pk is not None:
            with self.archive.sessions() as session:
                row = session.get(PrintedFilm, job.printed_film_pk)
                if row is None:
                    raise _Gone(f"printed film {job.printed_film_pk}")
                key, label = row.blob_key, row.film_session_label
            with self.archive.blobs.open(key) as fp:
                image = Image.open(io.BytesIO(fp.read()))
                image.load()
            return FilmToPrint(image, job.film_size, job.copies, label)
        if not job.study_uid or not job.sop_instance_uid:
            raise _Gone("the job names no sheet")
        found = film_image(self.archive, job.study_uid, job.sop_instance_uid)
        return FilmToPrint(found.image, job.film_size or found.film_size or "", job.copies)

    def _failed(
        self, job: FilmPrint, held: jobs.Claim, reason: str, *, hopeless: bool = False
    ) -> None:
        jobs.fail(self.archive, held, {job.pk: reason}, hopeless=hopeless)
        self._audit(job, "failure", f"{job.printer}: {reason}")

    def _audit(self, job: FilmPrint, outcome: str, detail: str) -> None:
        from cloudfilm.audit import AuditRecord, trail_for

        trail_for(self.archive).record(
            AuditRecord(
                action="print-on-film",
                outcome=outcome,
                actor_kind="system",
                actor_id=job.requested_by,
                institution=job.institution,
                agent="film printing queue",
                study_uid=job.study_uid or "",
                detail=f"job {job.pk}, {job.film_size}: {detail}"[:1000],
            )
        )
