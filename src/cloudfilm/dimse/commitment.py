"""Storage Commitment Push Model SCP (PS3.4 Annex J): telling a modality its images are safe.

A peer allowed to store sends an N-ACTION-RQ (Requested SOP Class 1.2.840.10008.1.20.1, the
well-known instance 1.2.840.10008.1.20.1.1, Action Type ID 1 "Request Storage Commitment")
naming a Transaction UID (0008,1195) and the instances in its Referenced SOP Sequence
(0008,1199). The request is recorded in the index (``DimseCommitment``) before the N-ACTION-RSP
says success, so it survives a restart. Then, from another thread, the N-EVENT-REPORT-RQ
(PS3.4 J.3.3) goes to the peer:

* on the same association, if it is still open and the peer has not asked to release it;
* else on a new association to the peer's configured host and port, proposing the Storage
  Commitment SOP class with SCP/SCU role selection (PS3.7 D.3.3.4: we are the SCP of the SOP
  class and the association requestor; PS3.4 J.3.3 "the SCP may initiate an association").

Event Type ID 1 (all committed) carries the Referenced SOP Sequence; 2 (failures exist) the
Failed SOP Sequence (0008,1198) with a Failure Reason (0008,1197) for each, and the committed
ones: 0x0112 no such object instance (not in the archive), 0x0119 class-instance conflict (stored
with another SOP Class UID), 0x0110 processing failure (the index names it but its blob is
missing or unreadable). An instance is committed when its index row is committed and its blob,
fsync'd before that, is still there: what ``Archive.store`` acknowledged.

A report that cannot be delivered is retried on a new association (``Reporter.step``, run by
``cloudfilm serve`` and ``cloudfilm dimse`` through ``jobs``) with exponential back-off; each
attempt evaluates the instances again, so one that arrived meanwhile is reported committed.

N-ACTION-RSP statuses (PS3.7 10.1.4.1.10): 0x0000 accepted; 0x0124 the caller may not store
or is not a known peer (a report may need a new association to it); 0x0112 not the well-known
SOP instance; 0x0123 an Action Type ID other than 1; 0x0115 no valid Transaction UID or
Referenced SOP Sequence; 0x0213 more than ``MAX_REFERENCES`` instances; 0x0110 the request could
not be recorded.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role
from pynetdicom.dimse_primitives import N_ACTION, N_EVENT_REPORT
from pynetdicom.dsutils import decode, encode
from pynetdicom.presentation import build_context
from pynetdicom.service_class_n import StorageCommitmentServiceClass
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from cloudfilm.archive import Archive
from cloudfilm.dimse import dispatch, jobs, status
from cloudfilm.dimse.peers import PeerDirectory, Permission
from cloudfilm.dimse.principal import DimsePrincipal
from cloudfilm.dimse.scu import CannotAssociate, associate, ending, exchange
from cloudfilm.index.models import DimseCommitment, Instance, utcnow

logger = logging.getLogger(__name__)

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
#: The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.1).
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_STORAGE_COMMITMENT = 1
EVENT_ALL_COMMITTED = 1
EVENT_SOME_FAILED = 2

# Failure Reason (0008,1197) values of the Failed SOP Sequence (PS3.4 J.3.3.1.1).
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119

# N-ACTION-RSP statuses (PS3.7 10.1.4.1.10).
NO_SUCH_SOP_INSTANCE = 0x0112
INVALID_ARGUMENT_VALUE = 0x0115
NO_SUCH_ACTION = 0x0123
RESOURCE_LIMITATION = 0x0213

#: Most instances one request may name.
MAX_REFERENCES = 100_000
_UID = re.compile(r"^[0-9A-Za-z._-]{1,64}$")
_CHUNK = 500
_message_ids = itertools.count(0x4000)


class BadRequest(Exception):
    """An N-ACTION answered with a failure status."""

    def __init__(self, code: int, comment: str) -> None:
        super().__init__(comment)
        self.code = code
        self.comment = comment


@dataclass(frozen=True)
class CommitmentRequest:
    """A Request Storage Commitment action, understood."""

    transaction_uid: str
    #: (Referenced SOP Class UID, Referenced SOP Instance UID) of each item.
    references: tuple[tuple[str, str], ...]


def parse_request(action_information: Dataset) -> CommitmentRequest:
    """Read the Action Information of an N-ACTION-RQ (PS3.4 J.3.2.1.1, Table J.3-1).

    Raises
    ------
    BadRequest
        0x0115 without a valid Transaction UID or with an empty or malformed Referenced SOP
        Sequence; 0x0213 above ``MAX_REFERENCES`` items.
    """
    transaction = _uid(action_information.get("TransactionUID"))
    if not transaction:
        raise BadRequest(INVALID_ARGUMENT_VALUE, "Transaction UID (0008,1195) missing or invalid")
    items = action_information.get("ReferencedSOPSequence") or []
    if not items:
        raise BadRequest(INVALID_ARGUMENT_VALUE, "Referenced SOP Sequence (0008,1199) is empty")
    if len(items) > MAX_REFERENCES:
        raise BadRequest(RESOURCE_LIMITATION, f"more than {MAX_REFERENCES} instances")
    references = []
    for number, item in enumerate(items, start=1):
        sop_class = _uid(item.get("ReferencedSOPClassUID"))
        sop_instance = _uid(item.get("ReferencedSOPInstanceUID"))
        if not sop_class or not sop_instance:
            raise BadRequest(
                INVALID_ARGUMENT_VALUE, f"item {number}: SOP Class or Instance UID missing"
            )
        references.append((sop_class, sop_instance))
    return CommitmentRequest(transaction, tuple(references))


def _uid(value: object) -> str:
    text = str(value or "").strip().rstrip("\x00").strip()
    return text if _UID.match(text) else ""


# ------------------------------------------------------------------------------ verdict


@dataclass
class Verdict:
    """What the archive can commit to, instance by instance."""

    committed: list[tuple[str, str]] = field(default_factory=list)
    #: (SOP Class UID, SOP Instance UID, Failure Reason).
    failed: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def event_type(self) -> int:
        return EVENT_SOME_FAILED if self.failed else EVENT_ALL_COMMITTED


def evaluate(archive: Archive, references: Sequence[Sequence[str]]) -> Verdict:
    """Check each referenced instance: indexed with this SOP class, and its blob present."""
    wanted = list(dict.fromkeys(uid for _, uid in references))
    stored: dict[str, tuple[str, str]] = {}
    with archive.sessions() as session:
        for start in range(0, len(wanted), _CHUNK):
            rows = session.execute(
                select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.blob_key).where(
                    Instance.sop_instance_uid.in_(wanted[start : start + _CHUNK])
                )
            )
            stored.update({uid: (sop_class, key) for uid, sop_class, key in rows})
        session.rollback()
    verdict = Verdict()
    for sop_class, uid in references:
        found = stored.get(uid)
        if found is None:
            verdict.failed.append((sop_class, uid, NO_SUCH_OBJECT_INSTANCE))
        elif found[0] != sop_class:
            verdict.failed.append((sop_class, uid, CLASS_INSTANCE_CONFLICT))
        elif not _blob_present(archive, found[1]):
            logger.error("storage commitment: %s is indexed but its blob is missing", uid)
            verdict.failed.append((sop_class, uid, PROCESSING_FAILURE))
        else:
            verdict.committed.append((sop_class, uid))
    return verdict


def _blob_present(archive: Archive, key: str) -> bool:
    try:
        return bool(archive.blobs.exists(key))
    except Exception:
        logger.exception("storage commitment: cannot check blob %s", key)
        return False


def report_dataset(transaction_uid: str, verdict: Verdict, retrieve_ae: str) -> Dataset:
    """The Event Information of the N-EVENT-REPORT-RQ (PS3.4 J.3.3.1.1, Table J.3-2)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.RetrieveAETitle = retrieve_ae
    if verdict.committed:
        ds.ReferencedSOPSequence = [status.referenced(c, i) for c, i in verdict.committed]
    if verdict.failed:
        failed = []
        for sop_class, uid, reason in verdict.failed:
            item = status.referenced(sop_class, uid)
            item.FailureReason = reason
            failed.append(item)
        ds.FailedSOPSequence = failed
    return ds


# ------------------------------------------------------------------------------ the index


def record_request(
    archive: Archive, calling_ae: str, request: CommitmentRequest, worker: str
) -> jobs.Claim:
    """Keep the request (a repeated Transaction UID from the same peer is reported again),
    claimed by ``worker`` for the report that follows at once."""
    now = utcnow()
    token = jobs.new_token(worker)
    values: dict[str, Any] = {
        "references": [list(r) for r in request.references],
        "state": "running",
        "claimed_by": token,
        "locked_until": now + jobs.LEASE,
        "attempts": 1,
        "next_attempt_at": now,
        "last_error": "",
        "event_type": None,
        "failed_count": 0,
        "updated_at": now,
        "finished_at": None,
    }
    key = {"calling_ae": calling_ae, "transaction_uid": request.transaction_uid}
    for _ in range(2):  # a concurrent insert of the same transaction: update it instead
        try:
            with archive.sessions.begin() as session:
                pk = session.execute(
                    select(DimseCommitment.pk).where(
                        DimseCommitment.calling_ae == calling_ae,
                        DimseCommitment.transaction_uid == request.transaction_uid,
                    )
                ).scalar()
                if pk is None:
                    row = DimseCommitment(**key, **values, created_at=now)
                    session.add(row)
                    session.flush()
                    pk = row.pk
                else:
                    session.execute(
                        update(DimseCommitment).where(DimseCommitment.pk == pk).values(**values)
                    )
            return jobs.Claim(DimseCommitment, token, (pk,))
        except IntegrityError:
            continue
    raise RuntimeError(f"cannot record storage commitment {request.transaction_uid}")


# ------------------------------------------------------------------------------ reports


class Reporter:
    """Delivers N-EVENT-REPORTs: right after an N-ACTION, and as retries from the index."""

    def __init__(self, archive: Archive, ae: AE, ae_title: str, worker: str) -> None:
        self.archive = archive
        #: The AE that opens new associations (ours, with our AE title).
        self.ae = ae
        self.ae_title = ae_title
        self.worker = worker
        self.directory = PeerDirectory(archive)

    def step(self) -> bool:
        """Retry one due report on a new association; False when none was due."""
        held = jobs.claim(self.archive, DimseCommitment, worker=self.worker, limit=1)
        if not held.pks:
            return False
        self.deliver(held)
        return True

    def deliver(self, held: jobs.Claim, assoc: Any = None) -> bool:
        """Evaluate and report one claimed transaction; True when the peer acknowledged it.

        ``assoc`` is the association the request came on, tried first while it is open.
        Never raises: an unexpected failure is logged and the job retried later.
        """
        pk = held.pks[0]
        try:
            return self._deliver(held, pk, assoc)
        except Exception as exc:
            logger.exception("storage commitment report %d failed", pk)
            try:
                jobs.fail(self.archive, held, {pk: f"internal error: {exc}"})
            except Exception:  # the index is down: the lease lapses and it is retried
                logger.exception("cannot record the failure of report %d", pk)
            return False

    def _deliver(self, held: jobs.Claim, pk: int, assoc: Any) -> bool:
        with self.archive.sessions() as session:
            row = session.get(DimseCommitment, pk)
            if row is None:
                return False
            transaction, calling_ae, references = (
                row.transaction_uid,
                row.calling_ae,
                row.references,
            )
            session.rollback()
        verdict = evaluate(self.archive, references)
        dataset = report_dataset(transaction, verdict, self.ae_title)
        outcome: dict[str, Any] = {
            "event_type": verdict.event_type,
            "failed_count": len(verdict.failed),
        }
        problem = ""
        if assoc is not None:
            problem = self._on_association(assoc, dataset, verdict.event_type)
            if not problem:
                jobs.succeed(self.archive, held, [pk], **outcome)
                self._log(transaction, calling_ae, verdict, "on the same association")
                return True
        peer = self.directory.get(calling_ae)
        if peer is None:
            reason = f"{calling_ae} is not a known peer; cannot open an association to it"
            jobs.fail(self.archive, held, {pk: reason}, hopeless=True, **outcome)
            return False
        try:
            new = associate(
                self.ae,
                peer,
                [
                    build_context(
                        STORAGE_COMMITMENT, [ImplicitVRLittleEndian, ExplicitVRLittleEndian]
                    )
                ],
                settings=self.archive.settings,
                ext_neg=[build_role(STORAGE_COMMITMENT, scu_role=False, scp_role=True)],
            )
        except CannotAssociate as exc:
            jobs.fail(self.archive, held, {pk: _join(problem, str(exc))}, **outcome)
            return False
        try:
            failure = self._on_association(new, dataset, verdict.event_type)
        finally:
            if new.is_established:
                new.release()
        if failure:
            jobs.fail(self.archive, held, {pk: _join(problem, failure)}, **outcome)
            return False
        jobs.succeed(self.archive, held, [pk], **outcome)
        self._log(transaction, calling_ae, verdict, "on a new association")
        return True

    def _on_association(self, assoc: Any, dataset: Dataset, event_type: int) -> str:
        """Send the report on ``assoc``; '' when acknowledged, else why not."""
        if not assoc.is_established or ending(assoc):
            return "the association of the request had ended"
        contexts = [
            cx for cx in assoc.accepted_contexts if cx.abstract_syntax == STORAGE_COMMITMENT
        ]
        if not contexts:
            return "no Storage Commitment presentation context was accepted"
        if assoc.is_requestor and not any(cx.as_scp for cx in contexts):
            logger.info("the peer did not accept our SCP role; sending the report anyway")
        context = max(contexts, key=lambda cx: bool(cx.as_scp))
        syntax = UID(context.transfer_syntax[0])
        req = N_EVENT_REPORT()
        req.MessageID = next(_message_ids) % 65536 or 1
        req.AffectedSOPClassUID = STORAGE_COMMITMENT
        req.AffectedSOPInstanceUID = STORAGE_COMMITMENT_INSTANCE
        req.EventTypeID = event_type
        encoded = encode(
            dataset, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
        )
        req.EventInformation = BytesIO(encoded or b"")
        rsp = exchange(assoc, req, int(context.context_id))
        if rsp is None:
            return "no N-EVENT-REPORT response"
        if int(rsp.Status) != status.SUCCESS:
            return f"the peer answered 0x{int(rsp.Status):04X} to the N-EVENT-REPORT"
        return ""

    @staticmethod
    def _log(transaction: str, calling_ae: str, verdict: Verdict, how: str) -> None:
        logger.info(
            "storage commitment %s for %s reported %s: %d committed, %d failed",
            transaction,
            calling_ae,
            how,
            len(verdict.committed),
            len(verdict.failed),
        )


def _join(first: str, second: str) -> str:
    return f"{first}; then {second}" if first else second


# --------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class _Registration:
    archive: Archive
    principal_of: Callable[[Any], DimsePrincipal | None]
    reporter: Reporter


_registered: weakref.WeakKeyDictionary[Any, _Registration] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def install(
    ae: Any,
    archive: Archive,
    principal_of: Callable[[Any], DimsePrincipal | None],
    reporter: Reporter,
) -> None:
    """Serve Storage Commitment N-ACTIONs made to ``ae`` with ``CommitmentService``."""
    with _lock:
        _registered[ae] = _Registration(archive, principal_of, reporter)
    dispatch.register([STORAGE_COMMITMENT], CommitmentService)


def uninstall(ae: Any) -> None:
    with _lock:
        _registered.pop(ae, None)


class CommitmentService(StorageCommitmentServiceClass):
    """Storage Commitment for registered AEs: answer the N-ACTION, then report (threaded)."""

    def SCP(self, req: Any, context: Any) -> None:
        registration = _registered.get(self.assoc.ae)
        if registration is None or not isinstance(req, N_ACTION):
            super().SCP(req, context)
            return
        held: jobs.Claim | None = None
        try:
            held = self._accept(registration, req, context)
            self._respond(req, context, status.SUCCESS)
        except BadRequest as refused:
            logger.warning("storage commitment refused: %s", refused.comment)
            self._respond(req, context, refused.code, refused.comment)
            return
        except Exception as exc:
            logger.exception("storage commitment request failed")
            self._respond(req, context, PROCESSING_FAILURE, f"not recorded: {exc}")
            return
        thread = threading.Thread(
            target=registration.reporter.deliver,
            args=(held, self.assoc),
            name="dimse-commitment-report",
            daemon=True,
        )
        thread.start()

    def _accept(self, registration: _Registration, req: Any, context: Any) -> jobs.Claim:
        principal = registration.principal_of(self.assoc)
        if principal is None or principal.peer is None or not principal.can(Permission.STORE):
            raise BadRequest(status.NOT_AUTHORIZED, "storage commitment: not a known storer")
        if str(req.RequestedSOPInstanceUID or "") != STORAGE_COMMITMENT_INSTANCE:
            raise BadRequest(NO_SUCH_SOP_INSTANCE, "not the well-known SOP Instance")
        if req.ActionTypeID != REQUEST_STORAGE_COMMITMENT:
            raise BadRequest(NO_SUCH_ACTION, f"Action Type ID {req.ActionTypeID} is not 1")
        syntax = UID(context.transfer_syntax[0])
        try:
            information = decode(
                req.ActionInformation,
                syntax.is_implicit_VR,
                syntax.is_little_endian,
                syntax.is_deflated,
            )
        except Exception as exc:
            raise BadRequest(INVALID_ARGUMENT_VALUE, f"unreadable: {exc}") from None
        request = parse_request(information)
        held = record_request(
            registration.archive, principal.calling_ae, request, registration.reporter.worker
        )
        logger.info(
            "storage commitment %s from %s: %d instance(s)",
            request.transaction_uid,
            principal,
            len(request.references),
        )
        return held

    def _respond(self, req: Any, context: Any, code: int, comment: str = "") -> None:
        rsp = N_ACTION()
        rsp.MessageIDBeingRespondedTo = req.MessageID
        rsp.AffectedSOPClassUID = req.RequestedSOPClassUID
        rsp.AffectedSOPInstanceUID = req.RequestedSOPInstanceUID
        rsp.ActionTypeID = req.ActionTypeID
        rsp.Status = code
        if comment:
            rsp.ErrorComment = status.error_comment(comment)  # type: ignore[assignment]
        self.dimse.send_msg(rsp, int(context.context_id))
