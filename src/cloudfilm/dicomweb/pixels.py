"""WADO-RS frames and bulk data (PS3.18 10.4.1.1.4-5, 8.7.3.3).

``/frames/{list}`` answers ``multipart/related`` with one part per requested frame, in the order
asked. What each part holds follows ``Accept``:

- ``type="application/octet-stream"`` without a transfer syntax, or with Explicit VR Little
  Endian (the default): the frame uncompressed, little endian; encapsulated frames are decoded
  (colour JPEG and JPEG 2000 come out as RGB);
- ``type="application/octet-stream"; transfer-syntax=*``, ``*/*`` or ``image/*``: the frame as
  stored — the compressed bitstream of an encapsulated frame (fragments joined, found through the
  offset tables or codec markers), or the native bytes; the part's Content-Type names its
  transfer syntax;
- a compressed media type (``image/jpeg``, ``image/jls``, ``image/jp2``, ``image/jpx``,
  ``image/x-dicom-rle``, ``image/jphc``): the stored bitstream when the instance is stored in a
  syntax of that type, else the range is not acceptable (we do not recompress frames).

Uncompressed frames are sent with gzip content coding to clients that accept it (lossless;
a browser undoes it transparently), which is what makes full-fidelity pixels affordable for
the mobile viewer on a phone link. Compressed bitstreams are sent as they are.

``/bulkdata/{path}`` serves the values the metadata references: ``7FE00010`` (Pixel Data: the
native value little endian, or one part per compressed frame) and binary values at
``tag[/item/tag...]`` paths.
"""

from __future__ import annotations

import contextlib
from collections import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydicom.dataset import Dataset
from pydicom.uid import UID

from cloudfilm.api.deps import ArchiveDep, PrincipalDep
from cloudfilm.archive import Archive
from cloudfilm.core.errors import InvalidDicom, InvalidQuery, NotAcceptable, NotFound
from cloudfilm.dicom.frames import FrameReader
from cloudfilm.dicomweb.access import visible_instances
from cloudfilm.dicomweb.caching import INSTANCE_CACHE, answer_304, etag_of, not_modified
from cloudfilm.dicomweb.encoding import FAST, accepts_gzip, gzip_bytes, gzipped
from cloudfilm.dicomweb.lookup import StoredInstance
from cloudfilm.dicomweb.media import MediaType, parse_accept
from cloudfilm.dicomweb.multipart import closing, new_boundary, part_header, related_content_type

OCTET = "application/octet-stream"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
MAX_FRAMES_PER_REQUEST = 10_000

#: Media types of compressed frames, by transfer syntax (PS3.18 Table 8.7.3-2).
COMPRESSED_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
}


def parse_frame_list(text: str) -> list[int]:
    """``"1,3,2"`` → ``[0, 2, 1]`` (0-based); 400 for anything but positive integers."""
    pieces = text.split(",")
    if len(pieces) > MAX_FRAMES_PER_REQUEST:
        raise InvalidQuery(f"at most {MAX_FRAMES_PER_REQUEST} frames per request")
    frames = []
    for piece in pieces:
        piece = piece.strip()
        if not piece.isdigit() or len(piece) > 9 or int(piece) < 1:
            raise InvalidQuery(f"frame numbers are positive integers; got {piece[:20]!r}")
        frames.append(int(piece) - 1)
    return frames


@dataclass(frozen=True)
class FramePlan:
    """How frames go out: decoded to native, or as stored."""

    decode: bool
    #: Content-Type of each part (with its transfer-syntax parameter).
    part_type: str
    #: The ``type`` of the multipart answer.
    multipart_type: str
    single: bool = False


def _frame_plan(media: MediaType, ts: str, encapsulated: bool, count: int) -> FramePlan | None:
    """The plan for one acceptable media range, or None when it cannot be served."""
    stored_media = COMPRESSED_MEDIA.get(ts, OCTET) if encapsulated else OCTET
    kind, single = media.type, False
    if kind == "multipart/related":
        kind = media.params.get("type", OCTET).lower()
    elif kind == OCTET or kind in COMPRESSED_MEDIA.values():  # a bare body: one frame only
        if count != 1:
            return None
        single = True
    wanted = media.params.get("transfer-syntax")
    as_stored = FramePlan(False, f"{stored_media}; transfer-syntax={ts}", stored_media, single)
    decoded = FramePlan(encapsulated, f"{OCTET}; transfer-syntax={EXPLICIT_VR_LE}", OCTET, single)
    if kind in ("*/*", "multipart/*"):
        return as_stored
    if kind == "image/*":
        return as_stored if encapsulated else None
    if kind == OCTET:
        if wanted == "*":  # as stored, announced as octet-stream (what OHIF asks for)
            return FramePlan(False, f"{OCTET}; transfer-syntax={ts}", OCTET, single)
        if wanted in (None, EXPLICIT_VR_LE):
            return decoded
        return as_stored if wanted == ts else None
    if encapsulated and kind == stored_media and wanted in (None, "*", ts):
        return as_stored
    return None


def negotiate_frames(accept: str | None, ts: str, encapsulated: bool, count: int) -> FramePlan:
    for media in parse_accept(accept, default=f'multipart/related; type="{OCTET}"'):
        plan = _frame_plan(media, ts, encapsulated, count)
        if plan is not None:
            return plan
    name = UID(ts).name or ts
    raise NotAcceptable(
        f"frames of this instance ({name}) are available uncompressed as "
        f'multipart/related; type="{OCTET}", or as stored with transfer-syntax=*'
    )


def native_bytes(reader: FrameReader, index: int, decode: bool) -> bytes:
    """Frame ``index`` as stored, or decoded to little endian native pixels."""
    try:
        if not decode:
            return reader.frame_bytes(index)
        pixels = reader.decode(index, as_rgb=True).pixels
    except InvalidDicom as exc:
        raise NotAcceptable(f"the stored pixel data cannot be read: {exc.message}") from exc
    little = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False)
    return bytes(np.ascontiguousarray(little).tobytes())


@contextlib.contextmanager
def open_reader(archive: Archive, inst: StoredInstance) -> Iterator[FrameReader]:
    fp: BinaryIO = archive.blobs.open(inst.blob_key)
    try:
        try:
            reader = FrameReader(fp, inst.dataset_offset, inst.transfer_syntax_uid)
        except InvalidDicom as exc:
            raise NotAcceptable(f"the stored pixel data cannot be read: {exc.message}") from exc
        yield reader
    finally:
        fp.close()


def frames(request: Request, archive: Archive, inst: StoredInstance, frame_list: str) -> Response:
    """``/frames/{list}`` of one instance."""
    indices = parse_frame_list(frame_list)
    gzip_ok = accepts_gzip(request.headers.get("accept-encoding", ""))
    accept = request.headers.get("accept", "")
    etag = etag_of(["frames", inst.sha256, frame_list, accept, *(["gzip"] if gzip_ok else [])])
    if not_modified(request, etag):
        unchanged = answer_304(etag, INSTANCE_CACHE)
        unchanged.headers["Vary"] = "Accept-Encoding"
        return unchanged
    stack = contextlib.ExitStack()
    reader = stack.enter_context(open_reader(archive, inst))
    try:
        for index in indices:
            if not 0 <= index < reader.number_of_frames:
                raise NotFound(
                    f"frame {index + 1} does not exist; the instance has "
                    f"{reader.number_of_frames} frame(s)"
                )
        plan = negotiate_frames(
            request.headers.get("accept"), inst.transfer_syntax_uid, reader.encapsulated,
            len(indices),
        )  # fmt: skip
        first = native_bytes(reader, indices[0], plan.decode)  # failures here are clean 4xx
    except BaseException:
        stack.close()
        raise
    headers = {"ETag": etag, "Cache-Control": INSTANCE_CACHE, "Vary": "Accept-Encoding"}
    compress = gzip_ok and (plan.decode or not reader.encapsulated)  # native pixels only
    if compress:
        headers["Content-Encoding"] = "gzip"
    if plan.single:
        stack.close()
        body = gzip_bytes(first, FAST) if compress else first
        return Response(body, media_type=plan.part_type, headers=headers)
    boundary = new_boundary()

    def parts() -> Iterator[bytes]:
        with stack:
            yield part_header(boundary, _part(plan.part_type, len(first))) + first
            for index in indices[1:]:
                data = native_bytes(reader, index, plan.decode)
                yield part_header(boundary, _part(plan.part_type, len(data))) + data
            yield closing(boundary)

    media = related_content_type(boundary, plan.multipart_type)
    stream = gzipped(parts(), FAST) if compress else parts()
    return StreamingResponse(stream, media_type=media, headers=headers)


def _part(content_type: str, size: int) -> dict[str, str]:
    return {"Content-Type": content_type, "Content-Length": str(size)}


# ---------------------------------------------------------------------------- bulk data


def _navigate(header: Dataset, path: list[str]) -> Any:
    """The element at ``tag/item/tag/...`` in the header; NotFound when absent."""
    current: Any = header
    element: Any = None
    for position, piece in enumerate(path):
        if position % 2 == 0:
            try:
                tag = int(piece, 16)
            except ValueError as exc:
                raise NotFound(f"{piece[:20]!r} is not a tag") from exc
            if not isinstance(current, Dataset) or tag not in current:
                raise NotFound(f"no bulk data at {'/'.join(path)[:200]}")
            element = current[tag]
            current = element.value
        else:
            items = current if isinstance(current, abc.Sequence) else ()
            if not piece.isdigit() or int(piece) >= len(items):
                raise NotFound(f"no sequence item {piece[:20]} at {'/'.join(path)[:200]}")
            current = items[int(piece)]
    return element


_PIXEL_PATHS = {"7FE00008", "7FE00009", "7FE00010"}
_SWAP_UNITS = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def bulkdata(request: Request, archive: Archive, inst: StoredInstance, path: str) -> Response:
    """``/bulkdata/{path}``: a value the metadata references by BulkDataURI."""
    pieces = [p for p in path.split("/") if p]
    if not pieces or len(pieces) % 2 == 0 or len(pieces) > 41:
        raise NotFound(f"no bulk data at {path[:200]}")
    accepted = parse_accept(
        request.headers.get("accept"), default=f'multipart/related; type="{OCTET}"'
    )
    multipart = True
    for media in accepted:
        kind = media.params.get("type", "").lower() if media.type == "multipart/related" else ""
        if media.type in ("*/*", "multipart/*") or kind in (OCTET, "*/*", ""):
            break
        if media.type == OCTET:
            multipart = False
            break
    else:
        raise NotAcceptable(f'bulk data is sent as multipart/related; type="{OCTET}"')
    etag = etag_of(["bulk", inst.sha256, path, str(multipart)])
    if not_modified(request, etag):
        return answer_304(etag, INSTANCE_CACHE)
    stack = contextlib.ExitStack()
    try:
        reader = stack.enter_context(open_reader(archive, inst))
        if len(pieces) == 1 and pieces[0].upper() in _PIXEL_PATHS:
            chunks = _pixel_value(reader, int(pieces[0], 16), stack)
        else:
            element = _navigate(reader.header, pieces)
            value = element.value
            if not isinstance(value, bytes | bytearray):
                raise NotFound(f"the value at {path[:200]} is not bulk data")
            data = bytes(value)
            unit = _SWAP_UNITS.get(str(element.VR), 1)
            if not reader.little and unit > 1:
                usable = len(data) - len(data) % unit
                data = np.frombuffer(data[:usable], f">u{unit}").astype(f"<u{unit}").tobytes()
            stack.close()
            chunks = iter([data])
    except BaseException:
        stack.close()
        raise
    headers = {"ETag": etag, "Cache-Control": INSTANCE_CACHE}
    if not multipart:
        return StreamingResponse(_joined(chunks), media_type=OCTET, headers=headers)
    boundary = new_boundary()
    return StreamingResponse(
        _bulk_parts(chunks, boundary), media_type=related_content_type(boundary, OCTET),
        headers=headers,
    )  # fmt: skip


def _pixel_value(reader: FrameReader, tag: int, stack: contextlib.ExitStack) -> Iterator[Any]:
    if reader.pixel_tag != tag:
        raise NotFound("the instance has no such pixel data")
    if not reader.encapsulated:

        def native() -> Iterator[Any]:
            with stack:
                yield ("part", OCTET)
                yield from reader.iter_raw_value()

        return native()
    media = COMPRESSED_MEDIA.get(str(reader.transfer_syntax), OCTET)

    def frames_of() -> Iterator[Any]:
        with stack:
            for index in range(reader.number_of_frames):
                yield ("part", f"{media}; transfer-syntax={reader.transfer_syntax}")
                yield reader.frame_bytes(index)

    return frames_of()


def _bulk_parts(chunks: Iterator[Any], boundary: str) -> Iterator[bytes]:
    opened = False
    for chunk in chunks:
        if isinstance(chunk, tuple):
            yield part_header(boundary, {"Content-Type": chunk[1]})
            opened = True
            continue
        if not opened:
            yield part_header(boundary, {"Content-Type": OCTET})
            opened = True
        yield chunk
    yield closing(boundary)


def _joined(chunks: Iterator[Any]) -> Iterator[bytes]:
    for chunk in chunks:
        if not isinstance(chunk, tuple):
            yield chunk


def add_routes(router: APIRouter, root: str) -> None:
    base = f"{root}/studies/{{study}}/series/{{series}}/instances/{{sop}}"

    @router.get(f"{base}/frames/{{frame_list}}", tags=["WADO-RS"])
    def retrieve_frames(
        request: Request,
        study: str,
        series: str,
        sop: str,
        frame_list: str,
        archive: ArchiveDep,
        principal: PrincipalDep,
    ) -> Response:
        """Frames of an instance (1-based numbers, comma-separated)."""
        (inst,) = visible_instances(archive, principal, study, series, sop)
        return frames(request, archive, inst, frame_list)

    @router.get(f"{base}/bulkdata/{{path:path}}", tags=["WADO-RS"])
    def retrieve_bulkdata(
        request: Request,
        study: str,
        series: str,
        sop: str,
        path: str,
        archive: ArchiveDep,
        principal: PrincipalDep,
    ) -> Response:
        """A bulk data value referenced by a BulkDataURI of the metadata."""
        (inst,) = visible_instances(archive, principal, study, series, sop)
        return bulkdata(request, archive, inst, path)
