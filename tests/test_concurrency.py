"""Concurrent stores: two ``cloudfilm import`` processes and four threads on one archive.

Whatever the interleaving, each SOP Instance UID is stored exactly once (the other attempts
answer *duplicate*), no blob is left behind by a lost race, and the derived study and series
counts equal what the files say.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import sqlalchemy as sa

from cloudfilm.archive import Archive, StoreResult, StoreStatus
from cloudfilm.core.config import Settings
from cloudfilm.index.models import Instance, Series, Study
from cloudfilm.maintenance import check_archive

pytestmark = [pytest.mark.slow, pytest.mark.db]

#: Longest wait for a child process or a CLI command, in seconds.
CHILD_TIMEOUT = 300.0

# Imports the CLI (the slow part of starting), says it is ready, waits for the barrier file
# and then runs ``cloudfilm <argv[3:]>``: both importers start storing at the same moment.
BARRIER_CLI = r"""
import sys
import time
from pathlib import Path

import cloudfilm.cli
import cloudfilm.importer  # noqa: F401  (imported by the command; load it before the start)

ready, barrier = Path(sys.argv[1]), Path(sys.argv[2])
ready.write_text("ready")
deadline = time.monotonic() + 120
while not barrier.exists():
    if time.monotonic() > deadline:
        sys.exit("the barrier file never appeared")
    time.sleep(0.002)
print(f"started at {time.time():.6f}", file=sys.stderr, flush=True)
sys.argv = ["cloudfilm", *sys.argv[3:]]
cloudfilm.cli.main()
"""


@dataclass(frozen=True)
class Source:
    path: Path
    uid: str
    study_uid: str
    series_uid: str
    size: int
    data: bytes


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Source]:
    """450 small instances: 3 patients x 3 studies x 50 CT slices of 64x64."""
    from cloudfilm.dicom.synth import write_studies

    out = tmp_path_factory.mktemp("concurrency-sources")
    paths = write_studies(
        out, seed=31337, modality="CT", slices=50, patients=3, studies_per_patient=3,
        rows=64, columns=64,
    )  # fmt: skip
    found = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        data = path.read_bytes()
        found.append(
            Source(
                path,
                str(ds.SOPInstanceUID),
                str(ds.StudyInstanceUID),
                str(ds.SeriesInstanceUID),
                len(data),
                data,
            )
        )
    assert len(found) == 450
    assert len({s.uid for s in found}) == 450
    return found


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


def wait_for_files(files: list[Path], procs: list[subprocess.Popen[str]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(f.exists() for f in files):
        for proc in procs:
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"importer exited with {proc.returncode} before the start:\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"importers not ready within {timeout} s")
        time.sleep(0.01)


def assert_index_matches(archive: Archive, sources: list[Source]) -> None:
    """Exactly one row per source instance; series and study counts equal the truth."""
    with archive.sessions() as session:
        dupes = session.execute(
            sa.select(Instance.sop_instance_uid, sa.func.count())
            .group_by(Instance.sop_instance_uid)
            .having(sa.func.count() > 1)
        ).all()
        uids = set(session.execute(sa.select(Instance.sop_instance_uid)).scalars())
        series_rows = {
            uid: (n, size)
            for uid, n, size in session.execute(
                sa.select(Series.series_uid, Series.num_instances, Series.size_bytes)
            )
        }
        study_rows = {
            uid: (n_series, n, size)
            for uid, n_series, n, size in session.execute(
                sa.select(Study.study_uid, Study.num_series, Study.num_instances, Study.size_bytes)
            )
        }
    assert dupes == [], f"duplicate index rows: {dupes}"
    assert uids == {s.uid for s in sources}
    series_truth: dict[str, tuple[int, int]] = {}
    study_truth: dict[str, tuple[set[str], int, int]] = {}
    for s in sources:
        n, size = series_truth.get(s.series_uid, (0, 0))
        series_truth[s.series_uid] = (n + 1, size + s.size)
        series, n, size = study_truth.get(s.study_uid, (set(), 0, 0))
        study_truth[s.study_uid] = (series | {s.series_uid}, n + 1, size + s.size)
    assert series_rows == series_truth
    assert study_rows == {k: (len(v[0]), v[1], v[2]) for k, v in study_truth.items()}
    assert len(list(archive.blobs.keys())) == len(sources), "blobs of lost races left behind"


def test_two_importers_with_overlapping_sets(
    archive: Archive,
    settings: Settings,
    cli_env: dict[str, str],
    sources: list[Source],
    tmp_path: Path,
) -> None:
    # A: files 0..299 in order; B: files 150..449 named so that a folder walk goes backwards.
    set_a, set_b = tmp_path / "set-a", tmp_path / "set-b"
    set_a.mkdir()
    set_b.mkdir()
    for i, s in enumerate(sources[:300]):
        shutil.copyfile(s.path, set_a / f"a{i:04d}.dcm")
    for i, s in enumerate(sources[150:], start=150):
        shutil.copyfile(s.path, set_b / f"b{449 - i:04d}.dcm")
    script = tmp_path / "barrier_cli.py"
    script.write_text(BARRIER_CLI)
    barrier = tmp_path / "go"

    procs: list[subprocess.Popen[str]] = []
    logs = []
    try:
        for name, folder in (("a", set_a), ("b", set_b)):
            log = (tmp_path / f"import-{name}.err").open("w+")
            logs.append(log)
            ready = tmp_path / f"ready-{name}"
            argv = [sys.executable, str(script), str(ready), str(barrier)]
            argv += ["import", str(folder), "--json"]
            procs.append(
                subprocess.Popen(argv, env=cli_env, stdout=subprocess.PIPE, stderr=log, text=True)
            )
        wait_for_files([tmp_path / "ready-a", tmp_path / "ready-b"], procs, 120)
        barrier.touch()
        outputs = []
        for proc, log in zip(procs, logs, strict=True):
            try:
                out, _ = proc.communicate(timeout=CHILD_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"an importer did not finish within {CHILD_TIMEOUT} s")
            log.seek(0)
            err = log.read()
            assert proc.returncode == 0, f"importer exited {proc.returncode}:\n{out}\n{err}"
            outputs.append((json.loads(out), err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
        for log in logs:
            log.close()

    (report_a, err_a), (report_b, err_b) = outputs
    starts = [float(e.split("started at ")[1].split()[0]) for e in (err_a, err_b)]
    assert abs(starts[0] - starts[1]) < 5, f"the importers did not start together: {starts}"
    for report, expected in ((report_a, 300), (report_b, 300)):
        assert report["problems"] == [] and report["skipped"] == [], report
        assert (report["rejected"], report["conflict"]) == (0, 0), report
        assert report["stored"] + report["duplicate"] == expected, report
    assert report_a["stored"] + report_b["stored"] == 450, (report_a, report_b)
    assert report_a["duplicate"] + report_b["duplicate"] == 150, (report_a, report_b)
    print(
        f"A: {report_a['stored']} stored / {report_a['duplicate']} duplicate in "
        f"{report_a['seconds']} s; B: {report_b['stored']} / {report_b['duplicate']} in "
        f"{report_b['seconds']} s"
    )

    assert_index_matches(archive, sources)
    code, studies = cloudfilm(cli_env, "studies", "--json")
    assert code == 0
    truth_instances = Counter(s.study_uid for s in sources)
    truth_series: dict[str, set[str]] = {}
    for s in sources:
        truth_series.setdefault(s.study_uid, set()).add(s.series_uid)
    assert {s["study_uid"]: s["instances"] for s in studies} == dict(truth_instances)
    assert {s["study_uid"]: s["series"] for s in studies} == {
        k: len(v) for k, v in truth_series.items()
    }
    code, report = cloudfilm(cli_env, "check", "--json")
    assert (code, report["consistent"]) == (0, True), report
    assert (report["instances"], report["blobs"]) == (450, 450), report


def store_concurrently(
    archive: Archive, sources: list[Source], threads: int
) -> list[list[StoreResult]]:
    """Each of ``threads`` threads stores every source, all starting together."""
    barrier = threading.Barrier(threads)
    results: list[list[StoreResult]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            barrier.wait(timeout=60)
            for s in sources:
                results[n].append(archive.store(s.data, source=f"thread-{n}"))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=CHILD_TIMEOUT)
        assert not w.is_alive(), f"a storing thread hung for {CHILD_TIMEOUT} s"
    assert errors == [], errors
    return results


def test_threads_store_the_same_files_once(archive: Archive, sources: list[Source]) -> None:
    files = sources[:50]  # one study: all threads race on the same rows
    results = store_concurrently(archive, files, threads=4)
    statuses: dict[str, Counter[StoreStatus]] = {s.uid: Counter() for s in files}
    for per_thread in results:
        assert len(per_thread) == len(files)
        for source, result in zip(files, per_thread, strict=True):
            assert result.sop_instance_uid == source.uid
            statuses[source.uid][result.status] += 1
    for uid, count in statuses.items():
        assert count == {StoreStatus.STORED: 1, StoreStatus.DUPLICATE: 3}, (uid, count, results)
    assert archive.counters["stored"] == 50 and archive.counters["rejected"] == 0
    assert_index_matches(archive, files)
    for s in files:
        assert archive.read_instance(s.uid) == s.data
    report = check_archive(archive)
    assert report.consistent_after, report.lines()


def test_repair_alongside_a_store_in_flight_keeps_its_blob(
    archive: Archive, settings: Settings, sources: list[Source], monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = sources[0]
    in_commit, release = threading.Event(), threading.Event()
    commit = archive._commit_instance

    def paused_commit(*args: Any, **kwargs: Any) -> str | None:
        in_commit.set()  # the blob is written; its row is not committed yet
        assert release.wait(60)
        return commit(*args, **kwargs)

    monkeypatch.setattr(archive, "_commit_instance", paused_commit)
    results: list[StoreResult] = []
    writer = threading.Thread(target=lambda: results.append(archive.store(victim.data)))
    writer.start()
    try:
        assert in_commit.wait(60), "the store never reached its commit"
        with Archive.open(settings) as repairer:
            restore = repairer.store

            def store_after_writer(*args: Any, **kwargs: Any) -> StoreResult:
                # The writer commits between the repair's listing and its re-store.
                release.set()
                writer.join(60)
                return restore(*args, **kwargs)

            monkeypatch.setattr(repairer, "store", store_after_writer)
            check_archive(repairer, repair=True)
    finally:
        release.set()
        writer.join(60)
    assert results and results[0].status is StoreStatus.STORED, results
    assert archive.read_instance(victim.uid) == victim.data  # NotFound: blob deleted
    assert check_archive(archive).consistent_after
