"""The background work of a server process: the forwarding queue, commitment reports and the
film printing queue.

``cloudfilm dimse`` and ``cloudfilm serve`` run one ``DimseWorkers`` each (with or without the
DIMSE server): one thread works the forwarding queue (``routing.ForwardWorker``), another
retries storage commitment reports that could not be delivered (``commitment.Reporter``), a
third prints queued sheets on real film printers (``print_queue.FilmPrintWorker``).
Both look for due jobs every ``dimse_queue_poll_seconds`` and at once when this process queues
one; jobs are claimed in the index, so any number of processes can run them side by side.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from cloudfilm.archive import Archive
from cloudfilm.dimse import jobs
from cloudfilm.dimse.commitment import Reporter
from cloudfilm.dimse.print_queue import FilmPrintWorker
from cloudfilm.dimse.routing import ForwardWorker
from cloudfilm.dimse.scu import scu_entity
from cloudfilm.index.models import DimseCommitment, DimseForward, FilmPrint

logger = logging.getLogger(__name__)

#: Seconds between two purges of finished jobs.
PURGE_EVERY = 3600.0


class DimseWorkers:
    """Threads that forward queued instances and retry commitment reports."""

    def __init__(self, archive: Archive, *, ae: Any = None, ae_title: str | None = None) -> None:
        settings = archive.settings
        self.archive = archive
        self.ae_title = ae_title or settings.dimse_ae_title
        #: The application entity of the associations these workers open.
        self.ae = ae if ae is not None else scu_entity(settings, self.ae_title)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.reporter = Reporter(archive, self.ae, self.ae_title, self.worker)
        self.forwarder = ForwardWorker(archive, self.ae, self.worker)
        # Its own application entity: pynetdicom's N-service requests (send_n_create…) wait
        # for the association's reactor to pause, which the server's event-driven
        # associations (``reactor``) never do.
        self.film_printer = FilmPrintWorker(
            archive, scu_entity(settings, self.ae_title), self.worker
        )
        self._purged = 0.0
        self._loops: list[jobs.JobLoop] = []

    def start(self) -> None:
        interval = self.archive.settings.dimse_queue_poll_seconds
        self._loops = [
            jobs.JobLoop("dimse-forward", self._forward_step, interval),
            jobs.JobLoop("dimse-commitment", self.reporter.step, interval),
            jobs.JobLoop("film-print", self.film_printer.step, interval),
        ]
        for loop in self._loops:
            loop.start()

    def stop(self) -> None:
        for loop in self._loops:
            loop.stop()
        self._loops = []

    def _forward_step(self) -> bool:
        if time.monotonic() - self._purged > PURGE_EVERY:
            self._purged = time.monotonic()
            for model in (DimseForward, DimseCommitment, FilmPrint):
                removed = jobs.purge(self.archive, model)
                if removed:
                    logger.info("deleted %d finished %s row(s)", removed, model.__tablename__)
        return self.forwarder.step()

    def __enter__(self) -> DimseWorkers:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
