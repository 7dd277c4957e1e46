"""Group commit: stores running at once share index transactions, and lose nothing by it."""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from cloudfilm.archive import Archive, StoreStatus, StoreTurn, _GroupCommit, _IndexJob
from cloudfilm.index.models import Instance, Series, Study
from cloudfilm.maintenance import check_archive
from support.instances import make_dataset, part10

pytestmark = pytest.mark.db


def _job() -> _IndexJob:
    return _IndexJob(None, None, {}, None)  # type: ignore[arg-type]


def test_jobs_waiting_during_a_commit_go_together_in_the_next_one() -> None:
    group = _GroupCommit()
    batches: list[int] = []
    first_started, release_first = threading.Event(), threading.Event()

    def commit(batch: list[_IndexJob]) -> None:
        batches.append(len(batch))
        if len(batches) == 1:
            first_started.set()
            assert release_first.wait(10)

    jobs = [_job() for _ in range(6)]
    first = threading.Thread(target=group.run, args=(jobs[0], commit))
    first.start()
    assert first_started.wait(10)
    others = [threading.Thread(target=group.run, args=(job, commit)) for job in jobs[1:]]
    for thread in others:
        thread.start()
    while len(group._waiting) < 5:  # all five wait behind the first commit
        threading.Event().wait(0.001)
    release_first.set()
    for thread in [first, *others]:
        thread.join(10)
    assert batches == [1, 5]
    assert all(job.done for job in jobs)


def test_a_failing_commit_fails_every_job_of_its_batch() -> None:
    group = _GroupCommit()
    jobs = [_job(), _job()]

    def commit(batch: list[_IndexJob]) -> None:
        for job in batch:
            job.error = RuntimeError("index is down")

    for job in jobs:
        group.run(job, commit)
    assert all(job.done and isinstance(job.error, RuntimeError) for job in jobs)


def test_concurrent_stores_with_duplicates_are_each_stored_once(archive: Archive) -> None:
    study, series = generate_uid(), generate_uid()
    datasets = [make_dataset(StudyInstanceUID=study, SeriesInstanceUID=series) for _ in range(40)]
    datasets += [make_dataset() for _ in range(20)]
    payloads = [part10(ds) for ds in datasets]
    sent = payloads + payloads[::3]  # a third sent twice, interleaved by the pool
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(archive.store, sent))
    assert all(r.ok for r in results), [r.reason for r in results if not r.ok]
    by_status = [r.status for r in results]
    assert by_status.count(StoreStatus.STORED) == len(payloads)
    assert by_status.count(StoreStatus.DUPLICATE) == len(payloads[::3])
    with archive.sessions() as session:
        assert session.execute(select(func.count(Instance.pk))).scalar_one() == len(payloads)
        row = session.execute(select(Study).where(Study.study_uid == study)).scalar_one()
        assert (row.num_series, row.num_instances) == (1, 40)
        counted = session.execute(
            select(Series.num_instances).where(Series.series_uid == series)
        ).scalar_one()
        assert counted == 40
    report = check_archive(archive)
    assert report.consistent_after, report


def test_a_failed_batch_answers_rejected_and_keeps_no_blob(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(batch: list[_IndexJob]) -> None:
        for job in batch:
            job.error = RuntimeError("index is down")

    monkeypatch.setattr(archive, "_index_batch", broken)
    payloads = [part10(make_dataset()) for _ in range(8)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(archive.store, payloads))
    assert all(r.status is StoreStatus.REJECTED for r in results)
    assert all("index is down" in (r.reason or "") for r in results)
    assert list(archive.blobs.keys()) == []


def test_a_turn_waits_for_the_previous_one() -> None:
    first = StoreTurn()
    second = StoreTurn(first)
    waited = threading.Event()

    def wait_second() -> None:
        second.wait()
        waited.set()

    thread = threading.Thread(target=wait_second)
    thread.start()
    assert not waited.wait(0.2)  # the first has not passed: the second waits
    first.passed()
    assert waited.wait(10)
    thread.join(10)


def test_stores_in_turns_keep_the_first_of_two_copies(archive: Archive) -> None:
    """Two copies of one SOP Instance UID with other patients: the earlier turn's is kept,
    even when the later store reaches the index first."""
    ds = make_dataset(PatientID="FIRST")
    other = copy.deepcopy(ds)
    other.PatientID = "SECOND"
    turns = [StoreTurn()]
    turns.append(StoreTurn(turns[0]))
    with ThreadPoolExecutor(2) as pool:
        later = pool.submit(archive.store, part10(other), turn=turns[1])
        threading.Event().wait(0.2)  # the later store is parsed and waits for its turn
        earlier = pool.submit(archive.store, part10(ds), turn=turns[0])
        results = earlier.result(), later.result()
    assert [r.status for r in results] == [StoreStatus.STORED, StoreStatus.CONFLICT]
