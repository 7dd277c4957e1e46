"""The ``cloudfilm`` command.

Exit codes: 0 success; 1 when something was rejected, in conflict, missing or inconsistent;
2 on a usage or system error.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from cloudfilm.access.cli import apikeys_app, institutions_app, users_app
from cloudfilm.archive import Archive
from cloudfilm.audit.cli import audit_app
from cloudfilm.cli_options import DataDir, JsonOut
from cloudfilm.core import logs
from cloudfilm.core.config import Settings, load_settings
from cloudfilm.core.errors import CloudFilmError
from cloudfilm.dimse.cli import dimse_beside, dimse_command, peers_app
from cloudfilm.dimse.queue_cli import queue_app, send_command
from cloudfilm.film.cli import film_command
from cloudfilm.film.films_cli import films_app
from cloudfilm.patients.cli import patients_app
from cloudfilm.sharing.cli import share_command, shares_app

app = typer.Typer(
    help="cloudfilm: a DICOM archive that replaces printed film with shareable cloud film.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Index database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(institutions_app, name="institutions")
app.add_typer(users_app, name="users")
app.add_typer(apikeys_app, name="apikeys")
app.add_typer(peers_app, name="peers")
app.command("dimse")(dimse_command)
app.command("send")(send_command)
app.add_typer(queue_app, name="queue")
app.add_typer(shares_app, name="shares")
app.add_typer(audit_app, name="audit")
app.add_typer(films_app, name="films")
app.add_typer(patients_app, name="patients")
app.command("share")(share_command)
app.command("film")(film_command)

console = Console()
err = Console(stderr=True)


def _settings(data_dir: Path | None, **extra: Any) -> Settings:
    try:
        return load_settings(data_dir=data_dir, **extra)
    except Exception as exc:  # pydantic ValidationError or a bad config file
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _open(data_dir: Path | None) -> Archive:
    settings = _settings(data_dir)
    logs.configure(settings.log_level)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return Archive.open(settings)
    except Exception as exc:
        err.print(f"[red]cannot open the archive:[/red] {exc}")
        raise typer.Exit(2) from exc


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Files, folders, .zip archives, DICOMDIRs.")],
    data_dir: DataDir = None,
    allow_rejected: Annotated[
        bool, typer.Option("--allow-rejected", help="Exit 0 even when files were rejected.")
    ] = False,
    json_out: JsonOut = False,
    institution: Annotated[
        str | None,
        typer.Option("--institution", help="Code of the institution the studies belong to."),
    ] = None,
) -> None:
    """Import DICOM files into the archive and print a summary."""
    from cloudfilm.access.visibility import institution_pk_of
    from cloudfilm.importer import ImportReport, collect, import_items

    archive = _open(data_dir)
    institution_pk = institution_pk_of(archive, institution) if institution else None
    if institution and institution_pk is None:
        err.print(
            f"[red]no institution {institution!r}; add it with 'cloudfilm institutions add'[/red]"
        )
        archive.close()
        raise typer.Exit(2)
    report = ImportReport()
    try:
        items = list(collect(paths))
    except FileNotFoundError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    total = sum(getattr(i, "size", 0) for i in items)
    start = time.perf_counter()
    with Progress(
        TextColumn("importing"),
        BarColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=json_out or not err.is_terminal,
    ) as progress:
        task = progress.add_task("import", total=total)
        import_items(
            archive, iter(items), report, lambda n: progress.advance(task, n), institution_pk
        )
    report.seconds = time.perf_counter() - start
    archive.close()
    _print_import(report, json_out)
    raise typer.Exit(1 if report.failed and not allow_rejected else 0)


def _print_import(report: Any, json_out: bool) -> None:
    rate = report.total / report.seconds if report.seconds else 0.0
    mbps = report.bytes / 2**20 / report.seconds if report.seconds else 0.0
    if json_out:
        body = {
            **report.counts,
            "skipped": [{"file": f, "reason": r} for f, r in report.skipped],
            "problems": [{"file": f, "status": s, "reason": r} for f, s, r in report.problems],
            "seconds": round(report.seconds, 3),
            "instances_per_second": round(rate, 1),
        }
        print(json.dumps(body, ensure_ascii=False, indent=2))
        return
    c = report.counts
    console.print(
        f"[green]{c['stored']} stored[/green], {c['duplicate']} duplicate, "
        f"[yellow]{c['conflict']} conflict[/yellow], [red]{c['rejected']} rejected[/red] "
        f"in {report.seconds:.1f} s ({rate:.1f} instances/s, {mbps:.1f} MB/s)"
    )
    for label, reason in report.skipped:
        console.print(f"  skipped {label}: {reason}", highlight=False)
    for label, status, reason in report.problems:
        console.print(f"  {status} {label}: {reason}", highlight=False)


@app.command()
def studies(
    data_dir: DataDir = None,
    name: Annotated[str | None, typer.Option(help="Patient name; * and ? wildcards.")] = None,
    patient_id: Annotated[str | None, typer.Option("--patient-id", help="Patient ID.")] = None,
    date_from: Annotated[
        str | None, typer.Option("--from", help="Study date from YYYYMMDD.")
    ] = None,
    date_to: Annotated[str | None, typer.Option("--to", help="Study date to YYYYMMDD.")] = None,
    modality: Annotated[str | None, typer.Option(help="Modality, e.g. CT.")] = None,
    limit: Annotated[int, typer.Option(help="Most studies to list.")] = 200,
    json_out: JsonOut = False,
) -> None:
    """List stored studies."""
    from cloudfilm.index.queries import StudyQuery, find_studies

    for label, value in (("--from", date_from), ("--to", date_to)):
        if value and not (len(value) == 8 and value.isdigit()):
            err.print(f"[red]{label} takes a date as YYYYMMDD, not {value!r}[/red]")
            raise typer.Exit(2)
    archive = _open(data_dir)
    query = StudyQuery(name, patient_id, date_from, date_to, modality, limit=limit)
    with archive.sessions() as session:
        found = find_studies(session, query)
    archive.close()
    if json_out:
        print(json.dumps([s.as_json() for s in found], ensure_ascii=False, indent=2))
        return
    table = Table(
        "Patient", "ID", "Birth", "Date", "Mod.", "Description", "Ser.", "Inst.", "Study UID"
    )
    for s in found:
        table.add_row(
            s.patient_name or "", s.patient_id, _date(s.birth_date), _date(s.study_date),
            "/".join(s.modalities), s.description or "", str(s.series), str(s.instances),
            s.study_uid,
        )  # fmt: skip
    console.print(table)
    console.print(f"{len(found)} studies")


@app.command()
def show(study_uid: str, data_dir: DataDir = None, json_out: JsonOut = False) -> None:
    """Show one study and its series."""
    from cloudfilm.index.queries import study_detail

    archive = _open(data_dir)
    with archive.sessions() as session:
        detail = study_detail(session, study_uid)
    archive.close()
    if detail is None:
        err.print(f"[red]study {study_uid} is not in the archive[/red]")
        raise typer.Exit(1)
    if json_out:
        print(json.dumps(detail.as_json(), ensure_ascii=False, indent=2))
        return
    console.print(f"[bold]{detail.patient_name or '(no name)'}[/bold]  ID {detail.patient_id}  "
                  f"born {_date(detail.birth_date)}  sex {detail.sex or ''}")  # fmt: skip
    console.print(f"Study {detail.study_uid}  {_date(detail.study_date)}  "
                  f"{'/'.join(detail.modalities)}  {detail.description or ''}")  # fmt: skip
    table = Table("#", "Modality", "Description", "Instances", "MB", "Series UID")
    for s in detail.series_list:
        table.add_row(
            str(s["series_number"] or ""), s["modality"] or "", s["description"] or "",
            str(s["instances"]), f"{s['size_bytes'] / 2**20:.1f}", s["series_uid"],
        )  # fmt: skip
    console.print(table)


@app.command()
def delete(
    study_uid: Annotated[str | None, typer.Argument(help="Study Instance UID.")] = None,
    series: Annotated[str | None, typer.Option("--series", help="A Series Instance UID.")] = None,
    instance: Annotated[str | None, typer.Option("--instance", help="A SOP Instance UID.")] = None,
    patient: Annotated[str | None, typer.Option("--patient", help="A Patient ID.")] = None,
    data_dir: DataDir = None,
    json_out: JsonOut = False,
) -> None:
    """Delete a study, a series, an instance or all of a patient's studies."""
    chosen = [v for v in (study_uid, series, instance, patient) if v]
    if len(chosen) != 1:
        err.print("[red]name exactly one of STUDY_UID, --series, --instance, --patient[/red]")
        raise typer.Exit(2)
    archive = _open(data_dir)
    try:
        if study_uid:
            result = archive.delete_study(study_uid)
        elif series:
            result = archive.delete_series(series)
        elif instance:
            result = archive.delete_instance(instance)
        else:
            result = archive.delete_patient(patient or "")
    except CloudFilmError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from exc
    finally:
        archive.close()
    if json_out:
        print(json.dumps({"instances": result.instances, "bytes": result.bytes}))
    else:
        console.print(f"deleted {result.instances} instances ({result.bytes / 2**20:.1f} MB)")


@app.command()
def check(
    data_dir: DataDir = None,
    repair: Annotated[bool, typer.Option("--repair", help="Fix what can be fixed.")] = False,
    json_out: JsonOut = False,
) -> None:
    """Verify that every index row has its blob (with the right checksum) and vice versa."""
    from cloudfilm.maintenance import check_archive

    archive = _open(data_dir)
    report = check_archive(archive, repair=repair)
    archive.close()
    if json_out:
        print(json.dumps(report.as_json(), ensure_ascii=False, indent=2))
    else:
        for line in report.lines():
            console.print(line, highlight=False)
    raise typer.Exit(0 if report.consistent_after else 1)


@app.command()
def backup(
    dest: Annotated[Path, typer.Argument(help="New folder to hold the backup.")],
    data_dir: DataDir = None,
) -> None:
    """Make a consistent copy of the embedded archive (index and blobs) while it serves."""
    from cloudfilm.maintenance import backup_archive

    archive = _open(data_dir)
    try:
        summary = backup_archive(archive, dest)
    except CloudFilmError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from exc
    finally:
        archive.close()
    console.print(
        f"backed up {summary['instances']} instances ({summary['bytes'] / 2**20:.1f} MB) to {dest}"
    )


@app.command()
def restore(
    source: Annotated[Path, typer.Argument(help="A folder made by `cloudfilm backup`.")],
    data_dir: DataDir = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a non-empty data folder.")
    ] = False,
) -> None:
    """Bring back an embedded archive from a backup (the server must be stopped)."""
    from cloudfilm.maintenance import restore_archive

    settings = _settings(data_dir)
    try:
        summary = restore_archive(settings, source, force=force)
    except CloudFilmError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from exc
    console.print(f"restored {summary['instances']} instances into {settings.data_dir}")


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Bring the index schema to the current version (Alembic migrations)."""
    from cloudfilm.core.db import create_index_engine
    from cloudfilm.index import migrate

    settings = _settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_index_engine(settings.resolved_database_url)
    before = migrate.current_revision(engine)
    migrate.upgrade(engine)
    console.print(f"index schema: {before or 'empty'} -> {migrate.current_revision(engine)}")
    engine.dispose()


@app.command()
def serve(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="Listen address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8080).")] = None,
    dicom_port: Annotated[
        int | None, typer.Option("--dicom-port", help="Also run the DIMSE server on this port.")
    ] = None,
) -> None:
    """Run the HTTP server (and the DIMSE server with --dicom-port)."""
    settings = _settings(
        data_dir, http_host=host, http_port=port, dimse_host=host, dimse_port=dicom_port
    )
    _run_server(settings, dicom=dicom_port is not None)


def _run_server(
    settings: Settings, banner: list[str] | None = None, *, dicom: bool = False
) -> None:
    import uvicorn

    from cloudfilm.api.app import create_app
    from cloudfilm.sharing.auto import auto_share_beside

    logs.configure(settings.log_level)
    application = create_app(settings)
    for line in banner or []:
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"cloudfilm listening on http://{settings.http_host}:{settings.http_port}")
    with dimse_beside(settings, enabled=dicom), auto_share_beside(settings):
        uvicorn.run(
            application, host=settings.http_host, port=settings.http_port, log_level="info",
            log_config=logs.uvicorn_config(),
            proxy_headers=False,  # the trusted_proxies setting decides (cloudfilm.api.proxies)
        )  # fmt: skip


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the files into.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same UIDs.")] = 0,
    modality: Annotated[str, typer.Option(help="CT, MR, CR or US.")] = "CT",
    slices: Annotated[int, typer.Option(help="Slices (CT/MR) or frames (US).")] = 50,
    patients: Annotated[int, typer.Option(help="Number of patients.")] = 1,
    studies_per_patient: Annotated[int, typer.Option("--studies", help="Studies per patient.")] = 1,
    transfer_syntax: Annotated[
        str, typer.Option("--transfer-syntax", help="explicit, implicit, rle, jpegls, jpeg2000.")
    ] = "explicit",
    charset: Annotated[str, typer.Option(help="utf8, gb18030 or ir58 (ISO 2022 IR 58).")] = "utf8",
) -> None:
    """Write synthetic studies (anatomical phantoms) as DICOM files."""
    from cloudfilm.dicom import synth as generator

    if modality.upper() not in generator.MODALITIES:
        err.print(f"[red]--modality must be one of {', '.join(generator.MODALITIES)}[/red]")
        raise typer.Exit(2)
    if transfer_syntax not in generator.TRANSFER_SYNTAXES:
        err.print(
            f"[red]--transfer-syntax must be one of {', '.join(generator.TRANSFER_SYNTAXES)}[/red]"
        )
        raise typer.Exit(2)
    if charset not in generator.CHARSETS:
        err.print(f"[red]--charset must be one of {', '.join(generator.CHARSETS)}[/red]")
        raise typer.Exit(2)
    paths = generator.write_studies(
        out, seed=seed, modality=modality.upper(), slices=slices, patients=patients,
        studies_per_patient=studies_per_patient, transfer_syntax=transfer_syntax, charset=charset,
    )  # fmt: skip
    console.print(f"wrote {len(paths)} files to {out}")


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Demo data folder.")] = Path(
        "cloudfilm-demo"
    ),
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8080,
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Prepare the data, do not serve.")
    ] = False,
) -> None:
    """Make a demo archive with synthetic studies, start the server and print what to open."""
    from cloudfilm.demo import demo_settings, prepare_demo

    settings = demo_settings(_settings(data_dir, http_host=host, http_port=port))
    banner = prepare_demo(settings, console)
    if no_serve:
        for line in banner:
            console.print(line, highlight=False, soft_wrap=True)
        return
    _run_server(settings, banner)


def _date(value: str | None) -> str:
    if value and len(value) == 8:
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or ""


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
