"""Staff doors to the viewer: ``/viewer/studies/{uid}`` and the IHE IID launch URL ``/iid``.

IHE Invoke Image Display (IID, ITI TF-1 Vol. 1 §36, RAD TF-2 §4.106): another system opens the
viewer with ``/iid?requestType=STUDY&studyUID=1.2.3[,4.5.6]`` or ``&accessionNumber=A123``.
Both doors take the caller's principal and show only studies it may see: any other study
answers exactly like a missing one (404).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from cloudfilm.api.deps import ArchiveDep, PrincipalDep
from cloudfilm.archive import Archive
from cloudfilm.core.errors import MalformedRequest
from cloudfilm.dicomweb.access import check_uids
from cloudfilm.index.queries import StudyQuery, find_studies
from cloudfilm.viewer.pages import render_missing, render_viewer

#: Most studies one IID request may name.
MAX_IID_STUDIES = 20


def build_router() -> APIRouter:
    router = APIRouter(tags=["viewer"])

    @router.get("/viewer/studies/{study_uid}", include_in_schema=False)
    def view_study(
        request: Request, study_uid: str, archive: ArchiveDep, principal: PrincipalDep
    ) -> Response:
        """The patient page and viewer of one study."""
        if not _valid_uids([study_uid]):
            return render_missing(request, "viewer.bad_request", 400)
        if not principal.can_view_study(study_uid) or not _exists(archive, [study_uid]):
            return render_missing(request, "viewer.not_found")
        return render_viewer(request, archive, principal, [study_uid], base_url="", share=None)

    @router.get("/iid", include_in_schema=False)
    def invoke_image_display(
        request: Request,
        archive: ArchiveDep,
        principal: PrincipalDep,
        study_uid: Annotated[str | None, Query(alias="studyUID", max_length=2000)] = None,
        accession: Annotated[str | None, Query(alias="accessionNumber", max_length=64)] = None,
        request_type: Annotated[str | None, Query(alias="requestType", max_length=20)] = None,
    ) -> Response:
        """IID launch: the viewer for the studies named by Study UID or accession number."""
        if request_type is not None and request_type.upper() != "STUDY":
            return render_missing(request, "viewer.bad_request", 400)
        uids = _iid_studies(archive, study_uid, accession)
        if uids is None:
            return render_missing(request, "viewer.bad_request", 400)
        visible = [uid for uid in uids if principal.can_view_study(uid)]
        if not visible or not _exists(archive, visible):
            return render_missing(request, "viewer.not_found")
        return render_viewer(request, archive, principal, visible, base_url="", share=None)

    return router


def _iid_studies(
    archive: Archive, study_uid: str | None, accession: str | None
) -> list[str] | None:
    """Study UIDs named by the request; None when it names none or a malformed one."""
    if study_uid:
        uids = list(dict.fromkeys(u.strip() for u in study_uid.split(",") if u.strip()))
        if not uids or len(uids) > MAX_IID_STUDIES or not _valid_uids(uids):
            return None
        return uids
    if accession and accession.strip():
        # accessionNumber may carry an issuer after "^" (IID); the index holds the number only.
        query = StudyQuery(accession_number=accession.split("^", 1)[0].strip())
        query.limit = MAX_IID_STUDIES
        with archive.sessions() as session:
            return [found.study_uid for found in find_studies(session, query)]
    return None


def _valid_uids(uids: list[str]) -> bool:
    try:
        check_uids(*uids)
    except MalformedRequest:
        return False
    return True


def _exists(archive: Archive, uids: list[str]) -> bool:
    """Whether any of the studies is in the archive."""
    with archive.sessions() as session:
        return any(find_studies(session, StudyQuery(study_uid=uid, limit=1)) for uid in uids)
