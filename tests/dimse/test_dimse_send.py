"""``cloudfilm send``: a stored study to a known peer (DCMTK's storescp) with C-STORE.

Originals go byte-exact when the peer accepts their transfer syntax; a peer that accepts only
uncompressed data gets the compressed instances decompressed (derived data, same UIDs).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dimse_support import Dcmtk, StoreScp, dcmtk_env, free_port, start_storescp
from pydicom.uid import ExplicitVRLittleEndian
from test_dimse_retrieve import Study, assert_exact, make_study, received
from test_dimse_routing import cli

from cloudfilm.archive import Archive
from cloudfilm.dimse import Peer, PeerDirectory

pytestmark = [pytest.mark.db, pytest.mark.filterwarnings("ignore::UserWarning")]


def _uncompressed_only(dcmtk: Dcmtk, folder: Path) -> StoreScp:
    """storescp with its default acceptance: the uncompressed transfer syntaxes only."""
    folder.mkdir(parents=True)
    port = free_port()
    process = subprocess.Popen(
        [dcmtk.tool("storescp"), "+B", "-aet", "PLAIN", "-od", str(folder), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dcmtk_env(),
    )
    deadline = time.monotonic() + 10
    while dcmtk.run("echoscu", "-aec", "PLAIN", "127.0.0.1", port).returncode != 0:
        assert time.monotonic() < deadline, "storescp did not start"
        time.sleep(0.05)
    return StoreScp("PLAIN", port, folder, process)


@pytest.fixture
def study(archive: Archive) -> Study:
    """Seven instances in three series: explicit VR, implicit VR, JPEG 2000 and RLE."""
    return make_study(archive)


@pytest.fixture
def dest(dcmtk: Dcmtk, tmp_path: Path, archive: Archive) -> Iterator[StoreScp]:
    """storescp +xa +B (every transfer syntax, written bit for bit), the peer DEST."""
    scp = start_storescp(dcmtk, tmp_path / "dest")
    PeerDirectory(archive).add(Peer("DEST", "127.0.0.1", scp.port, frozenset()))
    try:
        yield scp
    finally:
        scp.process.terminate()
        scp.process.wait(10)


def test_send_a_study_byte_exact(
    dest: StoreScp, archive: Archive, study: Study, cli_env: dict[str, str]
) -> None:
    code, out = cli(cli_env, "send", study.study_uid, "--to", "DEST", "--json")
    assert code == 0, out
    summary = json.loads(out)
    assert summary["instances"] == summary["sent"] == len(study.instances)
    assert summary["failed"] == [] and summary["transcoded"] == {}
    assert_exact(archive, received(dest.files()), study.instances)


def test_send_one_series_with_a_readable_summary(
    dest: StoreScp, archive: Archive, study: Study, cli_env: dict[str, str]
) -> None:
    series = list(study.series)[1]
    code, out = cli(cli_env, "send", study.study_uid, "--series", series, "--to", "DEST")
    assert code == 0, out
    assert "2 of 2 instances sent to DEST" in out
    assert_exact(archive, received(dest.files()), study.series[series])


def test_a_peer_accepting_only_uncompressed_gets_decompressed_copies(
    dcmtk: Dcmtk, archive: Archive, study: Study, cli_env: dict[str, str], tmp_path: Path
) -> None:
    scp = _uncompressed_only(dcmtk, tmp_path / "plain")
    PeerDirectory(archive).add(Peer("PLAIN", "127.0.0.1", scp.port, frozenset()))
    try:
        code, out = cli(cli_env, "send", study.study_uid, "--to", "PLAIN", "--json")
    finally:
        scp.process.terminate()
        scp.process.wait(10)
    assert code == 0, out
    summary = json.loads(out)
    compressed = [
        u
        for u, ts in study.syntaxes.items()
        if ts not in (ExplicitVRLittleEndian, "1.2.840.10008.1.2")
    ]
    assert summary["sent"] == len(study.instances)
    assert summary["transcoded"] == {ExplicitVRLittleEndian: len(compressed)}
    files = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in scp.files()
    }
    assert sorted(files) == sorted(study.instances)
    for uid in compressed:
        copy = pydicom.dcmread(files[uid])
        assert copy.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        with archive.open_instance(uid) as blob:
            original = pydicom.dcmread(blob)
        assert np.array_equal(copy.pixel_array, original.pixel_array)
    uncompressed = [u for u in study.instances if u not in compressed]
    assert_exact(archive, received([files[u] for u in uncompressed]), uncompressed)


def test_send_refusals(dest: StoreScp, study: Study, cli_env: dict[str, str]) -> None:
    code, out = cli(cli_env, "send", study.study_uid, "--to", "NOBODY")
    assert code == 1 and "NOBODY is not a known peer" in out
    code, out = cli(cli_env, "send", "1.2.3.999", "--to", "DEST")
    assert code == 1 and "study 1.2.3.999 is not in the archive" in out
    code, out = cli(cli_env, "send", study.study_uid, "--series", "1.2.3.999", "--to", "DEST")
    assert code == 1 and "series 1.2.3.999" in out
    code, out = cli(cli_env, "send", "not a uid!", "--to", "DEST")
    assert code == 2 and "is not a UID" in out
    assert dest.files() == []


def test_send_to_a_peer_that_is_down(
    archive: Archive, study: Study, cli_env: dict[str, str]
) -> None:
    port = free_port()
    PeerDirectory(archive).add(Peer("DOWN", "127.0.0.1", port, frozenset()))
    code, out = cli(cli_env, "send", study.study_uid, "--to", "DOWN")
    assert code == 2
    assert f"DOWN at 127.0.0.1:{port} could not be reached" in out
