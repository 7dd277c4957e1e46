"""Reports in a study, for the patient page: DICOM SR as readable text, Encapsulated PDF inline.

Structured Reports (PS3.3 C.17.3, SR Document Content module) are a tree of content items.
:func:`sr_html` walks it from the root: a CONTAINER becomes a heading with its children below;
TEXT, CODE, NUM, DATE, TIME, DATETIME, PNAME and UIDREF items become "name: value" lines; items
a person cannot read (spatial and temporal coordinates, image and waveform references, content
by reference) are left out. Every value is escaped: an SR is untrusted input.

Encapsulated PDF (PS3.3 A.45.1) is served by WADO-RS ``/rendered`` of the instance as
``application/pdf`` (PS3.18 8.3.5.1); the page shows it in an ``<object>`` with a plain link
beside it, because WeChat's in-app browser does not display PDFs inside a page.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup, escape
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from cloudfilm.archive import Archive
from cloudfilm.core.errors import CloudFilmError
from cloudfilm.dicom.frames import read_header
from cloudfilm.dicomweb.lookup import StoredInstance

logger = logging.getLogger(__name__)

#: SR Storage SOP classes share this root (PS3.4 B.5); Key Object Selection is no report.
SR_CLASS_ROOT = "1.2.840.10008.5.1.4.1.1.88."
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"

#: Deepest nesting and most content items rendered (hostile or broken trees are cut there).
MAX_DEPTH = 32
MAX_ITEMS = 5000

_HIDDEN_TYPES = {"SCOORD", "SCOORD3D", "TCOORD", "IMAGE", "WAVEFORM", "COMPOSITE"}


def report_kind(sop_class_uid: str) -> str | None:
    """``"sr"``, ``"pdf"`` or None for a SOP Class UID."""
    if sop_class_uid == ENCAPSULATED_PDF:
        return "pdf"
    if sop_class_uid.startswith(SR_CLASS_ROOT) and sop_class_uid != KEY_OBJECT_SELECTION:
        return "sr"
    return None


@dataclass(frozen=True)
class Report:
    """One report of a study, ready for the page."""

    kind: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    title: str
    #: ``YYYY-MM-DD[ HH:MM]`` of the content (Content Date/Time), or ''.
    date: str = ""
    #: Completion Flag (0040,A491): COMPLETE or PARTIAL; '' when absent or for PDF.
    completion: str = ""
    #: Verification Flag (0040,A493): VERIFIED or UNVERIFIED; '' when absent or for PDF.
    verification: str = ""
    #: Verifying Observer Name of the first verifier, formatted for display.
    verifier: str = ""
    #: The SR content as escaped HTML (headings, paragraphs, lists); empty for PDF.
    html: Markup = field(default_factory=Markup)
    #: True when the stored object could not be read (the page says so).
    unreadable: bool = False

    def rendered_path(self) -> str:
        """Path below the DICOMweb root of the instance's ``/rendered`` resource."""
        return (
            f"/studies/{self.study_uid}/series/{self.series_uid}"
            f"/instances/{self.sop_instance_uid}/rendered"
        )


def find_reports(archive: Archive, instances: Sequence[StoredInstance]) -> list[Report]:
    """The reports among a study's instances, in the order given (series, instance number)."""
    found = []
    for inst in instances:
        kind = report_kind(inst.sop_class_uid)
        if kind is not None:
            found.append(read_report(archive, inst, kind))
    return found


def read_report(archive: Archive, inst: StoredInstance, kind: str) -> Report:
    """Read one stored SR or PDF instance; an unreadable one gives ``unreadable=True``."""
    ids = (kind, inst.study_uid, inst.series_uid, inst.sop_instance_uid)
    try:
        with archive.blobs.open(inst.blob_key) as fp:
            ds = read_header(fp, inst.dataset_offset, inst.transfer_syntax_uid)
        return report_of(ds, *ids)
    except (CloudFilmError, OSError, ValueError, TypeError, AttributeError) as exc:
        logger.warning("report %s cannot be read: %s", inst.sop_instance_uid, exc)
        return Report(*ids, title="", unreadable=True)


def report_of(ds: Dataset, kind: str, study: str, series: str, sop: str) -> Report:
    """A :class:`Report` from a parsed SR or Encapsulated PDF data set."""
    date = _date_time(str(ds.get("ContentDate", "") or ""), str(ds.get("ContentTime", "") or ""))
    if kind == "pdf":
        title = str(ds.get("DocumentTitle", "") or "") or _concept_name(ds)
        return Report(kind, study, series, sop, title=title, date=date)
    verifier = ""
    for observer in ds.get("VerifyingObserverSequence", None) or []:
        verifier = person_name(observer.get("VerifyingObserverName", ""))
        break
    return Report(
        kind,
        study,
        series,
        sop,
        title=_concept_name(ds) or str(ds.get("SeriesDescription", "") or ""),
        date=date,
        completion=str(ds.get("CompletionFlag", "") or "").strip().upper(),
        verification=str(ds.get("VerificationFlag", "") or "").strip().upper(),
        verifier=verifier,
        html=sr_html(ds),
    )


# --------------------------------------------------------------------------- SR content tree


def sr_html(ds: Dataset) -> Markup:
    """The content tree of an SR document (below its root) as escaped HTML.

    Headings start at ``<h4>`` (the page uses ``h2``/``h3`` for the exam and the report title)
    and stop at ``<h6>``.
    """
    budget = [MAX_ITEMS]
    parts = list(_items(ds.get("ContentSequence", None) or [], 0, budget, _concept_name(ds)))
    return Markup("".join(parts))


def _items(items: Sequence[Dataset], depth: int, budget: list[int], parent: str) -> Iterator[str]:
    """HTML of a run of sibling content items; leaves are grouped into one list.

    ``parent`` is the concept name of the enclosing item: a leaf of the same name (an
    "Impressions" text in an "Impressions" section) is shown without repeating it.
    """
    leaves: list[str] = []
    for item in items:
        if budget[0] <= 0 or depth >= MAX_DEPTH:
            break
        budget[0] -= 1
        value_type = str(item.get("ValueType", "") or "").upper()
        if value_type == "CONTAINER":
            if leaves:
                yield _list(leaves)
                leaves = []
            yield from _container(item, depth, budget)
            continue
        line = _leaf(item, value_type, depth, budget, parent)
        if line:
            leaves.append(line)
    if leaves:
        yield _list(leaves)


def _container(item: Dataset, depth: int, budget: list[int]) -> Iterator[str]:
    name = _concept_name(item)
    inner = "".join(_items(item.get("ContentSequence", None) or [], depth + 1, budget, name))
    if not inner:
        return
    level = min(4 + depth, 6)
    heading = f"<h{level}>{escape(name)}</h{level}>" if name else ""
    yield f'<section class="sr-section">{heading}{inner}</section>'


def _leaf(item: Dataset, value_type: str, depth: int, budget: list[int], parent: str) -> str:
    """``<li>`` of one non-container item (with its children below), or '' when hidden."""
    if value_type in _HIDDEN_TYPES or "ReferencedContentItemIdentifier" in item:
        return ""
    value = item_value(item, value_type)
    name = _concept_name(item)
    children = "".join(_items(item.get("ContentSequence", None) or [], depth + 1, budget, name))
    if not value and not children:
        return ""
    label = f'<span class="sr-name">{escape(name)}</span> ' if name and name != parent else ""
    text = f'<span class="sr-value">{escape(value)}</span>' if value else ""
    return f"<li>{label}{text}{children}</li>"


def _list(leaves: list[str]) -> str:
    return f'<ul class="sr-items">{"".join(leaves)}</ul>'


def item_value(item: Dataset, value_type: str) -> str:
    """The displayed value of a content item (PS3.3 C.17.3.2.1 and Table C.18.1-1)."""
    if value_type == "TEXT":
        return str(item.get("TextValue", "") or "")
    if value_type == "CODE":
        return _code_meaning(item.get("ConceptCodeSequence", None))
    if value_type == "NUM":
        return _numeric(item)
    if value_type == "DATE":
        return _date_time(str(item.get("Date", "") or ""), "")
    if value_type == "TIME":
        return _time(str(item.get("Time", "") or ""))
    if value_type == "DATETIME":
        raw = str(item.get("DateTime", "") or "")
        return _date_time(raw[:8], raw[8:])
    if value_type == "PNAME":
        return person_name(item.get("PersonName", ""))
    if value_type == "UIDREF":
        return str(item.get("UID", "") or "")
    return ""


def _numeric(item: Dataset) -> str:
    """Numeric Value with its unit (UCUM code when short, else the unit's meaning)."""
    measured = item.get("MeasuredValueSequence", None) or []
    if not measured:
        return _code_meaning(item.get("NumericValueQualifierCodeSequence", None))
    value_item = measured[0]
    number = str(value_item.get("NumericValue", "") or "").strip()
    units = value_item.get("MeasurementUnitsCodeSequence", None) or []
    unit = ""
    if units:
        code = str(units[0].get("CodeValue", "") or "")
        meaning = str(units[0].get("CodeMeaning", "") or "")
        if code == "1":
            unit = ""  # UCUM "no units"
        elif code and len(code) <= 8 and not any(c in code for c in "[{"):
            unit = code
        else:
            unit = meaning
    return f"{number} {unit}".strip()


def _concept_name(item: Dataset) -> str:
    return _code_meaning(item.get("ConceptNameCodeSequence", None))


def _code_meaning(sequence: Any) -> str:
    if not sequence:
        return ""
    code = sequence[0]
    return str(code.get("CodeMeaning", "") or code.get("CodeValue", "") or "")


# ------------------------------------------------------------------------------ formatting


def person_name(value: Any) -> str:
    """A Person Name for display: ideographic and alphabetic groups, components joined.

    ``Zhang^San=张^三`` gives ``张三 (Zhang San)``. Components keep DICOM order (family name
    first, as in Chinese): ``Doe^John`` gives ``Doe John``.
    """
    if not value:
        return ""
    name = value if isinstance(value, PersonName) else PersonName(str(value))
    alphabetic = " ".join(p for p in str(name.alphabetic or "").split("^") if p.strip())
    ideographic = "".join(p.strip() for p in str(name.ideographic or "").split("^"))
    if ideographic and alphabetic:
        return f"{ideographic} ({alphabetic})"
    return ideographic or alphabetic or str(name.phonetic or "").replace("^", " ").strip()


def _date_time(date: str, time: str) -> str:
    date = date.strip()
    if len(date) != 8 or not date.isdigit():
        return date
    text = f"{date[:4]}-{date[4:6]}-{date[6:8]}"
    clock = _time(time)
    return f"{text} {clock}" if clock else text


def _time(time: str) -> str:
    digits = time.strip().split(".")[0]
    if len(digits) >= 4 and digits[:4].isdigit():
        return f"{digits[:2]}:{digits[2:4]}"
    return ""
