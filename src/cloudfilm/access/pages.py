"""Staff sign-in, sign-out and password change pages (docs/access.md, "Staff sign-in").

- ``GET /staff/signin?next=/staff/...``: the form (username, password); ``POST /staff/signin``
  checks it under the lockout of :meth:`Accounts.sign_in` and, when right, sets the session
  cookie and goes back (303) to ``next`` — a page of this site under ``/staff`` or
  ``/viewer``, never another site (:func:`safe_next`).
- ``POST /staff/signout``: clears this browser's session cookie.
- ``GET/POST /staff/password``: the signed-in user changes their own password; every session
  of the user ends (the accounts layer bumps the session epoch) and this browser gets a fresh
  cookie.

**The session cookie** (``cloudfilm_staff``, :data:`cloudfilm.api.deps.STAFF_COOKIE`) holds
the signed value of :meth:`Accounts.session_cookie` (user, session epoch, end time; the server
refuses it after ``staff_session_hours``). It is ``HttpOnly`` (no script reads it),
``SameSite=Strict`` (no other site's page or link sends it), ``Secure`` when the request came
over https, and has no ``Max-Age``: it also ends when the browser closes, which suits shared
workstations. Its path is ``/`` (under the root path), not ``/staff``: the viewer
(``/viewer/...``) and the DICOMweb routes the viewer calls (``/dicomweb/...``) are opened from
the staff pages and must see the same signed-in user.

Every form carries a CSRF token (:mod:`cloudfilm.sharing.csrf`, purposes ``signin``,
``signout`` and ``password``): the sign-in form too, so that another site cannot sign a
browser in as the forger's account (login CSRF). The sign-in page sets the CSRF nonce cookie,
since a visitor arrives there without one. Errors are pages in the reader's language (the
staff routes' :class:`~cloudfilm.sharing.staff.StaffRoute`). Wrong name and wrong password get
the same answer (401), so the page never tells which usernames exist.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from cloudfilm.access.accounts import (
    MAX_PASSWORD_CHARS,
    MIN_PASSWORD_CHARS,
    SIGNIN_CLIENT,
    USER,
    Accounts,
    utcnow,
)
from cloudfilm.access.principals import accounts_for
from cloudfilm.api.deps import STAFF_COOKIE, Principal, PrincipalDep
from cloudfilm.api.proxies import client_address
from cloudfilm.core.config import Settings
from cloudfilm.core.errors import Forbidden, MalformedRequest
from cloudfilm.sharing.csrf import check_form
from cloudfilm.sharing.lockout import Verdict, client_subject
from cloudfilm.sharing.pages import read_form
from cloudfilm.sharing.staff import (
    FORM_LIMIT,
    SIGNIN_PATH,
    StaffRoute,
    csrf_keys,
    render_staff,
)
from cloudfilm.web.i18n import LANGUAGES, choose_language, translator

logger = logging.getLogger(__name__)

#: Pages a sign-in may return to (under the root path).
NEXT_PREFIXES = ("/staff", "/viewer")

signin_router = APIRouter(prefix="/staff", route_class=StaffRoute, include_in_schema=False)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


def safe_next(request: Request, wanted: str) -> str:
    """``wanted`` when it is a page of this site under ``/staff`` or ``/viewer``, else the
    study search ``/staff/``.

    An open redirect would lend the hospital's address to phishing, so only a local path is
    kept: no scheme, no host (``https://evil.example``, ``//evil.example``), no backslash
    (browsers read ``/\\evil.example`` as ``//evil.example``), no control characters, no
    ``..`` or ``//`` segments; and not the sign-in page itself.
    """
    root = _root(request)
    home = f"{root}/staff/"
    if not wanted or len(wanted) > 2000 or "\\" in wanted or not wanted.isprintable():
        return home
    parts = urlsplit(wanted)
    if parts.scheme or parts.netloc or not wanted.startswith("/") or wanted.startswith("//"):
        return home
    path = parts.path
    if "//" in path or "/../" in path or path.endswith("/..") or "/./" in path:
        return home
    if not any(path == f"{root}{p}" or path.startswith(f"{root}{p}/") for p in NEXT_PREFIXES):
        return home
    if path.startswith(f"{root}{SIGNIN_PATH}"):
        return home
    return wanted


def _cookie_options(request: Request) -> dict[str, Any]:
    return {
        "path": f"{_root(request)}/",
        "httponly": True,
        "samesite": "strict",
        "secure": request.url.scheme == "https",
    }


def set_session_cookie(request: Request, response: Response, value: str) -> None:
    """Give the browser its session (see the module docstring for the attributes)."""
    response.set_cookie(STAFF_COOKIE, value, **_cookie_options(request))


def clear_session_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(STAFF_COOKIE, **_cookie_options(request))


def _minutes(verdict: Verdict | None, now: datetime) -> int:
    return math.ceil(verdict.retry_after(now) / 60) if verdict is not None else 0


def _text(request: Request, key: str, **values: object) -> str:
    return translator(choose_language(request))(key, **values)


# ------------------------------------------------------------------------------- sign-in


def _signin_form(
    request: Request,
    wanted: str,
    *,
    username: str = "",
    error: str | None = None,
    remaining: int | None = None,
    signed_out: bool = False,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    lang = choose_language(request)
    other = next(code for code in LANGUAGES if code != lang)
    context = {
        "next": wanted,
        "username": username,
        "error": error,
        "remaining": remaining,
        "signed_out": signed_out,
        # The language switch keeps the page to return to.
        "lang_href": "?" + urlencode({"next": wanted, "lang": other}),
    }
    response = render_staff(request, "staff_signin.html", context, status)
    if headers:
        response.headers.update(headers)
    return response


@signin_router.get("/signin")
def signin_page(request: Request) -> Response:
    """The sign-in form; it returns to ``next`` afterwards (when that is a safe page)."""
    wanted = safe_next(request, request.query_params.get("next", ""))
    return _signin_form(request, wanted, signed_out=request.query_params.get("out") == "1")


@signin_router.post("/signin")
async def signin(request: Request) -> Response:
    """Check the form; set the session cookie and go to ``next``, or show why not."""
    form = await read_form(request, FORM_LIMIT)
    check_form(csrf_keys(request), request, form, "signin")
    # argon2 takes tens of milliseconds on purpose: off the event loop.
    return await run_in_threadpool(_sign_in, request, form)


def _sign_in(request: Request, form: dict[str, str]) -> Response:
    accounts = accounts_for(request)
    settings: Settings = request.app.state.settings
    wanted = safe_next(request, form.get("next", ""))
    username = form.get("username", "").strip()[:200]
    address = client_address(request)
    now = utcnow()
    agent = request.headers.get("user-agent", "")
    result = accounts.sign_in(username, form.get("password", ""), address, now, agent=agent)
    if result.user is not None:
        logger.info("staff sign-in: %s from %s", result.user.username, address)
        response = RedirectResponse(wanted, status_code=303)
        until = now + timedelta(hours=settings.staff_session_hours)
        set_session_cookie(request, response, accounts.session_cookie(result.user, until))
        return response
    logger.info("staff sign-in refused (%s) from %s", result.error, address)
    if result.error == "locked":
        minutes = max(1, _minutes(result.verdict, now))
        seconds = result.verdict.retry_after(now) if result.verdict else minutes * 60
        return _signin_form(
            request, wanted, username=username, status=429,
            error=_text(request, "signin.error.locked", minutes=minutes),
            headers={"Retry-After": str(max(1, seconds))},
        )  # fmt: skip
    if result.error == "disabled":
        error = _text(request, "signin.error.disabled")
        return _signin_form(request, wanted, username=username, error=error, status=403)
    remaining = result.verdict.remaining if result.verdict is not None else None
    return _signin_form(
        request, wanted, username=username, status=401, remaining=remaining,
        error=_text(request, "signin.error.wrong"),
    )  # fmt: skip


@signin_router.post("/signout")
async def signout(request: Request) -> Response:
    """Clear this browser's session cookie and show the sign-in page.

    Other browsers of the same user stay signed in (changing the password ends them all).
    """
    form = await read_form(request, FORM_LIMIT)
    check_form(csrf_keys(request), request, form, "signout")
    response = RedirectResponse(f"{_root(request)}{SIGNIN_PATH}?out=1", status_code=303)
    clear_session_cookie(request, response)
    return response


# ------------------------------------------------------------------------ password change


def _signed_in(principal: Principal) -> str:
    """The username of a signed-in user; 403 for any other principal (development, API key)."""
    if principal.kind != "user":
        raise Forbidden("sign in with a staff account to change a password")
    return principal.id


def _password_form(
    request: Request,
    username: str,
    *,
    error: str | None = None,
    remaining: int | None = None,
    changed: bool = False,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    context = {
        "username": username,
        "error": error,
        "remaining": remaining,
        "changed": changed,
        "min_chars": MIN_PASSWORD_CHARS,
    }
    response = render_staff(request, "staff_password.html", context, status)
    if headers:
        response.headers.update(headers)
    return response


@signin_router.get("/password")
def password_page(request: Request, principal: PrincipalDep) -> Response:
    """The form that changes the signed-in user's own password."""
    return _password_form(request, _signed_in(principal))


@signin_router.post("/password")
async def change_password(request: Request, principal: PrincipalDep) -> Response:
    """Change the password (the current one must pass, under the sign-in lockout); every
    session of the user ends and this browser gets a new cookie."""
    username = _signed_in(principal)
    form = await read_form(request, FORM_LIMIT)
    check_form(csrf_keys(request), request, form, "password")
    return await run_in_threadpool(_change, request, username, form)


def _change(request: Request, username: str, form: dict[str, str]) -> Response:
    accounts = accounts_for(request)
    new, again = form.get("new", ""), form.get("again", "")
    if new != again:
        error = _text(request, "signin.password.mismatch")
        return _password_form(request, username, error=error, status=400)
    if len(new) < MIN_PASSWORD_CHARS:
        error = _text(request, "signin.password.too_short", count=MIN_PASSWORD_CHARS)
        return _password_form(request, username, error=error, status=400)
    if len(new) > MAX_PASSWORD_CHARS:
        error = _text(request, "signin.password.too_long", count=MAX_PASSWORD_CHARS)
        return _password_form(request, username, error=error, status=400)
    address = client_address(request)
    try:
        changed = accounts.change_password(username, form.get("old", ""), new, address)
    except MalformedRequest as exc:  # a rule of the accounts layer this page does not know
        return _password_form(request, username, error=exc.message, status=400)
    if not changed:
        return _refused_change(request, accounts, username, address)
    logger.info("staff password changed: %s from %s", username, address)
    user = accounts.user(username)
    settings: Settings = request.app.state.settings
    until = utcnow() + timedelta(hours=settings.staff_session_hours)
    response = _password_form(request, username, changed=True)
    set_session_cookie(request, response, accounts.session_cookie(user, until))
    return response


def _refused_change(request: Request, accounts: Accounts, username: str, address: str) -> Response:
    """A wrong current password (401, attempts left) or a locked-out user (429)."""
    now = utcnow()
    verdict = accounts.lockout.check(
        [(USER, username.lower()), (SIGNIN_CLIENT, client_subject(address))], now
    )
    if verdict.locked_until is not None:
        minutes = max(1, _minutes(verdict, now))
        return _password_form(
            request, username, status=429,
            error=_text(request, "signin.error.locked", minutes=minutes),
            headers={"Retry-After": str(verdict.retry_after(now))},
        )  # fmt: skip
    error = _text(request, "signin.password.wrong")
    return _password_form(request, username, error=error, remaining=verdict.remaining, status=401)
