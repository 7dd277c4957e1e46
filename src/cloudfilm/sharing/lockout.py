"""Lockout after wrong access codes, counted in the index so that it holds across processes.

Two counters apply to every attempt: one per share, one per client address, each with its own
limit. Each counts the failures of a window that starts at its first failure and lasts the
lockout period; reaching the limit within it locks the subject for the lockout period.

An attempt is counted *before* its answer is checked (:meth:`Lockout.reserve`): one
transaction that holds the rows (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite transactions are
serialised by ``BEGIN IMMEDIATE``) refuses it if a subject is locked and otherwise counts it.
So requests racing on one or many processes cannot get more checks than the limit. A passed
check gives its count back (:meth:`Lockout.passed`): the share's counter is cleared, the
client's loses the one count.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from cloudfilm.index.models import ShareLockout

SHARE = "share"
CLIENT = "client"
Subject = tuple[str, str]


def aware(value: datetime) -> datetime:
    """A datetime read from the index as UTC-aware (SQLite returns naive values)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def client_subject(address: str) -> str:
    """The lockout key of a client address: IPv4 as is (also when written as an IPv4-mapped
    IPv6 address), other IPv6 reduced to its /64 network (one subscriber usually holds a whole
    /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:128]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(frozen=True)
class Verdict:
    """The state after an attempt: locked until a time, or how many attempts remain."""

    locked_until: datetime | None
    remaining: int

    def retry_after(self, now: datetime) -> int:
        """Seconds until the lock lifts (at least 1), 0 when not locked."""
        if self.locked_until is None or self.locked_until <= now:
            return 0
        return max(1, int((self.locked_until - now).total_seconds() + 0.999))


class Lockout:
    """Failure counters per share and per client."""

    def __init__(
        self,
        engine: Engine,
        sessions: sessionmaker[Session],
        max_failures: int,
        minutes: int,
        *,
        client_failures: int | None = None,
        limits: Mapping[str, int] | None = None,
        cleared: Collection[str] = (SHARE,),
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.max_failures = max_failures
        #: The limit of each scope (other counters, such as sign-in's, add their own).
        self.limits = {SHARE: max_failures, CLIENT: client_failures or max_failures}
        self.limits.update(limits or {})
        #: Scopes whose counter a right answer clears (the others only get their count back).
        self.cleared = frozenset(cleared)
        self.period = timedelta(minutes=minutes)

    def check(self, subjects: list[Subject], now: datetime) -> Verdict:
        """The current state (no change): locked until the latest lock among ``subjects``."""
        with self.sessions() as session:
            rows = session.scalars(
                select(ShareLockout).where(
                    tuple_(ShareLockout.scope, ShareLockout.subject).in_(subjects)
                )
            ).all()
        return self._verdict(rows, now)

    def reserve(self, subjects: list[Subject], now: datetime) -> tuple[bool, Verdict]:
        """Count one attempt against every subject before its answer is checked.

        Answers ``(False, verdict)`` without counting when a subject is locked (the answer must
        not be checked), else ``(True, verdict)`` with the attempt counted as a failure; the
        verdict then says whether this attempt used the last one (``locked_until`` set).
        """
        ordered = sorted(set(subjects))
        with self.sessions.begin() as session:
            rows = self._held_rows(session, ordered, now)
            if any(self._locked(row, now) for row in rows):
                return False, self._verdict(rows, now)
            for row in rows:
                self._count(row, now)
            return True, self._verdict(rows, now)

    def passed(self, subjects: list[Subject], now: datetime) -> None:
        """Give back the count of a reserved attempt whose answer was right: the counters of
        the ``cleared`` scopes (the share's, a username's) are cleared, the client's loses one
        count (and a lock this attempt set)."""
        ordered = sorted(set(subjects))
        with self.sessions.begin() as session:
            for row in self._held_rows(session, ordered, now):
                if row.scope in self.cleared:
                    session.delete(row)
                    continue
                row.failures = max(row.failures - 1, 0)
                if row.failures < self.limits[row.scope]:
                    row.locked_until = None

    def clear(self, subject: Subject) -> None:
        """Forget the failures of one subject (staff lifting a lock)."""
        scope, key = subject
        with self.sessions.begin() as session:
            session.execute(
                delete(ShareLockout).where(ShareLockout.scope == scope, ShareLockout.subject == key)
            )

    def _held_rows(
        self, session: Session, subjects: list[Subject], now: datetime
    ) -> Sequence[ShareLockout]:
        """The rows of ``subjects``, created where missing, held until the transaction ends."""
        dialect_insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        for scope, key in subjects:
            stmt = dialect_insert(ShareLockout).values(
                scope=scope, subject=key, failures=0, window_start=now, locked_until=None
            )
            session.execute(stmt.on_conflict_do_nothing(index_elements=["scope", "subject"]))
        return session.scalars(
            select(ShareLockout)
            .where(tuple_(ShareLockout.scope, ShareLockout.subject).in_(subjects))
            .order_by(ShareLockout.scope, ShareLockout.subject)
            .with_for_update()
        ).all()

    @staticmethod
    def _locked(row: ShareLockout, now: datetime) -> bool:
        return row.locked_until is not None and aware(row.locked_until) > now

    def _count(self, row: ShareLockout, now: datetime) -> None:
        if self._locked(row, now):
            return  # attempts while locked are refused before checking; nothing to add
        if row.locked_until is not None or aware(row.window_start) + self.period <= now:
            row.failures, row.window_start, row.locked_until = 0, now, None
        row.failures += 1
        if row.failures >= self.limits[row.scope]:
            row.locked_until = now + self.period

    def _verdict(self, rows: Sequence[ShareLockout], now: datetime) -> Verdict:
        locked_until: datetime | None = None
        remaining = self.max_failures
        for row in rows:
            if self._locked(row, now):
                assert row.locked_until is not None
                until = aware(row.locked_until)
                locked_until = until if locked_until is None else max(locked_until, until)
            elif aware(row.window_start) + self.period > now and row.locked_until is None:
                remaining = min(remaining, self.limits[row.scope] - row.failures)
        if locked_until is not None:
            remaining = 0
        return Verdict(locked_until, max(remaining, 0))
