"""Fixtures: a live cloudfilm HTTP server on a free loopback port, and a DICOMweb client.

The server runs uvicorn in a thread of the test process on the ``archive`` fixture (SQLite,
or PostgreSQL with ``CLOUDFILM_DATABASE_URL``), so tests can inspect the archive directly while
talking to it over real HTTP with the ``dicomweb-client`` package.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn
from dicomweb_client.api import DICOMwebClient
from dicomweb_support import LiveServer, free_port

from cloudfilm.api.app import create_app
from cloudfilm.archive import Archive


@pytest.fixture
def serve(archive: Archive) -> Iterator[Callable[..., LiveServer]]:
    """Start a server on the archive, with settings overridden by keyword (e.g. limits)."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(**overrides: Any) -> LiveServer:
        settings = archive.settings.model_copy(update=overrides)
        port = free_port()
        config = uvicorn.Config(
            create_app(settings, archive),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            access_log=False,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        running.append((server, thread))
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("the test server did not start")
            time.sleep(0.01)
        origin = f"http://127.0.0.1:{port}"
        return LiveServer(origin, origin + settings.dicomweb_root, archive)

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture
def live_server(serve: Callable[..., LiveServer]) -> LiveServer:
    return serve()


@pytest.fixture
def client(live_server: LiveServer) -> DICOMwebClient:
    return DICOMwebClient(url=live_server.url)
