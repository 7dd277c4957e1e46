"""Crash safety: a store killed at any moment never loses what it acknowledged.

A child process stores synthetic instances one by one through ``Archive.store`` and prints
``STORED <uid> <path>`` after each acknowledged store; the parent SIGKILLs it at seeded random
moments and then verifies that every acknowledged instance is indexed with a byte-exact blob,
and that ``cloudfilm check`` (with ``--repair`` when needed) finds the archive consistent.
Deterministic tests cover the windows inside one store: killed inside the blob write, killed
between the blob write and the index commit, and an exception raised by the commit.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from cloudfilm.archive import Archive, StoreStatus
from cloudfilm.core.config import Settings
from cloudfilm.core.db import normalize_url
from cloudfilm.core.errors import NotFound, StorageFailure
from cloudfilm.index.models import Instance, Study
from cloudfilm.maintenance import check_archive

pytestmark = [pytest.mark.slow, pytest.mark.db]

#: Longest wait for anything a child process or a CLI command should do, in seconds.
CHILD_TIMEOUT = 300.0
SCHEDULE_SEED = 20240611

# Stores the files listed in argv[1] one by one; prints a line after each acknowledged store.
STORE_LOOP = r"""
import sys
from pathlib import Path

from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings

paths = Path(sys.argv[1]).read_text().splitlines()
archive = Archive.open(Settings())
print("READY", flush=True)
for path in paths:
    with open(path, "rb") as fp:
        result = archive.store(fp, source="crash-test")
    if not result.ok:
        print(f"FAILED {result.status} {path} {result.reason}", flush=True)
        sys.exit(3)
    print(f"STORED {result.sop_instance_uid} {path}", flush=True)
archive.close()
print("DONE", flush=True)
"""

# Stores argv[2] with a SIGKILL planted at one point of the store (argv[1]).
KILLED_STORE = r"""
import os
import signal
import sys

from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings

mode, path = sys.argv[1], sys.argv[2]
archive = Archive.open(Settings())


def die(*args, **kwargs):
    print("DYING", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if mode == "commit":  # after the blob put, before the index commit
    Archive._commit_instance = die
elif mode == "rename":  # inside the blob put: temporary file written, not yet renamed
    os.replace = die
else:
    sys.exit(f"unknown mode {mode}")
print("READY", flush=True)
with open(path, "rb") as fp:
    result = archive.store(fp, source="crash-test")
print(f"SURVIVED {result.status} {result.reason}", flush=True)
"""


@dataclass(frozen=True)
class Source:
    path: Path
    uid: str
    study_uid: str
    series_uid: str
    data: bytes


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Source]:
    """400 small CT instances: 4 patients x 2 studies x 50 slices of 64x64."""
    from cloudfilm.dicom.synth import write_studies

    out = tmp_path_factory.mktemp("crash-sources")
    paths = write_studies(
        out, seed=4242, modality="CT", slices=50, patients=4, studies_per_patient=2,
        rows=64, columns=64,
    )  # fmt: skip
    found = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found.append(
            Source(
                path,
                str(ds.SOPInstanceUID),
                str(ds.StudyInstanceUID),
                str(ds.SeriesInstanceUID),
                path.read_bytes(),
            )
        )
    assert len(found) == 400
    assert len({s.uid for s in found}) == 400
    return found


# ----------------------------------------------------------------------------------- helpers


def is_postgres(settings: Settings) -> bool:
    return settings.resolved_database_url.startswith("postgres")


def tagged_env(env: dict[str, str], settings: Settings, tag: str) -> dict[str, str]:
    """``env`` with a PostgreSQL application_name, to see when the child's sessions are gone."""
    env = dict(env)
    if is_postgres(settings):
        url = env["CLOUDFILM_DATABASE_URL"]
        env["CLOUDFILM_DATABASE_URL"] = f"{url}{'&' if '?' in url else '?'}application_name={tag}"
    return env


def wait_sessions_gone(settings: Settings, tag: str, timeout: float = 30.0) -> None:
    """Wait until PostgreSQL has ended every session of a killed child.

    A SIGKILLed client's transaction is aborted by the server when it notices the closed
    socket; checking the archive before that could race with the child's last statements.
    """
    if not is_postgres(settings):
        return  # SQLite: the kernel released the dead process's locks
    engine = sa.create_engine(normalize_url(settings.resolved_database_url), poolclass=NullPool)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with engine.connect() as conn:
                left = conn.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"),
                    {"n": tag},
                ).scalar_one()
            if not left:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"{left} PostgreSQL sessions of killed child {tag} still open")
            time.sleep(0.05)
    finally:
        engine.dispose()


def cloudfilm(env: dict[str, str], *args: str) -> tuple[int, Any]:
    """Run the ``cloudfilm`` CLI; return its exit code and its JSON output."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "cloudfilm.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"cloudfilm {' '.join(args)} did not finish in {CHILD_TIMEOUT} s: {exc}")
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"cloudfilm {' '.join(args)} exited {proc.returncode} without JSON output\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )


def check(env: dict[str, str], *options: str) -> dict[str, Any]:
    """``cloudfilm check --json`` whose exit code agrees with its verdict."""
    code, report = cloudfilm(env, "check", "--json", *options)
    assert code == (0 if report["consistent"] else 1), (code, report)
    return report


def only_interrupted_store_traces(report: dict[str, Any]) -> None:
    """A killed store may leave one orphan blob (and temporary files), never anything else."""
    assert report["missing_blobs"] == [], f"acknowledged data lost: {report}"
    assert report["bad_checksums"] == [], f"corrupted blobs: {report}"
    assert report["wrong_counts"] == [], f"derived counts broken by a crash: {report}"
    assert len(report["orphan_blobs"]) <= 1, f"one store was in flight, more orphans: {report}"


def check_and_repair(env: dict[str, str]) -> dict[str, Any]:
    """Plain check; when inconsistent, ``--repair`` then a plain check that must pass."""
    report = check(env)
    only_interrupted_store_traces(report)
    if not report["consistent"]:
        repaired = check(env, "--repair")
        assert repaired["consistent"], f"check --repair could not repair: {repaired}"
        report = check(env)
        assert report["consistent"], f"inconsistent after check --repair: {report}"
        assert report["orphan_blobs"] == [], report
    return report


def verify_index_against_sources(
    settings: Settings, by_uid: dict[str, Source], acknowledged: set[str]
) -> int:
    """Every acknowledged instance is indexed; every indexed blob equals its source file.

    Uses an archive opened afresh, as a restarted server would.
    """
    with Archive.open(settings, migrate_schema=False) as archive:
        for uid in sorted(acknowledged):
            try:
                archive.instance(uid)
            except NotFound:
                pytest.fail(f"instance {uid} ({by_uid[uid].path}) was acknowledged but is lost")
        with archive.sessions() as session:
            rows = list(session.execute(sa.select(Instance.sop_instance_uid)).scalars())
        for uid in rows:
            assert uid in by_uid, f"unexpected instance {uid} in the index"
            assert archive.read_instance(uid) == by_uid[uid].data, (
                f"blob of {uid} differs from {by_uid[uid].path}"
            )
    return len(rows)


class StreamingChild:
    """A child process whose stdout lines are collected, as they come, by a thread."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._stderr = log.open("wb")
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        self.lines: list[str] = []
        self._eof = threading.Event()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.endswith("\n"):  # a line cut by the kill is no acknowledgement
                self.lines.append(line.rstrip("\n"))
        self._eof.set()

    def stderr_tail(self) -> str:
        self._stderr.flush()
        return self.log.read_text(errors="replace")[-3000:]

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self._eof.is_set() and self.proc.poll() is not None and not predicate():
                pytest.fail(
                    f"child exited with {self.proc.returncode} before {what}\n"
                    f"last lines: {self.lines[-5:]}\nstderr:\n{self.stderr_tail()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no {what} within {timeout} s\nlast lines: {self.lines[-5:]}\n"
                    f"stderr:\n{self.stderr_tail()}"
                )
            time.sleep(0.002)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)

    def finish(self, timeout: float = 60.0) -> int:
        """Wait for the process to end and for its last lines to be read."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait(timeout=30)
            pytest.fail(f"child did not exit within {timeout} s\nstderr:\n{self.stderr_tail()}")
        if not self._eof.wait(timeout=30):
            pytest.fail("the child's stdout was not closed after it exited")
        self._reader.join(timeout=30)
        return code

    def close(self) -> None:
        self.kill()
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._stderr.close()


@pytest.fixture
def children() -> Iterator[list[StreamingChild]]:
    """Children started by a test; SIGKILLed and reaped whatever happens."""
    started: list[StreamingChild] = []
    yield started
    for child in started:
        child.close()


def parse_stored(lines: list[str], by_uid: dict[str, Source]) -> set[str]:
    stored: set[str] = set()
    for line in lines:
        if not line.startswith("STORED "):
            assert line in ("READY", "DONE"), f"unexpected child output {line!r}"
            continue
        _, uid, path = line.split(" ", 2)
        assert uid in by_uid, f"child stored an unknown instance {uid}"
        assert Path(path) == by_uid[uid].path, f"{uid} reported for {path}"
        stored.add(uid)
    return stored


# ------------------------------------------------------------------------------------ tests


def test_sigkill_at_random_moments_loses_no_acknowledged_instance(
    archive: Archive,
    settings: Settings,
    cli_env: dict[str, str],
    sources: list[Source],
    tmp_path: Path,
    children: list[StreamingChild],
) -> None:
    by_uid = {s.uid: s for s in sources}
    file_list = tmp_path / "files.txt"
    file_list.write_text("\n".join(str(s.path) for s in sources))
    script = tmp_path / "store_loop.py"
    script.write_text(STORE_LOOP)

    rng = random.Random(SCHEDULE_SEED)
    # (what to wait for, how many acknowledgements, then seconds until SIGKILL): at start-up
    # first, then at random points of the work (by progress, not by clock, so that the kills
    # land inside the loop however fast the machine stores), then a run that completes.
    schedule = [("READY", 0, 0.0)]
    schedule += [
        ("STORED", rng.randint(1, len(sources) - 1), round(rng.uniform(0.0, 0.02), 4))
        for _ in range(4)
    ]
    schedule.append(("DONE", 0, 0.0))

    acknowledged: set[str] = set()
    orphans_repaired = 0
    killed_runs = 0
    for run, (event, progress, delay) in enumerate(schedule):
        tag = f"cfcrash{run}_{uuid.uuid4().hex[:8]}"
        child = StreamingChild(
            [sys.executable, str(script), str(file_list)],
            tagged_env(cli_env, settings, tag),
            tmp_path / f"child-{run}.log",
        )
        children.append(child)
        if event == "DONE":
            child.wait_for("DONE", lambda c=child: "DONE" in c.lines, CHILD_TIMEOUT)
            assert child.finish() == 0, child.stderr_tail()
        else:
            child.wait_for(
                f"{event} x{progress}",
                lambda c=child, e=event, n=max(progress, 1): (
                    sum(x.startswith(e) for x in c.lines) >= n or "DONE" in c.lines
                ),
                120,
            )
            if delay:
                time.sleep(delay)
            child.kill()
            code = child.finish()
            if code == 0:  # finished everything before the kill: allowed, nothing to kill
                assert "DONE" in child.lines, child.stderr_tail()
            else:
                assert code == -signal.SIGKILL, f"child failed:\n{child.stderr_tail()}"
                killed_runs += 1
        wait_sessions_gone(settings, tag)

        reported = parse_stored(child.lines, by_uid)
        acknowledged |= reported
        count = verify_index_against_sources(settings, by_uid, acknowledged)
        assert count >= len(acknowledged)
        report = check(cli_env)
        only_interrupted_store_traces(report)
        if not report["consistent"]:
            orphans_repaired += len(report["orphan_blobs"])
            report = check_and_repair(cli_env)
            # repair may have re-indexed the orphan: that instance must be right as well
            verify_index_against_sources(settings, by_uid, acknowledged)
        print(
            f"run {run}: kill {delay:.2f} s after {event}, {len(reported)} acknowledged, "
            f"{count} indexed, check: {report['instances']} instances / {report['blobs']} blobs"
        )
    assert killed_runs >= 5, f"only {killed_runs} runs were killed"
    print(f"{orphans_repaired} orphan blobs of interrupted stores repaired")

    # The completed run acknowledged everything: all 400, byte-exact, counts right.
    assert acknowledged == set(by_uid)
    assert verify_index_against_sources(settings, by_uid, acknowledged) == len(sources)
    code, studies = cloudfilm(cli_env, "studies", "--json")
    assert code == 0
    expected = Counter(s.study_uid for s in sources)
    assert {s["study_uid"]: s["instances"] for s in studies} == dict(expected)
    assert sum(s["instances"] for s in studies) == len(sources)
    assert all(s["series"] == 1 for s in studies), studies
    final = check(cli_env)
    assert final["consistent"], final
    assert (final["instances"], final["blobs"]) == (len(sources), len(sources)), final


def run_killed_store(
    mode: str, source: Source, settings: Settings, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Store ``source`` in a child that SIGKILLs itself at ``mode``; wait until it is gone."""
    script = tmp_path / "killed_store.py"
    script.write_text(KILLED_STORE)
    tag = f"cfwindow_{uuid.uuid4().hex[:8]}"
    try:
        proc = subprocess.run(
            [sys.executable, str(script), mode, str(source.path)],
            env=tagged_env(cli_env, settings, tag),
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"killed-store child did not finish: {exc}")
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout.splitlines() == ["READY", "DYING"], (proc.stdout, proc.stderr)
    wait_sessions_gone(settings, tag)


def store_some(archive: Archive, sources: list[Source]) -> None:
    for source in sources:
        result = archive.store(source.data)
        assert result.status is StoreStatus.STORED, result


def study_instances(archive: Archive, study_uid: str) -> int:
    with archive.sessions() as session:
        return session.execute(
            sa.select(Study.num_instances).where(Study.study_uid == study_uid)
        ).scalar_one()


def test_kill_between_blob_and_commit_leaves_one_orphan_that_repair_reindexes(
    archive: Archive,
    settings: Settings,
    cli_env: dict[str, str],
    sources: list[Source],
    tmp_path: Path,
) -> None:
    store_some(archive, sources[:3])
    victim = sources[3]
    run_killed_store("commit", victim, settings, cli_env, tmp_path)

    with pytest.raises(NotFound):
        archive.instance(victim.uid)
    report = check(cli_env)
    assert not report["consistent"]
    assert (report["instances"], report["blobs"]) == (3, 4), report
    assert len(report["orphan_blobs"]) == 1, report
    assert (report["missing_blobs"], report["bad_checksums"], report["wrong_counts"]) == (
        [],
        [],
        [],
    ), report
    (orphan,) = report["orphan_blobs"]
    with archive.blobs.open(orphan) as fp:
        assert fp.read() == victim.data, "the orphan blob is the interrupted store's file"

    repaired = check(cli_env, "--repair")
    assert repaired["consistent"], repaired
    assert f"re-indexed orphan blob {orphan} as {victim.uid}" in repaired["repaired"], repaired

    row = archive.instance(victim.uid)
    assert row.source == "repair"
    assert archive.read_instance(victim.uid) == victim.data
    assert not archive.blobs.exists(orphan), "the orphan was re-stored under a new key"
    assert study_instances(archive, victim.study_uid) == 4
    after = check_archive(archive)
    assert after.consistent_after, after.lines()
    assert (after.instances, after.blobs, after.orphan_blobs) == (4, 4, []), after.lines()


def test_kill_inside_blob_put_leaves_only_a_temporary_file(
    archive: Archive,
    settings: Settings,
    cli_env: dict[str, str],
    sources: list[Source],
    tmp_path: Path,
) -> None:
    store_some(archive, sources[:3])
    victim = sources[3]
    run_killed_store("rename", victim, settings, cli_env, tmp_path)

    with pytest.raises(NotFound):
        archive.instance(victim.uid)
    assert len(list(archive.blobs.keys())) == 3
    report = check_archive(archive)
    assert report.consistent_after, report.lines()
    assert (report.instances, report.blobs, report.temporary_files) == (3, 3, 1), report.lines()

    repaired = check_archive(archive, repair=True)
    assert repaired.consistent_after, repaired.lines()
    assert "removed 1 temporary files" in repaired.repaired, repaired.lines()
    assert list((settings.blob_dir / ".tmp").glob("*.part")) == []

    result = archive.store(victim.data)
    assert result.status is StoreStatus.STORED, result
    assert archive.read_instance(victim.uid) == victim.data
    assert check_archive(archive).consistent_after


class SimulatedIndexFailure(RuntimeError):
    pass


@pytest.mark.parametrize("error", [SimulatedIndexFailure, KeyboardInterrupt])
def test_exception_in_commit_leaves_no_blob(
    archive: Archive,
    sources: list[Source],
    monkeypatch: pytest.MonkeyPatch,
    error: type[BaseException],
) -> None:
    store_some(archive, sources[:3])
    before = set(archive.blobs.keys())
    victim = sources[3]

    def failing_commit(*args: object, **kwargs: object) -> None:
        raise error("simulated failure of the index commit")

    monkeypatch.setattr(archive, "_commit_instance", failing_commit)
    if error is KeyboardInterrupt:  # not an Exception: store lets it through, but cleans up
        with pytest.raises(KeyboardInterrupt):
            archive.store(victim.data)
    else:
        result = archive.store(victim.data)
        assert result.status is StoreStatus.REJECTED, result
        assert not result.ok
        assert isinstance(result.error, StorageFailure), result
        assert "simulated failure of the index commit" in (result.reason or ""), result
    assert set(archive.blobs.keys()) == before, "the blob of the failed store was left behind"
    assert list((archive.settings.blob_dir / ".tmp").glob("*.part")) == []
    with pytest.raises(NotFound):
        archive.instance(victim.uid)
    report = check_archive(archive)
    assert report.consistent_after, report.lines()
    assert (report.instances, report.blobs) == (3, 3)

    monkeypatch.undo()
    result = archive.store(victim.data)
    assert result.status is StoreStatus.STORED, result
    assert archive.read_instance(victim.uid) == victim.data


def test_commit_that_succeeds_but_raises_keeps_a_readable_instance(
    archive: Archive, sources: list[Source], monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = sources[0]
    commit = archive._commit_instance

    def commit_then_lose_the_answer(*args: Any, **kwargs: Any) -> str | None:
        commit(*args, **kwargs)  # the index commit is durable ...
        raise sa.exc.OperationalError("COMMIT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(archive, "_commit_instance", commit_then_lose_the_answer)
    result = archive.store(victim.data)
    assert result.status is StoreStatus.REJECTED, result  # ... but its outcome was unknown
    monkeypatch.undo()
    retry = archive.store(victim.data)  # what a client does after a failure
    assert retry.ok, retry
    assert archive.read_instance(victim.uid) == victim.data  # NotFound: the blob was deleted
    assert check_archive(archive).consistent_after
