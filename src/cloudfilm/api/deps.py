"""Typed FastAPI dependencies: every route gets the archive and the caller's principal here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import Depends, Request

from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.core.errors import Forbidden


@dataclass(frozen=True)
class Principal:
    """Who makes a request. Access checks ask the principal, which denies by default.

    ``kind`` is ``development`` (no authentication configured; refused in production), or
    ``share`` (a cloud film link whose checks were passed: it reaches exactly ``study_uids``).
    Issue 6 adds users, API clients and their institutions.
    """

    kind: str
    id: str
    #: The studies a scoped principal (a share link) may reach; ``None`` means not scoped.
    study_uids: frozenset[str] | None = None
    #: What a scoped principal may do beyond viewing: ``download``, ``reshare``.
    permissions: frozenset[str] = frozenset()

    def can_view_study(self, study_uid: str) -> bool:
        if self.kind == "development":
            return True
        return self.study_uids is not None and study_uid in self.study_uids

    def can_download(self, study_uid: str) -> bool:
        """Whether originals of the study may be downloaded (ZIP, WADO-RS native)."""
        if self.kind == "development":
            return True
        return self.can_view_study(study_uid) and "download" in self.permissions

    def can_store(self) -> bool:
        """Whether this principal may add instances (STOW-RS, report upload)."""
        return self.kind == "development"

    def can_manage_shares(self) -> bool:
        """Whether this principal may create, list and revoke cloud films (staff)."""
        return self.kind == "development"


# The dependencies are ``async def`` so that FastAPI calls them on the event loop: a plain
# ``def`` dependency costs a round trip through the thread pool on every request.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


async def get_principal(request: Request) -> Principal:
    """The caller (see ``resolve_principal``); a share link is looked up in a worker thread,
    since that reads the database."""
    if request.path_params.get("token") is not None:
        return await anyio.to_thread.run_sync(resolve_principal, request)
    return resolve_principal(request)


def resolve_principal(request: Request) -> Principal:
    """The caller. A route with a ``token`` path parameter (everything under ``/s/{token}``)
    is called by that share link (404 unknown, 410 expired or revoked, 401 code not yet
    entered; see ``cloudfilm.sharing.principals``). Otherwise, until accounts exist, a
    development principal that ``CLOUDFILM_ENV=production`` refuses."""
    token = request.path_params.get("token")
    if token is not None:
        from cloudfilm.sharing.principals import share_principal  # sharing imports this module

        return share_principal(request, str(token))
    settings: Settings = request.app.state.settings
    if settings.env != "development":
        raise Forbidden("no authentication is configured; refusing access in production")
    return Principal(kind="development", id="dev")


SettingsDep = Annotated[Settings, Depends(get_settings)]
ArchiveDep = Annotated[Archive, Depends(get_archive)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
