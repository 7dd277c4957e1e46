"""Reports for the patient page: SR content trees as escaped HTML, PDF reports found."""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from viewer_support import make_pdf, make_sr, part10, store_all

from cloudfilm.archive import Archive
from cloudfilm.dicom.synth import generate_studies
from cloudfilm.dicomweb.lookup import find_instances
from cloudfilm.viewer.report import (
    MAX_DEPTH,
    find_reports,
    person_name,
    report_kind,
    report_of,
    sr_html,
)


def _roundtrip(ds: Dataset) -> Dataset:
    """The data set as a reader sees it after it was written (character sets applied)."""
    return pydicom.dcmread(io.BytesIO(part10(ds)))


def _ct() -> Dataset:
    return next(generate_studies(modality="CT", slices=1, rows=32, columns=32))


class _Structure(HTMLParser):
    """Tags and text of a fragment; fails on a <script> element."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        assert tag != "script"
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(html: str) -> _Structure:
    parser = _Structure()
    parser.feed(html)
    return parser


def test_comprehensive_sr_becomes_headings_and_values() -> None:
    sr = _roundtrip(make_sr(_ct(), ["右肺上叶见一结节，约 12 mm。", "No effusion."], "考虑良性"))
    report = report_of(sr, "sr", "1.2", "1.3", "1.4")
    assert report.title == "Diagnostic Imaging Report"
    assert report.completion == "COMPLETE"
    assert report.verification == "VERIFIED"
    assert report.verifier == "王芳 (Wang Fang)"
    structure = _parse(str(report.html))
    headings = re.findall(r"<h4>(.*?)</h4>", str(report.html))
    assert headings == ["Findings", "Impressions"]
    text = "".join(structure.text)
    assert "右肺上叶见一结节，约 12 mm。" in text
    assert "No effusion." in text
    assert "12.5 mm" in text  # NUM with its UCUM unit
    assert "Lung structure" in text  # CODE value
    assert "李明 (Li Ming)" in text  # PNAME
    assert "考虑良性" in text
    # the impression text sits in the "Impressions" section without repeating its name
    assert str(report.html).count("Impressions") == 1


def test_basic_text_sr_and_unverified_flags() -> None:
    sr = _roundtrip(make_sr(_ct(), ["Normal study."], "Normal.", basic_text=True, verified=False))
    assert report_kind(sr.SOPClassUID) == "sr"
    report = report_of(sr, "sr", "1.2", "1.3", "1.4")
    assert report.verification == "UNVERIFIED"
    assert report.verifier == ""
    assert "Normal study." in "".join(_parse(str(report.html)).text)


def test_markup_in_values_is_text() -> None:
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    sr = _roundtrip(make_sr(_ct(), [hostile], "ok"))
    html = str(report_of(sr, "sr", "1", "2", "3").html)
    structure = _parse(html)  # fails on a script element
    assert "img" not in structure.tags
    assert hostile in "".join(structure.text)


def test_gb18030_sr_is_decoded() -> None:
    sr = make_sr(_ct(), ["肝脏形态大小正常"], "未见异常")
    sr.SpecificCharacterSet = "GB18030"
    decoded = _roundtrip(sr)
    assert decoded.SpecificCharacterSet == "GB18030"
    text = "".join(_parse(str(sr_html(decoded))).text)
    assert "肝脏形态大小正常" in text and "未见异常" in text


def test_pydicom_sr_test_file() -> None:
    path = get_testdata_file("test-SR.dcm")
    assert path is not None
    ds = pydicom.dcmread(path)
    report = report_of(ds, "sr", "1", "2", "3")
    assert report.title == "Diagnosis"
    assert report.date == "2001-02-13 18:47"
    assert report.verifier == "Riesmeier Jörg"
    text = "".join(_parse(str(report.html)).text)
    assert "A mass of" in text and "3 cm" in text and "was detected." in text
    assert "Inferred Sample Text" in text
    assert '&%$§"!()<>{}/;' in text  # special characters of the file, escaped in the HTML


def test_hidden_items_and_deep_trees_are_cut() -> None:
    root = Dataset()
    current = root
    for depth in range(MAX_DEPTH + 10):
        item = Dataset()
        item.ValueType = "CONTAINER"
        item.RelationshipType = "CONTAINS"
        code = Dataset()
        code.CodeMeaning = f"Level {depth}"
        item.ConceptNameCodeSequence = [code]
        text = Dataset()
        text.ValueType = "TEXT"
        text.TextValue = f"text {depth}"
        coordinates = Dataset()
        coordinates.ValueType = "SCOORD"
        item.ContentSequence = [text, coordinates]
        current.ContentSequence = [*current.get("ContentSequence", []), item]
        current = item
    html = str(sr_html(root))
    assert "text 0" in html and f"text {MAX_DEPTH - 2}" in html
    assert f"text {MAX_DEPTH + 5}" not in html
    assert "SCOORD" not in html and html.count("<li>") == MAX_DEPTH - 1
    assert "<h6>" in html and "<h7>" not in html


@pytest.mark.parametrize(
    ("uid", "kind"),
    [
        ("1.2.840.10008.5.1.4.1.1.88.11", "sr"),
        ("1.2.840.10008.5.1.4.1.1.88.33", "sr"),
        ("1.2.840.10008.5.1.4.1.1.88.59", None),  # Key Object Selection
        ("1.2.840.10008.5.1.4.1.1.104.1", "pdf"),
        ("1.2.840.10008.5.1.4.1.1.2", None),
    ],
)
def test_report_kind(uid: str, kind: str | None) -> None:
    assert report_kind(uid) == kind


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("Zhang^San=张^三", "张三 (Zhang San)"),
        ("Doe^John", "Doe John"),
        ("=王^芳", "王芳"),
        ("", ""),
    ],
)
def test_person_name(value: str, shown: str) -> None:
    assert person_name(value) == shown


def test_find_reports_in_a_stored_study(archive: Archive) -> None:
    ct = store_all(archive, generate_studies(modality="CT", slices=2, rows=32, columns=32))
    store_all(archive, [make_sr(ct[0], ["Finding one."], "Fine."), make_pdf(ct[0])])
    with archive.engine.connect() as conn:
        instances = find_instances(conn, ct[0].StudyInstanceUID)
    reports = find_reports(archive, instances)
    assert sorted(r.kind for r in reports) == ["pdf", "sr"]
    pdf = next(r for r in reports if r.kind == "pdf")
    assert pdf.title == "CT 报告" and pdf.date == "2024-07-05 10:15"
    assert pdf.rendered_path().endswith(f"/instances/{pdf.sop_instance_uid}/rendered")
    sr = next(r for r in reports if r.kind == "sr")
    assert "Finding one." in str(sr.html) and not sr.unreadable
