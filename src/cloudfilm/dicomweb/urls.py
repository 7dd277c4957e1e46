"""Absolute DICOMweb URLs (RetrieveURL, BulkDataURI) for the address the client used."""

from __future__ import annotations

from fastapi import Request

from cloudfilm.core.config import Settings


def service_url(request: Request, settings: Settings) -> str:
    """``scheme://host[:port][root_path]/dicomweb`` as the client addressed us; reached through
    a share link (``/s/{token}/dicomweb``), the URLs keep that prefix, so that a viewer following
    them stays within the link."""
    base = str(request.base_url).rstrip("/")
    token = request.path_params.get("token")
    if token is not None:
        base += f"/s/{token}"
    return base + settings.dicomweb_root


def study_url(base: str, study_uid: str) -> str:
    return f"{base}/studies/{study_uid}"


def series_url(base: str, study_uid: str, series_uid: str) -> str:
    return f"{base}/studies/{study_uid}/series/{series_uid}"


def instance_url(base: str, study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    return f"{base}/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}"
