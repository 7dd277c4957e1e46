"""Who opened my images: each opening, download and renewal of a share and of its reshares.

The client address is kept only to its network (/24 for IPv4, /48 for IPv6): enough to say
"roughly from where", not to identify a household. Issue 6 moves these records into the audit
trail; until then they live in ``share_access``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from cloudfilm.archive import Archive
from cloudfilm.index.models import Share, ShareAccess
from cloudfilm.sharing.lockout import aware

ACTIONS = ("open", "download", "renew")
MAX_LISTED = 500


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
) -> None:
    """Record one ``open``, ``download`` or ``renew`` of a share.

    The download of originals (the ZIP, a WADO-RS study or series retrieve) calls this with
    ``download``; pages call it with ``open`` when a browser starts a session.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown access action {action!r}")
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
    """Accesses of a share (and of its reshares when ``with_reshares``), newest first."""
    with archive.sessions() as session:
        ids = [share_id]
        if with_reshares:
            ids += list(session.scalars(select(Share.id).where(Share.parent_id == share_id)))
        rows = session.execute(
            select(ShareAccess, Share.label, Share.parent_id)
            .join(Share, Share.id == ShareAccess.share_id)
            .where(ShareAccess.share_id.in_(ids))
            .order_by(ShareAccess.at.desc(), ShareAccess.pk.desc())
            .limit(limit)
        ).all()
    return [
        AccessRecord(
            at=aware(access.at),
            action=access.action,
            share_id=access.share_id,
            label=label,
            is_reshare=parent is not None,
            client=access.client,
            user_agent=access.user_agent,
        )
        for access, label, parent in rows
    ]
