"""WADO-RS (PS3.18 10.4): instances of a study, series or instance, and their ``/metadata``.

Instances go out as ``multipart/related; type="application/dicom"``, one part per instance,
streamed from the blob store in steps of about 4 MiB (a whole study never sits in memory).
Transfer syntaxes are negotiated from ``Accept`` (PS3.18 8.7.3.5):

- ``transfer-syntax=*``: every instance exactly as stored — the whole Part 10 blob, byte for
  byte (preamble, meta and data set);
- a transfer syntax UID: instances already in it are sent as stored; the others are transcoded
  (derived data) when ``cloudfilm.dicom.transcode`` can, otherwise the range is not
  acceptable;
- no ``transfer-syntax`` parameter: Explicit VR Little Endian, the default PS3.18 names; an
  instance that cannot be decoded is then sent as stored rather than failing the request.

When no range in ``Accept`` can be served, the answer is 406 before anything is streamed.
``/metadata`` is the cached DICOM JSON of each instance with BulkDataURIs made absolute,
streamed in batches: it never reads a blob. It is gzip-compressed for clients that accept it
(``Accept-Encoding``, RFC 9110 12.5.3): a 300-slice CT's 0.9 MB of JSON becomes about 20 kB,
which matters to the mobile viewer on a phone link.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.core.errors import NotAcceptable
from cloudfilm.dicomweb import derived
from cloudfilm.dicomweb.caching import (
    INSTANCE_CACHE,
    REVALIDATE,
    answer_304,
    etag_of,
    not_modified,
    set_cache_headers,
)
from cloudfilm.dicomweb.encoding import accepts_gzip, gzipped
from cloudfilm.dicomweb.lookup import StoredInstance, headers_of
from cloudfilm.dicomweb.media import MediaType, parse_accept
from cloudfilm.dicomweb.multipart import closing, new_boundary, part_header, related_content_type
from cloudfilm.dicomweb.urls import instance_url, service_url

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
#: Bytes read from the blob store per step of a streamed answer (one worker-thread hop each).
STREAM_CHUNK = 4 * 1024 * 1024
#: Instances whose cached headers are read per index round trip in ``/metadata``.
METADATA_BATCH = 500


@dataclass(frozen=True)
class Plan:
    """How each instance goes out: None = as stored, else the target transfer syntax."""

    targets: list[str | None]
    #: The transfer-syntax parameter to announce on the multipart type ("*" when mixed).
    announced: str
    #: A bare ``application/dicom`` answer (one instance, the client asked for no multipart).
    single: bool = False


def _plan_for(
    media: MediaType, instances: list[StoredInstance], instance_level: bool
) -> Plan | None:
    """The plan for one acceptable media range, or None when it cannot be served."""
    if media.type in ("*/*", "multipart/*"):
        part_type = DICOM
    elif media.type == "multipart/related":
        part_type = media.params.get("type", DICOM).lower()
    elif media.type in (DICOM, "application/*"):
        part_type = DICOM
    else:
        return None
    if part_type not in (DICOM, "application/*", "*/*"):
        return None
    single = media.type == DICOM and instance_level
    wanted = media.params.get("transfer-syntax")
    if wanted == "*":
        return Plan([None] * len(instances), "*", single)
    target = wanted or EXPLICIT_VR_LE
    targets: list[str | None] = []
    for inst in instances:
        if inst.transfer_syntax_uid == target:
            targets.append(None)
        elif derived.can_transcode(inst.transfer_syntax_uid, target):
            targets.append(target)
        elif wanted is None:
            targets.append(None)  # default syntax: send what we cannot decode as stored
        else:
            return None
    mixed = any(
        t is None and i.transfer_syntax_uid != target
        for t, i in zip(targets, instances, strict=True)
    )
    return Plan(targets, "*" if mixed else target, single)


def negotiate(
    accept: str | None, instances: list[StoredInstance], instance_level: bool = False
) -> Plan:
    """The first acceptable way to send ``instances`` (PS3.18 8.7.3.5); 406 when none."""
    for media in parse_accept(accept, default=f'multipart/related; type="{DICOM}"'):
        plan = _plan_for(media, instances, instance_level)
        if plan is not None:
            return plan
    raise NotAcceptable(
        "cannot send these instances in any of the accepted media types and transfer "
        f"syntaxes ({(accept or '')[:300]}); transfer-syntax=* returns them as stored"
    )


def _stream(
    archive: Archive,
    instances: list[StoredInstance],
    plan: Plan,
    boundary: str,
    prepared: derived.Transcoded | None,
) -> Iterator[bytes]:
    for index, (inst, target) in enumerate(zip(instances, plan.targets, strict=True)):
        if target is None:
            yield part_header(boundary, _part_headers(inst.transfer_syntax_uid, inst.size_bytes))
            yield from blob_chunks(archive, inst)
            continue
        done = prepared if index == 0 and prepared is not None else None
        done = done or derived.transcoded(archive, inst, target)
        yield part_header(boundary, _part_headers(target, done.size))
        yield from done.chunks()
    yield closing(boundary)


def coalesce(chunks: Iterator[bytes], size: int = STREAM_CHUNK) -> Iterator[bytes]:
    """Join small pieces (part headers, small instances) into writes of about ``size`` bytes.

    Each step of a streamed answer costs a worker-thread hop and a socket write; joining
    keeps memory at about two chunks while a study of small instances goes out in a few
    dozen steps instead of two per instance.
    """
    pending: list[bytes] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += len(chunk)
        if held >= size:
            yield b"".join(pending)
            pending, held = [], 0
    if pending:
        yield b"".join(pending)


def blob_chunks(archive: Archive, inst: StoredInstance) -> Iterator[bytes]:
    with archive.blobs.open(inst.blob_key) as fp:
        while chunk := fp.read(STREAM_CHUNK):
            yield chunk


def _part_headers(transfer_syntax: str, size: int) -> dict[str, str]:
    return {
        "Content-Type": f"{DICOM}; transfer-syntax={transfer_syntax}",
        "Content-Length": str(size),
    }


def _exact_length(
    instances: list[StoredInstance],
    plan: Plan,
    boundary: str,
    prepared: derived.Transcoded | None,
) -> int | None:
    """Body size when it is known before streaming (so the client sees progress)."""
    sizes: list[tuple[str, int]] = []
    for index, (inst, target) in enumerate(zip(instances, plan.targets, strict=True)):
        if target is None:
            sizes.append((inst.transfer_syntax_uid, inst.size_bytes))
        elif index == 0 and prepared is not None:
            sizes.append((target, prepared.size))
        else:
            return None
    if plan.single:
        return sizes[0][1]
    total = len(closing(boundary))
    for ts, size in sizes:
        total += len(part_header(boundary, _part_headers(ts, size))) + size
    return total


def retrieve(
    request: Request,
    archive: Archive,
    instances: list[StoredInstance],
    *,
    instance_level: bool,
) -> Response:
    """The multipart answer with ``instances`` (already checked against the principal)."""
    plan = negotiate(request.headers.get("accept"), instances, instance_level)
    cache = INSTANCE_CACHE if instance_level else REVALIDATE
    etag = etag_of(
        ["dicom", plan.announced, *(f"{i.sha256}:{t}" for i, t in _pairs(instances, plan))]
    )
    if not_modified(request, etag):
        return answer_304(etag, cache)
    prepared = None
    if instance_level and plan.targets[0] is not None:  # transcode first: failures are a 406
        prepared = derived.transcoded(archive, instances[0], plan.targets[0])
    boundary = new_boundary()
    response: Response
    if plan.single:
        ts = plan.targets[0] or instances[0].transfer_syntax_uid
        chunks = prepared.chunks() if prepared else blob_chunks(archive, instances[0])
        response = StreamingResponse(chunks, media_type=f"{DICOM}; transfer-syntax={ts}")
    else:
        response = StreamingResponse(
            coalesce(_stream(archive, instances, plan, boundary, prepared)),
            media_type=related_content_type(boundary, DICOM, transfer_syntax=plan.announced),
        )
    length = _exact_length(instances, plan, boundary, prepared)
    if length is not None:
        response.headers["Content-Length"] = str(length)
    set_cache_headers(response, etag, cache)
    return response


def _pairs(instances: list[StoredInstance], plan: Plan) -> Iterator[tuple[StoredInstance, str]]:
    for inst, target in zip(instances, plan.targets, strict=True):
        yield inst, target or inst.transfer_syntax_uid


# ----------------------------------------------------------------------------- metadata


def metadata(
    request: Request,
    archive: Archive,
    settings: Settings,
    instances: list[StoredInstance],
    *,
    instance_level: bool,
) -> Response:
    """``/metadata``: a JSON array of the cached headers, BulkDataURIs made absolute."""
    accepted = parse_accept(request.headers.get("accept"), default=DICOM_JSON)
    if not any(m.matches(DICOM_JSON) or m.type == "application/json" for m in accepted):
        raise NotAcceptable("metadata is available as application/dicom+json")
    cache = INSTANCE_CACHE if instance_level else REVALIDATE
    compress = accepts_gzip(request.headers.get("accept-encoding", ""))
    # Each content coding is its own representation, with its own strong ETag.
    etag = etag_of(["metadata", *(i.sha256 for i in instances), *(["gzip"] if compress else [])])
    if not_modified(request, etag):
        response_304 = answer_304(etag, cache)
        response_304.headers["Vary"] = "Accept-Encoding"
        return response_304
    base = service_url(request, settings)
    chunks = _metadata_chunks(archive, instances, base)
    headers = {"Vary": "Accept-Encoding"}
    if compress:
        chunks = gzipped(chunks)
        headers["Content-Encoding"] = "gzip"
    response = StreamingResponse(chunks, media_type=DICOM_JSON, headers=headers)
    set_cache_headers(response, etag, cache)
    return response


def _metadata_chunks(
    archive: Archive, instances: list[StoredInstance], base: str
) -> Iterator[bytes]:
    yield b"["
    first = True
    for start in range(0, len(instances), METADATA_BATCH):
        batch = instances[start : start + METADATA_BATCH]
        with archive.engine.connect() as conn:
            headers = headers_of(conn, [i.pk for i in batch])
        pieces = []
        for inst in batch:
            header = headers.get(inst.pk)
            if header is None:  # deleted since the listing
                continue
            pieces.append(absolute_bulk_uris(header, inst, base))
        if pieces:
            text = ",".join(pieces)
            yield (text if first else "," + text).encode("utf-8")
            first = False
    yield b"]"


def absolute_bulk_uris(header_json: str, inst: StoredInstance, base: str) -> str:
    """The cached header with ``bulkdata/...`` references made absolute URLs.

    The cache is compact JSON (no spaces), so ``"BulkDataURI":"`` can only be a key: a
    string value holding those characters would have its quotes escaped.
    """
    url = instance_url(base, inst.study_uid, inst.series_uid, inst.sop_instance_uid)
    return header_json.replace('"BulkDataURI":"bulkdata/', f'"BulkDataURI":"{url}/bulkdata/')
