"""``cloudfilm films unmatched|attach|png``: the sheets printed to the virtual film printer that
wait for a study (``cloudfilm.film.printed``); ``cloudfilm films print|prints``: printing sheets
on real film (``cloudfilm.film.passthrough``).

Registered in ``cloudfilm.cli``. Exit codes as ``cloudfilm.cli``: 1 when the film or the study
is missing or the film is already attached; 2 on a usage error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from cloudfilm.cli_options import DataDir, JsonOut

if TYPE_CHECKING:
    from cloudfilm.archive import Archive

__all__ = ["films_app"]

films_app = typer.Typer(
    help="Printed films that wait for a study; printing sheets on real film.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)


def _open(data_dir: Path | None) -> Archive:
    from cloudfilm import cli

    return cli._open(data_dir)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]{message}[/red]", highlight=False)
    return typer.Exit(code)


@films_app.command("unmatched")
def unmatched_command(
    data_dir: DataDir = None,
    json_out: JsonOut = False,
    all_: Annotated[
        bool, typer.Option("--all", help="Also the films attached to a study since.")
    ] = False,
) -> None:
    """List the printed films not matched to a study, with their candidate studies."""
    from cloudfilm.film.printed import unmatched_films

    archive = _open(data_dir)
    try:
        films = unmatched_films(archive, include_attached=all_)
    finally:
        archive.close()
    if json_out:
        sys.stdout.write(json.dumps([f.as_json() for f in films]) + "\n")
        return
    if not films:
        console.print("no unmatched printed films")
        return
    table = Table("id", "printed at", "calling AE", "label", "format", "why", "candidates")
    for film in films:
        table.add_row(
            str(film.id),
            film.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            film.calling_ae,
            film.film_session_label,
            f"{film.display_format} {film.film_size} {film.orientation}",
            film.reason
            if film.attached_study_uid is None
            else f"attached {film.attached_study_uid}",
            "\n".join(film.candidates),
        )
    console.print(table)


@films_app.command("attach")
def attach_command(
    film_id: Annotated[int, typer.Argument(help="The id `cloudfilm films unmatched` shows.")],
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID to store the film in.")],
    data_dir: DataDir = None,
    json_out: JsonOut = False,
) -> None:
    """Store an unmatched printed film in a study (its film series)."""
    from dataclasses import asdict

    from cloudfilm.core.errors import CloudFilmError
    from cloudfilm.film.printed import attach

    archive = _open(data_dir)
    try:
        stored = attach(archive, film_id, study_uid)
    except CloudFilmError as exc:
        raise _fail(exc.message) from exc
    finally:
        archive.close()
    if json_out:
        sys.stdout.write(json.dumps(asdict(stored)) + "\n")
        return
    console.print(
        f"film {film_id} stored in study {stored.study_uid} as {stored.sop_instance_uid}",
        highlight=False,
    )


@films_app.command("png")
def png_command(
    film_id: Annotated[int, typer.Argument(help="The id `cloudfilm films unmatched` shows.")],
    output: Annotated[Path, typer.Argument(help="Where to write the PNG.")],
    data_dir: DataDir = None,
) -> None:
    """Write an unmatched printed film as a PNG (to look at it before attaching it)."""
    from cloudfilm.core.errors import CloudFilmError
    from cloudfilm.film.printed import unmatched_film_png

    archive = _open(data_dir)
    try:
        output.write_bytes(unmatched_film_png(archive, film_id))
    except CloudFilmError as exc:
        raise _fail(exc.message) from exc
    finally:
        archive.close()
    console.print(f"wrote {output}", highlight=False)


@films_app.command("print")
def print_command(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID whose sheets to print.")],
    printer: Annotated[
        str | None, typer.Option(help="AE title of the film printer (default: film_printer).")
    ] = None,
    sheet: Annotated[
        list[str] | None,
        typer.Option(help="SOP Instance UID of one film sheet (repeatable; default: all)."),
    ] = None,
    copies: Annotated[int, typer.Option(min=1, max=10, help="Copies of each sheet.")] = 1,
    data_dir: DataDir = None,
) -> None:
    """Queue a study's film sheets for printing on real film (a patient who still wants film).

    A running `cloudfilm serve` or `cloudfilm dimse` prints them; `cloudfilm films prints`
    shows how far they are.
    """
    import getpass

    from cloudfilm.core.errors import CloudFilmError
    from cloudfilm.film.passthrough import queue_study_films

    archive = _open(data_dir)
    try:
        queued = queue_study_films(
            archive,
            study_uid,
            printer=printer,
            requested_by=f"cli:{getpass.getuser()}",
            copies=copies,
            sop_instance_uids=sheet or (),
        )
    except CloudFilmError as exc:
        raise _fail(exc.message) from exc
    finally:
        archive.close()
    console.print(f"{len(queued)} sheet(s) queued for printing on film", highlight=False)


@films_app.command("prints")
def prints_command(
    data_dir: DataDir = None,
    json_out: JsonOut = False,
    study: Annotated[str | None, typer.Option(help="Only this study's sheets.")] = None,
) -> None:
    """List the newest jobs of the film printing queue (printing on real film)."""
    from cloudfilm.film.passthrough import film_prints

    archive = _open(data_dir)
    try:
        found = film_prints(archive, study_uid=study)
    finally:
        archive.close()
    if json_out:
        sys.stdout.write(json.dumps([p.as_json() for p in found]) + "\n")
        return
    if not found:
        console.print("no sheets queued for printing on film")
        return
    table = Table("id", "queued at", "printer", "state", "sheet", "size", "copies", "asked by",
                  "attempts", "last error")  # fmt: skip
    for job in found:
        what = job.sop_instance_uid or f"printed film {job.printed_film_id}"
        table.add_row(
            str(job.id), job.created_at.strftime("%Y-%m-%d %H:%M:%S"), job.printer, job.state,
            what, job.film_size, str(job.copies), job.requested_by, str(job.attempts),
            job.last_error,
        )  # fmt: skip
    console.print(table)
