"""Mount the doors of share links on the application.

Besides the pages and the JSON APIs, the whole DICOMweb service is mounted a second time under
``/s/{token}``: ``/s/{token}/dicomweb/...`` and ``/s/{token}/wado`` answer with the share's
principal (its studies only, never STOW), and the URLs in their answers keep the prefix
(``cloudfilm.dicomweb.urls.service_url``). Retrieving a whole study or series of originals
through it is recorded as a download in the share's access log.

Every answer under ``/s/`` leaves the door with ``Cache-Control: no-store`` (a phone is often
shared, and a link that is revoked or lapses must not leave images in its cache), with
``Referrer-Policy: no-referrer`` (the path holds the token) and ``nosniff``
(:class:`ShareDoorHeaders`).
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloudfilm.api.proxies import client_address
from cloudfilm.core.config import Settings
from cloudfilm.dicomweb.routes import build_router as build_dicomweb_router
from cloudfilm.sharing import api, pages, staff
from cloudfilm.sharing.accesses import record_access
from cloudfilm.sharing.principals import share_principal

SHARE_PREFIX = "/s/{token}"
#: Route paths (under the DICOMweb root) whose GET retrieves originals of a study or series.
_DOWNLOAD_SUFFIXES = ("/studies/{study}", "/series/{series}")


#: Headers every answer of the share door carries, whatever the route set.
DOOR_HEADERS = (
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
)
_DOOR_NAMES = {name for name, _ in DOOR_HEADERS}


class ShareDoorHeaders:
    """Sets :data:`DOOR_HEADERS` on every answer under ``/s/`` (a plain ASGI middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/s/"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                kept = [(k, v) for k, v in headers if k.lower() not in _DOOR_NAMES]
                message["headers"] = kept + list(DOOR_HEADERS)
            await send(message)

        await self.app(scope, receive, send_with_headers)


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
        request.state.principal = principal  # the request's audit row is this download
        archive = request.app.state.archive
        agent = request.headers.get("user-agent", "")
        record_access(
            archive, principal.id, "download", client_address(request), agent, request=request
        )


def add_share_routes(app: FastAPI, settings: Settings) -> None:
    """Pages, APIs and the DICOMweb service under ``/s/{token}``; the staff pages."""
    app.add_middleware(ShareDoorHeaders)
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
