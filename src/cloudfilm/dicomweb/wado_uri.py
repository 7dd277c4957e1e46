"""WADO-URI (PS3.18 9): ``GET /wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…``.

``contentType`` (or ``Accept``) chooses the answer:

- ``application/dicom``: the instance as a Part 10 file. Without ``transferSyntax``, originals
  in Implicit VR Little Endian or Explicit VR Big Endian are transcoded to Explicit VR Little
  Endian (PS3.18 9.1.2.1.4); every other original comes back exactly as stored. With
  ``transferSyntax`` the instance is sent in that syntax (transcoded when needed) or refused
  with 406.
- ``image/jpeg`` (the default for instances with pixels), ``image/png``, ``image/gif``: one
  rendered frame (``frameNumber``, 1-based, default 1) with ``windowCenter``/``windowWidth``
  (both or neither), ``rows``/``columns`` (the largest size), ``region`` (``x1,y1,x2,y2`` as
  fractions of the image), ``imageQuality`` and ``annotation``.

``anonymize=yes`` is refused (406): de-identification on retrieval is not offered.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from cloudfilm.api.deps import ArchiveDep, PrincipalDep
from cloudfilm.archive import Archive
from cloudfilm.core.errors import InvalidQuery, NotAcceptable, NotFound
from cloudfilm.dicomweb import derived
from cloudfilm.dicomweb.access import check_download, visible_instances
from cloudfilm.dicomweb.caching import INSTANCE_CACHE, answer_304, etag_of, not_modified
from cloudfilm.dicomweb.lookup import StoredInstance
from cloudfilm.dicomweb.media import parse_accept
from cloudfilm.dicomweb.rendered import IMAGE_TYPES, RenderParams, rendered_image
from cloudfilm.dicomweb.wado import EXPLICIT_VR_LE, blob_chunks

DICOM = "application/dicom"
#: Originals sent as Explicit VR Little Endian when no transferSyntax is asked (PS3.18 9.1.2.1.4).
TRANSCODED_BY_DEFAULT = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.2"}
MAX_SIZE = 8192


def _required(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if not value:
        raise InvalidQuery(f"WADO-URI needs the {name} parameter")
    return value


def _content_type(request: Request, has_pixels: bool) -> str:
    wanted = request.query_params.get("contentType")
    header = wanted if wanted else request.headers.get("accept")
    default = "image/jpeg" if has_pixels else DICOM
    for media in parse_accept(header, default=default):
        if media.type == DICOM:
            return DICOM
        if media.type in IMAGE_TYPES and has_pixels:
            return media.type
        if media.type in ("*/*", "image/*") and (has_pixels or media.type == "*/*"):
            return default
    raise NotAcceptable(
        f"WADO-URI answers {DICOM}" + (f" or {', '.join(IMAGE_TYPES)}" if has_pixels else "")
    )


def wado_uri(request: Request, archive: Archive, instances: list[StoredInstance]) -> Response:
    """Answer one WADO-URI request for the instance (checked against the principal)."""
    (inst,) = instances
    if request.query_params.get("anonymize", "").lower() == "yes":
        raise NotAcceptable("de-identification on retrieval (anonymize=yes) is not offered")
    has_pixels = bool(inst.rows and inst.columns)
    content_type = _content_type(request, has_pixels)
    if content_type == DICOM:
        return _dicom(request, archive, inst)
    return _image(request, archive, inst, content_type)


def _dicom(request: Request, archive: Archive, inst: StoredInstance) -> Response:
    wanted = request.query_params.get("transferSyntax")
    stored = inst.transfer_syntax_uid
    if wanted:
        target = None if wanted == stored else wanted
        if target is not None and not derived.can_transcode(stored, target):
            raise NotAcceptable(f"cannot send this instance in transfer syntax {wanted[:64]}")
    else:
        target = EXPLICIT_VR_LE if stored in TRANSCODED_BY_DEFAULT else None
    etag = etag_of(["wado-uri", inst.sha256, target or stored])
    if not_modified(request, etag):
        return answer_304(etag, INSTANCE_CACHE)
    headers = {"ETag": etag, "Cache-Control": INSTANCE_CACHE}
    if target is None:
        headers["Content-Length"] = str(inst.size_bytes)
        return StreamingResponse(blob_chunks(archive, inst), media_type=DICOM, headers=headers)
    done = derived.transcoded(archive, inst, target)
    headers["Content-Length"] = str(done.size)
    return StreamingResponse(done.chunks(), media_type=DICOM, headers=headers)


def _number(request: Request, name: str, low: float, high: float) -> float | None:
    text = request.query_params.get(name)
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise InvalidQuery(f"{name} must be a number, not {text[:40]!r}") from exc
    if not low <= value <= high:
        raise InvalidQuery(f"{name} must be between {low:g} and {high:g}")
    return value


def _image(request: Request, archive: Archive, inst: StoredInstance, media_type: str) -> Response:
    center = _number(request, "windowCenter", -1e9, 1e9)
    width = _number(request, "windowWidth", 1e-9, 1e9)
    if (center is None) != (width is None):
        raise InvalidQuery("windowCenter and windowWidth go together")
    window = (center, width) if center is not None and width is not None else None
    rows = _number(request, "rows", 1, MAX_SIZE)
    columns = _number(request, "columns", 1, MAX_SIZE)
    frame = int(_number(request, "frameNumber", 1, 1e9) or 1) - 1
    if frame >= (inst.number_of_frames or 1):
        raise NotFound(f"frame {frame + 1} does not exist")
    quality = int(_number(request, "imageQuality", 1, 100) or 90)
    viewport = _viewport(request, inst, rows, columns)
    annotation = tuple(
        a.strip().lower() for a in request.query_params.get("annotation", "").split(",") if a
    )
    if set(annotation) - {"patient", "technique"}:
        raise InvalidQuery("annotation is patient and/or technique")
    params = RenderParams(media_type, False, window, viewport, quality, annotation)
    etag = etag_of(["wado-uri-image", inst.sha256, str(frame), repr(sorted(params.key().items()))])
    if not_modified(request, etag):
        return answer_304(etag, INSTANCE_CACHE)
    data = rendered_image(archive, inst, params, frame)
    return Response(
        data, media_type=media_type, headers={"ETag": etag, "Cache-Control": INSTANCE_CACHE}
    )


def _viewport(
    request: Request, inst: StoredInstance, rows: float | None, columns: float | None
) -> tuple[int, int] | tuple[int, int, float, float, float, float] | None:
    region = request.query_params.get("region")
    image_rows, image_columns = inst.rows or 1, inst.columns or 1
    vw = int(columns) if columns else 0
    vh = int(rows) if rows else 0
    if not region:
        return (vw, vh) if vw or vh else None
    try:
        x1, y1, x2, y2 = (float(v) for v in region.split(","))
    except ValueError as exc:
        raise InvalidQuery("region is x1,y1,x2,y2 (fractions from 0 to 1)") from exc
    if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
        raise InvalidQuery("region is x1,y1,x2,y2 with 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1")
    sx, sy = x1 * image_columns, y1 * image_rows
    sw, sh = (x2 - x1) * image_columns, (y2 - y1) * image_rows
    return (vw or MAX_SIZE, vh or MAX_SIZE, sx, sy, sw, sh)


def add_routes(router: APIRouter, path: str) -> None:
    @router.get(path, tags=["WADO-URI"])
    def wado(request: Request, archive: ArchiveDep, principal: PrincipalDep) -> Response:
        """WADO-URI: one instance as DICOM or as a rendered image (PS3.18 9)."""
        if request.query_params.get("requestType") != "WADO":
            raise InvalidQuery("requestType must be WADO")
        study = _required(request, "studyUID")
        series = _required(request, "seriesUID")
        sop = _required(request, "objectUID")
        found = visible_instances(archive, principal, study, series, sop)
        if _content_type(request, bool(found[0].rows and found[0].columns)) == DICOM:
            check_download(principal, study)
        return wado_uri(request, archive, found)
