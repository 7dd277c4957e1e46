"""Associations: who is admitted (PS3.8 7.1.1), with which services, and how the socket is set."""

from __future__ import annotations

import socket

import pytest
from dimse_support import Dcmtk
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from cloudfilm.archive import Archive
from cloudfilm.dimse import DimseServer, Peer, PeerDirectory
from support.instances import bare, make_dataset

pytestmark = pytest.mark.db


def associate(server: DimseServer, ae_title: str, *syntaxes: str) -> object:
    ae = AE(ae_title=ae_title)
    ae.requested_contexts = [
        build_context(s, ExplicitVRLittleEndian) for s in (syntaxes or (Verification,))
    ]
    return ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)


def test_known_peer_echoes_with_echoscu(dcmtk: Dcmtk, dimse: DimseServer) -> None:
    out = dcmtk.run("echoscu", "-v", "-aec", "CLOUDFILM", "127.0.0.1", dimse.port)
    assert out.returncode == 0, out.stderr
    assert "Received Echo Response (Success)" in out.stderr


def test_unknown_caller_is_rejected_with_reason_3(dcmtk: Dcmtk, dimse: DimseServer) -> None:
    out = dcmtk.run("echoscu", "-aet", "NOBODY", "127.0.0.1", dimse.port)
    assert out.returncode != 0
    assert "Rejected Permanent" in out.stderr
    assert "Calling AE Title Not Recognized" in out.stderr
    # the server keeps serving
    assert dcmtk.run("echoscu", "127.0.0.1", dimse.port).returncode == 0


def test_rejection_is_visible_to_pynetdicom(dimse: DimseServer) -> None:
    assoc = associate(dimse, "NOBODY")
    assert assoc.is_rejected  # type: ignore[attr-defined]
    rj = assoc.acceptor.primitive  # type: ignore[attr-defined]
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)


def test_known_ae_from_a_wrong_address_is_rejected(
    dcmtk: Dcmtk, dimse: DimseServer, archive: Archive
) -> None:
    PeerDirectory(archive).add(
        Peer("FARAWAY", "10.20.30.40", 104, frozenset(), allowed_from=("10.20.30.0/24",))
    )
    out = dcmtk.run("echoscu", "-aet", "FARAWAY", "127.0.0.1", dimse.port)
    assert out.returncode != 0
    assert "Calling AE Title Not Recognized" in out.stderr


def test_unknown_storage_is_accepted_only_when_configured(
    dcmtk: Dcmtk, dimse: DimseServer, archive: Archive
) -> None:
    archive.settings.dimse_accept_unknown_storage = True
    assert dcmtk.run("echoscu", "-aet", "MODALITY9", "127.0.0.1", dimse.port).returncode == 0
    assoc = associate(
        dimse, "MODALITY9", CTImageStorage, StudyRootQueryRetrieveInformationModelFind
    )
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}  # type: ignore[attr-defined]
        assert accepted == {CTImageStorage}  # storage only, never queries
        ds = make_dataset()
        status = assoc.send_c_store(ds)  # type: ignore[attr-defined]
        assert status.Status == 0x0000
    finally:
        assoc.release()  # type: ignore[attr-defined]
    assert archive.instance(ds.SOPInstanceUID).source == "dimse:MODALITY9"


def test_permissions_decide_the_accepted_contexts(dimse: DimseServer) -> None:
    wanted = (
        Verification,
        CTImageStorage,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
        PatientRootQueryRetrieveInformationModelGet,
    )
    expected = {
        "STORESCU": {Verification, CTImageStorage},
        "FINDSCU": {Verification, CTImageStorage, StudyRootQueryRetrieveInformationModelFind},
        "GETSCU": {
            Verification,
            CTImageStorage,
            StudyRootQueryRetrieveInformationModelMove,
            PatientRootQueryRetrieveInformationModelGet,
        },
    }
    for title, syntaxes in expected.items():
        assoc = associate(dimse, title, *wanted)
        try:
            accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}  # type: ignore[attr-defined]
        finally:
            assoc.release()  # type: ignore[attr-defined]
        assert accepted == syntaxes, title


def test_peer_without_store_permission_is_refused_0124(
    dimse: DimseServer, archive: Archive
) -> None:
    assoc = associate(dimse, "FINDSCU", CTImageStorage)
    try:
        status = assoc.send_c_store(make_dataset())  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    assert status.Status == 0x0124
    assert "may not store" in status.ErrorComment
    assert list(archive.iter_instances()) == []


def test_sockets_have_tcp_nodelay_and_a_large_pdu(dimse: DimseServer) -> None:
    assoc = associate(dimse, "PYSCU")
    try:
        assert assoc.acceptor.maximum_length == dimse.archive.settings.dimse_max_pdu  # type: ignore[attr-defined]
        assert assoc.acceptor.maximum_length > 16384  # type: ignore[attr-defined]
        served = [a for a in dimse.ae.active_associations if a.is_acceptor]
        assert served
        sock = served[0].dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        assoc.release()  # type: ignore[attr-defined]


def test_store_over_dimse_keeps_the_received_bytes(dimse: DimseServer, archive: Archive) -> None:
    ds = make_dataset(PatientName="Zhang^San")
    assoc = associate(dimse, "PYSCU", CTImageStorage)
    try:
        status = assoc.send_c_store(ds)  # type: ignore[attr-defined]
        again = assoc.send_c_store(ds)  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    assert status.Status == 0x0000
    assert again.Status == 0x0000  # an exact duplicate is plain success (PS3.4 B.2.3)
    row = archive.instance(ds.SOPInstanceUID)
    blob = archive.read_instance(ds.SOPInstanceUID)
    assert blob[row.dataset_offset :] == bare(ds, implicit=False)
    assert row.transfer_syntax_uid == ExplicitVRLittleEndian
    assert row.source == "dimse:PYSCU"
    assert blob[128:132] == b"DICM"
