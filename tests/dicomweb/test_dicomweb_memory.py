"""A large upload and a large retrieval keep the server's memory bounded.

The server is ``cloudfilm serve`` in a subprocess on the test's archive (SQLite or PostgreSQL);
its peak resident memory (``VmHWM`` of ``/proc/PID/status``) is read after each transfer. The
client streams too (a generator uploads, ``iter_content`` downloads), so neither side ever holds
the 420 MB involved. Nothing here measures time.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from dicomweb_support import BOUNDARY, STOW_TYPE, free_port
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cloudfilm.archive import Archive
from support.instances import make_dataset

pytestmark = [
    pytest.mark.db,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc"),
]

MB = 1024 * 1024
FRAME = 512 * 512 * 2
#: Growth of the server's peak RSS allowed while it moves ~420 MB (it holds none of it).
BOUND = 120 * MB


def peak_rss(pid: int) -> int:
    return _status(pid, "VmHWM")


def rss(pid: int) -> int:
    return _status(pid, "VmRSS")


def _status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def big_instance(study: str, frames: int) -> tuple[bytes, int]:
    """The header of a multi-frame 512x512 16-bit instance and the size of its pixel value."""
    ds = make_dataset(StudyInstanceUID=study, Rows=512, Columns=512, NumberOfFrames=frames)
    del ds.PixelData
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(b"\x00" * 128 + b"DICM")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    write_file_meta_info(out, ds.file_meta)
    write_dataset(out, ds)
    length = frames * FRAME
    out.write(b"\xe0\x7f\x10\x00OW\x00\x00" + length.to_bytes(4, "little"))
    return bytes(out.getvalue()), length


def body(parts: list[tuple[bytes, int]]) -> Iterator[bytes]:
    chunk = bytes(range(256)) * 4096  # 1 MiB of varied bytes
    for header, length in parts:
        yield f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + header
        left = length
        while left:
            piece = chunk[: min(left, len(chunk))]
            left -= len(piece)
            yield piece
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.fixture
def server(archive: Archive, cli_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {**cli_env, "CLOUDFILM_HTTP_PORT": str(port), "CLOUDFILM_LOG_LEVEL": "WARNING"}
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudfilm.cli", "serve"], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if requests.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        else:
            pytest.fail("the server did not start: " + (tmp_path / "server.log").read_text())
        yield url + "/dicomweb", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_large_upload_and_retrieval_keep_memory_bounded(server: tuple[str, int]) -> None:
    url, pid = server
    study = generate_uid()
    requests.get(f"{url}/studies", timeout=30)  # warm up: imports and first queries done
    baseline = rss(pid)
    parts = [big_instance(study, 800)]  # one 420 MB instance (> any spool in memory)
    total = sum(length for _, length in parts)
    response = requests.post(
        f"{url}/studies",
        data=body(parts),
        headers={"Content-Type": STOW_TYPE},
        timeout=600,
    )
    assert response.status_code == 200, response.text
    after_upload = peak_rss(pid)
    assert total >= 400 * MB
    assert after_upload - baseline < BOUND, (baseline, after_upload)

    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    received = 0
    with requests.get(
        f"{url}/studies/{study}", headers={"Accept": accept}, stream=True, timeout=600
    ) as answer:
        assert answer.status_code == 200
        for chunk in answer.iter_content(chunk_size=MB):
            received += len(chunk)
    assert received > total
    after_retrieval = peak_rss(pid)
    assert after_retrieval - baseline < BOUND, (baseline, after_retrieval)

    frames = requests.get(
        f"{url}/studies/{study}/series/{_series(url, study)}/instances/"
        f"{_sop(url, study)}/frames/1,400,800",
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        timeout=120,
    )
    assert frames.status_code == 200 and len(frames.content) > 3 * FRAME
    assert peak_rss(pid) - baseline < BOUND


def _series(url: str, study: str) -> str:
    (series,) = requests.get(f"{url}/studies/{study}/series", timeout=30).json()
    return str(series["0020000E"]["Value"][0])


def _sop(url: str, study: str) -> str:
    (inst,) = requests.get(f"{url}/studies/{study}/instances", timeout=30).json()
    return str(inst["00080018"]["Value"][0])
