"""Fixtures of the patient tests: live servers on the test archive (``serve``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "sharing"))

from platform_support import Platform, build_platform
from share_support import ThreadServer

from cloudfilm.api.app import create_app
from cloudfilm.archive import Archive


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
def platform(archive: Archive) -> Iterator[Platform]:
    """Hospitals A, B and C, their staff and one patient seen at all three (platform_support)."""
    yield from build_platform(archive)
