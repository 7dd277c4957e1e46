"""``cloudfilm peers``, ``cloudfilm dimse``, ``cloudfilm serve --dicom-port``; configured peers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from dimse_support import Dcmtk, free_port
from typer.testing import CliRunner

from cloudfilm.archive import Archive
from cloudfilm.cli import app
from cloudfilm.core.config import Settings
from cloudfilm.dimse import DimseServer, Peer, PeerDirectory, Permission

pytestmark = pytest.mark.db

runner = CliRunner()


def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run the command in-process with exactly the ``CLOUDFILM_*`` variables of ``env``."""
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("CLOUDFILM_")}
    result = runner.invoke(app, list(args), env={**unset, **env})
    return result.exit_code, result.output


def test_peers_add_list_remove(cli_env: dict[str, str]) -> None:
    code, out = cli(cli_env, "peers", "add", "CT1", "10.1.2.3", "104", "--allow", "store,query",
                    "--from", "10.1.2.0/24", "--from", "ct1.example", "--description", "CT room 3",
                    "--institution", "Hospital A", "--department", "radiology")  # fmt: skip
    assert code == 0, out
    assert "may query, store" in out
    code, out = cli(cli_env, "peers", "add", "PACS", "10.9.9.9", "11112", "--allow", "none")
    assert code == 0, out
    code, out = cli(cli_env, "peers", "list", "--json")
    assert code == 0, out
    listed = {p["ae_title"]: p for p in json.loads(out)}
    assert listed["CT1"] == {
        "ae_title": "CT1", "host": "10.1.2.3", "port": 104, "allow": ["query", "store"],
        "allowed_from": ["10.1.2.0/24", "ct1.example"], "description": "CT room 3",
        "institution": "Hospital A", "department": "radiology", "tls": False, "origin": "index",
    }  # fmt: skip
    assert listed["PACS"]["allow"] == []
    code, out = cli(cli_env, "peers", "list")
    assert code == 0 and "CT1" in out and "2 peers" in out
    assert cli(cli_env, "peers", "remove", "CT1")[0] == 0
    code, out = cli(cli_env, "peers", "list", "--json")
    assert [p["ae_title"] for p in json.loads(out)] == ["PACS"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["CT1", "h", "104", "--allow", "store,delete"], "unknown permission 'delete'"),
        (["WAY_TOO_LONG_AE_TITLE", "h", "104"], "not an AE title"),
        (["BS\\X", "h", "104"], "not an AE title"),
        (["CT1", "h", "0"], "port 0"),
        (["CT1", "h", "104", "--from", "10.0.0.0/33"], "not a CIDR block"),
        (["CT1", "bad host!", "104"], "neither a host name"),
    ],
)
def test_peers_add_refuses_bad_values(
    cli_env: dict[str, str], args: list[str], message: str
) -> None:
    code, out = cli(cli_env, "peers", "add", *args)
    assert code == 1
    assert message in out


def test_peers_add_twice_and_remove_unknown(cli_env: dict[str, str]) -> None:
    assert cli(cli_env, "peers", "add", "CT1", "10.1.2.3", "104")[0] == 0
    code, out = cli(cli_env, "peers", "add", "CT1", "10.1.2.4", "104")
    assert code == 1 and "already exists" in out
    code, out = cli(cli_env, "peers", "remove", "NOPE")
    assert code == 1 and "no peer" in out


def test_peers_from_the_configuration(settings: Settings) -> None:
    settings.dimse_peers = Settings(
        dimse_peers=[
            {"ae_title": "CONF1", "host": "127.0.0.1", "port": 104, "allow": ["query"]},
            {"ae_title": "CONF2", "host": "10.0.0.1", "allowed_from": ["10.0.0.0/8"]},
        ]
    ).dimse_peers
    with Archive.open(settings) as archive:
        directory = PeerDirectory(archive)
        directory.add(Peer("DB1", "127.0.0.1", 104, frozenset({Permission.STORE})))
        peers = {p.ae_title: p for p in directory.all()}
        assert sorted(peers) == ["CONF1", "CONF2", "DB1"]
        assert peers["CONF1"].origin == "config"
        assert peers["CONF1"].permissions == frozenset({Permission.QUERY})
        assert peers["CONF2"].permissions == frozenset({Permission.STORE})  # the default
        assert peers["DB1"].origin == "index"
        with pytest.raises(Exception, match="configuration file"):
            directory.remove("CONF1")
        with pytest.raises(Exception, match="configuration file"):
            directory.add(Peer("CONF2", "127.0.0.1", 104))


def test_configured_peer_is_admitted(dcmtk: Dcmtk, settings: Settings) -> None:
    settings.dimse_peers = Settings(
        dimse_peers=[{"ae_title": "ECHOSCU", "host": "localhost", "port": 104}]
    ).dimse_peers
    with Archive.open(settings) as archive:
        server = DimseServer(archive, host="127.0.0.1", port=0)
        server.start()
        try:
            assert dcmtk.run("echoscu", "127.0.0.1", server.port).returncode == 0
            assert dcmtk.run("echoscu", "-aet", "OTHER", "127.0.0.1", server.port).returncode != 0
        finally:
            server.stop()


def wait_for_echo(dcmtk: Dcmtk, port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if dcmtk.run("echoscu", "127.0.0.1", port).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError("the DIMSE server did not answer")


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cloudfilm.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    return out


def test_cloudfilm_dimse_serves_alone(dcmtk: Dcmtk, cli_env: dict[str, str]) -> None:
    assert cli(cli_env, "peers", "add", "ECHOSCU", "127.0.0.1", "104", "--allow", "none")[0] == 0
    port = free_port()
    proc = start(cli_env, "dimse", "--port", str(port), "--ae-title", "ARCHIVE1")
    try:
        wait_for_echo(dcmtk, port, proc)
        assert dcmtk.run("echoscu", "-aet", "STRANGER", "127.0.0.1", port).returncode != 0
    finally:
        out = stop(proc)
    assert f"ARCHIVE1 listening on 127.0.0.1:{port}" in out
    assert proc.returncode in (0, 130), out


def health(port: int) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                return dict(json.loads(response.read()))
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_cloudfilm_serve_with_dicom_port(dcmtk: Dcmtk, cli_env: dict[str, str]) -> None:
    assert cli(cli_env, "peers", "add", "ECHOSCU", "127.0.0.1", "104", "--allow", "none")[0] == 0
    http, dicom = free_port(), free_port()
    proc = start(cli_env, "serve", "--port", str(http), "--dicom-port", str(dicom))
    try:
        wait_for_echo(dcmtk, dicom, proc)
        assert health(http)["status"] == "ok"
    finally:
        out = stop(proc)
    assert f"listening on 127.0.0.1:{dicom}" in out
    assert f"http://127.0.0.1:{http}" in out


def test_serve_without_dicom_port_has_no_dimse(cli_env: dict[str, str], tmp_path: Path) -> None:
    from cloudfilm.dimse import cli as dimse_cli

    with dimse_cli.dimse_beside(Settings(data_dir=tmp_path), enabled=False):
        pass  # nothing started, nothing opened
    assert not (tmp_path / "index.sqlite3").exists()
