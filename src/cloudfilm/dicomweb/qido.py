"""QIDO-RS (PS3.18 10.6): search for studies, series and instances, from the index only.

Matching is the shared engine's (``cloudfilm.index.matching``, PS3.4 C.2.2.2); this module
reads the query parameters, adds sequence matching on Request Attributes Sequence, and writes
each match with the attributes PS3.18 Tables 10.6.3-3/4/5 require, plus those matched on or
named in ``includefield``. Parameters:

- ``{attributeID}={value}``: a keyword, a tag (``00100010``) or, for Request Attributes
  Sequence, a dotted path (``RequestAttributesSequence.RequestedProcedureID``). UID keys may be
  repeated or hold a comma- or backslash-separated list. A DICOM attribute this level cannot
  match on is ignored, and a ``Warning`` header names it; a name that is no DICOM attribute at
  all is a 400.
- ``includefield``: names, tags or ``all`` (repeated or comma-separated). At the instance level
  ``all`` and names outside the index come from the cached header of each instance.
- ``fuzzymatching=true``: person names match when each word of the value begins some name
  component, in any group, case-insensitively.
- ``limit``/``offset``: pages (default ``qido_default_limit``, at most ``qido_max_limit``);
  when more results exist a ``Warning`` header says so (PS3.18 8.3.4.4).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from fastapi import Request, Response
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import String, cast
from sqlalchemy.sql.elements import ColumnElement

from cloudfilm.access.visibility import study_condition
from cloudfilm.api.deps import Principal
from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.core.errors import InvalidQuery, NotAcceptable
from cloudfilm.dicomweb.caching import REVALIDATE
from cloudfilm.dicomweb.media import parse_accept
from cloudfilm.dicomweb.multipart import encode_parts, new_boundary, related_content_type
from cloudfilm.dicomweb.native_xml import to_native_xml
from cloudfilm.dicomweb.urls import instance_url, series_url, study_url
from cloudfilm.index.matching import ATTRIBUTES, SUPPORTED_KEYS, Level, build_query
from cloudfilm.index.models import Series
from cloudfilm.index.queries import like_pattern

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
MORE_RESULTS = (
    "The number of results exceeded the maximum supported by the server. "
    "Additional results can be requested."
)
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_REQUEST_ATTRIBUTES = "RequestAttributesSequence"
_SEQUENCE_KEYS = {"RequestedProcedureID", "ScheduledProcedureStepID"}
_CONTROL = {"limit", "offset", "fuzzymatching", "includefield"}
#: Longest query value we accept (PS3.4 values are at most 64 characters; lists are longer).
MAX_VALUE_CHARS = 4096
MAX_PARAMETERS = 100

_STUDY_FIELDS = (
    "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName",
    "TimezoneOffsetFromUTC", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    "StudyDescription",
)  # fmt: skip
_SERIES_FIELDS = (
    "Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
    "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "StudyInstanceUID", "TimezoneOffsetFromUTC",
)  # fmt: skip
_INSTANCE_FIELDS = (
    "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
    "NumberOfFrames", "StudyInstanceUID", "SeriesInstanceUID", "TimezoneOffsetFromUTC",
)  # fmt: skip


@dataclass
class Query:
    """A QIDO-RS request, read and checked."""

    level: Level
    keys: dict[str, str] = field(default_factory=dict)
    sequence_keys: dict[str, str] = field(default_factory=dict)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    fuzzy: bool = False
    limit: int = 100
    offset: int = 0
    warnings: list[str] = field(default_factory=list)


@lru_cache(maxsize=4096)
def _keyword(name: str) -> str | None:
    """The DICOM keyword for a keyword or an 8-digit tag; None when it names nothing."""
    if _TAG.match(name):
        keyword = keyword_for_tag(int(name, 16))
        return str(keyword) if keyword else None
    return name if tag_for_keyword(name) is not None else None


@lru_cache(maxsize=4096)
def _tag_and_vr(keyword: str) -> tuple[str, str]:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    vr = str(dictionary_VR(tag))
    return f"{tag:08X}", vr.split(" or ")[0]


def _int_param(name: str, value: str) -> int:
    if not value.isdigit() or len(value) > 9:
        raise InvalidQuery(f"{name} must be an unsigned integer, not {value[:40]!r}")
    return int(value)


def parse_query(request: Request, level: Level, settings: Settings) -> Query:
    """Read the query parameters of a QIDO-RS request (``InvalidQuery`` on bad syntax)."""
    query = Query(level=level, limit=settings.qido_default_limit)
    items = request.query_params.multi_items()
    if len(items) > MAX_PARAMETERS:
        raise InvalidQuery(f"more than {MAX_PARAMETERS} query parameters")
    limit: int | None = None
    unsupported: list[str] = []
    for name, value in items:
        if "\x00" in name or "\x00" in value:
            raise InvalidQuery("query parameters must not hold NUL characters")
        if len(value) > MAX_VALUE_CHARS:
            raise InvalidQuery(f"the value of {name[:64]} is longer than {MAX_VALUE_CHARS}")
        if name == "limit":
            limit = _int_param(name, value)
        elif name == "offset":
            query.offset = _int_param(name, value)
        elif name == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise InvalidQuery(f"fuzzymatching must be true or false, not {value[:40]!r}")
            query.fuzzy = value.lower() == "true"
        elif name == "includefield":
            _add_includes(query, value, unsupported)
        elif name.startswith("_"):
            continue  # cache busters (``_=1700000000``) some browser clients add
        else:
            _add_key(query, name, value, unsupported)
    if limit is not None:
        if limit > settings.qido_max_limit:
            query.warnings.append(
                f"limit {limit} is above the maximum of {settings.qido_max_limit}; "
                f"{settings.qido_max_limit} results are returned per page"
            )
            limit = settings.qido_max_limit
        query.limit = limit
    if unsupported:
        query.warnings.append(
            "The following attributes are not supported at this query level and were "
            f"ignored: {', '.join(sorted(set(unsupported)))[:500]}"
        )
    return query


def _add_includes(query: Query, value: str, unsupported: list[str]) -> None:
    for piece in value.split(","):
        name = piece.strip()
        if not name:
            continue
        if name.lower() == "all":
            query.include_all = True
            continue
        keyword = _keyword(name)
        if keyword is None:
            raise InvalidQuery(f"includefield {name[:64]!r} is not a DICOM attribute")
        if keyword not in SUPPORTED_KEYS[query.level] and query.level is not Level.INSTANCE:
            unsupported.append(keyword)
        query.include.add(keyword)


def _add_key(query: Query, name: str, value: str, unsupported: list[str]) -> None:
    if "." in name:
        _add_sequence_key(query, name, value, unsupported)
        return
    keyword = _keyword(name)
    if keyword is None:
        raise InvalidQuery(f"{name[:64]!r} is neither a QIDO-RS parameter nor a DICOM attribute")
    if keyword not in SUPPORTED_KEYS[query.level]:
        unsupported.append(keyword)
        return
    is_uid = ATTRIBUTES[keyword].kind == "uid"
    if keyword in query.keys and not is_uid:
        raise InvalidQuery(f"{keyword} is given twice; only UID keys take lists")
    if is_uid:  # a list: repeated keys, commas or backslashes; empty items dropped
        uids = [*query.keys.get(keyword, "").split("\\"), *value.replace(",", "\\").split("\\")]
        value = "\\".join(u.strip() for u in uids if u.strip())
    query.keys[keyword] = value


def _add_sequence_key(query: Query, name: str, value: str, unsupported: list[str]) -> None:
    parts = name.split(".")
    keywords = [_keyword(p) for p in parts]
    if any(k is None for k in keywords):
        raise InvalidQuery(f"{name[:100]!r} is not a path of DICOM attributes")
    if (
        len(keywords) != 2
        or keywords[0] != _REQUEST_ATTRIBUTES
        or keywords[1] not in _SEQUENCE_KEYS
        or query.level not in (Level.SERIES, Level.INSTANCE)
    ):
        unsupported.append(".".join(k or "" for k in keywords))
        return
    query.sequence_keys[str(keywords[1])] = value


def _sequence_condition(keyword: str, value: str) -> ColumnElement[bool]:
    """Sequence matching (PS3.4 C.2.2.2.6) on the JSON text of Request Attributes Sequence.

    The column holds ``[{"RequestedProcedureID": "…", …}]`` written by ``json.dumps`` (keys
    quoted, ``": "`` between key and value, non-ASCII escaped), so single value and wildcard
    matching become a LIKE on ``"Keyword": "value"``.
    """
    encoded = json.dumps(value.strip())[1:-1]
    pattern = like_pattern(encoded, substring=False)
    text = cast(Series.request_attributes, String)
    return text.like(f'%"{keyword}": "{pattern}"%', escape="\\")


def run_query(
    archive: Archive,
    principal: Principal,
    query: Query,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    with_header: bool = True,
    columns: frozenset[str] | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Matching rows (``limit`` at most) and whether more exist beyond them.

    ``columns`` limits the attributes read to those named; without ``with_header`` the cached
    headers (the bulk of an instance row) are not read either.
    """
    if study_uid is not None and not principal.can_view_study(study_uid):
        return [], False
    if query.limit == 0:
        return [], False
    stmt = build_query(
        query.level, query.keys, fuzzy=query.fuzzy, study_uid=study_uid, series_uid=series_uid
    )
    if columns is not None or not with_header:
        kept = [
            c
            for c in stmt.selected_columns
            if (columns is None or c.key in columns or str(c.key).startswith("_"))
            and (with_header or not str(c.key).startswith("_"))
        ]
        stmt = stmt.with_only_columns(*kept)
    scope = study_condition(principal)
    if scope is not None and query.level is not Level.PATIENT:
        # A scoped principal (a share link, an institution's user or key): match among its
        # studies only, so that paging (limit, offset) counts what it may see.
        stmt = stmt.where(scope)
    if query.level in (Level.SERIES, Level.INSTANCE):
        stmt = stmt.add_columns(Series.request_attributes.label("_request_attributes"))
    for keyword, value in query.sequence_keys.items():
        if value.strip():
            stmt = stmt.where(_sequence_condition(keyword, value))
    stmt = stmt.offset(query.offset).limit(query.limit + 1)
    rows: list[dict[str, Any]] = []
    with archive.engine.connect() as conn:  # Core, not the ORM session: a read, ~1 ms less
        for row in conn.execute(stmt):
            mapping = dict(row._mapping)
            if scope is not None or principal.can_view_study(str(mapping["StudyInstanceUID"])):
                rows.append(mapping)  # (the scope already kept only what it may see)
    more = len(rows) > query.limit
    return rows[: query.limit], more


# ------------------------------------------------------------------------------ answers


_INT_VRS = {"IS", "US", "UL", "SL", "SS", "SV", "UV"}
Encoder = Callable[[Any], dict[str, Any]]


@lru_cache(maxsize=512)
def _encoder(keyword: str) -> tuple[str, Encoder]:
    """The tag of ``keyword`` and a function turning an index value into its DICOM JSON."""
    tag, vr = _tag_and_vr(keyword)
    empty = {"vr": vr}

    def person_name(value: Any) -> dict[str, Any]:
        groups = str(value).split("=")
        named = zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False)
        pn = {g: t for g, t in named if t}
        return {"vr": vr, "Value": [pn]} if pn else dict(empty)

    def integer(value: Any) -> dict[str, Any]:
        try:
            return {"vr": vr, "Value": [int(value)]}
        except (TypeError, ValueError):
            return dict(empty)

    def multi(value: Any) -> dict[str, Any]:
        values = [v for v in str(value).split("\\") if v]
        return {"vr": vr, "Value": values} if values else dict(empty)

    def text(value: Any) -> dict[str, Any]:
        return {"vr": vr, "Value": [str(value)]}

    if vr == "PN":
        convert = person_name
    elif vr in _INT_VRS:
        convert = integer
    elif keyword == "ModalitiesInStudy":
        convert = multi
    else:
        convert = text

    def encode(value: Any) -> dict[str, Any]:
        return dict(empty) if value is None or value == "" else convert(value)

    return tag, encode


def _element(keyword: str, value: Any) -> tuple[str, dict[str, Any]]:
    tag, encode = _encoder(keyword)
    return tag, encode(value)


def _fields(query: Query, scoped_study: bool, scoped_series: bool) -> list[str]:
    level = query.level
    names: list[str] = []
    if level is Level.STUDY:
        names += _STUDY_FIELDS
    elif level is Level.SERIES:
        names += _SERIES_FIELDS
        if not scoped_study:
            names += _STUDY_FIELDS
    else:
        names += _INSTANCE_FIELDS
        if not scoped_series:
            names += _SERIES_FIELDS
        if not scoped_study:
            names += _STUDY_FIELDS
    names += [k for k in query.keys if k in SUPPORTED_KEYS[level]]
    if query.include_all:
        names += sorted(SUPPORTED_KEYS[level])
    names += [k for k in query.include if k in SUPPORTED_KEYS[level]]
    return list(dict.fromkeys(names))


RowEncoder = Callable[[dict[str, Any]], dict[str, Any]]
_CHARSET = {"vr": "CS", "Value": ["ISO_IR 192"]}
_ONLINE = {"vr": "CS", "Value": ["ONLINE"]}


@dataclass(frozen=True)
class Shape:
    """How each match of one query is written: one encoder per attribute, in tag order."""

    columns: list[tuple[str, RowEncoder]]
    #: Index columns the answer needs (the query reads only these).
    keywords: frozenset[str]
    with_header: bool


def _column(keyword: str) -> tuple[str, RowEncoder]:
    tag, encode = _encoder(keyword)
    return tag, lambda row: encode(row.get(keyword))


def shape_of(query: Query, fields: list[str], base: str) -> Shape:
    """The encoders of every attribute of a match (fields, constants, RetrieveURL...)."""
    level = query.level
    columns = dict(_column(k) for k in fields)
    columns["00080005"] = lambda _row: dict(_CHARSET)
    columns["00080056"] = lambda _row: dict(_ONLINE)
    columns["00081190"] = lambda row: {"vr": "UR", "Value": [_retrieve_url(row, level, base)]}
    if level in (Level.SERIES, Level.INSTANCE) and "SeriesInstanceUID" in fields:
        columns["00400275"] = lambda row: _request_attributes(row.get("_request_attributes"))
    needed = {*fields, "StudyInstanceUID"}
    if level in (Level.SERIES, Level.INSTANCE):
        needed.add("SeriesInstanceUID")
    if level is Level.INSTANCE:
        needed.add("SOPInstanceUID")
    return Shape(
        sorted(columns.items()),
        frozenset(needed),
        level is Level.INSTANCE and bool(query.include_all or query.include - set(fields)),
    )


def result_json(row: dict[str, Any], query: Query, shape: Shape, base: str) -> dict[str, Any]:
    """One match as a DICOM JSON object, attributes in tag order."""
    out = {tag: encode(row) for tag, encode in shape.columns}
    if shape.with_header:
        out.update({k: v for k, v in _from_header(row, query, base).items() if k not in out})
        return dict(sorted(out.items()))
    return out


def _from_header(row: dict[str, Any], query: Query, base: str) -> dict[str, Any]:
    header = row.get("_header_json")
    if not header:
        return {}
    url = instance_url(
        base, row["StudyInstanceUID"], row["SeriesInstanceUID"], row["SOPInstanceUID"]
    )
    data: dict[str, Any] = json.loads(
        header.replace('"BulkDataURI":"bulkdata/', f'"BulkDataURI":"{url}/bulkdata/')
    )
    data.pop("7FE00010", None)
    if query.include_all:
        return data
    wanted = {_tag_and_vr(k)[0] for k in query.include}
    return {tag: value for tag, value in data.items() if tag in wanted}


def _request_attributes(items: Any) -> dict[str, Any]:
    if not items:
        return {"vr": "SQ"}
    values = []
    for item in items if isinstance(items, list) else []:
        entry: dict[str, Any] = {}
        for keyword in ("RequestedProcedureID", "ScheduledProcedureStepID"):
            if isinstance(item, dict) and item.get(keyword):
                tag, element = _element(keyword, item[keyword])
                entry[tag] = element
        values.append(dict(sorted(entry.items())))
    return {"vr": "SQ", "Value": values}


def _retrieve_url(row: dict[str, Any], level: Level, base: str) -> str:
    study = str(row["StudyInstanceUID"])
    if level is Level.STUDY:
        return study_url(base, study)
    if level is Level.SERIES:
        return series_url(base, study, str(row["SeriesInstanceUID"]))
    return instance_url(base, study, str(row["SeriesInstanceUID"]), str(row["SOPInstanceUID"]))


def answer_type(accept: str | None) -> str:
    """``application/dicom+json`` (default) or multipart ``application/dicom+xml``; else 406."""
    for media in parse_accept(accept, default=DICOM_JSON):
        if media.matches(DICOM_JSON) or media.type == "application/json":
            return DICOM_JSON
        if media.type == DICOM_XML or (
            media.type == "multipart/related" and media.params.get("type", "").lower() == DICOM_XML
        ):
            return DICOM_XML
    raise NotAcceptable(
        "QIDO-RS answers in application/dicom+json or "
        'multipart/related; type="application/dicom+xml"'
    )


def render(results: list[dict[str, Any]], media_type: str, warnings: list[str]) -> Response:
    if media_type == DICOM_XML:
        if not results:
            response = Response(status_code=204)
        else:
            boundary = new_boundary()
            parts = [({"Content-Type": DICOM_XML}, to_native_xml(r)) for r in results]
            response = Response(
                encode_parts(boundary, parts),
                media_type=related_content_type(boundary, DICOM_XML),
            )
    else:
        body = json.dumps(results, ensure_ascii=False, separators=(",", ":"))
        response = Response(body.encode("utf-8"), media_type=DICOM_JSON)
    for text in warnings:
        response.headers.append("Warning", f'299 cloudfilm "{_ascii(text)}"')
    response.headers["Cache-Control"] = REVALIDATE
    return response


def _ascii(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "?" for c in text)


def search(
    request: Request,
    archive: Archive,
    settings: Settings,
    principal: Principal,
    level: Level,
    base: str,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> Response:
    """Handle one QIDO-RS request."""
    media_type = answer_type(request.headers.get("accept"))
    query = parse_query(request, level, settings)
    fields = _fields(query, study_uid is not None, series_uid is not None)
    shape = shape_of(query, fields, base)
    rows, more = run_query(
        archive, principal, query, study_uid=study_uid, series_uid=series_uid,
        with_header=shape.with_header, columns=shape.keywords,
    )  # fmt: skip
    results = [result_json(row, query, shape, base) for row in rows]
    warnings = list(query.warnings)
    if more:
        warnings.append(MORE_RESULTS)
    return render(results, media_type, warnings)
