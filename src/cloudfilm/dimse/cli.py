"""``cloudfilm peers …`` and ``cloudfilm dimse``: known DICOM peers and the DIMSE server.

Registered in ``cloudfilm.cli``. Heavy imports (pynetdicom, the archive) happen inside the
commands, so that ``cloudfilm --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from cloudfilm.cli_options import DataDir

if TYPE_CHECKING:
    from cloudfilm.archive import Archive
    from cloudfilm.core.config import Settings

logger = logging.getLogger(__name__)

peers_app = typer.Typer(
    help="Known DICOM peers: who may store, query and retrieve over DIMSE.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)


def _open(data_dir: Path | None) -> Archive:
    from cloudfilm import cli

    return cli._open(data_dir)


@peers_app.command("add")
def peers_add(
    ae_title: Annotated[str, typer.Argument(help="The peer's AE title (1-16 characters).")],
    host: Annotated[str, typer.Argument(help="Host name or address where it listens.")],
    port: Annotated[int, typer.Argument(help="Port where it listens.")],
    allow: Annotated[
        str,
        typer.Option(
            "--allow",
            help="What it may do: store, query, retrieve, print (comma-separated) or none.",
        ),
    ] = "store",
    from_: Annotated[
        list[str] | None,
        typer.Option(
            "--from",
            help="Address or CIDR block it may call from (repeatable; default: HOST).",
        ),
    ] = None,
    description: Annotated[str, typer.Option(help="Free text, e.g. 'CT scanner, room 3'.")] = "",
    institution: Annotated[
        str, typer.Option(help="Institution whose studies arrive from it.")
    ] = "",
    department: Annotated[
        str, typer.Option(help="Department it belongs to (e.g. radiology), for the film figures.")
    ] = "",
    tls: Annotated[
        bool,
        typer.Option(
            "--tls", help="Only over DICOM TLS: we call it with TLS, it must call our TLS port."
        ),
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Add a known peer (kept in the index)."""
    from cloudfilm.core.errors import CloudFilmError
    from cloudfilm.dimse.peers import Peer, PeerDirectory, parse_permissions

    archive = _open(data_dir)
    try:
        peer = PeerDirectory(archive).add(
            Peer(
                ae_title=ae_title,
                host=host,
                port=port,
                permissions=parse_permissions(allow),
                allowed_from=tuple(from_ or ()),
                description=description,
                institution=institution,
                department=department,
                tls=tls,
            )
        )
    except CloudFilmError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from exc
    finally:
        archive.close()
    allowed = ", ".join(sorted(p.value for p in peer.permissions)) or "nothing (destination only)"
    over = " over DICOM TLS" if peer.tls else ""
    console.print(f"added {peer.ae_title} at {peer.host}:{peer.port}{over}; may {allowed}")


@peers_app.command("list")
def peers_list(
    data_dir: DataDir = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")] = False,
) -> None:
    """List the known peers (index and configuration file)."""
    from cloudfilm.dimse.peers import PeerDirectory

    archive = _open(data_dir)
    try:
        peers = PeerDirectory(archive).all()
    finally:
        archive.close()
    if json_out:
        print(json.dumps([p.as_json() for p in peers], ensure_ascii=False, indent=2))
        return
    table = Table("AE title", "Host", "Port", "TLS", "Allow", "Calls from", "Institution",
                  "Department", "Description", "Defined in")  # fmt: skip
    for p in peers:
        table.add_row(
            p.ae_title, p.host, str(p.port), "yes" if p.tls else "",
            ",".join(sorted(x.value for x in p.permissions)),
            ", ".join(p.allowed_from) or p.host, p.institution, p.department, p.description,
            p.origin,
        )  # fmt: skip
    console.print(table)
    console.print(f"{len(peers)} peers")


@peers_app.command("remove")
def peers_remove(
    ae_title: Annotated[str, typer.Argument(help="AE title of the peer to forget.")],
    data_dir: DataDir = None,
) -> None:
    """Forget a peer kept in the index."""
    from cloudfilm.core.errors import CloudFilmError
    from cloudfilm.dimse.peers import PeerDirectory

    archive = _open(data_dir)
    try:
        PeerDirectory(archive).remove(ae_title)
    except CloudFilmError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from exc
    finally:
        archive.close()
    console.print(f"removed {ae_title.strip()}")


def dimse_command(
    data_dir: DataDir = None,
    host: Annotated[
        str | None, typer.Option(help="Listen address (default 127.0.0.1; 0.0.0.0 for all).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="DIMSE port (default 11112).")] = None,
    ae_title: Annotated[
        str | None, typer.Option("--ae-title", help="Our AE title (default CLOUDFILM).")
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes",
            min=1,
            max=64,
            help="Processes sharing the port(s), for parallel stores (default 1).",
        ),
    ] = None,
) -> None:
    """Run the DICOM (DIMSE) server alone: C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET."""
    from cloudfilm import cli
    from cloudfilm.dimse.processes import ProcessGroup

    settings = cli._settings(
        data_dir, dimse_host=host, dimse_port=port, dimse_ae_title=ae_title,
        dimse_processes=processes,
    )  # fmt: skip
    archive = _open(settings.data_dir)
    group = ProcessGroup(
        archive,
        settings.dimse_processes,
        host=settings.dimse_host,
        port=settings.dimse_port,
        ae_title=settings.dimse_ae_title,
    )
    server = group.server
    try:
        group.start()
    except RuntimeError as exc:  # a child process that did not start (its error is above)
        err.print(f"[red]{exc}[/red]")
        archive.close()
        raise typer.Exit(2) from exc
    except OSError as exc:  # ssl.SSLError too: a certificate or key that cannot be used
        err.print(f"[red]cannot listen on {server.host}:{server.port}: {exc}[/red]")
        group.stop()
        archive.close()
        raise typer.Exit(2) from exc
    console.print(
        f"cloudfilm DIMSE server {server.ae_title} listening on {server.host}:{server.port}"
        + (f" in {group.count} processes" if group.count > 1 else "")
    )
    if server.tls_port is not None:
        console.print(f"DICOM TLS on {server.host}:{server.tls_port}")
    try:
        group.serve_forever()
    finally:
        archive.close()


@contextlib.contextmanager
def dimse_beside(settings: Settings, enabled: bool) -> Iterator[None]:
    """While the body runs (``cloudfilm serve``): the DIMSE server in background threads when
    ``enabled``; else, when routing rules are configured, its workers alone (the forwarding
    queue, for what STOW-RS receives, and commitment report retries)."""
    if not enabled and not settings.dimse_routes:
        yield
        return
    from cloudfilm.archive import Archive
    from cloudfilm.dimse.server import DimseServer
    from cloudfilm.dimse.workers import DimseWorkers

    archive = Archive.open(settings)
    server = DimseServer(archive) if enabled else None
    workers = server.workers if server is not None else DimseWorkers(archive)
    if server is not None:
        server.start()  # with its workers
        console.print(
            f"cloudfilm DIMSE server {server.ae_title} listening on {server.host}:{server.port}"
        )
    else:
        workers.start()
    try:
        yield
    finally:
        if server is not None:
            server.stop()
        else:
            workers.stop()
        archive.close()
