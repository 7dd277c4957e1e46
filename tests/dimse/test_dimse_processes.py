"""``cloudfilm dimse --processes 2``: two processes on one port, sixteen storescu at once.

The kernel spreads the associations over both processes (``SO_REUSEPORT``); each instance
is stored once whichever process took it, both processes did work, and stopping the first
process stops the other.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dimse_support import Dcmtk, dcmtk_env, free_port
from pydicom.uid import generate_uid

from cloudfilm.archive import Archive
from cloudfilm.dimse import Peer, PeerDirectory
from cloudfilm.dimse.peers import Permission
from cloudfilm.index.queries import archive_totals
from cloudfilm.maintenance import check_archive
from support.instances import make_dataset, part10

pytestmark = [pytest.mark.db, pytest.mark.slow]


def _listeners(port: int) -> set[int]:
    """PIDs of the processes listening on ``port`` (from ``ss``)."""
    out = subprocess.run(
        ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_two_processes_share_the_port_and_store_each_instance_once(
    dcmtk: Dcmtk, archive: Archive, cli_env: dict[str, str], tmp_path: Path
) -> None:
    PeerDirectory(archive).add(Peer("STORESCU", "127.0.0.1", 104, frozenset({Permission.STORE})))
    PeerDirectory(archive).add(Peer("ECHOSCU", "127.0.0.1", 104, frozenset()))
    files = []
    study = generate_uid()
    for i in range(24):
        ds = make_dataset(StudyInstanceUID=study, PatientID="PROC", InstanceNumber=i + 1)
        del ds[0xFFFCFFFC]  # trailing padding, which storescu would not send
        files.append(tmp_path / f"{i:02d}.dcm")
        files[-1].write_bytes(part10(ds))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cloudfilm.cli", "dimse", "--port", str(port), "--processes", "2"],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(_listeners(port)) < 2:
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert time.monotonic() < deadline, "the second process did not listen"
            time.sleep(0.1)
        pids = _listeners(port)
        assert server.pid in pids
        ticks = {pid: _cpu_ticks(pid) for pid in pids}
        command = [dcmtk.tool("storescu"), "-aec", "CLOUDFILM", "127.0.0.1", str(port)]
        for _ in range(2):  # sixteen associations: all on one process has odds of 2^-15
            senders = [
                subprocess.Popen(
                    command + [str(f) for f in files[k * 3 : k * 3 + 6]],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=dcmtk_env(),
                )
                for k in range(8)
            ]
            for sender in senders:
                _, err = sender.communicate(timeout=120)
                assert sender.returncode == 0, err
        with archive.sessions() as session:
            totals = archive_totals(session)
        assert (totals["instances"], totals["studies"]) == (24, 1)
        report = check_archive(archive)
        assert report.consistent_after, report.lines()
        # storing a few instances costs tens of ms of CPU; an idle process, a tick or two
        busy = {pid for pid in pids if _cpu_ticks(pid) > ticks[pid] + 3}
        assert busy == pids, "one of the processes served nothing"
        children = pids - {server.pid}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    # the child stopped with the first process
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() for pid in children):
        assert time.monotonic() < deadline, "a child process outlived the first one"
        time.sleep(0.1)
    assert not _listeners(port)
