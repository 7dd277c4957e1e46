"""Which service class serves a DIMSE request: ours for some SOP classes, pynetdicom's else.

pynetdicom picks the service class of each request with
``pynetdicom.association.uid_to_service_class``. ``register`` makes it answer with one of our
classes for the SOP classes given (C-MOVE/C-GET in ``retrieve``, Storage Commitment in
``commitment``). Those classes serve only the application entities registered with them and
hand any other AE's requests to pynetdicom's own implementation, so another pynetdicom AE in the
same process keeps the standard behaviour.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import pynetdicom.association

_services: dict[str, type[Any]] = {}
_lock = threading.Lock()


def register(sop_classes: Iterable[str], service_class: type[Any]) -> None:
    """Serve requests for ``sop_classes`` with ``service_class`` (idempotent)."""
    with _lock:
        for uid in sop_classes:
            _services[str(uid)] = service_class
        current = getattr(pynetdicom.association, "uid_to_service_class")  # noqa: B009
        if getattr(current, "_cloudfilm", False):
            return
        original = current

        def dispatch(uid: str) -> Any:
            found = _services.get(str(uid))
            return found if found is not None else original(uid)

        dispatch._cloudfilm = True  # type: ignore[attr-defined]
        setattr(pynetdicom.association, "uid_to_service_class", dispatch)  # noqa: B010
