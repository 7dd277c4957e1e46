"""WADO-RS over real HTTP: instances, transfer syntax negotiation, metadata, frames, bulk data."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_support import TESTS, LiveServer, part_headers, retrieve_parts, stow_raw
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from cloudfilm.archive import Archive
from support.instances import make_dataset, part10

pytestmark = [pytest.mark.db, pytest.mark.filterwarnings("ignore::UserWarning")]

TESTDATA = TESTS.parent.parent / "shared" / "testdata"
ENCAPSULATED = sorted((TESTDATA / "dicomParser" / "encapsulated").rglob("*.dcm"))
ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def decode(data: bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


@pytest.fixture
def study(live_server: LiveServer) -> dict[str, Any]:
    """One study: a CT series of three (stored out of order, one implicit VR), an SR-less MR."""
    study_uid, ct, mr = generate_uid(), generate_uid(), generate_uid()
    sets = [
        make_dataset(StudyInstanceUID=study_uid, SeriesInstanceUID=ct, InstanceNumber=3,
                     SeriesNumber=1),
        make_dataset(StudyInstanceUID=study_uid, SeriesInstanceUID=ct, InstanceNumber=1,
                     SeriesNumber=1),
        make_dataset(StudyInstanceUID=study_uid, SeriesInstanceUID=ct, InstanceNumber=2,
                     SeriesNumber=1),
        make_dataset(StudyInstanceUID=study_uid, SeriesInstanceUID=mr, InstanceNumber=1,
                     SeriesNumber=2, Modality="MR"),
    ]  # fmt: skip
    files = [part10(sets[0]), part10(sets[1], ImplicitVRLittleEndian), part10(sets[2]),
             part10(sets[3])]  # fmt: skip
    assert stow_raw(live_server.url, files).status_code == 200
    return {"uid": study_uid, "ct": ct, "mr": mr, "sets": sets, "files": files}


def test_study_series_instance_originals_byte_exact(
    client: DICOMwebClient, live_server: LiveServer, study: dict[str, Any]
) -> None:
    base = f"{live_server.url}/studies/{study['uid']}"
    files, sets = study["files"], study["sets"]
    in_order = [files[1], files[2], files[0], files[3]]  # series number, instance number
    assert retrieve_parts(client, base) == in_order
    assert retrieve_parts(client, f"{base}/series/{study['ct']}") == in_order[:3]
    one = f"{base}/series/{study['ct']}/instances/{sets[0].SOPInstanceUID}"
    assert retrieve_parts(client, one) == [files[0]]
    response = requests.get(base, headers={"Accept": ANY_SYNTAX}, timeout=30)
    assert int(response.headers["Content-Length"]) == len(response.content)
    syntaxes = [h["content-type"] for h in part_headers(response)]
    assert syntaxes[0] == f"application/dicom; transfer-syntax={ImplicitVRLittleEndian}"
    assert syntaxes[1] == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"


def test_default_syntax_is_explicit_vr_little_endian(
    client: DICOMwebClient, study: dict[str, Any]
) -> None:
    instances = client.retrieve_study(study["uid"])  # dicomweb-client asks for no syntax
    assert len(instances) == 4
    for ds in instances:
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    implicit = next(d for d in instances if d.SOPInstanceUID == study["sets"][1].SOPInstanceUID)
    assert np.array_equal(implicit.pixel_array, study["sets"][1].pixel_array)


@pytest.mark.parametrize("target", [JPEGLSLossless, RLELossless, JPEG2000Lossless])
def test_transcoding_on_request(client: DICOMwebClient, study: dict[str, Any], target: str) -> None:
    ds = study["sets"][0]
    got = client.retrieve_instance(
        study["uid"], study["ct"], ds.SOPInstanceUID, media_types=(("application/dicom", target),)
    )
    assert got.file_meta.TransferSyntaxUID == target
    assert np.array_equal(got.pixel_array, ds.pixel_array)  # lossless
    assert got.SOPInstanceUID == ds.SOPInstanceUID


def test_unproducible_syntax_is_406_and_fallbacks_apply(
    live_server: LiveServer, study: dict[str, Any]
) -> None:
    url = f"{live_server.url}/studies/{study['uid']}"
    baseline = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    refused = requests.get(url, headers={"Accept": baseline}, timeout=30)
    assert refused.status_code == 406
    assert refused.headers["Content-Type"] == "application/problem+json"
    fallback = requests.get(url, headers={"Accept": f"{baseline}, {ANY_SYNTAX}; q=0.5"}, timeout=30)
    assert fallback.status_code == 200
    assert "transfer-syntax=*" in fallback.headers["Content-Type"]
    assert requests.get(url, headers={"Accept": "image/png"}, timeout=30).status_code == 406


def test_missing_resources_are_404_and_bad_uids_400(
    live_server: LiveServer, study: dict[str, Any]
) -> None:
    url = live_server.url
    assert requests.get(f"{url}/studies/{generate_uid()}", timeout=30).status_code == 404
    other = f"{url}/studies/{study['uid']}/series/{generate_uid()}"
    assert requests.get(other, timeout=30).status_code == 404
    assert requests.get(f"{other}/metadata", timeout=30).status_code == 404
    bad = requests.get(f"{url}/studies/not%20a%20uid", timeout=30)
    assert bad.status_code == 400 and bad.json()["error"] == "malformed-request"
    unknown = requests.get(f"{url}/nothing/here", timeout=30)
    assert unknown.status_code == 404 and unknown.json()["status"] == 404
    wrong_method = requests.delete(f"{url}/studies/{study['uid']}", timeout=30)
    assert wrong_method.status_code == 405 and "GET" in wrong_method.headers["Allow"]


def test_etag_cache_control_and_cors(live_server: LiveServer, study: dict[str, Any]) -> None:
    sop = study["sets"][0].SOPInstanceUID
    url = f"{live_server.url}/studies/{study['uid']}/series/{study['ct']}/instances/{sop}"
    first = requests.get(url, headers={"Accept": ANY_SYNTAX, "Origin": "http://viewer"}, timeout=30)
    etag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == "private, max-age=86400"
    assert first.headers["Access-Control-Allow-Origin"] == "*"
    assert "ETag" in first.headers["Access-Control-Expose-Headers"]
    again = requests.get(url, headers={"Accept": ANY_SYNTAX, "If-None-Match": etag}, timeout=30)
    assert again.status_code == 304 and not again.content
    study_level = requests.get(f"{live_server.url}/studies/{study['uid']}/metadata", timeout=30)
    assert study_level.headers["Cache-Control"] == "private, no-cache"
    preflight = requests.options(
        f"{live_server.url}/studies/{study['uid']}/metadata",
        headers={"Origin": "http://viewer", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"},
        timeout=30,
    )  # fmt: skip
    assert preflight.status_code == 204
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


def test_cors_origins_are_configurable(serve: Any, study: dict[str, Any]) -> None:
    server: LiveServer = serve(dicomweb_cors_origins=["https://viewer.example"])
    url = f"{server.url}/studies"
    allowed = requests.get(url, headers={"Origin": "https://viewer.example"}, timeout=30)
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://viewer.example"
    other = requests.get(url, headers={"Origin": "https://evil.example"}, timeout=30)
    assert "Access-Control-Allow-Origin" not in other.headers


def test_metadata_at_each_level(
    client: DICOMwebClient, live_server: LiveServer, study: dict[str, Any], archive: Archive
) -> None:
    whole = client.retrieve_study_metadata(study["uid"])
    assert [m["00200013"]["Value"][0] for m in whole] == [1, 2, 3, 1]
    series = client.retrieve_series_metadata(study["uid"], study["mr"])
    assert len(series) == 1 and series[0]["00080060"]["Value"] == ["MR"]
    ds = study["sets"][0]
    one = client.retrieve_instance_metadata(study["uid"], study["ct"], ds.SOPInstanceUID)
    uri = one["7FE00010"]["BulkDataURI"]
    # URLs follow the Host header, which dicomweb-client sends without the port.
    assert uri == (
        f"http://127.0.0.1/dicomweb/studies/{study['uid']}/series/{study['ct']}/instances/"
        f"{ds.SOPInstanceUID}/bulkdata/7FE00010"
    )
    pixels = client.retrieve_bulkdata(uri.replace("http://127.0.0.1/", f"{live_server.origin}/"))
    assert pixels == [ds.PixelData]


def test_bulkdata_inside_a_sequence(client: DICOMwebClient, live_server: LiveServer) -> None:
    path = TESTDATA / "fo-dicom" / "JPEGwithIcon.dcm"
    response = stow_raw(live_server.url, [path.read_bytes()])
    assert response.status_code == 200
    url = response.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
    (meta,) = requests.get(f"{url}/metadata", timeout=30).json()
    icon = meta["00880200"]["Value"][0]["7FE00010"]
    assert icon["BulkDataURI"] == f"{url}/bulkdata/00880200/0/7FE00010"
    original = decode(path.read_bytes())
    assert client.retrieve_bulkdata(icon["BulkDataURI"]) == [
        original.IconImageSequence[0].PixelData
    ]
    missing = requests.get(f"{url}/bulkdata/00880200/5/7FE00010", timeout=30)
    assert missing.status_code == 404


def _frames_of(path: Path) -> np.ndarray[Any, Any]:
    ds = decode(path.read_bytes())
    arr = ds.pixel_array
    return arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[None]


@pytest.mark.parametrize("path", ENCAPSULATED, ids=lambda p: p.name)
def test_frames_match_pydicom(
    client: DICOMwebClient, live_server: LiveServer, archive: Archive, path: Path
) -> None:
    response = stow_raw(live_server.url, [path.read_bytes()])
    assert response.status_code == 200
    ref = response.json()["00081199"]["Value"][0]
    sop = ref["00081155"]["Value"][0]
    row = archive.instance(sop)
    study_uid, series_uid = _uids(archive, sop)
    expected = _frames_of(path)
    numbers = list(range(1, len(expected) + 1))
    native = client.retrieve_instance_frames(
        study_uid, series_uid, sop, numbers,
        media_types=(("application/octet-stream", ExplicitVRLittleEndian),),
    )  # fmt: skip
    assert len(native) == len(expected)
    for got, want in zip(native, expected, strict=True):
        le = want.astype(want.dtype.newbyteorder("<"))
        assert got == np.ascontiguousarray(le).tobytes()
    stored = client.retrieve_instance_frames(study_uid, series_uid, sop, numbers[::-1])
    assert len(stored) == len(expected)
    if row.transfer_syntax_uid not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        for got, want in zip(stored, expected[::-1], strict=True):
            ds = decode(path.read_bytes())
            ds.NumberOfFrames = 1
            from pydicom.encaps import encapsulate

            ds.PixelData = encapsulate([got])
            assert np.array_equal(ds.pixel_array, want)


def _uids(archive: Archive, sop: str) -> tuple[str, str]:
    from cloudfilm.index.models import Instance, Series, Study

    with archive.sessions() as session:
        return tuple(  # type: ignore[return-value]
            session.query(Study.study_uid, Series.series_uid)
            .join(Series, Series.study_pk == Study.pk)
            .join(Instance, Instance.series_pk == Series.pk)
            .filter(Instance.sop_instance_uid == sop)
            .one()
        )


def test_frame_errors(live_server: LiveServer, study: dict[str, Any]) -> None:
    sop = study["sets"][0].SOPInstanceUID
    url = f"{live_server.url}/studies/{study['uid']}/series/{study['ct']}/instances/{sop}/frames"
    assert requests.get(f"{url}/2", timeout=30).status_code == 404
    assert requests.get(f"{url}/0", timeout=30).status_code == 400
    assert requests.get(f"{url}/1,x", timeout=30).status_code == 400
    jpeg = requests.get(
        f"{url}/1", headers={"Accept": 'multipart/related; type="image/jpeg"'}, timeout=30
    )
    assert jpeg.status_code == 406  # stored uncompressed; we do not recompress frames
    single = requests.get(f"{url}/1", headers={"Accept": "application/octet-stream"}, timeout=30)
    assert single.status_code == 200 and single.content == study["sets"][0].PixelData


def test_bare_application_dicom(live_server: LiveServer, study: dict[str, Any]) -> None:
    ds = study["sets"][3]
    url = f"{live_server.url}/studies/{study['uid']}/series/{study['mr']}"
    one = requests.get(
        f"{url}/instances/{ds.SOPInstanceUID}", headers={"Accept": "application/dicom"}, timeout=30
    )
    assert (
        one.headers["Content-Type"]
        == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
    )
    assert one.content == study["files"][3]
    series = requests.get(url, headers={"Accept": "application/dicom"}, timeout=30)
    assert series.headers["Content-Type"].startswith("multipart/related")
