"""Fixtures of the share tests: two patients' studies, share links, a live server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from share_support import People, ThreadServer, store_people

from cloudfilm.api.app import create_app
from cloudfilm.archive import Archive
from cloudfilm.sharing.links import ShareLinks

pytestmark = pytest.mark.db


@pytest.fixture
def people(archive: Archive) -> People:
    return store_people(archive)


@pytest.fixture
def links(archive: Archive) -> ShareLinks:
    return ShareLinks(archive)


@pytest.fixture
def serve(archive: Archive) -> Iterator[Callable[..., ThreadServer]]:
    """Start a server on the archive; keyword arguments override settings."""
    running: list[ThreadServer] = []

    def start(**overrides: Any) -> ThreadServer:
        settings = archive.settings.model_copy(update=overrides)
        server = ThreadServer(create_app(settings, archive))
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def origin(serve: Callable[..., ThreadServer]) -> str:
    """A live server whose public base URL is its own address (links printed work)."""
    server = serve()
    return server.origin
