"""The recognition part of the staff study page: for another institution's exam that a
patient's consent opened, a doctor records whether it is accepted (互认) instead of repeated.

``POST /staff/studies/{study_uid}/recognition`` (form, CSRF ``recognition``) with
``decision`` = ``accepted`` or ``not-accepted`` and a ``reason`` (needed for a refusal), then
back to the study page, which shows the institution's decisions on the exam.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select

from cloudfilm.api.deps import ArchiveDep, Principal, PrincipalDep
from cloudfilm.archive import Archive
from cloudfilm.core.errors import CloudFilmError, Forbidden, NotFound
from cloudfilm.index.models import Institution, Study, StudyAccess
from cloudfilm.patients import recognition
from cloudfilm.sharing.csrf import check_form
from cloudfilm.sharing.pages import read_form
from cloudfilm.sharing.staff import StaffRoute, csrf_keys
from cloudfilm.sharing.staff_forms import check_uid

__all__ = ["recognition_context", "router"]

router = APIRouter(prefix="/staff", route_class=StaffRoute, include_in_schema=False)


def _owners(archive: Archive, study_uid: str) -> list[tuple[int, str, str]]:
    with archive.engine.connect() as conn:
        rows = conn.execute(
            select(Institution.pk, Institution.code, Institution.name)
            .join(StudyAccess, StudyAccess.institution_pk == Institution.pk)
            .join(Study, Study.pk == StudyAccess.study_pk)
            .where(Study.study_uid == study_uid)
        ).all()
    return [(int(pk), str(code), str(name or code)) for pk, code, name in rows]


def recognition_context(archive: Archive, principal: Principal, study_uid: str) -> dict[str, Any]:
    """Whether the exam is another institution's (to recognise), whose, and the decisions."""
    if principal.kind != "user" or principal.institution_pk is None:
        return {"recognise": False}
    owners = _owners(archive, study_uid)
    if any(pk == principal.institution_pk for pk, _code, _name in owners):
        return {"recognise": False}
    return {
        "recognise": True,
        "origin": ", ".join(name for _pk, _code, name in owners),
        "decisions": recognition.records_for_study(archive, study_uid, principal.institution_pk),
    }


@router.post("/studies/{study_uid}/recognition")
async def recognise(
    request: Request, study_uid: str, principal: PrincipalDep, archive: ArchiveDep
) -> Response:
    """Record the decision on another institution's exam; back to the study page."""
    form = await read_form(request, 4096)
    check_form(csrf_keys(request), request, form, "recognition")
    uid = check_uid(study_uid)
    if not principal.can_view_study(uid):
        raise NotFound(f"study {uid} is not in the archive")
    if principal.kind != "user" or principal.institution_pk is None:
        raise Forbidden("a recognition is recorded by a doctor of an institution")
    institution_pk = principal.institution_pk
    target = f"{request.scope.get('root_path', '')}/staff/studies/{uid}"
    decision = form.get("decision", "")
    if decision not in ("accepted", "not-accepted"):
        return RedirectResponse(f"{target}?recognition_error=decision#recognition", 303)
    try:
        await run_in_threadpool(
            lambda: recognition.record(
                archive, uid, institution_pk=institution_pk, username=principal.id,
                accepted=decision == "accepted", reason=form.get("reason", ""),
            )
        )  # fmt: skip
    except CloudFilmError as exc:
        message = quote(exc.message[:300], safe="")
        return RedirectResponse(f"{target}?recognition_error={message}#recognition", 303)
    return RedirectResponse(f"{target}?recognised={decision}#recognition", status_code=303)
