"""``GET /api/studies/{uid}/download.zip`` and ``GET /s/{token}/download.zip``: access checks,
headers, and a ZIP whose DICOMDIR lists the originals byte for byte."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient
from media_support import extract, read_file_set, store_synthetic
from pydicom.uid import ExplicitVRLittleEndian

from cloudfilm.api.app import create_app
from cloudfilm.archive import Archive
from cloudfilm.sharing.accesses import list_accesses
from cloudfilm.sharing.links import ShareLinks, ShareRequest

pytestmark = pytest.mark.db


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive.settings, archive)) as test_client:
        yield test_client


def test_staff_download_of_a_study(archive: Archive, client: TestClient, tmp_path: Path) -> None:
    stored = store_synthetic(archive, seed=21, slices=3, rows=16, columns=16, charset="gb18030")
    study = stored[0].StudyInstanceUID
    response = client.get(f"/api/studies/{study}/download.zip")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["cache-control"] == "no-store"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="')
    ideographic = str(stored[0].PatientName).split("=")[1].replace("^", "")
    assert "filename*=UTF-8''" in disposition
    assert unquote(disposition.split("filename*=UTF-8''")[1]).startswith(ideographic)
    assert disposition.split('"')[1].isascii()
    extract(response.content, tmp_path)
    fs = read_file_set(tmp_path)
    assert len(fs) == 3
    for instance in fs:
        assert Path(instance.path).read_bytes() == archive.read_instance(instance.SOPInstanceUID)
    readme = (tmp_path / "README.TXT").read_text(encoding="utf-8-sig")
    assert "DICOMDIR" in readme and "原始影像" in readme and "3" in readme


def test_transcode_parameter(archive: Archive, client: TestClient, tmp_path: Path) -> None:
    stored = store_synthetic(
        archive, seed=22, slices=2, rows=16, columns=16, transfer_syntax="implicit"
    )
    study = stored[0].StudyInstanceUID
    response = client.get(f"/api/studies/{study}/download.zip?transcode=explicit")
    assert response.status_code == 200
    extract(response.content, tmp_path)
    assert {i.TransferSyntaxUID for i in read_file_set(tmp_path)} == {ExplicitVRLittleEndian}
    bad = client.get(f"/api/studies/{study}/download.zip?transcode=jpeg")
    assert bad.status_code == 400 and "transcode" in bad.json()["detail"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/studies/1.2.3.4.5/download.zip", 404),
        ("/api/studies/not%20a%20uid!/download.zip", 400),
    ],
)
def test_bad_study_answers(client: TestClient, path: str, status: int) -> None:
    response = client.get(path)
    assert response.status_code == status
    assert response.json()["detail"]


def _share(archive: Archive, studies: list[str], **options: object) -> str:
    issued = ShareLinks(archive).issue(ShareRequest(study_uids=studies, **options))  # type: ignore[arg-type]
    return issued.token


def test_share_downloads_exactly_its_studies(
    archive: Archive, client: TestClient, tmp_path: Path
) -> None:
    mine = store_synthetic(archive, seed=23, slices=2, rows=16, columns=16, studies_per_patient=2)
    other = store_synthetic(archive, seed=24, slices=1, rows=16, columns=16)
    studies = sorted({ds.StudyInstanceUID for ds in mine})
    token = _share(archive, studies, permissions=("view", "download"))
    response = client.get(f"/s/{token}/download.zip")
    assert response.status_code == 200
    extract(response.content, tmp_path)
    fs = read_file_set(tmp_path)
    assert {i.SOPInstanceUID for i in fs} == {ds.SOPInstanceUID for ds in mine}
    one = client.get(f"/s/{token}/download.zip", params={"study": studies[0]})
    assert one.status_code == 200
    # Study B through A's token answers like a missing study.
    foreign = client.get(f"/s/{token}/download.zip", params={"study": other[0].StudyInstanceUID})
    assert foreign.status_code == 404
    mixed = client.get(
        f"/s/{token}/download.zip", params={"study": [studies[0], other[0].StudyInstanceUID]}
    )
    assert mixed.status_code == 404
    share_id = ShareLinks(archive).find(token)
    assert share_id is not None
    actions = [a.action for a in list_accesses(archive, share_id.id, with_reshares=False)]
    assert actions.count("download") == 2


def test_share_without_download_permission(archive: Archive, client: TestClient) -> None:
    stored = store_synthetic(archive, seed=25, slices=1, rows=16, columns=16)
    token = _share(archive, [stored[0].StudyInstanceUID], permissions=("view",))
    response = client.get(f"/s/{token}/download.zip")
    assert response.status_code == 403
    assert "download" in response.json()["detail"]


def test_share_that_is_revoked_locked_or_unknown(archive: Archive, client: TestClient) -> None:
    stored = store_synthetic(archive, seed=26, slices=1, rows=16, columns=16)
    study = stored[0].StudyInstanceUID
    links = ShareLinks(archive)
    revoked = links.issue(ShareRequest(study_uids=[study], permissions=("view", "download")))
    links.revoke(revoked.info.id)
    assert client.get(f"/s/{revoked.token}/download.zip").status_code == 410
    coded = links.issue(
        ShareRequest(study_uids=[study], permissions=("view", "download"), secret="code")
    )
    assert client.get(f"/s/{coded.token}/download.zip").status_code == 401
    assert client.get("/s/AAAAAAAAAAAAAAAAAAAAAA/download.zip").status_code == 404
