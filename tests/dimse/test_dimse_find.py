"""C-FIND with DCMTK's findscu: both models, every level, PS3.4 C.2.2.2 matching, charsets."""

from __future__ import annotations

import itertools
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dimse_support import Dcmtk
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from cloudfilm.archive import Archive
from cloudfilm.dimse import DimseServer
from support.instances import make_dataset, part10

pytestmark = [pytest.mark.db, pytest.mark.filterwarnings("ignore::UserWarning")]

WANG = "Wang^XiaoDong=王^小东"
LI = "Li^Si=李^四"


@dataclass
class Stored:
    """The studies of the fixture: UIDs by a short name."""

    studies: dict[str, str]
    series: dict[str, list[str]]
    instances: dict[str, list[str]]


@pytest.fixture
def stored(archive: Archive) -> Stored:
    """Three patients (GB18030, ASCII and ISO 2022 IR 58 names), four studies, nine instances."""
    plan = [
        # study, patient id, name, charset, date, modality, series sizes
        ("s1", "P001", WANG, "GB18030", "20200115", "CT", [2, 2]),
        ("s2", "P001", WANG, "GB18030", "20210601", "MR", [1]),
        ("s3", "P002", "Zhang^San", None, "20201231", "CT", [3]),
        ("s4", "P003", LI, "\\ISO 2022 IR 58", "20190101", "CR", [1]),
    ]
    result = Stored({}, {}, {})
    for name, pid, pname, charset, date, modality, sizes in plan:
        study = result.studies[name] = generate_uid()
        result.series[name], result.instances[name] = [], []
        for number, size in enumerate(sizes, start=1):
            series = generate_uid()
            result.series[name].append(series)
            for i in range(size):
                attrs = {"PatientID": pid, "PatientName": pname, "StudyDate": date,
                         "StudyTime": "101500", "Modality": modality, "SeriesNumber": number,
                         "InstanceNumber": i + 1, "AccessionNumber": f"A-{name}",
                         "StudyInstanceUID": study, "SeriesInstanceUID": series,
                         "StudyDescription": f"study {name}"}  # fmt: skip
                if charset:
                    attrs["SpecificCharacterSet"] = (
                        charset.split("\\") if "\\" in charset else charset
                    )
                ds = make_dataset(**attrs)
                result.instances[name].append(ds.SOPInstanceUID)
                assert archive.store(part10(ds)).ok
    return result


def findscu(
    dcmtk: Dcmtk,
    server: DimseServer,
    tmp_path: Path,
    model: str,
    *keys: str,
    extra: tuple[str, ...] = (),
) -> tuple[subprocess.CompletedProcess[str], list[Dataset]]:
    """Run findscu (-P patient root, -S study root) and read the responses it extracted."""
    out_dir = tmp_path / f"find{next(_counter)}"
    out_dir.mkdir()
    args = [model, "-X", "-od", str(out_dir), "-aec", "CLOUDFILM", *extra]
    for key in keys:
        args += ["-k", key]
    result = dcmtk.run("findscu", *args, "127.0.0.1", str(server.port))
    found = [pydicom.dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]
    return result, found


_counter = itertools.count()


def values(found: list[Dataset], keyword: str) -> list[str]:
    return sorted(str(ds.get(keyword, "")) for ds in found)


def test_study_root_study_level_with_wildcard_and_range(
    dcmtk: Dcmtk, dimse: DimseServer, stored: Stored, tmp_path: Path
) -> None:
    out, found = findscu(dcmtk, dimse, tmp_path, "-S", "QueryRetrieveLevel=STUDY",
                         "StudyDate=20200101-20201231", "PatientName=", "StudyInstanceUID=",
                         "ModalitiesInStudy=", "NumberOfStudyRelatedInstances=")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert values(found, "StudyInstanceUID") == sorted([stored.studies["s1"], stored.studies["s3"]])
    by_uid = {ds.StudyInstanceUID: ds for ds in found}
    assert by_uid[stored.studies["s1"]].NumberOfStudyRelatedInstances == 4
    assert by_uid[stored.studies["s3"]].ModalitiesInStudy == "CT"
    assert all(ds.QueryRetrieveLevel == "STUDY" for ds in found)
    assert all(ds.RetrieveAETitle == "CLOUDFILM" for ds in found)

    _, found = findscu(dcmtk, dimse, tmp_path, "-S", "QueryRetrieveLevel=STUDY",
                       "PatientID=P00?", "AccessionNumber=A-s*", "StudyInstanceUID=")  # fmt: skip
    assert len(found) == 4
    _, found = findscu(dcmtk, dimse, tmp_path, "-S", "QueryRetrieveLevel=STUDY",
                       "StudyDate=-20191231", "StudyInstanceUID=")  # fmt: skip
    assert values(found, "StudyInstanceUID") == [stored.studies["s4"]]


def test_uid_list_matching(
    dcmtk: Dcmtk, dimse: DimseServer, stored: Stored, tmp_path: Path
) -> None:
    wanted = [stored.studies["s2"], stored.studies["s4"]]
    _, found = findscu(dcmtk, dimse, tmp_path, "-S", "QueryRetrieveLevel=STUDY",
                       f"StudyInstanceUID={wanted[0]}\\{wanted[1]}", "PatientID=")  # fmt: skip
    assert values(found, "StudyInstanceUID") == sorted(wanted)
    assert values(found, "PatientID") == ["P001", "P003"]


def test_patient_root_at_every_level(
    dcmtk: Dcmtk, dimse: DimseServer, stored: Stored, tmp_path: Path
) -> None:
    _, patients = findscu(dcmtk, dimse, tmp_path, "-P", "QueryRetrieveLevel=PATIENT", "PatientID=",
                          "PatientName=", "NumberOfPatientRelatedStudies=")  # fmt: skip
    assert values(patients, "PatientID") == ["P001", "P002", "P003"]
    counts = {ds.PatientID: ds.NumberOfPatientRelatedStudies for ds in patients}
    assert counts == {"P001": 2, "P002": 1, "P003": 1}

    _, studies = findscu(dcmtk, dimse, tmp_path, "-P", "QueryRetrieveLevel=STUDY",
                         "PatientID=P001", "StudyInstanceUID=", "StudyDate=")  # fmt: skip
    assert values(studies, "StudyDate") == ["20200115", "20210601"]

    _, series = findscu(dcmtk, dimse, tmp_path, "-P", "QueryRetrieveLevel=SERIES",
                        "PatientID=P001", f"StudyInstanceUID={stored.studies['s1']}",
                        "SeriesInstanceUID=", "Modality=", "SeriesNumber=",
                        "NumberOfSeriesRelatedInstances=")  # fmt: skip
    assert values(series, "SeriesInstanceUID") == sorted(stored.series["s1"])
    assert {int(ds.NumberOfSeriesRelatedInstances) for ds in series} == {2}

    _, images = findscu(dcmtk, dimse, tmp_path, "-P", "QueryRetrieveLevel=IMAGE",
                        "PatientID=P001", f"StudyInstanceUID={stored.studies['s1']}",
                        f"SeriesInstanceUID={stored.series['s1'][0]}", "SOPInstanceUID=",
                        "InstanceNumber=", "SOPClassUID=")  # fmt: skip
    assert values(images, "SOPInstanceUID") == sorted(stored.instances["s1"][:2])
    assert {ds.SOPClassUID for ds in images} == {"1.2.840.10008.5.1.4.1.1.2"}


def test_study_root_series_and_image_levels(
    dcmtk: Dcmtk, dimse: DimseServer, stored: Stored, tmp_path: Path
) -> None:
    _, series = findscu(dcmtk, dimse, tmp_path, "-S", "QueryRetrieveLevel=SERIES",
                        "Modality=CT", "SeriesInstanceUID=", "StudyInstanceUID=")  # fmt: skip
    assert values(series, "SeriesInstanceUID") == sorted(stored.series["s1"] + stored.series["s3"])
    _, images = findscu(dcmtk, dimse, tmp_path, "-S", "QueryRetrieveLevel=IMAGE",
                        f"StudyInstanceUID={stored.studies['s3']}", "SOPInstanceUID=",
                        "InstanceNumber=2")  # fmt: skip
    assert values(images, "SOPInstanceUID") == [stored.instances["s3"][1]]


def test_patient_level_is_not_in_the_study_root_model(
    dcmtk: Dcmtk, dimse: DimseServer, stored: Stored, tmp_path: Path
) -> None:
    out, found = findscu(dcmtk, dimse, tmp_path, "-S", "QueryRetrieveLevel=PATIENT",
                         "PatientID=", extra=("-v",))  # fmt: skip
    assert found == []
    assert "Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in out.stderr, out.stderr


def test_a_chinese_name_in_utf8_is_answered_in_utf8(
    dcmtk: Dcmtk, dimse: DimseServer, stored: Stored, tmp_path: Path
) -> None:
    out, found = findscu(dcmtk, dimse, tmp_path, "-S", "QueryRetrieveLevel=STUDY",
                         "SpecificCharacterSet=ISO_IR 192", "PatientName=王*",
                         "StudyInstanceUID=")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert values(found, "StudyInstanceUID") == sorted([stored.studies["s1"], stored.studies["s2"]])
    for ds in found:
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert str(ds.PatientName) == WANG
    # the other group and the ideographic group of the ISO 2022 IR 58 patient
    _, found = findscu(dcmtk, dimse, tmp_path, "-S", "QueryRetrieveLevel=STUDY",
                       "SpecificCharacterSet=ISO_IR 192", "PatientName=李^四",
                       "StudyInstanceUID=")  # fmt: skip
    assert [str(ds.PatientName) for ds in found] == [LI]


def test_a_query_in_gb18030_is_answered_in_gb18030(
    dcmtk: Dcmtk, dimse: DimseServer, stored: Stored, tmp_path: Path
) -> None:
    query = Dataset()
    query.SpecificCharacterSet = "GB18030"
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = "*小东"
    query.StudyInstanceUID = ""
    query_file = tmp_path / "query.dcm"
    query.save_as(query_file, implicit_vr=False, little_endian=True)
    out_dir = tmp_path / "gb"
    out_dir.mkdir()
    out = dcmtk.run("findscu", "-S", "-X", "-od", out_dir, "-aec", "CLOUDFILM",
                    "127.0.0.1", dimse.port, query_file)  # fmt: skip
    assert out.returncode == 0, out.stderr
    found = sorted(out_dir.glob("rsp*.dcm"))
    assert len(found) == 2
    raw = found[0].read_bytes()
    assert "王^小东".encode("gb18030") in raw
    ds = pydicom.dcmread(found[0])
    assert ds.SpecificCharacterSet == "GB18030"
    assert str(ds.PatientName) == WANG


def test_a_name_that_does_not_fit_the_query_charset_comes_in_utf8(
    dimse: DimseServer, stored: Stored
) -> None:
    query = Dataset()
    query.SpecificCharacterSet = "ISO_IR 100"  # Latin-1 cannot hold 李
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = "P003"
    query.PatientName = ""
    (status, found), *_ = pynetdicom_find(
        dimse, query, PatientRootQueryRetrieveInformationModelFind
    )
    assert status == 0xFF00
    assert found.SpecificCharacterSet == "ISO_IR 192"
    assert str(found.PatientName) == LI


def pynetdicom_find(
    server: DimseServer, query: Dataset, model: str, cancel_after: int | None = None
) -> list[tuple[int, Dataset | None]]:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(model, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="CLOUDFILM")
    assert assoc.is_established
    answers: list[tuple[int, Dataset | None]] = []
    try:
        for status, identifier in assoc.send_c_find(query, model, msg_id=7):
            answers.append((int(status.Status), identifier))
            if cancel_after is not None and len(answers) == cancel_after:
                context_id = assoc.accepted_contexts[0].context_id
                assoc.send_c_cancel(7, context_id)
    finally:
        assoc.release()
    return answers


@pytest.fixture
def slow_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each match takes 50 ms to build, so that a C-CANCEL arrives while matches remain."""
    from cloudfilm.dimse import find

    build = find.build_response

    def slowly(*args: Any, **kwargs: Any) -> Dataset:
        time.sleep(0.05)
        return build(*args, **kwargs)

    monkeypatch.setattr(find, "build_response", slowly)


@pytest.mark.usefixtures("slow_matches")
def test_c_cancel_stops_the_stream(dimse: DimseServer, stored: Stored) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.SOPInstanceUID = ""
    everything = pynetdicom_find(dimse, query, StudyRootQueryRetrieveInformationModelFind)
    assert [s for s, _ in everything].count(0xFF00) == 9
    assert everything[-1][0] == 0x0000
    cancelled = pynetdicom_find(
        dimse, query, StudyRootQueryRetrieveInformationModelFind, cancel_after=2
    )
    assert cancelled[-1][0] == 0xFE00
    assert 2 <= len(cancelled) - 1 < 9


def test_unsupported_keys_are_returned_empty_with_status_ff01(
    dimse: DimseServer, stored: Stored
) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = stored.studies["s3"]
    query.PatientName = ""
    query.PatientWeight = ""  # not kept in the index
    query.ProcedureCodeSequence = []
    answers = pynetdicom_find(dimse, query, StudyRootQueryRetrieveInformationModelFind)
    status, found = answers[0]
    assert status == 0xFF01
    assert found is not None
    assert str(found.PatientName) == "Zhang^San"
    assert "PatientWeight" in found and found.PatientWeight in (None, "")
    assert found.ProcedureCodeSequence == []
    assert answers[-1][0] == 0x0000


@pytest.mark.parametrize(
    ("keys", "comment"),
    [
        ({"QueryRetrieveLevel": "STUDY", "StudyDate": "2020-2021"}, "StudyDate"),
        ({"QueryRetrieveLevel": "STUDY", "StudyDate": "20211301-20200101"}, "StudyDate"),
        ({"QueryRetrieveLevel": "WARD"}, "Level"),
        ({"PatientID": ""}, "Query/Retrieve Level"),
        ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.*"}, "StudyInstanceUID"),
    ],
)
def test_malformed_identifiers_get_a900_and_the_association_goes_on(
    dimse: DimseServer, stored: Stored, keys: dict[str, str], comment: str
) -> None:
    query = Dataset()
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title="CLOUDFILM")
    try:
        (status, _), *_ = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        assert status.Status == 0xA900
        assert comment in status.ErrorComment
        good = Dataset()
        good.QueryRetrieveLevel = "STUDY"
        good.StudyInstanceUID = stored.studies["s4"]
        answers = list(assoc.send_c_find(good, StudyRootQueryRetrieveInformationModelFind))
        assert [s.Status for s, _ in answers] == [0xFF00, 0x0000]
    finally:
        assoc.release()


def test_a_peer_that_may_not_query_gets_no_find_context(
    dcmtk: Dcmtk, dimse: DimseServer, stored: Stored, tmp_path: Path
) -> None:
    out, found = findscu(dcmtk, dimse, tmp_path, "-S", "QueryRetrieveLevel=STUDY",
                         "StudyInstanceUID=", extra=("-aet", "STORESCU"))  # fmt: skip
    assert out.returncode != 0
    assert found == []
    assert (
        "No Acceptable Presentation Contexts" in out.stderr
        or "No presentation context" in out.stderr
    )


@pytest.mark.usefixtures("slow_matches")
def test_findscu_cancel_option(
    dcmtk: Dcmtk, dimse: DimseServer, stored: Stored, tmp_path: Path
) -> None:
    out, found = findscu(dcmtk, dimse, tmp_path, "-S", "QueryRetrieveLevel=IMAGE",
                         "SOPInstanceUID=", extra=("--cancel", "3"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert 3 <= len(found) < 9


def test_queries_are_audited(
    dcmtk: Dcmtk, dimse: DimseServer, stored: Stored, tmp_path: Path, archive: Archive
) -> None:
    from sqlalchemy import select

    from cloudfilm.audit import trail_for
    from cloudfilm.index.models import AuditEvent

    out, found = findscu(dcmtk, dimse, tmp_path, "-S", "QueryRetrieveLevel=STUDY",
                         "PatientID=P001", "StudyInstanceUID=")  # fmt: skip
    assert out.returncode == 0 and len(found) == 2
    assert trail_for(archive).flush(timeout=30)
    with archive.sessions() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action == "query")).all()
        seen = [(r.actor_kind, r.actor_id, r.patient_id, r.outcome, r.detail) for r in rows]
    assert ("peer", "FINDSCU", "P001", "success", "C-FIND STUDY: 2 matches") in seen
