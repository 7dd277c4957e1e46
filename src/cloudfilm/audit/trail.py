"""The append-only, hash-chained audit trail (table ``audit_event``; see docs/audit.md).

``AuditTrail.record`` only puts the record on an in-memory queue: a request never waits for
the audit table. A daemon writer thread appends what is queued in batches, one transaction
per batch, at least every ``audit_flush_seconds`` or as soon as ``BATCH_SIZE`` rows wait.

Each row carries the hash of the row before it (``prev_hash``) and its own ``hash``::

    hash = sha256(prev_hash + "\\n" + canonical_json(row without prev_hash and hash))

so an edited, removed or reordered row breaks the chain (``cloudfilm audit verify``). Several
server processes append to the same table, so a batch first takes a lock that serialises all
appenders — PostgreSQL: a transaction-scoped advisory lock; SQLite: the write lock our
sessions take with ``BEGIN IMMEDIATE`` (``cloudfilm.core.db``) — and only then reads the last
``(seq, hash)``; under PostgreSQL's default READ COMMITTED each statement sees the rows the
previous lock holder committed. The chain stays one line whatever the number of writers.

The newest ``seq hash time`` is also appended to a head file outside the database
(``audit_head_path``), so that cutting rows off the end of the table is detected as well.

If a batch fails (database down), its rows stay queued and are retried with growing waits.
The queue is bounded (``QUEUE_LIMIT``): beyond it new records are dropped, counted in
``AuditTrail.dropped`` and logged, never silently lost.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, insert, select, text
from sqlalchemy.exc import DBAPIError

from cloudfilm.index.models import AuditEvent

if TYPE_CHECKING:
    from cloudfilm.archive import Archive

logger = logging.getLogger(__name__)

#: ``prev_hash`` of the first row.
GENESIS_HASH = "0" * 64
OUTCOMES = ("success", "denied", "failure")
#: Key of the PostgreSQL advisory lock held by the transaction that appends a batch
#: ("CFAUDIT1" as a signed 64-bit integer; any fixed value no other code uses).
PG_LOCK_KEY = 0x4346415544495431
#: Most rows appended in one transaction.
BATCH_SIZE = 500
#: Most rows kept waiting; beyond it new records are dropped (and counted).
QUEUE_LIMIT = 100_000
#: Longest wait between two attempts while the database fails, in seconds.
MAX_BACKOFF_SECONDS = 30.0
#: How long ``close`` run by ``atexit`` waits for the queue to drain, in seconds.
EXIT_TIMEOUT_SECONDS = 10.0

#: The columns hashed, in the table's order (everything but ``prev_hash`` and ``hash``).
HASHED_COLUMNS = (
    "seq", "at", "actor_kind", "actor_id", "institution", "address", "agent", "action",
    "patient_id", "study_uid", "outcome", "detail",
)  # fmt: skip
#: Text columns and their sizes, taken from the model so that they cannot drift apart.
_TEXT_SIZES: dict[str, int] = {
    name: int(getattr(AuditEvent.__table__.c[name].type, "length", 0) or 0)
    for name in HASHED_COLUMNS
    if name not in ("seq", "at")
}


def iso_utc(at: datetime) -> str:
    """``at`` as ISO 8601 in UTC with microseconds: ``2026-11-28T10:18:51.000123Z``.

    A naive value (SQLite gives back what it stored, without a zone) is taken as UTC.
    """
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(row: Mapping[Any, Any]) -> str:
    """The hashed form of a row: the ``HASHED_COLUMNS``, sorted keys, no spaces, UTF-8 text."""
    content: dict[str, Any] = {}
    for name in HASHED_COLUMNS:
        value = row[name]
        if name == "at" and isinstance(value, datetime):
            value = iso_utc(value)
        content[name] = value
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, row: Mapping[Any, Any]) -> str:
    """SHA-256 (hex) of ``prev_hash``, a newline and :func:`canonical_json` of ``row``."""
    data = f"{prev_hash}\n{canonical_json(row)}".encode()
    return hashlib.sha256(data).hexdigest()


def _clean(value: str, size: int) -> str:
    """Text the database accepts: no NUL (PostgreSQL refuses it), valid UTF-8, cut to size."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value[:size]


@dataclass(frozen=True)
class AuditRecord:
    """One event to record: who (actor), what (action, patient, study), outcome, and detail.

    Text is cut to the column sizes of ``audit_event``; NUL characters are removed. ``at``
    defaults to the moment the record is made (UTC). Callers must never pass a secret — a
    share token, API key, password, session cookie or access code — in any field: the trail
    is exported and shown to admins and patients. Name a share by its public id, a request by
    its route template, not its path.

    ``actor_kind`` is one of ``user``, ``apikey``, ``share``, ``peer``, ``development``,
    ``cli``, ``system``, ``anonymous``; ``outcome`` one of ``success``, ``denied``,
    ``failure``. Actions are short verbs such as ``view`` or ``share-create`` (docs/audit.md
    lists them with their DICOM audit event).
    """

    action: str
    outcome: str = "success"
    actor_kind: str = "system"
    actor_id: str = ""
    institution: str = ""
    address: str = ""
    agent: str = ""
    patient_id: str = ""
    study_uid: str = ""
    detail: str = ""
    at: datetime | None = field(default=None)

    def __post_init__(self) -> None:
        if not self.action:
            raise ValueError("an audit record needs an action")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {self.outcome!r}")
        for name, size in _TEXT_SIZES.items():
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"audit field {name} must be text")
            cleaned = _clean(value, size)
            if cleaned is not value:
                object.__setattr__(self, name, cleaned)
        at = self.at if self.at is not None else datetime.now(UTC)
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        object.__setattr__(self, "at", at.astimezone(UTC))

    def row(self, seq: int) -> dict[str, Any]:
        """The hashed columns of this record as row ``seq``."""
        content: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        content["seq"] = seq
        return content


@dataclass(frozen=True)
class ChainHead:
    """The last row a writer appended."""

    seq: int
    hash: str


class AuditTrail:
    """Queues audit records and appends them to the hash chain from a background thread.

    Use one per process and database (:func:`cloudfilm.audit.trail_for`). ``record`` never
    blocks on the database; ``flush`` waits until everything recorded so far is committed;
    ``close`` flushes, writes the head file and stops the thread.
    """

    def __init__(
        self,
        archive: Archive,
        *,
        queue_limit: int = QUEUE_LIMIT,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        settings = archive.settings
        self._engine: Engine = archive.engine
        self._flush_seconds = settings.audit_flush_seconds
        self._head_seconds = settings.audit_head_seconds
        self.head_path: Path = settings.audit_head_file
        self._queue_limit = queue_limit
        self._batch_size = batch_size
        self._cond = threading.Condition()
        self._reset_state()

    def _reset_state(self) -> None:
        self._pid = os.getpid()
        self._pending: deque[AuditRecord] = deque()
        self._oldest_at = 0.0  # monotonic time the oldest waiting record arrived
        self._accepted = 0  # records queued so far (a ticket number for flush)
        self._committed = 0  # of those, how many are committed
        self._flush_wanted = 0  # flush() calls waiting: the writer does not wait the interval
        self._kicks = 0  # bumped by each flush() and close(): retry now, despite a backoff
        self._kicks_seen = 0
        self._closing = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._head: ChainHead | None = None  # last row this process committed
        self._head_written: ChainHead | None = None
        self._head_due = 0.0  # monotonic time the next head line may be written
        #: Records refused because the queue was full or the trail closed.
        self.dropped = 0
        #: Description of the last failed batch (no row content), None after a success.
        self.last_error: str | None = None

    # ------------------------------------------------------------------ producers

    @property
    def pending(self) -> int:
        """Records waiting to be committed."""
        with self._cond:
            return len(self._pending)

    def record(self, rec: AuditRecord) -> None:
        """Queue ``rec`` for the chain; returns at once (the writer thread starts lazily)."""
        if self._pid != os.getpid():  # forked: the parent's queue, lock and thread are not ours
            self._cond = threading.Condition()
            self._reset_state()
        with self._cond:
            if self._closing:
                self._drop("the audit trail is closed")
                return
            if len(self._pending) >= self._queue_limit:
                self._drop("the audit queue is full (is the database down?)")
                return
            if not self._pending:
                self._oldest_at = time.monotonic()
            self._pending.append(rec)
            self._accepted += 1
            if self._thread is None:
                self._start()
            if len(self._pending) == 1 or len(self._pending) == self._batch_size:
                self._cond.notify_all()

    def _drop(self, why: str) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            logger.error("audit record dropped: %s (%d dropped so far)", why, self.dropped)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cloudfilm-audit", daemon=True)
        self._thread.start()
        atexit.register(self._close_at_exit)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record queued before this call is committed.

        Returns False when ``timeout`` (seconds) passed first, e.g. while the database is
        down; the records stay queued.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._accepted
            if self._committed >= target:
                return True
            self._flush_wanted += 1
            self._kicks += 1
            self._cond.notify_all()
            try:
                while self._committed < target:
                    if self._thread is None or not self._thread.is_alive():
                        return False
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return True
            finally:
                self._flush_wanted -= 1

    def close(self, timeout: float | None = None) -> bool:
        """Flush, write the head file and stop the writer thread.

        Returns False when rows could not be written within ``timeout`` seconds (they are
        logged as lost). Records made after ``close`` are dropped.
        """
        if self._pid != os.getpid():  # a forked child never started this writer
            return True
        with self._cond:
            if self._closed:
                return True
            self._closing = True
            self._kicks += 1
            thread = self._thread
            self._cond.notify_all()
        atexit.unregister(self._close_at_exit)
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            lost = len(self._pending)
        if lost:
            logger.error("audit trail closed with %d rows not written to the index", lost)
        return lost == 0

    def _close_at_exit(self) -> None:
        self.close(EXIT_TIMEOUT_SECONDS)

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        failures = 0
        while True:
            batch = self._next_batch(failures)
            if batch is None:
                break
            if not batch:
                self._maybe_write_head(force=False)
                continue
            try:
                head = self._append(batch)
            except Exception as exc:
                failures += 1
                self.last_error = describe_error(exc)
                logger.warning(
                    "audit: could not append %d rows (%s); they stay queued, attempt %d",
                    len(batch),
                    self.last_error,
                    failures,
                )
                continue
            failures = 0
            self.last_error = None
            with self._cond:
                for _ in batch:
                    self._pending.popleft()
                self._committed += len(batch)
                self._head = head
                if self._pending:
                    self._oldest_at = time.monotonic()
                self._cond.notify_all()
            self._maybe_write_head(force=False)
        self._maybe_write_head(force=True)

    def _next_batch(self, failures: int) -> list[AuditRecord] | None:
        """Wait until a batch is due; ``[]`` when only the head file is due; None to stop.

        After ``failures`` failed attempts in a row, wait 0.5 s, 1 s, 2 s … (at most
        ``MAX_BACKOFF_SECONDS``); a new ``flush`` or ``close`` call asks for one attempt now.
        """
        backoff_until = 0.0
        if failures:
            backoff_until = time.monotonic() + min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** (failures - 1))
        with self._cond:
            while True:
                if self._closed or (self._closing and not self._pending):
                    return None
                now = time.monotonic()
                kicked = self._kicks != self._kicks_seen
                wake = float("inf")
                if self._pending:
                    if now >= backoff_until or kicked:
                        urgent = self._closing or self._flush_wanted > 0
                        due = self._oldest_at + self._flush_seconds
                        if urgent or len(self._pending) >= self._batch_size or now >= due:
                            self._kicks_seen = self._kicks
                            return self._take()
                        wake = due
                    else:
                        wake = backoff_until
                if self._head_pending():
                    if now >= self._head_due:
                        return []
                    wake = min(wake, self._head_due)
                self._cond.wait(None if wake == float("inf") else max(0.0, wake - now))

    def _take(self) -> list[AuditRecord]:
        return [self._pending[i] for i in range(min(self._batch_size, len(self._pending)))]

    def _append(self, batch: list[AuditRecord]) -> ChainHead:
        """Append ``batch`` in one transaction under the appenders' lock."""
        table = AuditEvent.__table__
        with self._engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE, the write lock
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
            last = conn.execute(
                select(table.c.seq, table.c.hash).order_by(table.c.seq.desc()).limit(1)
            ).first()
            seq, prev = (int(last.seq), str(last.hash)) if last else (0, GENESIS_HASH)
            rows = []
            for rec in batch:
                seq += 1
                row = rec.row(seq)
                digest = chain_hash(prev, row)
                rows.append({**row, "prev_hash": prev, "hash": digest})
                prev = digest
            conn.execute(insert(AuditEvent), rows)
        return ChainHead(seq, prev)

    # ------------------------------------------------------------------ head file

    def _head_pending(self) -> bool:
        return self._head is not None and self._head != self._head_written

    def _maybe_write_head(self, *, force: bool) -> None:
        with self._cond:
            head = self._head
            if head is None or head == self._head_written:
                return
            if not force and time.monotonic() < self._head_due:
                return
            self._head_written = head
            self._head_due = time.monotonic() + self._head_seconds
        try:
            write_head_line(self.head_path, head)
        except OSError as exc:
            logger.warning("audit: could not write the head file %s: %s", self.head_path, exc)


def write_head_line(path: Path, head: ChainHead) -> None:
    """Append ``"<seq> <hash> <ISO time>\\n"`` to ``path``, flushed and fsync'd.

    One ``write`` on a file opened for appending: lines of several processes do not mix.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    line = f"{head.seq} {head.hash} {iso_utc(datetime.now(UTC))}\n".encode("ascii")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def describe_error(exc: BaseException) -> str:
    """A one-line description of a database error without the statement's parameters.

    SQLAlchemy's own message quotes the parameters (the audit rows: patient IDs, addresses),
    so only the driver's first line is kept.
    """
    cause: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {first_line[:200]}" if first_line else type(cause).__name__
