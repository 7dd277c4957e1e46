"""The patient page and its staff doors (/viewer/studies/{uid}, /iid) over HTTP."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request
from viewer_support import HOSTILE_NAME, PDF_BYTES, SR_FINDING, SR_IMPRESSION, Demo

from cloudfilm.api.deps import Principal, get_principal
from cloudfilm.archive import Archive
from cloudfilm.viewer.pages import render_viewer

pytestmark = pytest.mark.db


class _Page(HTMLParser):
    """Script elements, text and the viewer's configuration of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.text: list[str] = []
        self._in_config = False
        self.config_text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            values = dict(attrs)
            self.scripts.append(values)
            self._in_config = values.get("id") == "viewer-config"

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_config = False

    def handle_data(self, data: str) -> None:
        if self._in_config:
            self.config_text += data
        else:
            self.text.append(data)

    @property
    def config(self) -> dict[str, object]:
        return dict(json.loads(self.config_text))


def _page(html: str) -> _Page:
    parsed = _Page()
    parsed.feed(html)
    return parsed


def test_page_shows_the_exam_report_and_series(client: TestClient, demo: Demo) -> None:
    response = client.get(f"/viewer/studies/{demo.ct_study}?lang=zh")
    assert response.status_code == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page = _page(response.text)
    text = " ".join(" ".join(page.text).split())
    name = demo.ct[0].PatientName
    chinese = str(name.ideographic).replace("^", "")
    assert chinese and chinese in text  # GB18030 name decoded and shown
    assert "云胶片示范医院" in text  # Institution Name
    assert "胸腹部 CT 平扫" in text  # Study Description
    assert "CHEST" in text and "CT" in text
    date = str(demo.ct[0].StudyDate)
    assert f"{date[:4]}-{date[4:6]}-{date[6:]}" in text
    assert SR_FINDING in text and SR_IMPRESSION in text  # the SR, as text
    assert "检查日期" in text and "报告" in text  # Chinese labels
    pdf_url = (
        f"/dicomweb/studies/{demo.ct_study}/series/{demo.pdf.SeriesInstanceUID}"
        f"/instances/{demo.pdf.SOPInstanceUID}/rendered?accept=application/pdf"
    )
    assert f'data="{pdf_url.replace("&", "&amp;")}"' in response.text  # inline <object>
    assert f'href="{pdf_url}"' in response.text  # plain link for WeChat
    config = page.config
    (study,) = config["studies"]  # type: ignore[misc]
    (series,) = study["series"]  # only the image series, not the SR and PDF ones
    assert series["uid"] == demo.ct_series
    assert [sop for sop, _ in series["instances"]] == [ds.SOPInstanceUID for ds in demo.ct]
    assert config["dicomweb"] == "/dicomweb"
    assert [s for s in page.scripts if "src" not in s] == [
        {"type": "application/json", "id": "viewer-config"}
    ]


def test_page_in_english(client: TestClient, demo: Demo) -> None:
    response = client.get(f"/viewer/studies/{demo.ct_study}?lang=en")
    text = " ".join(_page(response.text).text)
    assert "Hospital" in text and "Report" in text and "Series" in text
    assert "检查日期" not in text
    assert response.cookies.get("cloudfilm_lang") == "en"
    assert json.loads(_page(response.text).config_text)["messages"]["slice"] == "Image {n}/{total}"


def test_hostile_patient_name_is_text(client: TestClient, demo: Demo) -> None:
    response = client.get(f"/viewer/studies/{demo.mr_study}")
    assert response.status_code == 200
    assert "<script>alert" not in response.text
    page = _page(response.text)
    assert all("src" in s or s.get("type") == "application/json" for s in page.scripts)
    assert "<script>alert(1)</script> Evil" in " ".join(page.text)
    assert page.config["studies"][0]["patient"] == HOSTILE_NAME.replace("^", " ")  # type: ignore[index]


def test_pdf_report_is_served_inline(client: TestClient, demo: Demo) -> None:
    url = (
        f"/dicomweb/studies/{demo.ct_study}/series/{demo.pdf.SeriesInstanceUID}"
        f"/instances/{demo.pdf.SOPInstanceUID}/rendered"
    )
    response = client.get(url, params={"accept": "application/pdf"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["content-disposition"].startswith("inline")
    assert response.content == PDF_BYTES  # without the DICOM padding byte
    browser_accept = "text/html,application/xhtml+xml,*/*;q=0.8"
    assert client.get(url, headers={"Accept": browser_accept}).content == PDF_BYTES
    refused = client.get(url, headers={"Accept": "image/jpeg"})
    assert refused.status_code == 406
    etag = response.headers["etag"]
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304


def test_missing_and_malformed_studies(client: TestClient, demo: Demo) -> None:
    missing = client.get("/viewer/studies/1.2.3.4.5?lang=en")
    assert missing.status_code == 404
    assert "does not exist" in missing.text and "viewer-config" not in missing.text
    assert client.get("/viewer/studies/not%20a%20uid").status_code == 400
    assert client.get("/viewer/studies/" + "1" * 80).status_code == 400


def test_a_study_the_principal_may_not_see_looks_missing(client: TestClient, demo: Demo) -> None:
    share = Principal(kind="share", id="s1", study_uids=frozenset({demo.mr_study}))
    client.app.dependency_overrides[get_principal] = lambda: share  # type: ignore[attr-defined]
    hidden = client.get(f"/viewer/studies/{demo.ct_study}?lang=en")
    missing = client.get("/viewer/studies/1.2.3.4.5?lang=en")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.text == missing.text
    assert client.get(f"/viewer/studies/{demo.mr_study}").status_code == 200
    assert client.get(f"/iid?studyUID={demo.ct_study}").status_code == 404
    # the PDF route asks the principal too
    pdf = (
        f"/dicomweb/studies/{demo.ct_study}/series/{demo.pdf.SeriesInstanceUID}"
        f"/instances/{demo.pdf.SOPInstanceUID}/rendered?accept=application/pdf"
    )
    assert client.get(pdf).status_code == 404


def test_iid_launch(client: TestClient, demo: Demo) -> None:
    by_uid = client.get(f"/iid?requestType=STUDY&studyUID={demo.ct_study}")
    assert by_uid.status_code == 200 and SR_FINDING in " ".join(_page(by_uid.text).text)
    both = _page(client.get(f"/iid?studyUID={demo.ct_study},{demo.mr_study}").text)
    assert [s["uid"] for s in both.config["studies"]] == [demo.ct_study, demo.mr_study]  # type: ignore[attr-defined]
    accession = str(demo.ct[0].AccessionNumber)
    by_accession = _page(client.get(f"/iid?accessionNumber={accession}^ISSUER").text)
    assert [s["uid"] for s in by_accession.config["studies"]] == [demo.ct_study]  # type: ignore[attr-defined]
    assert client.get("/iid?accessionNumber=NOPE").status_code == 404
    assert client.get("/iid").status_code == 400
    assert client.get("/iid?studyUID=1.2,bad uid").status_code == 400
    assert client.get(f"/iid?requestType=PATIENT&studyUID={demo.ct_study}").status_code == 400
    too_many = ",".join(f"1.2.{n}" for n in range(30))
    assert client.get(f"/iid?studyUID={too_many}").status_code == 400


def test_ultrasound_cine_is_one_series_of_frames(client: TestClient, demo: Demo) -> None:
    page = _page(client.get(f"/viewer/studies/{demo.us_study}").text)
    (series,) = page.config["studies"][0]["series"]  # type: ignore[index]
    assert series["instances"] == [[demo.us[0].SOPInstanceUID, 6]]
    first = client.get(f"/viewer/studies/{demo.us_study}").text
    assert f"/instances/{demo.us[0].SOPInstanceUID}/frames/1/rendered?quality=90" in first


def _request(query: str = "") -> Request:
    return Request({"type": "http", "query_string": query.encode(), "headers": [], "path": "/s/x"})


def test_share_pages_pending_and_panel(archive: Archive, demo: Demo) -> None:
    share = Principal(kind="share", id="s2", study_uids=frozenset({"1.2.999"}))
    pending = render_viewer(
        _request("lang=en"), archive, share, ["1.2.999"], base_url="/s/tok",
        share={"pending": True, "accession_number": "A1", "label": "for Dr Wu",
               "expires_at": "2027-01-02T00:00:00"},
    )  # fmt: skip
    body = bytes(pending.body).decode()
    assert "on their way" in body and "for Dr Wu" in body and "2027-01-02" in body
    assert "viewer-config" not in body
    owner = Principal(kind="share", id="s3", study_uids=frozenset({demo.ct_study}))
    page = render_viewer(
        _request(), archive, owner, [demo.ct_study, demo.mr_study], base_url="/s/tok",
        share={"panel_html": '<section id="panel">x</section>', "pending": False},
    )  # fmt: skip
    html = bytes(page.body).decode()
    parsed = _page(html)
    assert [s["uid"] for s in parsed.config["studies"]] == [demo.ct_study]  # type: ignore[attr-defined]
    assert parsed.config["dicomweb"] == "/s/tok/dicomweb"
    assert "&lt;section" in html  # a plain str panel is escaped, never trusted
    assert f"/s/tok/dicomweb/studies/{demo.ct_study}/series/" in html
