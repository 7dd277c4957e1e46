"""QIDO-RS over real HTTP with dicomweb-client: each matching rule, Chinese names, paging."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.etree.ElementTree import fromstring

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_support import TESTS, LiveServer, element_value, part_headers, stow_raw
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from support.instances import make_dataset, part10

pytestmark = [pytest.mark.db, pytest.mark.filterwarnings("ignore::UserWarning")]

CHARSETS = TESTS.parent.parent / "shared" / "testdata" / "fo-dicom" / "charset"
PYDICOM_CHARSETS = Path(__import__("pydicom.data").data.__file__).parent / "charset_files"

PATIENT_NAME, PATIENT_ID, STUDY_UID, SERIES_UID = "00100010", "00100020", "0020000D", "0020000E"
SOP_UID, STUDY_DATE, RETRIEVE_URL = "00080018", "00080020", "00081190"
REQUIRED_STUDY = {
    "00080005", "00080020", "00080030", "00080050", "00080056", "00080061", "00080090",
    "00081190", "00100010", "00100020", "00100030", "00100040", "0020000D", "00200010",
    "00201206", "00201208",
}  # fmt: skip
REQUIRED_SERIES = {
    "00080005", "00080060", "0008103E", "00081190", "0020000E", "00200011", "00201209",
    "00400244", "00400245", "00400275",
}  # fmt: skip
REQUIRED_INSTANCE = {
    "00080005", "00080016", "00080018", "00080056", "00081190", "00200013", "00280010",
    "00280011", "00280100", "00280008",
}  # fmt: skip


def gbk_undeclared(**attrs: Any) -> Dataset:
    """A data set with a GBK name and no Specific Character Set (common in Chinese sites)."""
    ds = make_dataset(**attrs)
    del ds.SpecificCharacterSet
    ds[0x00100010] = DataElement(0x00100010, "PN", "李^小龙".encode("gbk"))
    return ds


@pytest.fixture
def filled(live_server: LiveServer) -> dict[str, str]:
    """Patients with two studies, two series, Chinese names in four encodings (8 studies:
    chrX1 and chrX2 share their study)."""
    uids = {k: generate_uid() for k in ("s1", "s2", "s3", "ct", "sr", "s4")}
    request_item = Dataset()
    request_item.RequestedProcedureID = "RP-778"
    request_item.ScheduledProcedureStepID = "SPS-1"
    sets = [
        make_dataset(PatientName="Smith^John", PatientID="P1", StudyInstanceUID=uids["s1"],
                     SeriesInstanceUID=uids["ct"], StudyDate="20240105", StudyTime="093000",
                     Modality="CT", AccessionNumber="ACC1", InstanceNumber=1,
                     RequestAttributesSequence=[request_item]),
        make_dataset(PatientName="Smith^John", PatientID="P1", StudyInstanceUID=uids["s1"],
                     SeriesInstanceUID=uids["ct"], StudyDate="20240105", StudyTime="093000",
                     Modality="CT", AccessionNumber="ACC1", InstanceNumber=2,
                     RequestAttributesSequence=[request_item]),
        make_dataset(PatientName="Smith^John", PatientID="P1", StudyInstanceUID=uids["s1"],
                     SeriesInstanceUID=uids["sr"], StudyDate="20240105", StudyTime="093000",
                     Modality="SR", AccessionNumber="ACC1", InstanceNumber=1),
        make_dataset(PatientName="Smith^John", PatientID="P1", StudyInstanceUID=uids["s2"],
                     StudyDate="20230301", StudyTime="1405", Modality="MR",
                     AccessionNumber="ACC2"),
        make_dataset(PatientName="Smithson^Anna", PatientID="P2", StudyInstanceUID=uids["s3"],
                     StudyDate="20240620", StudyTime="230000", Modality="CT",
                     AccessionNumber="ACC3", StudyDescription="CHEST"),
        gbk_undeclared(PatientID="G5", StudyInstanceUID=uids["s4"], StudyDate="20220202",
                       Modality="OT"),
    ]  # fmt: skip
    parts = [part10(ds) for ds in sets]
    parts += [(CHARSETS / "chrGB2312.dcm").read_bytes()]
    parts += [(PYDICOM_CHARSETS / name).read_bytes() for name in ("chrX1.dcm", "chrX2.dcm")]
    response = stow_raw(live_server.url, parts)
    assert response.status_code == 200, response.text
    return uids


def study_uids(results: list[dict[str, Any]]) -> set[str]:
    return {r[STUDY_UID]["Value"][0] for r in results}


def names(results: list[dict[str, Any]]) -> set[str]:
    out = set()
    for r in results:
        value = r.get(PATIENT_NAME, {}).get("Value", [{}])[0]
        out.add("=".join(value.get(g, "") for g in ("Alphabetic", "Ideographic")).rstrip("="))
    return out


def test_universal_and_single_value(client: DICOMwebClient, filled: dict[str, str]) -> None:
    everything = client.search_for_studies()
    assert len(everything) == 7
    for study in everything:
        assert study.keys() >= REQUIRED_STUDY, REQUIRED_STUDY - study.keys()
    p1 = client.search_for_studies(search_filters={"PatientID": "P1"})
    assert study_uids(p1) == {filled["s1"], filled["s2"]}
    by_tag = client.search_for_studies(search_filters={"00080050": "ACC3"})
    assert study_uids(by_tag) == {filled["s3"]}
    empty = client.search_for_studies(search_filters={"PatientID": "NOBODY"})
    assert empty == []


def test_wildcards_and_case_insensitive_names(
    client: DICOMwebClient, filled: dict[str, str]
) -> None:
    assert study_uids(client.search_for_studies(search_filters={"PatientName": "smith*"})) == {
        filled["s1"], filled["s2"], filled["s3"]
    }  # fmt: skip
    exact = client.search_for_studies(search_filters={"PatientName": "SMITH^JOHN"})
    assert study_uids(exact) == {filled["s1"], filled["s2"]}
    one_char = client.search_for_studies(search_filters={"PatientID": "P?"})
    assert study_uids(one_char) == {filled["s1"], filled["s2"], filled["s3"]}
    described = client.search_for_studies(search_filters={"StudyDescription": "CH*"})
    assert study_uids(described) == {filled["s3"]}


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("王*", {"Wang^XiaoDong=王^小東", "Wang^XiaoDong=王^小东"}),  # UTF-8 and GB18030
        ("*小东", {"Wang^XiaoDong=王^小东", "Zhang^XiaoDong=张^小东"}),  # GB18030, IR 58
        ("张^小东", {"Zhang^XiaoDong=张^小东"}),  # ISO 2022 IR 58
        ("李*", {"李^小龙"}),  # GBK without a declared character set
        ("wang^xiaodong", {"Wang^XiaoDong=王^小東", "Wang^XiaoDong=王^小东"}),
    ],
)
def test_chinese_names(
    client: DICOMwebClient, filled: dict[str, str], pattern: str, expected: set[str]
) -> None:
    found = client.search_for_studies(search_filters={"PatientName": pattern})
    assert names(found) == expected


def test_fuzzy_matching(client: DICOMwebClient, filled: dict[str, str]) -> None:
    literal = client.search_for_studies(search_filters={"PatientName": "xiao"})
    assert literal == []
    fuzzy = client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "xiao"})
    assert len(names(fuzzy)) == 3
    assert names(
        client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "joh"})
    ) == {"Smith^John"}


def test_date_and_time_ranges(client: DICOMwebClient, filled: dict[str, str]) -> None:
    def dates(value: str, key: str = "StudyDate") -> set[str]:
        found = client.search_for_studies(search_filters={key: value, "PatientID": "P*"})
        return {r[STUDY_DATE]["Value"][0] for r in found}

    assert dates("20240101-20241231") == {"20240105", "20240620"}
    assert dates("-20231231") == {"20230301"}
    assert dates("20240601-") == {"20240620"}
    assert dates("20240105") == {"20240105"}
    assert dates("1400-1500", "StudyTime") == {"20230301"}
    assert dates("2200-", "StudyTime") == {"20240620"}


def test_uid_lists(client: DICOMwebClient, filled: dict[str, str], live_server: LiveServer) -> None:
    s1, s3 = filled["s1"], filled["s3"]
    comma = client.search_for_studies(search_filters={"StudyInstanceUID": f"{s1},{s3}"})
    assert study_uids(comma) == {s1, s3}
    backslash = client.search_for_studies(search_filters={"StudyInstanceUID": f"{s1}\\{s3}"})
    assert study_uids(backslash) == {s1, s3}
    repeated = requests.get(
        f"{live_server.url}/studies",
        params=[("StudyInstanceUID", s1), ("StudyInstanceUID", s3)],
        timeout=30,
    )
    assert study_uids(repeated.json()) == {s1, s3}


def test_modalities_in_study(client: DICOMwebClient, filled: dict[str, str]) -> None:
    found = client.search_for_studies(search_filters={"ModalitiesInStudy": "SR"})
    assert study_uids(found) == {filled["s1"]}
    (study,) = found
    assert study["00080061"]["Value"] == ["CT", "SR"]
    assert study["00201206"]["Value"] == [2] and study["00201208"]["Value"] == [3]
    either = client.search_for_studies(search_filters={"ModalitiesInStudy": "MR\\SR"})
    assert study_uids(either) == {filled["s1"], filled["s2"]}


def test_series_and_instance_resources(client: DICOMwebClient, filled: dict[str, str]) -> None:
    s1, ct = filled["s1"], filled["ct"]
    series = client.search_for_series(s1)
    assert {s[SERIES_UID]["Value"][0] for s in series} == {ct, filled["sr"]}
    for item in series:
        assert item.keys() >= REQUIRED_SERIES, REQUIRED_SERIES - item.keys()
        assert PATIENT_NAME not in item  # scoped to a study: no study attributes needed
    all_ct = client.search_for_series(search_filters={"Modality": "CT"})
    assert {s[STUDY_UID]["Value"][0] for s in all_ct} == {s1, filled["s3"]}
    assert all(PATIENT_NAME in s for s in all_ct)  # not scoped: study attributes included
    instances = client.search_for_instances(s1, ct)
    assert [i["00200013"]["Value"][0] for i in instances] == [1, 2]
    for item in instances:
        assert item.keys() >= REQUIRED_INSTANCE, REQUIRED_INSTANCE - item.keys()
        url = item[RETRIEVE_URL]["Value"][0]
        assert url.endswith(f"/studies/{s1}/series/{ct}/instances/{item[SOP_UID]['Value'][0]}")
    in_study = client.search_for_instances(s1)
    assert len(in_study) == 3 and all(SERIES_UID in i for i in in_study)
    numbered = client.search_for_instances(
        search_filters={"InstanceNumber": "2", "PatientID": "P1"}
    )
    assert len(numbered) == 1
    assert client.search_for_series(generate_uid()) == []


def test_sequence_matching(client: DICOMwebClient, filled: dict[str, str]) -> None:
    key = "RequestAttributesSequence.RequestedProcedureID"
    found = client.search_for_series(search_filters={key: "RP-778"})
    assert [s[SERIES_UID]["Value"][0] for s in found] == [filled["ct"]]
    item = found[0]["00400275"]["Value"][0]
    assert item["00401001"]["Value"] == ["RP-778"] and item["00400009"]["Value"] == ["SPS-1"]
    assert client.search_for_series(search_filters={"00400275.00401001": "RP-7*"}) == found
    assert client.search_for_series(search_filters={key: "OTHER"}) == []


def test_includefield(client: DICOMwebClient, filled: dict[str, str]) -> None:
    (study,) = client.search_for_studies(
        fields=["InstitutionName", "00100021"], search_filters={"PatientID": "P2"}
    )
    assert "00080080" in study and "00100021" in study
    (everything,) = client.search_for_studies(fields=["all"], search_filters={"PatientID": "P2"})
    assert {"00080080", "00100021", "00081030"} <= everything.keys()
    (instance,) = client.search_for_instances(
        filled["s3"], fields=["SliceThickness", "00180060"]
    )  # not in the index: from the cached header
    assert instance["00180050"]["vr"] == "DS" and "00180060" in instance
    (full,) = client.search_for_instances(filled["s3"], fields=["all"])
    assert "00280030" in full and "7FE00010" not in full  # PixelSpacing; no pixel data


def test_limit_offset_and_warning(live_server: LiveServer, filled: dict[str, str]) -> None:
    url = f"{live_server.url}/studies"
    first = requests.get(url, params={"limit": 3}, timeout=30)
    assert len(first.json()) == 3
    assert "Additional results can be requested" in first.headers["Warning"]
    rest = requests.get(url, params={"limit": 10, "offset": 3}, timeout=30)
    assert len(rest.json()) == 4 and "Warning" not in rest.headers
    assert study_uids(first.json()).isdisjoint(study_uids(rest.json()))
    assert requests.get(url, params={"limit": 0}, timeout=30).json() == []


def test_default_and_maximum_page_size(serve: Any, filled: dict[str, str]) -> None:
    server: LiveServer = serve(qido_default_limit=2, qido_max_limit=4)
    url = f"{server.url}/studies"
    default = requests.get(url, timeout=30)
    assert len(default.json()) == 2 and "Additional results" in default.headers["Warning"]
    capped = requests.get(url, params={"limit": 100}, timeout=30)
    assert len(capped.json()) == 4
    assert "maximum of 4" in capped.headers["Warning"]


def test_get_remaining_pages_with_the_client(serve: Any, filled: dict[str, str]) -> None:
    server: LiveServer = serve(qido_default_limit=3, qido_max_limit=3)
    client = DICOMwebClient(url=server.url)
    assert len(client.search_for_studies(get_remaining=True)) == 7


def test_unsupported_keys_are_ignored_with_a_warning(
    live_server: LiveServer, filled: dict[str, str]
) -> None:
    response = requests.get(
        f"{live_server.url}/studies", params={"PatientID": "P2", "SOPClassUID": "1.2"}, timeout=30
    )
    assert response.status_code == 200 and len(response.json()) == 1
    assert "SOPClassUID" in response.headers["Warning"]


@pytest.mark.parametrize(
    "params",
    [
        {"NotAnAttribute": "x"},
        {"StudyDate": "2024-01-01"},
        {"StudyDate": "20240101-20230101"},
        {"StudyInstanceUID": "1.2.*"},
        {"limit": "-1"},
        {"offset": "ten"},
        {"fuzzymatching": "maybe"},
        {"includefield": "Nonsense"},
        {"PatientID": ["P1", "P2"]},
        {"SeriesNumber": "two"},
    ],
)
def test_bad_parameters_are_400(live_server: LiveServer, params: dict[str, Any]) -> None:
    response = requests.get(f"{live_server.url}/studies", params=params, timeout=30)
    if "SeriesNumber" in params:
        response = requests.get(f"{live_server.url}/series", params=params, timeout=30)
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 400


def test_xml_answer(live_server: LiveServer, filled: dict[str, str]) -> None:
    accept = 'multipart/related; type="application/dicom+xml"'
    response = requests.get(
        f"{live_server.url}/studies",
        params={"PatientID": "P1"},
        headers={"Accept": accept},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(
        'multipart/related; type="application/dicom+xml"'
    )
    assert [h["content-type"] for h in part_headers(response)] == ["application/dicom+xml"] * 2
    namespace = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"
    found = set()
    for chunk in response.content.split(b"<?xml")[1:]:
        root = fromstring(b"<?xml" + chunk.split(b"\r\n--")[0])
        assert root.tag == f"{namespace}NativeDicomModel"
        for attr in root.iter(f"{namespace}DicomAttribute"):
            if attr.get("keyword") == "StudyInstanceUID":
                found.add(attr.find(f"{namespace}Value").text)  # type: ignore[union-attr]
            if attr.get("tag") == "00100010":
                family = attr.find(
                    f"{namespace}PersonName/{namespace}Alphabetic/{namespace}FamilyName"
                )
                assert family is not None and family.text == "Smith"
    assert found == {filled["s1"], filled["s2"]}
    none = requests.get(
        f"{live_server.url}/studies",
        params={"PatientID": "X"},
        headers={"Accept": accept},
        timeout=30,
    )
    assert none.status_code == 204


def test_unacceptable_media_type_is_406(live_server: LiveServer, filled: dict[str, str]) -> None:
    response = requests.get(
        f"{live_server.url}/studies", headers={"Accept": "image/png"}, timeout=30
    )
    assert response.status_code == 406


def test_answers_come_from_the_index(live_server: LiveServer, filled: dict[str, str]) -> None:
    """Removing every blob changes nothing for QIDO (it never reads files)."""
    archive = live_server.archive
    before = requests.get(
        f"{live_server.url}/instances", params={"includefield": "all"}, timeout=30
    )
    for key in list(archive.blobs.keys()):
        archive.blobs.delete(key)
    after = requests.get(f"{live_server.url}/instances", params={"includefield": "all"}, timeout=30)
    assert after.status_code == 200 and after.json() == before.json()
    assert element_value(after.json()[0], "00080056") == "ONLINE"
