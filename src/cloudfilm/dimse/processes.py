"""The DIMSE server in several processes that share its port(s): ``cloudfilm dimse --processes``.

Storing an instance is mostly Python (parsing, the index transaction, hashing), and the
threads of one process take turns under one interpreter lock: a second association adds
little on its own. Several processes, each with its own archive connection and listeners
bound with ``SO_REUSEPORT``, let the kernel spread new associations over them, so that
modalities sending at the same time use every core. Each association stays in the process
that accepted it (its principal, its print session, its storage commitment request).

The first process also runs the background workers (forwarding queue, storage commitment
reports); the jobs are claimed in the index, so they would also be safe in every process.
A child process stops when the first one does, or when the first one disappears (its end of
a pipe closes). Works with SQLite (WAL; writers queue) and PostgreSQL alike.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from cloudfilm.archive import Archive
from cloudfilm.core import logs
from cloudfilm.core.config import Settings
from cloudfilm.dimse.server import DimseServer

logger = logging.getLogger(__name__)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _child(settings: Settings, parent_alive: Connection, ready: Any) -> None:
    """One more process serving the port(s) of the first one (``settings`` name them);
    ``ready`` is set once it listens."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the first process
    logs.configure(settings.log_level.upper())
    with Archive.open(settings, migrate_schema=False) as archive:
        server = DimseServer(archive, workers=False, share_port=True)
        server.start()
        ready.set()

        def watch() -> None:
            try:
                parent_alive.recv()  # nothing is ever sent: returns (raises) at EOF
            except (EOFError, OSError):
                pass
            server.stop()

        threading.Thread(target=watch, name="dimse-parent-watch", daemon=True).start()
        server.serve_forever()


class ProcessGroup:
    """``count`` processes serving one DIMSE server's port(s): this one and ``count - 1``
    children started with ``spawn`` once this process listens."""

    def __init__(self, archive: Archive, count: int, **server_args: Any) -> None:
        if count < 1:
            raise ValueError("at least one process")
        self.count = count
        self.server = DimseServer(archive, share_port=count > 1, **server_args)
        self._children: list[Any] = []
        self._pipes: list[Connection] = []

    def start(self, timeout: float = 120) -> None:
        """Start the children, then listen here: returns once every process listens, so that
        the first association a client makes (often a C-ECHO to see that we are up) finds
        them all. With port 0 (any free port), this process listens first to learn it.

        Raises
        ------
        RuntimeError
            When a child did not listen within ``timeout`` seconds (all are stopped).
        """
        if self.count == 1:
            self.server.start()
            return
        server = self.server
        learn_port = server.port == 0 or server.tls_port == 0
        if learn_port:
            server.start()
        settings = server.archive.settings.model_copy(
            update={
                "dimse_host": server.host,
                "dimse_port": server.port,
                "dimse_tls_port": server.tls_port,
                "dimse_ae_title": server.ae_title,
            }
        )
        context = multiprocessing.get_context("spawn")
        events = []
        for number in range(1, self.count):
            reader, writer = context.Pipe(duplex=False)
            ready = context.Event()
            child = context.Process(
                target=_child, args=(settings, reader, ready), name=f"cloudfilm-dimse-{number}"
            )
            child.start()
            reader.close()
            self._children.append(child)
            self._pipes.append(writer)
            events.append(ready)
        deadline = time.monotonic() + timeout
        for child, ready in zip(self._children, events, strict=True):
            while not ready.wait(0.2):
                if not child.is_alive() or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"DIMSE process {child.name} did not start")
        if not learn_port:
            server.start()
        logger.info("DIMSE server in %d processes", self.count)

    @property
    def pids(self) -> list[int]:
        return [int(child.pid) for child in self._children if child.pid is not None]

    def stop(self) -> None:
        """Stop the children (SIGTERM, then kill after 10 s) and this process's server."""
        for child in self._children:
            if child.is_alive():
                child.terminate()
        for child in self._children:
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join(5)
        for pipe in self._pipes:
            pipe.close()
        self._children.clear()
        self._pipes.clear()
        if self.server.started and not self.server.stopped:
            self.server.stop()

    def serve_forever(self) -> None:
        """Serve until Ctrl-C or SIGTERM, then stop every process."""
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            self.server.serve_forever()  # stops this process's server when it returns
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.stop()
