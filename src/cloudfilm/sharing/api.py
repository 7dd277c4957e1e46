"""JSON APIs of cloud film links.

- Staff (``principal.can_manage_shares()``), under ``/api/shares``: issue from study UIDs or an
  accession number, list with filters, get (``?reveal=true`` adds the link and code for
  reprinting a card), revoke (with its reshares), renew.
- A link's holder, under ``/s/{token}/api``: the share itself, who opened it (``accesses``)
  and reshares (list, create, revoke; creating needs the ``reshare`` permission).

Bodies are pydantic models (unknown fields refused): invalid input answers 422 with the field
at fault, or 400 with the reason; never 500.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from cloudfilm.access.visibility import share_visible
from cloudfilm.api.deps import ArchiveDep, Principal, PrincipalDep, SettingsDep
from cloudfilm.core.errors import Conflict, Forbidden, Gone, NotFound
from cloudfilm.index.queries import study_detail
from cloudfilm.sharing.accesses import list_accesses
from cloudfilm.sharing.card import CardInfo, card_response
from cloudfilm.sharing.links import (
    ShareFilter,
    ShareInfo,
    ShareLinks,
    ShareRequest,
    ShareState,
    parse_expiry,
    utcnow,
)
from cloudfilm.sharing.principals import links_for

UID = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z._-]{1,64}$")]
ShareId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
Expiry = Annotated[str, StringConstraints(min_length=1, max_length=40)]


class ShareCreate(BaseModel):
    """A cloud film to issue."""

    model_config = ConfigDict(extra="forbid")

    study_uids: list[UID] = Field(default_factory=list, max_length=100)
    accession_number: str | None = Field(None, min_length=1, max_length=64)
    #: ``30d``, ``12h``, ``2w``, ``1y``, ``YYYY-MM-DD`` (through that day, UTC) or ISO 8601.
    expires: Expiry | None = None
    not_before: datetime | None = None
    #: Protect with a new 6-digit access code (returned once).
    code: bool = False
    #: Or with a patient check, compared on the server.
    patient_check: Literal["birth-date", "id-suffix"] | None = None
    #: The expected answer when the archive does not hold it (images not arrived yet).
    check_answer: str | None = Field(None, max_length=64)
    permissions: list[Literal["view", "download", "reshare"]] = Field(["view"], max_length=3)
    label: str = Field("", max_length=200)
    note: str = Field("", max_length=1000)

    @model_validator(mode="after")
    def _one_protection(self) -> ShareCreate:
        if self.code and self.patient_check:
            raise ValueError("choose an access code or a patient check, not both")
        if not self.study_uids and not self.accession_number:
            raise ValueError("name at least one study, or an accession number")
        return self


class ReshareCreate(BaseModel):
    """A link a holder makes for someone else (a doctor)."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field("", max_length=200)
    note: str = Field("", max_length=1000)
    #: As for staff; capped at the holder's own expiry; an hour at least.
    expires: Expiry | None = None
    code: bool = False
    permissions: list[Literal["view", "download"]] = Field(["view"], max_length=2)
    #: Also every study of the patient in this archive (the patient's earlier exams).
    include_prior: bool = False


class Renewal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires: Expiry | None = None


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _staff(request: Request, principal: Principal) -> ShareLinks:
    if not principal.can_manage_shares():
        raise Forbidden("only staff may manage cloud film links")
    return links_for(request)


def _visible(principal: Principal, info: ShareInfo) -> ShareInfo:
    """``info`` if the principal's institution sees it; otherwise the answer of a missing one."""
    if not share_visible(principal, info.study_uids, info.created_by):
        raise NotFound(f"share {info.id} not found")
    return info


def _creator(principal: Principal) -> str:
    return f"{principal.kind}:{principal.id}"


staff_router = APIRouter(prefix="/api/shares", tags=["shares"])


@staff_router.post("", status_code=201)
def create_share(body: ShareCreate, request: Request, principal: PrincipalDep) -> JSONResponse:
    """Issue a cloud film; the answer holds its link and code (shown this once)."""
    links = _staff(request, principal)
    for uid in body.study_uids:
        if not principal.can_view_study(uid):  # answered like a study not in the archive
            raise NotFound(f"study {uid} not found")
        if not principal.can_change_study(uid):
            raise Forbidden("only a hospital that holds the exam may issue its cloud film")
    now = utcnow()
    issued = links.issue(
        ShareRequest(
            study_uids=body.study_uids,
            accession_number=body.accession_number,
            expires_at=parse_expiry(body.expires, now) if body.expires else None,
            not_before=_utc(body.not_before),
            secret="code" if body.code else body.patient_check or "none",
            check_answer=body.check_answer,
            permissions=body.permissions,
            label=body.label,
            note=body.note,
            created_by=_creator(principal),
            institution_pk=None if principal.all_institutions else principal.institution_pk,
        ),
        now,
    )
    return JSONResponse(issued.as_json(now), status_code=201)


@staff_router.get("")
def list_shares(
    request: Request,
    principal: PrincipalDep,
    study_uid: Annotated[UID | None, Query()] = None,
    patient_id: Annotated[str | None, Query(max_length=64)] = None,
    accession_number: Annotated[str | None, Query(max_length=64)] = None,
    state: Annotated[ShareState | None, Query()] = None,
    roots_only: Annotated[bool, Query()] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> list[dict[str, Any]]:
    """Cloud films, newest first."""
    links = _staff(request, principal)
    now = utcnow()
    found = links.list(
        ShareFilter(
            study_uid=study_uid, patient_id=patient_id, accession_number=accession_number,
            state=state, roots_only=roots_only, limit=limit, offset=offset,
        ),
        now,
    )  # fmt: skip
    return [info.as_json(now) for info in found if share_visible(principal, info.study_uids,
                                                                 info.created_by)]  # fmt: skip


@staff_router.get("/{share_id}")
def get_share(
    share_id: ShareId,
    request: Request,
    principal: PrincipalDep,
    reveal: Annotated[bool, Query(description="add the link and code (reprint a card)")] = False,
) -> dict[str, Any]:
    """One cloud film."""
    links = _staff(request, principal)
    body = _visible(principal, links.get(share_id)).as_json(utcnow())
    if reveal:
        body["link"], body["code"] = links.reveal(share_id)
    return body


@staff_router.post("/{share_id}/revoke")
def revoke_share(share_id: ShareId, request: Request, principal: PrincipalDep) -> dict[str, Any]:
    """Revoke a cloud film and every reshare made from it, at once."""
    links = _staff(request, principal)
    _visible(principal, links.get(share_id))
    return links.revoke(share_id).as_json(utcnow())


@staff_router.post("/{share_id}/renew")
def renew_share(
    share_id: ShareId, request: Request, principal: PrincipalDep, body: Renewal | None = None
) -> dict[str, Any]:
    """Give a cloud film a new expiry (default: ``share_default_days`` from now)."""
    links = _staff(request, principal)
    now = utcnow()
    expires = parse_expiry(body.expires, now) if body and body.expires else None
    _visible(principal, links.get(share_id))
    return links.renew(share_id, expires, now).as_json(now)


@staff_router.get("/{share_id}/card.{fmt}")
def share_card(
    share_id: ShareId,
    fmt: Literal["pdf", "png"],
    request: Request,
    principal: PrincipalDep,
    archive: ArchiveDep,
    settings: SettingsDep,
) -> Response:
    """The printable card of an active cloud film (A5 PDF or PNG), with its link and code."""
    links = _staff(request, principal)
    now = utcnow()
    info = _visible(principal, links.get(share_id))
    if info.state(now) in (ShareState.REVOKED, ShareState.EXPIRED):
        raise Gone(f"this link is {info.state(now).value}; renew it or issue a new one")
    link, code = links.reveal(share_id)
    if link is None:
        raise Conflict("this link was sealed with another server key; issue a new one")
    with archive.sessions() as session:
        detail = study_detail(session, info.study_uids[0]) if info.study_uids else None
    card = CardInfo(
        hospital=(detail.institution_name if detail else None) or "",
        patient_name=detail.patient_name if detail else None,
        exam=(detail.description if detail else None) or (info.accession_number or ""),
        modality="/".join(detail.modalities) if detail else None,
        study_date=detail.study_date if detail else None,
        url=link,
        access_code=code,
        expires_at=info.expires_at.astimezone(),  # the server's zone: the hospital's
    )
    return card_response(card, fmt, settings.card_font_path)


holder_router = APIRouter(prefix="/s/{token}/api", tags=["share holder"])


def _own(request: Request, principal: Principal) -> ShareInfo:
    """The share the request was made with (``get_principal`` resolved it)."""
    info: ShareInfo | None = getattr(request.state, "share", None)
    if principal.kind != "share" or info is None or info.id != principal.id:
        raise Forbidden("this API is used through a share link")
    return info


#: What a holder is not shown of a link: who issued it, the patient ID (the holder may be a
#: doctor the patient passed the link to) and, on links staff issued, the staff's note.
_HIDDEN_FROM_HOLDER = ("created_by", "patient_id")


def _for_holder(data: dict[str, Any], *, own_note: bool) -> dict[str, Any]:
    hidden = _HIDDEN_FROM_HOLDER if own_note else (*_HIDDEN_FROM_HOLDER, "note")
    return {key: value for key, value in data.items() if key not in hidden}


@holder_router.get("/share")
def holder_share(token: str, request: Request, principal: PrincipalDep) -> dict[str, Any]:
    """The link itself: studies, permissions, expiry."""
    info = _own(request, principal)
    return _for_holder(info.as_json(utcnow()), own_note=info.is_reshare)


@holder_router.get("/accesses")
def holder_accesses(token: str, request: Request, principal: PrincipalDep) -> dict[str, Any]:
    """Who opened the images: openings, downloads and renewals of this link and the links
    made from it, newest first (client networks only, /24 or /48)."""
    info = _own(request, principal)
    records = list_accesses(links_for(request).archive, info.id, with_reshares=not info.is_reshare)
    return {"share_id": info.id, "accesses": [r.as_json() for r in records]}


def _resharer(request: Request, principal: Principal) -> ShareInfo:
    info = _own(request, principal)
    if info.is_reshare or "reshare" not in info.permissions:
        raise Forbidden("this link does not allow sharing onward")
    return info


@holder_router.get("/reshares")
def holder_reshares(token: str, request: Request, principal: PrincipalDep) -> list[dict[str, Any]]:
    """The links made from this one."""
    info = _resharer(request, principal)
    now = utcnow()
    found = links_for(request).list(ShareFilter(parent_id=info.id), now)
    return [_for_holder(r.as_json(now), own_note=True) for r in found]


@holder_router.post("/reshares", status_code=201)
def holder_reshare(
    token: str, body: ReshareCreate, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Make a link for a doctor; the answer holds its link and code (shown this once)."""
    info = _resharer(request, principal)
    links = links_for(request)
    now = utcnow()
    issued = links.reshare(
        info.id,
        ShareRequest(
            expires_at=parse_expiry(body.expires, now) if body.expires else None,
            secret="code" if body.code else "none",
            permissions=body.permissions,
            label=body.label,
            note=body.note,
            include_prior=body.include_prior,
            created_by=f"share:{info.id}",
        ),
        now,
    )
    return JSONResponse(_for_holder(issued.as_json(now), own_note=True), status_code=201)


@holder_router.delete("/reshares/{share_id}")
def holder_revoke(
    token: str, share_id: ShareId, request: Request, principal: PrincipalDep
) -> dict[str, Any]:
    """Withdraw a link made from this one."""
    info = _resharer(request, principal)
    links = links_for(request)
    child = links.get(share_id)
    if child.parent_id != info.id:
        raise NotFound(f"share {share_id} not found")
    return _for_holder(links.revoke(share_id).as_json(utcnow()), own_note=True)
