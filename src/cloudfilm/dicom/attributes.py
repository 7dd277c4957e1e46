"""What the index keeps of each instance, read from its header.

Values are decoded with the data set's Specific Character Set; a value that cannot be read
(bad VR, broken number) is left out with a note instead of refusing the instance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from cloudfilm.dicom.charset import pn_search_key

logger = logging.getLogger(__name__)


@dataclass
class IndexFields:
    """Index values per level; keys are the column names of ``cloudfilm.index.models``."""

    patient: dict[str, Any] = field(default_factory=dict)
    study: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    instance: dict[str, Any] = field(default_factory=dict)
    #: The patient's other identifiers, for cross-references between institutions (PIX):
    #: ``(ID, issuer, type)`` of each Other Patient IDs Sequence (0010,1002) item, and the
    #: first Patient's Telephone Number (0010,2154). Empty when the data set has neither.
    other_ids: list[tuple[str, str, str]] = field(default_factory=list)
    telephone: str | None = None
    notes: list[str] = field(default_factory=list)


def extract_index_fields(ds: Dataset) -> IndexFields:
    """Read the indexed attributes of every level from ``ds``."""
    out = IndexFields()
    get = _Getter(ds, out.notes)
    name = get.text("PatientName", 400)
    out.patient = {
        "patient_id": get.text("PatientID", 64) or "",
        "issuer": get.text("IssuerOfPatientID", 64) or "",
        "patient_name": name,
        "patient_name_key": pn_search_key(name),
        "birth_date": get.date("PatientBirthDate"),
        "sex": get.text("PatientSex", 16),
    }
    out.study = {
        "study_date": get.date("StudyDate"),
        "study_time": get.time("StudyTime"),
        "accession_number": get.text("AccessionNumber", 64),
        "study_id": get.text("StudyID", 64),
        "description": get.text("StudyDescription", 400),
        "referring_physician_name": get.text("ReferringPhysicianName", 400),
        "institution_name": get.text("InstitutionName", 400),
        "timezone_offset": get.text("TimezoneOffsetFromUTC", 16),
    }
    out.series = {
        "modality": get.text("Modality", 16),
        "series_number": get.integer("SeriesNumber"),
        "description": get.text("SeriesDescription", 400),
        "body_part": get.text("BodyPartExamined", 64),
        "station_name": get.text("StationName", 64),
        "performed_start_date": get.date("PerformedProcedureStepStartDate"),
        "performed_start_time": get.time("PerformedProcedureStepStartTime"),
        "request_attributes": get.request_attributes(),
    }
    out.instance = {
        "instance_number": get.integer("InstanceNumber"),
        "rows": get.integer("Rows"),
        "columns": get.integer("Columns"),
        "bits_allocated": get.integer("BitsAllocated"),
        "number_of_frames": get.integer("NumberOfFrames"),
    }
    if "OtherPatientIDsSequence" in ds:
        out.other_ids = get.other_ids()
    if "PatientTelephoneNumbers" in ds:
        phone = get.text("PatientTelephoneNumbers", 64)
        out.telephone = phone.split("\\")[0].strip() or None if phone else None
    return out


class _Getter:
    def __init__(self, ds: Dataset, notes: list[str]) -> None:
        self.ds, self.notes = ds, notes

    def _value(self, keyword: str) -> Any:
        try:
            return self.ds.get(keyword)
        except Exception as exc:  # a value pydicom cannot convert
            self.notes.append(f"{keyword} unreadable ({exc}); not indexed")
            return None

    def text(self, keyword: str, limit: int) -> str | None:
        value = self._value(keyword)
        if value is None:
            return None
        if not isinstance(value, str) and hasattr(value, "__iter__") and not _is_pn(value):
            value = "\\".join(str(v) for v in value)
        text = str(value).replace("\x00", "").strip()
        if len(text) > limit:
            self.notes.append(f"{keyword} longer than {limit} characters; cut for the index")
            text = text[:limit]
        return text or None

    def date(self, keyword: str) -> str | None:
        text = self.text(keyword, 64)
        if not text:
            return None
        digits = text.replace(".", "").replace("-", "")[:8]  # ACR-NEMA 'YYYY.MM.DD' too
        if len(digits) == 8 and digits.isdigit():
            return digits
        self.notes.append(f"{keyword} {text!r} is not a date; not indexed")
        return None

    def time(self, keyword: str) -> str | None:
        """A TM value as ``HHMMSS[.ffffff]`` (ACR-NEMA colons removed, short forms padded),
        so that range matching can compare strings."""
        text = self.text(keyword, 64)
        if not text:
            return None
        text = text.replace(":", "")
        whole, _, fraction = text.partition(".")
        if (
            not whole.isdigit()
            or len(whole) not in (2, 4, 6)
            or (fraction and not fraction.isdigit())
        ):
            self.notes.append(f"{keyword} {text!r} is not a time; not indexed")
            return None
        whole = whole.ljust(6, "0")
        return f"{whole}.{fraction[:6]}" if fraction else whole

    def integer(self, keyword: str) -> int | None:
        value = self._value(keyword)
        if value is None or value == "":
            return None
        if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            value = value[0] if len(value) else None
            if value is None:
                return None
        try:
            number = int(float(value))
        except (TypeError, ValueError):
            self.notes.append(f"{keyword} {value!r} is not a number; not indexed")
            return None
        return number if -(2**31) <= number < 2**31 else None

    def other_ids(self) -> list[tuple[str, str, str]]:
        """Other Patient IDs Sequence items (at most 16) as ``(ID, issuer, type)``."""
        found: list[tuple[str, str, str]] = []
        for item in self._value("OtherPatientIDsSequence") or ():
            try:
                values = [str(item.get(k) or "").strip()[:64] for k in
                          ("PatientID", "IssuerOfPatientID", "TypeOfPatientID")]  # fmt: skip
            except Exception as exc:
                self.notes.append(f"OtherPatientIDsSequence item unreadable ({exc})")
                continue
            if values[0]:
                found.append((values[0], values[1], values[2]))
            if len(found) == 16:
                break
        return found

    def request_attributes(self) -> list[dict[str, str]] | None:
        seq = self._value("RequestAttributesSequence")
        if not seq:
            return None
        items: list[dict[str, str]] = []
        for item in seq:
            entry = {}
            for keyword in ("RequestedProcedureID", "ScheduledProcedureStepID"):
                value = item.get(keyword)
                if value:
                    entry[keyword] = str(value)
            items.append(entry)
        return items


def _is_pn(value: Any) -> bool:
    return type(value).__name__ == "PersonName"
