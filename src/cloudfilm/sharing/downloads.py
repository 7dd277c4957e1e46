"""Routes for downloading originals as a DICOM media ZIP (:mod:`cloudfilm.sharing.media`).

``router`` serves staff and API clients at ``GET /api/studies/{study_uid}/download.zip``;
``share_router`` is mounted under ``/s/{token}`` and serves ``GET /s/{token}/download.zip``,
with ``?study=UID`` (repeatable) or, without it, every study the share reaches. Both ask the
caller's principal: a study it may not see answers 404 like a missing one; a study it may see
but not download (a share without the download permission) answers 403. ``?transcode=explicit``
writes Explicit VR Little Endian files for strict media; without it the files are the stored
originals, byte for byte.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydicom.uid import ExplicitVRLittleEndian

from cloudfilm.api.deps import ArchiveDep, Principal, PrincipalDep, SettingsDep
from cloudfilm.api.proxies import client_address
from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.core.errors import Forbidden, MalformedRequest, NotFound
from cloudfilm.dicomweb.access import check_uids
from cloudfilm.dicomweb.lookup import StoredInstance, find_instances
from cloudfilm.index.queries import StudySummary, study_detail
from cloudfilm.sharing.accesses import record_access
from cloudfilm.sharing.media import MediaSummary, media_zip
from cloudfilm.web.headers import content_disposition
from cloudfilm.web.i18n import translator

logger = logging.getLogger(__name__)

__all__ = ["download_response", "readme_text", "router", "share_router", "zip_filename"]

#: Values of ``?transcode=`` and the transfer syntax each asks for.
TRANSCODE_TARGETS = {"explicit": str(ExplicitVRLittleEndian)}
#: Most studies one ZIP may hold (a share names a handful; this bounds a hostile query).
MAX_STUDIES = 100

StudyUID = Annotated[str, Path(description="Study Instance UID")]
Transcode = Annotated[
    str | None,
    Query(description="`explicit`: files in Explicit VR Little Endian; default: as stored"),
]

router = APIRouter(tags=["download"])
share_router = APIRouter(tags=["download"])


@router.get("/api/studies/{study_uid}/download.zip")
def download_study(
    request: Request,
    study_uid: StudyUID,
    archive: ArchiveDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    transcode: Transcode = None,
) -> StreamingResponse:
    """The originals of one study as a ZIP laid out as DICOM media (DICOMDIR + files)."""
    return download_response(request, archive, settings, principal, [study_uid], transcode)


@share_router.get("/download.zip")
def download_shared(
    request: Request,
    token: Annotated[str, Path(description="the cloud film link's token")],
    archive: ArchiveDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    study: Annotated[list[str] | None, Query(description="Study Instance UID(s)")] = None,
    transcode: Transcode = None,
) -> StreamingResponse:
    """The originals of the share's studies (or of the ``study`` parameters) as one ZIP.

    ``token`` is read by the principal dependency; it is declared here for the OpenAPI spec.
    """
    del token
    if study:
        uids = list(dict.fromkeys(study))
    elif principal.study_uids is not None:
        uids = sorted(principal.study_uids)
    else:
        raise MalformedRequest("name the study to download with ?study=UID")
    return download_response(request, archive, settings, principal, uids, transcode)


def download_response(
    request: Request,
    archive: Archive,
    settings: Settings,
    principal: Principal,
    study_uids: list[str],
    transcode: str | None,
) -> StreamingResponse:
    """Check access, gather the instances and stream the ZIP (nothing is read before that)."""
    target = _transcode_target(transcode)
    if not study_uids:
        raise NotFound("this link reaches no study")
    if len(study_uids) > MAX_STUDIES:
        raise MalformedRequest(f"at most {MAX_STUDIES} studies per download")
    check_uids(*study_uids)
    for uid in study_uids:
        if not principal.can_view_study(uid):
            raise NotFound(f"study {uid} not found")
        if not principal.can_download(uid):
            raise Forbidden("downloading the originals is not allowed with this link")
    instances, summaries = _gather(archive, study_uids, several=len(study_uids) > 1)
    readme = readme_text(summaries, transcoded=target is not None)
    summary = MediaSummary()
    body = media_zip(
        archive, instances, readme=readme, transfer_syntax=target,
        deflate_level=settings.download_deflate_level, summary=summary,
    )  # fmt: skip
    if principal.kind == "share":
        record_access(
            archive, principal.id, "download", client_address(request),
            request.headers.get("user-agent", ""), request=request,
        )  # fmt: skip
    logger.info(
        "download of %d instances of %s by %s:%s",
        len(instances), ", ".join(study_uids), principal.kind, principal.id,
    )  # fmt: skip
    name = zip_filename(summaries)
    return StreamingResponse(
        _logged(body, summary),
        media_type="application/zip",
        headers={
            "Content-Disposition": content_disposition(name, "DICOM.zip"),
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


def _transcode_target(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    target = TRANSCODE_TARGETS.get(value.lower())
    if target is None:
        raise MalformedRequest(
            f"transcode={value[:40]!r} is not supported; use transcode=explicit or leave it out"
        )
    return target


def _gather(
    archive: Archive, study_uids: list[str], *, several: bool
) -> tuple[list[StoredInstance], list[StudySummary]]:
    """Instances and summaries of the studies; with several, studies not yet here are left
    out (a share issued before its images arrived), and 404 only when none is here."""
    instances: list[StoredInstance] = []
    summaries: list[StudySummary] = []
    for uid in study_uids:
        try:
            with archive.engine.connect() as conn:
                instances.extend(find_instances(conn, uid))
        except NotFound:
            if not several:
                raise
            continue
        with archive.sessions() as session:
            detail = study_detail(session, uid)
        if detail is not None:
            summaries.append(detail)
    if not instances:
        raise NotFound("the images of this exam have not arrived yet")
    return instances, summaries


def _logged(body: Iterator[bytes], summary: MediaSummary) -> Iterator[bytes]:
    try:
        yield from body
    except Exception:
        logger.exception("download ZIP interrupted after %d files", summary.files)
        raise


def readme_text(summaries: list[StudySummary], *, transcoded: bool) -> str:
    """README.TXT: what the media is and how to open it, in Chinese then English."""
    lines: list[str] = []
    for lang in ("zh", "en"):
        t = translator(lang)
        lines += [t("download.readme.title"), "=" * 40, "", t("download.readme.what"), ""]
        lines += [t("download.readme.how"), ""]
        if transcoded:
            lines += [t("download.readme.transcoded"), ""]
        lines.append(t("download.readme.studies"))
        for s in summaries:
            lines.append(
                "  - "
                + t(
                    "download.readme.study",
                    date=_date(s.study_date) or "-",
                    modality="/".join(s.modalities) or "-",
                    description=s.description or "-",
                    count=s.instances,
                )
            )
        lines += ["", t("download.readme.privacy"), "", ""]
    return "\n".join(lines)


def zip_filename(summaries: list[StudySummary]) -> str:
    """``<patient>_<date>_<modalities>.zip`` (names in any script; see content_disposition)."""
    if not summaries:
        return "DICOM.zip"
    first = summaries[0]
    parts = [_display_name(first.patient_name)]
    dates = sorted({s.study_date for s in summaries if s.study_date})
    parts += dates[:3]
    if len(summaries) == 1:
        parts.append("-".join(first.modalities))
    name = "_".join(p for p in parts if p) or "DICOM"
    return f"{name}.zip"


def _display_name(pn: str | None) -> str:
    """The ideographic group of a DICOM Person Name if any, else the alphabetic one."""
    if not pn:
        return ""
    groups = [g.replace("^", " ").strip() for g in pn.split("=")]
    for group in (groups[1:2] + groups[:1]) if len(groups) > 1 else groups:
        if group:
            return group.replace(" ", "") if not group.isascii() else group
    return ""


def _date(value: str | None) -> str:
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or ""
