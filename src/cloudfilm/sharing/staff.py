"""The staff pages, under ``/staff/`` (docs/sharing.md, "The staff page").

- ``GET /staff/``: search studies (patient name in any script, patient ID, accession number,
  date range, modality), newest first, 50 a page.
- ``GET /staff/studies/{uid}``: a study, its series, its cloud films and the form that issues
  one; ``GET /staff/issue``: the same form for an accession number whose images have not
  arrived yet.
- ``POST /staff/shares``: issue; the answer shows the link, its QR code, the access code (this
  once) and the buttons that print the card (``/api/shares/{id}/card.pdf|png``).
- ``GET /staff/shares``: cloud films with filters; ``POST /staff/shares/{id}/revoke``.

Every route takes the caller's principal and requires ``can_manage_shares()``
(:func:`require_staff`). A browser without a credential (outside development) asking for a
page is sent to the sign-in page (``cloudfilm.access.pages``, :meth:`StaffRoute`), which
brings it back here afterwards. Every POST carries a CSRF
token (:mod:`cloudfilm.sharing.csrf`). Every error — a malformed parameter, a missing study,
a refused form — is a page in the reader's language with its HTTP status, never a 500.
The pages are server-rendered and work without script; ``staff.js`` only adds a confirmation
before revoking and a button that copies the link.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import segno
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from sqlalchemy import select, tuple_

from cloudfilm.access.principals import accounts_for
from cloudfilm.access.visibility import share_visible
from cloudfilm.api.deps import STAFF_COOKIE, ArchiveDep, Principal, PrincipalDep
from cloudfilm.archive import Archive
from cloudfilm.core.errors import (
    CloudFilmError,
    Forbidden,
    MalformedRequest,
    NotFound,
    Unauthorized,
)
from cloudfilm.index.models import Patient, Study
from cloudfilm.index.queries import StudySummary, find_studies, study_detail
from cloudfilm.sharing.csrf import (
    CSRF_FIELD,
    CsrfKeys,
    CsrfRefused,
    check_form,
    cookie_nonce,
    new_nonce,
    set_nonce_cookie,
)
from cloudfilm.sharing.links import (
    PERMISSIONS,
    ShareFilter,
    ShareInfo,
    ShareLinks,
    ShareState,
    utcnow,
)
from cloudfilm.sharing.pages import read_form
from cloudfilm.sharing.principals import links_for
from cloudfilm.sharing.staff_forms import (
    DEFAULT_EXPIRY,
    EXPIRY_CHOICES,
    PAGE_SIZE,
    check_share_id,
    check_uid,
    parse_issue,
    parse_search,
    parse_share_filter,
)
from cloudfilm.viewer.report import person_name
from cloudfilm.web.templates import render_page

#: Largest staff form body, in bytes (a 1000-character Chinese note is 9 KB URL-encoded).
FORM_LIMIT = 16384
#: Most cloud films listed on a study's page.
STUDY_SHARES = 200
_ERROR_KEYS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               409: "conflict", 410: "gone", 413: "too_large", 415: "bad_request"}  # fmt: skip
#: Where a browser signs in (under the application's root path).
SIGNIN_PATH = "/staff/signin"


class StaffRoute(APIRoute):
    """A route whose errors — from its dependencies (the principal), its parameters or its
    body — are answered with the staff error page instead of JSON.

    A browser that is not signed in (``Unauthorized`` from the principal, no ``Authorization``
    header) and asks for a page (GET/HEAD) is sent to the sign-in page with ``next`` set to
    the page it wanted; a form posted without a session gets the 401 page (its body would be
    lost in a redirect anyway). The error page is rendered in a worker thread: its header
    looks the signed-in user up in the index.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except Unauthorized as exc:
                if request.method in ("GET", "HEAD") and "authorization" not in request.headers:
                    return signin_redirect(request)
                return await run_in_threadpool(error_page, request, exc)
            except CloudFilmError as exc:
                return await run_in_threadpool(error_page, request, exc)
            except RequestValidationError:
                invalid = MalformedRequest("a parameter of this page is invalid")
                return await run_in_threadpool(error_page, request, invalid)

        return guarded


def signin_redirect(request: Request) -> Response:
    """303 to the sign-in page, which comes back to this page afterwards. A session cookie
    that no longer signs in (expired, ended by a password change, forged) is cleared."""
    wanted = request.url.path
    if request.url.query:
        wanted = f"{wanted}?{request.url.query}"
    target = f"{_root(request)}{SIGNIN_PATH}?{urlencode({'next': wanted})}"
    response = RedirectResponse(target, status_code=303)
    if STAFF_COOKIE in request.cookies:
        response.delete_cookie(
            STAFF_COOKIE, path=f"{_root(request)}/", secure=request.url.scheme == "https",
            httponly=True, samesite="strict",
        )  # fmt: skip
    return response


router = APIRouter(prefix="/staff", route_class=StaffRoute, include_in_schema=False)


def require_staff(principal: Principal) -> Principal:
    """The caller, when it may manage cloud films (a signed-in user whose role has
    ``shares``, or the development principal); else 403.

    A caller without any credential never gets here in production: resolving the principal
    raised ``Unauthorized``, which :class:`StaffRoute` turns into the sign-in redirect. A
    signed-in user whose role may not manage cloud films (a referring doctor) gets the 403
    page, whose header still offers to sign out.
    """
    if not principal.can_manage_shares():
        raise Forbidden("only hospital staff may use these pages")
    return principal


# ----------------------------------------------------------------------------- rendering


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


def csrf_keys(request: Request) -> CsrfKeys:
    """The application's CSRF keys (made once, from ``settings.secret_key``)."""
    state = request.app.state
    keys: CsrfKeys | None = getattr(state, "staff_csrf", None)
    if keys is None:
        keys = CsrfKeys(state.settings.secret_key)
        state.staff_csrf = keys
    return keys


def signed_in_user(request: Request) -> dict[str, Any] | None:
    """What the header shows of the signed-in user (name, username, institution), or None
    when the page's caller is not a user (not signed in, development, an API key). Called
    from a worker thread: it reads the index."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None or principal.kind != "user":
        return None
    try:
        user = accounts_for(request).user(principal.id)
    except NotFound:
        return None
    inst = user.institution
    return {
        "name": user.display_name or user.username,
        "username": user.username,
        "institution": (inst.name or inst.code) if inst else "",
        # The admin pages' links are shown to those who may use them.
        "admin": "users" in user.permissions,
        "platform": "all-institutions" in user.permissions,
    }


def render_staff(
    request: Request, template: str, context: dict[str, Any], status: int = 200
) -> Response:
    """A staff page: ``root`` and ``csrf(purpose)`` for its forms, ``staff_user`` for the
    header (:func:`signed_in_user`); the CSRF cookie when the browser has none yet."""
    nonce = cookie_nonce(request)
    fresh = nonce is None
    if nonce is None:
        nonce = new_nonce()
    keys, used = csrf_keys(request), nonce
    values = {
        "root": _root(request),
        "csrf_field": CSRF_FIELD,
        "csrf": lambda purpose: keys.token(used, purpose),
        "staff_user": signed_in_user(request),
        **context,
    }
    response = render_page(request, template, values, status_code=status)
    if fresh:
        set_nonce_cookie(request, response, nonce)
    return response


def error_page(request: Request, exc: CloudFilmError) -> Response:
    """The staff error page for ``exc``, with its status."""
    kind = "csrf" if isinstance(exc, CsrfRefused) else _ERROR_KEYS.get(exc.status, "error")
    context = {"error_kind": kind, "detail": exc.message}
    return render_staff(request, "staff_error.html", context, exc.status)


def _text_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""


def _dicom_date(value: str | None) -> str:
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or ""


def _study_row(summary: StudySummary) -> dict[str, Any]:
    return {
        "uid": summary.study_uid,
        "patient": person_name(summary.patient_name),
        "patient_id": summary.patient_id,
        "birth_date": _dicom_date(summary.birth_date),
        "sex": summary.sex or "",
        "date": _dicom_date(summary.study_date),
        "accession": summary.accession_number or "",
        "modalities": "/".join(summary.modalities),
        "description": summary.description or "",
        "institution": summary.institution_name or "",
        "series": summary.series,
        "instances": summary.instances,
    }


def _share_rows(
    request: Request, archive: Archive, infos: Iterable[ShareInfo], now: datetime
) -> list[dict[str, Any]]:
    """What the tables of cloud films show, with the patient's name when it is known."""
    found = list(infos)
    names = _patient_names(archive, found)
    exams = _exams(archive, found)
    root = _root(request)
    rows = []
    for info in found:
        state = info.state(now)
        printable = not info.is_reshare and state in (ShareState.ACTIVE, ShareState.NOT_YET)
        single = info.study_uids[0] if len(info.study_uids) == 1 else None
        exam, accession = exams.get(single or "", ("", None))
        rows.append(
            {
                "id": info.id,
                "state": state.value,
                "patient": names.get((info.patient_id or "", info.issuer or ""), ""),
                "patient_id": info.patient_id or "",
                "accession": info.accession_number or accession or "",
                "exam": exam,
                "pending": info.pending,
                "studies": len(info.study_uids),
                "study_uid": single,
                "protection": info.secret_kind,
                "permissions": [p for p in PERMISSIONS if p in info.permissions],
                "label": info.label,
                "created_by": info.created_by,
                "created": _text_time(info.created_at),
                "expires": _text_time(info.expires_at),
                "is_reshare": info.is_reshare,
                "can_revoke": state is not ShareState.REVOKED,
                "card_pdf": f"{root}/api/shares/{info.id}/card.pdf" if printable else None,
                "card_png": f"{root}/api/shares/{info.id}/card.png" if printable else None,
            }
        )
    return rows


def _exams(archive: Archive, infos: list[ShareInfo]) -> dict[str, tuple[str, str | None]]:
    """For shares of one study: the exam as text (date, modality, description) and its
    accession number, by Study Instance UID."""
    uids = {i.study_uids[0] for i in infos if len(i.study_uids) == 1}
    if not uids:
        return {}
    columns = (Study.study_uid, Study.study_date, Study.modalities, Study.description,
               Study.accession_number)  # fmt: skip
    with archive.sessions() as session:
        rows = session.execute(select(*columns).where(Study.study_uid.in_(sorted(uids)))).all()
    found = {}
    for uid, day, modalities, description, accession in rows:
        parts = [_dicom_date(day), modalities.replace("\\", "/"), description or ""]
        found[uid] = (" · ".join(p for p in parts if p), accession)
    return found


def _patient_names(archive: Archive, infos: list[ShareInfo]) -> dict[tuple[str, str], str]:
    keys = {(i.patient_id, i.issuer or "") for i in infos if i.patient_id is not None}
    if not keys:
        return {}
    with archive.sessions() as session:
        rows = session.execute(
            select(Patient.patient_id, Patient.issuer, Patient.patient_name).where(
                tuple_(Patient.patient_id, Patient.issuer).in_(sorted(keys))
            )
        ).all()
    return {(pid, issuer): person_name(name) for pid, issuer, name in rows}


def _issue_form(values: dict[str, str] | None = None) -> dict[str, Any]:
    """The issue form's choices and the values to show in it (defaults, or what was typed)."""
    shown = {"expires": DEFAULT_EXPIRY, "protection": "code", "download": "1", "reshare": "1"}
    if values is not None:
        shown = {k: v for k, v in values.items() if k != CSRF_FIELD}
    return {"expiry_choices": EXPIRY_CHOICES, "form": shown}


# ---------------------------------------------------------------------------------- pages


@router.get("/")
def search_page(request: Request, principal: PrincipalDep, archive: ArchiveDep) -> Response:
    """Search studies; without criteria, the newest studies."""
    require_staff(principal)
    params = request.query_params
    try:
        search = parse_search(params)
    except MalformedRequest as exc:
        raw = {k: params.get(k, "")[:200] for k in ("name", "patient_id", "accession")}
        failed = {"values": raw, "error": exc.message}
        return render_staff(request, "staff_search.html", failed, 400)
    with archive.sessions() as session:
        found = find_studies(session, search.query)
    found = [s for s in found if principal.can_view_study(s.study_uid)]  # its institution's
    kept = {k: v for k, v in search.values.items() if v}
    context = {
        "values": search.values,
        "studies": [_study_row(s) for s in found[:PAGE_SIZE]],
        "page": search.page,
        "searched": not search.empty,
        "prev_url": _page_url(request, "/staff/", kept, search.page - 1),
        "next_url": _page_url(request, "/staff/", kept, search.page + 1)
        if len(found) > PAGE_SIZE
        else None,
    }
    return render_staff(request, "staff_search.html", context)


def _page_url(request: Request, path: str, values: dict[str, str], page: int) -> str | None:
    if page < 1:
        return None
    query = urlencode({**values, "page": str(page)})
    return f"{_root(request)}{path}?{query}"


@router.get("/studies/{study_uid}")
def study_page(
    request: Request, study_uid: str, principal: PrincipalDep, archive: ArchiveDep
) -> Response:
    """A study, its series and cloud films, and the form that issues one."""
    require_staff(principal)
    uid = check_uid(study_uid)
    if not principal.can_view_study(uid):  # answered like a study not in the archive
        raise NotFound(f"study {uid} is not in the archive")
    return _study(request, archive, uid, principal=principal)


def _study(
    request: Request,
    archive: Archive,
    study_uid: str,
    *,
    error: str | None = None,
    values: dict[str, str] | None = None,
    status: int = 200,
    principal: Principal | None = None,
) -> Response:
    with archive.sessions() as session:
        detail = study_detail(session, study_uid)
    if detail is None:
        raise NotFound(f"study {study_uid} is not in the archive")
    from cloudfilm.film.staff_pages import film_context  # the film pages import this module
    from cloudfilm.patients.staff_pages import recognition_context

    films = film_context(request, archive, principal, study_uid) if principal else {}
    recognised = recognition_context(archive, principal, study_uid) if principal else {}
    holds = principal is None or principal.can_change_study(study_uid)
    if not holds:  # opened by a consent: the cloud films are the holder's business
        shares = []
    links = links_for(request)
    now = utcnow()
    shares = _study_shares(links, detail, now)
    context = {
        "study": _study_row(detail),
        "series": detail.series_list,
        "shares": _share_rows(request, archive, shares, now),
        "next_url": f"{_root(request)}/staff/studies/{study_uid}",
        "viewer_url": f"{_root(request)}/viewer/studies/{study_uid}",
        "error": error,
        "film_queued": request.query_params.get("film_queued", "")[:4],
        "film_error": request.query_params.get("film_error", "")[:300],
        "holds": holds,
        "recognised_now": request.query_params.get("recognised", "")[:20],
        "recognition_error": request.query_params.get("recognition_error", "")[:300],
        **films,
        **recognised,
        **_issue_form(values),
    }
    return render_staff(request, "staff_study.html", context, status)


def _study_shares(links: ShareLinks, detail: StudySummary, now: datetime) -> list[ShareInfo]:
    """The study's cloud films, newest first. Listing those of its accession number first
    attaches the study to shares issued before it arrived (``ShareLinks.list`` resolves them)."""
    found: dict[str, ShareInfo] = {}
    if detail.accession_number:
        by_accession = ShareFilter(accession_number=detail.accession_number, limit=STUDY_SHARES)
        for info in links.list(by_accession, now):
            if info.pending or detail.study_uid in info.study_uids:
                found[info.id] = info
    for info in links.list(ShareFilter(study_uid=detail.study_uid, limit=STUDY_SHARES), now):
        found[info.id] = info
    return sorted(found.values(), key=lambda i: (i.created_at, i.id), reverse=True)


@router.get("/issue")
def accession_page(request: Request, principal: PrincipalDep) -> Response:
    """Issue a cloud film by accession number, before the images arrive."""
    require_staff(principal)
    return render_staff(request, "staff_accession.html", _issue_form())


@router.post("/shares")
async def issue_share(request: Request, principal: PrincipalDep, archive: ArchiveDep) -> Response:
    """Issue a cloud film from the form; show its link, QR code and access code once."""
    require_staff(principal)
    form = await read_form(request, FORM_LIMIT)
    check_form(csrf_keys(request), request, form, "issue")
    return await run_in_threadpool(_issue, request, archive, principal, form)


def _issue(
    request: Request, archive: Archive, principal: Principal, form: dict[str, str]
) -> Response:
    links = links_for(request)
    now = utcnow()
    try:
        wanted = parse_issue(form, f"{principal.kind}:{principal.id}", now)
        if not principal.all_institutions:  # its accession numbers name its studies only
            wanted.institution_pk = principal.institution_pk
        for uid in wanted.study_uids:
            if not principal.can_view_study(uid):  # answered like a study not in the archive
                raise NotFound(f"study {uid} is not in the archive")
            if not principal.can_change_study(uid):
                raise Forbidden("only a hospital that holds the exam may issue its cloud film")
        issued = links.issue(wanted, now)
    except CloudFilmError as exc:
        return _form_again(request, archive, form, exc)
    info = issued.info
    root = _root(request)
    context = {
        "share": _share_rows(request, archive, [info], now)[0],
        "link": issued.link,
        "code": issued.code,
        "qr": segno.make(issued.link, error="m").svg_data_uri(scale=4),
        "back_url": f"{root}/staff/studies/{info.study_uids[0]}"
        if len(info.study_uids) == 1
        else f"{root}/staff/shares?{urlencode({'accession': info.accession_number or ''})}",
    }
    return render_staff(request, "staff_issued.html", context, 201)


def _form_again(
    request: Request, archive: Archive, form: dict[str, str], exc: CloudFilmError
) -> Response:
    """The form that was sent, again, with the reason it was refused."""
    values = {k: v[:1000] for k, v in form.items() if k != CSRF_FIELD}
    study_uid = form.get("study_uid", "").strip()
    if study_uid:
        try:
            return _study(
                request, archive, check_uid(study_uid),
                error=exc.message, values=values, status=exc.status,
            )  # fmt: skip
        except CloudFilmError:
            pass  # an unknown or malformed study: say so on the accession form
    context = {**_issue_form(values), "error": exc.message}
    return render_staff(request, "staff_accession.html", context, exc.status)


@router.get("/shares")
def shares_page(request: Request, principal: PrincipalDep, archive: ArchiveDep) -> Response:
    """Cloud films, newest first, with filters."""
    require_staff(principal)
    params = request.query_params
    try:
        values, filters, page = parse_share_filter(params)
    except MalformedRequest as exc:
        states = [s.value for s in ShareState]
        failed: dict[str, Any] = {"values": {}, "shares": [], "error": exc.message}
        return render_staff(request, "staff_shares.html", {**failed, "states": states}, 400)
    now = utcnow()
    found = [
        info
        for info in links_for(request).list(filters, now)
        if share_visible(principal, info.study_uids, info.created_by)
    ]
    kept = {k: v for k, v in values.items() if v}
    here = _page_url(request, "/staff/shares", kept, page)
    context: dict[str, Any] = {
        "values": values,
        "states": [s.value for s in ShareState],
        "shares": _share_rows(request, archive, found[:PAGE_SIZE], now),
        "page": page,
        "next_url": here,
        "prev_page_url": _page_url(request, "/staff/shares", kept, page - 1),
        "next_page_url": _page_url(request, "/staff/shares", kept, page + 1)
        if len(found) > PAGE_SIZE
        else None,
    }
    return render_staff(request, "staff_shares.html", context)


@router.post("/shares/{share_id}/revoke")
async def revoke_share(request: Request, share_id: str, principal: PrincipalDep) -> Response:
    """Revoke a cloud film (and every link its holder made from it); back to where it was."""
    require_staff(principal)
    form = await read_form(request, FORM_LIMIT)
    check_form(csrf_keys(request), request, form, "revoke")
    links = links_for(request)
    share_id = check_share_id(share_id)
    info = await run_in_threadpool(links.get, share_id)
    if not share_visible(principal, info.study_uids, info.created_by):
        raise NotFound(f"share {share_id} not found")
    await run_in_threadpool(links.revoke, share_id)
    return RedirectResponse(_safe_next(request, form.get("next", "")), status_code=303)


def _safe_next(request: Request, wanted: str) -> str:
    """``wanted`` when it is a staff page of this site, else the list of cloud films (never
    another site: an open redirect would lend our name to phishing)."""
    home = f"{_root(request)}/staff/shares"
    if len(wanted) > 2000 or any(c in wanted for c in "\\\r\n\t") or not wanted.isprintable():
        return home
    parts = urlsplit(wanted)
    if parts.scheme or parts.netloc or not parts.path.startswith(f"{_root(request)}/staff/"):
        return home
    if "//" in parts.path or "/../" in parts.path or parts.path.endswith("/.."):
        return home
    return wanted


@router.get("/{rest:path}")
def missing_page(request: Request, rest: str, principal: PrincipalDep) -> Response:
    """Any other address under ``/staff/``: the staff 404 page (registered last)."""
    require_staff(principal)
    raise NotFound("there is no such staff page")
