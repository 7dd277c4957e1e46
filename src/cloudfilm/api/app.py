"""The HTTP application: health and metrics now; DICOMweb, sharing and the viewer mount here."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text

from cloudfilm import __version__
from cloudfilm.access.admin import admin_router
from cloudfilm.access.oauth import router as oauth_router
from cloudfilm.access.pages import signin_router
from cloudfilm.api.audit import AuditMiddleware
from cloudfilm.api.deps import ArchiveDep
from cloudfilm.api.metrics import LatencyHistogram, LatencyMiddleware, render_counters
from cloudfilm.api.proxies import ProxyHeadersMiddleware
from cloudfilm.archive import Archive
from cloudfilm.audit import close_trail
from cloudfilm.audit.pages import audit_router
from cloudfilm.core.config import Settings
from cloudfilm.core.errors import CloudFilmError
from cloudfilm.dicomweb.routes import build_router as build_dicomweb_router
from cloudfilm.film.figures import api_router as figures_router
from cloudfilm.film.figures import staff_router as figures_pages
from cloudfilm.film.routes import router as films_router
from cloudfilm.film.staff_pages import router as film_staff_router
from cloudfilm.film.unmatched_pages import router as films_staff_router
from cloudfilm.index.queries import archive_totals
from cloudfilm.patients.link_pages import router as patient_links_pages
from cloudfilm.patients.pages import router as consent_pages_router
from cloudfilm.patients.routes import router as patients_router
from cloudfilm.patients.staff_pages import router as recognition_staff_router
from cloudfilm.sharing import downloads, reports
from cloudfilm.sharing.routes import add_share_routes
from cloudfilm.viewer.routes import build_router as build_viewer_router
from cloudfilm.web.templates import STATIC_PATH

logger = logging.getLogger(__name__)


def create_app(settings: Settings, archive: Archive | None = None) -> FastAPI:
    """Build the application; it opens its own archive unless one is given."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = archive is None
        app.state.archive = archive or Archive.open(settings)
        try:
            yield
        finally:
            close_trail(app.state.archive, timeout=30)  # what was recorded reaches the index
            if owned:
                app.state.archive.close()

    app = FastAPI(title="cloudfilm", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.latency = LatencyHistogram()
    if archive is not None:
        app.state.archive = archive

    app.add_middleware(AuditMiddleware)
    app.add_middleware(LatencyMiddleware, histogram=app.state.latency)

    @app.exception_handler(CloudFilmError)
    async def _cloudfilm_error(_request: Request, exc: CloudFilmError) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Bearer realm="cloudfilm"'} if exc.status == 401 else None
        body = {"error": exc.code, "detail": exc.message}
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.get("/health")
    def health(archive: ArchiveDep) -> JSONResponse:
        """Liveness and readiness: the index answers and the blob store is reachable."""
        checks: dict[str, str] = {}
        try:
            with archive.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["index"] = "ok"
        except Exception as exc:
            checks["index"] = f"error: {type(exc).__name__}"
        try:
            archive.blobs.exists("health/probe")
            checks["storage"] = "ok"
        except Exception as exc:
            checks["storage"] = f"error: {type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        body = {"status": "ok" if ok else "error", "version": __version__, **checks}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics(archive: ArchiveDep) -> PlainTextResponse:
        """Prometheus metrics: instances received by outcome, bytes, archive size, latency."""
        with archive.sessions() as session:
            totals = archive_totals(session)
        lines = render_counters(archive.counters, totals) + app.state.latency.render()
        return PlainTextResponse(
            "\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    app.include_router(build_dicomweb_router(settings))
    app.include_router(signin_router)  # before the staff pages' catch-all /staff/{rest}
    app.include_router(film_staff_router)  # likewise
    app.include_router(recognition_staff_router)  # likewise
    app.include_router(figures_pages)  # likewise
    app.include_router(admin_router)
    app.include_router(audit_router)
    app.include_router(oauth_router)
    app.include_router(films_staff_router)  # before the staff pages' catch-all too
    app.include_router(patient_links_pages)  # likewise
    add_share_routes(app, settings)
    app.include_router(downloads.router)
    app.include_router(downloads.share_router, prefix="/s/{token}")
    app.include_router(reports.router)
    app.include_router(films_router)
    app.include_router(patients_router)
    app.include_router(consent_pages_router)
    app.include_router(figures_router)
    app.include_router(build_viewer_router())
    app.mount(STATIC_PATH, StaticFiles(packages=[("cloudfilm.web", "static")]), name="static")
    # Outermost: every middleware and route sees the client behind trusted proxies.
    app.add_middleware(ProxyHeadersMiddleware, trusted=settings.trusted_proxies)
    return app
