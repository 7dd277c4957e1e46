"""Helpers of the DIMSE tests: a live server on a free port, DCMTK tools, peers.

The tests use real peers on loopback: DCMTK's command line tools (Debian package ``dcmtk``,
found in /usr/bin so that pynetdicom's same-named apps on PATH are never picked up) and
pynetdicom as SCU where DCMTK cannot do what a test needs. Test modules import
their helpers from here; the fixtures are in ``conftest.py`` beside it.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.filereader import _read_file_meta_info

from cloudfilm.archive import Archive
from cloudfilm.dimse import Permission

TESTDATA = Path(__file__).resolve().parents[2].parent / "shared" / "testdata"
DCMTK_DIRS = ("/usr/bin", "/usr/local/bin")
REQUIRE_SERVICES = os.environ.get("CLOUDFILM_REQUIRE_SERVICES") == "1"

S, Q, R = Permission.STORE, Permission.QUERY, Permission.RETRIEVE
#: The AE titles DCMTK's tools call with by default, and pynetdicom's test SCU, as peers.
TEST_PEERS: dict[str, frozenset[Permission]] = {
    "ECHOSCU": frozenset(),
    "STORESCU": frozenset({S}),
    "FINDSCU": frozenset({Q}),
    "MOVESCU": frozenset({Q, R}),
    "GETSCU": frozenset({R}),
    "PYSCU": frozenset({S, Q, R}),
}


def service_missing(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (CLOUDFILM_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Dcmtk:
    """DCMTK's command line tools."""

    bin: Path

    def tool(self, name: str) -> str:
        return str(self.bin / name)

    def run(
        self, name: str, *args: str | Path, cwd: Path | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.tool(name), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            check=False,
            env=dcmtk_env(),
        )


def dcmtk_env() -> dict[str, str]:
    """DCMTK reads TCP_NODELAY from the environment; without it every small PDU waits for
    the peer's delayed ACK (40 ms on Linux), which would make the tests crawl."""
    return {**os.environ, "TCP_NODELAY": "1"}


def find_dcmtk() -> Dcmtk | None:
    for folder in DCMTK_DIRS:
        candidate = Path(folder) / "storescu"
        if candidate.is_file():
            out = subprocess.run(
                [str(candidate), "--version"], capture_output=True, text=True, check=False
            )
            if "dcmtk" in (out.stdout + out.stderr).lower():
                return Dcmtk(Path(folder))
    return None


@dataclass
class StoreScp:
    """DCMTK's storescp as a C-MOVE destination, writing what it receives bit for bit."""

    ae_title: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())


def start_storescp(dcmtk: Dcmtk, folder: Path, ae_title: str = "DEST", *extra: str) -> StoreScp:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [dcmtk.tool("storescp"), "+xa", "+B", "-aet", ae_title, "-od", str(folder), *extra,
         str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dcmtk_env(),
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if dcmtk.run("echoscu", "-aec", ae_title, "127.0.0.1", port).returncode == 0:
            return StoreScp(ae_title, port, folder, process)
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("storescp did not start")


def dataset_of(data: bytes) -> bytes:
    """The data set bytes of a Part 10 file (after group 0002), or ``data`` when bare."""
    if data[128:132] != b"DICM":
        return data
    stream = io.BytesIO(data)
    stream.seek(132)
    _read_file_meta_info(stream)
    return data[stream.tell() :]


def stored_dataset(archive: Archive, sop_instance_uid: str) -> bytes:
    """The stored data set of an instance: the blob from ``dataset_offset`` on."""
    row = archive.instance(sop_instance_uid)
    return archive.read_instance(sop_instance_uid)[row.dataset_offset :]


def copy_tree(files: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, path in enumerate(files):
        target = folder / f"{i:04d}_{path.name}"
        shutil.copyfile(path, target)
        out.append(target)
    return out
