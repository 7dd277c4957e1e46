"""C-MOVE (movescu to storescp +B) and C-GET (getscu) at every level: originals byte-exact."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from dimse_support import (
    Dcmtk,
    StoreScp,
    dataset_of,
    free_port,
    stored_dataset,
)
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from cloudfilm.archive import Archive
from cloudfilm.dimse import DimseServer, Peer, PeerDirectory
from support.instances import make_dataset, part10

pytestmark = [pytest.mark.db, pytest.mark.filterwarnings("ignore::UserWarning")]


@dataclass
class Study:
    patient_id: str
    study_uid: str
    series: dict[str, list[str]]  # series UID -> SOP Instance UIDs
    syntaxes: dict[str, str]  # SOP Instance UID -> stored transfer syntax

    @property
    def instances(self) -> list[str]:
        return [uid for uids in self.series.values() for uid in uids]


def _recoded(name: str, **attrs: str) -> bytes:
    """A pydicom test file (kept compressed) given our patient, study, series and instance."""
    ds = pydicom.dcmread(get_testdata_file(name))
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def study(archive: Archive) -> Study:
    """One patient, one study of three series: explicit VR, implicit VR, compressed (J2K, RLE)."""
    return make_study(archive)


def make_study(archive: Archive) -> Study:
    """Store the study of the ``study`` fixture."""
    patient, study_uid = "PRET", generate_uid()
    result = Study(patient, study_uid, {}, {})
    common = {"PatientID": patient, "PatientName": "Retrieve^Test", "StudyInstanceUID": study_uid}
    for syntax, count in ((ExplicitVRLittleEndian, 3), (ImplicitVRLittleEndian, 2)):
        series = generate_uid()
        result.series[series] = []
        for i in range(count):
            ds = make_dataset(SeriesInstanceUID=series, InstanceNumber=i + 1, **common)
            assert archive.store(part10(ds, syntax)).ok
            result.series[series].append(ds.SOPInstanceUID)
            result.syntaxes[ds.SOPInstanceUID] = syntax
    series = generate_uid()
    result.series[series] = []
    for number, (name, syntax) in enumerate(
        (("JPEG2000.dcm", JPEG2000), ("SC_rgb_rle.dcm", RLELossless))
    ):
        uid = generate_uid()
        data = _recoded(name, SeriesInstanceUID=series, SOPInstanceUID=uid,
                        InstanceNumber=str(number + 1), **common)  # fmt: skip
        result_ = archive.store(data)
        assert result_.ok, result_.reason
        result.series[series].append(uid)
        result.syntaxes[uid] = syntax
    return result


def received(scp_files: list[Path]) -> dict[str, bytes]:
    """SOP Instance UID -> data set bytes of what a storescp +B / getscu wrote."""
    out = {}
    for path in scp_files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = dataset_of(path.read_bytes())
    return out


def assert_exact(archive: Archive, got: dict[str, bytes], expected: list[str]) -> None:
    assert sorted(got) == sorted(expected)
    for uid, data in got.items():
        assert data == stored_dataset(archive, uid), f"{uid} is not the stored original"


def _series(s: Study, index: int) -> str:
    return list(s.series)[index]


LEVEL_KEYS = {
    "PATIENT": lambda s: ["-P", "-k", "QueryRetrieveLevel=PATIENT",
                          "-k", f"PatientID={s.patient_id}"],
    "STUDY": lambda s: ["-S", "-k", "QueryRetrieveLevel=STUDY",
                        "-k", f"StudyInstanceUID={s.study_uid}"],
    "SERIES": lambda s: ["-S", "-k", "QueryRetrieveLevel=SERIES",
                         "-k", f"StudyInstanceUID={s.study_uid}",
                         "-k", f"SeriesInstanceUID={_series(s, 0)}"],
    "IMAGE": lambda s: ["-S", "-k", "QueryRetrieveLevel=IMAGE",
                        "-k", f"StudyInstanceUID={s.study_uid}",
                        "-k", f"SeriesInstanceUID={_series(s, 1)}",
                        "-k", f"SOPInstanceUID={s.series[_series(s, 1)][1]}"],
}  # fmt: skip


def expected_at(level: str, s: Study) -> list[str]:
    if level in ("PATIENT", "STUDY"):
        return s.instances
    if level == "SERIES":
        return s.series[_series(s, 0)]
    return [s.series[_series(s, 1)][1]]


@pytest.mark.parametrize("level", list(LEVEL_KEYS))
def test_movescu_at_each_level_delivers_the_originals(
    dcmtk: Dcmtk, dimse: DimseServer, archive: Archive, destination: StoreScp, study: Study,
    level: str,
) -> None:  # fmt: skip
    out = dcmtk.run("movescu", "-v", "-aec", "CLOUDFILM", "-aem", "DEST",
                    *LEVEL_KEYS[level](study), "127.0.0.1", dimse.port)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Received Final Move Response (Success)" in out.stderr
    assert_exact(archive, received(destination.files()), expected_at(level, study))


@pytest.mark.parametrize("level", list(LEVEL_KEYS))
def test_getscu_at_each_level_delivers_the_originals(
    dcmtk: Dcmtk, dimse: DimseServer, archive: Archive, study: Study, tmp_path: Path, level: str
) -> None:
    """getscu (DCMTK 3.6.7) proposes one list of transfer syntaxes for every storage SOP class
    and we accept its first: explicit VR by default, JPEG 2000 with +xw, RLE with +xr. So each
    syntax takes its own run; no option puts implicit VR first, so implicit VR originals come
    transcoded to explicit VR (same SOP Instance UID, same pixels)."""
    wanted = expected_at(level, study)
    got: dict[str, bytes] = {}
    transcoded: dict[str, Path] = {}
    for flag, syntax in (("+xe", ExplicitVRLittleEndian), ("+xw", JPEG2000), ("+xr", RLELossless)):
        if flag != "+xe" and not any(study.syntaxes[uid] == syntax for uid in wanted):
            continue
        folder = tmp_path / flag
        folder.mkdir()
        out = dcmtk.run("getscu", "-v", "+B", flag, "-aec", "CLOUDFILM", "-od", folder,
                        *LEVEL_KEYS[level](study), "127.0.0.1", dimse.port)  # fmt: skip
        assert "Final status report from last C-GET message" in out.stderr, out.stderr
        for path in sorted(folder.iterdir()):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            uid = str(ds.SOPInstanceUID)
            if study.syntaxes[uid] == syntax:
                got[uid] = dataset_of(path.read_bytes())
            elif flag == "+xe" and study.syntaxes[uid] == ImplicitVRLittleEndian:
                transcoded[uid] = path
    implicit = [uid for uid in wanted if study.syntaxes[uid] == ImplicitVRLittleEndian]
    assert_exact(archive, got, [uid for uid in wanted if uid not in implicit])
    assert sorted(transcoded) == sorted(implicit)
    for uid, path in transcoded.items():
        copy = pydicom.dcmread(path)
        original = pydicom.dcmread(io.BytesIO(archive.read_instance(uid)))
        assert copy.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert copy.PixelData == original.PixelData


def pynetdicom_move(
    server: DimseServer,
    query: Dataset,
    destination: str,
    model: str = StudyRootQueryRetrieveInformationModelMove,
) -> list[tuple[int, Dataset, Dataset | None]]:
    ae = AE(ae_title="MOVESCU")
    ae.add_requested_context(model, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="CLOUDFILM")
    assert assoc.is_established
    try:
        return [(int(s.Status), s, i) for s, i in assoc.send_c_move(query, destination, model)]
    finally:
        assoc.release()


def study_query(study: Study) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study.study_uid
    return query


def test_move_reports_pending_counts_then_success(
    dimse: DimseServer, archive: Archive, destination: StoreScp, study: Study
) -> None:
    answers = pynetdicom_move(dimse, study_query(study), "DEST")
    pending = [s for code, s, _ in answers if code == 0xFF00]
    total = len(study.instances)
    assert [s.NumberOfRemainingSuboperations for s in pending] == list(range(total - 1, 0, -1))
    assert [s.NumberOfCompletedSuboperations for s in pending] == list(range(1, total))
    code, final, _ = answers[-1]
    assert code == 0x0000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (total, 0)
    assert_exact(archive, received(destination.files()), study.instances)


def test_unknown_move_destination_is_a801(dcmtk: Dcmtk, dimse: DimseServer, study: Study) -> None:
    out = dcmtk.run("movescu", "-v", "-aec", "CLOUDFILM", "-aem", "NOWHERE",
                    *LEVEL_KEYS["STUDY"](study), "127.0.0.1", dimse.port)  # fmt: skip
    assert "Final Move Response (Refused: MoveDestinationUnknown)" in out.stderr, out.stderr
    code, status, _ = pynetdicom_move(dimse, study_query(study), "NOWHERE")[-1]
    assert code == 0xA801
    assert "NOWHERE" in status.ErrorComment


def test_unreachable_destination_is_a702(
    dimse: DimseServer, archive: Archive, study: Study
) -> None:
    PeerDirectory(archive).add(Peer("DOWN", "127.0.0.1", free_port(), frozenset()))
    code, status, _ = pynetdicom_move(dimse, study_query(study), "DOWN")[-1]
    assert code == 0xA702
    assert "DOWN" in status.ErrorComment


def test_malformed_move_identifier_is_a900(
    dimse: DimseServer, destination: StoreScp, study: Study
) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study.study_uid  # the SERIES level needs Series Instance UID
    code, status, _ = pynetdicom_move(dimse, query, "DEST")[-1]
    assert code == 0xA900
    assert "SeriesInstanceUID" in status.ErrorComment
    assert destination.files() == []


def test_a_sub_operation_that_cannot_be_sent_is_reported(
    dcmtk: Dcmtk, dimse: DimseServer, archive: Archive, study: Study, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A destination accepting only implicit VR, and nothing can be transcoded: 0xB000 with
    the failures."""
    from cloudfilm.dicom import transcode

    monkeypatch.setattr(transcode, "can_transcode", lambda source, target: source == target)
    from dimse_support import start_storescp

    scp = start_storescp(dcmtk, tmp_path / "implicit", "IMPLICIT", "+xi")
    try:
        PeerDirectory(archive).add(Peer("IMPLICIT", "127.0.0.1", scp.port, frozenset()))
        answers = pynetdicom_move(dimse, study_query(study), "IMPLICIT")
    finally:
        scp.process.terminate()
        scp.process.wait(10)
    code, final, identifier = answers[-1]
    implicit = [u for u in study.instances if study.syntaxes[u] == ImplicitVRLittleEndian]
    assert code == 0xB000
    assert final.NumberOfCompletedSuboperations == len(implicit)
    assert final.NumberOfFailedSuboperations == len(study.instances) - len(implicit)
    assert identifier is not None
    assert sorted(identifier.FailedSOPInstanceUIDList) == sorted(
        set(study.instances) - set(implicit)
    )


def test_a_peer_that_may_not_retrieve_gets_no_retrieve_context(
    dcmtk: Dcmtk, dimse: DimseServer, study: Study
) -> None:
    out = dcmtk.run("movescu", "-aet", "FINDSCU", "-aec", "CLOUDFILM", "-aem", "DEST",
                    *LEVEL_KEYS["STUDY"](study), "127.0.0.1", dimse.port)  # fmt: skip
    assert "No valid Presentation Context" in out.stderr, out.stderr


def test_c_get_with_pynetdicom_counts_and_exact_bytes(
    dimse: DimseServer, archive: Archive, study: Study
) -> None:
    got: dict[str, bytes] = {}

    """pynetdicom as getscu, proposing both uncompressed syntaxes in separate contexts: the
    implicit VR originals come byte-exact too."""
    got: dict[str, bytes] = {}

    def on_store(event: evt.Event) -> int:  # this process receives in chunked mode as well
        data = Path(event.dataset_path).read_bytes()
        got[str(event.request.AffectedSOPInstanceUID)] = dataset_of(data)
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet, ExplicitVRLittleEndian)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title="CLOUDFILM",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip
    assert assoc.is_established
    series = list(study.series)[:2]
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.SeriesInstanceUID = series
    try:
        model = StudyRootQueryRetrieveInformationModelGet
        answers = [(int(s.Status), s) for s, _ in assoc.send_c_get(query, model)]
    finally:
        assoc.release()
    assert [c for c, _ in answers] == [0xFF00] * 4 + [0x0000]
    assert answers[-1][1].NumberOfCompletedSuboperations == 5
    assert_exact(archive, got, study.series[series[0]] + study.series[series[1]])


def test_patient_level_move_in_the_patient_root_model(
    dimse: DimseServer, archive: Archive, destination: StoreScp, study: Study
) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = study.patient_id
    answers = pynetdicom_move(dimse, query, "DEST", PatientRootQueryRetrieveInformationModelMove)
    assert answers[-1][0] == 0x0000
    assert_exact(archive, received(destination.files()), study.instances)


def test_a_destination_that_aborts_fails_the_rest_at_once(
    dcmtk: Dcmtk, dimse: DimseServer, archive: Archive, study: Study, tmp_path: Path
) -> None:
    """storescp --abort-after aborts on the first C-STORE: every sub-operation is reported as
    failed (0xA702) without waiting for timeouts, and the server goes on serving."""
    from dimse_support import start_storescp

    scp = start_storescp(dcmtk, tmp_path / "aborting", "ABORTS", "--abort-after")
    try:
        PeerDirectory(archive).add(Peer("ABORTS", "127.0.0.1", scp.port, frozenset()))
        answers = pynetdicom_move(dimse, study_query(study), "ABORTS")
    finally:
        scp.process.terminate()
        scp.process.wait(10)
    code, final, identifier = answers[-1]
    assert code == 0xA702
    assert final.NumberOfFailedSuboperations == len(study.instances)
    assert identifier is not None
    assert sorted(identifier.FailedSOPInstanceUIDList) == sorted(study.instances)
    assert dcmtk.run("echoscu", "127.0.0.1", dimse.port).returncode == 0


def test_move_transcodes_for_a_destination_that_accepts_only_implicit_vr(
    dcmtk: Dcmtk, dimse: DimseServer, archive: Archive, study: Study, tmp_path: Path
) -> None:
    """The fall-back context (uncompressed syntaxes) carries what the peer refused natively."""
    from dimse_support import start_storescp

    scp = start_storescp(dcmtk, tmp_path / "implicit", "IMPLICIT", "+xi")
    try:
        PeerDirectory(archive).add(Peer("IMPLICIT", "127.0.0.1", scp.port, frozenset()))
        code, final, _ = pynetdicom_move(dimse, study_query(study), "IMPLICIT")[-1]
        files = scp.files()
    finally:
        scp.process.terminate()
        scp.process.wait(10)
    assert code == 0x0000
    assert final.NumberOfCompletedSuboperations == len(study.instances)
    got = received(files)
    assert sorted(got) == sorted(study.instances)
    for path in files:
        ds = pydicom.dcmread(path)
        uid = str(ds.SOPInstanceUID)
        assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        if study.syntaxes[uid] == ImplicitVRLittleEndian:
            assert got[uid] == stored_dataset(archive, uid)  # the original itself
        else:
            assert ds.Rows and ds.PixelData  # derived: decoded, same image
