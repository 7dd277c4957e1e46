"""What the staff pages accept: the study search and the form that issues a cloud film.

Everything typed into a staff page is checked here before it reaches the index: bounded
lengths, no control characters (PostgreSQL refuses NUL in text, and nothing legitimate holds
one), dates as ``YYYY-MM-DD`` or ``YYYYMMDD``. A value that fails gets a
:class:`~cloudfilm.core.errors.MalformedRequest` naming the field, which the page shows
beside the form (HTTP 400), never a server error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime

from cloudfilm.core.errors import MalformedRequest
from cloudfilm.index.queries import StudyQuery
from cloudfilm.sharing.links import (
    SECRET_KINDS,
    ShareFilter,
    ShareRequest,
    ShareState,
    parse_expiry,
)

#: Studies or shares per page.
PAGE_SIZE = 50
MAX_PAGE = 10_000
#: Expiry choices of the issue form (``parse_expiry`` durations); a date may be given instead.
EXPIRY_CHOICES = ("30d", "90d", "180d", "1y", "2y", "5y")
DEFAULT_EXPIRY = "1y"
_UID = re.compile(r"^[0-9A-Za-z._-]{1,64}$")
_MODALITY = re.compile(r"^[A-Za-z0-9_]{1,16}$")
_SHARE_ID = re.compile(r"^[0-9a-f]{16}$")
#: Control characters (C0, DEL, C1); tab and line breaks are allowed in notes only.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def text_field(
    values: Mapping[str, str], name: str, limit: int, *, multiline: bool = False
) -> str | None:
    """The stripped value of ``name`` (None when empty); refused when too long or holding
    control characters."""
    value = values.get(name, "").strip()
    if not value:
        return None
    if len(value) > limit:
        raise MalformedRequest(f"{name}: at most {limit} characters")
    if (_CONTROL_BUT_LINES if multiline else _CONTROL).search(value):
        raise MalformedRequest(f"{name}: control characters are not allowed")
    return value


def dicom_date(values: Mapping[str, str], name: str) -> str | None:
    """A date field (``YYYY-MM-DD`` from a date input, or ``YYYYMMDD``) as DICOM ``YYYYMMDD``."""
    value = text_field(values, name, 10)
    if value is None:
        return None
    compact = value.replace("-", "")
    try:
        if not (len(compact) == 8 and compact.isascii() and compact.isdigit()):
            raise ValueError(value)
        date(int(compact[:4]), int(compact[4:6]), int(compact[6:]))
    except ValueError as exc:
        raise MalformedRequest(f"{name}: {value!r} is not a date (YYYY-MM-DD)") from exc
    return compact


def page_number(values: Mapping[str, str]) -> int:
    """The ``page`` parameter: 1 to ``MAX_PAGE``."""
    value = values.get("page", "").strip() or "1"
    if not (value.isascii() and value.isdigit() and len(value) <= 6):
        raise MalformedRequest("page: a number from 1")
    number = int(value)
    if not 1 <= number <= MAX_PAGE:
        raise MalformedRequest(f"page: a number from 1 to {MAX_PAGE}")
    return number


def check_uid(value: str, what: str = "study") -> str:
    if not _UID.match(value):
        raise MalformedRequest(f"{what}: {value[:80]!r} is not a DICOM UID")
    return value


def check_share_id(value: str) -> str:
    if not _SHARE_ID.match(value):
        raise MalformedRequest(f"{value[:40]!r} is not a cloud film id (16 hexadecimal digits)")
    return value


@dataclass(frozen=True)
class StudySearch:
    """The study search form, as typed (for showing it again) and as an index query."""

    values: dict[str, str]
    query: StudyQuery
    page: int

    @property
    def empty(self) -> bool:
        return not any(self.values.values())


SEARCH_FIELDS = ("name", "patient_id", "accession", "date_from", "date_to", "modality")
#: First code point treated as an ideograph, kana or hangul (CJK radicals onwards).
_CJK_START = 0x2E80


def name_pattern(typed: str) -> str:
    """A Person Name pattern for a name as staff type it.

    DICOM separates name components with ``^`` (``李^四``, ``Li^Si``); people do not. Unless
    the typed text holds a wildcard or ``^`` (then it is used as it is), its words and each
    CJK character become the parts of a pattern that matches them in order, whatever lies
    between: ``李四`` → ``*李*四*``, ``li si`` → ``*li*si*``, ``zhang`` → ``*zhang*``.
    """
    if any(c in typed for c in "*?^"):
        return typed
    parts: list[str] = []
    for word in typed.split():
        latin = ""
        for char in word:
            if ord(char) >= _CJK_START:
                parts += [latin] if latin else []
                parts.append(char)
                latin = ""
            else:
                latin += char
        parts += [latin] if latin else []
    return "*" + "*".join(parts) + "*"


def parse_search(params: Mapping[str, str]) -> StudySearch:
    """The search parameters (query string) of the staff home page."""
    values = {name: params.get(name, "").strip()[:200] for name in SEARCH_FIELDS}
    modality = text_field(params, "modality", 16)
    if modality is not None and not _MODALITY.match(modality):
        raise MalformedRequest("modality: letters and digits, such as CT or MR")
    date_from, date_to = dicom_date(params, "date_from"), dicom_date(params, "date_to")
    if date_from and date_to and date_from > date_to:
        raise MalformedRequest("date_from: the range starts after it ends")
    page = page_number(params)
    name = text_field(params, "name", 64)
    query = StudyQuery(
        patient_name=name_pattern(name) if name else None,
        patient_id=text_field(params, "patient_id", 64),
        accession_number=text_field(params, "accession", 64),
        date_from=date_from,
        date_to=date_to,
        modality=modality.upper() if modality else None,
        limit=PAGE_SIZE + 1,  # one more: is there a next page?
        offset=(page - 1) * PAGE_SIZE,
    )
    return StudySearch(values, query, page)


SHARE_FILTER_FIELDS = ("state", "patient_id", "accession", "study_uid", "roots")


def parse_share_filter(params: Mapping[str, str]) -> tuple[dict[str, str], ShareFilter, int]:
    """The filters of the list of cloud films: typed values, the filter, the page."""
    values = {name: params.get(name, "").strip()[:200] for name in SHARE_FILTER_FIELDS}
    state_text = text_field(params, "state", 16)
    try:
        state = ShareState(state_text) if state_text else None
    except ValueError as exc:
        choices = ", ".join(s.value for s in ShareState)
        raise MalformedRequest(f"state: one of {choices}") from exc
    study_uid = text_field(params, "study_uid", 64)
    page = page_number(params)
    found = ShareFilter(
        study_uid=check_uid(study_uid) if study_uid else None,
        patient_id=text_field(params, "patient_id", 64),
        accession_number=text_field(params, "accession", 64),
        state=state,
        roots_only=params.get("roots", "") == "1",
        limit=PAGE_SIZE + 1,
        offset=(page - 1) * PAGE_SIZE,
    )
    return values, found, page


def parse_issue(form: Mapping[str, str], created_by: str, now: datetime) -> ShareRequest:
    """The issue form: a study (or an accession number), expiry, protection, permissions."""
    study_uid = text_field(form, "study_uid", 64)
    accession = text_field(form, "accession_number", 64)
    if study_uid is None and accession is None:
        raise MalformedRequest("name a study, or an accession number")
    expires_on = text_field(form, "expires_on", 10)
    choice = text_field(form, "expires", 16) or DEFAULT_EXPIRY
    if expires_on is None and choice not in EXPIRY_CHOICES:
        raise MalformedRequest(f"expires: one of {', '.join(EXPIRY_CHOICES)}, or a date")
    if expires_on is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", expires_on):
        raise MalformedRequest("expires_on: a date YYYY-MM-DD")
    protection = text_field(form, "protection", 16) or "code"
    if protection not in SECRET_KINDS:
        raise MalformedRequest(f"protection: one of {', '.join(SECRET_KINDS)}")
    permissions = ["view"] + [p for p in ("download", "reshare") if form.get(p)]
    return ShareRequest(
        study_uids=[check_uid(study_uid)] if study_uid else [],
        accession_number=accession,
        expires_at=parse_expiry(expires_on or choice, now),
        secret=protection,
        check_answer=text_field(form, "check_answer", 64),
        permissions=permissions,
        label=text_field(form, "label", 200) or "",
        note=text_field(form, "note", 1000, multiline=True) or "",
        created_by=created_by,
    )
