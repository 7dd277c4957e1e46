"""Who is calling on an association, and what they may do.

Every DIMSE request is made by a *principal*: the calling AE title seen from a network address.
It is decided once, when the association is requested (PS3.8 7.1.1: A-ASSOCIATE), and every
handler asks it before doing anything (deny by default).

Which studies a peer allowed to query or retrieve sees depends on its row:

- a peer that names an institution (its code) sees the studies that institution owns or holds
  (``study_access``), nothing else; a code no institution has sees nothing;
- a peer without an institution sees every study: the single-hospital default, where the
  archive serves one hospital and its PACS and modalities need no institution at all.

The institution's key is resolved once, at admission; C-FIND filters in SQL
(``study_condition``), C-MOVE/C-GET ask ``can_view_study`` per study.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from cloudfilm.access.visibility import (
    institution_condition,
    institution_pk_of,
    institution_sees,
    institution_sees_patient,
)
from cloudfilm.dimse.peers import Peer, PeerDirectory, Permission

logger = logging.getLogger(__name__)

#: A-ASSOCIATE-RJ parameters (PS3.8 9.3.4): result 1 rejected-permanent, source 1 service
#: user, reason 3 "calling-AE-title-not-recognized".
REJECT_CALLING_AE = (0x01, 0x01, 0x03)


@dataclass(frozen=True)
class DimsePrincipal:
    """The caller of one association: a known peer, or an unknown AE admitted to store."""

    calling_ae: str
    address: str
    peer: Peer | None
    #: The key of the peer's institution (None: the peer names none, or an unknown code).
    institution_pk: int | None = None
    #: The index the institution's rows are read from (needed when the peer names one).
    engine: Engine | None = field(default=None, compare=False, repr=False)

    @property
    def institution(self) -> str:
        return self.peer.institution if self.peer else ""

    @property
    def scoped(self) -> bool:
        """Whether the peer sees its institution's studies only (it names an institution)."""
        return bool(self.institution)

    def _may_see_studies(self) -> bool:
        return self.peer is not None and (
            self.peer.may(Permission.QUERY) or self.peer.may(Permission.RETRIEVE)
        )

    def study_condition(self) -> Any | None:
        """A condition on ``Study`` keeping what this caller sees; None for every study."""
        if not self._may_see_studies():
            return institution_condition(None)
        return institution_condition(self.institution_pk) if self.scoped else None

    def can(self, permission: Permission) -> bool:
        """Whether this caller may use the service at all (deny by default)."""
        if self.peer is None:  # admitted only because unknown storage is accepted
            return permission is Permission.STORE
        return self.peer.may(permission)

    def can_view_study(self, study_uid: str) -> bool:
        """Whether a query may return, or a retrieve may send, this study."""
        if not self._may_see_studies():
            return False
        if not self.scoped:
            return True
        if self.institution_pk is None or self.engine is None:
            return False
        return institution_sees(self.engine, self.institution_pk, study_uid)

    def can_view_patient(self, patient_id: str, issuer: str = "") -> bool:
        """Whether a PATIENT level query may return this patient (a scoped peer: one with a
        study its institution sees)."""
        if self.peer is None or not self.peer.may(Permission.QUERY):
            return False
        if not self.scoped:
            return True
        if self.institution_pk is None or self.engine is None:
            return False
        return institution_sees_patient(self.engine, self.institution_pk, patient_id, issuer)

    def __str__(self) -> str:
        return f"{self.calling_ae}@{self.address}"


@dataclass(frozen=True)
class Admission:
    """The decision on an association request: a principal, or a reason to reject it."""

    principal: DimsePrincipal | None
    reason: str = ""


def admit(
    directory: PeerDirectory,
    calling_ae: str,
    address: str,
    *,
    accept_unknown_storage: bool,
    over_tls: bool = False,
) -> Admission:
    """Decide on an A-ASSOCIATE-RQ from ``calling_ae`` at ``address``.

    A known AE title calling from one of its addresses is admitted with its permissions. The
    same AE title from another address is refused (a forged or misconfigured caller), as is
    a peer marked ``tls`` calling without DICOM TLS (``over_tls``: the connection came through
    the TLS listener with a certificate of the configured CA), and an unknown AE title unless
    ``accept_unknown_storage`` admits it for C-ECHO and C-STORE.
    """
    title = calling_ae.strip()
    peer = directory.get(title)
    if peer is not None:
        if not peer.may_call_from(address):
            return Admission(None, f"known AE title {title} called from {address}, not its address")
        if peer.tls and not over_tls:
            return Admission(None, f"{title} must call over DICOM TLS; it called without")
        return Admission(_known(directory, title, address, peer))
    if accept_unknown_storage:
        return Admission(DimsePrincipal(title, address, None))
    return Admission(None, f"calling AE title {title!r} is not a known peer")


def _known(directory: PeerDirectory, title: str, address: str, peer: Peer) -> DimsePrincipal:
    """The principal of a known peer, its institution's key resolved (once per association)."""
    if not peer.institution:
        return DimsePrincipal(title, address, peer)
    archive = directory.archive
    pk = institution_pk_of(archive, peer.institution)
    if pk is None:
        logger.warning(
            "peer %s names institution %r, which does not exist: it sees no study",
            title,
            peer.institution,
        )
    return DimsePrincipal(title, address, peer, institution_pk=pk, engine=archive.engine)


def audit(
    archive: Any,
    principal: DimsePrincipal | None,
    action: str,
    outcome: str,
    *,
    study_uid: str = "",
    patient_id: str = "",
    detail: str = "",
) -> None:
    """Record a DIMSE operation in the audit trail (the actor is the calling AE at its
    address; an unknown or refused caller is ``anonymous``)."""
    from cloudfilm.audit import AuditRecord, trail_for

    trail_for(archive).record(
        AuditRecord(
            action=action,
            outcome=outcome,
            actor_kind="peer" if principal is not None and principal.peer else "anonymous",
            actor_id=principal.calling_ae if principal is not None else "",
            institution=principal.institution if principal is not None else "",
            address=principal.address if principal is not None else "",
            agent="DIMSE",
            study_uid=study_uid,
            patient_id=patient_id,
            detail=detail,
        )
    )
