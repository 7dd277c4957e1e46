"""Routing rules and the forwarding queue: what arrives goes on to known peers, durably.

The end-to-end test stores over DIMSE from CT1 while the destination (DCMTK's storescp) is
down, checks the queue, starts the destination and checks that every instance arrives exactly
once, byte for byte. The queue's claim, lease, back-off and management are tested on both
SQLite and PostgreSQL (``CLOUDFILM_DATABASE_URL``).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import traceback
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from dimse_support import Dcmtk, StoreScp, dataset_of, dcmtk_env, free_port, stored_dataset
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select, update
from test_dimse_cli import runner

from cloudfilm.api.app import create_app
from cloudfilm.archive import Archive, StoreResult, StoreStatus
from cloudfilm.cli import app
from cloudfilm.core.config import DimseRouteConfig, Settings
from cloudfilm.dimse import DimseServer, Peer, PeerDirectory, Permission, jobs
from cloudfilm.dimse.routing import Route, route_stored
from cloudfilm.index.models import DimseForward, utcnow
from support.instances import make_dataset, part10

pytestmark = pytest.mark.db

S = Permission.STORE


def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    """``cloudfilm ARGS`` in-process with exactly the ``CLOUDFILM_*`` variables of ``env``;
    an unexpected exception is part of the output."""
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("CLOUDFILM_")}
    result = runner.invoke(app, list(args), env={**unset, **env})
    if result.exception and not isinstance(result.exception, SystemExit):
        trace = "".join(traceback.format_exception(result.exception))
        return result.exit_code, result.output + trace
    return result.exit_code, result.output


def routed(settings: Settings, *routes: dict[str, object], **extra: object) -> Settings:
    return settings.model_copy(
        update={
            "dimse_routes": [DimseRouteConfig.model_validate(r) for r in routes],
            "dimse_retry_base_seconds": 0.2,
            "dimse_retry_max_seconds": 1.0,
            "dimse_queue_poll_seconds": 0.2,
            **extra,
        }
    )


def forwards(archive: Archive) -> list[DimseForward]:
    with archive.sessions() as session:
        rows = list(session.execute(select(DimseForward).order_by(DimseForward.pk)).scalars())
        session.expunge_all()
    return rows


def wait_until(predicate: object, timeout: float = 60) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def start_storescp_on(dcmtk: Dcmtk, folder: Path, port: int) -> StoreScp:
    """storescp +xa +B -uf (a new file for every instance received, so duplicates show)."""
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            dcmtk.tool("storescp"),
            "+xa",
            "+B",
            "-uf",
            "-aet",
            "PACS_B",
            "-od",
            str(folder),
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dcmtk_env(),
    )
    scp = StoreScp("PACS_B", port, folder, process)
    wait_until(
        lambda: dcmtk.run("echoscu", "-aec", "PACS_B", "127.0.0.1", port).returncode == 0, 10
    )
    return scp


# ------------------------------------------------------------------------------ end to end


@pytest.fixture
def ct1_archive(settings: Settings) -> Iterator[Archive]:
    """Everything from CT1 goes to PACS_B; a failed attempt waits 30 s (nothing moves while
    the test looks), until ``cloudfilm queue retry`` makes the jobs due again."""
    rules = routed(
        settings,
        {"from_ae": "CT1", "to": "PACS_B"},
        dimse_retry_base_seconds=30.0,
        dimse_retry_max_seconds=60.0,
    )
    with Archive.open(rules) as opened:
        yield opened


def test_forwarding_to_a_peer_that_is_down_then_up(
    dcmtk: Dcmtk, ct1_archive: Archive, cli_env: dict[str, str], tmp_path: Path
) -> None:
    archive = ct1_archive
    port = free_port()  # nobody listens there yet
    directory = PeerDirectory(archive)
    directory.add(Peer("CT1", "127.0.0.1", 104, frozenset({S})))
    directory.add(Peer("PACS_B", "127.0.0.1", port, frozenset()))
    study = generate_uid()
    files = []
    for number in range(6):
        ds = make_dataset(StudyInstanceUID=study, PatientID="ROUTE1", InstanceNumber=number + 1)
        path = tmp_path / "sent" / f"{number}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(part10(ds))
        files.append(path)
    server = DimseServer(archive, host="127.0.0.1", port=0)
    server.start()
    try:
        out = dcmtk.run(
            "storescu", "-aet", "CT1", "-aec", "CLOUDFILM", "127.0.0.1", server.port, *files
        )
        assert out.returncode == 0, out.stderr
        wait_until(lambda: all(j.attempts == 1 and j.state == "pending" for j in forwards(archive)))
        code, listing = cli(cli_env, "queue", "--json")
        assert code == 0, listing
        queued = json.loads(listing)["forwards"]
        assert len(queued) == 6
        assert {j["destination"] for j in queued} == {"PACS_B"}
        assert {j["study_uid"] for j in queued} == {study}
        assert all(j["state"] == "pending" for j in queued)
        assert all(f"PACS_B at 127.0.0.1:{port}" in j["last_error"] for j in queued)
        assert all(j["source"] == "dimse:CT1" for j in queued)

        scp = start_storescp_on(dcmtk, tmp_path / "pacs_b", port)
        try:
            code, message = cli(cli_env, "queue", "retry", "--all")
            assert code == 0, message
            wait_until(lambda: all(j.state == "done" for j in forwards(archive)))
            time.sleep(0.5)  # anything sent twice would have arrived by now
            received = scp.files()
        finally:
            scp.process.terminate()
            scp.process.wait(10)
    finally:
        server.stop()
    assert len(received) == 6, [p.name for p in received]
    by_uid = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in received}
    assert len(by_uid) == 6
    for uid, path in by_uid.items():
        assert dataset_of(path.read_bytes()) == stored_dataset(archive, uid)
    code, listing = cli(cli_env, "queue", "--json")
    assert json.loads(listing)["forwards"] == []  # done jobs are listed with --finished only
    code, listing = cli(cli_env, "queue", "--json", "--finished")
    assert {j["state"] for j in json.loads(listing)["forwards"]} == {"done"}


def test_instances_from_other_callers_and_duplicates_are_not_forwarded(
    dcmtk: Dcmtk, ct1_archive: Archive, tmp_path: Path
) -> None:
    archive = ct1_archive
    directory = PeerDirectory(archive)
    for title in ("CT1", "STORESCU"):
        directory.add(Peer(title, "127.0.0.1", 104, frozenset({S})))
    directory.add(Peer("PACS_B", "127.0.0.1", free_port(), frozenset()))
    other, mine = tmp_path / "other.dcm", tmp_path / "mine.dcm"
    other.write_bytes(part10(make_dataset()))
    ds = make_dataset()
    mine.write_bytes(part10(ds))
    server = DimseServer(archive, host="127.0.0.1", port=0, workers=False)
    server.start()
    try:
        # another caller; CT1; CT1 again (an exact duplicate: queued when it first came)
        for caller, path in (("STORESCU", other), ("CT1", mine), ("CT1", mine)):
            out = dcmtk.run(
                "storescu", "-aet", caller, "-aec", "CLOUDFILM", "127.0.0.1", server.port, path
            )
            assert out.returncode == 0, out.stderr
    finally:
        server.stop()
    assert [(j.sop_instance_uid, j.source) for j in forwards(archive)] == [
        (ds.SOPInstanceUID, "dimse:CT1")
    ]


# ------------------------------------------------------------------------------ the rules


def test_rules_match_origin_caller_and_modality() -> None:
    ct1 = Route("PACS_B", from_ae="CT1")
    assert ct1.matches("dimse", "CT1", "CT")
    assert not ct1.matches("dimse", "CT2", "CT")
    assert not ct1.matches("stow", None, "CT")
    web = Route("PACS_B", sources=("stow", "import"), modalities=("CT", "MR"))
    assert web.matches("stow", None, "MR") and web.matches("import", None, "ct")
    assert not web.matches("dimse", "CT1", "CT")
    assert not web.matches("stow", None, "US") and not web.matches("stow", None, None)
    everything = Route("PACS_B")
    assert everything.matches("import", None, None)
    assert str(ct1) == "from CT1 -> PACS_B"
    assert str(web) == "via stow/import modality CT/MR -> PACS_B"


def test_route_stored_queues_per_destination_never_back_to_the_caller(
    settings: Settings,
) -> None:
    rules = routed(
        settings,
        {"to": "PACS_B", "modalities": ["CT"]},
        {"to": "PACS_B", "sources": ["dimse"]},  # same destination: one job
        {"to": "CT1"},  # back to the caller: never
        {"to": "ARCHIVE2", "modalities": ["MR"]},
    )
    with Archive.open(rules) as archive:
        result = archive.store(part10(make_dataset(Modality="CT")))
        assert route_stored(archive, result, origin="dimse", calling_ae="CT1") == 1
        duplicate = archive.store(part10(make_dataset()))
        duplicate.status = StoreStatus.DUPLICATE
        assert route_stored(archive, duplicate, origin="dimse", calling_ae="CT1") == 0
        refused = StoreResult(StoreStatus.REJECTED, reason="bad")
        assert route_stored(archive, refused, origin="dimse", calling_ae="CT1") == 0
        jobs_now = forwards(archive)
    assert [(j.destination, j.sop_instance_uid) for j in jobs_now] == [
        ("PACS_B", result.sop_instance_uid)
    ]
    assert jobs_now[0].rule == "modality CT -> PACS_B"
    assert jobs_now[0].source == "dimse:CT1"


def test_routing_config_is_validated() -> None:
    with pytest.raises(ValueError, match="AE title"):
        Settings(dimse_routes=[{"to": "A\\B"}])
    with pytest.raises(ValueError, match="modalities"):
        Settings(dimse_routes=[{"to": "PACS", "modalities": [""]}])
    with pytest.raises(ValueError, match="sources"):
        Settings(dimse_routes=[{"to": "PACS", "sources": ["email"]}])
    with pytest.raises(ValueError, match="extra"):
        Settings(dimse_routes=[{"to": "PACS", "from": "CT1"}])


def test_imports_and_stow_are_routed(
    settings: Settings, cli_env: dict[str, str], tmp_path: Path
) -> None:
    rules = [{"sources": ["import"], "to": "IMPORTED"}, {"sources": ["stow"], "to": "WEB"}]
    path = tmp_path / "in" / "a.dcm"
    path.parent.mkdir()
    path.write_bytes(part10(make_dataset()))
    env = {**cli_env, "CLOUDFILM_DIMSE_ROUTES": json.dumps(rules)}
    assert cli(env, "import", str(path))[0] == 0
    boundary = "routing-test"
    ds = make_dataset()
    body = (
        f"\r\n--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part10(ds)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    with Archive.open(routed(settings, *rules)) as archive:
        with TestClient(create_app(archive.settings, archive)) as http:
            content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
            response = http.post(
                "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
            )
        assert response.status_code == 200, response.text
        queued = {(j.destination, j.source) for j in forwards(archive)}
    assert queued == {("IMPORTED", "import"), ("WEB", "stow")}


# ------------------------------------------------------------------------------ the queue


def _queue(archive: Archive, count: int, destination: str = "PACS_B") -> list[int]:
    with archive.sessions.begin() as session:
        rows = [
            DimseForward(
                destination=destination,
                study_uid="1.2.3",
                series_uid="1.2.3.4",
                sop_instance_uid=f"1.2.3.4.{n}",
            )
            for n in range(count)
        ]
        session.add_all(rows)
        session.flush()
        return [r.pk for r in rows]


def test_concurrent_workers_never_claim_a_job_twice(settings: Settings) -> None:
    """Four workers with their own engines (as separate processes would have) drain the queue."""
    with Archive.open(settings) as archive:
        queued = _queue(archive, 120)
    taken: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            with Archive.open(settings) as own:
                while True:
                    held = jobs.claim(own, DimseForward, worker=name, limit=7)
                    if not held.pks:
                        return
                    with lock:
                        taken.extend(held.pks)
                    jobs.succeed(own, held, held.pks)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    assert sorted(taken) == sorted(queued)  # every job once, none twice


def test_a_lapsed_claim_is_taken_over_and_the_old_worker_cannot_finish_it(
    archive: Archive,
) -> None:
    (pk,) = _queue(archive, 1)
    first = jobs.claim(archive, DimseForward, worker="first", limit=5)
    assert first.pks == (pk,)
    assert jobs.claim(archive, DimseForward, worker="second", limit=5).pks == ()
    with archive.sessions.begin() as session:  # the first process died: its lease lapses
        session.execute(update(DimseForward).values(locked_until=utcnow() - timedelta(seconds=1)))
    second = jobs.claim(archive, DimseForward, worker="second", limit=5)
    assert second.pks == (pk,)
    jobs.succeed(archive, first, [pk])  # too late: not its claim any more
    assert forwards(archive)[0].state == "running"
    jobs.fail(archive, second, {pk: "peer refused"})
    job = forwards(archive)[0]
    assert (job.state, job.attempts, job.last_error) == ("pending", 2, "peer refused")


def test_back_off_doubles_and_the_last_attempt_fails_the_job(settings: Settings) -> None:
    strict = settings.model_copy(
        update={"dimse_retry_base_seconds": 30.0, "dimse_retry_max_attempts": 2}
    )
    assert [jobs.backoff(strict, n).total_seconds() for n in (1, 2, 3)] == [30, 60, 120]
    capped = strict.model_copy(update={"dimse_retry_max_seconds": 45.0})
    assert jobs.backoff(capped, 5).total_seconds() == 45
    with Archive.open(strict) as archive:
        (pk,) = _queue(archive, 1)
        held = jobs.claim(archive, DimseForward, worker="w", limit=1)
        before = utcnow()
        jobs.fail(archive, held, {pk: "unreachable"})
        job = forwards(archive)[0]
        wait = jobs.aware(job.next_attempt_at) - before  # type: ignore[operator]
        assert job.state == "pending" and timedelta(seconds=29) < wait < timedelta(seconds=31)
        assert jobs.claim(archive, DimseForward, worker="w", limit=1).pks == ()  # not due
        with archive.sessions.begin() as session:
            session.execute(update(DimseForward).values(next_attempt_at=utcnow()))
        held = jobs.claim(archive, DimseForward, worker="w", limit=1)
        jobs.fail(archive, held, {pk: "still unreachable"})
        job = forwards(archive)[0]
        assert (job.state, job.attempts) == ("failed", 2)
        assert jobs.retry(archive, DimseForward) == 1
        job = forwards(archive)[0]
        assert (job.state, job.attempts) == ("pending", 0)


def test_queue_commands_retry_and_cancel(archive: Archive, cli_env: dict[str, str]) -> None:
    first, second = _queue(archive, 2)
    code, out = cli(cli_env, "queue", "cancel", str(first))
    assert code == 0, out
    code, out = cli(cli_env, "queue", "cancel", str(first))
    assert code == 1 and "only pending or failed" in out
    code, out = cli(cli_env, "queue", "retry", str(first))
    assert code == 0, out
    code, out = cli(cli_env, "queue", "cancel", "999999")
    assert code == 1 and "no job 999999" in out
    code, out = cli(cli_env, "queue", "cancel", "C999999")
    assert code == 1 and "dimse_commitment" in out
    code, out = cli(cli_env, "queue", "retry", "twelve")
    assert code == 2 and "not a job ID" in out
    code, out = cli(cli_env, "queue", "retry")
    assert code == 2 and "--all" in out
    code, out = cli(cli_env, "queue")
    assert code == 0
    assert "Forwarding queue" in out and "forwards: 2 pending" in out
    code, out = cli(cli_env, "queue", "--json")
    listed = json.loads(out)
    assert [j["id"] for j in listed["forwards"]] == [second, first]
    assert listed["counts"]["forwards"] == {"pending": 2}


def test_serve_without_dicom_port_runs_the_queue_when_rules_exist(tmp_path: Path) -> None:
    """``cloudfilm serve`` without ``--dicom-port``: STOW-RS may feed the queue, so its worker
    runs (and stops with the server)."""
    from cloudfilm.dimse import cli as dimse_cli

    settings = Settings(data_dir=tmp_path, min_free_bytes=0, dimse_routes=[{"to": "PACS_B"}])
    with dimse_cli.dimse_beside(settings, enabled=False):
        names = {thread.name for thread in threading.enumerate()}
        assert {"dimse-forward", "dimse-commitment"} <= names
    time.sleep(0.2)
    assert "dimse-forward" not in {thread.name for thread in threading.enumerate()}
