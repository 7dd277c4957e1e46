"""C-FIND SCP: the Patient Root and Study Root query models (PS3.4 C.4.1, C.6.1, C.6.2).

Matching is the shared query engine's (``cloudfilm.index.matching``, PS3.4 C.2.2.2: single
value, wildcard, range, UID list, universal). Every key of the identifier is returned: filled
from the index when the level supports it, zero-length otherwise (and the pending status is
then 0xFF01, "one or more optional keys were not supported", PS3.4 C.4.1.1.4). Matches are
streamed from the database, one pending response each, and a C-CANCEL-RQ stops the stream
with status 0xFE00 (PS3.4 C.4.1.2.3).

Character sets (PS3.4 C.4.1.1.3.1, PS3.5 6.1): each response is encoded in the character set
of the query when its values fit in it, otherwise in UTF-8 (``ISO_IR 192``).

The C-FIND requests of our associations are served by ``FindService`` (swapped in by
``install`` through ``dispatch``), which writes each C-FIND-RSP itself: the command set is a
few fixed elements, encoded here in Implicit VR Little Endian (PS3.7 6.3.1) instead of through
pydicom data sets built and encoded twice per message by pynetdicom; the identifier is still
encoded by pydicom (character sets). That halves the CPU time of a C-FIND on the server.
"""

from __future__ import annotations

import logging
import struct
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pydicom.charset
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pydicom.valuerep import PersonName
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import QueryRetrieveServiceClass

from cloudfilm.archive import Archive
from cloudfilm.core.errors import InvalidQuery
from cloudfilm.dicom.charset import TEXT_VRS
from cloudfilm.dimse import dispatch, status
from cloudfilm.dimse.peers import Permission
from cloudfilm.dimse.principal import DimsePrincipal, audit
from cloudfilm.index.matching import SUPPORTED_KEYS, Level, query_rows

logger = logging.getLogger(__name__)

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"

#: The levels each information model has (PS3.4 C.6.1.1, C.6.2.1).
MODEL_LEVELS: dict[str, tuple[Level, ...]] = {
    PATIENT_ROOT_FIND: (Level.PATIENT, Level.STUDY, Level.SERIES, Level.INSTANCE),
    STUDY_ROOT_FIND: (Level.STUDY, Level.SERIES, Level.INSTANCE),
}

#: Keys read with every match, to ask the principal whether the caller may see it.
_VISIBILITY_KEYS = {"StudyInstanceUID", "PatientID", "IssuerOfPatientID"}
#: Elements of the identifier that are not keys.
_NOT_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"}

Response = tuple[int | Dataset, Dataset | None]


@dataclass
class FindQuery:
    """A C-FIND identifier, understood."""

    level: Level
    #: Matching keys for the query engine: keyword → value in DICOM string form.
    keys: dict[str, str]
    #: Every key to return, as (tag, keyword, VR), in the identifier's order.
    returned: list[tuple[int, str, str]] = field(default_factory=list)
    #: Whether some keys are not supported (answered zero-length, status 0xFF01).
    unsupported: bool = False
    #: The query's Specific Character Set values (empty: the default repertoire).
    charsets: list[str] = field(default_factory=list)


def parse_identifier(identifier: Dataset, model: str) -> FindQuery:
    """Read the level, the matching keys and the return keys of a C-FIND identifier.

    Raises
    ------
    InvalidQuery
        Without a Query/Retrieve Level valid in ``model`` (PS3.4 C.4.1.1.3.1), or for a value
        that cannot be read.
    """
    levels = MODEL_LEVELS.get(model)
    if levels is None:
        raise InvalidQuery(f"{model} is not a supported query model")
    raw_level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if not raw_level:
        raise InvalidQuery("Query/Retrieve Level (0008,0052) is missing")
    try:
        level = Level(raw_level)
    except ValueError:
        raise InvalidQuery(f"Query/Retrieve Level {raw_level[:16]!r} is not valid") from None
    if level not in levels:
        raise InvalidQuery(f"level {level.value} is not part of this information model")
    query = FindQuery(level, {}, charsets=_charsets(identifier))
    supported = SUPPORTED_KEYS[level]
    for elem in identifier:
        keyword = elem.keyword
        if elem.tag.group in (0x0000, 0x0002) or elem.tag.is_private or keyword in _NOT_KEYS:
            continue
        if not keyword:
            continue  # an element pydicom's dictionary does not know: not a key we can answer
        query.returned.append((int(elem.tag), keyword, elem.VR))
        if keyword not in supported:
            query.unsupported = True
            continue
        try:
            query.keys[keyword] = _key_value(elem)
        except Exception as exc:  # an unreadable value (bad encoding, bad number)
            raise InvalidQuery(f"{keyword}: unreadable value ({exc})") from None
    return query


def _charsets(identifier: Dataset) -> list[str]:
    value = identifier.get("SpecificCharacterSet")
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _key_value(elem: DataElement) -> str:
    """A matching value in DICOM string form; ``*`` alone is universal (PS3.4 C.2.2.2.4)."""
    value = elem.value
    if value is None or elem.VR == "SQ":
        return ""
    if isinstance(value, MultiValue | list | tuple):
        text = "\\".join(str(v) for v in value)
    elif isinstance(value, bytes):
        return ""
    else:
        text = str(value)
    text = text.strip()
    return "" if text and set(text) == {"*"} else text


def handle_find(
    event: Any, archive: Archive, principal: DimsePrincipal | None, ae_title: str
) -> Iterator[Response]:
    """The C-FIND-RSP stream for one request; never raises (failure 0xC311 instead)."""
    try:
        if principal is None or not principal.can(Permission.QUERY):
            audit(archive, principal, "query", "denied", detail="C-FIND")
            yield status.status_dataset(status.NOT_AUTHORIZED, "this AE may not query"), None
            return
        query = parse_identifier(event.identifier, str(event.request.AffectedSOPClassUID))
    except InvalidQuery as exc:
        yield status.status_dataset(exc.dimse_status, exc.message), None
        return
    except Exception as exc:
        logger.exception("C-FIND request could not be read")
        yield status.status_dataset(status.HANDLER_FAILED["C-FIND"], f"unreadable: {exc}"), None
        return
    yield from _matches(event, archive, principal, ae_title, query)


def _matches(
    event: Any, archive: Archive, principal: DimsePrincipal, ae_title: str, query: FindQuery
) -> Iterator[Response]:
    pending = status.PENDING_UNSUPPORTED_KEYS if query.unsupported else status.PENDING
    count = 0
    # Only the columns answered or needed to check visibility; the rows come over a Core
    # connection (a read: the ORM session would only add work).
    columns = {keyword for _, keyword, _ in query.returned} | _VISIBILITY_KEYS
    # A peer of an institution: only its studies (and patients with one) match, in SQL, so
    # the rows stream without a look-up each (``DimsePrincipal.study_condition``).
    scope = principal.study_condition()
    try:
        with archive.engine.connect() as connection:
            rows = query_rows(connection, query.level, query.keys, columns=columns, scope=scope)
            for row in rows:
                if event.is_cancelled:
                    logger.info("C-FIND from %s cancelled after %d matches", principal, count)
                    yield status.CANCEL, None
                    return
                if scope is None and not _visible(principal, query.level, row):
                    continue
                count += 1
                yield pending, build_response(query, row, ae_title)
    except InvalidQuery as exc:
        yield status.status_dataset(exc.dimse_status, exc.message), None
        return
    except Exception as exc:
        logger.exception("C-FIND failed")
        yield status.status_dataset(status.HANDLER_FAILED["C-FIND"], f"failed: {exc}"), None
        return
    logger.info("C-FIND %s from %s: %d matches", query.level.value, principal, count)
    study = str(query.keys.get("StudyInstanceUID") or "")
    audit(
        archive, principal, "query", "success", study_uid=study if "\\" not in study else "",
        patient_id=str(query.keys.get("PatientID") or "")[:64],
        detail=f"C-FIND {query.level.value}: {count} matches",
    )  # fmt: skip


def _visible(principal: DimsePrincipal, level: Level, row: dict[str, Any]) -> bool:
    if level is Level.PATIENT:
        return principal.can_view_patient(
            str(row.get("PatientID") or ""), str(row.get("IssuerOfPatientID") or "")
        )
    return principal.can_view_study(str(row.get("StudyInstanceUID") or ""))


def build_response(query: FindQuery, row: dict[str, Any], ae_title: str) -> Dataset:
    """The identifier of one pending C-FIND-RSP: the requested keys, filled from ``row``."""
    ds = Dataset()
    ds.QueryRetrieveLevel = query.level.value
    ds.RetrieveAETitle = ae_title
    for tag, keyword, vr in query.returned:
        value = row.get(keyword)
        if vr == "SQ":
            ds.add_new(tag, vr, [])
        elif value is None or value == "":
            ds.add_new(tag, vr, None)
        else:
            ds.add_new(tag, vr, _element_value(value, vr))
    _choose_charset(ds, query.charsets)
    return ds


def _element_value(value: Any, vr: str) -> Any:
    if isinstance(value, str) and "\\" in value and vr not in ("LT", "ST", "UT"):
        return value.split("\\")
    if vr in ("IS", "US", "UL", "SS", "SL") and not isinstance(value, int):
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    return value


def _choose_charset(ds: Dataset, charsets: list[str]) -> None:
    """The query's character set when every value fits in it, else UTF-8 (PS3.5 6.1.2.5)."""
    texts = [
        str(elem.value)
        for elem in ds
        if elem.VR in TEXT_VRS and isinstance(elem.value, str | PersonName)
    ]
    if all(text.isascii() for text in texts):
        if charsets:
            ds.SpecificCharacterSet = charsets if len(charsets) > 1 else charsets[0]
        return
    if charsets and all(_encodes(text, charsets) for text in texts):
        ds.SpecificCharacterSet = charsets if len(charsets) > 1 else charsets[0]
        return
    ds.SpecificCharacterSet = "ISO_IR 192"


def _encodes(text: str, charsets: list[str]) -> bool:
    """Whether ``text`` can be written exactly in the character sets ``charsets``."""
    if text.isascii():
        return True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            encodings = pydicom.charset.convert_encodings(charsets)
            encoded = pydicom.charset.encode_string(text, encodings)
            return bool(pydicom.charset.decode_bytes(encoded, encodings, set()) == text)
        except Exception:
            return False


# ------------------------------------------------------------------------------ the service


@dataclass(frozen=True)
class _Owner:
    archive: Archive
    ae_title: str
    principal_of: Callable[[Any], DimsePrincipal | None]


_owners: weakref.WeakKeyDictionary[Any, _Owner] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def install(
    ae: Any,
    archive: Archive,
    ae_title: str,
    principal_of: Callable[[Any], DimsePrincipal | None],
) -> None:
    """Serve the C-FIND requests made to ``ae`` with ``FindService``."""
    with _lock:
        _owners[ae] = _Owner(archive, ae_title, principal_of)
    dispatch.register(MODEL_LEVELS, FindService)


def uninstall(ae: Any) -> None:
    with _lock:
        _owners.pop(ae, None)


@dataclass
class _FindEvent:
    """What ``handle_find`` reads of pynetdicom's ``EVT_C_FIND`` event."""

    identifier: Dataset
    request: Any
    service: Any

    @property
    def is_cancelled(self) -> bool:
        return bool(self.service.is_cancelled(self.request.MessageID))


class FindService(QueryRetrieveServiceClass):
    """C-FIND SCP of registered AEs: ``handle_find``'s answers, written as they come."""

    def SCP(self, req: Any, context: Any) -> None:
        owner = _owners.get(self.assoc.ae)
        syntax = str(context.abstract_syntax)
        if owner is None or not isinstance(req, C_FIND) or syntax not in MODEL_LEVELS:
            super().SCP(req, context)
            return
        transfer_syntax = UID(context.transfer_syntax[0])
        respond = _Responder(self, req, int(context.context_id), transfer_syntax)
        try:
            if req.Identifier is None:
                raise ValueError("no identifier")
            identifier = decode(
                req.Identifier,
                transfer_syntax.is_implicit_VR,
                transfer_syntax.is_little_endian,
                transfer_syntax.is_deflated,
            )
        except Exception as exc:
            respond(status.IDENTIFIER_DOES_NOT_MATCH, None, f"unreadable identifier: {exc}")
            return
        event = _FindEvent(identifier, req, self)
        principal = owner.principal_of(self.assoc)
        for code, answer in handle_find(event, owner.archive, principal, owner.ae_title):
            if not self.assoc.is_established:
                return
            if isinstance(code, Dataset):  # a failure, with its Error Comment
                respond(int(code.Status), None, str(code.get("ErrorComment", "")))
                return
            respond(code, answer)
            if code == status.CANCEL:
                return
        respond(status.SUCCESS, None)


class _Responder:
    """Sends the C-FIND-RSPs of one request."""

    def __init__(self, service: Any, req: Any, context_id: int, transfer_syntax: UID) -> None:
        self.service = service
        self.message_id = int(req.MessageID)
        self.sop_class = str(req.AffectedSOPClassUID)
        self.context_id = context_id
        self.transfer_syntax = transfer_syntax

    def __call__(self, code: int, identifier: Dataset | None, comment: str = "") -> None:
        data = None
        if identifier is not None:
            syntax = self.transfer_syntax
            data = encode(
                identifier, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
            )
            if data is None:
                code, comment = status.HANDLER_FAILED["C-FIND"], "cannot encode a match"
        command = find_response_command(
            self.sop_class, self.message_id, code, data is not None, comment
        )
        dul = self.service.assoc.dul
        for pdata in p_data(self.context_id, command, data, self.service.dimse.maximum_pdu_size):
            dul.send_pdu(pdata)


def _element(element: int, value: bytes) -> bytes:
    """One command element, group 0000, Implicit VR Little Endian."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def find_response_command(
    sop_class_uid: str, message_id: int, code: int, with_identifier: bool, comment: str = ""
) -> bytes:
    """The command set of a C-FIND-RSP (PS3.7 9.3.2.2, E.1), Implicit VR Little Endian."""
    uid = sop_class_uid.encode("ascii")
    body = _element(0x0002, uid + b"\x00" * (len(uid) % 2))  # Affected SOP Class UID
    body += _element(0x0100, struct.pack("<H", 0x8020))  # Command Field: C-FIND-RSP
    body += _element(0x0120, struct.pack("<H", message_id))  # Message ID Being Responded To
    # Command Data Set Type: 0x0101 none, anything else present (pynetdicom writes 1)
    body += _element(0x0800, struct.pack("<H", 0x0001 if with_identifier else 0x0101))
    body += _element(0x0900, struct.pack("<H", code))  # Status
    if comment:
        text = status.error_comment(comment).encode("ascii")
        body += _element(0x0902, text + b" " * (len(text) % 2))  # Error Comment (LO)
    return _element(0x0000, struct.pack("<I", len(body))) + body  # Command Group Length


def p_data(context_id: int, command: bytes, data: bytes | None, max_pdu: int) -> Iterator[P_DATA]:
    """P-DATA primitives of one message (PS3.8 E.2): the command fragments, then the data
    set's; each PDV within the peer's maximum PDU length (0: no limit)."""
    for payload, more, last in ((command, 0x01, 0x03), (data, 0x00, 0x02)):
        if not payload:
            continue
        fragments = list(C_FIND_RSP._generate_pdv_fragments(payload, max_pdu))
        for index, fragment in enumerate(fragments):
            header = last if index == len(fragments) - 1 else more
            pdata = P_DATA()
            pdata.presentation_data_value_list.append((context_id, bytes([header]) + fragment))
            yield pdata
