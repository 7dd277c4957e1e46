"""DIMSE peers of an institution see its studies only (C-FIND, C-GET, C-MOVE with DCMTK).

Hospitals A and B share one archive. A peer whose row names an institution sees what that
institution owns or holds (``study_access``); a peer without one sees every study (the
single-hospital default). A study another institution may not see answers exactly like a
study that does not exist: no match, no sub-operation. Unknown AE titles, known AE titles
from a wrong address and peers without the permission never get that far.

This is also the DIMSE part of the access matrix (``tests/access/test_access_matrix.py``).
"""

from __future__ import annotations

import itertools
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from dimse_support import Dcmtk, StoreScp
from pydicom.dataset import Dataset

from cloudfilm.access.accounts import Accounts
from cloudfilm.archive import Archive
from cloudfilm.dimse import DimseServer, Peer, PeerDirectory, Permission
from support.instances import make_dataset, part10

pytestmark = [pytest.mark.db, pytest.mark.filterwarnings("ignore::UserWarning")]

Q, R, S = Permission.QUERY, Permission.RETRIEVE, Permission.STORE


@dataclass(frozen=True)
class Hospitals:
    """Study UIDs by name and the patient of each.

    ``a`` (patient PA) belongs to A, ``b`` (PB) to B, ``shared`` (PS) to B and is held by A
    (A sent the same instance later), ``xa`` and ``xb`` are patient PX's studies at A and B.
    """

    studies: dict[str, str]
    sops: dict[str, str]

    def uids(self, *names: str) -> set[str]:
        return {self.studies[n] for n in names}


#: What each test peer sees, by study name (Hospitals).
SEES = {
    "PEERA": {"a", "shared", "xa"},
    "PEERB": {"b", "shared", "xb"},
    "PEERALL": {"a", "b", "shared", "xa", "xb"},
    "PEERGHOST": set(),
}
PATIENTS = {"a": "PA", "b": "PB", "shared": "PS", "xa": "PX", "xb": "PX"}


@pytest.fixture
def hospitals(archive: Archive, dimse: DimseServer) -> Hospitals:
    accounts = Accounts(archive)
    pk = {code: accounts.add_institution(code).pk for code in ("hosp-a", "hosp-b")}
    plan = [("a", "hosp-a"), ("b", "hosp-b"), ("shared", "hosp-b"), ("xa", "hosp-a"),
            ("xb", "hosp-b")]  # fmt: skip
    studies, sops = {}, {}
    for name, owner in plan:
        ds = make_dataset(PatientID=PATIENTS[name], StudyDescription=f"study {name}")
        data = part10(ds)
        assert archive.store(data, institution=pk[owner]).ok
        if name == "shared":
            assert archive.store(data, institution=pk["hosp-a"]).ok  # A becomes a holder
        studies[name], sops[name] = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
    directory = PeerDirectory(archive)
    for title, institution, permissions in (
        ("PEERA", "hosp-a", frozenset({Q, R})),
        ("PEERB", "hosp-b", frozenset({Q, R})),
        ("PEERALL", "", frozenset({Q, R})),
        ("PEERGHOST", "no-such-hospital", frozenset({Q, R})),
        ("PEERSTORE", "hosp-a", frozenset({S})),
    ):
        directory.add(Peer(title, "127.0.0.1", 104, permissions, institution=institution))
    directory.add(
        Peer("FARAWAY", "10.20.30.40", 104, frozenset({Q, R}), allowed_from=("10.20.30.0/24",),
             institution="hosp-a")
    )  # fmt: skip
    return Hospitals(studies, sops)


_counter = itertools.count()


def findscu(
    dcmtk: Dcmtk, server: DimseServer, folder: Path, caller: str, model: str, *keys: str
) -> tuple[subprocess.CompletedProcess[str], list[Dataset]]:
    out_dir = folder / f"find{next(_counter)}"
    out_dir.mkdir()
    args = [model, "-X", "-od", str(out_dir), "-aet", caller, "-aec", "CLOUDFILM"]
    for key in keys:
        args += ["-k", key]
    result = dcmtk.run("findscu", *args, "127.0.0.1", str(server.port))
    return result, [pydicom.dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]


def study_uids(found: list[Dataset]) -> set[str]:
    return {str(ds.StudyInstanceUID) for ds in found}


#: (model, level keys) of every C-FIND level of both information models.
FIND_LEVELS = {
    "study-root STUDY": ("-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID="),
    "study-root SERIES": ("-S", "QueryRetrieveLevel=SERIES", "StudyInstanceUID=",
                          "SeriesInstanceUID="),
    "study-root IMAGE": ("-S", "QueryRetrieveLevel=IMAGE", "StudyInstanceUID=",
                         "SeriesInstanceUID=", "SOPInstanceUID="),
    "patient-root STUDY": ("-P", "QueryRetrieveLevel=STUDY", "PatientID=",
                           "StudyInstanceUID="),
    "patient-root SERIES": ("-P", "QueryRetrieveLevel=SERIES", "PatientID=",
                            "StudyInstanceUID=", "SeriesInstanceUID="),
    "patient-root IMAGE": ("-P", "QueryRetrieveLevel=IMAGE", "PatientID=",
                           "StudyInstanceUID=", "SeriesInstanceUID=", "SOPInstanceUID="),
}  # fmt: skip


@pytest.mark.parametrize("caller", sorted(SEES))
def test_c_find_at_every_level_shows_the_institutions_studies(
    dcmtk: Dcmtk, dimse: DimseServer, hospitals: Hospitals, tmp_path: Path, caller: str
) -> None:
    wanted = hospitals.uids(*SEES[caller])
    for name, (model, *keys) in FIND_LEVELS.items():
        out, found = findscu(dcmtk, dimse, tmp_path, caller, model, *keys)
        assert out.returncode == 0, out.stderr
        assert study_uids(found) == wanted, f"{caller} {name}"
    # asking for a study by its UID: another institution's answers like a missing one
    for name, uid in [*hospitals.studies.items(), ("missing", "1.2.3.4.5")]:
        _, found = findscu(dcmtk, dimse, tmp_path, caller, "-S", "QueryRetrieveLevel=STUDY",
                           f"StudyInstanceUID={uid}")  # fmt: skip
        assert len(found) == (1 if name in SEES[caller] else 0), f"{caller} {name}"


@pytest.mark.parametrize("caller", sorted(SEES))
def test_c_find_patient_level_lists_patients_with_a_visible_study(
    dcmtk: Dcmtk, dimse: DimseServer, hospitals: Hospitals, tmp_path: Path, caller: str
) -> None:
    out, found = findscu(dcmtk, dimse, tmp_path, caller, "-P", "QueryRetrieveLevel=PATIENT",
                         "PatientID=", "NumberOfPatientRelatedStudies=")  # fmt: skip
    assert out.returncode == 0, out.stderr
    counts = {str(ds.PatientID): int(ds.NumberOfPatientRelatedStudies) for ds in found}
    expected: dict[str, int] = {}
    for name in SEES[caller]:
        expected[PATIENTS[name]] = expected.get(PATIENTS[name], 0) + 1
    assert counts == expected  # PX counts only the studies the caller sees


def getscu(
    dcmtk: Dcmtk, server: DimseServer, folder: Path, caller: str, *keys: str, model: str = "-S"
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run getscu at the given keys; the SOP Instance UIDs it received."""
    out_dir = folder / f"get{next(_counter)}"
    out_dir.mkdir()
    args = ["-v", model, "-aet", caller, "-aec", "CLOUDFILM", "-od", str(out_dir)]
    for key in keys:
        args += ["-k", key]
    result = dcmtk.run("getscu", *args, "127.0.0.1", str(server.port))
    got = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
           for p in sorted(out_dir.iterdir())]  # fmt: skip
    return result, got


@pytest.mark.parametrize("caller", sorted(SEES))
def test_c_get_sends_only_the_institutions_studies(
    dcmtk: Dcmtk, dimse: DimseServer, hospitals: Hospitals, tmp_path: Path, caller: str
) -> None:
    for name, uid in hospitals.studies.items():
        out, got = getscu(dcmtk, dimse, tmp_path, caller, "QueryRetrieveLevel=STUDY",
                          f"StudyInstanceUID={uid}")  # fmt: skip
        assert "Final status report" in out.stderr, out.stderr
        assert got == ([hospitals.sops[name]] if name in SEES[caller] else []), f"{caller} {name}"
    # a whole patient: only the studies the caller sees (PX has one at A and one at B)
    out, got = getscu(dcmtk, dimse, tmp_path, caller, "QueryRetrieveLevel=PATIENT", "PatientID=PX",
                      model="-P")  # fmt: skip
    assert "Final status report" in out.stderr, out.stderr
    assert sorted(got) == sorted(hospitals.sops[n] for n in SEES[caller] & {"xa", "xb"})


def test_hidden_study_answers_like_a_missing_one(
    dcmtk: Dcmtk, dimse: DimseServer, hospitals: Hospitals, tmp_path: Path
) -> None:
    def final(uid: str) -> str:
        out, got = getscu(dcmtk, dimse, tmp_path, "PEERA", "QueryRetrieveLevel=STUDY",
                          f"StudyInstanceUID={uid}")  # fmt: skip
        assert got == []
        report = out.stderr[out.stderr.index("Final status report") :]
        return report.replace(uid, "UID")

    assert final(hospitals.studies["b"]) == final("1.2.3.4.5")


@pytest.mark.parametrize("caller", ["PEERA", "PEERB"])
def test_c_move_sends_only_the_institutions_studies(
    dcmtk: Dcmtk,
    dimse: DimseServer,
    hospitals: Hospitals,
    destination: StoreScp,
    caller: str,
) -> None:
    for uid in hospitals.studies.values():
        out = dcmtk.run("movescu", "-v", "-S", "-aet", caller, "-aec", "CLOUDFILM", "-aem", "DEST",
                        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}",
                        "127.0.0.1", str(dimse.port))  # fmt: skip
        assert "Received Final Move Response (Success)" in out.stderr, out.stderr
    received = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in destination.files()
    }
    assert received == {hospitals.sops[n] for n in SEES[caller]}


@pytest.mark.parametrize("tool", ["findscu", "getscu", "movescu"])
def test_unknown_and_misplaced_callers_are_refused_at_association(
    dcmtk: Dcmtk, dimse: DimseServer, hospitals: Hospitals, tmp_path: Path, tool: str
) -> None:
    """An unknown AE title, and a known one (FARAWAY, of hospital A) from a wrong address."""
    extra = ["-aem", "DEST"] if tool == "movescu" else ["-od", str(tmp_path)]
    for caller in ("NOBODY", "FARAWAY"):
        out = dcmtk.run(tool, "-S", "-aet", caller, "-aec", "CLOUDFILM", *extra,
                        "-k", "QueryRetrieveLevel=STUDY",
                        "-k", f"StudyInstanceUID={hospitals.studies['a']}",
                        "127.0.0.1", str(dimse.port))  # fmt: skip
        assert out.returncode != 0, f"{tool} {caller}"
        assert "Rejected" in out.stderr, f"{tool} {caller}: {out.stderr}"
    assert not [p for p in tmp_path.iterdir() if p.is_file()]


@pytest.mark.parametrize("tool", ["findscu", "getscu", "movescu"])
def test_a_peer_without_the_permission_gets_no_context(
    dcmtk: Dcmtk, dimse: DimseServer, hospitals: Hospitals, tmp_path: Path, tool: str
) -> None:
    extra = ["-aem", "DEST"] if tool == "movescu" else ["-od", str(tmp_path)]
    out = dcmtk.run(tool, "-S", "-aet", "PEERSTORE", "-aec", "CLOUDFILM", *extra,
                    "-k", "QueryRetrieveLevel=STUDY",
                    "-k", f"StudyInstanceUID={hospitals.studies['a']}",
                    "127.0.0.1", str(dimse.port))  # fmt: skip
    assert out.returncode != 0, out.stderr
    assert re.search(r"No (valid|adequate|Acceptable) Presentation Context", out.stderr), out.stderr
    assert not [p for p in tmp_path.iterdir() if p.is_file()]
