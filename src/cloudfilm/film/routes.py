"""REST API of film sheets: compose and store one, list a study's, export one as PNG or PDF.

* ``POST /api/studies/{study_uid}/films`` (JSON, :class:`FilmBody`) composes a sheet and stores
  it in the study: 201 with its UIDs and links. Needs a principal that may store.
* ``GET /api/studies/{study_uid}/films``: the study's sheets, oldest first.
* ``GET /api/studies/{study_uid}/films/{sop_uid}.png`` / ``.pdf``: one sheet, the PNG at the
  sheet's resolution (pHYs set), the PDF one page of the film's size.
* ``POST /api/studies/{study_uid}/film-prints`` (JSON, :class:`FilmPrintBody`) queues the
  study's sheets (or some) for printing on real film (``cloudfilm.film.passthrough``): 202
  with the jobs. Needs a principal that may store; ``GET`` lists the study's jobs.
* ``GET /api/films/unmatched``: the printed films of the caller's institution that wait for a
  study, newest first, each with its suggested studies; ``GET
  /api/films/unmatched/{film_id}.png`` one of them as printed; ``POST
  /api/films/unmatched/{film_id}/attach`` (JSON ``{"study_uid"}`` or
  ``{"accession_number"}``) stores it in a study: 201. Staff only
  (:mod:`cloudfilm.film.unmatched`); another institution's film is 404 like a missing one.

A study the caller may not see is answered 404, as one that does not exist. A body that cannot
be read, a bad layout, film size or window is 400; a request the study cannot satisfy (a series
or image not in it, more images than boxes) is 422. Errors are JSON ``{"error", "detail"}``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import partial
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloudfilm.api.deps import ArchiveDep, Principal, PrincipalDep, SettingsDep
from cloudfilm.api.proxies import client_address
from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.core.errors import Forbidden, InvalidQuery, MalformedRequest, NotFound, TooLarge
from cloudfilm.dicom.render import Window
from cloudfilm.dicomweb.access import check_uids
from cloudfilm.dicomweb.lookup import find_instances
from cloudfilm.dicomweb.urls import instance_url, service_url
from cloudfilm.film.layout import (
    MAX_BOXES_PER_LINE,
    density_to_gray,
    parse_film_size,
    parse_layout,
    parse_magnification,
    parse_orientation,
)
from cloudfilm.film.passthrough import MAX_SHEETS_PER_REQUEST, film_prints, queue_study_films
from cloudfilm.film.printed import unmatched_film_png
from cloudfilm.film.sheets import (
    FilmRequest,
    FrameRef,
    film_image,
    film_sheets,
    sheet_pdf,
    sheet_png,
    store_film,
)
from cloudfilm.film.unmatched import (
    AttachTarget,
    attach_visible,
    institution_aes,
    may_attach,
    suggest_studies,
    visible_film,
    visible_films,
)
from cloudfilm.web.headers import content_disposition

__all__ = ["FilmBody", "film_request", "router"]

#: Largest request body, in bytes (a film request is a few kilobytes at most).
MAX_BODY = 256 * 1024
_UID = r"^[0-9]+(\.[0-9]+)*$"
_MEDIA_TYPES = {"png": "image/png", "pdf": "application/pdf"}


class WindowBody(BaseModel):
    """An explicit window: centre and width in modality units (e.g. HU), and its function."""

    model_config = ConfigDict(extra="forbid")

    center: float
    width: float
    function: Literal["linear", "linear-exact", "sigmoid", "LINEAR", "LINEAR_EXACT", "SIGMOID"] = (
        "linear"
    )


class ImageBody(BaseModel):
    """One image chosen by hand."""

    model_config = ConfigDict(extra="forbid")

    sop_instance_uid: str = Field(max_length=64, pattern=_UID)
    #: 1-based frame number.
    frame: int = Field(1, ge=1, le=100_000)
    window: WindowBody | None = None
    preset: str | None = Field(None, max_length=32)


class FilmBody(BaseModel):
    """A film sheet to compose (see docs/film.md)."""

    model_config = ConfigDict(extra="forbid")

    #: ``4x5`` (columns × rows) or an Image Display Format such as ``STANDARD\\4,5``.
    layout: str = Field(max_length=200)
    film_size: str | None = Field(None, max_length=16)
    orientation: str | None = Field(None, max_length=16)
    images: list[ImageBody] | None = Field(None, min_length=1, max_length=MAX_BOXES_PER_LINE**2)
    series: str | None = Field(None, max_length=64, pattern=_UID)
    evenly: bool = True
    #: A Key Object Selection's SOP Instance UID, or ``latest``.
    key_object: str | None = Field(None, max_length=64, pattern=r"^(latest|[0-9]+(\.[0-9]+)*)$")
    window: WindowBody | None = None
    preset: str | None = Field(None, max_length=32)
    annotations: bool = True
    magnification: str = Field("CUBIC", max_length=16)
    dpi: int | None = Field(None, ge=72, le=300)
    border_density: str | None = Field(None, max_length=16)
    empty_image_density: str | None = Field(None, max_length=16)


class AttachBody(BaseModel):
    """The study an unmatched film goes to: its Study Instance UID or its accession number."""

    model_config = ConfigDict(extra="forbid")

    study_uid: str | None = Field(None, max_length=64, pattern=_UID)
    accession_number: str | None = Field(None, min_length=1, max_length=64)


def _window(window: WindowBody | None, preset: str | None) -> Window | None:
    if window is not None and preset is not None:
        raise InvalidQuery("give a window or a preset, not both")
    if preset is not None:
        return Window.preset(preset)
    if window is not None:
        return Window.of((window.center, window.width, window.function))
    return None


def film_request(body: FilmBody, settings: Settings) -> FilmRequest:
    """The film request a body describes, with the settings' defaults.

    Raises :class:`MalformedRequest` (``InvalidLayout``, ``InvalidQuery``) for a bad value.
    """
    images = tuple(
        FrameRef(image.sop_instance_uid, image.frame, _window(image.window, image.preset))
        for image in body.images or ()
    )
    return FilmRequest(
        display_format=parse_layout(body.layout),
        size=parse_film_size(body.film_size or settings.film_default_size),
        orientation=parse_orientation(body.orientation or settings.film_default_orientation),
        images=images,
        series_uid=body.series,
        evenly=body.evenly,
        key_object=body.key_object,
        window=_window(body.window, body.preset),
        annotations=body.annotations,
        magnification=parse_magnification(body.magnification),
        dpi=body.dpi or settings.film_dpi,
        border=density_to_gray(body.border_density),
        empty=density_to_gray(body.empty_image_density),
    )


router = APIRouter(tags=["films"])


class FilmPrintBody(BaseModel):
    """A request to print a study's film sheets on real film."""

    model_config = ConfigDict(extra="forbid")

    #: AE title of the film printer (a known peer); default the ``film_printer`` setting.
    printer: str | None = Field(None, max_length=16)
    #: SOP Instance UIDs of the sheets; empty: every film sheet of the study.
    sheets: list[Annotated[str, Field(max_length=64, pattern=_UID)]] = Field(
        [], max_length=MAX_SHEETS_PER_REQUEST
    )
    copies: int = Field(1, ge=1, le=10)


def _visible(principal: Principal, study_uid: str) -> None:
    check_uids(study_uid)
    if not principal.can_view_study(study_uid):
        raise NotFound(f"study {study_uid} not found")


def _links(
    request: Request, settings: Settings, study: str, series: str, sop: str
) -> dict[str, str]:
    base = str(request.base_url).rstrip("/")
    films = f"{base}/api/studies/{study}/films/{sop}"
    dicom = instance_url(service_url(request, settings), study, series, sop)
    return {"png": f"{films}.png", "pdf": f"{films}.pdf", "dicom": dicom}


@router.post("/api/studies/{study_uid}/films", status_code=201)
async def create_film(
    request: Request,
    study_uid: Annotated[str, Path(description="Study Instance UID")],
    archive: ArchiveDep,
    settings: SettingsDep,
    principal: PrincipalDep,
) -> JSONResponse:
    """Compose a film sheet from the study and store it in the study (Secondary Capture)."""
    _visible(principal, study_uid)
    if not principal.can_store() or not principal.can_change_study(study_uid):
        raise Forbidden("making film sheets needs a staff account that may store, of a hospital "
                        "that holds the exam")  # fmt: skip
    body = _parse_body(await _read_body(request))
    film = film_request(body, settings)
    stored = await run_in_threadpool(store_film, archive, study_uid, film)
    answer: dict[str, Any] = asdict(stored)
    answer["links"] = _links(
        request, settings, stored.study_uid, stored.series_uid, stored.sop_instance_uid
    )
    return JSONResponse(answer, status_code=201)


@router.get("/api/studies/{study_uid}/films")
async def list_films(
    request: Request,
    study_uid: Annotated[str, Path(description="Study Instance UID")],
    archive: ArchiveDep,
    settings: SettingsDep,
    principal: PrincipalDep,
) -> JSONResponse:
    """The study's film sheets, oldest first (an empty list when it has none)."""
    _visible(principal, study_uid)
    sheets = await run_in_threadpool(film_sheets, archive, study_uid)
    if not sheets:
        await run_in_threadpool(_exists, archive, study_uid)
    return JSONResponse(
        [
            {
                "sop_instance_uid": sheet.sop_instance_uid,
                "series_uid": sheet.series_uid,
                "instance_number": sheet.instance_number,
                "rows": sheet.rows,
                "columns": sheet.columns,
                "received_at": sheet.received_at.isoformat(),
                "links": _links(
                    request, settings, study_uid, sheet.series_uid, sheet.sop_instance_uid
                ),
            }
            for sheet in sheets
        ]
    )


def _exists(archive: Archive, study_uid: str) -> None:
    """NotFound for a study that is not in the archive."""
    with archive.engine.connect() as conn:
        find_instances(conn, study_uid)


@router.get("/api/studies/{study_uid}/films/{filename}")
async def export_film(
    study_uid: Annotated[str, Path(description="Study Instance UID")],
    filename: Annotated[str, Path(description="SOP Instance UID of the sheet, then .png or .pdf")],
    archive: ArchiveDep,
    principal: PrincipalDep,
) -> Response:
    """The sheet as a PNG at its own resolution (``{sop_uid}.png``) or as a one-page PDF of the
    film's size (``{sop_uid}.pdf``)."""
    _visible(principal, study_uid)
    sop_uid, _, fmt = filename.rpartition(".")
    if fmt not in _MEDIA_TYPES:
        raise NotFound(f"a film sheet is exported as {{sop_uid}}.png or .pdf, not {filename!r}")
    check_uids(sop_uid)

    def render() -> bytes:
        film = film_image(archive, study_uid, sop_uid)
        if fmt == "png":
            return sheet_png(film.image, film.dpi)
        return sheet_pdf(film.image, film.width_mm, film.height_mm)

    body = await run_in_threadpool(render)
    name = f"film-{sop_uid}.{fmt}"
    return Response(
        body,
        media_type=_MEDIA_TYPES[fmt],
        headers={
            "Content-Disposition": content_disposition(name, name, inline=True),
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.post("/api/studies/{study_uid}/film-prints", status_code=202)
async def print_films(
    request: Request,
    study_uid: Annotated[str, Path(description="Study Instance UID")],
    archive: ArchiveDep,
    principal: PrincipalDep,
) -> JSONResponse:
    """Queue the study's film sheets (all, or those named) for printing on real film."""
    _visible(principal, study_uid)
    if not principal.can_store() or not principal.can_change_study(study_uid):
        raise Forbidden("printing on film needs a staff account that may store, of a hospital "
                        "that holds the exam")  # fmt: skip
    raw = await _read_body(request)
    body = _validated(FilmPrintBody, raw) if raw.strip() else FilmPrintBody()
    queued = await run_in_threadpool(
        lambda: queue_study_films(
            archive,
            study_uid,
            printer=body.printer,
            requested_by=principal.label,
            institution=principal.institution,
            copies=body.copies,
            sop_instance_uids=body.sheets,
        )
    )
    jobs = await run_in_threadpool(film_prints, archive, study_uid=study_uid)
    chosen = [job.as_json() for job in jobs if job.id in set(queued)]
    return JSONResponse({"queued": len(queued), "jobs": chosen}, status_code=202)


@router.get("/api/studies/{study_uid}/film-prints")
async def list_film_prints(
    study_uid: Annotated[str, Path(description="Study Instance UID")],
    archive: ArchiveDep,
    principal: PrincipalDep,
) -> JSONResponse:
    """The study's sheets queued for printing on real film, newest first."""
    _visible(principal, study_uid)
    jobs = await run_in_threadpool(film_prints, archive, study_uid=study_uid)
    if not jobs:
        await run_in_threadpool(_exists, archive, study_uid)
    return JSONResponse([job.as_json() for job in jobs])


FilmId = Annotated[int, Path(ge=1, le=2**31 - 1, description="id of the printed film")]
#: Most unmatched films one listing returns.
UNMATCHED_LIMIT = 200


def _staff(principal: Principal) -> None:
    if not may_attach(principal):
        raise Forbidden("only hospital staff may see and attach unmatched films")


@router.get("/api/films/unmatched")
async def list_unmatched(
    request: Request, archive: ArchiveDep, principal: PrincipalDep
) -> JSONResponse:
    """The printed films of the caller's institution waiting for a study, newest first, each
    with a link to its PNG and the studies it may belong to, most likely first."""
    _staff(principal)
    base = str(request.base_url).rstrip("/")

    def listing() -> list[dict[str, Any]]:
        films = visible_films(archive, principal, limit=UNMATCHED_LIMIT)
        aes = institution_aes(archive) if films else {}
        return [
            {
                **film.as_json(),
                "png": f"{base}/api/films/unmatched/{film.id}.png",
                "suggestions": [
                    s.as_json() for s in suggest_studies(archive, principal, film, aes=aes)
                ],
            }
            for film in films
        ]

    return JSONResponse(await run_in_threadpool(listing))


@router.get("/api/films/unmatched/{film_id}.png")
async def unmatched_png(film_id: FilmId, archive: ArchiveDep, principal: PrincipalDep) -> Response:
    """An unmatched film as printed (PNG at its print resolution)."""
    _staff(principal)

    def read() -> bytes:
        return unmatched_film_png(archive, visible_film(archive, principal, film_id).id)

    body = await run_in_threadpool(read)
    name = f"printed-film-{film_id}.png"
    return Response(
        body,
        media_type="image/png",
        headers={
            "Content-Disposition": content_disposition(name, name, inline=True),
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.post("/api/films/unmatched/{film_id}/attach", status_code=201)
async def attach_unmatched(
    request: Request,
    film_id: FilmId,
    archive: ArchiveDep,
    settings: SettingsDep,
    principal: PrincipalDep,
) -> JSONResponse:
    """Store an unmatched film in the study named by UID or accession number: 201 with the
    stored sheet's UIDs and links; 404 for a film or study not found (or not visible), 409
    for a film already attached or an accession number of several studies."""
    _staff(principal)
    await run_in_threadpool(visible_film, archive, principal, film_id)
    raw = await _read_body(request)
    if not raw:
        raise MalformedRequest('the body is empty; send {"study_uid": ...} as JSON')
    try:
        body = AttachBody.model_validate(json.loads(raw.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRequest(f"the body is not JSON in UTF-8: {exc}") from exc
    except ValidationError as exc:
        raise MalformedRequest(f"invalid attach request: {_problems(exc)}") from exc
    if (body.study_uid is None) == (body.accession_number is None):
        raise MalformedRequest("give either study_uid or accession_number")
    target = AttachTarget(body.study_uid, body.accession_number)
    stored, study = await run_in_threadpool(
        partial(
            attach_visible,
            archive,
            principal,
            film_id,
            target,
            address=client_address(request),
            agent=request.headers.get("user-agent", "")[:200],
        )
    )
    answer: dict[str, Any] = {"film_id": film_id, **asdict(stored)}
    answer["patient_id"] = study.patient_id
    answer["links"] = _links(
        request, settings, stored.study_uid, stored.series_uid, stored.sop_instance_uid
    )
    return JSONResponse(answer, status_code=201)


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
    )


async def _read_body(request: Request) -> bytes:
    """The request body, refused with 413 past :data:`MAX_BODY` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise TooLarge(f"a film request may have at most {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_body(body: bytes) -> FilmBody:
    if not body:
        raise MalformedRequest("the request body is empty; send the film as JSON")
    return _validated(FilmBody, body)


ModelT = TypeVar("ModelT", bound=BaseModel)


def _validated(model: type[ModelT], body: bytes) -> ModelT:
    """The JSON body as ``model``; MalformedRequest (400) saying what is wrong."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRequest(f"the body is not JSON in UTF-8: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise MalformedRequest(f"invalid film request: {_problems(exc)}") from exc
