"""Event-driven loops for the associations the DIMSE server accepts.

pynetdicom 3.0 runs two polling loops per association: the upper layer (DUL) thread checks
its socket and queues, sleeping 1 ms whenever there was nothing to do, and the association
thread checks for DIMSE messages and A-RELEASE/A-ABORT, sleeping 1 ms on every turn. Each
request and each response waits for one or two of those sleeps, so a short association
(A-ASSOCIATE, one C-ECHO or C-FIND, A-RELEASE) spends ≈ 6 ms asleep on loopback: about a
third of what ``findscu`` sees, and the whole gap to Orthanc's C-FIND latency
(``bench/README.md``, DIMSE section). Polling faster would burn CPU for every idle
association.

``make_event_driven`` replaces both loops of one association, before its threads start, by
loops that block until there is work: the DUL thread in ``select()`` on its socket and a wake-up
socket pair, written to whenever something is queued for the DUL; the association thread,
when idle, in ``select()`` on the socket itself (a request it reads is served at once, without
a hand-over from the DUL thread) and on its own wake-up pair. The loop bodies are pynetdicom's
own (``DULServiceProvider.run_reactor``, ``Association._run_reactor``); each DUL turn (send one
primitive or read one PDU, then one state machine event) runs under one lock, in whichever
thread does it, so the order of PDUs and events is pynetdicom's. Both loops still wake every
``IDLE_WAIT`` seconds to check the ARTIM and network idle timers.

``tune_server`` cuts three more per-association costs of pynetdicom's server: the supported
presentation contexts are deep-copied for every association (re-validating every UID with a
regular expression: ≈ 1 ms of CPU); a thread is started only to create the association, which
starts its own; and a full ``gc.collect()`` runs in the accepting thread every 60 connections.

Only the pynetdicom versions this was written against are changed (``SUPPORTED``); with
another version the associations keep pynetdicom's loops, which are correct, only slower.
"""

from __future__ import annotations

import copy
import functools
import logging
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import pynetdicom
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.presentation import PresentationContext

logger = logging.getLogger(__name__)

#: pynetdicom versions whose loops ``make_event_driven`` reproduces (major.minor).
SUPPORTED = ("3.0",)
#: Longest wait without work, in seconds: the resolution of the ARTIM and idle timers.
IDLE_WAIT = 0.05
#: Connections between two ``gc.collect()`` of pynetdicom's server (its default is 60).
GC_EVERY = 5000


def supported() -> bool:
    """Whether the installed pynetdicom is one whose loops this module reproduces."""
    return ".".join(pynetdicom.__version__.split(".")[:2]) in SUPPORTED


class _PauseHandshake:
    """``Association._is_paused`` made safe: the reactor never takes a message once a thread
    has paused it.

    pynetdicom's reactor loop sets ``_is_paused = True``, waits at ``_reactor_checkpoint``,
    sets ``_is_paused = False`` and then takes the next DIMSE message off the queue. A thread
    that sends (``send_c_store`` and the like) clears the checkpoint and goes on as soon as
    ``_is_paused`` is true. If it does so just after the reactor passed the checkpoint but
    before it set ``_is_paused`` back to false, both run: the reactor takes the response meant
    for the sender ("Received unexpected C-STORE service message") and the sender waits for it
    until its DIMSE timeout ("no response from the peer"). The window is a few bytecodes, but
    a loaded machine preempts threads there (it failed CI with four test workers on two cores).

    Here, un-pausing first publishes ``False`` and then looks at the checkpoint once more: if
    a thread cleared it meanwhile, the reactor pauses again and waits. A sender that cleared
    the checkpoint later sees ``False`` and waits for the next pause, as pynetdicom intends.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_cloudfilm_paused"

    def __get__(self, assoc: Any, owner: type | None = None) -> Any:
        if assoc is None:
            return self
        return assoc.__dict__.get(self.slot, False)

    def __set__(self, assoc: Any, paused: bool) -> None:
        state = assoc.__dict__
        if paused:
            state[self.slot] = True
            return
        checkpoint = state.get("_reactor_checkpoint")
        while True:
            state[self.slot] = False
            if checkpoint is None or checkpoint.is_set():
                return
            state[self.slot] = True  # a sender paused us after the checkpoint: stay paused
            checkpoint.wait()


def install_pause_handshake() -> bool:
    """Give pynetdicom's ``Association`` the safe ``_is_paused`` (:class:`_PauseHandshake`),
    for every association of this process, requestors included; only for ``SUPPORTED``
    versions. Returns whether it is installed."""
    from pynetdicom.association import Association

    if not supported():
        return False
    if not isinstance(Association.__dict__.get("_is_paused"), _PauseHandshake):
        handshake = _PauseHandshake()
        handshake.__set_name__(Association, "_is_paused")
        Association._is_paused = handshake  # type: ignore[assignment]
    return True


class _WakingQueue(queue.Queue[Any]):
    """A queue that calls ``wake`` after every ``put``."""

    def __init__(self, wake: Callable[[], None], items: queue.Queue[Any]) -> None:
        super().__init__()
        self._wake = wake
        with items.mutex:
            self.queue.extend(items.queue)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class _Signals:
    """How the two loops of one association are woken up."""

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)
        #: Set when the association thread has work: a DIMSE message, an ACSE primitive.
        self.work = threading.Event()
        #: The association thread's own wake-up pair, for when it waits in ``select()``.
        self.assoc_reader, self.assoc_writer = socket.socketpair()
        self.assoc_reader.setblocking(False)
        self.assoc_writer.setblocking(False)
        #: True while the idle association thread watches the socket itself (the DUL thread
        #: then leaves the socket alone, so that a request is read and served by one thread).
        self.assoc_watching = False
        #: True while the DUL thread is (about to be) blocked in ``select()``: only then does
        #: a wake-up need a write (which also hands the GIL to the DUL thread at once).
        self.dul_idle = False
        #: Held for each turn of the DUL's work, by the DUL thread or by a thread that queued
        #: something to send and does that turn itself (``_send_now``).
        self.turn = threading.Lock()

    def wake_dul(self) -> None:
        if not self.dul_idle:
            return  # the DUL thread is awake and looks at its queues before it waits again
        try:
            self.writer.send(b"\0")
        except OSError:  # the pair is full (a wake-up is pending anyway) or closed
            pass

    def wake_association(self) -> None:
        self.work.set()
        if self.assoc_watching:
            try:
                self.assoc_writer.send(b"\0")
            except OSError:
                pass

    def drain(self, reader: socket.socket | None = None) -> None:
        try:
            while (reader or self.reader).recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        for end in (self.reader, self.writer, self.assoc_reader, self.assoc_writer):
            end.close()


class _SharedUIDContext(PresentationContext):
    """A presentation context whose deep copy shares its (immutable) UIDs."""

    def __deepcopy__(self, memo: dict[int, Any]) -> PresentationContext:
        clone = copy.copy(self)
        clone._transfer_syntax = list(self._transfer_syntax)
        return clone


def tune_server(server: Any) -> bool:
    """Cut pynetdicom's per-connection costs on a running ``ThreadedAssociationServer``.

    Returns False (and changes nothing) with an unsupported pynetdicom version.
    """
    if not supported():
        return False
    shared = []
    for context in server.contexts:
        clone = _SharedUIDContext()
        clone.__dict__.update(copy.deepcopy(context).__dict__)
        shared.append(clone)
    server.contexts = shared
    # Create each association in the accepting thread (a few hundred microseconds) instead of
    # in a thread started for that alone; the association runs on its own thread anyway.
    server.process_request = server.process_request_thread
    server._gc = [0, GC_EVERY]
    return True


def make_event_driven(assoc: Any) -> bool:
    """Give an accepted association event-driven loops; call before its thread starts.

    Returns False (and changes nothing) for a requestor, an association already running or
    an unsupported pynetdicom version.
    """
    if not supported() or not assoc.is_acceptor or assoc._started_dul or assoc.is_alive():
        return False
    dul = assoc.dul
    signals = _Signals()
    dul.to_provider_queue = _WakingQueue(
        functools.partial(_send_now, dul, signals), dul.to_provider_queue
    )
    dul.event_queue = _WakingQueue(signals.wake_dul, dul.event_queue)
    dul.to_user_queue = _WakingQueue(signals.wake_association, dul.to_user_queue)
    assoc.dimse.msg_queue = _WakingQueue(signals.wake_association, assoc.dimse.msg_queue)
    dul._target = functools.partial(_run_dul, dul, signals)
    dul.kill_dul = functools.partial(_kill_dul, dul, signals)
    dul.stop_dul = functools.partial(_stop_dul, dul, signals)
    assoc._run_reactor = functools.partial(_run_association, assoc, signals)
    dul.receive_pdu = functools.partial(_receive_pdu, assoc, signals, dul.receive_pdu)
    return True


# ------------------------------------------------------------------------------- DUL thread


def _kill_dul(dul: Any, signals: _Signals) -> None:
    dul._kill_thread = True
    signals.wake_dul()


def _stop_dul(dul: Any, signals: _Signals) -> bool:
    """``DULServiceProvider.stop_dul``: stop the loop once in Sta1 (idle), woken at once."""
    if dul.state_machine.current_state != "Sta1":
        return False
    _kill_dul(dul, signals)
    if threading.current_thread() is not dul:
        dul.join()
    return True


def _run_dul(dul: Any, signals: _Signals) -> None:
    """The DUL thread: pynetdicom's ``run_reactor``, waiting in ``select()`` when idle."""
    try:
        _dul_loop(dul, signals)
    finally:
        signals.wake_association()  # the association thread notices that the DUL stopped
        signals.close()


def _dul_loop(dul: Any, signals: _Signals) -> None:
    dul._idle_timer.start()
    idle = False
    while True:
        if not dul.assoc._dul_ready.is_set():
            dul.assoc._dul_ready.set()
        if idle:
            _wait_for_io(dul, signals)
        if dul._kill_thread:
            break
        with signals.turn:
            outcome = _turn(dul, read=not signals.assoc_watching)
        if outcome is None:
            return
        idle = not outcome


def _turn(dul: Any, *, read: bool = True) -> bool | None:
    """One turn of pynetdicom's DUL loop: send one primitive or (``read``) receive one PDU,
    then handle one state machine event. True when an event was handled, False when there was
    nothing to do, None when the DUL failed (the association is then aborted)."""
    # The ARTIM timer first, so that its event is queued ahead of any other.
    if dul.artim_timer.expired:
        dul.event_queue.put("Evt18")
    try:
        # Either encode and send one primitive or receive and decode one PDU per turn.
        if dul._process_recv_primitive():
            pass
        elif read and dul._is_transport_event():
            dul._idle_timer.restart()
    except Exception:
        logger.exception("DUL failed; aborting the association")
        _abort_hard(dul)
        return None
    try:
        event = dul.event_queue.get(block=False)
    except queue.Empty:
        return False
    dul.state_machine.do_action(event)
    return True


def _send_now(dul: Any, signals: _Signals) -> None:
    """After a primitive is queued for the DUL: do the DUL's turns for it in this thread.

    Handing each PDU to the DUL thread costs a thread switch (and a GIL hand-over) per PDU;
    a C-FIND answer is several PDUs. When no turn is under way, the thread that queued the
    primitive encodes and sends it itself, under the same lock as the DUL thread's turns, so
    the order of PDUs and of state machine events is the DUL's. Otherwise (the DUL thread is
    busy, or TLS, whose connection objects want one thread) the DUL thread is woken.
    """
    transport = dul.socket
    if isinstance(getattr(transport, "socket", None), ssl.SSLSocket):
        signals.wake_dul()
        return
    if not signals.turn.acquire(blocking=False):
        signals.wake_dul()  # the DUL thread is in a turn and looks at its queue afterwards
        return
    try:
        while dul.to_provider_queue.qsize() and not dul._kill_thread:
            if not dul._process_recv_primitive():
                break
            try:
                event = dul.event_queue.get(block=False)
            except queue.Empty:
                break
            dul.state_machine.do_action(event)
    except Exception:
        logger.exception("DUL failed while sending; aborting the association")
        _abort_hard(dul)
    finally:
        signals.turn.release()
    if dul.to_provider_queue.qsize() or dul.event_queue.qsize():
        signals.wake_dul()


def _wait_for_io(dul: Any, signals: _Signals) -> None:
    """Block until the socket is readable, something is queued for the DUL, or IDLE_WAIT."""
    signals.dul_idle = True  # before looking at the queues: a put after this look wakes us
    try:
        _select(dul, signals)
    finally:
        signals.dul_idle = False


def _select(dul: Any, signals: _Signals) -> None:
    if dul.to_provider_queue.qsize() or dul.event_queue.qsize():
        return
    transport = dul.socket
    sock = getattr(transport, "socket", None) if transport is not None else None
    waitables: list[Any] = [signals.reader]
    if (
        sock is not None
        and getattr(transport, "_is_connected", False)
        and not signals.assoc_watching
    ):
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return  # TLS may hold decrypted bytes that select() cannot see
        waitables.append(sock)
    try:
        select.select(waitables, [], [], IDLE_WAIT)
    except (OSError, ValueError):  # the socket closed under us: the loop will notice
        time.sleep(0.001)
    signals.drain()


def _abort_hard(dul: Any) -> None:
    """What pynetdicom does when its DUL loop fails: an A-ABORT, bypassing the state machine."""
    pdu = A_ABORT_RQ()
    pdu.source = 0x02
    pdu.reason_diagnostic = 0x00
    try:
        dul.socket.send(pdu.encode())
    except Exception:  # the connection is already gone
        logger.debug("could not send A-ABORT", exc_info=True)
    dul.assoc.is_aborted = True
    dul.assoc.is_established = False
    dul.assoc._kill = True
    dul._kill_thread = True


# ----------------------------------------------------------------------- association thread


def _run_association(assoc: Any, signals: _Signals) -> None:
    """pynetdicom's ``Association._run_reactor``, waiting on an event instead of sleeping.

    While it waits, the reactor counts as paused (``_is_paused``): a thread that wants to use
    the association (pynetdicom's ``send_*`` methods, our storage commitment reports) clears
    ``_reactor_checkpoint`` and may go on at once, and the loop stops at the checkpoint before
    it touches a queue again.
    """
    from pynetdicom import evt

    assoc._is_paused = False
    while not assoc._kill:
        if assoc.dimse.msg_queue.empty():
            assoc._is_paused = True
            _idle(assoc, signals)
        signals.work.clear()
        assoc._is_paused = True
        assoc._reactor_checkpoint.wait()
        assoc._is_paused = False

        context_id, msg = assoc.dimse.get_msg(block=False)
        if msg:
            assoc._serve_request(msg, context_id)

        if assoc.is_established and assoc.acse.is_release_requested():
            assoc.acse.send_release(is_response=True)
            assoc.is_released = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_RELEASED, {})
            assoc.kill()
            return

        if assoc.acse.is_aborted():
            assoc.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires
            assoc.is_aborted = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_ABORTED, {})
            assoc.kill()
            return

        if not assoc.dul.is_alive():
            assoc.kill()
            return

        if assoc.dul.idle_timer_expired():
            logger.warning("network timeout on an association from %s", _peer(assoc))
            if assoc.network_timeout_response == "A-RELEASE":
                assoc._is_paused = True
                assoc._reactor_checkpoint.wait()
                assoc.release()
                assoc._is_paused = False
            else:
                assoc.abort()
            assoc.kill()
            return


def _idle(assoc: Any, signals: _Signals) -> None:
    """Wait for work; meanwhile watch the socket and, when a PDU comes, read it in this thread.

    A request read here is served by this thread at once, without waiting for the DUL thread
    to read it and hand it over (a thread switch per request and per A-RELEASE). Whenever
    this thread stops watching, the DUL thread is woken to watch the socket again: it reads
    what comes while a request is being served (C-CANCEL, C-GET sub-operation responses).
    """
    dul = assoc.dul
    transport = dul.socket
    sock = getattr(transport, "socket", None) if transport is not None else None
    plain = sock is not None and not isinstance(sock, ssl.SSLSocket)
    if sock is None or not plain or not getattr(transport, "_is_connected", False):
        signals.work.wait(IDLE_WAIT)
        return
    signals.assoc_watching = True
    try:
        if signals.work.is_set() or not assoc.dimse.msg_queue.empty():
            return
        try:
            readable, _, _ = select.select([sock, signals.assoc_reader], [], [], IDLE_WAIT)
        except (OSError, ValueError):  # closed meanwhile: the loop notices
            return
        signals.drain(signals.assoc_reader)
        if sock in readable and signals.turn.acquire(blocking=False):
            try:
                # Read and handle PDUs while they come, until a message or an ACSE
                # primitive is there for this thread (or nothing more is to be read).
                while not signals.work.is_set() and assoc.dimse.msg_queue.empty():
                    if _turn(dul) is not True:
                        break
            finally:
                signals.turn.release()
    finally:
        signals.assoc_watching = False
        signals.wake_dul()


def _receive_pdu(
    assoc: Any,
    signals: _Signals,
    original: Callable[..., Any],
    wait: bool = False,
    timeout: float | None = None,
) -> Any:
    """``DULServiceProvider.receive_pdu``; the association thread waiting for a primitive (the
    A-ASSOCIATE-RQ) watches the socket meanwhile, like ``_idle``, and reads it itself."""
    dul, dimse = assoc.dul, assoc.dimse
    if wait and threading.current_thread() is assoc:
        deadline = None if timeout is None else time.monotonic() + timeout
        while dul.to_user_queue.empty() and dul.is_alive():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if dimse.msg_queue.empty():
                signals.work.clear()  # nothing for this thread yet: a stale wake-up
            _idle(assoc, signals)
        if deadline is not None:
            timeout = max(0.0, deadline - time.monotonic())
    return original(wait=wait, timeout=timeout)


def _peer(assoc: Any) -> str:
    try:
        return str(assoc.requestor.address)
    except Exception:
        return "?"


install_pause_handshake()
