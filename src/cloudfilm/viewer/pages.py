"""The patient page: exam summary, report, series thumbnails and the stack viewer.

:func:`render_viewer` is the one entry point. Staff reach it through ``/viewer/studies/{uid}``
and ``/iid`` (``viewer/routes.py``); share links call it from ``/s/{token}`` once the link's
checks are passed. The page's summary comes from the index (``study_detail`` and one joined
look-up of the instances per study); reports are read from their stored SR or PDF objects; the
viewer script (``static/viewer.js``) then loads images from ``{base_url}{dicomweb_root}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from cloudfilm.api.deps import Principal
from cloudfilm.archive import Archive
from cloudfilm.core.errors import NotFound
from cloudfilm.dicomweb.lookup import StoredInstance, find_instances
from cloudfilm.index.queries import StudySummary, study_detail
from cloudfilm.viewer.report import Report, find_reports, person_name, report_kind
from cloudfilm.web.i18n import Translator, choose_language, translator
from cloudfilm.web.templates import render_page

#: Messages the viewer script shows (sent to it in the page, in the page's language).
SCRIPT_MESSAGES = (
    "viewer.slice", "viewer.frame", "viewer.window", "viewer.zoom", "viewer.loading",
    "viewer.loaded", "viewer.not_calibrated", "viewer.calibrated_detector", "viewer.full_quality",
    "viewer.save_hint", "viewer.save_link", "viewer.film_page", "viewer.preset.auto",
    "viewer.error.image", "viewer.close", "viewer.no_images",
)  # fmt: skip


@dataclass
class SeriesView:
    """A series with images, as the page lists it."""

    uid: str
    number: int | None
    modality: str
    description: str
    body_part: str
    #: (SOP Instance UID, number of frames) of each image instance, in display order.
    instances: list[tuple[str, int]]

    @property
    def images(self) -> int:
        return sum(frames for _, frames in self.instances)


@dataclass
class StudyView:
    """One study of the page: summary, reports and image series."""

    summary: StudySummary
    patient: str
    date: str
    body_parts: list[str]
    series: list[SeriesView] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)


def render_viewer(
    request: Request,
    archive: Archive,
    principal: Principal,
    study_uids: list[str],
    *,
    base_url: str,
    share: Mapping[str, Any] | None,
) -> Response:
    """The patient page for ``study_uids``.

    Studies the principal may not see, and studies not (yet) in the archive, are left out; a
    page with none says the images are on their way when the share is pending (issued by
    accession number before the images arrived), else that there are no images.

    Parameters
    ----------
    base_url
        Path prefix of the principal's door: ``""`` for staff, ``"/s/{token}"`` for a share
        link. The script reaches DICOMweb at ``{base_url}{settings.dicomweb_root}``.
    share
        For share links. Read here: ``pending`` (or ``pending_accession``), and either
        ``panel_html`` (the holder's panel: validity, downloads, onward sharing, who opened;
        shown below the viewer, styled by ``share.css``) or, without it, a banner from
        ``label``, ``expires_text`` (or ``expires_at``: datetime or ISO text) and ``links``
        (``[{"href", "label"}]``, shown as plain links).
    """
    with archive.sessions() as session:
        studies = [
            view
            for uid in dict.fromkeys(study_uids)
            if principal.can_view_study(uid)
            and (view := _study_view(session, archive, uid)) is not None
        ]
    lang = choose_language(request)
    dicomweb = base_url + archive.settings.dicomweb_root
    context = {
        "studies": studies,
        "dicomweb": dicomweb,
        "share": dict(share) if share else None,
        "expires": _expiry(share),
        "pending": bool(share and (share.get("pending") or share.get("pending_accession")))
        and not studies,
        "viewer_config": _viewer_config(studies, dicomweb, translator(lang)),
        "first": _first_image(studies, dicomweb),
    }
    return render_page(request, "viewer.html", context)


def render_missing(request: Request, message_key: str, status_code: int = 404) -> Response:
    """The page for a study that does not exist or may not be seen (same answer for both)."""
    return render_page(
        request, "viewer_error.html", {"message_key": message_key}, status_code=status_code
    )


def _study_view(session: Session, archive: Archive, uid: str) -> StudyView | None:
    summary = study_detail(session, uid)
    if summary is None:
        return None
    try:
        instances = find_instances(session.connection(), uid)
    except NotFound:
        instances = []
    view = StudyView(
        summary=summary,
        patient=person_name(summary.patient_name),
        date=_date(summary.study_date),
        body_parts=list(
            dict.fromkeys(s["body_part"] for s in summary.series_list if s.get("body_part"))
        ),
    )
    view.series = _image_series(summary, instances)
    view.reports = find_reports(archive, [i for i in instances if report_kind(i.sop_class_uid)])
    return view


def _image_series(summary: StudySummary, instances: list[StoredInstance]) -> list[SeriesView]:
    """Series holding images (rows and columns): the film sheets first (the view patients
    and doctors know from printed film), then the others in the index's display order."""
    from cloudfilm.film.sheets import FILM_SERIES

    by_series: dict[str, list[StoredInstance]] = {}
    for inst in instances:
        if inst.rows and inst.columns and report_kind(inst.sop_class_uid) is None:
            by_series.setdefault(inst.series_uid, []).append(inst)
    described = {s["series_uid"]: s for s in summary.series_list}
    views = []
    for uid, members in by_series.items():
        info = described.get(uid, {})
        views.append(
            SeriesView(
                uid=uid,
                number=info.get("series_number"),
                modality=info.get("modality") or "",
                description=info.get("description") or "",
                body_part=info.get("body_part") or "",
                instances=[(i.sop_instance_uid, max(i.number_of_frames or 1, 1)) for i in members],
            )
        )
    views.sort(key=lambda view: view.description != FILM_SERIES)  # stable: keeps the order
    return views


def _viewer_config(studies: list[StudyView], dicomweb: str, t: Translator) -> dict[str, Any]:
    """What the script needs: where DICOMweb is, the series and their instances, messages."""
    return {
        "dicomweb": dicomweb,
        "studies": [
            {
                "uid": study.summary.study_uid,
                "patient": study.patient,
                "date": study.date,
                "institution": study.summary.institution_name or "",
                "series": [
                    {
                        "uid": s.uid,
                        "number": s.number,
                        "modality": s.modality,
                        "description": s.description,
                        "instances": s.instances,
                    }
                    for s in study.series
                ],
            }
            for study in studies
        ],
        "messages": {key.removeprefix("viewer."): t(key) for key in SCRIPT_MESSAGES},
    }


def _first_image(studies: list[StudyView], dicomweb: str) -> str | None:
    """URL of the first image shown: the middle slice of the first series, rendered."""
    for study in studies:
        for series in study.series:
            sop, frames = series.instances[(len(series.instances) - 1) // 2]
            base = f"{dicomweb}/studies/{study.summary.study_uid}/series/{series.uid}"
            if frames > 1:
                return f"{base}/instances/{sop}/frames/1/rendered?quality=90"
            return f"{base}/instances/{sop}/rendered?quality=90"
    return None


def _date(value: str | None) -> str:
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:8]}"
    return value or ""


def _expiry(share: Mapping[str, Any] | None) -> str:
    if share and share.get("expires_text"):
        return str(share["expires_text"])
    value = share.get("expires_at") if share else None
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d")
    return str(value)[:10] if value else ""
