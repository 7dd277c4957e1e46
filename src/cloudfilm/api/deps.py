"""Typed FastAPI dependencies: every route gets the archive and the caller's principal here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

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


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


def get_principal(request: Request) -> Principal:
    """The caller. Until accounts and share links exist, a development principal that
    ``CLOUDFILM_ENV=production`` refuses."""
    settings = get_settings(request)
    if settings.env != "development":
        raise Forbidden("no authentication is configured; refusing access in production")
    return Principal(kind="development", id="dev")


SettingsDep = Annotated[Settings, Depends(get_settings)]
ArchiveDep = Annotated[Archive, Depends(get_archive)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
