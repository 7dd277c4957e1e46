"""HTTP application: /health and /metrics."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloudfilm.api.app import create_app
from cloudfilm.api.deps import PrincipalDep
from cloudfilm.archive import Archive
from support.instances import make_dataset, part10

pytestmark = pytest.mark.db


def test_health_reports_index_and_storage(archive: Archive) -> None:
    with TestClient(create_app(archive.settings, archive)) as client:
        response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["index"] == "ok" and response.json()["storage"] == "ok"


def test_health_is_503_when_the_index_is_gone(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_a: object, **_k: object) -> None:
        raise ConnectionError("index down")

    monkeypatch.setattr(archive.engine, "connect", broken)
    with TestClient(create_app(archive.settings, archive)) as client:
        response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["index"].startswith("error")


def test_metrics_count_what_was_stored(archive: Archive) -> None:
    data = part10(make_dataset())
    archive.store(data)
    archive.store(data)
    archive.store(b"not dicom at all, really not")
    with TestClient(create_app(archive.settings, archive)) as client:
        client.get("/health")
        text = client.get("/metrics").text
    assert 'cloudfilm_instances_received_total{outcome="stored"} 1' in text
    assert 'cloudfilm_instances_received_total{outcome="duplicate"} 1' in text
    assert 'cloudfilm_instances_received_total{outcome="rejected"} 1' in text
    assert f"cloudfilm_received_bytes_total {len(data)}" in text
    assert "cloudfilm_archive_instances 1" in text
    assert 'cloudfilm_http_request_duration_seconds_count{route="/health",method="GET"} 1' in text


def test_production_refuses_the_development_principal(archive: Archive) -> None:
    settings = archive.settings.model_copy(update={"env": "production", "secret_key": "x" * 40})
    app: FastAPI = create_app(settings, archive)

    @app.get("/probe")
    def probe(principal: PrincipalDep) -> dict[str, str]:
        return {"who": principal.id}

    with TestClient(app) as client:
        response = client.get("/probe")
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"] == 'Bearer realm="cloudfilm"'
