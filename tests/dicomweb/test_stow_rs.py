"""STOW-RS over real HTTP: the Store Instances Response and every status PS3.18 10.5 names."""

from __future__ import annotations

from io import BytesIO
from xml.etree.ElementTree import fromstring

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.web import _load_xml_dataset
from dicomweb_support import BOUNDARY, STOW_TYPE, LiveServer, multipart, stow_client, stow_raw
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from cloudfilm.archive import Archive
from support.instances import make_dataset, part10

pytestmark = pytest.mark.db

REFERENCED, FAILED, RETRIEVE_URL = "00081199", "00081198", "00081190"
FAILURE_REASON, WARNING_REASON, SOP_INSTANCE = "00081197", "00081196", "00081155"


def failures(body: dict[str, object]) -> list[tuple[str | None, int]]:
    """(SOP Instance UID or None when unknown, FailureReason) of each failed item."""
    found: list[tuple[str | None, int]] = []
    for item in body.get(FAILED, {}).get("Value", []):  # type: ignore[attr-defined]
        uid = item.get(SOP_INSTANCE, {}).get("Value", [None])[0]
        found.append((uid, item[FAILURE_REASON]["Value"][0]))
    return found


def referenced(body: dict[str, object]) -> list[str]:
    items = body.get(REFERENCED, {}).get("Value", [])  # type: ignore[attr-defined]
    return [item[SOP_INSTANCE]["Value"][0] for item in items]


def test_store_with_dicomweb_client(client: DICOMwebClient, archive: Archive) -> None:
    study = generate_uid()
    a, b = make_dataset(StudyInstanceUID=study), make_dataset(StudyInstanceUID=study)
    result = stow_client(client, [part10(a), part10(b)], study=study)
    refs = result.ReferencedSOPSequence
    assert [r.ReferencedSOPInstanceUID for r in refs] == [a.SOPInstanceUID, b.SOPInstanceUID]
    assert "FailedSOPSequence" not in result
    # dicomweb-client sends "Host: 127.0.0.1" without the port; URLs follow the Host header.
    assert result.RetrieveURL == f"http://127.0.0.1/dicomweb/studies/{study}"
    url = refs[0].RetrieveURL
    assert url.endswith(
        f"/studies/{study}/series/{a.SeriesInstanceUID}/instances/{a.SOPInstanceUID}"
    )
    assert archive.instance(b.SOPInstanceUID).source == "stow"


def test_retrieve_urls_lead_to_the_instances(live_server: LiveServer) -> None:
    ds = make_dataset()
    body = stow_raw(live_server.url, [part10(ds)]).json()
    study_url = body[RETRIEVE_URL]["Value"][0]
    assert study_url == f"{live_server.url}/studies/{ds.StudyInstanceUID}"
    instance_url = body[REFERENCED]["Value"][0][RETRIEVE_URL]["Value"][0]
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    for url in (study_url, instance_url):
        response = requests.get(url, headers={"Accept": accept}, timeout=30)
        assert response.status_code == 200
        assert part10(ds) in response.content


def test_dicomweb_client_store_instances(client: DICOMwebClient, archive: Archive) -> None:
    ds = make_dataset(PatientName="Li^Lei")
    result = client.store_instances([ds])
    assert result.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert archive.instance(ds.SOPInstanceUID).sop_class_uid == ds.SOPClassUID


def test_duplicate_counts_as_stored_also_in_another_syntax(live_server: LiveServer) -> None:
    ds = make_dataset()
    first = stow_raw(live_server.url, [part10(ds)])
    again = stow_raw(live_server.url, [part10(ds), part10(ds, ImplicitVRLittleEndian)])
    assert first.status_code == 200 and again.status_code == 200
    assert referenced(again.json()) == [ds.SOPInstanceUID] * 2


def test_instances_of_another_study_are_refused(live_server: LiveServer, archive: Archive) -> None:
    study = generate_uid()
    inside, outside = make_dataset(StudyInstanceUID=study), make_dataset()
    response = stow_raw(live_server.url, [part10(inside), part10(outside)], study=study)
    assert response.status_code == 202
    body = response.json()
    assert referenced(body) == [inside.SOPInstanceUID]
    assert failures(body) == [(outside.SOPInstanceUID, 0xA901)]
    assert body[RETRIEVE_URL]["Value"] == [f"{live_server.url}/studies/{study}"]
    assert "another study" not in response.headers["Warning"]
    assert f"not to study {study}" in response.headers["Warning"]
    with pytest.raises(Exception, match="not in the archive"):
        archive.instance(outside.SOPInstanceUID)


def test_failure_reasons_202_and_409(live_server: LiveServer) -> None:
    good = make_dataset()
    no_series = make_dataset(SeriesInstanceUID=None)
    del no_series.SeriesInstanceUID
    conflicting = make_dataset()
    assert stow_raw(live_server.url, [part10(conflicting)]).status_code == 200
    moved = conflicting.copy()
    moved.StudyInstanceUID = generate_uid()
    parts = [part10(good), b"this is not DICOM at all", part10(no_series), part10(moved)]
    response = stow_raw(live_server.url, parts)
    assert response.status_code == 202
    body = response.json()
    assert referenced(body) == [good.SOPInstanceUID]
    assert failures(body) == [
        (None, 0xC000),  # cannot understand
        (no_series.SOPInstanceUID, 0xA900),  # identifying attribute missing
        (moved.SOPInstanceUID, 0xC001),  # identity conflict (docs/archive.md)
    ]
    assert len(response.headers["Warning"].split(", 299")) == 3
    none_stored = stow_raw(live_server.url, [b"junk", part10(moved)])
    assert none_stored.status_code == 409
    assert REFERENCED not in none_stored.json()


def test_data_with_remarks_gets_a_warning_reason(live_server: LiveServer) -> None:
    ds = make_dataset(StudyDate="yesterday")
    response = stow_raw(live_server.url, [part10(ds)])
    assert response.status_code == 200
    item = response.json()[REFERENCED]["Value"][0]
    assert item[WARNING_REASON]["Value"] == [0xB007]
    assert "StudyDate" in response.headers["Warning"]


def test_xml_answer_on_request(live_server: LiveServer) -> None:
    ds = make_dataset()
    response = stow_raw(live_server.url, [part10(ds), b"junk"], Accept="application/dicom+xml")
    assert response.status_code == 202
    assert response.headers["Content-Type"] == "application/dicom+xml"
    parsed = _load_xml_dataset(fromstring(response.content))
    assert parsed.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert int(parsed.FailedSOPSequence[0].FailureReason) == 0xC000


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        'multipart/related; type="application/dicom+json"; boundary=x',
        'multipart/related; type="application/dicom+xml"; boundary=x',
        "text/plain",
    ],
)
def test_wrong_media_type_is_415(live_server: LiveServer, content_type: str) -> None:
    response = requests.post(
        f"{live_server.url}/studies",
        data=part10(make_dataset()),
        headers={"Content-Type": content_type},
        timeout=30,
    )
    assert response.status_code == 415
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["error"] == "unsupported-media-type"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"no boundary anywhere", STOW_TYPE),
        (multipart([b"x"])[:-10], STOW_TYPE),  # cut before the closing delimiter
        (b"--" + BOUNDARY.encode() + b"--\r\n", STOW_TYPE),  # no part at all
        (multipart([b"x"]), 'multipart/related; type="application/dicom"'),  # no boundary
        (b"--" + BOUNDARY.encode() + b"\r\nbroken header line\r\n\r\nx", STOW_TYPE),
    ],
)
def test_malformed_multipart_is_400(
    live_server: LiveServer, body: bytes, content_type: str
) -> None:
    response = requests.post(
        f"{live_server.url}/studies", data=body, headers={"Content-Type": content_type}, timeout=30
    )
    assert response.status_code == 400
    assert response.json()["status"] == 400


def test_oversized_body_is_413(serve: object, archive: Archive) -> None:
    server: LiveServer = serve(stow_max_body_bytes=50_000)  # type: ignore[operator]
    data = part10(make_dataset())
    declared = stow_raw(server.url, [data, data])  # Content-Length above the limit
    assert declared.status_code == 413
    assert declared.json()["error"] == "too-large"

    def chunks() -> object:  # no Content-Length: the limit is found while reading
        body = multipart([data, data])
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    streamed = requests.post(
        f"{server.url}/studies", data=chunks(), headers={"Content-Type": STOW_TYPE}, timeout=30
    )
    assert streamed.status_code == 413


def test_instance_over_max_instance_bytes_is_413(serve: object) -> None:
    server: LiveServer = serve(max_instance_bytes=10_000)  # type: ignore[operator]
    response = stow_raw(server.url, [part10(make_dataset())])
    assert response.status_code == 413
    assert "limit of 10000" in response.json()["detail"]


def test_unacceptable_answer_type_is_406(live_server: LiveServer) -> None:
    response = stow_raw(live_server.url, [part10(make_dataset())], Accept="image/png")
    assert response.status_code == 406


def test_production_refuses_the_development_principal(serve: object) -> None:
    server: LiveServer = serve(env="production", secret_key="s" * 40)  # type: ignore[operator]
    response = stow_raw(server.url, [part10(make_dataset())])
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert requests.get(f"{server.url}/studies", timeout=30).status_code == 401


def test_large_part_is_spooled_and_stored(serve: object, archive: Archive) -> None:
    server: LiveServer = serve(spool_memory_bytes=4096)  # type: ignore[operator]
    ds = make_dataset()
    data = part10(ds)
    response = stow_raw(server.url, [data])
    assert response.status_code == 200
    with archive.open_instance(ds.SOPInstanceUID) as fp:
        assert fp.read() == data
    assert not list((archive.settings.tmp_dir).glob("tmp*")), "spool files are removed"


def test_stow_keeps_the_received_file_whole(live_server: LiveServer, archive: Archive) -> None:
    ds = make_dataset()
    data = part10(ds)
    assert stow_raw(live_server.url, [data]).status_code == 200
    assert archive.read_instance(ds.SOPInstanceUID) == data
    assert BytesIO(data).read(132)[128:] == b"DICM"
