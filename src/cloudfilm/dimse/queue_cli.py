"""``cloudfilm send`` (C-STORE SCU) and ``cloudfilm queue`` (forwards and commitment reports).

Registered in ``cloudfilm.cli``. Exit codes as everywhere in the CLI: 0 success; 1 something
refused, missing or failed; 2 a usage or system error (the peer cannot be reached).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from cloudfilm.cli_options import DataDir, JsonOut

if TYPE_CHECKING:
    from cloudfilm.archive import Archive
    from cloudfilm.dimse.scu import SendOutcome

console = Console()
err = Console(stderr=True)

_UID = re.compile(r"^[0-9A-Za-z._-]{1,64}$")


def _open(data_dir: Path | None) -> Archive:
    from cloudfilm import cli

    archive = cli._open(data_dir)
    if archive.settings.log_level.upper() != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    return archive


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[red]{message}[/red]", highlight=False)
    return typer.Exit(code)


# ------------------------------------------------------------------------------------ send


def send_command(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID of a stored study.")],
    to: Annotated[str, typer.Option("--to", help="AE title of a known peer (cloudfilm peers).")],
    series: Annotated[
        str | None, typer.Option("--series", help="Send only this Series Instance UID.")
    ] = None,
    data_dir: DataDir = None,
    json_out: JsonOut = False,
) -> None:
    """Send a stored study (or one series) to a known DICOM peer with C-STORE."""
    from cloudfilm.dimse.peers import PeerDirectory
    from cloudfilm.dimse.scu import CannotAssociate, scu_entity, send_instances
    from cloudfilm.dimse.selection import RetrieveRequest, select_instances
    from cloudfilm.index.matching import Level

    for label, uid in (("STUDY_UID", study_uid), ("--series", series)):
        if uid is not None and not _UID.match(uid):
            raise _fail(f"{label}: {uid[:64]!r} is not a UID", 2)
    archive = _open(data_dir)
    try:
        peer = PeerDirectory(archive).get(to)
        if peer is None:
            raise _fail(f"{to} is not a known peer (cloudfilm peers add AET HOST PORT)", 1)
        request = RetrieveRequest(
            Level.SERIES if series else Level.STUDY,
            study_uids=(study_uid,),
            series_uids=(series,) if series else (),
        )
        with archive.sessions() as session:
            instances = select_instances(session, request)
        if not instances:
            what = f"series {series} of study {study_uid}" if series else f"study {study_uid}"
            raise _fail(f"{what} is not in the archive", 1)
        start = time.perf_counter()
        with Progress(
            TextColumn(f"sending to {peer.ae_title}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            disable=json_out or not err.is_terminal,
        ) as progress:
            task = progress.add_task("send", total=len(instances))
            try:
                outcomes = send_instances(
                    archive,
                    scu_entity(archive.settings),
                    peer,
                    instances,
                    on_outcome=lambda _o: progress.advance(task),
                )
            except CannotAssociate as exc:
                raise _fail(f"cannot send: {exc}", 2) from exc
        seconds = time.perf_counter() - start
    finally:
        archive.close()
    _print_send(peer.ae_title, outcomes, seconds, json_out)
    raise typer.Exit(1 if any(o.category == "Failure" for o in outcomes) else 0)


def _print_send(
    destination: str, outcomes: list[SendOutcome], seconds: float, json_out: bool
) -> None:
    counts = Counter(o.category for o in outcomes)
    transcoded = Counter(o.transcoded_to for o in outcomes if o.transcoded_to)
    failed = [o for o in outcomes if o.category == "Failure"]
    if json_out:
        body = {
            "destination": destination,
            "instances": len(outcomes),
            "sent": counts["Success"] + counts["Warning"],
            "warnings": counts["Warning"],
            "failed": [
                {"sop_instance_uid": o.instance.sop_instance_uid, "reason": o.error} for o in failed
            ],
            "transcoded": dict(transcoded),
            "seconds": round(seconds, 3),
        }
        print(json.dumps(body, indent=2))
        return
    sent = counts["Success"] + counts["Warning"]
    console.print(
        f"[green]{sent} of {len(outcomes)} instances sent[/green] to {destination} in "
        f"{seconds:.1f} s ({len(outcomes) / seconds if seconds else 0:.1f} instances/s)"
        + (f", {counts['Warning']} with a warning" if counts["Warning"] else "")
        + (f", [red]{len(failed)} failed[/red]" if failed else ""),
        highlight=False,
    )
    for syntax, number in transcoded.items():
        console.print(f"  {number} transcoded to {syntax} (the peer accepts no other)")
    for outcome in failed:
        console.print(
            f"  failed {outcome.instance.sop_instance_uid}: {outcome.error}", highlight=False
        )


# ----------------------------------------------------------------------------------- queue

queue_app = typer.Typer(
    help="The forwarding queue of the routing rules, and storage commitment reports.",
    invoke_without_command=True,
)


@queue_app.callback()
def queue_list(
    ctx: typer.Context,
    data_dir: DataDir = None,
    json_out: JsonOut = False,
    finished: Annotated[
        bool, typer.Option("--finished", help="Also list done and cancelled jobs.")
    ] = False,
    limit: Annotated[int, typer.Option(help="Most jobs of each kind to list.", min=1)] = 50,
) -> None:
    """List queued forwards (ID n) and storage commitment reports (ID Cn)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = data_dir
        return
    from cloudfilm.index.models import DimseCommitment, DimseForward

    archive = _open(data_dir)
    try:
        forwards, forward_counts = _rows(archive, DimseForward, finished, limit)
        reports, report_counts = _rows(archive, DimseCommitment, finished, limit)
    finally:
        archive.close()
    if json_out:
        body = {
            "forwards": [_forward_json(r) for r in forwards],
            "commitments": [_commitment_json(r) for r in reports],
            "counts": {"forwards": forward_counts, "commitments": report_counts},
        }
        print(json.dumps(body, ensure_ascii=False, indent=2))
        return
    _print_forwards(forwards, forward_counts)
    if reports or report_counts:
        _print_reports(reports, report_counts)


def _rows(
    archive: Archive, model: Any, finished: bool, limit: int
) -> tuple[list[Any], dict[str, int]]:
    from sqlalchemy import func, select

    from cloudfilm.dimse.jobs import FINISHED

    with archive.sessions() as session:
        stmt = select(model).order_by(model.pk.desc()).limit(limit)
        if not finished:
            stmt = stmt.where(model.state.not_in(FINISHED))
        rows = list(session.execute(stmt).scalars())
        counts: dict[str, int] = {
            str(state): int(number)
            for state, number in session.execute(
                select(model.state, func.count()).group_by(model.state)
            )
        }
        session.expunge_all()  # detached with their loaded values (a rollback would expire them)
    return rows, counts


def _when(value: datetime | None) -> str | None:
    from cloudfilm.dimse.jobs import aware

    moment = aware(value)
    return moment.isoformat(timespec="seconds") if moment else None


def _job_json(row: Any) -> dict[str, Any]:
    return {
        "state": row.state,
        "attempts": row.attempts,
        "next_attempt_at": _when(row.next_attempt_at) if row.state == "pending" else None,
        "last_error": row.last_error,
        "created_at": _when(row.created_at),
        "finished_at": _when(row.finished_at),
    }


def _forward_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.pk,
        "destination": row.destination,
        "study_uid": row.study_uid,
        "series_uid": row.series_uid,
        "sop_instance_uid": row.sop_instance_uid,
        "source": row.source,
        "rule": row.rule,
        **_job_json(row),
    }


def _commitment_json(row: Any) -> dict[str, Any]:
    return {
        "id": f"C{row.pk}",
        "calling_ae": row.calling_ae,
        "transaction_uid": row.transaction_uid,
        "instances": len(row.references or []),
        "event_type": row.event_type,
        "failed_instances": row.failed_count,
        **_job_json(row),
    }


def _summary(counts: dict[str, int]) -> str:
    order = ["pending", "running", "failed", "done", "cancelled"]
    return ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s)) or "empty"


def _print_forwards(rows: list[Any], counts: dict[str, int]) -> None:
    table = Table("ID", "To", "Study", "Instance", "State", "Tries", "Next try", "Last error",
                  title="Forwarding queue")  # fmt: skip
    for row in rows:
        table.add_row(
            str(row.pk), row.destination, row.study_uid, row.sop_instance_uid, row.state,
            str(row.attempts), (_when(row.next_attempt_at) or "") if row.state == "pending" else "",
            row.last_error,
        )  # fmt: skip
    console.print(table)
    console.print(f"forwards: {_summary(counts)}")


def _print_reports(rows: list[Any], counts: dict[str, int]) -> None:
    table = Table("ID", "Peer", "Transaction UID", "Instances", "Event", "State", "Tries",
                  "Last error", title="Storage commitment reports")  # fmt: skip
    for row in rows:
        event = {1: "all committed", 2: f"{row.failed_count} failed"}.get(row.event_type or 0, "")
        table.add_row(
            f"C{row.pk}", row.calling_ae, row.transaction_uid, str(len(row.references or [])),
            event, row.state, str(row.attempts), row.last_error,
        )  # fmt: skip
    console.print(table)
    console.print(f"commitment reports: {_summary(counts)}")


def _job_id(text: str) -> tuple[Any, int]:
    """``12`` (a forward) or ``C12`` (a commitment report) as (model, primary key)."""
    from cloudfilm.index.models import DimseCommitment, DimseForward

    match = re.fullmatch(r"([cC]?)(\d{1,18})", text.strip())
    if match is None:
        raise _fail(f"{text!r} is not a job ID (12 for a forward, C12 for a report)", 2)
    return (DimseCommitment if match[1] else DimseForward), int(match[2])


@queue_app.command("retry")
def queue_retry(
    ctx: typer.Context,
    job: Annotated[str | None, typer.Argument(help="Job ID: 12 (forward) or C12 (report).")] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Every failed or waiting forward and report.")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Try jobs again now, with a fresh budget of attempts."""
    from cloudfilm.core.errors import CloudFilmError
    from cloudfilm.dimse import jobs
    from cloudfilm.index.models import DimseCommitment, DimseForward

    if (job is None) == (not all_):
        raise _fail("name one job ID, or --all", 2)
    archive = _open(data_dir or ctx.obj)
    try:
        if job is not None:
            model, pk = _job_id(job)
            done = jobs.retry(archive, model, pk)
        else:
            done = sum(jobs.retry(archive, m) for m in (DimseForward, DimseCommitment))
    except CloudFilmError as exc:
        raise _fail(exc.message, 1) from exc
    finally:
        archive.close()
    console.print(f"{done} job(s) due now; a running server sends them within "
                  f"dimse_queue_poll_seconds")  # fmt: skip


@queue_app.command("cancel")
def queue_cancel(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(help="Job ID: 12 (forward) or C12 (report).")],
    data_dir: DataDir = None,
) -> None:
    """Give up a pending or failed job (it stays listed as cancelled)."""
    from cloudfilm.core.errors import CloudFilmError
    from cloudfilm.dimse import jobs

    model, pk = _job_id(job)
    archive = _open(data_dir or ctx.obj)
    try:
        jobs.cancel(archive, model, pk)
    except CloudFilmError as exc:
        raise _fail(exc.message, 1) from exc
    finally:
        archive.close()
    console.print(f"cancelled {job.strip()}")
