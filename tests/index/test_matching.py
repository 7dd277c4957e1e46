"""The shared query engine (QIDO-RS and C-FIND): each matching rule of PS3.4 C.2.2.2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from cloudfilm.archive import Archive
from cloudfilm.core.errors import InvalidQuery
from cloudfilm.index.matching import (
    SUPPORTED_KEYS,
    Level,
    count_rows,
    query_rows,
    unsupported_keys,
)
from support.instances import make_dataset, part10

pytestmark = pytest.mark.db

CHARSET = Path(__file__).resolve().parents[3] / "shared/testdata/fo-dicom/charset"


@pytest.fixture
def filled(archive: Archive) -> dict[str, Any]:
    """Three patients; one with two studies; a two-series study; Chinese names."""
    uids: dict[str, Any] = {}
    s1, s2, s3 = generate_uid(), generate_uid(), generate_uid()
    ser_ct, ser_sr = generate_uid(), generate_uid()
    rows = [
        dict(PatientName="Smith^John", PatientID="P1", StudyInstanceUID=s1,
             SeriesInstanceUID=ser_ct, StudyDate="20240105", StudyTime="093000",
             Modality="CT", AccessionNumber="ACC1", InstanceNumber=1),
        dict(PatientName="Smith^John", PatientID="P1", StudyInstanceUID=s1,
             SeriesInstanceUID=ser_ct, StudyDate="20240105", StudyTime="093000",
             Modality="CT", AccessionNumber="ACC1", InstanceNumber=2),
        dict(PatientName="Smith^John", PatientID="P1", StudyInstanceUID=s1,
             SeriesInstanceUID=ser_sr, StudyDate="20240105", StudyTime="093000",
             Modality="SR", AccessionNumber="ACC1", InstanceNumber=1),
        dict(PatientName="Smith^John", PatientID="P1", StudyInstanceUID=s2,
             StudyDate="20230301", StudyTime="1405", Modality="MR", AccessionNumber="ACC2"),
        dict(PatientName="Smithson^Anna", PatientID="P2", StudyInstanceUID=s3,
             StudyDate="20240620", StudyTime="230000", Modality="CT", AccessionNumber="ACC3"),
    ]  # fmt: skip
    for attrs in rows:
        assert archive.store(part10(make_dataset(**attrs))).ok
    for name in ("chrX2.dcm", "chrGB2312.dcm"):
        assert archive.store((CHARSET / name).read_bytes()).ok
    uids.update(s1=s1, s2=s2, s3=s3, ct=ser_ct, sr=ser_sr)
    return uids


def find(archive: Archive, level: Level, **keys: str) -> list[dict[str, Any]]:
    with archive.sessions() as session:
        return list(query_rows(session, level, keys))


def study_uids(archive: Archive, **keys: str) -> set[str]:
    return {r["StudyInstanceUID"] for r in find(archive, Level.STUDY, **keys)}


def test_universal_and_single_value(archive: Archive, filled: dict[str, Any]) -> None:
    assert len(find(archive, Level.STUDY)) == 5
    assert study_uids(archive, PatientID="P1") == {filled["s1"], filled["s2"]}
    assert study_uids(archive, AccessionNumber="ACC3") == {filled["s3"]}
    assert study_uids(archive, PatientID="") == study_uids(archive)


def test_wildcards(archive: Archive, filled: dict[str, Any]) -> None:
    assert study_uids(archive, PatientName="smith*") == {filled["s1"], filled["s2"], filled["s3"]}
    assert study_uids(archive, PatientName="smith^*") == {filled["s1"], filled["s2"]}
    assert study_uids(archive, AccessionNumber="ACC?") == {filled["s1"], filled["s2"], filled["s3"]}
    assert study_uids(archive, PatientName="SMITH^JOHN") == {filled["s1"], filled["s2"]}
    assert study_uids(archive, PatientName="Smith") == set()  # single value is exact


def test_chinese_names_in_any_group(archive: Archive, filled: dict[str, Any]) -> None:
    rows = find(archive, Level.STUDY, PatientName="王^小东")
    assert [r["PatientName"] for r in rows] == ["Wang^XiaoDong=王^小东"]
    assert len(find(archive, Level.STUDY, PatientName="*小东")) == 2
    assert len(find(archive, Level.PATIENT, PatientName="张*")) == 1


def test_date_and_time_ranges(archive: Archive, filled: dict[str, Any]) -> None:
    assert study_uids(archive, StudyDate="20240101-20241231") == {filled["s1"], filled["s3"]}
    assert study_uids(archive, StudyDate="-20231231") == {filled["s2"]}
    assert study_uids(archive, StudyDate="20240601-") == {filled["s3"]}
    assert study_uids(archive, StudyDate="20240105") == {filled["s1"]}
    assert study_uids(archive, StudyTime="14-15") == {filled["s2"]}  # 1405 stored as 140500
    assert study_uids(archive, StudyTime="0900-1000", PatientID="P*") == {filled["s1"]}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("StudyDate", "2024"),
        ("StudyDate", "20240101-2024"),
        ("StudyDate", "20241231-20240101"),
        ("StudyDate", "1-2-3"),
        ("StudyTime", "25x"),
        ("StudyInstanceUID", "1.2.3 OR 1=1"),
        ("SeriesNumber", "abc"),
        ("StudyDate", "-"),
    ],
)
def test_malformed_values_are_invalid_queries(
    archive: Archive, filled: dict[str, Any], key: str, value: str
) -> None:
    level = Level.SERIES if key == "SeriesNumber" else Level.STUDY
    with pytest.raises(InvalidQuery):
        find(archive, level, **{key: value})


def test_uid_lists(archive: Archive, filled: dict[str, Any]) -> None:
    both = f"{filled['s1']}\\{filled['s3']}"
    assert study_uids(archive, StudyInstanceUID=both) == {filled["s1"], filled["s3"]}


def test_modalities_in_study(archive: Archive, filled: dict[str, Any]) -> None:
    rows = {r["StudyInstanceUID"]: r for r in find(archive, Level.STUDY)}
    assert rows[filled["s1"]]["ModalitiesInStudy"] == "CT\\SR"
    assert rows[filled["s1"]]["NumberOfStudyRelatedSeries"] == 2
    assert rows[filled["s1"]]["NumberOfStudyRelatedInstances"] == 3
    assert study_uids(archive, ModalitiesInStudy="SR") == {filled["s1"]}
    assert study_uids(archive, ModalitiesInStudy="MR\\SR") == {filled["s1"], filled["s2"]}


def test_series_and_instance_levels_scoped(archive: Archive, filled: dict[str, Any]) -> None:
    with archive.sessions() as session:
        series = list(query_rows(session, Level.SERIES, {}, study_uid=filled["s1"]))
        assert {s["SeriesInstanceUID"] for s in series} == {filled["ct"], filled["sr"]}
        assert {s["Modality"] for s in series} == {"CT", "SR"}
        ct = next(s for s in series if s["Modality"] == "CT")
        assert ct["NumberOfSeriesRelatedInstances"] == 2
        instances = list(
            query_rows(session, Level.INSTANCE, {"InstanceNumber": "2"}, series_uid=filled["ct"])
        )
        assert len(instances) == 1 and instances[0]["Rows"] == 128
        assert instances[0]["_header_json"].startswith("{")
        assert count_rows(session, Level.INSTANCE, {}, study_uid=filled["s1"]) == 3


def test_patient_level_counts(archive: Archive, filled: dict[str, Any]) -> None:
    (p1,) = find(archive, Level.PATIENT, PatientID="P1")
    assert p1["NumberOfPatientRelatedStudies"] == 2
    assert p1["NumberOfPatientRelatedSeries"] == 3
    assert p1["NumberOfPatientRelatedInstances"] == 4
    with pytest.raises(InvalidQuery):
        find(archive, Level.PATIENT, StudyDate="20240105")


def test_fuzzy_matching(archive: Archive, filled: dict[str, Any]) -> None:
    with archive.sessions() as session:
        rows = list(query_rows(session, Level.STUDY, {"PatientName": "xiao"}, fuzzy=True))
        assert len(rows) == 2
        rows = list(query_rows(session, Level.STUDY, {"PatientName": "ann smi"}, fuzzy=True))
        assert {r["PatientID"] for r in rows} == {"P2"}


def test_limit_offset_and_unsupported(archive: Archive, filled: dict[str, Any]) -> None:
    with archive.sessions() as session:
        page1 = list(query_rows(session, Level.STUDY, {}, limit=2))
        page2 = list(query_rows(session, Level.STUDY, {}, limit=2, offset=2))
    assert len(page1) == 2 and len(page2) == 2
    assert not {r["StudyInstanceUID"] for r in page1} & {r["StudyInstanceUID"] for r in page2}
    assert unsupported_keys(Level.STUDY, {"PatientName": "", "ScanOptions": "x"}) == ["ScanOptions"]
    assert "SOPInstanceUID" in SUPPORTED_KEYS[Level.INSTANCE]
    assert "SOPInstanceUID" not in SUPPORTED_KEYS[Level.STUDY]


def test_sql_injection_strings_are_just_values(archive: Archive, filled: dict[str, Any]) -> None:
    for hostile in ("' OR '1'='1", "%", "_", "\\", "P1'; DROP TABLE study; --"):
        assert study_uids(archive, PatientID=hostile) == set()
    assert len(find(archive, Level.STUDY)) == 5
