"""DICOM TLS between hospitals: DCMTK's tools and a second cloudfilm, with a test CA.

The CA, the certificates of both archives and of a modality, and a rogue CA's certificate are
made by the tests (``tls_support``). The listener takes only mutual TLS; a peer marked ``tls``
is admitted only over it, and our calls to it are TLS with its name checked.
"""

from __future__ import annotations

import io
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dimse_support import Dcmtk, stored_dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from tls_support import Identity, TestCa

from cloudfilm.archive import Archive
from cloudfilm.core.config import DimsePeerConfig, Settings
from cloudfilm.core.errors import NotFound
from cloudfilm.dimse import DimseServer, Peer, PeerDirectory
from cloudfilm.dimse.peers import Permission
from cloudfilm.dimse.scu import CannotAssociate, associate, scu_entity, send_instances
from cloudfilm.dimse.selection import Level, RetrieveRequest, select_instances
from support.instances import make_dataset, part10

S, Q, R = Permission.STORE, Permission.QUERY, Permission.RETRIEVE
ECHO = [build_context(Verification)]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def certs(ca: TestCa) -> dict[str, Identity]:
    return {name: ca.issue(name) for name in ("cloudfilm-a", "cloudfilm-b", "ct-scanner")}


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> Identity:
    """A certificate for the right address from a CA the archive does not trust."""
    return TestCa(tmp_path_factory.mktemp("rogue"), "rogue CA").issue("ct-scanner")


def _tls_settings(folder: Path, ca: TestCa, me: Identity, **extra: object) -> Settings:
    return Settings(
        data_dir=folder,
        database_url=None,  # SQLite in the folder, whatever CLOUDFILM_DATABASE_URL says
        min_free_bytes=0,
        storage="file",
        dimse_tls_certificate=me.certificate,
        dimse_tls_private_key=me.key,
        dimse_tls_ca_certificates=ca.certificate,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def hospital_a(tmp_path: Path, ca: TestCa, certs: dict[str, Identity]) -> Iterator[DimseServer]:
    """Archive A with a plain and a TLS listener; CT_TLS (a modality) and CLOUD_B are peers
    that must use TLS, STORESCU a plain one."""
    settings = _tls_settings(tmp_path / "a", ca, certs["cloudfilm-a"])
    with Archive.open(settings) as archive:
        directory = PeerDirectory(archive)
        directory.add(Peer("CT_TLS", "127.0.0.1", 104, frozenset({S}), tls=True))
        directory.add(Peer("CLOUD_B", "127.0.0.1", 104, frozenset({S, Q, R}), tls=True))
        directory.add(Peer("STORESCU", "127.0.0.1", 104, frozenset({S})))
        server = DimseServer(archive, host="127.0.0.1", port=0, tls_port=0, ae_title="CLOUDFILM")
        server.start()
        try:
            yield server
        finally:
            server.stop()


def _file(folder: Path, **attrs: str) -> tuple[Path, str]:
    ds = make_dataset(PatientName="王^小明", SpecificCharacterSet="ISO_IR 192", **attrs)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    path.write_bytes(part10(ds, ExplicitVRLittleEndian))
    return path, str(ds.SOPInstanceUID)


def _tls_args(ca: TestCa, me: Identity) -> list[str]:
    return ["+tls", str(me.key), str(me.certificate), "+cf", str(ca.certificate)]


def _storescu(
    dcmtk: Dcmtk, port: int, path: Path, *tls: str, aet: str = "CT_TLS"
) -> subprocess.CompletedProcess[str]:
    return dcmtk.run(
        "storescu", *tls, "-aet", aet, "-aec", "CLOUDFILM", "127.0.0.1", port, path, timeout=30
    )


def _stored(archive: Archive, uid: str) -> bool:
    try:
        archive.instance(uid)
    except NotFound:
        return False
    return True


def test_dcmtk_stores_over_mutual_tls(
    dcmtk: Dcmtk,
    hospital_a: DimseServer,
    ca: TestCa,
    certs: dict[str, Identity],
    tmp_path: Path,
) -> None:
    assert hospital_a.tls_port is not None
    tls = _tls_args(ca, certs["ct-scanner"])
    echo = dcmtk.run("echoscu", *tls, "-aet", "CT_TLS", "-aec", "CLOUDFILM", "127.0.0.1",
                     hospital_a.tls_port)  # fmt: skip
    assert echo.returncode == 0, echo.stderr
    path, uid = _file(tmp_path)
    done = _storescu(dcmtk, hospital_a.tls_port, path, *tls)
    assert done.returncode == 0, done.stderr
    # the data set arrived whole through TLS (storescu drops trailing padding, FFFC,FFFC)
    stored = pydicom.dcmread(io.BytesIO(hospital_a.archive.read_instance(uid)))
    sent = pydicom.dcmread(path)
    del sent[0xFFFCFFFC]
    assert stored == sent
    assert stored.PatientName == "王^小明"


def test_tls_peer_is_refused_without_tls(
    dcmtk: Dcmtk, hospital_a: DimseServer, tmp_path: Path
) -> None:
    """CT_TLS signs its connections: its AE title on the plain port is someone else's."""
    path, uid = _file(tmp_path)
    refused = _storescu(dcmtk, hospital_a.port, path)
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stdout + refused.stderr
    assert not _stored(hospital_a.archive, uid)
    # a plain peer still uses the plain port
    plain = _storescu(dcmtk, hospital_a.port, path, aet="STORESCU")
    assert plain.returncode == 0, plain.stderr
    assert _stored(hospital_a.archive, uid)


def test_certificates_of_another_ca_and_no_certificate_are_refused(
    dcmtk: Dcmtk,
    hospital_a: DimseServer,
    ca: TestCa,
    certs: dict[str, Identity],
    rogue: Identity,
    tmp_path: Path,
) -> None:
    assert hospital_a.tls_port is not None
    path, uid = _file(tmp_path)
    forged = _storescu(dcmtk, hospital_a.tls_port, path, *_tls_args(ca, rogue))
    assert forged.returncode != 0
    anonymous = _storescu(
        dcmtk, hospital_a.tls_port, path, "+tla", "+cf", str(ca.certificate)
    )  # TLS without a client certificate
    assert anonymous.returncode != 0
    plain_on_tls_port = _storescu(dcmtk, hospital_a.tls_port, path, aet="STORESCU")
    assert plain_on_tls_port.returncode != 0
    assert not _stored(hospital_a.archive, uid)
    # and the listener still serves the real modality afterwards
    good = _storescu(dcmtk, hospital_a.tls_port, path, *_tls_args(ca, certs["ct-scanner"]))
    assert good.returncode == 0, good.stderr
    assert _stored(hospital_a.archive, uid)


def test_a_silent_connection_does_not_stall_the_tls_listener(
    dcmtk: Dcmtk, hospital_a: DimseServer, ca: TestCa, certs: dict[str, Identity]
) -> None:
    """The handshake runs on the association's thread, not in the accept loop."""
    assert hospital_a.tls_port is not None
    with socket.create_connection(("127.0.0.1", hospital_a.tls_port)):
        echo = dcmtk.run(
            "echoscu", *_tls_args(ca, certs["ct-scanner"]), "-aet", "CT_TLS", "-aec",
            "CLOUDFILM", "127.0.0.1", hospital_a.tls_port, timeout=20,
        )  # fmt: skip
    assert echo.returncode == 0, echo.stderr


def test_one_cloudfilm_sends_a_study_to_another_over_tls(
    hospital_a: DimseServer, ca: TestCa, certs: dict[str, Identity], tmp_path: Path
) -> None:
    """Hospital B's cloudfilm calls A's TLS port as CLOUD_B (``cloudfilm send``'s path)."""
    assert hospital_a.tls_port is not None
    to_a = DimsePeerConfig(
        ae_title="CLOUDFILM", host="127.0.0.1", port=hospital_a.tls_port, allow=[], tls=True
    )
    settings_b = _tls_settings(
        tmp_path / "b", ca, certs["cloudfilm-b"], dimse_ae_title="CLOUD_B", dimse_peers=[to_a]
    )
    with Archive.open(settings_b) as archive_b:
        study_uid = pydicom.uid.generate_uid()
        uids = []
        for number in range(3):
            ds = make_dataset(StudyInstanceUID=study_uid, InstanceNumber=number + 1)
            assert archive_b.store(part10(ds, ExplicitVRLittleEndian)).ok
            uids.append(str(ds.SOPInstanceUID))
        peer = PeerDirectory(archive_b).get("CLOUDFILM")
        assert peer is not None and peer.tls
        with archive_b.sessions() as session:
            instances = select_instances(
                session, RetrieveRequest(Level.STUDY, study_uids=(study_uid,))
            )
        outcomes = send_instances(archive_b, scu_entity(settings_b), peer, instances)
        assert [o.category for o in outcomes] == ["Success"] * 3
        for uid in uids:
            assert stored_dataset(hospital_a.archive, uid) == stored_dataset(archive_b, uid)

        # the name in A's certificate is checked: A reached by a name it does not carry fails
        wrong_name = Peer("CLOUDFILM", "localhost", hospital_a.tls_port, frozenset(), tls=True)
        with pytest.raises(CannotAssociate) as refused:
            associate(scu_entity(settings_b), wrong_name, ECHO, settings=settings_b)
        assert "TLS" in str(refused.value)


def test_tls_needs_its_three_files(tmp_path: Path, archive: Archive) -> None:
    with pytest.raises(ValueError, match="DICOM TLS needs"):
        Settings(data_dir=tmp_path, dimse_tls_port=2762)
    peer = {"ae_title": "CLOUD_C", "host": "127.0.0.1", "port": 2762, "tls": True}
    with pytest.raises(ValueError, match="DICOM TLS needs"):
        Settings(data_dir=tmp_path, dimse_peers=[peer])
    # a TLS peer kept in the index of an archive without TLS files cannot be called
    tls_peer = Peer("CLOUD_C", "127.0.0.1", 2762, frozenset(), tls=True)
    with pytest.raises(CannotAssociate, match="needs DICOM TLS"):
        associate(scu_entity(archive.settings), tls_peer, ECHO, settings=archive.settings)
