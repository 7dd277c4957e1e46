"""cloudfilm as an SCU: opening associations to peers and sending stored instances on them.

Shared by every place that sends: the C-MOVE and C-GET sub-operations (``retrieve``),
``cloudfilm send``, the forwarding queue (``routing``) and storage commitment reports
(``commitment``).

Sending stored instances (C-STORE-RQ, PS3.7 9.3.1): the data set is read straight from the
blob, from its ``dataset_offset`` to the end, under a presentation context with the stored
transfer syntax, so the peer receives the original byte for byte. The contexts proposed
(PS3.8 9.3.2.2) are one per SOP class and stored syntax, plus one per SOP class with the
uncompressed syntaxes not proposed yet; when the peer accepted a SOP class only in another
syntax, the instance is transcoded (``cloudfilm.dicom.transcode``: derived data, same SOP
Instance UID) into a temporary file and sent from there.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.status import code_to_category

from cloudfilm.archive import Archive
from cloudfilm.core.config import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, Settings
from cloudfilm.dicom import transcode
from cloudfilm.dimse.peers import Peer
from cloudfilm.dimse.selection import StoredInstance
from cloudfilm.dimse.tls import TlsNotConfigured, client_tls_args
from cloudfilm.storage import FileBlobStore

logger = logging.getLogger(__name__)

#: Most presentation contexts one association may propose (odd IDs 1-255, PS3.8 9.3.2.2).
MAX_CONTEXTS = 128
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class CannotSend(Exception):
    """An instance that could not even be offered to the peer (no usable context)."""


class CannotAssociate(Exception):
    """The peer could not be reached, or it rejected or aborted the association."""


def set_nodelay(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: disable Nagle's algorithm on the association's socket.

    With Nagle on, each small PDU (a C-STORE-RSP, a C-FIND-RSP) waits for the peer's delayed
    ACK, up to 40 ms on Linux. pynetdicom has no option for it.
    """
    try:
        sock = event.assoc.dul.socket.socket
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as exc:  # a closed socket: nothing to tune
        logger.debug("cannot set TCP_NODELAY: %s", exc)


def connection_handlers() -> list[Any]:
    """Event handlers for the associations we open."""
    return [(evt.EVT_CONN_OPEN, set_nodelay)]


def scu_entity(settings: Settings, ae_title: str | None = None) -> AE:
    """An application entity for associations we request, with our identity and timeouts."""
    ae = AE(ae_title=ae_title or settings.dimse_ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.maximum_pdu_size = settings.dimse_max_pdu
    ae.acse_timeout = 30
    ae.dimse_timeout = 120
    ae.network_timeout = 300
    ae.connection_timeout = 15
    return ae


def associate(
    ae: AE,
    peer: Peer,
    contexts: Sequence[PresentationContext],
    *,
    settings: Settings,
    ext_neg: Sequence[Any] = (),
) -> Any:
    """An established association with ``peer`` (its listening host and port), over DICOM
    TLS when the peer is marked ``tls`` (``cloudfilm.dimse.tls``).

    Raises
    ------
    CannotAssociate
        When the connection fails (TLS handshake included), TLS is needed but not configured,
        or the peer rejects or aborts the request.
    """
    tls_args = None
    if peer.tls:
        try:
            tls_args = client_tls_args(settings, peer.host)
        except (TlsNotConfigured, OSError, ssl.SSLError) as exc:
            raise CannotAssociate(f"{peer.ae_title} needs DICOM TLS: {exc}") from None
    connected = threading.Event()
    assoc = ae.associate(
        peer.host,
        peer.port,
        contexts=list(contexts),
        ae_title=peer.ae_title,
        max_pdu=settings.dimse_max_pdu,
        ext_neg=list(ext_neg) or None,
        tls_args=tls_args,
        evt_handlers=[*connection_handlers(), (evt.EVT_CONN_OPEN, lambda _e: connected.set())],
    )
    if assoc.is_established:
        return assoc
    if not connected.is_set() and tls_args is not None:
        why = "could not be reached, or the TLS handshake failed (certificate or name; see the log)"
    elif not connected.is_set():
        why = "could not be reached (no connection)"
    elif assoc.is_rejected:
        why = "rejected the association"
    elif assoc.is_aborted:
        why = "aborted the association request"
    else:
        why = "did not answer the association request"
    raise CannotAssociate(f"{peer.ae_title} at {peer.host}:{peer.port} {why}")


def exchange(assoc: Any, req: Any, context_id: int, *, timeout: float | None = None) -> Any:
    """Send a DIMSE request and wait for its response, with the association's reactor paused.

    Usable from the association's own thread (inside a handler) and from any other thread.
    Returns the response primitive, or None when none came: the wait ends early when the peer
    aborts, the connection drops or the peer asks to release. Requests the peer sends
    meanwhile are put back for the reactor, in order. After a timeout the association is
    aborted (PS3.7 does not allow a late response to be matched).
    """
    assoc._reactor_checkpoint.clear()
    rsp = None
    stashed: list[Any] = []
    try:
        while not assoc._is_paused and assoc.is_established:
            time.sleep(0.0001)
        assoc.dimse.send_msg(req, context_id)
        limit = timeout if timeout is not None else float(assoc.dimse_timeout or 120)
        deadline = time.monotonic() + limit
        while rsp is None and time.monotonic() < deadline:
            try:
                item = assoc.dimse.msg_queue.get(timeout=0.05)
            except queue.Empty:
                if ending(assoc):
                    break
                continue
            msg = item[1]
            if msg is None:  # pynetdicom's marker of an aborted association
                break
            if msg.is_valid_response and msg.MessageIDBeingRespondedTo == req.MessageID:
                rsp = msg
            elif msg.is_valid_request:
                stashed.append(item)
            else:
                logger.warning("unexpected %s while waiting for a response", msg.msg_type)
    finally:
        if stashed:
            with assoc.dimse.msg_queue.mutex:
                assoc.dimse.msg_queue.queue.extendleft(reversed(stashed))
        assoc._reactor_checkpoint.set()
    if rsp is None and assoc.is_established and not ending(assoc):
        assoc._handle_no_response()
    return rsp


def ending(assoc: Any) -> bool:
    """Whether the association is going away: aborted, disconnected, or release requested."""
    from pynetdicom.pdu_primitives import A_RELEASE

    if assoc.acse.is_aborted() or not assoc.dul.is_alive() or not assoc.is_established:
        return True
    pending = assoc.dul.peek_next_pdu()
    return isinstance(pending, A_RELEASE) and pending.result is None


def proposed_contexts(instances: Sequence[StoredInstance]) -> list[PresentationContext]:
    """Presentation contexts to propose for sending ``instances`` (PS3.8 9.3.2.2).

    One context for each SOP class and stored transfer syntax, so that the peer can accept each
    original as it is; one more per SOP class offering the uncompressed syntaxes not proposed
    yet, as a fall-back for transcoding. Above 128 contexts, one context per SOP class with all
    of them.
    """
    pairs = list(dict.fromkeys((i.sop_class_uid, i.transfer_syntax_uid) for i in instances))
    classes = list(dict.fromkeys(sop for sop, _ in pairs))
    contexts = [build_context(sop, [ts]) for sop, ts in pairs]
    for sop in classes:
        missing: list[str | UID] = [ts for ts in UNCOMPRESSED if (sop, ts) not in pairs]
        if missing:
            contexts.append(build_context(sop, missing))
    if len(contexts) > MAX_CONTEXTS:
        contexts = []
        for sop in classes[:MAX_CONTEXTS]:
            syntaxes = [ts for s, ts in pairs if s == sop]
            syntaxes += [ts for ts in UNCOMPRESSED if ts not in syntaxes]
            contexts.append(build_context(sop, syntaxes))
    return contexts


class StoredInstanceSender:
    """Sends stored instances as C-STORE-RQs on one association (PS3.7 9.3.1)."""

    def __init__(
        self, assoc: Any, archive: Archive, *, originator: tuple[str, int] | None = None
    ) -> None:
        self.assoc = assoc
        self.archive = archive
        #: Move Originator AE Title and Message ID (C-MOVE sub-operations only).
        self.originator = originator
        #: The transfer syntax the last instance sent was transcoded to, or None.
        self.transcoded_to: str | None = None
        self._broken = False

    @property
    def usable(self) -> bool:
        """False once the association ended or a response never came."""
        return bool(self.assoc.is_established) and not self._broken

    def send(self, instance: StoredInstance, msg_id: int) -> int | None:
        """Send one instance; the peer's status, or None when no response came.

        Raises
        ------
        CannotSend
            When no accepted presentation context can carry the instance, even transcoded.
        """
        exact, other = self._contexts(instance)
        self.transcoded_to = None
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
                self.transcoded_to = str(context.transfer_syntax[0])
                return self._exchange(req, int(context.context_id))

    def _exchange(self, req: Any, context_id: int) -> int | None:
        rsp = exchange(self.assoc, req, context_id)
        if rsp is None:
            self._broken = True
            return None
        return int(rsp.Status)

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
            raise CannotSend(
                f"{instance.sop_instance_uid}: the peer accepted no presentation context for "
                f"SOP class {instance.sop_class_uid}"
            )
        source = instance.transfer_syntax_uid
        possible = [
            cx for cx in usable if transcode.can_transcode(source, str(cx.transfer_syntax[0]))
        ]
        if not possible:
            offered = ", ".join(str(cx.transfer_syntax[0]) for cx in usable)
            raise CannotSend(
                f"{instance.sop_instance_uid} is stored as {source}; the peer accepts only "
                f"{offered} for this SOP class and it cannot be transcoded"
            )
        target = min(possible, key=lambda cx: _preference(str(cx.transfer_syntax[0])))
        target_ts = str(target.transfer_syntax[0])
        tmp_dir = self.archive.settings.tmp_dir
        tmp_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=tmp_dir, suffix=".dcm") as out:
            try:
                with path.open("rb") as blob:
                    transcode.transcode_into(
                        blob, instance.dataset_offset, source, target_ts, cast(BinaryIO, out)
                    )
                out.flush()
            except Exception as exc:
                raise CannotSend(
                    f"{instance.sop_instance_uid}: transcoding {source} to {target_ts} "
                    f"failed: {exc}"
                ) from exc
            logger.info("sending %s transcoded to %s", instance.sop_instance_uid, target_ts)
            yield Path(out.name), target

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


def _preference(transfer_syntax: str) -> int:
    order = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    return order.index(UID(transfer_syntax)) if transfer_syntax in order else len(order)


# ------------------------------------------------------------------------- sending a list


@dataclass(frozen=True)
class SendOutcome:
    """What happened to one instance sent to a peer."""

    instance: StoredInstance
    #: The peer's C-STORE status; None when no response came or nothing was sent.
    status: int | None
    #: Why it failed, when it did (our words, or the peer's status).
    error: str = ""
    #: The transfer syntax it was transcoded to, when the peer did not accept the stored one.
    transcoded_to: str | None = None

    @property
    def category(self) -> str:
        """``Success``, ``Warning`` or ``Failure`` (PS3.4 B.2.3)."""
        if self.status is None:
            return "Failure"
        return str(code_to_category(self.status))


def send_instances(
    archive: Archive,
    ae: AE,
    peer: Peer,
    instances: Sequence[StoredInstance],
    *,
    on_outcome: Callable[[SendOutcome], None] | None = None,
) -> list[SendOutcome]:
    """Send ``instances`` to ``peer`` over one association; one outcome per instance.

    Raises
    ------
    CannotAssociate
        When no association could be established (nothing was sent).
    """
    if not instances:
        return []
    assoc = associate(ae, peer, proposed_contexts(instances), settings=archive.settings)
    sender = StoredInstanceSender(assoc, archive)
    outcomes: list[SendOutcome] = []
    try:
        for index, instance in enumerate(instances):
            outcome = _send_one(sender, instance, index % 65535 + 1)
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes


def _send_one(sender: StoredInstanceSender, instance: StoredInstance, msg_id: int) -> SendOutcome:
    if not sender.usable:
        return SendOutcome(instance, None, "the association ended before it was sent")
    try:
        code = sender.send(instance, msg_id)
    except CannotSend as exc:
        return SendOutcome(instance, None, str(exc))
    except OSError as exc:  # the blob could not be read
        return SendOutcome(instance, None, f"cannot read the stored instance: {exc}")
    if code is None:
        return SendOutcome(instance, None, "no response from the peer")
    outcome = SendOutcome(instance, code, transcoded_to=sender.transcoded_to)
    if outcome.category == "Failure":
        return SendOutcome(instance, code, f"the peer answered 0x{code:04X}", sender.transcoded_to)
    return outcome
