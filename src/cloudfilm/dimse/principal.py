"""Who is calling on an association, and what they may do.

Every DIMSE request is made by a *principal*: the calling AE title seen from a network address.
It is decided once, when the association is requested (PS3.8 7.1.1: A-ASSOCIATE), and every
handler asks it before doing anything (deny by default). Today a known peer sees every study
when it may query or retrieve; the ``can_view_*`` methods are where per-institution rules go.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

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

    @property
    def institution(self) -> str:
        return self.peer.institution if self.peer else ""

    def can(self, permission: Permission) -> bool:
        """Whether this caller may use the service at all (deny by default)."""
        if self.peer is None:  # admitted only because unknown storage is accepted
            return permission is Permission.STORE
        return self.peer.may(permission)

    def can_view_study(self, study_uid: str) -> bool:
        """Whether a query may return, or a retrieve may send, this study."""
        return self.peer is not None and (
            self.peer.may(Permission.QUERY) or self.peer.may(Permission.RETRIEVE)
        )

    def can_view_patient(self, patient_id: str, issuer: str = "") -> bool:
        """Whether a PATIENT level query may return this patient."""
        return self.peer is not None and self.peer.may(Permission.QUERY)

    def __str__(self) -> str:
        return f"{self.calling_ae}@{self.address}"


@dataclass(frozen=True)
class Admission:
    """The decision on an association request: a principal, or a reason to reject it."""

    principal: DimsePrincipal | None
    reason: str = ""


def admit(
    directory: PeerDirectory, calling_ae: str, address: str, *, accept_unknown_storage: bool
) -> Admission:
    """Decide on an A-ASSOCIATE-RQ from ``calling_ae`` at ``address``.

    A known AE title calling from one of its addresses is admitted with its permissions. The
    same AE title from another address is refused (a forged or misconfigured caller), as is
    an unknown AE title unless ``accept_unknown_storage`` admits it for C-ECHO and C-STORE.
    """
    title = calling_ae.strip()
    peer = directory.get(title)
    if peer is not None:
        if peer.may_call_from(address):
            return Admission(DimsePrincipal(title, address, peer))
        return Admission(None, f"known AE title {title} called from {address}, not its address")
    if accept_unknown_storage:
        return Admission(DimsePrincipal(title, address, None))
    return Admission(None, f"calling AE title {title!r} is not a known peer")


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
