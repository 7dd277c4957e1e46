"""A token in the URL becomes the request's principal (``cloudfilm.api.deps.get_principal``).

Every route under ``/s/{token}`` gets a ``Principal(kind="share")`` that reaches exactly the
share's studies, or an error: 404 for an unknown or malformed token (a forged one looks like a
missing one), 410 for an expired or revoked link, 403 before ``not_before``, and 401 while the
access code or patient check has not been passed in this browser (the session cookie).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response

from cloudfilm.api.deps import Principal, app_service
from cloudfilm.api.proxies import client_address
from cloudfilm.core.errors import Forbidden, Gone, NotFound, Unauthorized
from cloudfilm.sharing.accesses import record_access
from cloudfilm.sharing.links import ShareInfo, ShareLinks, ShareState, utcnow

#: The session cookie; its path is the share's own (``/s/{token}``), so each link has its own.
SESSION_COOKIE = "cloudfilm_share"


def links_for(request: Request) -> ShareLinks:
    """The application's :class:`ShareLinks` (made once, with the application's settings)."""
    return app_service(request, "share_links", ShareLinks)


def share_path(request: Request, token: str) -> str:
    """The path of the share's page as the client sees it (behind a proxy's root path too)."""
    return f"{request.scope.get('root_path', '')}/s/{token}"


def find_share(request: Request, token: str) -> ShareInfo:
    """The share of ``token``; NotFound for an unknown or malformed one."""
    info = links_for(request).find(token)
    if info is None:
        raise NotFound("this link does not exist; check that it was copied whole")
    return info


def check_state(info: ShareInfo, now: datetime) -> None:
    """Raise Gone (expired, revoked) or Forbidden (not yet valid) for an inactive share."""
    state = info.state(now)
    if state is ShareState.REVOKED:
        raise Gone("this link was revoked")
    if state is ShareState.EXPIRED:
        raise Gone("this link has expired")
    if state is ShareState.NOT_YET:
        opens = info.not_before.isoformat(timespec="minutes") if info.not_before else "later"
        raise Forbidden(f"this link opens on {opens}")


def is_unlocked(request: Request, info: ShareInfo, now: datetime) -> bool:
    """Whether this browser may use the share: no code or check, or a valid session cookie."""
    return info.secret_kind == "none" or has_session(request, info, now)


def has_session(request: Request, info: ShareInfo, now: datetime) -> bool:
    value = request.cookies.get(SESSION_COOKIE, "")
    keys = links_for(request).keys
    return bool(value) and keys.session_valid(value, info.id, int(now.timestamp()))


def principal_of(info: ShareInfo) -> Principal:
    return Principal(
        kind="share",
        id=info.id,
        study_uids=frozenset(info.study_uids),
        permissions=frozenset(info.permissions),
    )


def share_principal(request: Request, token: str) -> Principal:
    """The principal of a request under ``/s/{token}`` (see the module docstring)."""
    now = utcnow()
    info = find_share(request, token)
    check_state(info, now)
    if not is_unlocked(request, info, now):
        raise Unauthorized(
            "this link needs its access code or patient check: open the link in a browser "
            "and enter it first"
        )
    links_for(request).touch(info, now)
    request.state.share = info
    return principal_of(info)


def start_session(
    request: Request, response: Response, info: ShareInfo, token: str, now: datetime
) -> None:
    """Unlock the share in this browser: a signed, HttpOnly, SameSite=Lax cookie scoped to the
    share's path, for ``share_session_hours``, and record the opening."""
    links = links_for(request)
    hours = links.settings.share_session_hours
    until = min(now + timedelta(hours=hours), info.expires_at)
    value = links.keys.session_cookie(info.id, int(until.timestamp()))
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=max(1, int((until - now).total_seconds())),
        path=share_path(request, token),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    record_access(
        links.archive, info.id, "open", client_address(request),
        request.headers.get("user-agent", ""), now, request=request,
    )  # fmt: skip
