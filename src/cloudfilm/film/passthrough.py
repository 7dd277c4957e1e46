"""Printing on real film: the queue of sheets for a film printer (``film_print`` rows).

Cloud film replaces the printer, but some patients still want film, and some sites want every
sheet of an old modality on film for a while. A sheet is queued for a film printer (a known
DIMSE peer; the Print SCU is ``cloudfilm.dimse.print_scu``, the worker
``cloudfilm.dimse.print_queue``):

* by a **pass-through rule** (``print_pass_through``): a sheet printed to the virtual printer
  by a matching caller (``from_ae``, ``institution``) — matched or still unmatched;
* by **staff** ("print on film", REST ``POST /api/studies/{study}/films/print``): the study's
  film sheets, or some of them, on ``film_printer`` or a printer they name.

Jobs are durable (``DurableJob``: retried with back-off, visible in ``cloudfilm films
prints``), so a printer that is off prints later what it missed; every printed sheet counts
in the figures of film saved as a sheet printed anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from cloudfilm.archive import Archive
from cloudfilm.core.config import FilmPassThroughConfig, Settings
from cloudfilm.core.errors import InvalidQuery, NotFound
from cloudfilm.film.sheets import film_image, film_sheets
from cloudfilm.index.models import FilmPrint

logger = logging.getLogger(__name__)

__all__ = [
    "FilmPrintInfo",
    "film_prints",
    "pass_through_rules",
    "queue_sheet",
    "queue_study_films",
]

#: Most sheets one staff request may queue.
MAX_SHEETS_PER_REQUEST = 100


@dataclass(frozen=True)
class FilmPrintInfo:
    """A job of the film printing queue, as listed to staff and by the CLI."""

    id: int
    printer: str
    state: str
    study_uid: str | None
    sop_instance_uid: str | None
    printed_film_id: int | None
    institution: str
    film_size: str
    copies: int
    requested_by: str
    attempts: int
    last_error: str
    created_at: datetime
    finished_at: datetime | None

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "printer": self.printer,
            "state": self.state,
            "study_uid": self.study_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "printed_film_id": self.printed_film_id,
            "institution": self.institution,
            "film_size": self.film_size,
            "copies": self.copies,
            "requested_by": self.requested_by,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


def pass_through_rules(
    settings: Settings, calling_ae: str, institution: str
) -> list[FilmPassThroughConfig]:
    """The pass-through rules a sheet printed by ``calling_ae`` (of ``institution``) matches,
    one per printer (the first rule naming a printer wins)."""
    chosen: dict[str, FilmPassThroughConfig] = {}
    for rule in settings.print_pass_through:
        if rule.from_ae is not None and rule.from_ae != calling_ae.strip():
            continue
        if rule.institution is not None and rule.institution != institution:
            continue
        chosen.setdefault(rule.printer, rule)
    return list(chosen.values())


def queue_sheet(
    archive: Archive,
    *,
    printer: str,
    requested_by: str,
    film_size: str,
    institution: str = "",
    copies: int = 1,
    study_uid: str | None = None,
    sop_instance_uid: str | None = None,
    printed_film_id: int | None = None,
) -> int:
    """Queue one sheet (a stored film sheet, or an unmatched printed film) for ``printer``;
    returns the job's id. The worker is woken at once."""
    if (sop_instance_uid is None) == (printed_film_id is None):
        raise ValueError("name either a stored sheet or a printed film")
    job = FilmPrint(
        printer=printer.strip()[:16],
        study_uid=study_uid,
        sop_instance_uid=sop_instance_uid,
        printed_film_pk=printed_film_id,
        institution=institution[:64],
        film_size=film_size[:16],
        copies=copies,
        requested_by=requested_by[:200],
    )
    with archive.sessions.begin() as session:
        session.add(job)
        session.flush()
        pk = job.pk
    _wake()
    return pk


def queue_study_films(
    archive: Archive,
    study_uid: str,
    *,
    printer: str | None,
    requested_by: str,
    institution: str = "",
    copies: int = 1,
    sop_instance_uids: Sequence[str] = (),
) -> list[int]:
    """Queue the film sheets of a study (all, or those named) for ``printer`` (default
    ``film_printer``); returns the jobs' ids.

    Raises
    ------
    InvalidQuery
        No printer is named or configured, the printer is not a known peer, a named sheet
        is not a film sheet of the study, the study has no film sheet, or too many sheets.
    NotFound
        The study is not in the archive.
    """
    chosen_printer = (printer or archive.settings.film_printer or "").strip()
    if not chosen_printer:
        raise InvalidQuery("no film printer is configured (film_printer) or named")
    _check_printer(archive, chosen_printer)
    sheets = film_sheets(archive, study_uid)
    if not sheets and not _study_exists(archive, study_uid):
        raise NotFound(f"study {study_uid} not found")
    by_uid = {s.sop_instance_uid: s for s in sheets}
    wanted = list(dict.fromkeys(sop_instance_uids)) or list(by_uid)
    unknown = [uid for uid in wanted if uid not in by_uid]
    if unknown:
        raise InvalidQuery(f"{unknown[0]} is not a film sheet of study {study_uid}")
    if not wanted:
        raise InvalidQuery(f"study {study_uid} has no film sheet to print (compose one first)")
    if len(wanted) > MAX_SHEETS_PER_REQUEST:
        raise InvalidQuery(f"at most {MAX_SHEETS_PER_REQUEST} sheets at once")
    jobs = []
    for uid in wanted:
        size = film_image(archive, study_uid, uid).film_size or archive.settings.film_default_size
        jobs.append(
            queue_sheet(
                archive,
                printer=chosen_printer,
                requested_by=requested_by,
                film_size=size,
                institution=institution,
                copies=copies,
                study_uid=study_uid,
                sop_instance_uid=uid,
            )
        )
    logger.info("%d film sheet(s) of %s queued for %s", len(jobs), study_uid, chosen_printer)
    return jobs


def film_prints(
    archive: Archive, *, study_uid: str | None = None, limit: int = 200
) -> list[FilmPrintInfo]:
    """The newest jobs of the queue (of one study when named), newest first."""
    query = select(FilmPrint).order_by(FilmPrint.pk.desc()).limit(limit)
    if study_uid is not None:
        query = query.where(FilmPrint.study_uid == study_uid)
    with archive.sessions() as session:
        rows = session.execute(query).scalars().all()
        return [_info(row) for row in rows]


def _info(row: FilmPrint) -> FilmPrintInfo:
    return FilmPrintInfo(
        id=row.pk,
        printer=row.printer,
        state=row.state,
        study_uid=row.study_uid,
        sop_instance_uid=row.sop_instance_uid,
        printed_film_id=row.printed_film_pk,
        institution=row.institution,
        film_size=row.film_size,
        copies=row.copies,
        requested_by=row.requested_by,
        attempts=row.attempts,
        last_error=row.last_error,
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


def _check_printer(archive: Archive, ae_title: str) -> None:
    from cloudfilm.dimse.peers import PeerDirectory

    if PeerDirectory(archive).get(ae_title) is None:
        raise InvalidQuery(f"film printer {ae_title} is not a known peer (cloudfilm peers add)")


def _study_exists(archive: Archive, study_uid: str) -> bool:
    from cloudfilm.index.models import Study

    with archive.sessions() as session:
        return (
            session.execute(select(Study.pk).where(Study.study_uid == study_uid)).first()
            is not None
        )


def _wake() -> None:
    """Wake this process's job loops (the queue is polled by other processes anyway)."""
    from cloudfilm.dimse import jobs

    jobs.notify()
