"""Fixtures for the viewer: demo studies with reports, a test client, a live server, Chromium.

Page tests use the ``archive`` fixture (SQLite, and PostgreSQL with CLOUDFILM_DATABASE_URL).
Browser tests share one module-scoped server on a SQLite archive loaded once (loading and
rendering a CT stack per test would dominate their time), driven by Debian's chromium through
Playwright with a phone-sized viewport.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from viewer_support import Demo, Live, load_demo

from cloudfilm.api.app import create_app
from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def demo(archive: Archive) -> Demo:
    return load_demo(archive, ct_slices=6, ct_size=64)


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive.settings, archive)) as test_client:
        yield test_client


# ------------------------------------------------------------------------- live server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    settings: Settings, archive: Archive
) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, archive), host="127.0.0.1", port=port, log_level="warning",
        lifespan="on", access_log=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-viewer", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the test server did not start")
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A server on a SQLite archive with the demo studies (a 40-slice 256×256 CT)."""
    # Explicit values: the environment (CLOUDFILM_DATABASE_URL for the index tests) must not
    # point this module's archive at a shared database.
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("viewer") / "data", database_url=None,
        min_free_bytes=0, storage="file",
    )  # fmt: skip
    with Archive.open(settings) as archive:
        demo = load_demo(archive, ct_slices=40, ct_size=256)
        server, thread, origin = start_server(settings, archive)
        try:
            yield Live(origin, archive, demo)
        finally:
            server.should_exit = True
            thread.join(timeout=20)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A phone-sized page; JavaScript errors and CSP violations fail the test."""
    context = browser.new_context(viewport=PHONE, device_scale_factor=1, has_touch=True)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.on(
        "console",
        lambda message: (
            errors.append(message.text)
            if message.type == "error" and "favicon" not in str(message.location)
            else None
        ),
    )
    tab.errors = errors
    yield tab
    context.close()
    assert not errors, errors
