"""Automatic cloud films: one share per study once it is stable, whatever the processes.

The clock of the rule is the ``now`` given to ``AutoSharer.step`` (studies are stable when
``Study.updated_at`` is old enough), so no test sleeps to make a study stable, except the one
that runs real ``cloudfilm serve`` processes with a one-second stable time.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import requests
from share_support import StoredStudy, free_port, store_study, token_of
from sqlalchemy import select, update

from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.dimse import jobs
from cloudfilm.index.models import AutoShare, Study
from cloudfilm.sharing.auto import AutoSharer
from cloudfilm.sharing.links import ShareFilter, ShareLinks, ShareRequest, utcnow
from support.instances import make_dataset, part10

pytestmark = pytest.mark.db
STABLE = 60


@pytest.fixture
def sharer_for(settings: Settings, archive: Archive) -> Iterator[Callable[..., AutoSharer]]:
    """An AutoSharer on its own connection to the test index (as another process would have),
    with ``auto_share_*`` overrides."""
    opened: list[Archive] = []

    def make(worker: str = "test", **overrides: Any) -> AutoSharer:
        values = {"auto_share_enabled": True, "auto_share_stable_seconds": STABLE, **overrides}
        other = Archive.open(Settings(**{**settings.model_dump(), **values}))  # validated
        opened.append(other)
        return AutoSharer(other, worker=worker)

    yield make
    for other in opened:
        other.close()


def changed_at(archive: Archive, study_uid: str) -> datetime:
    with archive.sessions() as session:
        value = session.scalar(select(Study.updated_at).where(Study.study_uid == study_uid))
    assert value is not None
    return value if value.tzinfo is not None else value.replace(tzinfo=utcnow().tzinfo)


def auto_rows(archive: Archive) -> dict[str, AutoShare]:
    with archive.sessions() as session:
        return {row.study_uid: row for row in session.scalars(select(AutoShare))}


def shares_of(links: ShareLinks, study_uid: str) -> list[str]:
    return [info.id for info in links.list(ShareFilter(study_uid=study_uid))]


def stored(archive: Archive, patient_id: str, accession: str, **attrs: Any) -> StoredStudy:
    return store_study(archive, patient_id, accession, PatientBirthDate="19700101", **attrs)


def test_a_stable_study_gets_one_share_as_configured(
    archive: Archive, links: ShareLinks, sharer_for: Callable[..., AutoSharer]
) -> None:
    sharer = sharer_for(auto_share_days=30, auto_share_permissions=["view", "download"])
    study = stored(archive, "P1", "ACC-1")
    start = changed_at(archive, study.study)
    assert not sharer.step(start + timedelta(seconds=STABLE - 1))
    assert shares_of(links, study.study) == [] and auto_rows(archive) == {}
    moment = start + timedelta(seconds=STABLE + 1)
    assert sharer.step(moment)
    (share_id,) = shares_of(links, study.study)
    info = links.get(share_id)
    assert info.created_by == "auto" and info.secret_kind == "code"
    assert info.permissions == {"view", "download"} and not info.pending
    assert abs(info.expires_at - (utcnow() + timedelta(days=30))) < timedelta(minutes=5)
    link, code = links.reveal(share_id)
    assert link and code and len(code) == 6  # the card can be printed by staff
    row = auto_rows(archive)[study.study]
    assert (row.state, row.share_id, row.outcome) == ("done", share_id, "issued")
    for later in (moment, moment + timedelta(hours=1)):
        sharer.step(later)
    assert shares_of(links, study.study) == [share_id]


def test_stability_counts_from_the_last_instance(
    archive: Archive, links: ShareLinks, sharer_for: Callable[..., AutoSharer]
) -> None:
    sharer = sharer_for()
    study = stored(archive, "P2", "ACC-2")
    first = changed_at(archive, study.study)
    more = make_dataset(PatientID="P2", AccessionNumber="ACC-2", PatientBirthDate="19700101",
                        StudyInstanceUID=study.study, SeriesInstanceUID=study.series)  # fmt: skip
    assert archive.store(part10(more)).ok
    last = changed_at(archive, study.study)
    assert last > first
    sharer.step(last + timedelta(seconds=STABLE - 1))
    assert shares_of(links, study.study) == []
    sharer.step(last + timedelta(seconds=STABLE + 1))
    assert len(shares_of(links, study.study)) == 1


def test_modality_source_and_age_filters(
    archive: Archive, links: ShareLinks, sharer_for: Callable[..., AutoSharer]
) -> None:
    ct = stored(archive, "P3", "ACC-3")  # CT_small is a CT
    mr = stored(archive, "P4", "ACC-4", Modality="MR")
    by_mr = sharer_for(auto_share_modalities=["mr"])
    later = max(changed_at(archive, s.study) for s in (ct, mr)) + timedelta(seconds=STABLE + 1)
    by_mr.step(later)
    assert shares_of(links, ct.study) == [] and len(shares_of(links, mr.study)) == 1

    from_ct1 = make_dataset(PatientID="P5", AccessionNumber="ACC-5", PatientBirthDate="19700101")
    assert archive.store(part10(from_ct1), source="dimse:CT1").ok
    from_ct2 = make_dataset(PatientID="P6", AccessionNumber="ACC-6", PatientBirthDate="19700101")
    assert archive.store(part10(from_ct2), source="dimse:CT2").ok
    by_ae = sharer_for(auto_share_source_aes=["CT1"])
    later = changed_at(archive, from_ct2.StudyInstanceUID) + timedelta(seconds=STABLE + 1)
    by_ae.step(later)
    assert len(shares_of(links, from_ct1.StudyInstanceUID)) == 1
    assert shares_of(links, from_ct2.StudyInstanceUID) == []
    assert shares_of(links, ct.study) == []  # came through "import" in store_study

    too_old = sharer_for(auto_share_max_age_hours=1)
    too_old.step(changed_at(archive, ct.study) + timedelta(hours=2))
    assert shares_of(links, ct.study) == []


def test_a_pending_accession_share_is_resolved_not_doubled(
    archive: Archive, links: ShareLinks, sharer_for: Callable[..., AutoSharer]
) -> None:
    early = links.issue(ShareRequest(accession_number="ACC-EARLY", secret="code"))
    assert early.info.pending
    study = stored(archive, "P7", "ACC-EARLY")
    sharer_for().step(changed_at(archive, study.study) + timedelta(seconds=STABLE + 1))
    assert shares_of(links, study.study) == [early.info.id]
    assert not links.get(early.info.id).pending
    row = auto_rows(archive)[study.study]
    assert (row.share_id, row.outcome) == (early.info.id, "resolved")


def test_a_share_staff_issued_is_kept_a_revoked_one_is_not(
    archive: Archive, links: ShareLinks, sharer_for: Callable[..., AutoSharer]
) -> None:
    kept, replaced = stored(archive, "P8", "ACC-8"), stored(archive, "P9", "ACC-9")
    by_staff = links.issue(ShareRequest(study_uids=[kept.study]))
    withdrawn = links.issue(ShareRequest(study_uids=[replaced.study]))
    links.revoke(withdrawn.info.id)
    later = changed_at(archive, replaced.study) + timedelta(seconds=STABLE + 1)
    sharer_for().step(later)
    rows = auto_rows(archive)
    assert shares_of(links, kept.study) == [by_staff.info.id]
    assert (rows[kept.study].share_id, rows[kept.study].outcome) == (by_staff.info.id, "existing")
    assert rows[replaced.study].outcome == "issued"
    new = rows[replaced.study].share_id
    assert set(shares_of(links, replaced.study)) == {withdrawn.info.id, new}


def test_a_study_that_cannot_be_shared_fails_once_with_the_reason(
    archive: Archive, links: ShareLinks, sharer_for: Callable[..., AutoSharer]
) -> None:
    sharer = sharer_for(auto_share_protection="birth-date")
    study = store_study(archive, "P10", "ACC-10", PatientBirthDate=None)
    later = changed_at(archive, study.study) + timedelta(seconds=STABLE + 1)
    sharer.step(later)
    row = auto_rows(archive)[study.study]
    assert row.state == "failed" and "birth date" in row.last_error and row.share_id is None
    assert not sharer.step(later + timedelta(hours=1))  # not retried, not taken up again
    assert auto_rows(archive)[study.study].attempts == 1
    assert shares_of(links, study.study) == []


def test_two_processes_never_share_a_study_twice(
    archive: Archive, links: ShareLinks, sharer_for: Callable[..., AutoSharer]
) -> None:
    studies = [stored(archive, f"PM{i}", f"ACC-M{i}") for i in range(8)]
    later = max(changed_at(archive, s.study) for s in studies) + timedelta(seconds=STABLE + 1)
    sharers = [sharer_for(worker=f"proc-{i}") for i in range(3)]
    errors: list[BaseException] = []

    def run(sharer: AutoSharer) -> None:
        try:
            for _ in range(3):
                sharer.step(later)
        except BaseException as exc:  # reported below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in sharers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    rows = auto_rows(archive)
    assert set(rows) == {s.study for s in studies}
    for study in studies:
        assert shares_of(links, study.study) == [rows[study.study].share_id]
        assert rows[study.study].state == "done"


def test_a_lapsed_claim_is_taken_over_and_the_late_worker_changes_nothing(
    archive: Archive, links: ShareLinks, sharer_for: Callable[..., AutoSharer]
) -> None:
    study = stored(archive, "P11", "ACC-11")
    later = changed_at(archive, study.study) + timedelta(seconds=STABLE + 1)
    dead, alive = sharer_for(worker="dead"), sharer_for(worker="alive")
    dead.discover(later)
    held = jobs.claim(dead.archive, AutoShare, worker="dead", limit=10)
    assert len(held.pks) == 1  # then the process "dies": its lease lapses
    with archive.sessions.begin() as session:
        session.execute(update(AutoShare).values(locked_until=utcnow() - timedelta(seconds=1)))
    assert alive.step(later)  # a restarted (or another) process takes it over
    (share_id,) = shares_of(links, study.study)
    assert dead.work(held, held.pks[0]) is None  # the first worker wakes up: nothing happens
    assert shares_of(links, study.study) == [share_id]
    assert auto_rows(archive)[study.study].share_id == share_id


def test_nothing_secret_is_logged(
    archive: Archive,
    links: ShareLinks,
    sharer_for: Callable[..., AutoSharer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    study = stored(archive, "P12", "ACC-12")
    with caplog.at_level(logging.DEBUG):
        sharer_for().step(changed_at(archive, study.study) + timedelta(seconds=STABLE + 1))
    (share_id,) = shares_of(links, study.study)
    link, code = links.reveal(share_id)
    assert link and code
    assert share_id in caplog.text  # the log says what happened ...
    assert token_of(link) not in caplog.text and code not in caplog.text  # ... never the secrets


def test_serve_processes_share_each_stable_study_once(
    archive: Archive, links: ShareLinks, cli_env: dict[str, str]
) -> None:
    """Two real ``cloudfilm serve`` processes on one index, a one-second stable time."""
    env = {**cli_env, "CLOUDFILM_AUTO_SHARE_ENABLED": "true",
           "CLOUDFILM_AUTO_SHARE_STABLE_SECONDS": "1", "CLOUDFILM_AUTO_SHARE_POLL_SECONDS": "0.2",
           "CLOUDFILM_LOG_LEVEL": "INFO", "PYTHONIOENCODING": "utf-8"}  # fmt: skip
    ports = [free_port(), free_port()]
    servers = [
        subprocess.Popen(
            [sys.executable, "-m", "cloudfilm.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for port in ports
    ]
    try:
        _wait_for(lambda: all(_up(port) for port in ports), "the servers to start")
        studies = [stored(archive, f"PS{i}", f"ACC-S{i}") for i in range(3)]
        origin = f"http://127.0.0.1:{ports[0]}"
        _wait_for(
            lambda: all(_listed(origin, s.study) for s in studies), "the automatic cloud films"
        )
    finally:
        outputs = []
        for server in servers:
            server.terminate()
            outputs.append(server.communicate(timeout=60)[0])
    for study in studies:
        (share_id,) = shares_of(links, study.study)
        link, code = links.reveal(share_id)
        assert link and code
        for output in outputs:
            assert token_of(link) not in output and code not in output
    assert any("automatic cloud film" in output for output in outputs)


def _up(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def _listed(origin: str, study_uid: str) -> bool:
    answer = requests.get(f"{origin}/api/shares", params={"study_uid": study_uid}, timeout=30)
    return answer.status_code == 200 and len(answer.json()) > 0


def _wait_for(condition: Callable[[], bool], what: str, limit: float = 90.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


def test_serve_without_the_rule_starts_no_thread(settings: Settings) -> None:
    from cloudfilm.sharing.auto import auto_share_beside

    with auto_share_beside(settings) as sharer:
        assert sharer is None
        assert not any(t.name == "auto-share" for t in threading.enumerate())
    enabled = settings.model_copy(update={"auto_share_enabled": True})
    with auto_share_beside(enabled) as sharer:
        assert sharer is not None
        assert any(t.name == "auto-share" and t.is_alive() for t in threading.enumerate())
    assert not any(t.name == "auto-share" and t.is_alive() for t in threading.enumerate())
