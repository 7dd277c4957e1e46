"""WADO-RS rendered images and thumbnails (PS3.18 10.4.1.1.3, 10.4.1.1.6, 8.3.5.1).

``/rendered`` at every level and for frames, and ``/thumbnail`` at every level, as
``image/jpeg`` (the default), ``image/png`` or ``image/gif``. Parameters: ``window=center,width
[,function]``, ``viewport=vw,vh[,sx,sy,sw,sh]``, ``quality=1..100``, ``annotation=patient,
technique`` and ``accept`` (a media type, for links that cannot set headers).

What each resource returns:

- instance: its first frame; a multi-frame instance as an animated GIF when ``image/gif`` is
  the preferred acceptable type;
- frames: one image per listed frame — a single image for one frame, else
  ``multipart/related`` with one image per frame;
- series and study: with ``Accept: multipart/related; type="image/…"`` one image per instance
  (first frame), streamed; otherwise one image of a representative instance (the middle
  instance of the first series that has pixels);
- thumbnail (all levels): one small image (fits 128×128 unless ``viewport`` says otherwise) of
  the representative instance's middle frame.

An Encapsulated PDF instance (PS3.3 A.45.1) is rendered as ``application/pdf`` (PS3.18
8.3.5.1: the rendered media type of a PDF document): its Encapsulated Document, shown inline.

Images are derived data kept in the bounded render cache (``render_cache_bytes``), keyed by the
instance's SHA-256 and the parameters, so a replaced instance is never shown from the cache.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from cloudfilm.api.deps import ArchiveDep, PrincipalDep
from cloudfilm.archive import Archive
from cloudfilm.core.errors import InvalidDicom, InvalidQuery, NotAcceptable, NotFound
from cloudfilm.dicom import render
from cloudfilm.dicom.frames import read_header
from cloudfilm.dicomweb.access import visible_instances
from cloudfilm.dicomweb.caching import INSTANCE_CACHE, REVALIDATE, answer_304, etag_of, not_modified
from cloudfilm.dicomweb.lookup import StoredInstance
from cloudfilm.dicomweb.media import parse_accept
from cloudfilm.dicomweb.multipart import closing, new_boundary, part_header, related_content_type
from cloudfilm.dicomweb.pixels import parse_frame_list
from cloudfilm.render_cache import RenderCache

logger = logging.getLogger(__name__)

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif")
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
PDF = "application/pdf"
THUMBNAIL_SIZE = 128
MAX_VIEWPORT = 8192
_FUNCTIONS = {"linear", "linear-exact", "sigmoid"}
_ANNOTATIONS = {"patient", "technique"}


@dataclass(frozen=True)
class RenderParams:
    """Checked rendering parameters (PS3.18 8.3.5.1)."""

    media_type: str
    multipart: bool
    window: tuple[float, float] | tuple[float, float, str] | None = None
    viewport: tuple[int, int] | tuple[int, int, float, float, float, float] | None = None
    quality: int = 90
    annotation: tuple[str, ...] = ()

    def key(self) -> dict[str, Any]:
        return {
            "type": self.media_type,
            "window": self.window,
            "viewport": self.viewport,
            "quality": self.quality,
            "annotation": self.annotation,
        }

    def render_kwargs(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "viewport": self.viewport,
            "quality": self.quality,
            "media_type": self.media_type,
            "annotation": list(self.annotation) or None,
        }


def _numbers(name: str, text: str, counts: tuple[int, ...]) -> list[float]:
    pieces = [p.strip() for p in text.split(",")]
    if len(pieces) not in counts:
        raise InvalidQuery(f"{name} takes {' or '.join(map(str, counts))} comma-separated values")
    try:
        values = [float(p) for p in pieces]
    except ValueError as exc:
        raise InvalidQuery(f"{name} values must be numbers, not {text[:80]!r}") from exc
    if not all(abs(v) < 1e9 for v in values):
        raise InvalidQuery(f"{name} values are out of range")
    return values


def parse_params(request: Request, *, thumbnail: bool = False) -> RenderParams:
    """Read ``window``, ``viewport``, ``quality``, ``annotation`` and the media type."""
    query = request.query_params
    accept = query.get("accept") or request.headers.get("accept")
    media_type, multipart = _media_type(accept)
    window = None
    if query.get("window"):
        pieces = [p.strip() for p in query["window"].split(",")]
        function = pieces[2].lower() if len(pieces) == 3 else None
        if function is not None and function not in _FUNCTIONS:
            raise InvalidQuery(f"window function {pieces[2][:40]!r} is not {sorted(_FUNCTIONS)}")
        center, width = _numbers("window", ",".join(pieces[:2]), (2,))
        if width <= 0:
            raise InvalidQuery("window width must be positive")
        window = (center, width, function) if function else (center, width)
    viewport: tuple[int, int] | tuple[int, int, float, float, float, float] | None = None
    if query.get("viewport"):
        values = _numbers("viewport", query["viewport"], (2, 6))
        vw, vh = int(values[0]), int(values[1])
        if not (0 <= vw <= MAX_VIEWPORT and 0 <= vh <= MAX_VIEWPORT) or vw == vh == 0:
            raise InvalidQuery(f"viewport width and height must be within 1..{MAX_VIEWPORT}")
        if len(values) == 2:
            viewport = (vw, vh)
        else:
            viewport = (vw, vh, values[2], values[3], values[4], values[5])
    elif thumbnail:
        viewport = (THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    quality = 90 if not thumbnail else 75
    if query.get("quality"):
        text = query["quality"]
        if not text.isdigit() or not 1 <= int(text) <= 100:
            raise InvalidQuery(f"quality must be an integer from 1 to 100, not {text[:20]!r}")
        quality = int(text)
    annotation: tuple[str, ...] = ()
    if query.get("annotation"):
        kinds = tuple(k.strip().lower() for k in query["annotation"].split(",") if k.strip())
        unknown = set(kinds) - _ANNOTATIONS
        if unknown:
            raise InvalidQuery(f"annotation is patient and/or technique, not {sorted(unknown)}")
        annotation = kinds
    return RenderParams(media_type, multipart, window, viewport, quality, annotation)


def _media_type(accept: str | None) -> tuple[str, bool]:
    for media in parse_accept(accept, default="image/jpeg"):
        multipart = media.type == "multipart/related"
        kind = media.params.get("type", "image/jpeg").lower() if multipart else media.type
        if kind in IMAGE_TYPES:
            return kind, multipart
        if kind in ("*/*", "image/*"):
            return "image/jpeg", multipart
    raise NotAcceptable(f"rendered images are available as {', '.join(IMAGE_TYPES)}")


@functools.lru_cache(maxsize=8)
def _cache(root: str, max_bytes: int) -> RenderCache:
    return RenderCache(Path(root), max_bytes)


def render_cache(archive: Archive) -> RenderCache:
    settings = archive.settings
    return _cache(str(settings.data_dir / "cache" / "rendered"), settings.render_cache_bytes)


def rendered_image(
    archive: Archive,
    inst: StoredInstance,
    params: RenderParams,
    frame: int | None,
    *,
    thumbnail: bool = False,
) -> bytes:
    """One rendered image (cached): ``frame`` 0-based, None for the resource's default."""
    cache = render_cache(archive)
    kind = "thumbnail" if thumbnail else "rendered"
    key = cache.key(inst.sop_instance_uid, frame, {kind: params.key(), "sha256": inst.sha256})
    cached = cache.get(key)
    if cached is not None:
        return cached
    try:
        data = _render(archive, inst, params, frame, thumbnail)
    except InvalidDicom as exc:
        raise NotAcceptable(f"the stored pixel data cannot be rendered: {exc.message}") from exc
    cache.put(key, data)
    return data


def _render(
    archive: Archive, inst: StoredInstance, params: RenderParams, frame: int | None, thumbnail: bool
) -> bytes:
    with archive.blobs.open(inst.blob_key) as fp:
        if thumbnail and frame is None:
            size = max(params.viewport[:2]) if params.viewport else THUMBNAIL_SIZE
            data = render.render_thumbnail(
                fp, inst.dataset_offset, inst.transfer_syntax_uid, size=size,
                quality=params.quality, media_type=params.media_type,
            )  # fmt: skip
        elif (
            frame is None and params.media_type == "image/gif" and (inst.number_of_frames or 1) > 1
        ):
            data = render.render_multiframe_gif(
                fp, inst.dataset_offset, inst.transfer_syntax_uid, window=params.window,
                viewport=params.viewport, annotation=list(params.annotation) or None,
            )  # fmt: skip
        else:
            data = render.render_instance(
                fp, inst.dataset_offset, inst.transfer_syntax_uid, frame or 0,
                **params.render_kwargs(),
            )  # fmt: skip
    return data


def representative(instances: list[StoredInstance]) -> StoredInstance:
    """The middle instance of the first series holding images; 404 when none has pixels."""
    with_pixels = [i for i in instances if i.rows and i.columns]
    if not with_pixels:
        raise NotFound("nothing here has pixel data to render")
    first_series = with_pixels[0].series_uid
    series = [i for i in with_pixels if i.series_uid == first_series]
    return series[(len(series) - 1) // 2]


def image_response(
    request: Request, data_etag: str, build: Any, media_type: str, cache_control: str
) -> Response:
    if not_modified(request, data_etag):
        return answer_304(data_etag, cache_control)
    data = build()
    return Response(
        data,
        media_type=media_type,
        headers={"ETag": data_etag, "Cache-Control": cache_control},
    )


def _etag(kind: str, instances: list[StoredInstance], params: RenderParams, extra: str) -> str:
    return etag_of(
        [kind, extra, repr(sorted(params.key().items())), *(i.sha256 for i in instances)]
    )


def rendered(
    request: Request,
    archive: Archive,
    instances: list[StoredInstance],
    *,
    level: str,
    frame_list: str | None = None,
) -> Response:
    """``/rendered`` of a study, series, instance or frames."""
    if level == "instance" and instances[0].sop_class_uid == ENCAPSULATED_PDF:
        return pdf_document(request, archive, instances[0])
    params = parse_params(request)
    cache_control = INSTANCE_CACHE if level in ("instance", "frames") else REVALIDATE
    etag = _etag("rendered", instances, params, f"{level}:{frame_list}")
    if frame_list is not None:
        inst = instances[0]
        frames = parse_frame_list(frame_list)
        count = inst.number_of_frames or 1
        bad = [f + 1 for f in frames if f >= count]
        if bad:
            raise NotFound(f"frame {bad[0]} does not exist; the instance has {count} frame(s)")
        if len(frames) == 1 and not params.multipart:
            return image_response(
                request, etag, lambda: rendered_image(archive, inst, params, frames[0]),
                params.media_type, cache_control,
            )  # fmt: skip
        jobs = [(inst, f) for f in frames]
        return _multipart(request, archive, jobs, params, etag, cache_control)
    if level == "instance":
        inst = instances[0]
        if inst.rows is None:
            raise NotFound("the instance has no pixel data to render")
        return image_response(
            request, etag, lambda: rendered_image(archive, inst, params, None),
            params.media_type, cache_control,
        )  # fmt: skip
    if params.multipart:
        jobs = [(i, 0) for i in instances if i.rows and i.columns]
        if not jobs:
            raise NotFound("nothing here has pixel data to render")
        return _multipart(request, archive, jobs, params, etag, cache_control)
    inst = representative(instances)
    single = RenderParams(params.media_type, False, params.window, params.viewport,
                          params.quality, params.annotation)  # fmt: skip
    return image_response(
        request, etag, lambda: rendered_image(archive, inst, single, 0),
        params.media_type, cache_control,
    )  # fmt: skip


def pdf_document(request: Request, archive: Archive, inst: StoredInstance) -> Response:
    """The PDF of an Encapsulated PDF instance, trimmed to Encapsulated Document Length."""
    accept = request.query_params.get("accept") or request.headers.get("accept")
    if not any(m.matches(PDF) for m in parse_accept(accept, default=PDF)):
        raise NotAcceptable(f"this instance is an encapsulated document, rendered as {PDF}")
    etag = etag_of(["pdf", inst.sha256])
    if not_modified(request, etag):
        return answer_304(etag, INSTANCE_CACHE)
    try:
        with archive.blobs.open(inst.blob_key) as fp:
            header = read_header(fp, inst.dataset_offset, inst.transfer_syntax_uid)
    except InvalidDicom as exc:
        raise NotAcceptable(f"the stored document cannot be read: {exc.message}") from exc
    data = header.get("EncapsulatedDocument")
    if not isinstance(data, bytes | bytearray) or not data:
        raise NotFound("the instance holds no encapsulated document")
    length = header.get("EncapsulatedDocumentLength")
    if isinstance(length, int) and 0 < length <= len(data):
        data = data[:length]  # drop the padding byte of an odd-length document (PS3.3 C.24.2)
    headers = {
        "ETag": etag,
        "Cache-Control": INSTANCE_CACHE,
        "Content-Disposition": 'inline; filename="report.pdf"',
    }
    return Response(bytes(data), media_type=PDF, headers=headers)


def _multipart(
    request: Request,
    archive: Archive,
    jobs: list[tuple[StoredInstance, int]],
    params: RenderParams,
    etag: str,
    cache_control: str,
) -> Response:
    if not_modified(request, etag):
        return answer_304(etag, cache_control)
    first = rendered_image(archive, jobs[0][0], params, jobs[0][1])  # errors before streaming
    boundary = new_boundary()

    def parts() -> Iterator[bytes]:
        data = first
        for position, (inst, frame) in enumerate(jobs):
            if position:
                data = rendered_image(archive, inst, params, frame)
            headers = {"Content-Type": params.media_type, "Content-Length": str(len(data))}
            yield part_header(boundary, headers) + data
        yield closing(boundary)

    return StreamingResponse(
        parts(),
        media_type=related_content_type(boundary, params.media_type),
        headers={"ETag": etag, "Cache-Control": cache_control},
    )


def thumbnail(
    request: Request,
    archive: Archive,
    instances: list[StoredInstance],
    *,
    level: str,
    frame_list: str | None = None,
) -> Response:
    """``/thumbnail`` of a study, series, instance or frame: one small image."""
    params = parse_params(request, thumbnail=True)
    if params.multipart:
        params = RenderParams(params.media_type, False, params.window, params.viewport,
                              params.quality, params.annotation)  # fmt: skip
    cache_control = INSTANCE_CACHE if level in ("instance", "frames") else REVALIDATE
    etag = _etag("thumbnail", instances, params, f"{level}:{frame_list}")
    inst = representative(instances)
    frame: int | None = None
    if frame_list is not None:
        frames = parse_frame_list(frame_list)
        if len(frames) != 1:
            raise InvalidQuery("a thumbnail is of one frame")
        if frames[0] >= (inst.number_of_frames or 1):
            raise NotFound(f"frame {frames[0] + 1} does not exist")
        frame = frames[0]
    return image_response(
        request, etag, lambda: rendered_image(archive, inst, params, frame, thumbnail=True),
        params.media_type, cache_control,
    )  # fmt: skip


def add_routes(router: APIRouter, root: str) -> None:
    for kind, handler in (("rendered", rendered), ("thumbnail", thumbnail)):
        _add_level_routes(router, root, kind, handler)


def _add_level_routes(router: APIRouter, root: str, kind: str, handler: Any) -> None:
    tags: list[str | Any] = ["WADO-RS"]
    study_path = f"{root}/studies/{{study}}"
    series_path = f"{study_path}/series/{{series}}"
    instance_path = f"{series_path}/instances/{{sop}}"
    frames_path = f"{instance_path}/frames/{{frame_list}}"

    @router.get(f"{study_path}/{kind}", tags=tags, name=f"study_{kind}")
    def study_image(
        request: Request, study: str, archive: ArchiveDep, principal: PrincipalDep
    ) -> Response:
        found = visible_instances(archive, principal, study)
        return handler(request, archive, found, level="study")  # type: ignore[no-any-return]

    @router.get(f"{series_path}/{kind}", tags=tags, name=f"series_{kind}")
    def series_image(
        request: Request, study: str, series: str, archive: ArchiveDep, principal: PrincipalDep
    ) -> Response:
        found = visible_instances(archive, principal, study, series)
        return handler(request, archive, found, level="series")  # type: ignore[no-any-return]

    @router.get(f"{instance_path}/{kind}", tags=tags, name=f"instance_{kind}")
    def instance_image(
        request: Request,
        study: str,
        series: str,
        sop: str,
        archive: ArchiveDep,
        principal: PrincipalDep,
    ) -> Response:
        found = visible_instances(archive, principal, study, series, sop)
        return handler(request, archive, found, level="instance")  # type: ignore[no-any-return]

    @router.get(f"{frames_path}/{kind}", tags=tags, name=f"frames_{kind}")
    def frames_image(
        request: Request,
        study: str,
        series: str,
        sop: str,
        frame_list: str,
        archive: ArchiveDep,
        principal: PrincipalDep,
    ) -> Response:
        found = visible_instances(archive, principal, study, series, sop)
        return handler(  # type: ignore[no-any-return]
            request, archive, found, level="frames", frame_list=frame_list
        )
