"""Lockout after wrong access codes, counted in the index so that it holds across processes.

Two counters apply to every attempt: one per share, one per client address. Each counts the
failures of a window that starts at its first failure and lasts the lockout period; reaching
``max_failures`` within it locks the subject for the lockout period. A passed check clears the
share's counter (the client's lapses with its window). Counting is atomic: each attempt updates
its rows in one transaction that holds them (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite
transactions are serialised by ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
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
    """The lockout key of a client address: IPv4 as is, IPv6 reduced to its /64 network (one
    subscriber usually holds a whole /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:128]
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
        self, engine: Engine, sessions: sessionmaker[Session], max_failures: int, minutes: int
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.max_failures = max_failures
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

    def fail(self, subjects: list[Subject], now: datetime) -> Verdict:
        """Count one failure against every subject; lock those that reach the limit."""
        ordered = sorted(set(subjects))
        with self.sessions.begin() as session:
            self._ensure_rows(session, ordered, now)
            rows = session.scalars(
                select(ShareLockout)
                .where(tuple_(ShareLockout.scope, ShareLockout.subject).in_(ordered))
                .order_by(ShareLockout.scope, ShareLockout.subject)
                .with_for_update()
            ).all()
            for row in rows:
                self._count(row, now)
            return self._verdict(rows, now)

    def clear(self, subject: Subject) -> None:
        """Forget the failures of one subject (after a passed check)."""
        scope, key = subject
        with self.sessions.begin() as session:
            session.execute(
                delete(ShareLockout).where(ShareLockout.scope == scope, ShareLockout.subject == key)
            )

    def _ensure_rows(self, session: Session, subjects: list[Subject], now: datetime) -> None:
        dialect_insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        for scope, key in subjects:
            stmt = dialect_insert(ShareLockout).values(
                scope=scope, subject=key, failures=0, window_start=now, locked_until=None
            )
            session.execute(stmt.on_conflict_do_nothing(index_elements=["scope", "subject"]))

    def _count(self, row: ShareLockout, now: datetime) -> None:
        locked = row.locked_until is not None and aware(row.locked_until) > now
        if locked:
            return  # attempts while locked are refused before checking; nothing to add
        if row.locked_until is not None or aware(row.window_start) + self.period <= now:
            row.failures, row.window_start, row.locked_until = 0, now, None
        row.failures += 1
        if row.failures >= self.max_failures:
            row.locked_until = now + self.period

    def _verdict(self, rows: Sequence[ShareLockout], now: datetime) -> Verdict:
        locked_until: datetime | None = None
        remaining = self.max_failures
        for row in rows:
            if row.locked_until is not None and aware(row.locked_until) > now:
                until = aware(row.locked_until)
                locked_until = until if locked_until is None else max(locked_until, until)
            elif aware(row.window_start) + self.period > now and row.locked_until is None:
                remaining = min(remaining, self.max_failures - row.failures)
        if locked_until is not None:
            remaining = 0
        return Verdict(locked_until, max(remaining, 0))
