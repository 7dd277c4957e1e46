"""``cloudfilm films unmatched|attach|png``: the sheets printed to the virtual film printer that
wait for a study (``cloudfilm.film.printed``).

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
    help="Printed films that wait for a study: list them, attach them.", no_args_is_help=True
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
