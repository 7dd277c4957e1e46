"""The staff page of unmatched printed films (docs/film.md, "Unmatched films").

- ``GET /staff/films/unmatched``: the films printed to the virtual film printer that wait for
  a study, newest first, 50 a page: when and by which AE each was printed, its film session
  label, layout and film size, a preview, why it was not matched, the suggested studies
  (:func:`cloudfilm.film.unmatched.suggest_studies`) and a form that attaches it to one of
  them or to a Study Instance UID or accession number typed in. ``?attached=<id>`` shows
  which study a film just went to.
- ``GET /staff/films/unmatched/{film_id}.png``: the sheet as printed (``Cache-Control:
  private, no-store``).
- ``POST /staff/films/unmatched/{film_id}/attach``: attach (CSRF purpose ``attach-film``);
  303 back to the list, or the list again with the reason it was refused (400 malformed,
  404 unknown film or study, 409 already attached or an ambiguous accession number).

Who sees and attaches which film: :mod:`cloudfilm.film.unmatched`. The routes use the staff
pages' machinery (:class:`~cloudfilm.sharing.staff.StaffRoute`, ``render_staff``) and are
registered before the staff pages' catch-all.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from cloudfilm.api.deps import ArchiveDep, Principal, PrincipalDep
from cloudfilm.api.proxies import client_address
from cloudfilm.archive import Archive
from cloudfilm.core.errors import CloudFilmError, MalformedRequest
from cloudfilm.film.printed import UnmatchedFilm, unmatched_film_png
from cloudfilm.film.unmatched import (
    Suggestion,
    attach_target,
    attach_visible,
    institution_aes,
    suggest_studies,
    visible_film,
    visible_films,
    visible_study,
)
from cloudfilm.sharing.csrf import check_form
from cloudfilm.sharing.pages import read_form
from cloudfilm.sharing.staff import FORM_LIMIT, StaffRoute, csrf_keys, render_staff, require_staff
from cloudfilm.sharing.staff_forms import PAGE_SIZE, page_number
from cloudfilm.viewer.report import person_name
from cloudfilm.web.headers import content_disposition

__all__ = ["router"]

#: CSRF purpose of the attach forms.
ATTACH = "attach-film"
#: A film id in a path (the column is a 32-bit integer on every database).
FilmId = Annotated[int, Path(ge=1, le=2**31 - 1, description="id of the printed film")]

#: The reasons ``cloudfilm.film.printed.match_study`` gives, to say them in the reader's
#: language (an unknown one is shown as it is stored).
_REASONS = (
    ("no_study", re.compile(r"^(?P<ae>.+) sent no study in the last (?P<minutes>\d+) minutes$")),
    ("several", re.compile(r"^(?P<ae>.+) sent several studies within (?P<seconds>[0-9.e+-]+) s$")),
    ("accession", re.compile(r"^(?P<count>\d+) studies have accession number (?P<label>.*)$")),
)

router = APIRouter(prefix="/staff/films", route_class=StaffRoute, include_in_schema=False)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def _date(value: str | None) -> str:
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or ""


def _reason(text: str) -> dict[str, Any]:
    """The reason a film was not matched: a message key and its values, or the text."""
    for key, pattern in _REASONS:
        found = pattern.match(text)
        if found:
            return {"key": f"staff.films.reason.{key}", "params": found.groupdict(), "text": text}
    return {"key": None, "params": {}, "text": text}


def _study_row(root: str, study: Suggestion) -> dict[str, Any]:
    seconds = study.seconds_from_print
    return {
        "uid": study.study_uid,
        "patient": person_name(study.patient_name),
        "patient_id": study.patient_id,
        "modalities": "/".join(study.modalities),
        "date": _date(study.study_date),
        "accession": study.accession_number or "",
        "description": study.description or "",
        "first_received": _time(study.first_received),
        "last_received": _time(study.last_received),
        "why": study.why,
        "sent_by": ", ".join(study.sent_by),
        "same_modality": study.same_modality,
        "minutes": round(abs(seconds) / 60) if seconds is not None else None,
        "after": seconds is not None and seconds > 0,
        "url": f"{root}/staff/studies/{study.study_uid}",
    }


def _film_row(
    request: Request,
    archive: Archive,
    principal: Principal,
    film: UnmatchedFilm,
    aes: dict[str, list[str]],
) -> dict[str, Any]:
    root = _root(request)
    base = f"{root}/staff/films/unmatched/{film.id}"
    return {
        "id": film.id,
        "printed": _time(film.created_at),
        "calling_ae": film.calling_ae,
        "institution": film.institution,
        "label": film.film_session_label,
        "display_format": film.display_format,
        "film_size": film.film_size,
        "orientation": film.orientation.lower(),
        "images": film.images,
        "reason": _reason(film.reason),
        "png": f"{base}.png",
        "attach_url": f"{base}/attach",
        "suggestions": [
            _study_row(root, s) for s in suggest_studies(archive, principal, film, aes=aes)
        ],
    }


def _list(
    request: Request,
    archive: Archive,
    principal: Principal,
    *,
    page: int = 1,
    attached: int | None = None,
    error: CloudFilmError | None = None,
    error_film: int | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    """The list page; with ``error``, the reason the form of ``error_film`` was refused."""
    films = visible_films(archive, principal, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
    aes = institution_aes(archive) if films else {}
    rows = [_film_row(request, archive, principal, film, aes) for film in films[:PAGE_SIZE]]
    root = _root(request)
    form = form or {}
    context: dict[str, Any] = {
        "films": rows,
        "page": page,
        "notice": _notice(request, archive, principal, attached) if attached else None,
        "error": error.message if error is not None else None,
        "error_film": error_film if any(r["id"] == error_film for r in rows) else None,
        "typed": form.get("target", "")[:64],
        "chosen": form.get("study_uid", "")[:64],
        "prev_url": f"{root}/staff/films/unmatched?page={page - 1}" if page > 1 else None,
        "next_url": f"{root}/staff/films/unmatched?page={page + 1}"
        if len(films) > PAGE_SIZE
        else None,
    }
    status = error.status if error is not None else 200
    return render_staff(request, "staff_unmatched.html", context, status)


def _notice(
    request: Request, archive: Archive, principal: Principal, film_id: int
) -> dict[str, Any] | None:
    """What a film just attached became: the study it is in (when the caller sees it)."""
    film = visible_film(archive, principal, film_id)
    if film.attached_study_uid is None:
        return None
    study = visible_study(archive, principal, film.attached_study_uid)
    if study is None:
        return None
    return {"id": film.id, "study": _study_row(_root(request), study)}


def _attached_param(request: Request) -> int | None:
    value = request.query_params.get("attached", "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 9 and int(value) >= 1):
        raise MalformedRequest("attached: the id of a printed film")
    return int(value)


@router.get("/unmatched")
def unmatched_page(request: Request, principal: PrincipalDep, archive: ArchiveDep) -> Response:
    """The unmatched films of the caller's institution, with suggestions and attach forms."""
    require_staff(principal)
    page = page_number(request.query_params)
    attached = _attached_param(request)
    return _list(request, archive, principal, page=page, attached=attached)


@router.get("/unmatched/{film_id}.png")
def film_png(film_id: FilmId, principal: PrincipalDep, archive: ArchiveDep) -> Response:
    """The printed sheet, as a PNG at its print resolution."""
    require_staff(principal)
    film = visible_film(archive, principal, film_id)
    name = f"printed-film-{film.id}.png"
    return Response(
        unmatched_film_png(archive, film.id),
        media_type="image/png",
        headers={
            "Content-Disposition": content_disposition(name, name, inline=True),
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.post("/unmatched/{film_id}/attach")
async def attach_film(
    request: Request, film_id: FilmId, principal: PrincipalDep, archive: ArchiveDep
) -> Response:
    """Attach the film to the chosen or typed study; back to the list, which says where it
    went."""
    require_staff(principal)
    form = await read_form(request, FORM_LIMIT)
    check_form(csrf_keys(request), request, form, ATTACH)
    return await run_in_threadpool(_attach, request, archive, principal, film_id, form)


def _attach(
    request: Request, archive: Archive, principal: Principal, film_id: int, form: dict[str, str]
) -> Response:
    try:
        target = attach_target(form.get("study_uid"), form.get("target"))
        attach_visible(
            archive, principal, film_id, target,
            address=client_address(request),
            agent=request.headers.get("user-agent", "")[:200],
        )  # fmt: skip
    except CloudFilmError as exc:
        return _list(request, archive, principal, error=exc, error_film=film_id, form=form)
    return RedirectResponse(
        f"{_root(request)}/staff/films/unmatched?attached={film_id}", status_code=303
    )
