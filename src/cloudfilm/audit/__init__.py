"""The append-only, hash-chained audit trail (docs/audit.md).

Callers get the trail of an archive with :func:`trail_for` and record events::

    trail_for(archive).record(AuditRecord("view", actor_kind="user", actor_id="alice", ...))

``record`` returns at once; rows reach the index within ``audit_flush_seconds``. The trail's
``close`` runs at exit (``atexit``); :func:`close_trail` closes it earlier, e.g. before the
archive itself is closed.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from cloudfilm.audit.trail import AuditRecord, AuditTrail

if TYPE_CHECKING:
    from cloudfilm.archive import Archive

__all__ = ["AuditRecord", "AuditTrail", "close_trail", "trail_for"]

#: Attribute of an ``Archive`` that holds its trail.
_ATTRIBUTE = "_cloudfilm_audit_trail"
_lock = threading.Lock()


def trail_for(archive: Archive) -> AuditTrail:
    """The one audit trail of ``archive`` (created on first use; thread-safe)."""
    trail: AuditTrail | None = getattr(archive, _ATTRIBUTE, None)
    if trail is not None:
        return trail
    with _lock:
        trail = getattr(archive, _ATTRIBUTE, None)
        if trail is None:
            trail = AuditTrail(archive)
            setattr(archive, _ATTRIBUTE, trail)
        return trail


def close_trail(archive: Archive, timeout: float | None = None) -> bool:
    """Flush and close ``archive``'s trail, if it has one; a later ``trail_for`` makes a new
    one. Returns False when rows could not be written within ``timeout`` seconds."""
    with _lock:
        trail: AuditTrail | None = getattr(archive, _ATTRIBUTE, None)
        if trail is None:
            return True
        delattr(archive, _ATTRIBUTE)
    return trail.close(timeout)
