"""Fixtures of the DIMSE tests: DCMTK, a live server with the test peers, a move destination."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom.config
import pytest
from dimse_support import TEST_PEERS, Dcmtk, StoreScp, find_dcmtk, service_missing, start_storescp

from cloudfilm.archive import Archive
from cloudfilm.dimse import DimseServer, Peer, PeerDirectory


@pytest.fixture(autouse=True)
def _pydicom_settings_restored() -> Iterator[None]:
    """Put pydicom's global validation modes back after each test.

    Concurrent ingest can leave ``reading_validation_mode`` at RAISE (a race between
    ``cloudfilm.dicom.json.header_json`` and ``cloudfilm.dicom.parse``, see the strict xfail
    in test_dimse_concurrency.py); without this, one test's leak would fail the next ones.
    """
    settings = pydicom.config.settings
    saved = (settings._reading_validation_mode, settings._writing_validation_mode)
    yield
    settings._reading_validation_mode, settings._writing_validation_mode = saved


@pytest.fixture(scope="session")
def dcmtk() -> Dcmtk:
    found = find_dcmtk()
    if found is None:
        service_missing("DCMTK is not installed (apt-get install dcmtk)")
    assert found is not None
    return found


@pytest.fixture
def dimse(archive: Archive) -> Iterator[DimseServer]:
    """A DIMSE server on a free loopback port, with the test peers known (in the index)."""
    directory = PeerDirectory(archive)
    for title, permissions in TEST_PEERS.items():
        directory.add(Peer(title, "127.0.0.1", 104, permissions))
    server = DimseServer(archive, host="127.0.0.1", port=0, ae_title="CLOUDFILM")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def destination(dcmtk: Dcmtk, tmp_path: Path, archive: Archive) -> Iterator[StoreScp]:
    """storescp +xa +B on a free port, known to the archive as the peer DEST."""
    scp = start_storescp(dcmtk, tmp_path / "received")
    PeerDirectory(archive).add(Peer("DEST", "127.0.0.1", scp.port, frozenset()))
    try:
        yield scp
    finally:
        scp.process.terminate()
        scp.process.wait(10)
