"""Reports attached by staff, stored as real DICOM objects in the study (made with highdicom).

``POST /api/studies/{study_uid}/reports`` takes

* ``application/json``: ``{"text": ..., "title": ..., "author": ...}`` or, for a report with
  headings, ``{"sections": [{"heading": "影像所见", "text": ...}, ...], ...}``. It becomes a
  Comprehensive SR (PS3.3 A.35.3) following TID 2000 "Basic Diagnostic Imaging Report"
  (PS3.16): a root CONTAINER (LOINC 18748-4 "Diagnostic Imaging Report"), the author as
  observer context (TID 1002), and one CONTAINER per section holding its TEXT. Headings that
  name a section of CID 7001 (findings, impression, conclusion, history...; in Chinese or
  English) get its DCM code with the heading as Code Meaning; any other heading gets a code of
  our private scheme ``99CLOUDFILM`` (declared in the Coding Scheme Identification Sequence).
  The tree uses only CONTAINER and TEXT items related by CONTAINS and HAS OBS CONTEXT, so it is
  valid Basic Text SR content too.
* ``application/pdf`` (``?title=`` optional): an Encapsulated PDF (PS3.3 A.45.1), modality DOC.

Each report is a new series in the study (next free Series Number), written in Explicit VR
Little Endian with Specific Character Set ``ISO_IR 192`` (UTF-8), so Chinese text survives
whatever character set the images use. Patient and study attributes are copied from a stored
instance of the study (its cached header, decoded to Unicode); the study's other instances are
listed as evidence (Current Requested Procedure Evidence Sequence). The object is stored
through :meth:`Archive.store`, so it travels with the study: DICOMweb, DIMSE, the media ZIP.
"""

from __future__ import annotations

import io
import json
import logging
import re
import string
import warnings
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select

if TYPE_CHECKING:
    import highdicom as hd

from cloudfilm import __version__
from cloudfilm.api.deps import ArchiveDep, PrincipalDep, SettingsDep
from cloudfilm.archive import Archive
from cloudfilm.core.errors import (
    Forbidden,
    InvalidDicom,
    MalformedRequest,
    NotFound,
    StorageFailure,
    TooLarge,
    UnsupportedMediaType,
)
from cloudfilm.dicom.dicomdir import header_from_json
from cloudfilm.dicomweb.access import check_uids
from cloudfilm.dicomweb.lookup import StoredInstance, find_instances, headers_of
from cloudfilm.dicomweb.media import parse_content_type
from cloudfilm.index.models import Series, Study

logger = logging.getLogger(__name__)

__all__ = [
    "ReportRequest",
    "ReportSection",
    "StoredReport",
    "make_pdf_report",
    "make_text_report",
    "normalised_header",
    "router",
    "store_pdf_report",
    "store_text_report",
    "study_context",
]

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
UTF8 = "ISO_IR 192"
MANUFACTURER = "cloudfilm"
PRIVATE_SCHEME = "99CLOUDFILM"
#: Longest Code Meaning (LO) and Series Description (LO), in characters (PS3.5 6.2).
LO_CHARS = 64
#: Most sections in one report.
MAX_SECTIONS = 50

#: (code value, scheme, meaning) of the report's title and of the observer concepts.
_REPORT = ("18748-4", "LN", "Diagnostic Imaging Report")
_PERSON = ("121006", "DCM", "Person")
#: Section headings of CID 7001 and the report element (CID 7002) of their text, with the words
#: (lower case, Chinese and English) that name them.
_SECTIONS: list[tuple[tuple[str, str], tuple[str, str], tuple[str, ...]]] = [
    (("121060", "History"), ("121060", "History"),
     ("history", "clinical history", "病史", "临床病史", "临床资料", "临床信息", "简要病史")),
    (("121062", "Request"), ("121062", "Request"), ("request", "申请", "检查申请", "检查目的")),
    (("121064", "Current Procedure Descriptions"), ("121065", "Procedure Description"),
     ("procedure", "technique", "检查方法", "检查技术", "扫描方法", "检查项目")),
    (("121070", "Findings"), ("121071", "Finding"),
     ("findings", "finding", "影像所见", "所见", "检查所见", "影像表现", "表现")),
    (("121072", "Impressions"), ("121073", "Impression"),
     ("impression", "impressions", "印象", "诊断", "诊断意见", "影像诊断", "意见", "诊断印象")),
    (("121076", "Conclusions"), ("121077", "Conclusion"),
     ("conclusion", "conclusions", "结论", "检查结论")),
    (("121075", "Recommendations"), ("121074", "Recommendation"),
     ("recommendation", "recommendations", "建议")),
    (("121078", "Addendum"), ("121078", "Addendum"), ("addendum", "补充", "补充报告", "附注")),
]  # fmt: skip
_FINDINGS = _SECTIONS[3]
_PDF_TAIL = 1024  # %%EOF must be within the last 1024 bytes (as PDF readers search)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class ReportSection(BaseModel):
    """One headed part of a text report."""

    model_config = ConfigDict(extra="forbid")

    heading: str = Field(min_length=1, max_length=LO_CHARS)
    text: str = Field(min_length=1)


class ReportRequest(BaseModel):
    """A text report as staff send it (either ``text`` or ``sections``)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, min_length=1)
    sections: list[ReportSection] | None = Field(None, min_length=1, max_length=MAX_SECTIONS)
    title: str | None = Field(None, max_length=LO_CHARS)
    author: str | None = Field(None, max_length=LO_CHARS)

    @model_validator(mode="after")
    def _one_body(self) -> ReportRequest:
        if (self.text is None) == (self.sections is None):
            raise ValueError("give either text or sections")
        for value in [self.text, self.title, self.author] + [
            v for s in self.sections or [] for v in (s.heading, s.text)
        ]:
            if value is not None and (_CONTROL.search(value) or not value.strip()):
                raise ValueError("text fields must not be blank or hold control characters")
        if self.author and not _person_name(self.author):
            raise ValueError(
                "author must be a name, or a DICOM Person Name (components joined by ^, at "
                "most 5; groups by =, at most 3; no backslash)"
            )
        return self

    def parts(self) -> list[ReportSection]:
        if self.sections is not None:
            return self.sections
        return [ReportSection(heading="Findings", text=self.text or "")]


class StoredReport(BaseModel):
    """The answer: where the report is now."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    status: str


# ------------------------------------------------------------------------- building objects


def make_text_report(
    evidence: list[Dataset],
    report: ReportRequest,
    series_number: int,
    now: datetime | None = None,
) -> Dataset:
    """A Comprehensive SR of ``report`` in the study of ``evidence[0]`` (see module docstring).

    ``evidence[0]`` is the header of a stored instance (patient and study attributes are copied
    from it); the others need only their study, series, SOP class and instance UIDs.
    """
    import highdicom as hd  # imported when a report is made: it is large and rarely needed
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    now = now or datetime.now()
    root = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept(*_REPORT), template_id="2000")
    items: list[hd.sr.ContentItem] = []
    if report.author:
        with warnings.catch_warnings():  # a one-component name ("王医生") is fine here
            warnings.simplefilter("ignore")
            observer = hd.sr.ObserverContext(
                observer_type=hd.sr.CodedConcept(*_PERSON),
                observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                    name=report.author.strip()
                ),
            )
        items.extend(item for item in observer)
    private = False
    for part in report.parts():
        heading, element, is_private = _section_codes(part.heading)
        private |= is_private
        section = hd.sr.ContainerContentItem(name=heading, relationship_type="CONTAINS")
        text = hd.sr.TextContentItem(
            name=element, value=_clean_text(part.text), relationship_type="CONTAINS"
        )
        section.ContentSequence = hd.sr.ContentSequence([text])
        items.append(section)
    root.ContentSequence = hd.sr.ContentSequence(items)
    first = normalised_header(evidence[0])
    extra: dict[str, Any] = {}
    if private:
        extra["coding_schemes"] = [
            CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME, name="cloudfilm report headings"
            )
        ]
    return hd.sr.ComprehensiveSR(
        evidence=[first, *evidence[1:]],
        content=root,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=True,
        institution_name=_lo(first.get("InstitutionName")),
        series_description=_lo(report.title) or "Report",
        software_versions=__version__,
        content_date=now.date(),
        content_time=now.time(),
        specific_character_set=UTF8,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        **extra,
    )


def make_pdf_report(
    evidence: Dataset,
    pdf: bytes,
    series_number: int,
    title: str | None = None,
    now: datetime | None = None,
) -> Dataset:
    """An Encapsulated PDF (PS3.3 A.45.1) of ``pdf`` in the study of ``evidence``."""
    import highdicom as hd

    check_pdf(pdf)
    now = now or datetime.now()
    source = normalised_header(evidence)
    ds = hd.base.SOPClass(
        study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        sop_class_uid=ENCAPSULATED_PDF,
        instance_number=1,
        modality="DOC",
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=_lo(title) or "Report",
        software_versions=__version__,
        institution_name=_lo(source.get("InstitutionName")),
        content_date=now.date(),
        content_time=now.time(),
        specific_character_set=UTF8,
    )
    ds.copy_patient_and_study_information(source)
    ds.SpecificCharacterSet = UTF8
    ds.ConversionType = "WSD"  # SC Equipment: workstation (PS3.3 C.8.6.1)
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"  # a report names the patient
    ds.DocumentTitle = title or ""
    ds.ConceptNameCodeSequence = [hd.sr.CodedConcept(*_REPORT)]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    # An odd-length document is padded with one NUL; its own length is kept (PS3.3 C.24.2).
    ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    return ds


def check_pdf(data: bytes) -> None:
    """Refuse what is not a complete PDF file (ISO 32000-1 7.5.2 header, 7.5.5 trailer)."""
    if not data.startswith(b"%PDF-"):
        raise MalformedRequest("the body is not a PDF document (it does not start with %PDF-)")
    if b"%%EOF" not in data[-_PDF_TAIL:]:
        raise MalformedRequest("the PDF document is incomplete (no %%EOF at its end)")


def _section_codes(heading: str) -> tuple[hd.sr.CodedConcept, hd.sr.CodedConcept, bool]:
    """Heading and report-element codes for a section heading; True for a private code."""
    import highdicom as hd

    meaning = heading.strip()[:LO_CHARS]
    key = meaning.lower().strip(string.punctuation + "：: ")
    for (code, _), (element, element_meaning), words in _SECTIONS:
        if key in words:
            return (
                hd.sr.CodedConcept(code, "DCM", meaning),
                hd.sr.CodedConcept(element, "DCM", element_meaning),
                False,
            )
    (_, _), (element, element_meaning), _ = _FINDINGS
    return (
        hd.sr.CodedConcept("SECTION", PRIVATE_SCHEME, meaning),
        hd.sr.CodedConcept(element, "DCM", element_meaning),
        True,
    )


def _person_name(value: str) -> bool:
    """Whether ``value`` can be one DICOM Person Name value (PS3.5 6.2.1)."""
    groups = value.split("=")
    return "\\" not in value and len(groups) <= 3 and all(g.count("^") <= 4 for g in groups)


def _clean_text(text: str) -> str:
    """Line ends as CR LF, which PS3.5 6.2 names for UT/LT/ST text."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip("\n").replace("\n", "\r\n")


def _lo(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text[:LO_CHARS] or None


def normalised_header(header: Dataset) -> Dataset:
    """A copy of a stored header with what highdicom requires present and well formed.

    Archived data is odd at times; the new object must still be valid, so a Type 2 attribute
    whose value cannot be written as it is (a malformed date, an unknown sex) is left empty.
    """
    ds = Dataset()
    ds.update(header)
    for keyword in ("PatientID", "PatientName", "AccessionNumber", "StudyID"):
        if keyword not in ds or ds[keyword].value is None:
            setattr(ds, keyword, "")
    ds.PatientBirthDate = _valid(ds.get("PatientBirthDate"), r"\d{8}")
    ds.StudyDate = _valid(ds.get("StudyDate"), r"\d{8}")
    ds.StudyTime = _valid(ds.get("StudyTime"), r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
    sex = str(ds.get("PatientSex") or "").strip().upper()
    ds.PatientSex = sex if sex in ("M", "F", "O") else None
    return ds


def _valid(value: object, pattern: str) -> str | None:
    text = str(value or "").strip()
    return text if re.fullmatch(pattern, text) else None


# ---------------------------------------------------------------------------- the archive


def study_context(archive: Archive, study_uid: str) -> tuple[list[Dataset], int]:
    """Evidence for a new report in the study, and the next free Series Number."""
    with archive.engine.connect() as conn:
        instances = find_instances(conn, study_uid)
        images = [i for i in instances if not _is_document(i)] or instances
        header = headers_of(conn, [images[0].pk]).get(images[0].pk)
        highest = conn.execute(
            select(func.max(Series.series_number))
            .join(Study, Study.pk == Series.study_pk)
            .where(Study.study_uid == study_uid)
        ).scalar_one()
    if header is None:
        raise NotFound(f"study {study_uid} not found")
    evidence = [header_from_json(header)] + [_reference(i) for i in images[1:]]
    return evidence, max(int(highest or 0) + 1, 1)


def _is_document(inst: StoredInstance) -> bool:
    uid = inst.sop_class_uid
    return uid.startswith(("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.104."))


def _reference(inst: StoredInstance) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = inst.study_uid
    ds.SeriesInstanceUID = inst.series_uid
    ds.SOPClassUID = inst.sop_class_uid
    ds.SOPInstanceUID = inst.sop_instance_uid
    return ds


def _store(archive: Archive, ds: Dataset) -> StoredReport:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    result = archive.store(buffer.getvalue(), source="report")
    if not result.ok:
        raise result.error or StorageFailure(result.reason or "the report was not stored")
    logger.info("report %s stored in study %s", result.sop_instance_uid, result.study_uid)
    return StoredReport(
        study_uid=str(result.study_uid),
        series_uid=str(result.series_uid),
        sop_instance_uid=str(result.sop_instance_uid),
        sop_class_uid=str(result.sop_class_uid),
        status=result.status.value,
    )


def store_text_report(archive: Archive, study_uid: str, report: ReportRequest) -> StoredReport:
    """Make the SR of ``report`` in the study and store it. NotFound for an unknown study."""
    evidence, series_number = study_context(archive, study_uid)
    try:
        ds = make_text_report(evidence, report, series_number)
    except (ValueError, TypeError, AttributeError) as exc:
        message = f"no report can be made from this study's stored attributes: {exc}"
        raise InvalidDicom(message) from exc
    return _store(archive, ds)


def store_pdf_report(
    archive: Archive, study_uid: str, pdf: bytes, title: str | None = None
) -> StoredReport:
    """Make the Encapsulated PDF in the study and store it. NotFound for an unknown study."""
    check_pdf(pdf)
    evidence, series_number = study_context(archive, study_uid)
    try:
        ds = make_pdf_report(evidence[0], pdf, series_number, title)
    except (ValueError, TypeError, AttributeError) as exc:
        message = f"no report can be made from this study's stored attributes: {exc}"
        raise InvalidDicom(message) from exc
    return _store(archive, ds)


# --------------------------------------------------------------------------------- route

router = APIRouter(tags=["reports"])


@router.post("/api/studies/{study_uid}/reports", status_code=201)
async def attach_report(
    request: Request,
    study_uid: Annotated[str, Path(description="Study Instance UID")],
    archive: ArchiveDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    title: Annotated[str | None, Query(max_length=LO_CHARS)] = None,
) -> JSONResponse:
    """Attach a report (JSON text or a PDF body) to a study as a new DICOM series."""
    check_uids(study_uid)
    if not principal.can_view_study(study_uid):
        raise NotFound(f"study {study_uid} not found")
    if not principal.can_store() or not principal.can_change_study(study_uid):
        raise Forbidden("attaching reports needs a staff account that may store, of a hospital "
                        "that holds the exam")  # fmt: skip
    media = parse_content_type(request.headers.get("content-type"))
    if media.type not in ("application/json", "application/pdf"):
        raise UnsupportedMediaType(
            f"a report is sent as application/json or application/pdf, not {media.type}"
        )
    body = await _read_body(request, settings.report_max_bytes)
    stored: StoredReport
    if media.type == "application/pdf":
        if title is not None and _CONTROL.search(title):
            raise MalformedRequest("title must not hold control characters")
        stored = await run_in_threadpool(store_pdf_report, archive, study_uid, body, title)
    else:
        report = _parse_report(body)
        stored = await run_in_threadpool(store_text_report, archive, study_uid, report)
    return JSONResponse(stored.model_dump(), status_code=201)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"a report of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"a report may have at most {limit} bytes")
        chunks.append(chunk)
    if not size:
        raise MalformedRequest("the request body is empty")
    return b"".join(chunks)


def _parse_report(body: bytes) -> ReportRequest:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRequest(f"the body is not JSON in UTF-8: {exc}") from exc
    try:
        return ReportRequest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise MalformedRequest(f"invalid report: {problems}") from exc
