"""The audit trail for administrators: ``/staff/audit`` (docs/audit.md, "Search and export").

- ``GET /staff/audit``: the events matching the filters (time range, actor kind and id,
  action, Patient ID, Study Instance UID, outcome; the platform admin also the actor's
  institution), newest first, :data:`PAGE_ROWS` a page; the next page starts below the last
  ``seq`` shown (``before``), so new events do not shift the pages.
- ``GET /staff/audit/export?format=jsonl|dicom&…``: every matching event, oldest first, as
  JSON lines or DICOM PS3.15 audit messages (:mod:`cloudfilm.audit.export`), streamed.

Who sees what. The platform admin sees every event. An institution's admin sees the events
of its institution (:attr:`AuditFilter.visible_to`): those whose actor belongs to it (its
users, its API keys, its DIMSE peers; the ``institution`` column) and every event, by
anyone, on a study it owns (a doctor of another hospital who opened it, a patient's link).
Not the events on studies it only holds a copy of (they belong to their owner), nor events
without a study by actors of no institution (anonymous refusals, patients' link pages,
sign-ins with a wrong name). Other roles get 403.

Reading the trail is itself audited: the page as ``audit-search``, an export as
``audit-export`` with its filters and the number of rows written (DICOM "Audit Log Used").
Every parameter is checked (:func:`parse_audit_filter`); a hostile one gets the page with a
400 and the reason, never a 500.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from cloudfilm.access.admin import require_admin
from cloudfilm.api.audit import audit_as
from cloudfilm.api.deps import ArchiveDep, Principal, PrincipalDep
from cloudfilm.audit.export import AuditFilter, export_lines, newest_rows
from cloudfilm.audit.trail import OUTCOMES
from cloudfilm.core.errors import Forbidden, MalformedRequest
from cloudfilm.sharing.staff import StaffRoute, render_staff
from cloudfilm.sharing.staff_forms import check_uid, text_field

audit_router = APIRouter(prefix="/staff/audit", route_class=StaffRoute, include_in_schema=False)

#: Events a page shows.
PAGE_ROWS = 100
ACTOR_KINDS = ("user", "apikey", "share", "peer", "development", "cli", "system", "anonymous")
FILTER_FIELDS = ("since", "until", "actor_kind", "actor_id", "action", "patient_id",
                 "study_uid", "outcome", "institution")  # fmt: skip
_ACTION = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_CODE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_TIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}:\d{2})?$", re.ASCII
)
#: Largest ``seq`` a page may start below (the column is a signed 64-bit integer).
_MAX_SEQ = 2**63 - 1


def _time(params: Mapping[str, str], name: str, *, end: bool) -> datetime | None:
    """A time ``YYYY-MM-DD[THH:MM[:SS]]`` with an optional zone (none: UTC). A bare date as
    ``until`` means the end of that day, so that ``since=until=2026-11-28`` is that day."""
    value = text_field(params, name, 32)
    if value is None:
        return None
    if not _TIME.match(value):
        raise MalformedRequest(f"{name}: {value!r} is not a date or time (YYYY-MM-DD HH:MM)")
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise MalformedRequest(f"{name}: {value!r} is not a date or time") from exc
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    if end and len(value) == 10:
        at += timedelta(days=1)
    return at


def _choice(params: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    value = text_field(params, name, 32)
    if value is not None and value not in choices:
        raise MalformedRequest(f"{name}: one of {', '.join(choices)}")
    return value


def parse_audit_filter(
    params: Mapping[str, str], principal: Principal
) -> tuple[dict[str, str], AuditFilter]:
    """The filters of the page or an export, as typed (to show again) and as a filter that
    keeps an institution admin to its institution's events."""
    values = {name: params.get(name, "").strip()[:200] for name in FILTER_FIELDS}
    since = _time(params, "since", end=False)
    until = _time(params, "until", end=True)
    if since and until and since >= until:
        raise MalformedRequest("since: the range starts after it ends")
    action = text_field(params, "action", 32)
    if action is not None and not _ACTION.match(action):
        raise MalformedRequest("action: lower-case letters and '-', such as view or sign-in")
    study_uid = text_field(params, "study_uid", 64)
    institution = text_field(params, "institution", 64)
    if institution is not None and not _CODE.match(institution):
        raise MalformedRequest("institution: an institution code, such as hosp-a")
    scope = None if principal.all_institutions else principal.institution
    if scope == "":
        raise Forbidden("this account belongs to no institution")
    where = AuditFilter(
        since=since,
        until=until,
        actor_kind=_choice(params, "actor_kind", ACTOR_KINDS),
        actor_id=text_field(params, "actor_id", 200),
        action=action,
        patient_id=text_field(params, "patient_id", 64),
        study_uid=check_uid(study_uid) if study_uid else None,
        institution=institution,
        outcome=_choice(params, "outcome", OUTCOMES),
        visible_to=scope,
    )
    return values, where


def _before(params: Mapping[str, str]) -> int | None:
    value = params.get("before", "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 19 and int(value) <= _MAX_SEQ):
        raise MalformedRequest("before: an event number")
    return int(value)


def _described(where: AuditFilter) -> str:
    """The filters of a search or export for its own audit row (no secrets can be in them)."""
    used = {k: v for k, v in vars(where).items() if v is not None}
    return "filters " + json.dumps(used, default=str, ensure_ascii=False, sort_keys=True)


def _view_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "at": str(row["at"]).replace("T", " ")[:19]}


@audit_router.get("")
def audit_page(request: Request, principal: PrincipalDep, archive: ArchiveDep) -> Response:
    """Search the audit trail (see the module docstring)."""
    audit_as(request, "audit-search")
    require_admin(principal)
    context: dict[str, Any] = {
        "kinds": ACTOR_KINDS,
        "outcomes": OUTCOMES,
        "platform": principal.all_institutions,
        "rows": [],
        "values": {},
    }
    try:
        values, where = parse_audit_filter(request.query_params, principal)
        before = _before(request.query_params)
    except MalformedRequest as exc:
        context["values"] = {n: request.query_params.get(n, "")[:200] for n in FILTER_FIELDS}
        context["error"] = exc.message
        audit_as(request, "audit-search", "refused parameters")
        return render_staff(request, "staff_audit.html", context, 400)
    audit_as(request, "audit-search", _described(where))
    rows = newest_rows(archive.engine, where, before, PAGE_ROWS + 1)
    kept = {k: v for k, v in values.items() if v}
    root = str(request.scope.get("root_path", ""))
    more = len(rows) > PAGE_ROWS
    rows = rows[:PAGE_ROWS]
    context.update(
        values=values,
        rows=[_view_row(r) for r in rows],
        first_url=f"{root}/staff/audit?{urlencode(kept)}" if before is not None else None,
        next_url=(
            f"{root}/staff/audit?{urlencode({**kept, 'before': rows[-1]['seq']})}" if more else None
        ),
        export_jsonl=f"{root}/staff/audit/export?{urlencode({**kept, 'format': 'jsonl'})}",
        export_dicom=f"{root}/staff/audit/export?{urlencode({**kept, 'format': 'dicom'})}",
    )
    return render_staff(request, "staff_audit.html", context)


@audit_router.get("/export")
def audit_export(request: Request, principal: PrincipalDep, archive: ArchiveDep) -> Response:
    """Every matching event, oldest first, as JSON lines (``format=jsonl``) or DICOM audit
    messages, one per line (``format=dicom``); a download."""
    audit_as(request, "audit-export")
    require_admin(principal)
    params = request.query_params
    fmt = params.get("format", "jsonl")
    if fmt not in ("jsonl", "dicom"):
        raise MalformedRequest("format: jsonl or dicom")
    _, where = parse_audit_filter(params, principal)
    described = f"as {fmt}; {_described(where)}"
    audit_as(request, "audit-export", described)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"audit-{stamp}.jsonl" if fmt == "jsonl" else f"audit-{stamp}-dicom.txt"
    media = "application/x-ndjson" if fmt == "jsonl" else "text/plain; charset=utf-8"

    def lines() -> Iterator[bytes]:
        count = 0
        for line in export_lines(archive, "dicom" if fmt == "dicom" else "jsonl", where):
            count += 1
            yield line.encode("utf-8")
        # Read by the audit middleware once the body is sent: how much left the building.
        audit_as(request, "audit-export", f"{count} rows {described}")

    headers = {"Content-Disposition": f'attachment; filename="{name}"',
               "Cache-Control": "no-store"}  # fmt: skip
    return StreamingResponse(lines(), media_type=media, headers=headers)
