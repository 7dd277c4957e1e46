"""Which stored instances a principal may reach through DICOMweb.

Every retrieval route asks here. A study the principal may not see answers exactly like a study
that does not exist (404), so that answers reveal nothing about other patients' data.
"""

from __future__ import annotations

import re

from cloudfilm.api.deps import Principal
from cloudfilm.archive import Archive
from cloudfilm.core.errors import Forbidden, MalformedRequest, NotFound
from cloudfilm.dicomweb.lookup import StoredInstance, find_instances

_UID = re.compile(r"^[0-9A-Za-z._-]{1,64}$")


def check_uids(*uids: str | None) -> None:
    """400 for a path segment that cannot be a UID (before any look-up)."""
    for uid in uids:
        if uid is not None and not _UID.match(uid):
            raise MalformedRequest(f"{uid[:80]!r} is not a UID")


def visible_instances(
    archive: Archive,
    principal: Principal,
    study: str,
    series: str | None = None,
    sop: str | None = None,
) -> list[StoredInstance]:
    """The instances of a study, series or instance that the principal may see."""
    check_uids(study, series, sop)
    if not principal.can_view_study(study):
        raise NotFound(f"study {study} not found")
    with archive.engine.connect() as conn:
        return find_instances(conn, study, series, sop)


def check_download(principal: Principal, study: str) -> None:
    """403 when the principal sees the study but may not take its originals away (a share link
    without ``download``): WADO-RS retrieve of instances and WADO-URI ``application/dicom``.
    Viewing (metadata, frames, bulk data, rendered images) needs only ``view``."""
    if not principal.can_download(study):
        raise Forbidden("this link does not allow downloading the original DICOM files")
