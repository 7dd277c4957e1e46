"""Typed FastAPI dependencies: every route gets the archive and the caller's principal here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, TypeVar, cast

import anyio
from fastapi import Depends, Request

from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.core.errors import Unauthorized

T = TypeVar("T")


@dataclass(frozen=True)
class Principal:
    """Who makes a request. Access checks ask the principal, which denies by default.

    ``kind`` is ``development`` (no authentication: only with ``CLOUDFILM_ENV=development``),
    ``share`` (a cloud film link whose checks were passed: it reaches exactly ``study_uids``),
    ``user`` (a signed-in staff member) or ``apikey`` (a machine client). Users and API keys
    see their institution's studies (``institution_pk``; ``sees`` asks the index), or all of
    them with the ``platform-admin`` role; ``permissions`` come from their role
    (``cloudfilm.access.roles``) or, for a share, from the link.
    """

    kind: str
    id: str
    #: The studies a scoped principal (a share link) may reach; ``None`` means not scoped.
    study_uids: frozenset[str] | None = None
    #: What the principal may do beyond viewing: ``download``, ``reshare`` (links);
    #: ``download``, ``store``, ``shares``, ``users``, ``all-institutions`` (roles).
    permissions: frozenset[str] = frozenset()
    role: str = ""
    institution_pk: int | None = None
    #: The institution's code ('' when none), for logs and the audit trail.
    institution: str = ""
    #: Whether the principal may see a study: its institution owns or holds it, or a
    #: patient's consent opens it (set for users and API keys).
    sees: Callable[[str], bool] | None = field(default=None, compare=False, repr=False)
    #: Whether its institution owns or holds the study (a consent does not count).
    holds: Callable[[str], bool] | None = field(default=None, compare=False, repr=False)

    @property
    def all_institutions(self) -> bool:
        return "all-institutions" in self.permissions

    @property
    def label(self) -> str:
        """``kind:id`` (what ``created_by`` columns and logs hold)."""
        return f"{self.kind}:{self.id}"

    def can_view_study(self, study_uid: str) -> bool:
        if self.kind == "development" or self.all_institutions:
            return True
        if self.study_uids is not None:
            return study_uid in self.study_uids
        return self.sees is not None and self.sees(study_uid)

    def can_change_study(self, study_uid: str) -> bool:
        """Whether the study is the principal's institution's own (it owns or holds it): what
        issuing cloud films of it, adding reports or film sheets to it need. A consent
        lets another institution see a study, never change it."""
        if self.kind == "development" or self.all_institutions:
            return True
        if self.study_uids is not None:
            return False
        return self.holds is not None and self.holds(study_uid)

    def can_download(self, study_uid: str) -> bool:
        """Whether originals of the study may be downloaded (ZIP, WADO-RS native)."""
        if self.kind == "development":
            return True
        return "download" in self.permissions and self.can_view_study(study_uid)

    def can_store(self) -> bool:
        """Whether this principal may add instances (STOW-RS, report upload, film sheets)."""
        return self.kind == "development" or (self.kind != "share" and "store" in self.permissions)

    def can_manage_shares(self) -> bool:
        """Whether this principal may create, list and revoke cloud films (staff)."""
        return self.kind == "development" or (self.kind != "share" and "shares" in self.permissions)

    def can_manage_users(self) -> bool:
        return self.kind != "share" and "users" in self.permissions


# The dependencies are ``async def`` so that FastAPI calls them on the event loop: a plain
# ``def`` dependency costs a round trip through the thread pool on every request.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


async def get_principal(request: Request) -> Principal:
    """The caller (see ``resolve_principal``), resolved in a worker thread when that reads
    the database (a share link, a Bearer key, a staff session cookie)."""
    if (
        request.path_params.get("token") is not None
        or "authorization" in request.headers
        or STAFF_COOKIE in request.cookies
    ):
        principal = await anyio.to_thread.run_sync(resolve_principal, request)
    else:
        principal = resolve_principal(request)
    request.state.principal = principal
    return principal


#: The staff session cookie (``cloudfilm.access.accounts``).
STAFF_COOKIE = "cloudfilm_staff"


def resolve_principal(request: Request) -> Principal:
    """The caller.

    - A route with a ``token`` path parameter (everything under ``/s/{token}``) is called by
      that share link (404 unknown, 410 expired or revoked, 401 code not yet entered; see
      ``cloudfilm.sharing.principals``).
    - ``Authorization: Bearer <API key>`` is an API client (401 for a wrong or revoked key).
    - A staff session cookie is a signed-in user (an ended session counts as none).
    - Otherwise, in development only, a development principal; elsewhere 401.
    """
    token = request.path_params.get("token")
    if token is not None:
        from cloudfilm.sharing.principals import share_principal  # sharing imports this module

        return share_principal(request, str(token))
    from cloudfilm.access.principals import principal_of_request

    found = principal_of_request(request)
    if found is not None:
        return found
    settings: Settings = request.app.state.settings
    if settings.env != "development":
        raise Unauthorized("sign in, or send an API key as 'Authorization: Bearer <key>'")
    return Principal(kind="development", id="dev")


def app_service(request: Request, name: str, make: Callable[[Archive, Settings], T]) -> T:
    """The application's service ``name`` (``ShareLinks``, ``Accounts``, …), made once from
    the application's archive and settings, and made again if the archive was replaced."""
    state = request.app.state
    service = getattr(state, name, None)
    if service is None or getattr(service, "archive", None) is not state.archive:
        service = make(state.archive, state.settings)
        setattr(state, name, service)
    return cast(T, service)


SettingsDep = Annotated[Settings, Depends(get_settings)]
ArchiveDep = Annotated[Archive, Depends(get_archive)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
