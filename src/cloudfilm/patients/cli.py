"""``cloudfilm patients link|show|outbox``: cross-references of patients across institutions
(``cloudfilm.patients.pix``) and the messages the outbox notifier kept.

Registered in ``cloudfilm.cli``. Exit codes: 1 when the patient or platform patient is
missing or a value is refused; 2 on a usage error. The strong key and the phone are read from
a prompt when asked for (``--strong-key -``), so that they stay out of the shell history.
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

__all__ = ["patients_app"]

patients_app = typer.Typer(
    help="Patients across institutions: links to one platform patient; the SMS outbox.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)


def _open(data_dir: Path | None) -> Archive:
    from cloudfilm import cli

    return cli._open(data_dir)


@patients_app.command("link")
def link_command(
    patient_id: Annotated[str, typer.Argument(help="Patient ID (0010,0020) as stored.")],
    issuer: Annotated[str, typer.Option(help="Issuer of Patient ID (0010,0021).")] = "",
    strong_key: Annotated[
        str | None,
        typer.Option(help="The strong key (e.g. national ID number); '-' to type it."),
    ] = None,
    platform: Annotated[
        str | None, typer.Option(help="Link to this platform patient (its id) instead.")
    ] = None,
    phone: Annotated[
        str | None, typer.Option(help="Mobile phone for consent codes; '-' to type it.")
    ] = None,
    data_dir: DataDir = None,
    json_out: JsonOut = False,
) -> None:
    """Link (or re-link) a patient to a platform patient, or set its phone on record."""
    import getpass

    from cloudfilm.core.errors import CloudFilmError
    from cloudfilm.patients.pix import link

    if strong_key == "-":
        strong_key = getpass.getpass("strong key: ")
    if phone == "-":
        phone = getpass.getpass("phone: ")
    archive = _open(data_dir)
    try:
        info = link(archive, patient_id, issuer, strong_key=strong_key, platform_id=platform,
                    phone=phone, source="staff", created_by=f"cli:{getpass.getuser()}")  # fmt: skip
    except CloudFilmError as exc:
        err.print(f"[red]{exc.message}[/red]", highlight=False)
        raise typer.Exit(1) from exc
    finally:
        archive.close()
    _print(info.as_json(), json_out)


@patients_app.command("show")
def show_command(
    platform_id: Annotated[str, typer.Argument(help="The platform patient's id.")],
    data_dir: DataDir = None,
    json_out: JsonOut = False,
) -> None:
    """A platform patient and the institutions' patients linked to it."""
    from cloudfilm.core.errors import CloudFilmError
    from cloudfilm.patients.pix import patient_info

    archive = _open(data_dir)
    try:
        info = patient_info(archive, platform_id)
    except CloudFilmError as exc:
        err.print(f"[red]{exc.message}[/red]", highlight=False)
        raise typer.Exit(1) from exc
    finally:
        archive.close()
    _print(info.as_json(), json_out)


def _print(info: dict[str, object], json_out: bool) -> None:
    if json_out:
        sys.stdout.write(json.dumps(info, ensure_ascii=False) + "\n")
        return
    console.print(
        f"platform patient {info['id']} (strong key: {'yes' if info['has_strong_key'] else 'no'}"
        f", phone: …{info['phone_hint'] or '—'})",
        highlight=False,
    )
    table = Table("Patient ID", "Issuer", "Name", "Linked by", "Institutions", "Studies")
    for row in info["links"]:  # type: ignore[attr-defined]
        table.add_row(row["patient_id"], row["issuer"], row["name"] or "", row["source"],
                      ", ".join(row["institutions"]), str(row["studies"]))  # fmt: skip
    console.print(table)


@patients_app.command("outbox")
def outbox_command(
    to: Annotated[str | None, typer.Option(help="Only messages to this number.")] = None,
    data_dir: DataDir = None,
    json_out: JsonOut = False,
) -> None:
    """Messages the outbox notifier kept instead of sending (notifier = "outbox")."""
    from cloudfilm.patients.notify import outbox

    archive = _open(data_dir)
    try:
        found = outbox(archive, to)
    finally:
        archive.close()
    if json_out:
        rows = [{"to": m.to, "text": m.text, "at": m.at.isoformat()} for m in found]
        sys.stdout.write(json.dumps(rows, ensure_ascii=False) + "\n")
        return
    if not found:
        console.print("the outbox is empty")
    for message in found:
        console.print(f"{message.at:%Y-%m-%d %H:%M:%S}  {message.to}  {message.text}",
                      highlight=False)  # fmt: skip
