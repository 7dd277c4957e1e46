"""REST API of film sheets (a real FastAPI app on the archive) and the ``cloudfilm film`` CLI."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from film_support import key_object, store_all, synthetic_ct
from PIL import Image
from pydicom.dataset import Dataset
from pypdf import PdfReader

from cloudfilm.api.app import create_app
from cloudfilm.api.deps import Principal, get_principal
from cloudfilm.archive import Archive

pytestmark = pytest.mark.db

MM_PER_POINT = 25.4 / 72


@pytest.fixture
def app(archive: Archive) -> FastAPI:
    return create_app(archive.settings.model_copy(update={"film_dpi": 100}), archive)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def ct(archive: Archive) -> list[Dataset]:
    return synthetic_ct(archive, slices=12, rows=64, columns=64)


def _films(study: str) -> str:
    return f"/api/studies/{study}/films"


def test_create_list_and_export(client: TestClient, archive: Archive, ct: list[Dataset]) -> None:
    study = ct[0].StudyInstanceUID
    assert client.get(_films(study)).json() == []
    response = client.post(
        _films(study),
        json={"layout": "3x2", "series": ct[0].SeriesInstanceUID, "preset": "lung",
              "film_size": "a3", "orientation": "landscape"},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    body = response.json()
    sop = body["sop_instance_uid"]
    assert (body["study_uid"], body["images"], body["source"]) == (study, 6, "series")
    assert body["links"]["png"].endswith(f"/api/studies/{study}/films/{sop}.png")
    assert body["links"]["dicom"].endswith(
        f"/dicomweb/studies/{study}/series/{body['series_uid']}/instances/{sop}"
    )
    ds = pydicom.dcmread(io.BytesIO(archive.read_instance(sop)))
    assert (ds.Columns, ds.Rows) == (1654, 1169)  # A3 landscape at the film_dpi setting, 100
    listed = client.get(_films(study)).json()
    assert [(f["sop_instance_uid"], f["instance_number"]) for f in listed] == [(sop, 1)]
    png = client.get(f"{_films(study)}/{sop}.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["cache-control"] == "private, no-store"
    assert Image.open(io.BytesIO(png.content)).size == (1654, 1169)
    pdf = client.get(f"{_films(study)}/{sop}.pdf")
    assert pdf.headers["content-type"] == "application/pdf"
    page = PdfReader(io.BytesIO(pdf.content)).pages[0]
    assert float(page.mediabox.width) * MM_PER_POINT == pytest.approx(420.0, abs=0.01)
    assert float(page.mediabox.height) * MM_PER_POINT == pytest.approx(297.0, abs=0.01)
    # The DICOM object is reachable by DICOMweb like any other instance.
    wado = client.get(body["links"]["dicom"], headers={"Accept": "application/dicom"})
    assert wado.status_code == 200


def test_create_from_images_and_key_objects(
    client: TestClient, archive: Archive, ct: list[Dataset]
) -> None:
    study = ct[0].StudyInstanceUID
    images = [{"sop_instance_uid": ct[5].SOPInstanceUID, "window": {"center": 40, "width": 400}},
              {"sop_instance_uid": ct[2].SOPInstanceUID, "frame": 1, "preset": "bone"}]  # fmt: skip
    response = client.post(_films(study), json={"layout": "2x1", "images": images,
                                                "annotations": False})  # fmt: skip
    assert response.status_code == 201, response.text
    ds = pydicom.dcmread(io.BytesIO(archive.read_instance(response.json()["sop_instance_uid"])))
    assert ds.BurnedInAnnotation == "NO"
    assert [i.ReferencedSOPInstanceUID for i in ds.SourceImageSequence] == [
        ct[5].SOPInstanceUID, ct[2].SOPInstanceUID,
    ]  # fmt: skip
    (document,) = store_all(archive, [key_object([ct[7], ct[1], ct[3]])])
    response = client.post(_films(study), json={"layout": "ROW\\1,2", "key_object": "latest"})
    assert response.status_code == 201, response.text
    assert response.json()["source"] == "key-object"
    ds = pydicom.dcmread(io.BytesIO(archive.read_instance(response.json()["sop_instance_uid"])))
    assert [i.ReferencedSOPInstanceUID for i in ds.SourceImageSequence] == [
        ct[7].SOPInstanceUID, ct[1].SOPInstanceUID, ct[3].SOPInstanceUID,
    ]  # fmt: skip
    assert len(client.get(_films(study)).json()) == 2
    assert document.SOPInstanceUID not in {f["sop_instance_uid"] for f in
                                           client.get(_films(study)).json()}  # fmt: skip


def _error(response: Any, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail


def test_bad_requests_get_precise_errors(client: TestClient, ct: list[Dataset]) -> None:
    study = ct[0].StudyInstanceUID
    url = _films(study)
    post = client.post
    _error(post(url, json={"layout": "STANDARD\\0,3"}), 400, "between 1 and 16")
    assert post(url, json={"layout": "SLIDE"}).json()["error"] == "invalid-layout"
    _error(post(url, json={"layout": "4x5", "film_size": "15INX15IN"}), 400, "Film Size ID")
    _error(post(url, json={"layout": "4x5", "orientation": "up"}), 400, "PORTRAIT or LANDSCAPE")
    _error(post(url, json={"layout": "4x5", "series": "1.2.3"}), 422, "series 1.2.3 is not in")
    _error(post(url, json={"layout": "1x1", "images": [{"sop_instance_uid": "1.2.3"}]}), 422,
           "instance 1.2.3 is not in study")  # fmt: skip
    too_many = [{"sop_instance_uid": ds.SOPInstanceUID} for ds in ct[:5]]
    _error(post(url, json={"layout": "2x2", "images": too_many}), 422, "5 images were chosen",
           "has 4 image boxes")  # fmt: skip
    _error(post(url, json={"layout": "2x2", "key_object": "latest"}), 422, "no Key Object")
    one = [{"sop_instance_uid": ct[0].SOPInstanceUID}]
    _error(post(url, json={"layout": "2x2", "images": one, "series": ct[0].SeriesInstanceUID}),
           422, "one way")  # fmt: skip
    _error(post(url, json={"layout": "2x2", "preset": "liver"}), 400, "preset 'liver'")
    _error(post(url, json={"layout": "2x2", "window": {"center": 40, "width": 0}}), 400,
           "positive")  # fmt: skip
    _error(post(url, json={"layout": "2x2", "preset": "lung",
                           "window": {"center": 40, "width": 400}}), 400, "not both")  # fmt: skip
    _error(post(url, json={"layout": "2x2", "dpi": 1000}), 400, "dpi")
    _error(post(url, json={"layout": "2x2", "colour": "red"}), 400, "colour")
    _error(post(url, json={}), 400, "layout: Field required")
    _error(post(url, content=b"{not json", headers={"content-type": "application/json"}), 400,
           "not JSON")  # fmt: skip
    _error(post(url, content=b""), 400, "empty")
    _error(post(url, content=b"x" * 300_000), 413, "at most")
    _error(post(url, json={"layout": "2x2", "border_density": "GREY"}), 400, "hundredths of OD")
    _error(post("/api/studies/bad uid/films", json={"layout": "2x2"}), 400, "not a UID")
    _error(post("/api/studies/1.2.3/films", json={"layout": "2x2"}), 404, "study 1.2.3 not found")
    _error(client.get("/api/studies/1.2.3/films"), 404, "not found")
    _error(client.get(f"{url}/{ct[0].SOPInstanceUID}.png"), 404, "film sheet")
    _error(client.get(f"{url}/1.2.3.pdf"), 404, "film sheet")
    _error(client.get(f"{url}/{ct[0].SOPInstanceUID}.jpg"), 404, ".png or .pdf")


def test_access_is_asked_of_the_principal(
    app: FastAPI, client: TestClient, ct: list[Dataset]
) -> None:
    study = ct[0].StudyInstanceUID
    made = client.post(_films(study), json={"layout": "1x1"}).json()["sop_instance_uid"]
    viewer = Principal("share", "s1", frozenset({study}), frozenset({"view"}))
    elsewhere = Principal("share", "s2", frozenset({"1.2.3"}), frozenset({"view"}))
    try:
        app.dependency_overrides[get_principal] = lambda: viewer
        _error(client.post(_films(study), json={"layout": "1x1"}), 403, "may store")
        assert client.get(_films(study)).status_code == 200
        assert client.get(f"{_films(study)}/{made}.png").status_code == 200
        app.dependency_overrides[get_principal] = lambda: elsewhere
        for response in (
            client.post(_films(study), json={"layout": "1x1"}),
            client.get(_films(study)),
            client.get(f"{_films(study)}/{made}.png"),
            client.get(f"{_films(study)}/{made}.pdf"),
        ):
            _error(response, 404, "not found")
    finally:
        app.dependency_overrides.clear()


def _cloudfilm(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudfilm.cli", *map(str, args)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_cli_makes_and_exports_a_film(
    cli_env: dict[str, str], ct: list[Dataset], tmp_path: Path
) -> None:
    study = ct[0].StudyInstanceUID
    out = tmp_path / "sheet.pdf"
    result = _cloudfilm(cli_env, "film", study, "--layout", "4x3", "--series",
                        ct[0].SeriesInstanceUID, "--size", "11INX14IN", "--preset", "lung",
                        "--out", out, "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    made = json.loads(result.stdout)
    assert (made["study_uid"], made["images"], made["source"]) == (study, 12, "series")
    page = PdfReader(out).pages[0]
    assert float(page.mediabox.width) * MM_PER_POINT == pytest.approx(279.4, abs=0.01)
    assert float(page.mediabox.height) * MM_PER_POINT == pytest.approx(355.6, abs=0.01)
    bad = _cloudfilm(cli_env, "film", study, "--layout", "4x0")
    assert bad.returncode == 2 and "between 1 and 16" in bad.stderr
    missing = _cloudfilm(cli_env, "film", study, "--layout", "2x2", "--series", "1.2.3")
    assert missing.returncode == 1 and "series 1.2.3 is not in study" in missing.stderr
    png = tmp_path / "sheet.png"
    image = f"{ct[3].SOPInstanceUID}:1"
    ok = _cloudfilm(cli_env, "film", study, "--layout", "1x1", "--image", image, "--out", png)
    assert ok.returncode == 0, ok.stderr
    assert Image.open(png).size == (2100, 2550)


def test_the_patient_page_shows_film_sheets_first(
    client: TestClient, archive: Archive, ct: list[Dataset]
) -> None:
    study = ct[0].StudyInstanceUID
    made = client.post(_films(study), json={"layout": "2x2", "series": ct[0].SeriesInstanceUID})
    assert made.status_code == 201, made.text
    page = client.get(f"/viewer/studies/{study}")
    assert page.status_code == 200
    order = re.findall(r'data-series="([0-9.]+)"', page.text)
    assert order[0] == made.json()["series_uid"]  # the sheet, then the CT series
    assert ct[0].SeriesInstanceUID in order[1:]
