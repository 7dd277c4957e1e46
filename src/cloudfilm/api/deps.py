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
    """Who makes a request. Access checks ask the principal, which denies by default."""

    kind: str
    id: str

    def can_view_study(self, study_uid: str) -> bool:
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
