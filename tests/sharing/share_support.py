"""Helpers of the share tests: a small archive of two patients, live servers, route listing."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import uvicorn
from fastapi import FastAPI

from cloudfilm.archive import Archive
from support.instances import make_dataset, part10

#: A name that must be shown as text, never run (the page escapes it).
HOSTILE_NAME = "<script>alert(1)</script>^Zhang=张^三"


@dataclass(frozen=True)
class StoredStudy:
    study: str
    series: str
    sop: str
    patient_id: str
    accession: str


@dataclass(frozen=True)
class People:
    """Patient A with two studies (a1 newer, a2 earlier), patient B with one."""

    a1: StoredStudy
    a2: StoredStudy
    b1: StoredStudy


def store_study(archive: Archive, patient_id: str, accession: str, **attrs: Any) -> StoredStudy:
    ds = make_dataset(
        PatientID=patient_id, AccessionNumber=accession, SpecificCharacterSet="ISO_IR 192", **attrs
    )
    result = archive.store(part10(ds))
    assert result.ok, result.reason
    return StoredStudy(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, patient_id, accession
    )


def store_people(archive: Archive) -> People:
    a1 = store_study(
        archive, "PA-110105198005171234", "ACC-A1", PatientBirthDate="19800517",
        PatientName=HOSTILE_NAME, StudyDate="20261101", StudyDescription="CT chest A1",
    )  # fmt: skip
    a2 = store_study(
        archive, "PA-110105198005171234", "ACC-A2", PatientBirthDate="19800517",
        PatientName=HOSTILE_NAME, StudyDate="20240301", StudyDescription="CT head A2",
    )  # fmt: skip
    b1 = store_study(
        archive, "PB-990000", "ACC-B1", PatientBirthDate="19650203",
        PatientName="Li^Si=李^四", StudyDate="20261102", StudyDescription="MR knee B1",
    )  # fmt: skip
    return People(a1, a2, b1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThreadServer:
    """uvicorn serving ``app`` in a thread of the test process on a free loopback port."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
            access_log=False, proxy_headers=False,  # as cloudfilm serve: trusted_proxies decides
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        self.origin = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


class ServeProcess:
    """A real ``cloudfilm serve`` process on a free port, its output kept in ``log``."""

    def __init__(self, env: dict[str, str], log: Path, log_level: str = "WARNING") -> None:
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cloudfilm.cli", "serve", "--port", str(self.port)],
                env={**env, "CLOUDFILM_LOG_LEVEL": log_level, "PYTHONIOENCODING": "utf-8"},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def wait_healthy(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"cloudfilm serve exited: {self.output()[-2000:]}")
            try:
                if requests.get(f"{self.origin}/health", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"cloudfilm serve at {self.origin} did not become healthy")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(20)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def token_of(link: str) -> str:
    match = re.search(r"/s/([A-Za-z0-9_-]{22})$", link)
    assert match, link
    return match.group(1)


def unlock(session: requests.Session, origin: str, token: str, answer: str) -> requests.Response:
    """Enter the code (or check answer) as the page's form does; the cookie stays in ``session``."""
    return session.post(
        f"{origin}/s/{token}/unlock", data={"answer": answer}, allow_redirects=False, timeout=30
    )


def app_routes(app: FastAPI) -> Iterator[tuple[str, frozenset[str]]]:
    """Every (path template, methods) of the application, through included routers too
    (FastAPI ≥ 0.16x keeps included routers as ``_IncludedRouter`` branches)."""

    def walk(routes: list[Any]) -> Iterator[tuple[str, frozenset[str]]]:
        for route in routes:
            if hasattr(route, "effective_candidates"):
                yield from walk(route.effective_candidates())
                yield from walk(route.effective_low_priority_routes())
                continue
            path = getattr(route, "path", None)
            original = getattr(route, "original_route", route)
            methods = getattr(original, "methods", None) or getattr(route, "methods", None)
            if path:
                yield path, frozenset(methods or ())

    yield from walk(list(app.routes))


def fill(path: str, token: str, study: StoredStudy, share_id: str = "0" * 16) -> str:
    """A concrete path for a route template, aimed at ``study``."""
    values = {
        "token": token, "study": study.study, "series": study.series, "sop": study.sop,
        "frame_list": "1", "path": "x", "share_id": share_id, "study_uid": study.study,
        "consent_id": "0" * 16,
    }  # fmt: skip

    def one(match: re.Match[str]) -> str:
        name = match.group(1).split(":")[0]
        assert name in values, f"no test value for path parameter {name} in {path}"
        return values[name]

    return re.sub(r"\{([^}]+)\}", one, path)
