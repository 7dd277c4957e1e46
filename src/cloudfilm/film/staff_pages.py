"""The film part of the staff study page: the study's film sheets, and "print on film" for a
patient who still wants film (``cloudfilm.film.passthrough``).

``POST /staff/studies/{study_uid}/film-prints`` (form, CSRF ``film-print``) queues the sheets
ticked (or all) on the ``film_printer`` and goes back to the study page, which lists the jobs
and their state. It needs a staff member who may store (technologist, admin); a study the
caller may not see is answered like one not in the archive.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from cloudfilm.api.deps import ArchiveDep, Principal, PrincipalDep
from cloudfilm.archive import Archive
from cloudfilm.core.errors import CloudFilmError, Forbidden, MalformedRequest, NotFound
from cloudfilm.film.passthrough import MAX_SHEETS_PER_REQUEST, film_prints, queue_study_films
from cloudfilm.film.sheets import film_sheets
from cloudfilm.sharing.csrf import check_form
from cloudfilm.sharing.pages import read_form
from cloudfilm.sharing.staff import StaffRoute, csrf_keys, require_staff
from cloudfilm.sharing.staff_forms import check_uid

__all__ = ["film_context", "router"]

router = APIRouter(prefix="/staff", route_class=StaffRoute, include_in_schema=False)

#: Largest print form, in bytes (UIDs of at most MAX_SHEETS_PER_REQUEST sheets).
FORM_LIMIT = 16 * 1024
#: Jobs shown on the study page.
JOBS_SHOWN = 20


def film_context(
    request: Request, archive: Archive, principal: Principal, study_uid: str
) -> dict[str, Any]:
    """What the study page shows of films: sheets, whether staff may print, recent jobs."""
    root = request.scope.get("root_path", "")
    sheets = [
        {
            "uid": s.sop_instance_uid,
            "number": s.instance_number,
            "png": f"{root}/api/studies/{study_uid}/films/{s.sop_instance_uid}.png",
            "pdf": f"{root}/api/studies/{study_uid}/films/{s.sop_instance_uid}.pdf",
        }
        for s in film_sheets(archive, study_uid)
    ]
    return {
        "film_sheets": sheets,
        "film_printer": archive.settings.film_printer or "",
        "can_print_film": principal.can_store() and principal.can_change_study(study_uid),
        "film_jobs": film_prints(archive, study_uid=study_uid, limit=JOBS_SHOWN),
    }


@router.post("/studies/{study_uid}/film-prints")
async def print_on_film(
    request: Request, study_uid: str, principal: PrincipalDep, archive: ArchiveDep
) -> Response:
    """Queue the study's sheets ticked in the form (all when none is) for printing on film."""
    require_staff(principal)
    form = await read_form(request, FORM_LIMIT)
    check_form(csrf_keys(request), request, form, "film-print")
    uid = check_uid(study_uid)
    if not principal.can_view_study(uid):
        raise NotFound(f"study {uid} is not in the archive")
    if not principal.can_store() or not principal.can_change_study(uid):
        raise Forbidden("printing on film needs a staff account that may store, of a hospital "
                        "that holds the exam")  # fmt: skip
    sheets = [v for k, v in form.items() if k.startswith("sheet-") and v]
    if len(sheets) > MAX_SHEETS_PER_REQUEST:
        raise MalformedRequest(f"at most {MAX_SHEETS_PER_REQUEST} sheets at once")
    copies = _copies(form.get("copies", "1"))
    target = f"{request.scope.get('root_path', '')}/staff/studies/{uid}"
    try:
        queued = await run_in_threadpool(
            lambda: queue_study_films(
                archive,
                uid,
                printer=None,
                requested_by=principal.label,
                institution=principal.institution,
                copies=copies,
                sop_instance_uids=[check_uid(s, "film sheet") for s in sheets],
            )
        )
    except CloudFilmError as exc:
        if isinstance(exc, NotFound):
            raise
        return RedirectResponse(f"{target}?film_error={_quoted(exc.message)}#films", 303)
    return RedirectResponse(f"{target}?film_queued={len(queued)}#films", status_code=303)


def _copies(value: str) -> int:
    try:
        copies = int(value.strip() or "1")
    except ValueError:
        raise MalformedRequest("copies: a whole number from 1 to 10") from None
    if not 1 <= copies <= 10:
        raise MalformedRequest("copies: a whole number from 1 to 10")
    return copies


def _quoted(text: str) -> str:
    from urllib.parse import quote

    return quote(text[:300], safe="")
