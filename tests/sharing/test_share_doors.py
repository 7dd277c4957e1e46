"""Every door under /s/{token}: locked before the code, and never reaching another study.

The routes are enumerated from the application itself, so a door added later (by any module)
is checked too.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests
from share_support import People, StoredStudy, ThreadServer, app_routes, fill, token_of, unlock

from cloudfilm.api.app import create_app
from cloudfilm.archive import Archive
from cloudfilm.sharing.links import ShareLinks, ShareRequest

pytestmark = pytest.mark.db
DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
#: Routes that are pages or forms of the link itself (they answer with HTML, not data).
PAGE_ROUTES = {"/s/{token}", "/s/{token}/unlock", "/s/{token}/renew", "/s/{token}/reshares",
               "/s/{token}/reshares/{share_id}/revoke", "/s/{token}/consents",
               "/s/{token}/consents/{consent_id}/confirm",
               "/s/{token}/consents/{consent_id}/withdraw"}  # fmt: skip


def carries_data(answer: requests.Response) -> bool:
    """Whether an answer holds images, DICOM objects or an archive (not JSON or a page)."""
    media = answer.headers.get("content-type", "").split(";")[0].strip()
    return media in ("application/dicom", "application/zip", "application/pdf") or media.startswith(
        ("image/", "multipart/")
    )


def share_routes(archive: Archive) -> list[tuple[str, str]]:
    app = create_app(archive.settings, archive)
    found = sorted(
        (path, method)
        for path, methods in app_routes(app)
        if path.startswith("/s/{token}")
        for method in methods - {"HEAD"}
    )
    assert len(found) > 30, found  # the DICOMweb service is mounted under the link
    return found


def call(
    session: requests.Session, method: str, url: str, target: StoredStudy
) -> requests.Response:
    params = {}
    if url.endswith("/wado"):
        params = {"requestType": "WADO", "studyUID": target.study, "seriesUID": target.series,
                  "objectUID": target.sop, "contentType": "application/dicom"}  # fmt: skip
    elif url.endswith(("/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances")):
        params = {"StudyInstanceUID": target.study}
    elif url.endswith("download.zip"):
        params = {"study": target.study}
    headers = {"Accept": "*/*"}
    if "/dicomweb/" in url and url.rsplit("/", 1)[-1].startswith(("1.", "2.")):
        headers["Accept"] = DICOM_ACCEPT
    form = {"answer": ""} if method == "POST" else None
    return session.request(
        method, url, params=params, headers=headers, data=form, timeout=60, allow_redirects=False
    )


def test_before_the_code_every_door_is_closed(
    origin: str, archive: Archive, people: People, links: ShareLinks
) -> None:
    issued = links.issue(
        ShareRequest(study_uids=[people.a1.study], secret="code",
                     permissions=["download", "reshare"])
    )  # fmt: skip
    token = token_of(issued.link)
    stranger = requests.Session()
    for path, method in share_routes(archive):
        url = origin + fill(path, token, people.a1)
        answer = call(stranger, method, url, people.a1)
        where = f"{method} {path}: {answer.status_code}"
        for secret in ("CT chest", "Zhang", "ACC-A1", "script", people.a1.patient_id):
            assert secret not in answer.text, where
        assert not carries_data(answer), where
        if method == "OPTIONS":
            assert answer.status_code == 204, where  # CORS preflight: headers only
        elif path in PAGE_ROUTES:
            assert answer.status_code in (200, 303, 400, 401), where
        else:
            assert answer.status_code == 401, where
            assert answer.json()["error"] == "unauthorized", where


def test_the_token_of_one_study_never_reaches_another(
    origin: str, archive: Archive, people: People, links: ShareLinks
) -> None:
    issued = links.issue(
        ShareRequest(study_uids=[people.a1.study], secret="code",
                     permissions=["download", "reshare"])
    )  # fmt: skip
    token = token_of(issued.link)
    holder = requests.Session()
    assert unlock(holder, origin, token, issued.code or "").status_code == 303
    tried = 0
    for target in (people.b1, people.a2):  # another patient, and the same patient's other exam
        for path, method in share_routes(archive):
            url = origin + fill(path, token, target)
            answer = call(holder, method, url, target)
            tried += 1
            where = f"{method} {path} -> {target.study}: {answer.status_code}"
            for secret in ("MR knee B1", "Li^Si", "李", "PB-990000", "ACC-B1", "CT head A2",
                           "ACC-A2", target.series, target.sop):  # fmt: skip
                assert secret not in answer.text, where
            assert answer.status_code < 500 and not carries_data(answer), where
            if answer.ok and "json" in answer.headers.get("content-type", ""):
                assert target.study not in answer.text, where
    assert tried > 60
    # and the holder's own study is reachable through the same doors
    own = holder.get(f"{origin}/s/{token}/dicomweb/studies", timeout=30).json()
    assert [s["0020000D"]["Value"][0] for s in own] == [people.a1.study]


def test_dicomweb_through_a_link(
    origin: str, archive: Archive, people: People, links: ShareLinks
) -> None:
    view_only = links.issue(ShareRequest(study_uids=[people.a1.study]))
    token = token_of(view_only.link)
    base = f"{origin}/s/{token}/dicomweb"
    a1 = people.a1
    assert links.get(view_only.info.id).last_used_at is None
    studies = requests.get(f"{base}/studies", timeout=30).json()
    assert len(studies) == 1
    assert links.get(view_only.info.id).last_used_at is not None
    assert studies[0]["00081190"]["Value"][0] == f"{base}/studies/{a1.study}"
    instance = f"{base}/studies/{a1.study}/series/{a1.series}/instances/{a1.sop}"
    metadata = requests.get(f"{instance}/metadata", timeout=30).json()[0]
    assert metadata["7FE00010"]["BulkDataURI"].startswith(f"{instance}/bulkdata/")
    assert requests.get(f"{instance}/frames/1", timeout=30).status_code == 200
    rendered = requests.get(f"{instance}/rendered", headers={"Accept": "image/png"}, timeout=30)
    assert rendered.status_code == 200 and rendered.headers["content-type"] == "image/png"
    # originals need the download permission
    native = requests.get(instance, headers={"Accept": DICOM_ACCEPT}, timeout=30)
    assert native.status_code == 403 and "download" in native.json()["detail"]
    wado = f"{origin}/s/{token}/wado"
    params = {"requestType": "WADO", "studyUID": a1.study, "seriesUID": a1.series,
              "objectUID": a1.sop}  # fmt: skip
    assert requests.get(wado, params=params, timeout=30).headers["content-type"] == "image/jpeg"
    dicom = requests.get(wado, params={**params, "contentType": "application/dicom"}, timeout=30)
    assert dicom.status_code == 403
    # a link never stores
    related = 'multipart/related; type="application/dicom"; boundary=x'
    stow = requests.post(
        f"{base}/studies", data=b"--x--", headers={"Content-Type": related}, timeout=30
    )
    assert stow.status_code == 403
    with_download = links.issue(ShareRequest(study_uids=[a1.study], permissions=["download"]))
    dl_token = token_of(with_download.link)
    dl_instance = instance.replace(token, dl_token)
    native = requests.get(dl_instance, headers={"Accept": "application/dicom"}, timeout=30)
    assert native.status_code == 200 and native.content == archive.read_instance(a1.sop)
    study = requests.get(f"{origin}/s/{dl_token}/dicomweb/studies/{a1.study}",
                         headers={"Accept": DICOM_ACCEPT}, timeout=30)  # fmt: skip
    assert study.status_code == 200
    log = requests.get(f"{origin}/s/{dl_token}/api/accesses", timeout=30).json()["accesses"]
    assert [a["action"] for a in log] == ["download"]  # the study retrieve; not the instance


def test_reshare_with_earlier_exams_reaches_them(
    origin: str, people: People, links: ShareLinks
) -> None:
    parent = links.issue(ShareRequest(study_uids=[people.a1.study], secret="birth-date",
                                      permissions=["reshare"]))  # fmt: skip
    plain = links.reshare(parent.info.id, ShareRequest())
    prior = links.reshare(parent.info.id, ShareRequest(include_prior=True, secret="code"))
    doctor = requests.Session()
    a2 = f"/dicomweb/studies/{people.a2.study}/metadata"
    assert doctor.get(f"{origin}/s/{token_of(prior.link)}{a2}", timeout=30).status_code == 401
    assert unlock(doctor, origin, token_of(prior.link), prior.code or "").status_code == 303

    def reachable(token: str) -> set[str]:
        found = doctor.get(f"{origin}/s/{token}/dicomweb/studies", timeout=30).json()
        return {s["0020000D"]["Value"][0] for s in found}

    assert reachable(token_of(plain.link)) == {people.a1.study}
    assert reachable(token_of(prior.link)) == {people.a1.study, people.a2.study}
    assert requests.get(f"{origin}/s/{token_of(plain.link)}{a2}", timeout=30).status_code == 404
    assert doctor.get(f"{origin}/s/{token_of(prior.link)}{a2}", timeout=30).status_code == 200
    links.revoke(parent.info.id)
    for child in (plain, prior):
        assert requests.get(child.link.replace("http://127.0.0.1:8080", origin),
                            timeout=30).status_code == 410  # fmt: skip


def test_pending_accession_page_then_images(
    serve: Callable[..., ThreadServer], archive: Archive, links: ShareLinks
) -> None:
    from share_support import store_study

    server = serve()
    issued = links.issue(ShareRequest(accession_number="ACC-SOON"))
    url = f"{server.origin}/s/{token_of(issued.link)}"
    page = requests.get(url, headers={"Accept-Language": "en"}, timeout=30)
    assert page.status_code == 200 and "on their way" in page.text
    assert requests.get(f"{url}/dicomweb/studies", timeout=30).json() == []
    arrived = store_study(archive, "PD-1", "ACC-SOON", StudyDescription="XR hand")
    page = requests.get(url, headers={"Accept-Language": "en"}, timeout=30)
    assert "XR hand" in page.text and "on their way" not in page.text
    found = requests.get(f"{url}/dicomweb/studies", timeout=30).json()
    assert [s["0020000D"]["Value"][0] for s in found] == [arrived.study]
