"""C-MOVE and C-GET SCP: stored originals sent byte-exact (PS3.4 C.4.2, C.4.3).

pynetdicom's own Query/Retrieve service takes decoded ``Dataset`` objects from a handler and
encodes them again, which would neither keep the received bytes nor bound memory, and it
cannot refuse a malformed identifier before counting sub-operations. So the C-GET and C-MOVE
requests of our associations go to ``RetrieveService`` instead (``install`` swaps it in for
the retrieve SOP classes only, and only for application entities registered with it; any
other pynetdicom AE in the process keeps the standard service).

Each sub-operation is a C-STORE-RQ sent by ``cloudfilm.dimse.scu.StoredInstanceSender``: the
data set read straight from the blob under a context with the stored transfer syntax, or
transcoded when the peer accepted the SOP class only in another syntax (if that is impossible
the sub-operation fails and the log says why).

Responses (PS3.4 C.4.2.1.5, C.4.3.1.4): a pending 0xFF00 after each sub-operation with the
counts of remaining, completed, failed and warning sub-operations; finally 0x0000 (all
completed), 0xB000 (some failed or had warnings, with the Failed SOP Instance UID List),
0xA702 (all failed), 0xFE00 (cancelled by C-CANCEL-RQ); 0xA801 for an unknown move destination,
0xA900 for a malformed identifier, 0x0124 when the caller may not retrieve.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import decode, encode
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.status import (
    QR_GET_SERVICE_CLASS_STATUS,
    QR_MOVE_SERVICE_CLASS_STATUS,
    code_to_category,
)

from cloudfilm.archive import Archive
from cloudfilm.core.errors import InvalidQuery
from cloudfilm.dimse import dispatch, status
from cloudfilm.dimse.peers import Peer, Permission
from cloudfilm.dimse.principal import DimsePrincipal, audit
from cloudfilm.dimse.scu import (
    CannotAssociate,
    CannotSend,
    StoredInstanceSender,
    associate,
    proposed_contexts,
)
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

logger = logging.getLogger(__name__)

#: Most sub-operations one retrieve may have: the counts are US (PS3.7 E.1).
MAX_SUBOPERATIONS = 65535


class RetrieveOwner(Protocol):
    """What the retrieve service needs from the server that owns an association."""

    archive: Archive
    ae_title: str

    def principal_of(self, assoc: Any) -> DimsePrincipal | None: ...

    def find_peer(self, ae_title: str) -> Peer | None: ...


_owners: weakref.WeakKeyDictionary[Any, RetrieveOwner] = weakref.WeakKeyDictionary()
_install_lock = threading.Lock()


def install(ae: Any, owner: RetrieveOwner) -> None:
    """Serve C-GET/C-MOVE requests made to ``ae`` with ``RetrieveService`` and ``owner``."""
    with _install_lock:
        _owners[ae] = owner
    dispatch.register(RETRIEVE_MODELS, RetrieveService)


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
        self._studies: set[str] = set()

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
            outcome = "denied" if refused.code == status.NOT_AUTHORIZED else "failure"
            audit(self.owner.archive, self.principal, "retrieve", outcome, detail=self.operation)
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
        self._studies = {i.study_uid for i in instances}
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
        try:
            assoc = associate(
                self.service.assoc.ae,
                peer,
                proposed_contexts(instances),
                settings=self.owner.archive.settings,
            )
        except CannotAssociate as exc:
            raise _Refused(status.UNABLE_TO_PERFORM_SUBOPERATIONS, str(exc)) from None
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
                except CannotSend as exc:
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
        studies = sorted(self._studies)
        audit(
            self.owner.archive, self.principal, "retrieve",
            "success" if not counts.failed else "failure",
            study_uid=studies[0] if len(studies) == 1 else "",
            detail=f"{self.operation}: {counts.completed} completed, {counts.failed} failed, "
            f"{counts.warning} warning" + (f", {len(studies)} studies" if len(studies) > 1 else ""),
        )  # fmt: skip

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
