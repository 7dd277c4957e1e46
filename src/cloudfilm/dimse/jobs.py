"""Durable jobs kept in the index: forwards (``DimseForward``) and commitment reports
(``DimseCommitment``), claimed safely by any number of server processes, retried with
exponential back-off.

Claiming (at most one worker runs a job at a time, whatever process it lives in) is one
statement: ``UPDATE … SET state = 'running' WHERE pk IN (SELECT pk … LIMIT n) AND <due>``. On
PostgreSQL the sub-select takes ``FOR UPDATE SKIP LOCKED``, so concurrent workers take
different rows without waiting; on SQLite, where one write transaction runs at a time
(``BEGIN IMMEDIATE``), the statement is atomic and the repeated due condition keeps a row from
being taken twice. A claim holds until ``locked_until`` (``LEASE``, renewed while the work goes
on): the jobs of a process that died mid-way are taken again once their lease lapses. Every
update after the claim names the claim's token, so a worker whose lease lapsed cannot
overwrite the outcome of the worker that took over.

A failed attempt waits ``dimse_retry_base_seconds × 2^(attempts − 1)`` (at most
``dimse_retry_max_seconds``) before the next; after ``dimse_retry_max_attempts`` attempts, or
at once when retrying is hopeless, the job is ``failed`` until ``cloudfilm queue retry``.
"""

from __future__ import annotations

import logging
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.core.errors import Conflict, NotFound
from cloudfilm.index.models import AutoShare, DimseCommitment, DimseForward, FilmPrint, utcnow

logger = logging.getLogger(__name__)

#: Tables of durable jobs (``AutoShare``: automatic cloud films, ``cloudfilm.sharing.auto``;
#: ``FilmPrint``: sheets for a real film printer, ``cloudfilm.dimse.print_queue``).
JobModel = type[DimseForward] | type[DimseCommitment] | type[AutoShare] | type[FilmPrint]

#: How long a claim holds before another worker may take the job (renewed while working).
LEASE = timedelta(minutes=10)
#: States of a job that is finished: nothing more will happen to it by itself.
FINISHED = ("done", "cancelled")


def aware(value: datetime | None) -> datetime | None:
    """A datetime read from the index, in UTC (SQLite returns them without a time zone)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def backoff(settings: Settings, attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed attempt."""
    seconds = settings.dimse_retry_base_seconds * 2 ** max(0, min(attempts - 1, 40))
    return timedelta(seconds=min(seconds, settings.dimse_retry_max_seconds))


def due(model: JobModel, now: datetime) -> ColumnElement[bool]:
    """The condition of jobs a worker may take now: pending and due, or a lapsed claim."""
    return or_(
        and_(model.state == "pending", model.next_attempt_at <= now),
        and_(model.state == "running", model.locked_until < now),
    )


@dataclass(frozen=True)
class Claim:
    """Jobs taken by one worker: their primary keys and the token that proves the claim."""

    model: JobModel
    token: str
    pks: tuple[int, ...]


def new_token(worker: str) -> str:
    return f"{worker[:40]}:{uuid.uuid4().hex[:16]}"


def claim(
    archive: Archive,
    model: JobModel,
    *,
    worker: str,
    limit: int,
    where: Sequence[ColumnElement[bool]] = (),
) -> Claim:
    """Take up to ``limit`` due jobs (oldest due first) for ``worker``; counts an attempt."""
    now = utcnow()
    token = new_token(worker)
    pick = (
        select(model.pk)
        .where(due(model, now), *where)
        .order_by(model.next_attempt_at, model.pk)
        .limit(limit)
    )
    if archive.engine.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    with archive.sessions.begin() as session:
        session.execute(
            update(model)
            .where(model.pk.in_(pick), due(model, now))
            .values(
                state="running",
                claimed_by=token,
                locked_until=now + LEASE,
                attempts=model.attempts + 1,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        pks = session.execute(
            select(model.pk)
            .where(model.claimed_by == token)
            .order_by(model.next_attempt_at, model.pk)
        ).scalars()
        return Claim(model, token, tuple(pks))


def record_running(archive: Archive, model: JobModel, pk: int, worker: str) -> Claim:
    """Claim one job this process has just created and works at once (not through the queue)."""
    now = utcnow()
    token = new_token(worker)
    with archive.sessions.begin() as session:
        session.execute(
            update(model)
            .where(model.pk == pk)
            .values(
                state="running",
                claimed_by=token,
                locked_until=now + LEASE,
                attempts=model.attempts + 1,
                updated_at=now,
            )
        )
    return Claim(model, token, (pk,))


def renew(archive: Archive, held: Claim, pks: Iterable[int] | None = None) -> None:
    """Extend the lease of the claimed jobs still running."""
    chosen = list(held.pks if pks is None else pks)
    if not chosen:
        return
    now = utcnow()
    with archive.sessions.begin() as session:
        session.execute(
            update(held.model)
            .where(held.model.pk.in_(chosen), held.model.claimed_by == held.token)
            .where(held.model.state == "running")
            .values(locked_until=now + LEASE, updated_at=now)
            .execution_options(synchronize_session=False)
        )


def succeed(archive: Archive, held: Claim, pks: Iterable[int], **values: Any) -> None:
    """Mark claimed jobs done (with extra column ``values``)."""
    chosen = list(pks)
    if not chosen:
        return
    now = utcnow()
    with archive.sessions.begin() as session:
        session.execute(
            update(held.model)
            .where(held.model.pk.in_(chosen), held.model.claimed_by == held.token)
            .values(
                state="done",
                claimed_by=None,
                locked_until=None,
                last_error="",
                updated_at=now,
                finished_at=now,
                **values,
            )
            .execution_options(synchronize_session=False)
        )


def fail(
    archive: Archive,
    held: Claim,
    errors: dict[int, str],
    *,
    hopeless: bool = False,
    **values: Any,
) -> None:
    """Record failed attempts: retried after the back-off, or ``failed`` when no attempt is
    left (or at once when ``hopeless``)."""
    if not errors:
        return
    settings = archive.settings
    model = held.model
    now = utcnow()
    with archive.sessions.begin() as session:
        rows = session.execute(
            select(model.pk, model.attempts).where(
                model.pk.in_(list(errors)), model.claimed_by == held.token
            )
        ).all()
        for pk, attempts in rows:
            last = hopeless or attempts >= settings.dimse_retry_max_attempts
            session.execute(
                update(model)
                .where(model.pk == pk)
                .values(
                    state="failed" if last else "pending",
                    next_attempt_at=now if last else now + backoff(settings, attempts),
                    claimed_by=None,
                    locked_until=None,
                    last_error=errors[pk][:400],
                    updated_at=now,
                    finished_at=now if last else None,
                    **values,
                )
            )
    logger.warning(
        "%s: %d job(s) failed: %s", model.__tablename__, len(errors), next(iter(errors.values()))
    )


# ----------------------------------------------------------------------------- managing


def retry(archive: Archive, model: JobModel, pk: int | None = None) -> int:
    """Make jobs due now, with a fresh budget of attempts; returns how many.

    ``pk`` None: every failed or pending job. One job: it must be failed, cancelled or pending.

    Raises
    ------
    NotFound
        For an unknown ``pk``.
    Conflict
        For a job that is running or done.
    """
    now = utcnow()
    with archive.sessions.begin() as session:
        if pk is not None:
            state = session.execute(select(model.state).where(model.pk == pk)).scalar()
            if state is None:
                raise NotFound(f"no job {pk} in {model.__tablename__}")
            if state in ("running", "done"):
                raise Conflict(f"job {pk} is {state}; only pending, failed or cancelled jobs")
            condition: ColumnElement[bool] = model.pk == pk
        else:
            condition = model.state.in_(("failed", "pending"))
        result = session.execute(
            update(model)
            .where(condition)
            .values(
                state="pending",
                next_attempt_at=now,
                attempts=0,
                finished_at=None,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
    notify()
    return int(result.rowcount)  # type: ignore[attr-defined]


def cancel(archive: Archive, model: JobModel, pk: int) -> None:
    """Stop a pending or failed job for good (it stays listed as cancelled).

    Raises
    ------
    NotFound
        For an unknown ``pk``.
    Conflict
        For a job that is running, done or already cancelled.
    """
    now = utcnow()
    with archive.sessions.begin() as session:
        state = session.execute(select(model.state).where(model.pk == pk)).scalar()
        if state is None:
            raise NotFound(f"no job {pk} in {model.__tablename__}")
        if state not in ("pending", "failed"):
            raise Conflict(f"job {pk} is {state}; only pending or failed jobs can be cancelled")
        session.execute(
            update(model)
            .where(model.pk == pk, model.state == state)
            .values(state="cancelled", finished_at=now, updated_at=now)
        )


def purge(archive: Archive, model: JobModel) -> int:
    """Delete jobs finished more than ``dimse_queue_keep_days`` ago; returns how many."""
    days = archive.settings.dimse_queue_keep_days
    if days <= 0:
        return 0
    cutoff = utcnow() - timedelta(days=days)
    with archive.sessions.begin() as session:
        result = session.execute(
            delete(model)
            .where(model.state.in_(FINISHED), model.finished_at < cutoff)
            .execution_options(synchronize_session=False)
        )
    return int(result.rowcount)  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ workers

_loops: weakref.WeakSet[JobLoop] = weakref.WeakSet()
_loops_lock = threading.Lock()


def notify() -> None:
    """Wake the job loops of this process: a job was queued or made due."""
    with _loops_lock:
        loops = list(_loops)
    for loop in loops:
        loop.wake()


class JobLoop(threading.Thread):
    """A daemon thread that calls ``step`` until it reports no more work, then waits.

    It waits ``interval`` seconds, or less when ``notify()`` or ``wake()`` is called. ``step``
    returns True when it did something (the loop then calls it again at once). Exceptions are
    logged and waited out: a database that is down is tried again at the next turn.
    """

    def __init__(self, name: str, step: Callable[[], bool], interval: float) -> None:
        super().__init__(name=name, daemon=True)
        self._step = step
        self._interval = interval
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        with _loops_lock:
            _loops.add(self)

    def wake(self) -> None:
        self._wakeup.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        self._wakeup.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        while not self._stopping.is_set():
            self._wakeup.clear()
            try:
                busy = self._step()
            except Exception:
                logger.exception("%s: a job step failed", self.name)
                busy = False
            if not busy:
                self._wakeup.wait(self._interval)
