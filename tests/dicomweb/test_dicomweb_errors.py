"""Failures of the machine answer as JSON problems, never with a stack trace."""

from __future__ import annotations

import pytest
import requests
from dicomweb_support import LiveServer, stow_raw

from cloudfilm.archive import Archive
from support.instances import make_dataset, part10

pytestmark = pytest.mark.db


def test_an_internal_failure_is_a_500_problem_without_details(
    live_server: LiveServer, archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = make_dataset()
    assert stow_raw(live_server.url, [part10(ds)]).status_code == 200

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret connection string postgres://admin:hunter2@db")

    monkeypatch.setattr(archive.engine, "connect", broken)
    monkeypatch.setattr(archive, "sessions", broken)
    for path in ("/studies", f"/studies/{ds.StudyInstanceUID}/metadata"):
        response = requests.get(live_server.url + path, timeout=30)
        assert response.status_code == 500
        assert response.headers["Content-Type"] == "application/problem+json"
        body = response.json()
        assert body["error"] == "internal-error" and body["status"] == 500
        assert "hunter2" not in response.text and "Traceback" not in response.text
        assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_a_storage_failure_is_a_failed_instance(
    live_server: LiveServer, archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(archive.blobs, "put", full)
    response = stow_raw(live_server.url, [part10(make_dataset())])
    assert response.status_code == 409
    item = response.json()["00081198"]["Value"][0]
    assert item["00081197"]["Value"] == [0xA700]  # out of resources
    assert "No space left" in response.headers["Warning"]
