"""DIMSE status codes cloudfilm answers with, and how archive outcomes map to them.

C-STORE statuses are those of PS3.4 B.2.3; C-FIND of PS3.4 C.4.1.1.4; C-MOVE of C.4.2.1.5;
C-GET of C.4.3.1.4; general statuses of PS3.7 Annex C. An exact duplicate is plain success
(the archive already holds it, durably). Each failure carries an Error Comment (0000,0902),
at most 64 characters (VR LO), that says what was wrong.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from cloudfilm.archive import StoreResult
from cloudfilm.core.errors import CloudFilmError

SUCCESS = 0x0000
#: PS3.7 C.5.x general status "Refused: Not Authorized": the peer may not use this service.
NOT_AUTHORIZED = 0x0124
CANCEL = 0xFE00
PENDING = 0xFF00
#: C-FIND pending, "one or more Optional Keys were not supported" (PS3.4 C.4.1.1.4).
PENDING_UNSUPPORTED_KEYS = 0xFF01

# C-STORE (PS3.4 B.2.3)
STORE_OUT_OF_RESOURCES = 0xA700
STORE_DOES_NOT_MATCH = 0xA900
STORE_CANNOT_UNDERSTAND = 0xC000
#: Warning: stored, but the data set's SOP Class differs from the request's.
STORE_WARNING_DOES_NOT_MATCH = 0xB007

# Query/Retrieve (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4)
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_CALCULATE_MATCHES = 0xA701
UNABLE_TO_PERFORM_SUBOPERATIONS = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
SUBOPERATIONS_WITH_FAILURES = 0xB000

#: What a handler answers when it fails unexpectedly (pynetdicom's convention, kept so that a
#: log line and a status point at the same place): the association goes on.
HANDLER_FAILED = {"C-STORE": 0xC211, "C-FIND": 0xC311, "C-GET": 0xC411, "C-MOVE": 0xC511}


def status_dataset(status: int, comment: str | None = None) -> Dataset:
    """A status for pynetdicom: Status (0000,0900) and, when given, Error Comment (0000,0902)."""
    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = error_comment(comment)
    return ds


def error_comment(text: str) -> str:
    """``text`` fitted to VR LO: 64 characters of printable ASCII, no backslash."""
    clean = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in text)
    return clean if len(clean) <= 64 else clean[:61] + "..."


def store_status(result: StoreResult) -> int:
    """The C-STORE response status for the archive's answer (PS3.4 B.2.3).

    ``stored`` and ``duplicate`` are success (0x0000); ``conflict`` and ``rejected`` take the
    status of their error (``cloudfilm.core.errors``: 0xC000 cannot understand, 0xA900 data
    set does not match SOP class, 0xA700 out of resources, 0xC001 identity conflict, 0x0110
    processing failure).
    """
    if result.ok:
        return SUCCESS
    if isinstance(result.error, CloudFilmError):
        return result.error.dimse_status
    return STORE_CANNOT_UNDERSTAND


def referenced(sop_class: str, sop_instance: str) -> Dataset:
    """An item naming one SOP instance (Referenced SOP Class / Instance UID), as the
    Referenced ... Sequence attributes of storage commitment and print management hold."""
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item
