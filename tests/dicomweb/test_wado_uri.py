"""WADO-URI over real HTTP: originals, the Explicit VR Little Endian rule, rendered images."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_support import TESTS, LiveServer, stow_raw
from PIL import Image
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from support.instances import make_dataset, part10

pytestmark = [pytest.mark.db, pytest.mark.filterwarnings("ignore::UserWarning")]

TESTDATA = TESTS.parent.parent / "shared" / "testdata"
BIG_ENDIAN = TESTDATA / "dicomParser" / "CT1_UNC.explicit_big_endian.dcm"
JPEG_LS = TESTDATA / "dicomParser" / "encapsulated" / "multi-frame"
JPEG_LS_FILE = JPEG_LS / "CT0012.fragmented_no_bot_jpeg_ls.81.dcm"  # near-lossless, 2 frames


def read(data: bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


@pytest.fixture
def stored(live_server: LiveServer) -> dict[str, Any]:
    study = generate_uid()
    explicit = make_dataset(StudyInstanceUID=study, WindowCenter="40", WindowWidth="400")
    implicit = make_dataset(StudyInstanceUID=study)
    files = {
        "explicit": part10(explicit),
        "implicit": part10(implicit, ImplicitVRLittleEndian),
        "big": BIG_ENDIAN.read_bytes(),
        "jpegls": JPEG_LS_FILE.read_bytes(),
    }
    ids = {}
    for name, data in files.items():
        response = stow_raw(live_server.url, [data])
        assert response.status_code == 200, name
        url = response.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
        parts = url.split("/")
        ids[name] = {"studyUID": parts[-5], "seriesUID": parts[-3], "objectUID": parts[-1]}
    return {"files": files, "ids": ids, "explicit": explicit}


def wado(server: LiveServer, ids: dict[str, str], **params: str) -> requests.Response:
    query = {"requestType": "WADO", **ids, **params}
    return requests.get(f"{server.origin}/wado", params=query, timeout=60)


def test_originals_come_back_as_stored(live_server: LiveServer, stored: dict[str, Any]) -> None:
    for name in ("explicit", "jpegls"):
        response = wado(live_server, stored["ids"][name], contentType="application/dicom")
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/dicom"
        assert response.content == stored["files"][name], name


@pytest.mark.parametrize("name", ["implicit", "big"])
def test_implicit_and_big_endian_become_explicit_little(
    live_server: LiveServer, stored: dict[str, Any], name: str
) -> None:
    response = wado(live_server, stored["ids"][name], contentType="application/dicom")
    ds = read(response.content)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    original = read(stored["files"][name])
    assert np.array_equal(ds.pixel_array, original.pixel_array)
    assert ds.SOPInstanceUID == original.SOPInstanceUID


def test_transfer_syntax_parameter(live_server: LiveServer, stored: dict[str, Any]) -> None:
    ids = stored["ids"]["explicit"]
    rle = wado(live_server, ids, contentType="application/dicom", transferSyntax=RLELossless)
    assert read(rle.content).file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(read(rle.content).pixel_array, stored["explicit"].pixel_array)
    big = wado(
        live_server, ids, contentType="application/dicom", transferSyntax=ExplicitVRBigEndian
    )
    assert read(big.content).file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    same = wado(
        live_server, stored["ids"]["big"], contentType="application/dicom",
        transferSyntax=ExplicitVRBigEndian,
    )  # fmt: skip
    assert same.content == stored["files"]["big"]  # asked for as stored: the original
    refused = wado(
        live_server, ids, contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.4.50"
    )
    assert refused.status_code == 406


def test_rendered_images(live_server: LiveServer, stored: dict[str, Any]) -> None:
    ids = stored["ids"]["explicit"]
    default = wado(live_server, ids)
    assert default.headers["Content-Type"] == "image/jpeg"
    png = wado(live_server, ids, contentType="image/png")
    assert Image.open(io.BytesIO(png.content)).size == (128, 128)
    windowed = wado(live_server, ids, contentType="image/png", windowCenter="0", windowWidth="10")
    assert windowed.content != png.content
    small = wado(live_server, ids, rows="64", columns="64")
    assert Image.open(io.BytesIO(small.content)).size == (64, 64)
    region = wado(live_server, ids, contentType="image/png", region="0,0,0.5,0.25")
    assert Image.open(io.BytesIO(region.content)).size == (64, 32)
    jpegls = wado(live_server, stored["ids"]["jpegls"], contentType="image/png", frameNumber="2")
    assert jpegls.status_code == 200


def test_dicomweb_client_wado_uri(live_server: LiveServer, stored: dict[str, Any]) -> None:
    client = DICOMwebClient(url=live_server.origin, wado_url_prefix="wado")
    ids = stored["ids"]["jpegls"]
    # dicomweb-client has no WADO-URI method; its HTTP layer sends the query.
    response = client._http_get(
        f"{live_server.origin}/wado",
        params={"requestType": "WADO", **ids, "contentType": "application/dicom"},
        headers={"Accept": "application/dicom"},
    )
    assert response.content == stored["files"]["jpegls"]


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"requestType": "WADO"}, 400),
        ({"requestType": "OTHER", "studyUID": "1", "seriesUID": "2", "objectUID": "3"}, 400),
        ({"requestType": "WADO", "studyUID": "1.2", "seriesUID": "1.3", "objectUID": "1.4"}, 404),
        ({"requestType": "WADO", "studyUID": "bad uid", "seriesUID": "1", "objectUID": "1"}, 400),
    ],
)
def test_request_errors(live_server: LiveServer, params: dict[str, str], status: int) -> None:
    response = requests.get(f"{live_server.origin}/wado", params=params, timeout=30)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"anonymize": "yes"}, 406),
        ({"contentType": "video/mpeg"}, 406),
        ({"windowCenter": "40"}, 400),
        ({"frameNumber": "2"}, 404),
        ({"rows": "0"}, 400),
        ({"region": "0.5,0.5,0.2,0.2"}, 400),
        ({"imageQuality": "101"}, 400),
    ],
)
def test_parameter_errors(
    live_server: LiveServer, stored: dict[str, Any], params: dict[str, str], status: int
) -> None:
    response = wado(live_server, stored["ids"]["explicit"], **params)
    assert response.status_code == status, response.text
