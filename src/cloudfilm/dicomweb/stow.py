"""STOW-RS (PS3.18 10.5): store instances sent as ``multipart/related; type="application/dicom"``.

The body is parsed as it arrives (``MultipartParser`` over ``request.stream()``); each part is
spooled to a ``SpooledTemporaryFile`` (memory up to ``spool_memory_bytes``, then the data
folder's ``tmp/``) and handed to ``Archive.store`` in a worker thread while the next part is
read, so a 2 GB upload never sits in memory and one request of many instances keeps both the
network and the disk busy.

The answer is the Store Instances Response (PS3.18 10.5.3, Table 10.5.3-1): ReferencedSOPSequence
for what is stored (an exact duplicate counts as stored), FailedSOPSequence with the
FailureReason of each refused instance (the ``dimse_status`` of its error: 0xA7xx out of
resources, 0xA9xx does not match, 0xCxxx cannot understand, 0x0110 processing failure), a
WarningReason 0xB007 for instances stored with remarks about their content, and RetrieveURLs.
Status 200 when all were stored, 202 when some failed, 409 when none was stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import tempfile
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO, Any, cast

import anyio
from fastapi import Request, Response
from pydicom import dcmread

from cloudfilm.api.deps import Principal
from cloudfilm.archive import Archive, StoreResult, StoreStatus, StoreTurn
from cloudfilm.core.config import Settings
from cloudfilm.core.errors import (
    CloudFilmError,
    Forbidden,
    InvalidDicom,
    MalformedRequest,
    NotAcceptable,
    StudyMismatch,
    TooLarge,
    UnsupportedMediaType,
)
from cloudfilm.dicom.parse import parse_instance
from cloudfilm.dicomweb.media import parse_accept, parse_content_type
from cloudfilm.dicomweb.multipart import (
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    check_boundary,
)
from cloudfilm.dicomweb.native_xml import to_native_xml
from cloudfilm.dicomweb.urls import instance_url, service_url, study_url

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
#: WarningReason (0008,1196) for an instance stored with remarks (PS3.18 Table I.2-1):
#: "Data Set does not match SOP Class" — odd values kept as received.
WARNING_DATA_SET_REMARKS = 0xB007
#: Stores running in worker threads while the next parts are read. Their index rows share
#: commits (``Archive``'s group commit), so several at once go faster than one by one; their
#: turns keep the rows in the parts' order: of two copies of one SOP Instance UID in a
#: request, the first is the one kept.
MAX_PENDING_STORES = 4
#: Most reasons repeated in ``Warning`` headers of one answer.
MAX_WARNING_HEADERS = 20
_UID = re.compile(r"^[0-9.]{1,64}$")


@dataclass
class _Outcome:
    result: StoreResult
    part: int


def response_media_type(accept: str | None) -> str:
    """``application/dicom+json`` (default) or ``application/dicom+xml``; else 406."""
    for media in parse_accept(accept):
        if media.matches(DICOM_JSON) or media.type == "application/json":
            return DICOM_JSON
        if media.type in (DICOM_XML, "application/xml", "text/xml"):
            return DICOM_XML
        if media.type == "multipart/related" and media.params.get("type") == DICOM_XML:
            return DICOM_XML
    raise NotAcceptable(
        "STOW-RS answers in application/dicom+json or application/dicom+xml; "
        f"the request accepts neither ({(accept or '')[:200]})"
    )


def _check_media_type(request: Request) -> bytes:
    ctype = parse_content_type(request.headers.get("content-type"))
    if ctype.type != "multipart/related":
        raise UnsupportedMediaType(
            f'STOW-RS takes multipart/related; type="application/dicom", not {ctype.type}'
        )
    part_type = ctype.params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise UnsupportedMediaType(
            f"STOW-RS here stores application/dicom parts; {part_type} (metadata and bulk "
            "data) is not supported"
        )
    return check_boundary(ctype.params.get("boundary"))


def _check_length(request: Request, settings: Settings) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        length = int(declared)
    except ValueError as exc:
        raise MalformedRequest(f"Content-Length {declared[:40]!r} is not a number") from exc
    if length > settings.stow_max_body_bytes:
        raise TooLarge(
            f"request body of {length} bytes exceeds the STOW-RS limit of "
            f"{settings.stow_max_body_bytes} bytes"
        )


def _store_part(
    archive: Archive,
    spool: IO[bytes],
    content_type: str | None,
    study_uid: str | None,
    in_memory: bool,
    turn: StoreTurn,
    institution: int | None = None,
) -> StoreResult:
    """Store one spooled part (in a worker thread); never raises."""
    try:
        if content_type is not None:
            media = content_type.split(";", 1)[0].strip().lower()
            if media not in ("application/dicom", ""):
                error: CloudFilmError = UnsupportedMediaType(
                    f"a part of type {media[:80]} is not application/dicom"
                )
                return StoreResult(StoreStatus.REJECTED, reason=error.message, error=error)
        spool.seek(0)
        if study_uid is not None:
            mismatch = _study_mismatch(spool, study_uid)
            if mismatch is not None:
                return mismatch
            spool.seek(0)
        data: bytes | IO[bytes] = spool.read() if in_memory else spool
        result = archive.store(cast(Any, data), source="stow", turn=turn, institution=institution)
        if archive.settings.dimse_routes:  # forward per the routing rules (docs/dimse.md)
            from cloudfilm.dimse.routing import route_stored

            route_stored(archive, result, origin="stow")
        if not result.ok and result.sop_instance_uid is None:
            _identify(result, spool)
        return result
    finally:
        turn.passed()
        spool.close()


def _identify(result: StoreResult, spool: IO[bytes]) -> None:
    """Best effort: the SOP Class and Instance UIDs of a refused part, for FailedSOPSequence."""
    try:
        spool.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(
                spool, force=True, stop_before_pixels=True,
                specific_tags=["SOPClassUID", "SOPInstanceUID"],
            )  # fmt: skip
        meta = getattr(ds, "file_meta", None)
        sop_class = ds.get("SOPClassUID") or (meta or {}).get("MediaStorageSOPClassUID")
        sop_instance = ds.get("SOPInstanceUID") or (meta or {}).get("MediaStorageSOPInstanceUID")
    except Exception:
        return
    if isinstance(sop_instance, str) and _UID.match(sop_instance):
        result.sop_instance_uid = sop_instance
    if isinstance(sop_class, str) and _UID.match(sop_class):
        result.sop_class_uid = sop_class


def _study_mismatch(spool: IO[bytes], study_uid: str) -> StoreResult | None:
    """A rejection when the part belongs to another study than the URL's."""
    try:
        parsed = parse_instance(cast(Any, spool))
    except InvalidDicom:
        return None  # the archive gives the precise reason
    if parsed.study_uid == study_uid:
        return None
    error = StudyMismatch(
        f"instance {parsed.sop_instance_uid} belongs to study {parsed.study_uid}, "
        f"not to study {study_uid} named in the URL"
    )
    return StoreResult(
        StoreStatus.REJECTED,
        sop_instance_uid=parsed.sop_instance_uid,
        sop_class_uid=parsed.sop_class_uid,
        study_uid=parsed.study_uid,
        series_uid=parsed.series_uid,
        reason=error.message,
        error=error,
    )


class _Receiver:
    """Reads the parts of one request and keeps up to ``MAX_PENDING_STORES`` stores running."""

    def __init__(
        self,
        archive: Archive,
        settings: Settings,
        study_uid: str | None,
        institution: int | None = None,
    ) -> None:
        self.archive = archive
        self.institution = institution
        self.settings = settings
        self.study_uid = study_uid
        self.results: list[StoreResult] = []
        self.pending: list[asyncio.Task[StoreResult]] = []
        self.turn: StoreTurn | None = None
        self.spool: tempfile.SpooledTemporaryFile[bytes] | None = None
        self.part_type: str | None = None
        self.part_size = 0

    async def receive(self, chunks: AsyncIterator[bytes], boundary: bytes) -> None:
        parser = MultipartParser(boundary)
        total = 0
        limit = self.settings.stow_max_body_bytes
        try:
            async for chunk in chunks:
                total += len(chunk)
                if total > limit:
                    raise TooLarge(f"request body exceeds the STOW-RS limit of {limit} bytes")
                for event in parser.feed(chunk):
                    if isinstance(event, PartData):
                        self._write(event.data)
                    elif isinstance(event, PartStart):
                        self._open(event.content_type)
                    elif isinstance(event, PartEnd):
                        await self._submit()
            parser.close()
            await self._drain()
        except BaseException:
            self._discard()
            await self._drain(cancel=True)
            raise

    def _open(self, content_type: str | None) -> None:
        self.spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - closed by _store_part
            max_size=self.settings.spool_memory_bytes, dir=str(self.settings.tmp_dir)
        )
        self.part_type = content_type
        self.part_size = 0

    def _write(self, data: bytes) -> None:
        assert self.spool is not None
        self.part_size += len(data)
        if self.part_size > self.settings.max_instance_bytes:
            raise TooLarge(
                f"an instance exceeds the limit of {self.settings.max_instance_bytes} bytes"
            )
        self.spool.write(data)

    async def _submit(self) -> None:
        spool, self.spool = self.spool, None
        assert spool is not None
        in_memory = not getattr(spool, "_rolled", True)
        while len(self.pending) >= MAX_PENDING_STORES:
            self.results.append(await self.pending.pop(0))
        self.turn = StoreTurn(self.turn)
        job = anyio.to_thread.run_sync(
            _store_part, self.archive, spool, self.part_type, self.study_uid, in_memory,
            self.turn, self.institution,
        )  # fmt: skip
        self.pending.append(asyncio.ensure_future(job))

    async def _drain(self, cancel: bool = False) -> None:
        while self.pending:
            task = self.pending.pop(0)
            try:
                self.results.append(await task)
            except BaseException:
                if not cancel:
                    raise

    def _discard(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None


async def store_instances(
    request: Request,
    archive: Archive,
    settings: Settings,
    principal: Principal,
    study_uid: str | None,
) -> Response:
    """Handle ``POST /studies`` and ``POST /studies/{study}``."""
    if not principal.can_store():
        raise Forbidden("this caller may not store instances")
    # Storing into a study the caller cannot see is refused per instance by the archive
    # (a conflict that reveals nothing of the study); a new study UID is simply created.
    boundary = _check_media_type(request)
    media_type = response_media_type(request.headers.get("accept"))
    _check_length(request, settings)
    receiver = _Receiver(archive, settings, study_uid, principal.institution_pk)
    try:
        await receiver.receive(request.stream(), boundary)
    except TooLarge as exc:
        stored = sum(1 for r in receiver.results if r.ok)
        if stored:
            exc.message += f" ({stored} instance(s) before it were stored)"
        raise
    if not receiver.results:
        raise MalformedRequest("the multipart body holds no DICOM parts")
    return _answer(request, settings, principal, receiver.results, media_type, study_uid)


def _answer(
    request: Request,
    settings: Settings,
    principal: Principal,
    results: list[StoreResult],
    media_type: str,
    study_uid: str | None,
) -> Response:
    base = service_url(request, settings)
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    warnings: list[str] = []
    studies: set[str] = set()
    for result in results:
        if result.ok:
            assert result.study_uid and result.series_uid and result.sop_instance_uid
            studies.add(result.study_uid)
            item = _sop_item(result)
            item["00081190"] = {
                "vr": "UR",
                "Value": [
                    instance_url(base, result.study_uid, result.series_uid, result.sop_instance_uid)
                ],
            }
            if result.warnings:
                item["00081196"] = {"vr": "US", "Value": [WARNING_DATA_SET_REMARKS]}
                warnings.append(f"{result.sop_instance_uid}: {'; '.join(result.warnings)}")
            referenced.append(item)
        else:
            code = result.error.dimse_status if result.error else 0x0110
            item = _sop_item(result)
            item["00081197"] = {"vr": "US", "Value": [code]}
            failed.append(item)
            warnings.append(f"{result.sop_instance_uid or 'part'}: {result.reason}")
    body: dict[str, Any] = {}
    target = study_uid or (next(iter(studies)) if len(studies) == 1 else None)
    if target is not None and referenced:
        body["00081190"] = {"vr": "UR", "Value": [study_url(base, target)]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    status = 200 if not failed else (202 if referenced else 409)
    logger.info(
        "STOW-RS by %s:%s: %d stored, %d failed", principal.kind, principal.id,
        len(referenced), len(failed),
    )  # fmt: skip
    response = _render(body, media_type, status)
    for text in warnings[:MAX_WARNING_HEADERS]:
        response.headers.append("Warning", _warning(text))
    return response


def _sop_item(result: StoreResult) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if result.sop_class_uid:
        item["00081150"] = {"vr": "UI", "Value": [result.sop_class_uid]}
    if result.sop_instance_uid:
        item["00081155"] = {"vr": "UI", "Value": [result.sop_instance_uid]}
    return item


def _warning(text: str) -> str:
    """An RFC 7234 ``Warning`` value (code 299, the form PS3.18 8.6 uses)."""
    clean = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "?" for c in text)
    return f'299 cloudfilm "{clean[:300]}"'


def _render(body: dict[str, Any], media_type: str, status: int) -> Response:
    if media_type == DICOM_XML:
        return Response(to_native_xml(body), status_code=status, media_type=DICOM_XML)
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(payload, status_code=status, media_type=DICOM_JSON)
