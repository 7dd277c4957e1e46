"""The DICOMweb routes, under ``settings.dicomweb_root`` (and WADO-URI at ``wado_uri_path``).

Routes are thin: each takes the caller's principal (``PrincipalDep``), asks it about the study
(an invisible study answers exactly like a missing one: 404), and hands the work to ``stow``,
``qido``, ``wado``, ``pixels``, ``rendered`` or ``wado_uri``. Errors become JSON problems and
every answer carries CORS headers (``errors.make_route_class``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from starlette.routing import Match

from cloudfilm.api.deps import ArchiveDep, PrincipalDep, SettingsDep
from cloudfilm.core.config import Settings
from cloudfilm.dicomweb import pixels, qido, rendered, stow, wado, wado_uri
from cloudfilm.dicomweb.access import check_download, check_uids, visible_instances
from cloudfilm.dicomweb.errors import make_route_class, preflight, problem
from cloudfilm.dicomweb.urls import service_url
from cloudfilm.index.matching import Level

StudyUID = Annotated[str, Path(description="Study Instance UID")]
SeriesUID = Annotated[str, Path(description="Series Instance UID")]
SOPUID = Annotated[str, Path(description="SOP Instance UID")]


def build_router(settings: Settings) -> APIRouter:
    """All DICOMweb routes for these settings (root path, CORS origins)."""
    root = settings.dicomweb_root
    router = APIRouter(route_class=make_route_class(settings.dicomweb_cors_origins))
    _add_stow(router, root)
    _add_qido(router, root)
    _add_wado(router, root)
    pixels.add_routes(router, root)
    rendered.add_routes(router, root)
    wado_uri.add_routes(router, settings.wado_uri_path)
    _add_fallbacks(router, root, settings)
    return router


def _add_stow(router: APIRouter, root: str) -> None:
    @router.post(f"{root}/studies", tags=["STOW-RS"])
    async def store_instances(
        request: Request, archive: ArchiveDep, settings: SettingsDep, principal: PrincipalDep
    ) -> Response:
        """Store instances (PS3.18 10.5)."""
        return await stow.store_instances(request, archive, settings, principal, None)

    @router.post(f"{root}/studies/{{study}}", tags=["STOW-RS"])
    async def store_study_instances(
        request: Request,
        study: StudyUID,
        archive: ArchiveDep,
        settings: SettingsDep,
        principal: PrincipalDep,
    ) -> Response:
        """Store instances of one study; instances of other studies are refused."""
        check_uids(study)
        return await stow.store_instances(request, archive, settings, principal, study)


def _add_qido(router: APIRouter, root: str) -> None:
    @router.get(f"{root}/studies", tags=["QIDO-RS"])
    def search_studies(
        request: Request, archive: ArchiveDep, settings: SettingsDep, principal: PrincipalDep
    ) -> Response:
        """Search for studies."""
        base = service_url(request, settings)
        return qido.search(request, archive, settings, principal, Level.STUDY, base)

    @router.get(f"{root}/series", tags=["QIDO-RS"])
    def search_series(
        request: Request, archive: ArchiveDep, settings: SettingsDep, principal: PrincipalDep
    ) -> Response:
        """Search for series of all studies."""
        base = service_url(request, settings)
        return qido.search(request, archive, settings, principal, Level.SERIES, base)

    @router.get(f"{root}/instances", tags=["QIDO-RS"])
    def search_instances(
        request: Request, archive: ArchiveDep, settings: SettingsDep, principal: PrincipalDep
    ) -> Response:
        """Search for instances of all studies."""
        base = service_url(request, settings)
        return qido.search(request, archive, settings, principal, Level.INSTANCE, base)

    @router.get(f"{root}/studies/{{study}}/series", tags=["QIDO-RS"])
    def search_study_series(
        request: Request,
        study: StudyUID,
        archive: ArchiveDep,
        settings: SettingsDep,
        principal: PrincipalDep,
    ) -> Response:
        """Search for series of one study."""
        check_uids(study)
        base = service_url(request, settings)
        return qido.search(
            request, archive, settings, principal, Level.SERIES, base, study_uid=study
        )

    @router.get(f"{root}/studies/{{study}}/instances", tags=["QIDO-RS"])
    def search_study_instances(
        request: Request,
        study: StudyUID,
        archive: ArchiveDep,
        settings: SettingsDep,
        principal: PrincipalDep,
    ) -> Response:
        """Search for instances of one study."""
        check_uids(study)
        base = service_url(request, settings)
        return qido.search(
            request, archive, settings, principal, Level.INSTANCE, base, study_uid=study
        )

    @router.get(f"{root}/studies/{{study}}/series/{{series}}/instances", tags=["QIDO-RS"])
    def search_series_instances(
        request: Request,
        study: StudyUID,
        series: SeriesUID,
        archive: ArchiveDep,
        settings: SettingsDep,
        principal: PrincipalDep,
    ) -> Response:
        """Search for instances of one series."""
        check_uids(study, series)
        base = service_url(request, settings)
        return qido.search(
            request, archive, settings, principal, Level.INSTANCE, base,
            study_uid=study, series_uid=series,
        )  # fmt: skip


def _add_wado(router: APIRouter, root: str) -> None:
    @router.get(f"{root}/studies/{{study}}", tags=["WADO-RS"])
    def retrieve_study(
        request: Request, study: StudyUID, archive: ArchiveDep, principal: PrincipalDep
    ) -> Response:
        """The instances of a study (multipart/related; type="application/dicom")."""
        found = visible_instances(archive, principal, study)
        check_download(principal, study)
        return wado.retrieve(request, archive, found, instance_level=False)

    @router.get(f"{root}/studies/{{study}}/series/{{series}}", tags=["WADO-RS"])
    def retrieve_series(
        request: Request,
        study: StudyUID,
        series: SeriesUID,
        archive: ArchiveDep,
        principal: PrincipalDep,
    ) -> Response:
        """The instances of a series."""
        found = visible_instances(archive, principal, study, series)
        check_download(principal, study)
        return wado.retrieve(request, archive, found, instance_level=False)

    @router.get(f"{root}/studies/{{study}}/series/{{series}}/instances/{{sop}}", tags=["WADO-RS"])
    def retrieve_instance(
        request: Request,
        study: StudyUID,
        series: SeriesUID,
        sop: SOPUID,
        archive: ArchiveDep,
        principal: PrincipalDep,
    ) -> Response:
        """One instance."""
        found = visible_instances(archive, principal, study, series, sop)
        check_download(principal, study)
        return wado.retrieve(request, archive, found, instance_level=True)

    @router.get(f"{root}/studies/{{study}}/metadata", tags=["WADO-RS"])
    def study_metadata(
        request: Request,
        study: StudyUID,
        archive: ArchiveDep,
        settings: SettingsDep,
        principal: PrincipalDep,
    ) -> Response:
        """DICOM JSON of every instance of a study (cached headers, bulk data as URIs)."""
        found = visible_instances(archive, principal, study)
        return wado.metadata(request, archive, settings, found, instance_level=False)

    @router.get(f"{root}/studies/{{study}}/series/{{series}}/metadata", tags=["WADO-RS"])
    def series_metadata(
        request: Request,
        study: StudyUID,
        series: SeriesUID,
        archive: ArchiveDep,
        settings: SettingsDep,
        principal: PrincipalDep,
    ) -> Response:
        """DICOM JSON of every instance of a series."""
        found = visible_instances(archive, principal, study, series)
        return wado.metadata(request, archive, settings, found, instance_level=False)

    @router.get(
        f"{root}/studies/{{study}}/series/{{series}}/instances/{{sop}}/metadata", tags=["WADO-RS"]
    )
    def instance_metadata(
        request: Request,
        study: StudyUID,
        series: SeriesUID,
        sop: SOPUID,
        archive: ArchiveDep,
        settings: SettingsDep,
        principal: PrincipalDep,
    ) -> Response:
        """DICOM JSON of one instance."""
        found = visible_instances(archive, principal, study, series, sop)
        return wado.metadata(request, archive, settings, found, instance_level=True)


def _add_fallbacks(router: APIRouter, root: str, settings: Settings) -> None:
    origins = tuple(settings.dicomweb_cors_origins)

    # A CORS preflight carries no credentials (Fetch standard), so this route alone takes no
    # principal: it answers only which methods and headers a browser may use, nothing else.
    @router.options(f"{root}/{{path:path}}", include_in_schema=False)
    @router.options(settings.wado_uri_path, include_in_schema=False)
    def cors_preflight(request: Request) -> Response:
        return preflight(request, origins)

    @router.api_route(
        f"{root}/{{path:path}}",
        methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
        include_in_schema=False,
    )
    def unknown_resource(request: Request, path: str, principal: PrincipalDep) -> Response:
        allowed = _allowed_methods(request, router)
        if allowed:
            response = problem(
                405, f"{request.method} is not supported on this resource", "method-not-allowed"
            )
            response.headers["Allow"] = ", ".join(sorted(allowed))
            return response
        return problem(404, f"no DICOMweb resource at {root}/{path[:200]}", "not-found")


def _allowed_methods(request: Request, router: APIRouter) -> set[str]:
    """Methods of the concrete routes whose path matches this request's path."""
    methods: set[str] = set()
    for route in router.routes:
        path = getattr(route, "path", "")
        if "{path:path}" in path:
            continue
        match, _ = route.matches(request.scope)
        if match is Match.PARTIAL:
            methods |= set(getattr(route, "methods", set()) or set()) - {"HEAD"}
    return methods
