"""gzip content coding (RFC 9110 12.5.3) of WADO-RS /metadata and uncompressed frames."""

from __future__ import annotations

import gzip
import io

import pytest
import requests
from dicomweb_support import LiveServer
from pydicom.dataset import Dataset

from cloudfilm.dicom.synth import generate_studies
from cloudfilm.dicomweb.encoding import accepts_gzip


def part10(ds: Dataset) -> bytes:
    """The data set as a Part 10 file in its own transfer syntax."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


pytestmark = pytest.mark.db


def test_metadata_is_gzipped_when_accepted(live_server: LiveServer) -> None:
    datasets = list(generate_studies(modality="CT", slices=30, rows=16, columns=16))
    for ds in datasets:
        assert live_server.archive.store(part10(ds)).ok
    study, series = datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
    url = f"{live_server.url}/studies/{study}/series/{series}/metadata"
    plain = requests.get(url, headers={"Accept-Encoding": "identity"}, timeout=30)
    assert plain.status_code == 200 and "Content-Encoding" not in plain.headers
    assert plain.headers["Vary"] == "Accept-Encoding"
    raw = requests.get(url, headers={"Accept-Encoding": "gzip, br"}, stream=True, timeout=30)
    assert raw.headers["Content-Encoding"] == "gzip"
    body = raw.raw.read(decode_content=False)
    assert len(body) * 5 < len(plain.content)
    assert gzip.decompress(body) == plain.content
    assert raw.headers["ETag"] != plain.headers["ETag"]
    again = requests.get(
        url, headers={"Accept-Encoding": "gzip", "If-None-Match": raw.headers["ETag"]}, timeout=30
    )
    assert again.status_code == 304
    stale = requests.get(
        url, headers={"Accept-Encoding": "gzip", "If-None-Match": plain.headers["ETag"]},
        timeout=30,
    )  # fmt: skip
    assert stale.status_code == 200


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("br;q=1, gzip;q=0.5", True),
        ("gzip;q=0", False),
        ("*", True),
        ("identity", False),
        ("", False),
        ("gzip;q=abc", False),
    ],
)
def test_accepts_gzip(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected


def test_uncompressed_frames_are_gzipped_when_accepted(live_server: LiveServer) -> None:
    datasets = list(generate_studies(modality="CT", slices=1, rows=128, columns=128))
    assert live_server.archive.store(part10(datasets[0])).ok
    ds = datasets[0]
    url = (
        f"{live_server.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/1"
    )
    accept = 'multipart/related; type="application/octet-stream"'
    plain = requests.get(url, headers={"Accept": accept, "Accept-Encoding": "identity"}, timeout=30)
    assert "Content-Encoding" not in plain.headers
    assert ds.PixelData in plain.content
    coded = requests.get(
        url, headers={"Accept": accept, "Accept-Encoding": "gzip"}, stream=True, timeout=30
    )
    assert coded.headers["Content-Encoding"] == "gzip"
    body = coded.raw.read(decode_content=False)
    assert len(body) < len(plain.content) / 2
    # the same multipart answer, but for its boundary
    boundary = coded.headers["Content-Type"].split("boundary=")[1].strip('"')
    theirs = plain.headers["Content-Type"].split("boundary=")[1].strip('"')
    assert gzip.decompress(body).replace(boundary.encode(), theirs.encode()) == plain.content
    single = requests.get(
        url, headers={"Accept": "application/octet-stream", "Accept-Encoding": "gzip"},
        stream=True, timeout=30,
    )  # fmt: skip
    assert gzip.decompress(single.raw.read(decode_content=False)) == ds.PixelData


def test_compressed_frames_are_sent_as_stored(live_server: LiveServer) -> None:
    (ds,) = generate_studies(
        modality="CT", slices=1, rows=64, columns=64, transfer_syntax="rle"
    )  # fmt: skip
    assert live_server.archive.store(part10(ds)).ok
    url = (
        f"{live_server.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/1"
    )
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    stored = requests.get(url, headers={"Accept": accept, "Accept-Encoding": "gzip"}, timeout=30)
    assert stored.status_code == 200 and "Content-Encoding" not in stored.headers
    decoded = requests.get(
        url, headers={"Accept": 'multipart/related; type="application/octet-stream"',
                      "Accept-Encoding": "gzip"}, timeout=30,
    )  # fmt: skip
    assert decoded.headers["Content-Encoding"] == "gzip"
