"""The pages of a share link, in Chinese and English.

- ``GET /s/{token}``: the page that asks for the access code or patient check when one is
  needed (nothing about the exam is shown before); an expired or revoked link gets a clear
  HTTP 410 page (an expired link issued by staff offers renewal after the check); otherwise
  the patient page (``cloudfilm.viewer.pages.render_viewer``) with the holder's panel.
- ``POST /s/{token}/unlock`` and ``POST /s/{token}/renew`` take the code or answer (a form).
- ``POST /s/{token}/reshares`` and ``POST /s/{token}/reshares/{id}/revoke``: the holder's
  forms to share onward with a doctor and to withdraw such a link.

Forms are plain HTML (no script), so they work in WeChat's in-app browser. They need no CSRF
token: the session cookie is ``SameSite=Lax`` (a cross-site POST does not carry it), and acting
without it needs the token, which a forging site does not know.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import segno
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from markupsafe import Markup

from cloudfilm.api.deps import ArchiveDep
from cloudfilm.api.proxies import client_address
from cloudfilm.core.errors import (
    CloudFilmError,
    MalformedRequest,
    NotFound,
    TooLarge,
    UnsupportedMediaType,
)
from cloudfilm.sharing import crypto
from cloudfilm.sharing.accesses import list_accesses, record_access
from cloudfilm.sharing.links import (
    ShareFilter,
    ShareInfo,
    ShareLinks,
    ShareRequest,
    ShareState,
    parse_expiry,
    utcnow,
)
from cloudfilm.sharing.lockout import CLIENT, SHARE, Subject, Verdict, client_subject
from cloudfilm.sharing.principals import (
    has_session,
    is_unlocked,
    links_for,
    principal_of,
    share_path,
    start_session,
)
from cloudfilm.sharing.useragent import describe_agent
from cloudfilm.viewer.pages import render_viewer
from cloudfilm.web.i18n import choose_language, translator
from cloudfilm.web.templates import environment, render_page

#: Largest form body read, in bytes (an answer is a few characters; a reshare form < 1 KB).
FORM_LIMIT = 4096
#: The page suggests downloading the originals when the link expires within this time.
EXPIRING_SOON = timedelta(days=30)

router = APIRouter(include_in_schema=False)


async def read_form(request: Request, limit: int = FORM_LIMIT) -> dict[str, str]:
    """A small ``application/x-www-form-urlencoded`` body of ``limit`` bytes at most, bounded
    before it is parsed."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("this form is sent as application/x-www-form-urlencoded")
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > limit:
        raise TooLarge(f"a form holds at most {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"a form holds at most {limit} bytes")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedRequest("the form cannot be read") from exc
    return dict(pairs)


def _time_text(value: datetime, with_time: bool = False) -> str:
    fmt = "%Y-%m-%d %H:%M UTC" if with_time else "%Y-%m-%d"
    return value.strftime(fmt)


def _subjects(request: Request, info: ShareInfo) -> list[Subject]:
    return [(SHARE, info.id), (CLIENT, client_subject(client_address(request)))]


def _minutes(verdict: Verdict, now: datetime) -> int:
    return math.ceil(verdict.retry_after(now) / 60)


def _notice(
    request: Request,
    reason: str,
    status: int,
    *,
    when: datetime | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    context = {"reason": reason, "when": _time_text(when) if when else None, "renew_action": None}
    context |= extra or {}
    headers = {}
    minutes = context.get("locked_minutes")
    if minutes:
        headers["Retry-After"] = str(int(minutes) * 60)
    return render_page(request, "share_gone.html", context, status_code=status, headers=headers)


def _inactive(
    request: Request,
    info: ShareInfo,
    token: str,
    now: datetime,
    *,
    error: str | None = None,
    status: int = 410,
) -> Response:
    """The page of a link that is not active: revoked, expired (maybe renewable), not yet."""
    state = info.state(now)
    if state is ShareState.REVOKED:
        return _notice(request, "revoked", 410)
    if state is ShareState.NOT_YET:
        return _notice(request, "not-yet", 403, when=info.not_before)
    if not info.renewable_by_holder():
        return _notice(request, "expired-final", 410, when=info.expires_at)
    verdict = links_for(request).lockout.check(_subjects(request, info), now)
    extra = {
        "renew_action": f"{share_path(request, token)}/renew",
        "kind": info.secret_kind,
        "error": error,
        "locked_minutes": _minutes(verdict, now),
    }
    return _notice(request, "expired", status, when=info.expires_at, extra=extra)


def _unlock_page(
    request: Request,
    info: ShareInfo,
    token: str,
    now: datetime,
    *,
    error: str | None = None,
    status: int = 200,
) -> Response:
    links = links_for(request)
    verdict = links.lockout.check(_subjects(request, info), now)
    minutes = _minutes(verdict, now)
    context = {
        "kind": info.secret_kind,
        "action": f"{share_path(request, token)}/unlock",
        "submit_key": "share.unlock.submit",
        "error": error,
        "locked_minutes": minutes,
        "remaining": verdict.remaining,
        "max_failures": links.lockout.max_failures,
    }
    headers = {"Retry-After": str(verdict.retry_after(now))} if minutes else {}
    return render_page(request, "share_unlock.html", context, status_code=status, headers=headers)


@dataclass(frozen=True)
class _Attempt:
    passed: bool
    #: Message key of the failure, or None.
    error: str | None
    status: int


def _attempt(request: Request, links: ShareLinks, info: ShareInfo, answer: str) -> _Attempt:
    """Check an answer under the lockout: a malformed one is refused without counting; else
    the attempt is counted before the answer is checked (so racing requests cannot get more
    checks than the limit), refused unread while locked, and given back when right."""
    now = utcnow()
    subjects = _subjects(request, info)
    try:
        links.normalize(info, answer)
    except crypto.InvalidAnswer:
        if links.lockout.check(subjects, now).locked_until is not None:
            return _Attempt(False, None, 429)
        return _Attempt(False, f"share.error.invalid.{info.secret_kind}", 400)
    counted, verdict = links.lockout.reserve(subjects, now)
    if not counted:
        return _Attempt(False, None, 429)
    if links.verify(info, answer):
        links.lockout.passed(subjects, now)
        return _Attempt(True, None, 303)
    status = 429 if verdict.locked_until is not None else 401
    return _Attempt(False, f"share.error.wrong.{info.secret_kind}", status)


@router.get("/s/{token}")
def share_page(request: Request, token: str, archive: ArchiveDep) -> Response:
    """The page of a link: the code page, the 410 page, or the patient page."""
    now = utcnow()
    links = links_for(request)
    info = links.find(token)
    if info is None:
        return _notice(request, "not-found", 404)
    if info.state(now) is not ShareState.ACTIVE:
        return _inactive(request, info, token, now)
    if not is_unlocked(request, info, now):
        return _unlock_page(request, info, token, now)
    links.touch(info, now)
    context = share_context(request, links, info, token, now)
    response = render_viewer(
        request, archive, principal_of(info), list(info.study_uids),
        base_url=context["base_url"], share=context,
    )  # fmt: skip
    if not has_session(request, info, now):  # a link without code: one "open" per session
        start_session(request, response, info, token, now)
    return response


@router.post("/s/{token}/unlock")
async def unlock(request: Request, token: str) -> Response:
    """Check the access code or patient check; on success unlock this browser."""
    return await _answer_form(request, token, renew=False)


@router.post("/s/{token}/renew")
async def renew(request: Request, token: str) -> Response:
    """Renew an expired link issued by staff, after the code or patient check."""
    return await _answer_form(request, token, renew=True)


async def _answer_form(request: Request, token: str, *, renew: bool) -> Response:
    links = links_for(request)
    info = await run_in_threadpool(links.find, token)
    if info is None:
        return _notice(request, "not-found", 404)
    try:
        form = await read_form(request)
    except CloudFilmError as exc:
        return _notice(request, "error", exc.status)
    return await run_in_threadpool(_answer, request, links, info, token, form, renew)


def _answer(
    request: Request,
    links: ShareLinks,
    info: ShareInfo,
    token: str,
    form: dict[str, str],
    renew: bool,
) -> Response:
    now = utcnow()
    state = info.state(now)
    home = share_path(request, token)
    if state is ShareState.ACTIVE and (renew or info.secret_kind == "none"):
        return RedirectResponse(home, status_code=303)
    if state is not ShareState.ACTIVE and not (
        renew and state is ShareState.EXPIRED and info.renewable_by_holder()
    ):
        return _inactive(request, info, token, now)
    attempt = _attempt(request, links, info, form.get("answer", ""))
    if not attempt.passed:
        t = translator(choose_language(request))
        error = t(attempt.error) if attempt.error else None
        if renew:
            return _inactive(request, info, token, now, error=error, status=attempt.status)
        return _unlock_page(request, info, token, now, error=error, status=attempt.status)
    if renew:
        info = links.renew(info.id, now=now)
        record_access(
            links.archive, info.id, "renew", client_address(request),
            request.headers.get("user-agent", ""), now, request=request,
        )  # fmt: skip
    response = RedirectResponse(home, status_code=303)
    start_session(request, response, info, token, now)
    return response


def share_context(
    request: Request, links: ShareLinks, info: ShareInfo, token: str, now: datetime
) -> dict[str, Any]:
    """What the patient page gets as ``share`` (its viewer, summary and the holder's panel)."""
    base = share_path(request, token)
    perms = info.permissions
    can_reshare = "reshare" in perms and not info.is_reshare
    context: dict[str, Any] = {
        "id": info.id,
        "label": info.label,
        "expires_at": info.expires_at.isoformat(timespec="seconds"),
        "expires_text": _time_text(info.expires_at),
        "expiring_soon": info.expires_at - now < EXPIRING_SOON,
        "permissions": sorted(perms),
        "can_download": "download" in perms,
        "can_reshare": can_reshare,
        "can_include_prior": can_reshare and info.secret_kind != "none",
        "is_reshare": info.is_reshare,
        "pending": info.pending,
        "pending_accession": info.accession_number if info.pending else None,
        "accession_number": info.accession_number,
        "base_url": base,
        "accesses_url": f"{base}/api/accesses",
        "reshares_url": f"{base}/api/reshares",
        "accesses": [
            {**a.as_json(), "when": _time_text(a.at, True), "device": describe_agent(a.user_agent)}
            for a in list_accesses(links.archive, info.id, with_reshares=not info.is_reshare)
        ],
        "reshares": [
            {**r.as_json(now), "expires_text": _time_text(r.expires_at)}
            for r in (links.list(ShareFilter(parent_id=info.id), now) if can_reshare else [])
        ],
    }
    lang = choose_language(request)
    t = translator(lang)
    actions = [{"href": "#share-panel", "label": t("share.link.panel")}]
    if "download" in perms:  # the ZIP of originals (cloudfilm.sharing.downloads)
        actions.insert(0, {"href": f"{base}/download.zip", "label": t("share.link.download")})
    context["links"] = actions
    panel = environment().get_template("share_panel.html")
    context["panel_html"] = Markup(panel.render(t=t, lang=lang, share=context))
    return context


def _holder(request: Request, token: str, now: datetime) -> ShareInfo | Response:
    """The active, unlocked share of ``token``, or the page to show instead."""
    info = links_for(request).find(token)
    if info is None:
        return _notice(request, "not-found", 404)
    if info.state(now) is not ShareState.ACTIVE:
        return _inactive(request, info, token, now)
    if not is_unlocked(request, info, now):
        return _unlock_page(request, info, token, now, status=401)
    return info


@router.post("/s/{token}/reshares")
async def reshare_form(request: Request, token: str) -> Response:
    """Make a link for a doctor from the page's form; show it (and its code) once."""
    try:
        form = await read_form(request)
    except CloudFilmError as exc:
        return _notice(request, "error", exc.status)
    return await run_in_threadpool(_reshare, request, token, form)


def _reshare(request: Request, token: str, form: dict[str, str]) -> Response:
    now = utcnow()
    found = _holder(request, token, now)
    if isinstance(found, Response):
        return found
    links = links_for(request)
    expires_text = form.get("expires", "7d").strip()
    try:
        expires = found.expires_at if expires_text == "max" else parse_expiry(expires_text, now)
        issued = links.reshare(
            found.id,
            ShareRequest(
                expires_at=expires,
                # earlier exams go only behind a code (the reshare reaches more than the card)
                secret="code" if form.get("code") or form.get("include_prior") else "none",
                permissions=("view", "download") if form.get("download") else ("view",),
                label=form.get("label", ""),
                include_prior=bool(form.get("include_prior")),
                created_by=f"share:{found.id}",
            ),
            now,
        )
    except CloudFilmError as exc:
        return _notice(request, "error", exc.status)
    qr = segno.make(issued.link, error="m").svg_data_uri(scale=4)
    context = {
        "link": issued.link,
        "code": issued.code,
        "qr": qr,
        "expires_text": _time_text(issued.info.expires_at),
        "back": share_path(request, token),
    }
    return render_page(request, "share_reshared.html", context, status_code=201)


@router.post("/s/{token}/reshares/{share_id}/revoke")
def revoke_reshare_form(request: Request, token: str, share_id: str) -> Response:
    """Withdraw a link the holder made; back to the page."""
    now = utcnow()
    found = _holder(request, token, now)
    if isinstance(found, Response):
        return found
    links = links_for(request)
    try:
        child = links.get(share_id)
        if child.parent_id != found.id:
            raise NotFound("no such link")
        links.revoke(child.id, now)
    except CloudFilmError as exc:
        return _notice(request, "error", exc.status)
    return RedirectResponse(f"{share_path(request, token)}#share-panel", status_code=303)
