"""REST API of patients across institutions: cross-references, consent, exams of a patient at
every institution, recognition records and figures, and sending an exam to one's own PACS.

* ``POST /api/pix/links`` — the identity feed, or staff correcting a link: ``{"patient_id",
  "issuer", "strong_key" | "platform_id", "phone"}``; needs a principal that may store and
  sees the patient (its institution's). ``GET /api/pix/patients/{platform_id}`` shows a
  platform patient and its links (the platform administrator, or staff who see one of its
  patients); ``POST /api/pix/patients/{platform_id}/merge`` ``{"into"}`` and
  ``POST /api/pix/split`` ``{"patient_id", "issuer"}`` are the platform administrator's.
* ``GET /api/patients/exams?patient_id=…&issuer=…`` — the exams of one of the caller's
  patients at every institution that the caller may see (its own, and what the patient's
  consents open), with where each comes from and the decisions recorded on it.
* ``POST /api/consents`` — staff record a consent the patient gave in person; ``GET
  /api/studies/{study_uid}/consents``; ``POST /api/consents/{id}/withdraw``.
* ``POST /api/studies/{study_uid}/recognition`` ``{"accepted": true|false, "reason"}`` — a
  doctor of another institution records whether the exam is accepted; ``GET
  /api/recognition/figures`` the figures (staff: their institution; platform admin: all).
* ``POST /api/studies/{study_uid}/send`` ``{"peer": "AE"}`` — queue the exam for a DIMSE
  peer of the caller's institution (its PACS), with the retries of the forwarding queue.

Errors are JSON ``{"error", "detail"}``: 400 for a bad body or parameter, 403 for a role that
may not, 404 for what the caller may not see (as for what does not exist).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select

from cloudfilm.api.audit import audit_as
from cloudfilm.api.deps import ArchiveDep, Principal, PrincipalDep
from cloudfilm.archive import Archive
from cloudfilm.core.errors import Forbidden, InvalidQuery, MalformedRequest, NotFound, TooLarge
from cloudfilm.dicomweb.access import check_uids
from cloudfilm.index.models import (
    DimseForward,
    Instance,
    Institution,
    Patient,
    PatientLink,
    Series,
    Study,
    StudyAccess,
)
from cloudfilm.patients import consent as consents
from cloudfilm.patients import pix, recognition

__all__ = ["router"]

router = APIRouter(tags=["patients"])
MAX_BODY = 64 * 1024
_UID = r"^[0-9]+(\.[0-9]+)*$"
_AE = r"^[^\\\x00-\x1f]{1,16}$"
_TEXT64 = r"^[^\x00-\x1f\x7f]{0,64}$"


class LinkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str = Field(min_length=1, max_length=64, pattern=_TEXT64)
    issuer: str = Field("", max_length=64, pattern=_TEXT64)
    strong_key: str | None = Field(None, min_length=1, max_length=64, pattern=_TEXT64)
    platform_id: str | None = Field(None, pattern=r"^[0-9a-f]{16}$")
    phone: str | None = Field(None, max_length=32, pattern=_TEXT64)


class MergeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    into: str = Field(pattern=r"^[0-9a-f]{16}$")


class SplitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str = Field(min_length=1, max_length=64, pattern=_TEXT64)
    issuer: str = Field("", max_length=64, pattern=_TEXT64)


class ConsentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    study_uid: str = Field(max_length=64, pattern=_UID)
    institution: str = Field(min_length=1, max_length=64, pattern=_TEXT64)
    username: str | None = Field(None, min_length=1, max_length=64, pattern=_TEXT64)
    #: The exams covered; omitted or null: every exam of the patient.
    study_uids: list[Annotated[str, Field(max_length=64, pattern=_UID)]] | None = Field(
        None, max_length=500
    )
    days: int = Field(ge=1, le=3650)


class RecognitionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accepted: bool
    reason: str = Field("", max_length=400)


class SendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    peer: str = Field(pattern=_AE)


ModelT = TypeVar("ModelT", bound=BaseModel)


async def _body(request: Request, model: type[ModelT]) -> ModelT:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise TooLarge(f"at most {MAX_BODY} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise MalformedRequest("the request body is empty; send JSON")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRequest(f"the body is not JSON in UTF-8: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise MalformedRequest(f"invalid request: {problems}") from exc


def _staff_of_institution(principal: Principal) -> int:
    """The caller's institution (a user or key of one); 403 otherwise."""
    if principal.kind not in ("user", "apikey") or principal.institution_pk is None:
        raise Forbidden("this needs a user or API key of an institution")
    return principal.institution_pk


def require_sees_patient(
    archive: Archive, principal: Principal, patient_id: str, issuer: str, *, holds: bool = False
) -> None:
    """404 unless the caller sees at least one study of the patient; with ``holds``, unless
    its institution owns or holds one (a consent lets it see a patient, not re-link them)."""
    with archive.engine.connect() as conn:
        uids = list(
            conn.execute(
                select(Study.study_uid)
                .join(Patient, Patient.pk == Study.patient_pk)
                .where(Patient.patient_id == patient_id, Patient.issuer == issuer)
            ).scalars()
        )
    allowed = principal.can_change_study if holds else principal.can_view_study
    if not any(allowed(uid) for uid in uids):
        raise NotFound(f"no patient {patient_id!r} (issuer {issuer!r})")


# --------------------------------------------------------------------------- PIX


@router.post("/api/pix/links")
async def link_patient(
    request: Request, archive: ArchiveDep, principal: PrincipalDep
) -> JSONResponse:
    """Link one of the caller's patients to a platform patient (identity feed, or staff)."""
    if not principal.can_store():
        raise Forbidden("the identity feed needs a principal that may store")
    body = await _body(request, LinkBody)
    info = await run_in_threadpool(
        lambda: link_for(
            archive, principal, body.patient_id, body.issuer, strong_key=body.strong_key,
            platform_id=body.platform_id, phone=body.phone,
            source="feed" if principal.kind == "apikey" else "staff",
        )
    )  # fmt: skip
    audit_as(request, "patient-link", f"to {info.id}", patient_id=body.patient_id)
    return JSONResponse(info.as_json())


@router.get("/api/pix/patients/{platform_id}")
async def show_platform_patient(
    platform_id: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")],
    archive: ArchiveDep,
    principal: PrincipalDep,
) -> JSONResponse:
    """A platform patient and its links (for review)."""
    info = await run_in_threadpool(visible_platform_patient, archive, principal, platform_id)
    return JSONResponse(info.as_json())


def link_for(
    archive: Archive,
    principal: Principal,
    patient_id: str,
    issuer: str,
    *,
    strong_key: str | None,
    platform_id: str | None,
    phone: str | None,
    source: str,
) -> pix.PlatformPatientInfo:
    """``pix.link`` as ``principal`` may: a patient its institution owns or holds a study of
    (a consent lets it see a patient, never re-link them), to a platform patient it may review
    (one with a patient of its own; any for the platform administrator). The phone of a
    person whom other hospitals hold too is replaced only by the platform administrator: it
    is where that person's consent codes go.
    """
    require_sees_patient(archive, principal, patient_id, issuer, holds=True)
    admin = principal.all_institutions or principal.kind == "development"
    if platform_id is not None and not admin:
        visible_platform_patient(archive, principal, platform_id)
    return pix.link(
        archive, patient_id, issuer, strong_key=strong_key, platform_id=platform_id,
        phone=phone, source=source, created_by=principal.label,
        phone_institution=None if admin else principal.institution_pk,
    )  # fmt: skip


def require_link_reviewer(principal: Principal) -> None:
    """403 unless the caller may review patient links (staff who may store, or the platform
    administrator)."""
    if not principal.can_store() and not principal.all_institutions:
        raise Forbidden("reviewing patient links needs a staff account that may store")


def visible_platform_patient(
    archive: Archive, principal: Principal, platform_id: str
) -> pix.PlatformPatientInfo:
    """A platform patient the caller may review: the platform administrator any, staff one
    with a patient their institution sees; 404 otherwise (as for an unknown id)."""
    require_link_reviewer(principal)
    info = pix.patient_info(archive, platform_id)
    if not principal.all_institutions and principal.kind != "development":
        mine = principal.institution
        if not any(mine in link.institutions for link in info.links):
            raise NotFound("no such platform patient among your hospital's patients")
    return info


def require_platform_admin(principal: Principal) -> None:
    if not (principal.all_institutions or principal.kind == "development"):
        raise Forbidden("merging and splitting patients is for the platform administrator")


@router.post("/api/pix/patients/{platform_id}/merge")
async def merge_platform_patients(
    request: Request,
    platform_id: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")],
    archive: ArchiveDep,
    principal: PrincipalDep,
) -> JSONResponse:
    """Merge this platform patient into another (the same person twice)."""
    require_platform_admin(principal)
    body = await _body(request, MergeBody)
    info = await run_in_threadpool(pix.merge, archive, platform_id, body.into)
    audit_as(request, "patient-merge", f"{platform_id} into {body.into}")
    return JSONResponse(info.as_json())


@router.post("/api/pix/split")
async def split_patient(
    request: Request, archive: ArchiveDep, principal: PrincipalDep
) -> JSONResponse:
    """Give a wrongly linked patient a platform patient of its own."""
    require_platform_admin(principal)
    body = await _body(request, SplitBody)
    new_id = await run_in_threadpool(
        lambda: pix.split(archive, body.patient_id, body.issuer, created_by=principal.label)
    )
    audit_as(request, "patient-split", f"to {new_id}", patient_id=body.patient_id)
    return JSONResponse((await run_in_threadpool(pix.patient_info, archive, new_id)).as_json())


# ------------------------------------------------------------- exams across hospitals


@router.get("/api/patients/exams")
async def patient_exams(
    archive: ArchiveDep,
    principal: PrincipalDep,
    patient_id: Annotated[str, Query(min_length=1, max_length=64, pattern=_TEXT64)],
    issuer: Annotated[str, Query(max_length=64, pattern=_TEXT64)] = "",
) -> JSONResponse:
    """The exams of one of the caller's patients at every institution the caller may see."""
    return JSONResponse(await run_in_threadpool(_exams, archive, principal, patient_id, issuer))


def _exams(archive: Archive, principal: Principal, patient_id: str, issuer: str) -> dict[str, Any]:
    require_sees_patient(archive, principal, patient_id, issuer)
    with archive.engine.connect() as conn:
        platform_pk = conn.execute(
            select(PatientLink.platform_patient_pk)
            .join(Patient, Patient.pk == PatientLink.patient_pk)
            .where(Patient.patient_id == patient_id, Patient.issuer == issuer)
        ).scalar()
        patients = select(Patient.pk).where(
            Patient.patient_id == patient_id, Patient.issuer == issuer
        )
        if platform_pk is not None:
            patients = select(PatientLink.patient_pk).where(
                PatientLink.platform_patient_pk == platform_pk
            )
        rows = conn.execute(
            select(Study.study_uid, Study.study_date, Study.modalities, Study.description,
                   Study.accession_number, Study.num_instances, Study.institution_name,
                   Patient.patient_id, Patient.issuer)
            .join(Patient, Patient.pk == Study.patient_pk)
            .where(Study.patient_pk.in_(patients))
            .order_by(Study.study_date.desc(), Study.pk.desc())
        ).all()  # fmt: skip
        owners = dict(
            conn.execute(
                select(Study.study_uid, Institution.code)
                .join(StudyAccess, StudyAccess.study_pk == Study.pk)
                .join(Institution, Institution.pk == StudyAccess.institution_pk)
                .where(Study.patient_pk.in_(patients), StudyAccess.relation == "owner")
            ).all()
        )
    platform_id = (
        consents.platform_patient_id(archive, platform_pk) if platform_pk is not None else None
    )
    exams = []
    for row in rows:
        if not principal.can_view_study(row.study_uid):
            continue
        own = owners.get(row.study_uid) == principal.institution or principal.kind == "development"
        decided = recognition.records_for_study(archive, row.study_uid, principal.institution_pk)
        exams.append(
            {
                "study_uid": row.study_uid, "study_date": row.study_date,
                "modalities": [m for m in (row.modalities or "").split("\\") if m],
                "description": row.description, "accession_number": row.accession_number,
                "instances": row.num_instances, "institution": owners.get(row.study_uid, ""),
                "institution_name": row.institution_name, "patient_id": row.patient_id,
                "issuer": row.issuer, "own": own,
                "recognition": decided[0].as_json() if decided else None,
                "viewer": f"/viewer/studies/{row.study_uid}",
            }
        )  # fmt: skip
    return {"platform_patient": platform_id, "exams": exams}


# ------------------------------------------------------------------------- consent


def _consent_staff(principal: Principal) -> None:
    if not principal.can_manage_shares():
        raise Forbidden("recording a consent needs a staff account that manages cloud films")


@router.post("/api/consents", status_code=201)
async def record_consent(
    request: Request, archive: ArchiveDep, principal: PrincipalDep
) -> JSONResponse:
    """Record a consent the patient gave in person (active at once)."""
    _consent_staff(principal)
    body = await _body(request, ConsentBody)
    if not principal.can_view_study(body.study_uid):
        raise NotFound(f"study {body.study_uid} not found")
    if not principal.can_change_study(body.study_uid):  # seen through a consent: not ours
        raise Forbidden("only a hospital that holds the exam records the patient's consent")
    info = await run_in_threadpool(
        lambda: consents.record_by_staff(
            archive, body.study_uid, institution=body.institution, username=body.username,
            study_uids=body.study_uids, days=body.days, staff=principal.label,
        )
    )  # fmt: skip
    return JSONResponse(info.as_json(), status_code=201)


@router.get("/api/studies/{study_uid}/consents")
async def study_consents(
    study_uid: Annotated[str, Path(description="Study Instance UID")],
    archive: ArchiveDep,
    principal: PrincipalDep,
) -> JSONResponse:
    """The consents of the study's patient (staff of an institution that sees the study)."""
    check_uids(study_uid)
    if not principal.can_view_study(study_uid):
        raise NotFound(f"study {study_uid} not found")
    _consent_staff(principal)
    _platform, found = await run_in_threadpool(consents.consents_for_study, archive, study_uid)
    return JSONResponse([c.as_json() for c in found])


@router.post("/api/consents/{consent_id}/withdraw")
async def withdraw_consent(
    consent_id: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")],
    archive: ArchiveDep,
    principal: PrincipalDep,
) -> JSONResponse:
    """Withdraw a consent (staff acting for the patient, of an institution that recorded it
    or sees the patient's exams)."""
    _consent_staff(principal)
    info = await run_in_threadpool(consents.get, archive, consent_id)
    if not (principal.all_institutions or principal.kind == "development"):
        if info.created_by != principal.label and info.institution != principal.institution:
            raise NotFound("no such consent")
    done = await run_in_threadpool(lambda: consents.withdraw(archive, consent_id))
    return JSONResponse(done.as_json())


# --------------------------------------------------------------------- recognition


@router.post("/api/studies/{study_uid}/recognition", status_code=201)
async def record_recognition(
    request: Request,
    study_uid: Annotated[str, Path(description="Study Instance UID")],
    archive: ArchiveDep,
    principal: PrincipalDep,
) -> JSONResponse:
    """Record whether another institution's exam is accepted instead of repeated."""
    check_uids(study_uid)
    if not principal.can_view_study(study_uid):
        raise NotFound(f"study {study_uid} not found")
    if principal.kind != "user":
        raise Forbidden("a recognition is recorded by a doctor (a signed-in user)")
    institution_pk = _staff_of_institution(principal)
    body = await _body(request, RecognitionBody)
    info = await run_in_threadpool(
        lambda: recognition.record(
            archive, study_uid, institution_pk=institution_pk, username=principal.id,
            accepted=body.accepted, reason=body.reason,
        )
    )  # fmt: skip
    return JSONResponse(info.as_json(), status_code=201)


@router.get("/api/recognition/figures")
async def recognition_figures(
    archive: ArchiveDep,
    principal: PrincipalDep,
    since: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}$")] = None,
    until: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}$")] = None,
) -> JSONResponse:
    """Recognition figures: the caller's institution, or every one for the platform admin."""
    start, end = _day(since, "since"), _day(until, "until")
    if start and end and end <= start:
        raise InvalidQuery("until must be after since")
    if principal.all_institutions or principal.kind == "development":
        wanted = None
    else:
        if not principal.can_manage_shares():
            raise Forbidden("the figures are for hospital staff")
        wanted = [_staff_of_institution(principal)]
    found = await run_in_threadpool(
        lambda: recognition.figures(archive, institution_pks=wanted, since=start, until=end)
    )
    return JSONResponse(found)


def _day(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidQuery(f"{name}: a date as YYYY-MM-DD") from None


# --------------------------------------------------------------- to one's own PACS


@router.post("/api/studies/{study_uid}/send", status_code=202)
async def send_to_peer(
    request: Request,
    study_uid: Annotated[str, Path(description="Study Instance UID")],
    archive: ArchiveDep,
    principal: PrincipalDep,
) -> JSONResponse:
    """Queue the exam for a DIMSE peer of the caller's institution (its PACS)."""
    check_uids(study_uid)
    if not principal.can_view_study(study_uid):
        raise NotFound(f"study {study_uid} not found")
    if not principal.can_download(study_uid):
        raise Forbidden("sending an exam needs a principal that may download it")
    body = await _body(request, SendBody)
    queued = await run_in_threadpool(_queue_send, archive, principal, study_uid, body.peer)
    return JSONResponse({"queued": queued, "peer": body.peer.strip()}, status_code=202)


def _queue_send(archive: Archive, principal: Principal, study_uid: str, ae_title: str) -> int:
    from cloudfilm.dimse import jobs
    from cloudfilm.dimse.peers import PeerDirectory

    peer = PeerDirectory(archive).get(ae_title)
    allowed = peer is not None and (
        principal.all_institutions
        or principal.kind == "development"
        or (bool(principal.institution) and peer.institution == principal.institution)
    )
    if peer is None or not allowed:
        raise InvalidQuery(f"{ae_title.strip()} is not a DICOM peer of your institution")
    with archive.sessions.begin() as session:
        rows = session.execute(
            select(Series.series_uid, Instance.sop_instance_uid)
            .join(Study, Study.pk == Series.study_pk)
            .join(Instance, Instance.series_pk == Series.pk)
            .where(Study.study_uid == study_uid)
        ).all()
        for series_uid, sop_uid in rows:
            session.add(
                DimseForward(
                    destination=peer.ae_title, study_uid=study_uid, series_uid=series_uid,
                    sop_instance_uid=sop_uid, source=f"api:{principal.label}"[:100],
                    rule="sent by request",
                )
            )  # fmt: skip
    jobs.notify()
    return len(rows)
