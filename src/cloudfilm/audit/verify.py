"""Check the audit chain: nothing edited, nothing removed, nothing cut off the end.

``verify`` walks every row in ``seq`` order, a page at a time (bounded memory; each page is
its own short transaction, so appenders are never held up for long), recomputes each hash
and checks the links between rows. It then checks every line of the head file (see
``cloudfilm.audit.trail``) against the table, which detects rows removed from the end: the
chain alone cannot, since what is left is still a valid chain.

The head file is read (its size noted) *before* the rows, so lines appended while verify
runs are not read, and every line read names a row committed before the walk began.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sqlalchemy import Engine, Row, select

from cloudfilm.audit.trail import GENESIS_HASH, chain_hash
from cloudfilm.index.models import AuditEvent

if TYPE_CHECKING:
    from cloudfilm.archive import Archive

logger = logging.getLogger(__name__)

#: Rows read per transaction.
PAGE_ROWS = 2000
#: Head file lines checked per query.
HEAD_BATCH = 500

ProblemKind = Literal["edited", "removed", "truncated"]


@dataclass(frozen=True)
class AuditProblem:
    """The first thing found wrong.

    ``edited``: a row's content does not match its hash. ``removed``: a gap in ``seq``, or a
    row whose ``prev_hash`` is not the hash of the row before it. ``truncated``: the head file
    names a row that is no longer there, or that now has another hash.
    """

    kind: ProblemKind
    seq: int
    message: str


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found. ``problem`` is None when the chain is intact."""

    rows: int
    last_seq: int
    last_hash: str
    problem: AuditProblem | None
    head_path: Path
    #: False when there was no head file to check against (nothing recorded yet, or lost).
    head_checked: bool
    head_lines: int
    #: Lines that were not ``<seq> <hash> <time>`` (e.g. cut short by a crash), skipped.
    head_lines_skipped: int

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        """One line for people."""
        if self.problem is not None:
            p = self.problem
            return f"audit trail NOT intact: {p.kind} at seq {p.seq}: {p.message}"
        head = (
            f"head file {self.head_path} agrees ({self.head_lines} lines)"
            if self.head_checked
            else f"no head file at {self.head_path}: a cut-off tail cannot be detected"
        )
        return f"audit trail intact: {self.rows} rows, last seq {self.last_seq}; {head}"


def verify(archive: Archive, head_path: Path | None = None) -> VerifyReport:
    """Verify the chain of ``archive``'s audit table against the head file.

    ``head_path`` defaults to the settings' ``audit_head_path``.
    """
    path = head_path if head_path is not None else archive.settings.audit_head_file
    head_size = _file_size(path)
    rows = 0
    last_seq, last_hash = 0, GENESIS_HASH
    for row in _rows(archive.engine):
        problem = _check_row(row, last_seq, last_hash)
        if problem is not None:
            return _report(rows, last_seq, last_hash, problem, path, head_size, 0, 0)
        rows += 1
        last_seq, last_hash = int(row.seq), str(row.hash)
    if head_size is None:
        return _report(rows, last_seq, last_hash, None, path, None, 0, 0)
    problem, lines, skipped = _check_head(archive.engine, path, head_size, last_seq)
    return _report(rows, last_seq, last_hash, problem, path, head_size, lines, skipped)


def _report(
    rows: int,
    last_seq: int,
    last_hash: str,
    problem: AuditProblem | None,
    path: Path,
    head_size: int | None,
    lines: int,
    skipped: int,
) -> VerifyReport:
    return VerifyReport(
        rows=rows,
        last_seq=last_seq,
        last_hash=last_hash,
        problem=problem,
        head_path=path,
        head_checked=head_size is not None and problem is None,
        head_lines=lines,
        head_lines_skipped=skipped,
    )


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _rows(engine: Engine) -> Iterator[Row[tuple[object, ...]]]:
    """Every row in ``seq`` order, one short transaction per page (keyset pagination)."""
    table = AuditEvent.__table__
    after = 0
    while True:
        with engine.connect() as conn:
            page = conn.execute(
                select(table).where(table.c.seq > after).order_by(table.c.seq).limit(PAGE_ROWS)
            ).all()
        if not page:
            return
        yield from page
        after = int(page[-1].seq)


def _check_row(row: Row[tuple[object, ...]], last_seq: int, last_hash: str) -> AuditProblem | None:
    seq = int(row.seq)
    if seq != last_seq + 1:
        missing = f"{last_seq + 1}" if seq == last_seq + 2 else f"{last_seq + 1}-{seq - 1}"
        return AuditProblem("removed", last_seq + 1, f"rows {missing} are missing")
    if row.prev_hash != last_hash:
        return AuditProblem(
            "removed",
            seq,
            "prev_hash is not the hash of the row before: a row was removed or replaced, or "
            "the row before was edited and re-hashed",
        )
    if chain_hash(last_hash, row._mapping) != row.hash:
        return AuditProblem("edited", seq, "the row's content does not match its hash")
    return None


def _check_head(
    engine: Engine, path: Path, size: int, last_seq: int
) -> tuple[AuditProblem | None, int, int]:
    """Check every head line (up to ``size`` bytes) against the table, a batch at a time."""
    lines = skipped = 0
    batch: list[tuple[int, str]] = []
    with path.open("rb") as f:
        read = 0
        for raw in f:
            read += len(raw)
            if read > size:
                break
            entry = _parse_head_line(raw)
            if entry is None:
                skipped += 1
                continue
            lines += 1
            batch.append(entry)
            if len(batch) >= HEAD_BATCH:
                problem = _check_head_batch(engine, batch, last_seq)
                if problem is not None:
                    return problem, lines, skipped
                batch = []
    problem = _check_head_batch(engine, batch, last_seq) if batch else None
    if skipped:
        logger.warning("audit head file %s: %d malformed lines skipped", path, skipped)
    return problem, lines, skipped


def _parse_head_line(raw: bytes) -> tuple[int, str] | None:
    parts = raw.decode("ascii", "replace").split()
    if len(parts) != 3 or not parts[0].isdigit() or len(parts[1]) != 64:
        return None
    return int(parts[0]), parts[1]


def _check_head_batch(
    engine: Engine, batch: list[tuple[int, str]], last_seq: int
) -> AuditProblem | None:
    table = AuditEvent.__table__
    wanted = sorted({seq for seq, _ in batch})
    with engine.connect() as conn:
        found = dict(
            conn.execute(select(table.c.seq, table.c.hash).where(table.c.seq.in_(wanted))).all()
        )
    for seq, digest in sorted(batch):
        if seq not in found:
            return AuditProblem(
                "truncated",
                seq,
                f"the head file names seq {seq}, but the table ends at seq {last_seq}: "
                "rows were cut off the end",
            )
        if found[seq] != digest:
            return AuditProblem(
                "truncated",
                seq,
                f"the head file names seq {seq} with another hash than the row's: rows were "
                "cut off the end and appended again, or the chain was rewritten",
            )
    return None
