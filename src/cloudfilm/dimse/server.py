"""The DICOM (DIMSE) server of an archive: one pynetdicom application entity as an SCP.

Services (PS3.4): Verification (C-ECHO), Storage (C-STORE, every storage SOP class, also
private ones: pynetdicom's ``UNRESTRICTED_STORAGE_SERVICE``), Query/Retrieve in the Patient Root
and Study Root models (C-FIND, C-MOVE, C-GET). Each association runs on its own thread.

Admission (PS3.8 7.1.1): when an A-ASSOCIATE-RQ arrives, the calling AE title and the address
it comes from are checked against the known peers (``cloudfilm.dimse.peers``). An unknown
AE title, or a known one calling from an address it may not use, is rejected with
A-ASSOCIATE-RJ "calling AE title not recognised" (result 1, source 1, reason 3); with
``dimse_accept_unknown_storage`` an unknown AE is admitted for C-ECHO and C-STORE only. The
Query/Retrieve contexts a peer may not use are not accepted (PS3.8 9.3.3.2: result 3,
"abstract syntax not supported"), and every handler asks the association's principal again.

Storage Commitment (N-ACTION, ``commitment``) is accepted from known peers allowed to store;
the Basic Grayscale and Color Print Management Meta SOP Classes (the virtual film printer,
``printing``) from peers allowed to print.
Beside the server run the background workers (``workers``): the forwarding queue of the routing
rules and the retries of commitment reports.

Sockets get ``TCP_NODELAY`` when they open (an ``EVT_CONN_OPEN`` handler; pynetdicom has no
option): with Nagle's algorithm on, each small PDU such as a C-STORE-RSP waits for the
delayed ACK of the peer, which costs up to 40 ms per instance. The same handler gives each
accepted association event-driven loops instead of pynetdicom's 1 ms polling (``reactor``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import weakref
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config, evt
from pynetdicom.transport import ThreadedAssociationServer

from cloudfilm.archive import Archive
from cloudfilm.core.config import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from cloudfilm.dimse import commitment, find, retrieve
from cloudfilm.dimse.commitment import STORAGE_COMMITMENT
from cloudfilm.dimse.find import PATIENT_ROOT_FIND, STUDY_ROOT_FIND
from cloudfilm.dimse.peers import Peer, PeerDirectory, Permission
from cloudfilm.dimse.principal import REJECT_CALLING_AE, DimsePrincipal, admit
from cloudfilm.dimse.printing import PRINT_CONTEXTS, PrintScp
from cloudfilm.dimse.reactor import make_event_driven, tune_server
from cloudfilm.dimse.scu import set_nodelay
from cloudfilm.dimse.selection import (
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)
from cloudfilm.dimse.store import handle_echo, handle_store
from cloudfilm.dimse.tls import admitted_over_tls, peer_certificate_subject, server_context
from cloudfilm.dimse.workers import DimseWorkers

logger = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
#: Transfer syntaxes of the Verification and Query/Retrieve contexts we accept.
COMMAND_SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]
#: The Query/Retrieve SOP classes and the permission each needs.
QUERY_RETRIEVE: dict[str, Permission] = {
    PATIENT_ROOT_FIND: Permission.QUERY,
    STUDY_ROOT_FIND: Permission.QUERY,
    PATIENT_ROOT_MOVE: Permission.RETRIEVE,
    STUDY_ROOT_MOVE: Permission.RETRIEVE,
    PATIENT_ROOT_GET: Permission.RETRIEVE,
    STUDY_ROOT_GET: Permission.RETRIEVE,
}


def configure_pynetdicom() -> None:
    """The process-wide pynetdicom settings the server relies on (idempotent).

    Received data sets go to a temporary file as they arrive and are kept as received
    (``STORE_RECV_CHUNKED_DATASET``); any storage SOP class is accepted, private ones too
    (``UNRESTRICTED_STORAGE_SERVICE``); pynetdicom's per-message logging handlers, which format
    every message even when nothing is logged, are off.
    """
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


def on_connection(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler of accepted connections: TCP_NODELAY and event-driven loops
    (``cloudfilm.dimse.reactor``), before the association's threads start."""
    set_nodelay(event)
    make_event_driven(event.assoc)


def _may_use(principal: DimsePrincipal, context: Any) -> bool:
    """Whether to accept a proposed context from ``principal`` (others: PS3.8 9.3.3.2 result 3).

    Query/Retrieve contexts need their permission; Storage Commitment needs a known peer
    allowed to store (its report may need a new association to the peer's host and port);
    the Print Management contexts (``printing``) need ``print``.
    """
    syntax = str(context.abstract_syntax)
    if syntax in QUERY_RETRIEVE:
        return principal.can(QUERY_RETRIEVE[syntax])
    if syntax == STORAGE_COMMITMENT:
        return principal.peer is not None and principal.can(Permission.STORE)
    if syntax in PRINT_CONTEXTS:
        return principal.can(Permission.PRINT)
    return True


class _SharedPortServer(ThreadedAssociationServer):
    """A listener whose port other processes may bind too (``SO_REUSEPORT``): the kernel
    spreads new connections over the processes listening on it."""

    def server_bind(self) -> None:
        if self.socket is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class DimseServer:
    """The DIMSE SCP of ``archive``; ``start()`` serves in background threads."""

    def __init__(
        self,
        archive: Archive,
        *,
        host: str | None = None,
        port: int | None = None,
        ae_title: str | None = None,
        workers: bool = True,
        tls_port: int | None = None,
        share_port: bool = False,
    ) -> None:
        settings = archive.settings
        self.archive = archive
        self.ae_title = ae_title or settings.dimse_ae_title
        self.host = host if host is not None else settings.dimse_host
        self.port = port if port is not None else settings.dimse_port
        #: The DICOM TLS listener's port (0: any free one), or None for none.
        self.tls_port = tls_port if tls_port is not None else settings.dimse_tls_port
        self._tls_server: Any = None
        #: Bind with SO_REUSEPORT, so that other processes serve the same port(s).
        self.share_port = share_port
        self.directory = PeerDirectory(archive)
        self._principals: weakref.WeakKeyDictionary[Any, DimsePrincipal] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._server: Any = None
        self._stopped = threading.Event()
        configure_pynetdicom()
        self.ae = self._application_entity()
        #: The forwarding queue and commitment report retries, on this AE; the reports that
        #: follow an N-ACTION at once are sent by ``workers.reporter`` whether it runs or not.
        self.workers = DimseWorkers(archive, ae=self.ae, ae_title=self.ae_title)
        self._run_workers = workers
        #: The virtual film printer (Print Management SCP), its state per association.
        self.printer = PrintScp(archive, self.principal_of, self.ae_title)

    def _application_entity(self) -> AE:
        settings = self.archive.settings
        ae = AE(ae_title=self.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.maximum_pdu_size = settings.dimse_max_pdu
        ae.maximum_associations = settings.dimse_max_associations
        ae.acse_timeout = 30
        ae.dimse_timeout = 120
        ae.network_timeout = 300
        ae.add_supported_context(VERIFICATION, COMMAND_SYNTAXES)
        for sop_class in QUERY_RETRIEVE:
            ae.add_supported_context(sop_class, COMMAND_SYNTAXES)
        ae.add_supported_context(STORAGE_COMMITMENT, COMMAND_SYNTAXES)
        for sop_class in PRINT_CONTEXTS:
            ae.add_supported_context(sop_class, COMMAND_SYNTAXES)
        ae.add_requested_context(VERIFICATION)
        return ae

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Listen and serve in background threads; returns once the socket is bound."""
        if self.archive.settings.log_level.upper() != "DEBUG":
            logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        retrieve.install(self.ae, self)
        find.install(self.ae, self.archive, self.ae_title, self.principal_of)
        commitment.install(self.ae, self.archive, self.principal_of, self.workers.reporter)
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, on_connection),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            *self.printer.handlers(),
        ]
        self._server = self._listen(self.port, handlers)
        self.port = int(self._server.server_address[1])
        if self.tls_port is not None:
            self._tls_server = self._listen(
                self.tls_port, handlers, server_context(self.archive.settings)
            )
            self.tls_port = int(self._tls_server.server_address[1])
            logger.info("DICOM TLS listening on %s:%d", self.host, self.tls_port)
        if self._run_workers:
            self.workers.start()
        logger.info("DIMSE server %s listening on %s:%d", self.ae_title, self.host, self.port)

    def _listen(
        self, port: int, handlers: list[Any], ssl_context: ssl.SSLContext | None = None
    ) -> Any:
        """A listener on ``port``, accepting in a background thread; with ``share_port``, one
        that other processes may bind too (``cloudfilm.dimse.processes``)."""
        server_class = _SharedPortServer if self.share_port else ThreadedAssociationServer
        server = self.ae.make_server(
            (self.host, port),
            ssl_context=ssl_context,
            evt_handlers=handlers,
            server_class=server_class,
        )
        thread = threading.Thread(target=server.serve_forever, name=f"dimse-accept-{port}")
        thread.daemon = True
        thread.start()
        self.ae._servers.append(server)
        tune_server(server)
        return server

    def stop(self) -> None:
        """Stop listening, abort the associations still open, release the port."""
        if self._tls_server is not None:
            self._shutdown_listener(self._tls_server, self.tls_port or 0)
            self._tls_server = None
        if self._server is not None:
            self._shutdown_listener(self._server, self.port)
            self._server = None
        self.workers.stop()
        self.ae.shutdown()
        retrieve.uninstall(self.ae)
        find.uninstall(self.ae)
        commitment.uninstall(self.ae)
        self._stopped.set()

    @property
    def started(self) -> bool:
        """Whether ``start()`` has run (and the server listens, unless stopped since)."""
        return self._server is not None or self._stopped.is_set()

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` has run."""
        return self._stopped.is_set()

    def _shutdown_listener(self, server: Any, port: int) -> None:
        """Stop the accept loop now, not at its next 0.5 s poll: a connection wakes it."""
        stopping = threading.Thread(target=server.shutdown, name="dimse-shutdown")
        stopping.start()
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = "::1" if host == "::" else host
        while stopping.is_alive():
            with contextlib.suppress(OSError):
                socket.create_connection((host, port), timeout=0.2).close()
            stopping.join(0.05)

    def serve_forever(self) -> None:
        """Serve (starting if needed) until ``stop()`` is called from another thread or Ctrl-C."""
        if self._server is None:
            self.start()
        try:
            while not self._stopped.wait(1.0):
                pass
        except KeyboardInterrupt:
            logger.info("stopping the DIMSE server")
        finally:
            self.stop()

    def __enter__(self) -> DimseServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ admission

    def _on_requested(self, event: Any) -> None:
        """Admit or reject an A-ASSOCIATE-RQ (PS3.8 7.1.1); never raises."""
        assoc = event.assoc
        try:
            calling = str(assoc.requestor.primitive.calling_ae_title).strip()
            address = str(assoc.requestor.address)
            over_tls = admitted_over_tls(assoc)
            decision = admit(
                self.directory,
                calling,
                address,
                accept_unknown_storage=self.archive.settings.dimse_accept_unknown_storage,
                over_tls=over_tls,
            )
        except Exception:
            logger.exception("association admission failed")
            decision = None
        if decision is None or decision.principal is None:
            reason = decision.reason if decision else "admission failed"
            logger.warning("association rejected: %s", reason)
            assoc.acse.send_reject(*REJECT_CALLING_AE)
            evt.trigger(assoc, evt.EVT_REJECTED, {})
            assoc.kill()
            return
        principal = decision.principal
        with self._lock:
            self._principals[assoc] = principal
        assoc.acceptor.supported_contexts = [
            cx for cx in assoc.acceptor.supported_contexts if _may_use(principal, cx)
        ]
        if over_tls:
            logger.info(
                "DICOM TLS association from %s, certificate %s",
                principal,
                peer_certificate_subject(assoc) or "(none)",
            )
        else:
            logger.debug("association from %s admitted", principal)

    def _on_closed(self, event: Any) -> None:
        with self._lock:
            self._principals.pop(event.assoc, None)
        self.printer.forget(event.assoc)

    def principal_of(self, assoc: Any) -> DimsePrincipal | None:
        with self._lock:
            return self._principals.get(assoc)

    def find_peer(self, ae_title: str) -> Peer | None:
        return self.directory.get(ae_title)

    # ------------------------------------------------------------------ services

    def _on_echo(self, event: Any) -> int:
        return handle_echo(event, self.principal_of(event.assoc))

    def _on_store(self, event: Any) -> Dataset:
        return handle_store(event, self.archive, self.principal_of(event.assoc))
