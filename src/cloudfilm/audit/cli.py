"""``cloudfilm audit verify|export``: prove the audit trail intact, export it.

Registered in ``cloudfilm.cli``. Exit codes as ``cloudfilm.cli``: ``verify`` exits 1 when the
chain is not intact; 2 on a usage error.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer
from rich.console import Console

from cloudfilm.cli_options import DataDir

if TYPE_CHECKING:
    from cloudfilm.archive import Archive

audit_app = typer.Typer(
    help="The audit trail: verify its hash chain, export it.", no_args_is_help=True
)
err = Console(stderr=True)


def _open(data_dir: Path | None) -> Archive:
    from cloudfilm import cli

    return cli._open(data_dir)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]{message}[/red]", highlight=False)
    return typer.Exit(code)


@audit_app.command("verify")
def verify_command(
    head: Annotated[
        Path | None,
        typer.Option("--head", help="Head file to check against (default: audit_head_path)."),
    ] = None,
    data_dir: DataDir = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")] = False,
) -> None:
    """Recompute the hash chain and check it against the head file; exit 1 if not intact."""
    from cloudfilm.audit.verify import verify

    archive = _open(data_dir)
    try:
        report = verify(archive, head)
    finally:
        archive.close()
    if json_out:
        problem = report.problem
        body = {
            "ok": report.ok,
            "rows": report.rows,
            "last_seq": report.last_seq,
            "last_hash": report.last_hash,
            "head_path": str(report.head_path),
            "head_checked": report.head_checked,
            "head_lines": report.head_lines,
            "head_lines_skipped": report.head_lines_skipped,
            "problem": None
            if problem is None
            else {"kind": problem.kind, "seq": problem.seq, "message": problem.message},
        }
        sys.stdout.write(json.dumps(body) + "\n")
    else:
        colour = "green" if report.ok else "red"
        err.print(f"[{colour}]{report.summary()}[/{colour}]", highlight=False)
    raise typer.Exit(0 if report.ok else 1)


def _parse_time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise _fail(f"{option}: {value!r} is not an ISO 8601 date or time") from exc


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[TextIO]:
    if path is None or str(path) == "-":
        yield sys.stdout
        return
    with path.open("w", encoding="utf-8", newline="\n") as f:
        yield f


@audit_app.command("export")
def export_command(
    fmt: Annotated[
        str, typer.Option("--format", help="jsonl (one JSON object a row) or dicom.")
    ] = "jsonl",
    since: Annotated[
        str | None, typer.Option("--since", help="From this time (ISO 8601; no zone: UTC).")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Before this time (ISO 8601; no zone: UTC).")
    ] = None,
    action: Annotated[str | None, typer.Option("--action", help="Only this action.")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Only this Study UID.")] = None,
    patient: Annotated[str | None, typer.Option("--patient", help="Only this Patient ID.")] = None,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Only this actor: KIND:ID, or KIND.")
    ] = None,
    institution: Annotated[
        str | None, typer.Option("--institution", help="Only actors of this institution code.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Export audit rows as JSON lines or DICOM audit messages (one XML message a line)."""
    from cloudfilm.audit import AuditRecord, close_trail, trail_for
    from cloudfilm.audit.export import AuditFilter, export, parse_actor

    if fmt not in ("jsonl", "dicom"):
        raise _fail(f"--format must be jsonl or dicom, not {fmt!r}")
    actor_kind = actor_id = None
    if actor is not None:
        try:
            actor_kind, actor_id = parse_actor(actor)
        except ValueError as exc:
            raise _fail(f"--actor: {exc}") from exc
    where = AuditFilter(
        since=_parse_time(since, "--since"),
        until=_parse_time(until, "--until"),
        actor_kind=actor_kind,
        actor_id=actor_id,
        action=action,
        patient_id=patient,
        study_uid=study,
        institution=institution,
    )
    archive = _open(data_dir)
    try:
        with _output(output) as out:
            count = export(archive, out, "dicom" if fmt == "dicom" else "jsonl", where)
        # Reading the trail is itself audited (DICOM "Audit Log Used").
        filters = {k: v for k, v in vars(where).items() if v is not None}
        trail_for(archive).record(
            AuditRecord(
                "audit-export",
                actor_kind="cli",
                actor_id=_os_user(),
                detail=f"{count} rows as {fmt}; filters {json.dumps(filters, default=str)}",
            )
        )
        close_trail(archive, timeout=30)
    finally:
        archive.close()
    err.print(f"{count} audit rows exported", highlight=False)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container without passwd entry)
        return ""
