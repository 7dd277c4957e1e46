"""Who opened my images: each opening, download and renewal of a share and of its reshares.

The patient's list is read from the audit trail (``audit_event``, rows whose actor is the share
or one of its reshares), the same hash-chained record admins search and export: what the
patient sees is what was audited. Each access is one audit row — ``share-open``,
``share-renew`` or ``download`` — written by the request's audit middleware when the request
already has the share as its principal, else here. The list shows only the client's network
(/24 for IPv4, /48 for IPv6): enough to say "roughly from where", not to identify a household.

``share_access`` keeps a second, smaller copy (share, time, action, network) for the film
figures (``cloudfilm.film.stats``), which count openings per institution and period.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from starlette.requests import Request

from cloudfilm.api.audit import audit_as
from cloudfilm.archive import Archive
from cloudfilm.audit import AuditRecord, trail_for
from cloudfilm.index.models import AuditEvent, Share, ShareAccess
from cloudfilm.sharing.lockout import aware

#: The accesses of a share, and the audit action each is recorded as.
AUDIT_ACTIONS = {"open": "share-open", "download": "download", "renew": "share-renew"}
ACTIONS = tuple(AUDIT_ACTIONS)
_FROM_AUDIT = {audit: action for action, audit in AUDIT_ACTIONS.items()}
MAX_LISTED = 500
#: How long a listing waits for this process's queued audit rows to be written, in seconds
#: (with the database slow or down the list is shown without them rather than late).
FLUSH_SECONDS = 1.0


def truncate_address(address: str) -> str:
    """The network of a client address: ``203.0.113.0/24``, ``2001:db8:1::/48``; '' if none."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ""
    if ip.version == 4:
        return str(ipaddress.ip_network(f"{ip}/24", strict=False))
    if ip.ipv4_mapped is not None:
        return truncate_address(str(ip.ipv4_mapped))
    return str(ipaddress.ip_network(f"{ip}/48", strict=False))


@dataclass(frozen=True)
class AccessRecord:
    """One recorded access."""

    at: datetime
    action: str
    share_id: str
    #: The share's label (the doctor's name for a reshare), '' when it has none.
    label: str
    is_reshare: bool
    client: str
    user_agent: str

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at.astimezone(UTC).isoformat(timespec="seconds"),
            "action": self.action,
            "share_id": self.share_id,
            "label": self.label,
            "reshare": self.is_reshare,
            "client": self.client,
            "user_agent": self.user_agent,
        }


def record_access(
    archive: Archive,
    share_id: str,
    action: str,
    client_address: str,
    user_agent: str,
    now: datetime | None = None,
    *,
    request: Request | None = None,
) -> None:
    """Record one ``open``, ``download`` or ``renew`` of a share, in the audit trail.

    The download of originals (the ZIP, a WADO-RS study or series retrieve) calls this with
    ``download``; pages call it with ``open`` when a browser starts a session. With the
    ``request`` whose principal is the share, the request's own audit row is named after the
    access (one row per request); otherwise a row is recorded here.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown access action {action!r}")
    principal = getattr(request.state, "principal", None) if request is not None else None
    if request is not None and principal is not None and principal.id == share_id:
        audit_as(request, AUDIT_ACTIONS[action])
    else:
        trail_for(archive).record(
            AuditRecord(
                action=AUDIT_ACTIONS[action],
                actor_kind="share",
                actor_id=share_id,
                address=client_address,
                agent=user_agent,
                at=now,
            )
        )
    with archive.sessions.begin() as session:
        session.add(
            ShareAccess(
                share_id=share_id,
                at=now or datetime.now(UTC),
                action=action,
                client=truncate_address(client_address),
                user_agent=user_agent[:400],
            )
        )


def list_accesses(
    archive: Archive, share_id: str, *, with_reshares: bool, limit: int = MAX_LISTED
) -> list[AccessRecord]:
    """Accesses of a share (and of its reshares when ``with_reshares``), newest first, from
    the audit trail (after the rows still queued are written, waiting ``FLUSH_SECONDS`` at
    most)."""
    trail_for(archive).flush(timeout=FLUSH_SECONDS)
    with archive.sessions() as session:
        ids = [share_id]
        if with_reshares:
            ids += list(session.scalars(select(Share.id).where(Share.parent_id == share_id)))
        rows = session.execute(
            select(AuditEvent, Share.label, Share.parent_id)
            .join(Share, Share.id == AuditEvent.actor_id)
            .where(
                AuditEvent.actor_kind == "share",
                AuditEvent.actor_id.in_(ids),
                AuditEvent.action.in_(tuple(_FROM_AUDIT)),
                AuditEvent.outcome == "success",
            )
            .order_by(AuditEvent.at.desc(), AuditEvent.seq.desc())
            .limit(limit)
        ).all()
    return [
        AccessRecord(
            at=aware(event.at),
            action=_FROM_AUDIT[event.action],
            share_id=event.actor_id,
            label=label,
            is_reshare=parent is not None,
            client=truncate_address(event.address),
            user_agent=event.agent,
        )
        for event, label, parent in rows
    ]
