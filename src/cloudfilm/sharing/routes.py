"""Mount the doors of share links on the application.

Besides the pages and the JSON APIs, the whole DICOMweb service is mounted a second time under
``/s/{token}``: ``/s/{token}/dicomweb/...`` and ``/s/{token}/wado`` answer with the share's
principal (its studies only, never STOW), and the URLs in their answers keep the prefix
(``cloudfilm.dicomweb.urls.service_url``). Retrieving a whole study or series of originals
through it is recorded as a download in the share's access log.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request

from cloudfilm.core.config import Settings
from cloudfilm.dicomweb.routes import build_router as build_dicomweb_router
from cloudfilm.sharing import api, pages, staff
from cloudfilm.sharing.accesses import record_access
from cloudfilm.sharing.principals import client_address, share_principal

SHARE_PREFIX = "/s/{token}"
#: Route paths (under the DICOMweb root) whose GET retrieves originals of a study or series.
_DOWNLOAD_SUFFIXES = ("/studies/{study}", "/series/{series}")


def record_download(request: Request) -> None:
    """Record a WADO-RS retrieve of a whole study or series through a share as a download.

    Only those two resources count: viewers fetch metadata, frames and rendered images, and
    one record per instance would drown the log. Requests that will be refused (another
    study, no ``download`` permission) are not recorded.
    """
    path = getattr(request.scope.get("route"), "path", "")
    if request.method != "GET" or not path.endswith(_DOWNLOAD_SUFFIXES):
        return
    token, study = request.path_params.get("token"), request.path_params.get("study")
    if token is None or study is None:
        return
    principal = share_principal(request, str(token))
    if principal.can_download(str(study)):
        archive = request.app.state.archive
        agent = request.headers.get("user-agent", "")
        record_access(archive, principal.id, "download", client_address(request), agent)


def add_share_routes(app: FastAPI, settings: Settings) -> None:
    """Pages, APIs and the DICOMweb service under ``/s/{token}``; the staff pages."""
    app.include_router(api.staff_router)
    app.include_router(staff.router)
    app.include_router(api.holder_router)
    app.include_router(pages.router)
    app.include_router(
        build_dicomweb_router(settings),
        prefix=SHARE_PREFIX,
        dependencies=[Depends(record_download)],
        include_in_schema=False,
    )
