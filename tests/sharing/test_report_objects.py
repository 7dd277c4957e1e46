"""Reports attached by staff become DICOM objects of the study (Comprehensive SR, Encapsulated
PDF), stored in the archive, read back by pydicom and DCMTK, and carried in the media ZIP."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from fpdf import FPDF
from media_support import dcmread, extract, read_file_set, store_synthetic
from pydicom.dataset import Dataset

from cloudfilm.api.app import create_app
from cloudfilm.api.deps import Principal, get_principal
from cloudfilm.archive import Archive
from cloudfilm.core.errors import MalformedRequest
from cloudfilm.dicomweb.lookup import find_instances
from cloudfilm.sharing.reports import (
    COMPREHENSIVE_SR,
    ENCAPSULATED_PDF,
    ReportRequest,
    check_pdf,
    make_pdf_report,
)
from support.instances import make_dataset, part10

pytestmark = pytest.mark.db

FINDINGS = "右肺上叶见一枚 6 mm 实性结节，边界清楚。\n余肺野清晰。"
IMPRESSION = "右肺上叶小结节，建议 12 个月后复查。"


@pytest.fixture
def app(archive: Archive) -> FastAPI:
    return create_app(archive.settings.model_copy(update={"report_max_bytes": 64 * 1024}), archive)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def images(archive: Archive) -> list[Dataset]:
    """A CT study whose text is in GB18030, as many Chinese modalities send it."""
    return store_synthetic(archive, seed=31, slices=3, rows=16, columns=16, charset="gb18030")


def _pdf(text: str = "Report") -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(text=text)
    return bytes(pdf.output())


def _content(ds: Dataset) -> list[tuple[str, str, str]]:
    """(value type, concept meaning, text) of every content item, depth first."""
    found: list[tuple[str, str, str]] = []
    for item in ds.get("ContentSequence", []):
        meaning = item.ConceptNameCodeSequence[0].CodeMeaning
        value = str(item.get("TextValue") or item.get("PersonName") or "")
        found.append((item.ValueType, meaning, value))
        found += _content(item)
    return found


def test_text_report_with_sections(
    archive: Archive, client: TestClient, images: list[Dataset]
) -> None:
    study = images[0].StudyInstanceUID
    response = client.post(
        f"/api/studies/{study}/reports",
        json={
            "title": "胸部 CT 报告",
            "author": "王^医生",
            "sections": [
                {"heading": "影像所见", "text": FINDINGS},
                {"heading": "诊断意见", "text": IMPRESSION},
                {"heading": "随访安排", "text": "呼吸科门诊"},
            ],
        },
    )
    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["study_uid"] == study and answer["sop_class_uid"] == COMPREHENSIVE_SR
    sr = dcmread(io.BytesIO(archive.read_instance(answer["sop_instance_uid"])))
    assert sr.SOPClassUID == COMPREHENSIVE_SR and sr.Modality == "SR"
    assert sr.StudyInstanceUID == study and sr.SeriesInstanceUID == answer["series_uid"]
    assert sr.SeriesInstanceUID != images[0].SeriesInstanceUID
    assert sr.SeriesNumber == int(images[0].SeriesNumber) + 1
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert sr.PatientID == images[0].PatientID
    assert str(sr.PatientName) == str(images[0].PatientName)  # GB18030 in, UTF-8 out
    assert sr.AccessionNumber == images[0].AccessionNumber
    assert sr.SeriesDescription == "胸部 CT 报告"
    assert sr.CompletionFlag == "COMPLETE" and sr.PreliminaryFlag == "FINAL"
    assert sr.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    items = _content(sr)
    assert ("PNAME", "Person Observer Name", "王^医生") in items
    assert ("CONTAINER", "影像所见", "") in items
    assert ("TEXT", "Finding", FINDINGS.replace("\n", "\r\n")) in items
    assert ("CONTAINER", "诊断意见", "") in items and ("TEXT", "Impression", IMPRESSION) in items
    assert ("CONTAINER", "随访安排", "") in items
    headings = {i.ConceptNameCodeSequence[0].CodeValue: i for i in sr.ContentSequence[2:]}
    assert set(headings) == {"121070", "121072", "SECTION"}
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99CLOUDFILM"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    referenced = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert {r.ReferencedSOPInstanceUID for r in referenced} == {d.SOPInstanceUID for d in images}


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="needs DCMTK's dsrdump")
def test_dcmtk_reads_the_sr(archive: Archive, client: TestClient, images: list[Dataset],
                            tmp_path: Path) -> None:  # fmt: skip
    study = images[0].StudyInstanceUID
    response = client.post(f"/api/studies/{study}/reports", json={"text": FINDINGS})
    assert response.status_code == 201
    path = tmp_path / "sr.dcm"
    path.write_bytes(archive.read_instance(response.json()["sop_instance_uid"]))
    out = subprocess.run(["dsrdump", "+U8", str(path)], capture_output=True, check=True)
    text = out.stdout.decode("utf-8")
    assert "Comprehensive SR Document" in text and "右肺上叶见一枚" in text
    problems = [
        line for line in out.stderr.decode().splitlines()
        if "VR checker does not support" not in line  # DCMTK's checker knows no UTF-8
    ]  # fmt: skip
    assert not problems


def test_pdf_report(archive: Archive, client: TestClient, images: list[Dataset]) -> None:
    study = images[0].StudyInstanceUID
    pdf = _pdf()
    response = client.post(
        f"/api/studies/{study}/reports", params={"title": "放射科报告"}, content=pdf,
        headers={"Content-Type": "application/pdf"},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["sop_class_uid"] == ENCAPSULATED_PDF
    ds = dcmread(io.BytesIO(archive.read_instance(answer["sop_instance_uid"])))
    assert ds.Modality == "DOC" and ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert ds.EncapsulatedDocumentLength == len(pdf)
    assert bytes(ds.EncapsulatedDocument)[: len(pdf)] == pdf
    assert ds.DocumentTitle == "放射科报告" and ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.StudyInstanceUID == study and ds.PatientID == images[0].PatientID
    assert str(ds.PatientName) == str(images[0].PatientName)


def test_odd_length_pdf_is_padded_and_its_length_kept(images: list[Dataset]) -> None:
    pdf = _pdf("odd") + b"\n" if len(_pdf("odd")) % 2 == 0 else _pdf("odd")
    assert len(pdf) % 2 == 1
    ds = make_pdf_report(images[0], pdf, 2)
    assert len(ds.EncapsulatedDocument) == len(pdf) + 1
    assert ds.EncapsulatedDocument.endswith(b"\x00") and ds.EncapsulatedDocumentLength == len(pdf)


def test_reports_travel_in_the_media_zip(
    archive: Archive, client: TestClient, images: list[Dataset], tmp_path: Path
) -> None:
    study = images[0].StudyInstanceUID
    assert client.post(f"/api/studies/{study}/reports", json={"text": "无异常"}).status_code == 201
    assert (
        client.post(
            f"/api/studies/{study}/reports",
            content=_pdf(),
            headers={"Content-Type": "application/pdf"},
        ).status_code
        == 201
    )
    extract(client.get(f"/api/studies/{study}/download.zip").content, tmp_path)
    fs = read_file_set(tmp_path)
    assert len(fs) == 5
    records = [
        r.DirectoryRecordType for r in dcmread(tmp_path / "DICOMDIR").DirectoryRecordSequence
    ]
    assert records.count("SR DOCUMENT") == 1 and records.count("ENCAP DOC") == 1
    assert records.count("SERIES") == 3


@pytest.mark.parametrize(
    ("body", "content_type", "status", "says"),
    [
        (b"hello, not a pdf", "application/pdf", 400, "%PDF"),
        (b"%PDF-1.7\n1 0 obj<<>>endobj\n", "application/pdf", 400, "%%EOF"),
        (b'{"text": ', "application/json", 400, "JSON"),
        (b"\xff\xfe", "application/json", 400, "UTF-8"),
        (b'{"text": "a", "sections": [{"heading": "h", "text": "b"}]}', "application/json",
         400, "either text or sections"),
        (b'{"text": "a", "title": "' + b"x" * 65 + b'"}', "application/json", 400, "title"),
        (b'{"sections": [{"heading": "h", "text": ""}]}', "application/json", 400, "text"),
        (b'{"text": "   "}', "application/json", 400, "blank"),
        (b'{"text": "a", "author": "A\\\\B"}', "application/json", 400, "author"),
        (b'{"text": "a", "colour": "red"}', "application/json", 400, "colour"),
        (b"", "application/json", 400, "empty"),
        (b"report", "text/plain", 415, "application/pdf"),
        (b"%PDF-", "image/png", 415, "application/json"),
    ],
)  # fmt: skip
def test_bad_reports_are_refused(
    archive: Archive, client: TestClient, images: list[Dataset], body: bytes,
    content_type: str, status: int, says: str,
) -> None:  # fmt: skip
    study = images[0].StudyInstanceUID
    response = client.post(
        f"/api/studies/{study}/reports", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == status, response.text
    assert says in response.json()["detail"]
    with archive.engine.connect() as conn:
        assert len(find_instances(conn, study)) == 3  # nothing was stored


def test_too_large_reports_get_413(client: TestClient, images: list[Dataset]) -> None:
    study = images[0].StudyInstanceUID
    big = b"%PDF-1.4\n" + b"0" * (70 * 1024) + b"\n%%EOF\n"
    declared = client.post(
        f"/api/studies/{study}/reports", content=big, headers={"Content-Type": "application/pdf"}
    )
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while it streams
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    streamed = client.post(
        f"/api/studies/{study}/reports", content=chunks(),
        headers={"Content-Type": "application/pdf"},
    )  # fmt: skip
    assert streamed.status_code == 413 and "at most" in streamed.json()["detail"]


def test_unknown_and_invisible_studies(app: FastAPI, client: TestClient,
                                        images: list[Dataset]) -> None:  # fmt: skip
    unknown = client.post("/api/studies/1.2.3.999/reports", json={"text": "x"})
    assert unknown.status_code == 404
    assert client.post("/api/studies/bad uid/reports", json={"text": "x"}).status_code == 400
    study = images[0].StudyInstanceUID
    viewer = Principal("share", "s1", frozenset({study}), frozenset({"view", "download"}))
    app.dependency_overrides[get_principal] = lambda: viewer
    try:
        assert client.post(f"/api/studies/{study}/reports", json={"text": "x"}).status_code == 403
        elsewhere = Principal("share", "s2", frozenset({"1.2.3"}), frozenset({"view"}))
        app.dependency_overrides[get_principal] = lambda: elsewhere
        assert client.post(f"/api/studies/{study}/reports", json={"text": "x"}).status_code == 404
    finally:
        app.dependency_overrides.clear()


def test_check_pdf() -> None:
    check_pdf(_pdf())
    with pytest.raises(MalformedRequest):
        check_pdf(b"%PDF-1.4 truncated")


def test_report_request_single_text_is_findings() -> None:
    parts = ReportRequest(text="abc").parts()
    assert [(p.heading, p.text) for p in parts] == [("Findings", "abc")]


def test_report_on_a_study_with_odd_attributes(archive: Archive, client: TestClient) -> None:
    """Archived data is odd at times: the report is still a valid object."""
    ds = make_dataset(
        PatientName=None, StudyDate="2024", StudyTime=None, PatientSex="W",
        PatientBirthDate="19800", StudyID=None, AccessionNumber=None, SeriesNumber=None,
    )  # fmt: skip
    assert archive.store(part10(ds)).ok
    response = client.post(f"/api/studies/{ds.StudyInstanceUID}/reports", json={"text": "正常"})
    assert response.status_code == 201, response.text
    sr = dcmread(io.BytesIO(archive.read_instance(response.json()["sop_instance_uid"])))
    assert sr.StudyInstanceUID == ds.StudyInstanceUID and sr.PatientID == ds.PatientID
    assert sr.SeriesNumber == 1 and sr.PatientSex == "" and sr.StudyDate == ""
    assert sr.PatientBirthDate == ""
