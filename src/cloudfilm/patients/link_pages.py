"""The staff page of patient links across hospitals (docs/patients.md, "Reviewing links").

- ``GET /staff/patients``: the newest cross-references (of the patients the caller's
  institution sees; all of them for the platform administrator), 50 a page, and a search by
  Patient ID (with its issuer) or platform patient id. ``?platform_id=…`` shows one platform
  patient: every Patient ID linked to it, with its source, the institutions that see it and
  its number of studies, and the forms to change it. ``?done=linked|merged|split`` says what
  the last form did.
- ``POST /staff/patients/link`` (CSRF purpose ``patient-link``): link one of the caller's
  patients to a platform patient — by strong key (e.g. the national ID number, kept only as a
  keyed hash) or by platform patient id — and/or set the phone one-time codes go to. Staff who
  may store, for a patient their institution sees (as ``POST /api/pix/links``).
- ``POST /staff/patients/merge`` (``patient-merge``): the same person twice; the platform
  administrator only. ``POST /staff/patients/split`` (``patient-split``): a Patient ID
  wrongly linked gets a platform patient of its own; the platform administrator only.

A refused form shows the page again with the reason (400 malformed, 403 not allowed, 404 a
patient the caller does not see, answered as one that does not exist). Each change is one
audit row (``patient-link``, ``patient-merge``, ``patient-split``) with the Patient ID.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from cloudfilm.api.audit import audit_as
from cloudfilm.api.deps import ArchiveDep, Principal, PrincipalDep
from cloudfilm.archive import Archive
from cloudfilm.core.errors import CloudFilmError, Forbidden, MalformedRequest
from cloudfilm.patients import pix
from cloudfilm.patients.routes import (
    link_for,
    require_link_reviewer,
    require_platform_admin,
    require_sees_patient,
    visible_platform_patient,
)
from cloudfilm.sharing.csrf import check_form
from cloudfilm.sharing.pages import read_form
from cloudfilm.sharing.staff import FORM_LIMIT, StaffRoute, csrf_keys, render_staff
from cloudfilm.sharing.staff_forms import PAGE_SIZE, page_number, text_field
from cloudfilm.viewer.report import person_name

__all__ = ["router"]

router = APIRouter(prefix="/staff/patients", route_class=StaffRoute, include_in_schema=False)

LINK, MERGE, SPLIT = "patient-link", "patient-merge", "patient-split"
_PLATFORM_ID = re.compile(r"^[0-9a-f]{16}$")
_DONE = ("linked", "merged", "split")


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


def _platform_id(values: Mapping[str, str], name: str) -> str | None:
    value = text_field(values, name, 16)
    if value is not None and not _PLATFORM_ID.match(value.lower()):
        raise MalformedRequest(f"{name}: a platform patient id is 16 hexadecimal digits")
    return value.lower() if value else None


def _patient(values: Mapping[str, str]) -> tuple[str | None, str]:
    """The Patient ID and issuer of a form or search (issuer '' when none)."""
    return text_field(values, "patient_id", 64), text_field(values, "issuer", 64) or ""


def _view_url(request: Request, platform_id: str, done: str | None = None) -> str:
    url = f"{_root(request)}/staff/patients?platform_id={platform_id}"
    return f"{url}&done={done}" if done else url


def _patient_view(request: Request, info: pix.PlatformPatientInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "url": _view_url(request, info.id),
        "has_strong_key": info.has_strong_key,
        "phone_hint": info.phone_hint,
        "links": [
            {
                "patient_id": link.patient_id,
                "issuer": link.issuer,
                "name": person_name(link.name),
                "source": link.source,
                "institutions": ", ".join(link.institutions),
                "studies": link.studies,
            }
            for link in info.links
        ],
    }


def _page(
    request: Request,
    archive: Archive,
    principal: Principal,
    values: Mapping[str, str],
    *,
    error: CloudFilmError | None = None,
) -> Response:
    """The page: the platform patient asked for (or the Patient ID searched), the newest
    links, and ``error`` (the reason a form was refused) when there is one."""
    require_link_reviewer(principal)
    page = page_number(values)
    shown: pix.PlatformPatientInfo | None = None
    searched = False
    not_linked = False
    problem = error
    patient_id: str | None = None
    try:
        platform_id = _platform_id(values, "platform_id")
        patient_id, issuer = _patient(values)
        if platform_id:
            shown = visible_platform_patient(archive, principal, platform_id)
        elif patient_id:
            searched = True
            require_sees_patient(archive, principal, patient_id, issuer)
            found = pix.platform_id_of(archive, patient_id, issuer)
            if found is None:
                not_linked = True
            else:
                shown = visible_platform_patient(archive, principal, found)
    except CloudFilmError as exc:
        problem = problem or exc
    if shown is not None and request.method == "GET":  # the audit row names what was seen
        audit_as(request, "view", f"platform patient {shown.id}", patient_id=patient_id or "")
    platform_admin = principal.all_institutions or principal.kind == "development"
    rows: list[pix.LinkRow] = []
    if platform_admin or principal.institution_pk is not None:
        rows = pix.recent_links(
            archive, None if platform_admin else principal.institution_pk,
            limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE,
        )  # fmt: skip
    root = _root(request)
    done = values.get("done", "")
    context: dict[str, Any] = {
        "platform_admin": platform_admin,
        "may_link": principal.can_store(),
        "shown": _patient_view(request, shown) if shown is not None else None,
        "searched": searched,
        "not_linked": not_linked,
        "form": {key: str(values.get(key, ""))[:64] for key in ("patient_id", "issuer")},
        "done": done if done in _DONE else None,
        "error": problem.message if problem is not None else None,
        "links": [
            {
                "patient_id": row.patient_id,
                "issuer": row.issuer,
                "name": person_name(row.name),
                "platform_id": row.platform_id,
                "url": _view_url(request, row.platform_id),
                "source": row.source,
                # who made it: the platform administrator's to see (may be another hospital)
                "created_by": row.created_by if platform_admin else "",
                "created_at": row.created_at.strftime("%Y-%m-%d %H:%M UTC"),
                "linked": row.linked,
            }
            for row in rows[:PAGE_SIZE]
        ],
        "page": page,
        "prev_url": f"{root}/staff/patients?page={page - 1}" if page > 1 else None,
        "next_url": f"{root}/staff/patients?page={page + 1}" if len(rows) > PAGE_SIZE else None,
    }
    return render_staff(request, "staff_patients.html", context, problem.status if problem else 200)


@router.get("")
def patients_page(request: Request, principal: PrincipalDep, archive: ArchiveDep) -> Response:
    """Review the links: the newest, a search, one platform patient."""
    return _page(request, archive, principal, request.query_params)


async def _form(request: Request, purpose: str) -> dict[str, str]:
    form = await read_form(request, FORM_LIMIT)
    check_form(csrf_keys(request), request, form, purpose)
    return form


@router.post("/link")
async def link_form(request: Request, principal: PrincipalDep, archive: ArchiveDep) -> Response:
    """Link a patient by strong key or platform patient id, and/or set the phone."""
    form = await _form(request, LINK)
    return await run_in_threadpool(_link, request, archive, principal, form)


def _link(
    request: Request, archive: Archive, principal: Principal, form: dict[str, str]
) -> Response:
    try:
        if not principal.can_store():
            raise Forbidden("linking patients needs a staff account that may store")
        patient_id, issuer = _patient(form)
        if patient_id is None:
            raise MalformedRequest("patient_id: the Patient ID to link")
        strong_key = text_field(form, "strong_key", 64)
        platform_id = _platform_id(form, "target")
        phone = text_field(form, "phone", 32)
        if strong_key is None and platform_id is None and phone is None:
            raise MalformedRequest("give a strong key, a platform patient id or a phone")
        info = link_for(
            archive, principal, patient_id, issuer, strong_key=strong_key,
            platform_id=platform_id, phone=phone, source="staff",
        )  # fmt: skip
    except CloudFilmError as exc:
        return _page(request, archive, principal, {**form, "page": ""}, error=exc)
    audit_as(request, LINK, f"to {info.id}", patient_id=patient_id)
    return RedirectResponse(_view_url(request, info.id, "linked"), status_code=303)


@router.post("/merge")
async def merge_form(request: Request, principal: PrincipalDep, archive: ArchiveDep) -> Response:
    """Merge one platform patient into another (the platform administrator)."""
    form = await _form(request, MERGE)
    return await run_in_threadpool(_merge, request, archive, principal, form)


def _merge(
    request: Request, archive: Archive, principal: Principal, form: dict[str, str]
) -> Response:
    try:
        require_platform_admin(principal)
        source, target = _platform_id(form, "platform_id"), _platform_id(form, "into")
        if source is None or target is None:
            raise MalformedRequest("into: the platform patient id to merge into")
        info = pix.merge(archive, source, target)
    except CloudFilmError as exc:
        return _page(request, archive, principal, {"platform_id": form.get("platform_id", "")},
                     error=exc)  # fmt: skip
    audit_as(request, MERGE, f"{source} into {target}")
    return RedirectResponse(_view_url(request, info.id, "merged"), status_code=303)


@router.post("/split")
async def split_form(request: Request, principal: PrincipalDep, archive: ArchiveDep) -> Response:
    """Give a wrongly linked Patient ID a platform patient of its own (the platform
    administrator)."""
    form = await _form(request, SPLIT)
    return await run_in_threadpool(_split, request, archive, principal, form)


def _split(
    request: Request, archive: Archive, principal: Principal, form: dict[str, str]
) -> Response:
    try:
        require_platform_admin(principal)
        patient_id, issuer = _patient(form)
        if patient_id is None:
            raise MalformedRequest("patient_id: the Patient ID to split off")
        new_id = pix.split(archive, patient_id, issuer, created_by=principal.label)
    except CloudFilmError as exc:
        return _page(request, archive, principal, {"platform_id": form.get("platform_id", "")},
                     error=exc)  # fmt: skip
    audit_as(request, SPLIT, f"to {new_id}", patient_id=patient_id)
    return RedirectResponse(_view_url(request, new_id, "split"), status_code=303)
