"""The patient's consent pages, from their cloud film (``/s/{token}/consents``).

The holder of a patient's own link (one that may reshare: not a doctor's link made from it)
asks that a hospital — or one doctor there — see this link's exams or all their exams for a
period; the one-time code sent to the phone on record confirms it (``cloudfilm.patients.
consent``). The page lists the patient's consents with a button to withdraw each, and who at
those hospitals opened the exams (from the audit trail). Like the other forms under
``/s/{token}``, these are protected from other sites by the link's session cookie, which is
``SameSite=Strict``: a request from elsewhere arrives locked.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from sqlalchemy import func, select

from cloudfilm.api.proxies import client_address
from cloudfilm.archive import Archive
from cloudfilm.audit import AuditRecord, trail_for
from cloudfilm.core.errors import CloudFilmError, InvalidQuery
from cloudfilm.index.models import AuditEvent, Institution, PatientLink, Study, utcnow
from cloudfilm.patients import consent as consents
from cloudfilm.patients.pix import platform_patient_of_study
from cloudfilm.sharing.links import ShareInfo
from cloudfilm.sharing.pages import _holder, _notice, read_form
from cloudfilm.sharing.principals import share_path
from cloudfilm.web.templates import render_page

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

#: Periods a patient may choose, in days.
PERIODS = (7, 30, 90, 365)
#: Exams opened by other hospitals listed on the page.
OPENINGS_SHOWN = 50


def _may_consent(info: ShareInfo) -> bool:
    return "reshare" in info.permissions and not info.is_reshare


def _audit(request: Request, info: ShareInfo, action: str, outcome: str, detail: str) -> None:
    trail_for(request.app.state.archive).record(
        AuditRecord(
            action=action, outcome=outcome, actor_kind="share", actor_id=info.id,
            address=client_address(request), agent=request.headers.get("user-agent", "")[:400],
            patient_id=info.patient_id or "",
            study_uid=info.study_uids[0] if info.study_uids else "", detail=detail[:1000],
        )
    )  # fmt: skip


def _institutions(archive: Archive) -> list[dict[str, str]]:
    with archive.engine.connect() as conn:
        rows = conn.execute(select(Institution.code, Institution.name).order_by(Institution.code))
        return [{"code": code, "name": name or code} for code, name in rows]


def _openings(
    archive: Archive, found: list[consents.ConsentInfo], study_uids: list[str]
) -> list[dict[str, Any]]:
    """Who at the hospitals the patient consented to opened the patient's exams (audit)."""
    institutions = sorted({c.institution for c in found})
    if not institutions or not study_uids:
        return []
    with archive.engine.connect() as conn:
        rows = conn.execute(
            select(
                AuditEvent.institution, AuditEvent.actor_id, AuditEvent.study_uid,
                func.min(AuditEvent.at), func.max(AuditEvent.at), func.count(),
            )
            .where(
                AuditEvent.institution.in_(institutions),
                AuditEvent.actor_kind == "user",
                AuditEvent.outcome == "success",
                AuditEvent.action.in_(("view", "retrieve", "download", "query")),
                AuditEvent.study_uid.in_(study_uids),
            )
            .group_by(AuditEvent.institution, AuditEvent.actor_id, AuditEvent.study_uid)
            .order_by(func.max(AuditEvent.at).desc())
            .limit(OPENINGS_SHOWN)
        ).all()  # fmt: skip
    names = {c.institution: c.institution_name for c in found}
    return [
        {"institution": names.get(inst, inst), "who": actor, "study_uid": uid,
         "first": first.strftime("%Y-%m-%d %H:%M"), "last": last.strftime("%Y-%m-%d %H:%M"),
         "times": count}
        for inst, actor, uid, first, last, count in rows
    ]  # fmt: skip


def _patient_studies(archive: Archive, info: ShareInfo) -> list[str]:
    """The exams of the link's patient (all of them, through the platform patient)."""
    if not info.study_uids:
        return []
    with archive.engine.connect() as conn:
        platform = platform_patient_of_study(conn, info.study_uids[0])
        if platform is None:
            return list(info.study_uids)
        return list(
            conn.execute(
                select(Study.study_uid)
                .join(PatientLink, PatientLink.patient_pk == Study.patient_pk)
                .where(PatientLink.platform_patient_pk == platform)
            ).scalars()
        )


def _page(
    request: Request, token: str, info: ShareInfo, now: datetime, *, error: str | None = None,
    status: int = 200, notice: str | None = None,
) -> Response:  # fmt: skip
    archive: Archive = request.app.state.archive
    found: list[consents.ConsentInfo] = []
    if info.study_uids:
        _platform, found = consents.consents_for_study(archive, info.study_uids[0])
    context = {
        "base": share_path(request, token),
        "may_consent": _may_consent(info),
        "pending_accession": not info.study_uids,
        "institutions": _institutions(archive),
        "periods": PERIODS,
        "consents": [
            {**c.as_json(), "in_force": c.in_force(now), "until": c.expires_at.strftime("%Y-%m-%d")}
            for c in found
            if c.state in ("active", "withdrawn", "pending")
        ],
        "openings": _openings(archive, found, _patient_studies(archive, info)),
        "error": error,
        "notice": notice,
    }
    return render_page(request, "share_consents.html", context, status_code=status)


@router.get("/s/{token}/consents")
def consents_page(request: Request, token: str) -> Response:
    """The patient's consents, the form that asks for one, and who opened the exams."""
    now = utcnow()
    found = _holder(request, token, now)
    if isinstance(found, Response):
        return found
    return _page(
        request, token, found, now, notice=request.query_params.get("done", "")[:20] or None
    )


@router.post("/s/{token}/consents")
async def ask_consent(request: Request, token: str) -> Response:
    """Ask for a consent: a code goes to the patient's phone; the page to enter it."""
    try:
        form = await read_form(request)
    except CloudFilmError as exc:
        return _notice(request, "error", exc.status)
    return await run_in_threadpool(_ask, request, token, form)


def _ask(request: Request, token: str, form: dict[str, str]) -> Response:
    now = utcnow()
    found = _holder(request, token, now)
    if isinstance(found, Response):
        return found
    if not _may_consent(found) or not found.study_uids:
        return _page(request, token, found, now, error="not-allowed", status=403)
    archive: Archive = request.app.state.archive
    try:
        days = int(form.get("days", "0"))
        if days not in PERIODS:
            raise InvalidQuery("choose one of the periods offered")
        doctor = form.get("doctor", "").strip() or None
        scope = None if form.get("scope") == "all" else list(found.study_uids)
        info, hint = consents.request_consent(
            archive, found.study_uids[0], institution=form.get("institution", "").strip(),
            username=doctor, study_uids=scope, days=days, created_by=f"share:{found.id}",
        )  # fmt: skip
    except CloudFilmError as exc:
        _audit(request, found, "consent-request", "failure", exc.message)
        return _page(request, token, found, now, error=exc.message, status=exc.status)
    _audit(request, found, "consent-request", "success",
           f"consent {info.id} for {info.institution}, code sent to …{hint}")  # fmt: skip
    context = {"base": share_path(request, token), "consent": info.as_json(), "hint": hint,
               "minutes": archive.settings.consent_code_minutes, "error": None}  # fmt: skip
    return render_page(request, "share_consent_code.html", context, status_code=201)


@router.post("/s/{token}/consents/{consent_id}/confirm")
async def confirm_consent(request: Request, token: str, consent_id: str) -> Response:
    """Enter the code: the consent is given."""
    try:
        form = await read_form(request)
    except CloudFilmError as exc:
        return _notice(request, "error", exc.status)
    return await run_in_threadpool(_confirm, request, token, consent_id, form)


def _confirm(request: Request, token: str, consent_id: str, form: dict[str, str]) -> Response:
    now = utcnow()
    found = _holder(request, token, now)
    if isinstance(found, Response):
        return found
    archive: Archive = request.app.state.archive
    try:
        info = consents.confirm(archive, consent_id[:16], form.get("code", "")[:20],
                                created_by=f"share:{found.id}")  # fmt: skip
    except InvalidQuery as exc:  # a wrong code, attempts left: the same page again
        _audit(request, found, "consent-give", "denied", f"consent {consent_id[:16]}: wrong code")
        pending = consents.get(archive, consent_id[:16])
        context = {
            "base": share_path(request, token), "consent": pending.as_json(), "hint": "",
            "minutes": archive.settings.consent_code_minutes, "error": exc.message,
        }  # fmt: skip
        return render_page(request, "share_consent_code.html", context, status_code=400)
    except CloudFilmError as exc:
        _audit(
            request, found, "consent-give", "denied", f"consent {consent_id[:16]}: {exc.message}"
        )
        return _page(request, token, found, now, error=exc.message, status=exc.status)
    doctor = f" / {info.username}" if info.username else ""
    until = f"{info.expires_at:%Y-%m-%d}"
    _audit(request, found, "consent-give", "success",
           f"consent {info.id} to {info.institution}{doctor} until {until}")  # fmt: skip
    return RedirectResponse(f"{share_path(request, token)}/consents?done=given", status_code=303)


@router.post("/s/{token}/consents/{consent_id}/withdraw")
def withdraw_consent_form(request: Request, token: str, consent_id: str) -> Response:
    """Withdraw a consent: the hospital no longer sees the exams."""
    now = utcnow()
    found = _holder(request, token, now)
    if isinstance(found, Response):
        return found
    archive: Archive = request.app.state.archive
    if not _may_consent(found) or not found.study_uids:
        return _page(request, token, found, now, error="not-allowed", status=403)
    try:
        platform, _list = consents.consents_for_study(archive, found.study_uids[0])
        if platform is None:
            raise InvalidQuery("no such consent")
        info = consents.withdraw(archive, consent_id[:16], platform_pk=platform)
    except CloudFilmError as exc:
        return _page(request, token, found, now, error=exc.message, status=exc.status)
    _audit(
        request, found, "consent-withdraw", "success", f"consent {info.id} to {info.institution}"
    )
    return RedirectResponse(
        f"{share_path(request, token)}/consents?done=withdrawn", status_code=303
    )
