"""C-MOVE and C-GET SCP: stored originals sent byte-exact (PS3.4 C.4.2, C.4.3).

pynetdicom's own Query/Retrieve service takes decoded ``Dataset`` objects from a handler and
encodes them again, which would neither keep the received bytes nor bound memory, and it
cannot refuse a malformed identifier before counting sub-operations. So the C-GET and C-MOVE
requests of our associations go to ``RetrieveService`` instead (``install`` swaps it in for
the retrieve SOP classes only, and only for application entities registered with it; any
other pynetdicom AE in the process keeps the standard service).

Each sub-operation is a C-STORE-RQ whose data set is read straight from the blob, from its
``dataset_offset`` to the end, under a presentation context with the stored transfer syntax.
When the peer accepted the SOP class only with another transfer syntax, the instance is
transcoded by ``cloudfilm.dicom.transcode`` when that module is present, otherwise the
sub-operation fails with a warning in the log.

Responses (PS3.4 C.4.2.1.5, C.4.3.1.4): a pending 0xFF00 after each sub-operation with the
counts of remaining, completed, failed and warning sub-operations; finally 0x0000 (all
completed), 0xB000 (some failed or had warnings, with the Failed SOP Instance UID List),
0xA702 (all failed), 0xFE00 (cancelled by C-CANCEL-RQ); 0xA801 for an unknown move destination,
0xA900 for a malformed identifier, 0x0124 when the caller may not retrieve.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import queue
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

import pynetdicom.association
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.status import (
    QR_GET_SERVICE_CLASS_STATUS,
    QR_MOVE_SERVICE_CLASS_STATUS,
    code_to_category,
)

from cloudfilm.archive import Archive
from cloudfilm.core.errors import InvalidQuery
from cloudfilm.dimse import status
from cloudfilm.dimse.peers import Peer, Permission
from cloudfilm.dimse.principal import DimsePrincipal
from cloudfilm.dimse.selection import (
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    RETRIEVE_MODELS,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    StoredInstance,
    parse_retrieve_identifier,
    select_instances,
)
from cloudfilm.storage import FileBlobStore

logger = logging.getLogger(__name__)

#: Most sub-operations one retrieve may have: the counts are US (PS3.7 E.1).
MAX_SUBOPERATIONS = 65535
#: Most presentation contexts one association may propose (odd IDs 1-255, PS3.8 9.3.2.2).
MAX_CONTEXTS = 128
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class RetrieveOwner(Protocol):
    """What the retrieve service needs from the server that owns an association."""

    archive: Archive
    ae_title: str

    def principal_of(self, assoc: Any) -> DimsePrincipal | None: ...

    def find_peer(self, ae_title: str) -> Peer | None: ...

    def connection_handlers(self) -> list[tuple[Any, Callable[..., Any]]]: ...


_owners: weakref.WeakKeyDictionary[Any, RetrieveOwner] = weakref.WeakKeyDictionary()
_install_lock = threading.Lock()


def install(ae: Any, owner: RetrieveOwner) -> None:
    """Serve C-GET/C-MOVE requests made to ``ae`` with ``RetrieveService`` and ``owner``."""
    with _install_lock:
        _owners[ae] = owner
        current = getattr(pynetdicom.association, "uid_to_service_class")  # noqa: B009
        if getattr(current, "_cloudfilm", False):
            return
        original = current

        def dispatch(uid: str) -> Any:
            if uid in RETRIEVE_MODELS:
                return RetrieveService
            return original(uid)

        dispatch._cloudfilm = True  # type: ignore[attr-defined]
        setattr(pynetdicom.association, "uid_to_service_class", dispatch)  # noqa: B010


def uninstall(ae: Any) -> None:
    with _install_lock:
        _owners.pop(ae, None)


class RetrieveService(QueryRetrieveServiceClass):
    """The Query/Retrieve service, with byte-exact C-GET and C-MOVE for registered AEs."""

    def SCP(self, req: Any, context: Any) -> None:
        owner = _owners.get(self.assoc.ae)
        syntax = str(context.abstract_syntax)
        if owner is not None and isinstance(req, C_GET) and syntax in _GET_MODELS:
            self.statuses = QR_GET_SERVICE_CLASS_STATUS
            _Retrieval(self, owner, req, context, move=False).run()
        elif owner is not None and isinstance(req, C_MOVE) and syntax in _MOVE_MODELS:
            self.statuses = QR_MOVE_SERVICE_CLASS_STATUS
            _Retrieval(self, owner, req, context, move=True).run()
        else:
            super().SCP(req, context)


_GET_MODELS = (PATIENT_ROOT_GET, STUDY_ROOT_GET)
_MOVE_MODELS = (PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE)


class _Refused(Exception):
    """A retrieve answered with one final status and no sub-operations."""

    def __init__(self, code: int, comment: str) -> None:
        super().__init__(comment)
        self.code = code
        self.comment = comment


class _SubOperationFailed(Exception):
    """A C-STORE sub-operation that could not even be attempted."""


@dataclass
class _Counts:
    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)


class _Retrieval:
    """One C-GET or C-MOVE request, from identifier to final response."""

    def __init__(
        self, service: Any, owner: RetrieveOwner, req: Any, context: Any, *, move: bool
    ) -> None:
        self.service = service
        self.owner = owner
        self.req = req
        self.context_id = int(context.context_id)
        self.transfer_syntax = UID(context.transfer_syntax[0])
        self.model = str(context.abstract_syntax)
        self.move = move
        self.operation = "C-MOVE" if move else "C-GET"
        self.principal = owner.principal_of(service.assoc)

    def run(self) -> None:
        """Answer the request; never raises (0xC411/0xC511 if something breaks)."""
        try:
            instances = self._plan()
            if self.move:
                self._move(instances)
            else:
                self._get(instances)
        except _Refused as refused:
            logger.info("%s from %s refused: %s", self.operation, self.principal, refused.comment)
            self._respond(refused.code, None, comment=refused.comment)
        except Exception as exc:
            logger.exception("%s failed", self.operation)
            self._respond(
                status.HANDLER_FAILED[self.operation], None, comment=f"internal error: {exc}"
            )

    # ------------------------------------------------------------------ planning

    def _plan(self) -> list[StoredInstance]:
        if self.principal is None or not self.principal.can(Permission.RETRIEVE):
            raise _Refused(status.NOT_AUTHORIZED, "this AE may not retrieve")
        try:
            identifier = decode(
                self.req.Identifier,
                self.transfer_syntax.is_implicit_VR,
                self.transfer_syntax.is_little_endian,
                self.transfer_syntax.is_deflated,
            )
            request = parse_retrieve_identifier(identifier, self.model)
        except InvalidQuery as exc:
            raise _Refused(exc.dimse_status, exc.message) from None
        except Exception as exc:
            comment = f"unreadable identifier: {exc}"
            raise _Refused(status.IDENTIFIER_DOES_NOT_MATCH, comment) from None
        with self.owner.archive.sessions() as session:
            found = select_instances(session, request)
            session.rollback()
        principal = self.principal
        visible: dict[str, bool] = {}
        for uid in {i.study_uid for i in found}:
            visible[uid] = principal.can_view_study(uid)
        instances = [i for i in found if visible[i.study_uid]]
        if len(instances) > MAX_SUBOPERATIONS:
            raise _Refused(
                status.UNABLE_TO_CALCULATE_MATCHES,
                f"{len(instances)} instances match; retrieve at a lower level",
            )
        return instances

    # ------------------------------------------------------------------ C-GET / C-MOVE

    def _get(self, instances: list[StoredInstance]) -> None:
        sender = StoredInstanceSender(self.service.assoc, self.owner.archive)
        self._run_suboperations(instances, sender)

    def _move(self, instances: list[StoredInstance]) -> None:
        destination = str(self.req.MoveDestination or "").strip()
        peer = self.owner.find_peer(destination) if destination else None
        if peer is None:
            raise _Refused(
                status.MOVE_DESTINATION_UNKNOWN, f"move destination {destination!r} is unknown"
            )
        if not instances:
            self._final(_Counts(remaining=0))
            return
        contexts = proposed_contexts(instances, transcoder_available())
        assoc = self.service.assoc.ae.associate(
            peer.host,
            peer.port,
            contexts=contexts,
            ae_title=peer.ae_title,
            max_pdu=self.owner.archive.settings.dimse_max_pdu,
            evt_handlers=self.owner.connection_handlers(),
        )
        if not assoc.is_established:
            raise _Refused(
                status.UNABLE_TO_PERFORM_SUBOPERATIONS,
                f"cannot associate with {peer.ae_title} at {peer.host}:{peer.port}",
            )
        calling_ae = self.principal.calling_ae if self.principal else ""
        sender = StoredInstanceSender(
            assoc, self.owner.archive, originator=(calling_ae, int(self.req.MessageID))
        )
        try:
            self._run_suboperations(instances, sender)
        finally:
            if assoc.is_established:
                assoc.release()

    def _run_suboperations(
        self, instances: list[StoredInstance], sender: StoredInstanceSender
    ) -> None:
        counts = _Counts(remaining=len(instances))
        msg_id = int(self.req.MessageID)
        for index, instance in enumerate(instances):
            if self.service.is_cancelled(msg_id):
                logger.info("%s from %s cancelled", self.operation, self.principal)
                self._respond(status.CANCEL, counts, failed=True)
                return
            if not self.service.assoc.is_established:
                return
            sub_id = (msg_id + index + 1) % 65536 or 1
            code: int | None = None
            if not sender.usable:  # the destination went away: fail the rest at once
                logger.warning("%s: association for the sub-operations lost", self.operation)
            else:
                try:
                    code = sender.send(instance, sub_id)
                except _SubOperationFailed as exc:
                    logger.warning("%s: %s", self.operation, exc)
            category = code_to_category(code) if code is not None else "Failure"
            counts.remaining -= 1
            if category == "Success":
                counts.completed += 1
            elif category == "Warning":
                counts.warning += 1
            else:
                counts.failed += 1
                counts.failed_uids.append(instance.sop_instance_uid)
                if code is not None:
                    logger.warning(
                        "%s: peer answered 0x%04X to %s",
                        self.operation,
                        code,
                        instance.sop_instance_uid,
                    )
            if counts.remaining:
                self._respond(status.PENDING, counts)
        self._final(counts)

    def _final(self, counts: _Counts) -> None:
        if not counts.failed and not counts.warning:
            self._respond(status.SUCCESS, counts)
        elif counts.failed and not counts.completed and not counts.warning:
            self._respond(status.UNABLE_TO_PERFORM_SUBOPERATIONS, counts, failed=True)
        else:
            self._respond(status.SUBOPERATIONS_WITH_FAILURES, counts, failed=True)
        logger.info(
            "%s from %s: %d completed, %d failed, %d warning",
            self.operation,
            self.principal,
            counts.completed,
            counts.failed,
            counts.warning,
        )

    def _respond(
        self,
        code: int,
        counts: _Counts | None,
        *,
        failed: bool = False,
        comment: str | None = None,
    ) -> None:
        """Send one C-GET-RSP/C-MOVE-RSP (PS3.7 9.3.3.2, 9.3.4.2)."""
        rsp: Any = C_GET() if not self.move else C_MOVE()
        rsp.MessageIDBeingRespondedTo = self.req.MessageID
        rsp.AffectedSOPClassUID = self.req.AffectedSOPClassUID
        rsp.Status = code
        if comment:
            rsp.ErrorComment = status.error_comment(comment)
        if counts is not None:
            if code in (status.PENDING, status.CANCEL):
                rsp.NumberOfRemainingSuboperations = counts.remaining
            rsp.NumberOfCompletedSuboperations = counts.completed
            rsp.NumberOfFailedSuboperations = counts.failed
            rsp.NumberOfWarningSuboperations = counts.warning
        if failed and counts is not None:
            ds = Dataset()
            ds.FailedSOPInstanceUIDList = counts.failed_uids
            encoded = encode(
                ds,
                self.transfer_syntax.is_implicit_VR,
                self.transfer_syntax.is_little_endian,
                self.transfer_syntax.is_deflated,
            )
            rsp.Identifier = BytesIO(encoded or b"")
        if self.service.assoc.is_established:
            self.service.dimse.send_msg(rsp, self.context_id)


# ---------------------------------------------------------------------------------- sending


def transcoder_available() -> bool:
    """Whether ``cloudfilm.dicom.transcode`` (a colleague's module) is installed."""
    return _transcoder() is not None


def _transcoder() -> Any:
    try:
        return importlib.import_module("cloudfilm.dicom.transcode")
    except ImportError:
        return None


def proposed_contexts(
    instances: list[StoredInstance], can_transcode: bool
) -> list[PresentationContext]:
    """Presentation contexts to propose to a move destination (PS3.8 9.3.2.2).

    One context for each SOP class and stored transfer syntax, so that the peer can accept each
    original as it is; with a transcoder, one more per SOP class offering the uncompressed
    syntaxes as a fall-back. Above 128 contexts, one context per SOP class with all of them.
    """
    pairs = list(dict.fromkeys((i.sop_class_uid, i.transfer_syntax_uid) for i in instances))
    classes = list(dict.fromkeys(sop for sop, _ in pairs))
    contexts = [build_context(sop, [ts]) for sop, ts in pairs]
    if can_transcode:
        for sop in classes:
            if not any(s == sop and ts in _UNCOMPRESSED for s, ts in pairs):
                contexts.append(build_context(sop, list(_UNCOMPRESSED)))
    if len(contexts) > MAX_CONTEXTS:
        contexts = []
        for sop in classes[:MAX_CONTEXTS]:
            syntaxes = [ts for s, ts in pairs if s == sop]
            syntaxes += [ts for ts in _UNCOMPRESSED if ts not in syntaxes]
            contexts.append(build_context(sop, syntaxes))
    return contexts


class StoredInstanceSender:
    """Sends stored instances as C-STORE-RQs on one association (PS3.7 9.3.1)."""

    def __init__(
        self, assoc: Any, archive: Archive, *, originator: tuple[str, int] | None = None
    ) -> None:
        self.assoc = assoc
        self.archive = archive
        self.originator = originator
        self._broken = False

    def send(self, instance: StoredInstance, msg_id: int) -> int | None:
        """Send one instance; the peer's status, or None when no response came.

        Raises
        ------
        _SubOperationFailed
            When no accepted presentation context can carry the instance.
        """
        exact, other = self._contexts(instance)
        req = C_STORE()
        req.MessageID = msg_id
        req.AffectedSOPClassUID = instance.sop_class_uid
        req.AffectedSOPInstanceUID = instance.sop_instance_uid
        req.Priority = 0x0000  # medium
        if self.originator is not None:
            req.MoveOriginatorApplicationEntityTitle = self.originator[0]
            req.MoveOriginatorMessageID = self.originator[1]
        with self._local_blob(instance) as path:
            if exact is not None:
                req._dataset_path = (path, instance.dataset_offset)  # streamed from the file
                return self._exchange(req, int(exact.context_id))
            with self._transcoded(instance, path, other) as (converted, context):
                req._dataset_path = (converted, 0)
                return self._exchange(req, int(context.context_id))

    def _contexts(self, instance: StoredInstance) -> tuple[Any, list[Any]]:
        usable = [
            cx
            for cx in self.assoc.accepted_contexts
            if cx.abstract_syntax == instance.sop_class_uid and cx.as_scu
        ]
        for cx in usable:
            if cx.transfer_syntax[0] == instance.transfer_syntax_uid:
                return cx, usable
        return None, usable

    @contextlib.contextmanager
    def _transcoded(
        self, instance: StoredInstance, path: Path, usable: list[Any]
    ) -> Iterator[tuple[Path, Any]]:
        """The instance re-encoded for one of ``usable`` contexts, in a temporary file."""
        if not usable:
            raise _SubOperationFailed(
                f"{instance.sop_instance_uid}: the peer accepted no presentation context for "
                f"SOP class {instance.sop_class_uid}"
            )
        source = instance.transfer_syntax_uid
        offered = [str(cx.transfer_syntax[0]) for cx in usable]
        transcode = _transcoder()
        possible = [
            cx
            for cx in usable
            if transcode is not None
            and _can_transcode(transcode, source, str(cx.transfer_syntax[0]))
        ]
        if not possible:
            raise _SubOperationFailed(
                f"{instance.sop_instance_uid} is stored as {source}; the peer accepts only "
                f"{', '.join(offered)} for this SOP class and "
                + ("it cannot be transcoded" if transcode else "transcoding is not available")
            )
        target = min(possible, key=lambda cx: _preference(str(cx.transfer_syntax[0])))
        target_ts = str(target.transfer_syntax[0])
        tmp_dir = self.archive.settings.tmp_dir
        tmp_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=tmp_dir, suffix=".dcm") as out:
            try:
                with path.open("rb") as blob:
                    _transcode_into(
                        transcode, blob, instance.dataset_offset, source, target_ts, out
                    )
                out.flush()
            except Exception as exc:
                raise _SubOperationFailed(
                    f"{instance.sop_instance_uid}: transcoding {source} to {target_ts} "
                    f"failed: {exc}"
                ) from exc
            logger.info("sending %s transcoded to %s", instance.sop_instance_uid, target_ts)
            yield Path(out.name), target

    @property
    def usable(self) -> bool:
        """False once the association ended or a response never came."""
        return bool(self.assoc.is_established) and not self._broken

    def _exchange(self, req: Any, context_id: int) -> int | None:
        """Send the request and wait for its response, with the reactor paused.

        The wait ends early when the peer aborts (A-ABORT or a closed connection), rather than
        after the whole DIMSE timeout: pynetdicom's paused reactor would not notice.
        """
        assoc = self.assoc
        assoc._reactor_checkpoint.clear()
        rsp = None
        try:
            while not assoc._is_paused and assoc.is_established:
                time.sleep(0.0001)
            assoc.dimse.send_msg(req, context_id)
            deadline = time.monotonic() + float(assoc.dimse_timeout or 120)
            while rsp is None and time.monotonic() < deadline:
                try:
                    _, rsp = assoc.dimse.msg_queue.get(timeout=0.1)
                except queue.Empty:
                    if assoc.acse.is_aborted() or not assoc.dul.is_alive():
                        break
        finally:
            assoc._reactor_checkpoint.set()
        if rsp is None:
            self._broken = True
            assoc._handle_no_response()
            return None
        if not rsp.is_valid_response:
            return None
        return int(rsp.Status)

    @contextlib.contextmanager
    def _local_blob(self, instance: StoredInstance) -> Iterator[Path]:
        """A local file holding the blob: the blob itself, or a temporary copy (S3)."""
        blobs = self.archive.blobs
        if isinstance(blobs, FileBlobStore):
            yield blobs.root / instance.blob_key
            return
        tmp_dir = self.archive.settings.tmp_dir
        tmp_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=tmp_dir, suffix=".dcm") as tmp:
            with blobs.open(instance.blob_key) as source:
                shutil.copyfileobj(source, tmp, 1024 * 1024)
            tmp.flush()
            yield Path(tmp.name)


def _can_transcode(module: Any, source_ts: str, target_ts: str) -> bool:
    check = getattr(module, "can_transcode", None)
    return bool(check(source_ts, target_ts)) if check is not None else True


def _transcode_into(
    module: Any, blob: Any, offset: int, source_ts: str, target_ts: str, out: Any
) -> None:
    """The streaming ``transcode_into`` when the module has it, else ``transcode_to``."""
    streaming = getattr(module, "transcode_into", None)
    if streaming is not None:
        streaming(blob, offset, source_ts, target_ts, out)
    else:
        out.write(module.transcode_to(blob.read(), offset, source_ts, target_ts))


def _preference(transfer_syntax: str) -> int:
    order = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    return order.index(UID(transfer_syntax)) if transfer_syntax in order else len(order)
