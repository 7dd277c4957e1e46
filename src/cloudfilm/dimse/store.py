"""C-STORE SCP: what arrives is stored exactly as received (PS3.4 Annex B).

pynetdicom writes each received data set, as it arrives, to a temporary file
(``_config.STORE_RECV_CHUNKED_DATASET``): a preamble, a File Meta Information group it makes
up, then the data set bytes exactly as they came off the wire. We hand those bytes, streamed
from the file, to ``Archive.store`` with the presentation context's transfer syntax, so memory
stays bounded whatever the size and the stored data set is byte for byte the received one
(the archive generates its own meta header, PS3.10 7.1). An instance stored now is matched
against the routing rules (``routing.route_stored``) before the response is sent.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from cloudfilm.access.visibility import institution_pk_of
from cloudfilm.archive import Archive, StoreResult
from cloudfilm.dimse import status
from cloudfilm.dimse.peers import Permission
from cloudfilm.dimse.principal import DimsePrincipal, audit
from cloudfilm.dimse.routing import route_stored

logger = logging.getLogger(__name__)


def handle_store(event: Any, archive: Archive, principal: DimsePrincipal | None) -> Dataset:
    """Answer one C-STORE-RQ (PS3.4 B.2.3); never raises.

    Statuses: 0x0000 stored or exact duplicate; 0xB007 stored, but the data set's SOP Class
    differs from the request's; the archive error's status on refusal (0xC000, 0xA900,
    0xA700, 0xC001); 0x0124 when the caller may not store; 0xC211 when this handler fails.
    """
    try:
        if principal is None or not principal.can(Permission.STORE):
            audit(archive, principal, "store", "denied", detail="C-STORE")
            return status.status_dataset(status.NOT_AUTHORIZED, "this AE may not store here")
        request = event.request
        calling_ae = principal.calling_ae
        path = Path(event.dataset_path)
        with path.open("rb") as fp:
            fp.seek(_dataset_offset(fp))
            result = archive.store(
                fp,
                transfer_syntax=str(event.context.transfer_syntax),
                source=f"dimse:{calling_ae}"[:100],
                source_ae=calling_ae,
                institution=institution_pk_of(archive, principal.institution),
            )
        audit(
            archive, principal, "store", "success" if result.ok else "failure",
            study_uid=result.study_uid or "",
            detail=f"C-STORE {result.status.value} {result.sop_instance_uid or ''}",
        )  # fmt: skip
        # Queued before the response: an acknowledged instance is also queued for forwarding.
        route_stored(archive, result, origin="dimse", calling_ae=calling_ae)
        return _answer(result, str(request.AffectedSOPClassUID or ""), principal)
    except Exception:
        logger.exception("C-STORE handler failed")
        return status.status_dataset(status.HANDLER_FAILED["C-STORE"], "internal error")


def _answer(result: StoreResult, requested_class: str, principal: DimsePrincipal) -> Dataset:
    code = status.store_status(result)
    if not result.ok:
        logger.warning(
            "C-STORE from %s refused with 0x%04X: %s", principal, code, result.reason or ""
        )
        return status.status_dataset(code, result.reason or "refused")
    if requested_class and result.sop_class_uid and requested_class != result.sop_class_uid:
        return status.status_dataset(
            status.STORE_WARNING_DOES_NOT_MATCH,
            f"stored; data set SOP Class is {result.sop_class_uid}",
        )
    return status.status_dataset(code)


def _dataset_offset(fp: Any) -> int:
    """Where the data set starts in pynetdicom's file: after preamble, ``DICM`` and group 2.

    pynetdicom writes File Meta Information Group Length (0002,0000) first, in explicit VR
    little endian (PS3.10 7.1), so the end of the group is known from its value.
    """
    head = fp.read(144)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
        raise ValueError("unexpected layout of pynetdicom's received data set file")
    (group_length,) = struct.unpack("<I", head[140:144])
    return 144 + int(group_length)


def handle_echo(event: Any, principal: DimsePrincipal | None) -> int:
    """Answer a C-ECHO-RQ (PS3.7 9.1.5): success for any admitted caller."""
    return status.SUCCESS if principal is not None else status.NOT_AUTHORIZED
