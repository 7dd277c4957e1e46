"""Test data for the viewer: synthetic studies, reports made with highdicom, a PDF report."""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass

import highdicom as hd
from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    ContainerContentItem,
    NumContentItem,
    PnameContentItem,
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from cloudfilm.archive import Archive
from cloudfilm.dicom.synth import generate_studies

CONTAINS = RelationshipTypeValues.CONTAINS
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
REPORT_TITLE = CodedConcept("18748-4", "LN", "Diagnostic Imaging Report")
FINDINGS = CodedConcept("121070", "DCM", "Findings")
FINDING = CodedConcept("121071", "DCM", "Finding")
IMPRESSION = CodedConcept("121072", "DCM", "Impressions")


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def store_all(archive: Archive, datasets: Iterable[Dataset]) -> list[Dataset]:
    """Store each data set (as a Part 10 file); the data sets come back, for their UIDs."""
    kept = []
    for ds in datasets:
        result = archive.store(part10(ds))
        assert result.ok, result
        kept.append(ds)
    return kept


def report_content(findings: list[str], impression: str, diameter_mm: float) -> Dataset:
    """A Diagnostic Imaging Report tree: Findings (texts, a size, a code), Impressions."""
    root = ContainerContentItem(name=REPORT_TITLE)
    section = ContainerContentItem(name=FINDINGS, relationship_type=CONTAINS)
    items: list[Dataset] = [
        TextContentItem(name=FINDING, value=text, relationship_type=CONTAINS) for text in findings
    ]
    items.append(
        NumContentItem(
            name=CodedConcept("81827009", "SCT", "Diameter"),
            value=diameter_mm,
            unit=CodedConcept("mm", "UCUM", "millimeter"),
            relationship_type=CONTAINS,
        )
    )
    items.append(
        CodeContentItem(
            name=CodedConcept("121071", "DCM", "Finding"),
            value=CodedConcept("39607008", "SCT", "Lung structure"),
            relationship_type=CONTAINS,
        )
    )
    section.ContentSequence = items
    conclusion = ContainerContentItem(name=IMPRESSION, relationship_type=CONTAINS)
    conclusion.ContentSequence = [
        TextContentItem(name=IMPRESSION, value=impression, relationship_type=CONTAINS)
    ]
    observer = PnameContentItem(
        name=CodedConcept("121008", "DCM", "Person Observer Name"),
        value="Li^Ming=李^明",
        relationship_type=RelationshipTypeValues.HAS_OBS_CONTEXT,
    )
    root.ContentSequence = [observer, section, conclusion]
    return root


def make_sr(
    evidence: Dataset,
    findings: list[str],
    impression: str,
    *,
    basic_text: bool = False,
    verified: bool = True,
) -> Dataset:
    """A Comprehensive SR (or, with ``basic_text``, a Basic Text SR) about ``evidence``'s study.

    highdicom writes Comprehensive and Enhanced SR; a Basic Text SR is the same document with
    its SOP Class changed, valid when the tree holds no NUM item (PS3.3 A.35.1: CONTAINER,
    TEXT, CODE, PNAME, DATE, TIME, DATETIME, UIDREF, COMPOSITE, IMAGE, WAVEFORM), so the Basic
    Text variant leaves out the diameter.
    """
    content = report_content(findings, impression, 12.5)
    if basic_text:
        section = content.ContentSequence[1]
        section.ContentSequence = [i for i in section.ContentSequence if i.ValueType != "NUM"]
    sr = hd.sr.ComprehensiveSR(
        evidence=[evidence],
        content=content,
        series_instance_uid=generate_uid(),
        series_number=900,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="cloudfilm tests",
        is_complete=True,
        is_final=verified,
        is_verified=verified,
        verifying_observer_name="Wang^Fang=王^芳" if verified else None,
        verifying_organization="Cloudfilm Demo Hospital" if verified else None,
    )
    sr.SpecificCharacterSet = "ISO_IR 192"
    _unicode_names(sr)
    if basic_text:
        sr.SOPClassUID = BASIC_TEXT_SR
        sr.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    return sr


#: A minimal valid PDF (one empty page) with the text "cloudfilm report" in its info.
PDF_BYTES = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\n"
    b"4 0 obj<</Title(cloudfilm report)>>endobj\n"
    b"trailer<</Root 1 0 R/Info 4 0 R>>\n%%EOF"
)


def make_pdf(evidence: Dataset, pdf: bytes = PDF_BYTES, title: str = "CT 报告") -> Dataset:
    """An Encapsulated PDF instance (PS3.3 A.45.1) in ``evidence``'s study."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = generate_uid()
    for keyword in (
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
        "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName",
    ):  # fmt: skip
        if keyword in evidence:
            setattr(ds, keyword, evidence.data_element(keyword).value)
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 901
    ds.InstanceNumber = 1
    ds.ContentDate = "20240705"
    ds.ContentTime = "101500"
    ds.AcquisitionDateTime = "20240705101500"
    ds.Manufacturer = "cloudfilm tests"
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = title
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    padded = pdf + (b"\x00" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocument = padded
    ds.EncapsulatedDocumentLength = len(pdf)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    _unicode_names(ds)
    return ds


def _unicode_names(ds: Dataset) -> None:
    """Person names copied from the evidence as text: a copied PersonName keeps the bytes it
    was read or written with (GB18030 for some demo studies), which would be written as they
    are under this data set's UTF-8 character set."""
    for keyword in ("PatientName", "ReferringPhysicianName"):
        if keyword in ds:
            setattr(ds, keyword, str(ds.data_element(keyword).value))


# ------------------------------------------------------------------- the demo studies

HOSTILE_NAME = "<script>alert(1)</script>^Evil"
SR_FINDING = "右肺上叶见一枚实性结节，边界清楚 <b>not bold</b>"
SR_IMPRESSION = "考虑良性结节，建议随访"


@dataclass
class Demo:
    """The demo studies: a CT with an SR and a PDF report, an MR, an ultrasound cine."""

    ct: list[Dataset]
    mr: list[Dataset]
    us: list[Dataset]
    sr: Dataset
    pdf: Dataset

    @property
    def ct_study(self) -> str:
        return str(self.ct[0].StudyInstanceUID)

    @property
    def ct_series(self) -> str:
        return str(self.ct[0].SeriesInstanceUID)

    @property
    def mr_study(self) -> str:
        return str(self.mr[0].StudyInstanceUID)

    @property
    def us_study(self) -> str:
        return str(self.us[0].StudyInstanceUID)


def load_demo(archive: Archive, *, ct_slices: int, ct_size: int) -> Demo:
    ct = store_all(
        archive,
        generate_studies(
            modality="CT", slices=ct_slices, rows=ct_size, columns=ct_size, charset="gb18030",
            seed=11,
        ),
    )  # fmt: skip
    sr, pdf = store_all(archive, [make_sr(ct[0], [SR_FINDING], SR_IMPRESSION), make_pdf(ct[0])])
    mr_sets = list(generate_studies(modality="MR", slices=3, rows=64, columns=64, seed=12))
    for ds in mr_sets:
        ds.PatientName = HOSTILE_NAME
        del ds.PixelSpacing  # an image without calibration: lengths in pixels
    mr = store_all(archive, mr_sets)
    us = store_all(
        archive, generate_studies(modality="US", slices=6, rows=96, columns=128, seed=13)
    )
    return Demo(ct, mr, us, sr, pdf)


@dataclass
class Live:
    origin: str
    archive: Archive
    demo: Demo
