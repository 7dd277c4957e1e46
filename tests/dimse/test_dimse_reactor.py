"""The server's own association loops and C-FIND response encoding (``dimse/reactor.py``,
``dimse/find.py``): same bytes as pynetdicom, same behaviour, with and without them."""

from __future__ import annotations

import threading
import time
from io import BytesIO

import pytest
from dimse_support import Dcmtk
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from cloudfilm.archive import Archive
from cloudfilm.dimse import DimseServer, Peer, PeerDirectory, Permission, reactor
from cloudfilm.dimse.find import STUDY_ROOT_FIND, find_response_command, p_data
from support.instances import make_dataset, part10

pytestmark = pytest.mark.db


def _pynetdicom_encoding(code: int, identifier: bytes | None, comment: str, max_pdu: int) -> list:
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = 513
    rsp.AffectedSOPClassUID = STUDY_ROOT_FIND
    rsp.Status = code
    if comment:
        rsp.ErrorComment = comment
    if identifier is not None:
        rsp.Identifier = BytesIO(identifier)
    message = C_FIND_RSP()
    message.primitive_to_message(rsp)
    return [p.presentation_data_value_list for p in message.encode_msg(3, max_pdu)]


@pytest.mark.parametrize(
    ("code", "identifier", "comment", "max_pdu"),
    [
        (0xFF00, b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ", "", 16384),
        (0x0000, None, "", 16384),
        (0xA900, None, "Query/Retrieve Level (0008,0052) is missing", 16384),
        (0xA900, None, "odd", 0),
        (0xFF01, bytes(range(256)) * 40, "", 4096),  # fragmented identifier
        (0xFE00, None, "", 64),  # fragmented command set
    ],
)
def test_find_responses_are_encoded_as_pynetdicom_would(
    code: int, identifier: bytes | None, comment: str, max_pdu: int
) -> None:
    command = find_response_command(STUDY_ROOT_FIND, 513, code, identifier is not None, comment)
    ours = [p.presentation_data_value_list for p in p_data(3, command, identifier, max_pdu)]
    assert ours == _pynetdicom_encoding(code, identifier, comment, max_pdu)


def test_accepted_associations_get_event_driven_loops(dimse: DimseServer) -> None:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title="CLOUDFILM")
    try:
        (acceptor,) = dimse.ae.active_associations
        assert acceptor._run_reactor.func is reactor._run_association
        assert acceptor.dul._target.func is reactor._run_dul
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assert reactor.supported()


def test_with_an_unsupported_pynetdicom_the_server_keeps_its_loops(
    archive: Archive, dcmtk: Dcmtk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another pynetdicom version: nothing is changed, and everything still works."""
    monkeypatch.setattr(reactor.pynetdicom, "__version__", "9.9.9")
    assert not reactor.supported()
    assert archive.store(part10(make_dataset(PatientID="LOOPS"))).ok
    PeerDirectory(archive).add(Peer("FINDSCU", "127.0.0.1", 104, frozenset({Permission.QUERY})))
    server = DimseServer(archive, host="127.0.0.1", port=0, workers=False)
    server.start()
    try:
        ae = AE(ae_title="FINDSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="CLOUDFILM")
        (acceptor,) = server.ae.active_associations
        assert not hasattr(acceptor._run_reactor, "func")  # pynetdicom's own bound method
        assoc.release()
        out = dcmtk.run("findscu", "-v", "-S", "-aec", "CLOUDFILM",
                        "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=LOOPS",
                        "127.0.0.1", server.port)  # fmt: skip
    finally:
        server.stop()
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("(Pending)") == 1


def test_many_short_associations_in_a_row(dimse: DimseServer, archive: Archive) -> None:
    """Association after association, each with a C-FIND: nothing leaks or hangs."""
    assert archive.store(part10(make_dataset(PatientID="ROW1"))).ok
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = "ROW1"
    query.StudyInstanceUID = ""
    for _ in range(30):
        assoc = ae.associate("127.0.0.1", dimse.port, ae_title="CLOUDFILM")
        assert assoc.is_established
        answers = [
            s.Status
            for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        ]
        assoc.release()
        assert answers == [0xFF00, 0x0000]
    deadline = time.monotonic() + 10
    while dimse.ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dimse.ae.active_associations == []


def test_a_reactor_paused_by_a_sender_does_not_take_its_response() -> None:
    """The interleaving that lost a C-STORE response under load: the reactor has passed its
    checkpoint (``_is_paused`` still true) when a sender clears it and goes on. Un-pausing must
    then wait for the sender, instead of taking messages off the queue beside it."""
    from pynetdicom.association import Association

    assert reactor.install_pause_handshake()
    assoc = Association(AE(), "requestor")
    assert assoc._is_paused is False and assoc._reactor_checkpoint.is_set()
    assoc._is_paused = True  # the reactor passed ``_reactor_checkpoint.wait()`` ...
    assoc._reactor_checkpoint.clear()  # ... and a sender pauses it, sees it paused, goes on
    unpaused = threading.Event()

    def reactor_turn() -> None:
        assoc._is_paused = False  # what pynetdicom's loop does next
        unpaused.set()

    turn = threading.Thread(target=reactor_turn, daemon=True)
    turn.start()
    assert not unpaused.wait(0.3), "the reactor went on while the sender was exchanging"
    assert assoc._is_paused
    assoc._reactor_checkpoint.set()  # the sender is done
    assert unpaused.wait(5)
    turn.join(5)
    assert assoc._is_paused is False
