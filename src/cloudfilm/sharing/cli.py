"""``cloudfilm share …`` and ``cloudfilm shares list|show|revoke|renew``: cloud film links.

Registered in ``cloudfilm.cli``. Heavy imports (the archive, cryptography) happen inside the
commands, so that ``cloudfilm --help`` stays fast. Exit codes as ``cloudfilm.cli``: 1 when the
share or a study is missing or the request is refused, 2 on a usage error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cloudfilm.cli_options import DataDir, JsonOut

if TYPE_CHECKING:
    from cloudfilm.sharing.links import ShareLinks

shares_app = typer.Typer(help="Cloud film links: list, show, revoke, renew.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

CHECKS = ("birth-date", "id-suffix")


def _links(data_dir: Path | None) -> ShareLinks:
    from cloudfilm import cli
    from cloudfilm.sharing.links import ShareLinks

    return ShareLinks(cli._open(data_dir))


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]{message}[/red]", highlight=False)
    return typer.Exit(code)


def share_command(
    study_uids: Annotated[
        list[str] | None, typer.Argument(help="Study Instance UIDs (one patient).")
    ] = None,
    accession: Annotated[
        str | None,
        typer.Option("--accession", help="Accession number (its study may arrive later)."),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option("--expires", help="30d, 12h, 2w, 1y or a date 2027-01-01 (default 365d)."),
    ] = None,
    code: Annotated[bool, typer.Option("--code", help="Protect with a 6-digit code.")] = False,
    check: Annotated[
        str | None, typer.Option("--check", help="Or a patient check: birth-date or id-suffix.")
    ] = None,
    check_answer: Annotated[
        str | None,
        typer.Option("--check-answer", help="Expected answer when the archive lacks it."),
    ] = None,
    allow: Annotated[
        str, typer.Option("--allow", help="Extra permissions: download, reshare (comma-separated).")
    ] = "",
    label: Annotated[str, typer.Option(help="Free text shown with the link.")] = "",
    data_dir: DataDir = None,
    json_out: JsonOut = False,
) -> None:
    """Issue a cloud film link and print it (with its access code)."""
    from cloudfilm.core.errors import CloudFilmError
    from cloudfilm.sharing.links import ShareRequest, parse_expiry, utcnow

    if code and check:
        raise _fail("choose --code or --check, not both", 2)
    if check is not None and check not in CHECKS:
        raise _fail(f"--check is one of {', '.join(CHECKS)}", 2)
    permissions = [p.strip() for p in allow.split(",") if p.strip()]
    links = _links(data_dir)
    now = utcnow()
    try:
        issued = links.issue(
            ShareRequest(
                study_uids=study_uids or [],
                accession_number=accession,
                expires_at=parse_expiry(expires, now) if expires else None,
                secret="code" if code else check or "none",
                check_answer=check_answer,
                permissions=["view", *permissions],
                label=label,
                created_by="cli",
            ),
            now,
        )
    except CloudFilmError as exc:
        raise _fail(exc.message, 2 if exc.status == 400 else 1) from exc
    finally:
        links.archive.close()
    if json_out:
        print(json.dumps(issued.as_json(now), ensure_ascii=False, indent=2))
        return
    console.print(issued.link, highlight=False, soft_wrap=True)
    if issued.code:
        console.print(f"access code: {issued.code}", highlight=False)
    info = issued.info
    until = f"{info.expires_at:%Y-%m-%d %H:%M} UTC"
    console.print(f"valid until {until}; id {info.id}", highlight=False)
    if info.pending:
        console.print(f"accession {accession} has no images yet; the link shows them on arrival")


@shares_app.command("list")
def shares_list(
    study: Annotated[str | None, typer.Option("--study", help="Only links to this study.")] = None,
    state: Annotated[
        str | None, typer.Option("--state", help="active, expired, revoked or not-yet.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Most links to list.")] = 200,
    data_dir: DataDir = None,
    json_out: JsonOut = False,
) -> None:
    """List cloud film links, newest first."""
    from cloudfilm.sharing.links import ShareFilter, ShareState, utcnow

    try:
        wanted = ShareState(state) if state else None
    except ValueError as exc:
        raise _fail(f"--state is one of {', '.join(s.value for s in ShareState)}", 2) from exc
    links = _links(data_dir)
    now = utcnow()
    try:
        found = links.list(ShareFilter(study_uid=study, state=wanted, limit=limit), now)
    finally:
        links.archive.close()
    if json_out:
        print(json.dumps([i.as_json(now) for i in found], ensure_ascii=False, indent=2))
        return
    table = Table("ID", "State", "Until", "Protection", "Permissions", "Studies", "Label", "Parent")
    for info in found:
        table.add_row(
            info.id, info.state(now).value, f"{info.expires_at:%Y-%m-%d %H:%M}",
            info.secret_kind, ",".join(sorted(info.permissions)),
            str(len(info.study_uids)) + (" +pending" if info.pending else ""),
            info.label, info.parent_id or "",
        )  # fmt: skip
    console.print(table)
    console.print(f"{len(found)} links")


@shares_app.command("show")
def shares_show(
    share_id: Annotated[str, typer.Argument(help="The link's id.")],
    reveal: Annotated[
        bool, typer.Option("--reveal", help="Also print the link and code (to reprint a card).")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Show one link as JSON."""
    from cloudfilm.core.errors import CloudFilmError
    from cloudfilm.sharing.links import utcnow

    links = _links(data_dir)
    try:
        body: dict[str, Any] = links.get(share_id).as_json(utcnow())
        if reveal:
            body["link"], body["code"] = links.reveal(share_id)
    except CloudFilmError as exc:
        raise _fail(exc.message) from exc
    finally:
        links.archive.close()
    print(json.dumps(body, ensure_ascii=False, indent=2))


@shares_app.command("revoke")
def shares_revoke(
    share_id: Annotated[str, typer.Argument(help="The link's id.")],
    data_dir: DataDir = None,
) -> None:
    """Revoke a link (and every link its holder made from it) at once."""
    from cloudfilm.core.errors import CloudFilmError

    links = _links(data_dir)
    try:
        info = links.revoke(share_id)
    except CloudFilmError as exc:
        raise _fail(exc.message) from exc
    finally:
        links.archive.close()
    console.print(f"revoked {info.id}", highlight=False)


@shares_app.command("renew")
def shares_renew(
    share_id: Annotated[str, typer.Argument(help="The link's id.")],
    expires: Annotated[
        str | None, typer.Option("--expires", help="30d, 1y or a date (default 365d).")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Give a link a new expiry."""
    from cloudfilm.core.errors import CloudFilmError
    from cloudfilm.sharing.links import parse_expiry, utcnow

    links = _links(data_dir)
    now = utcnow()
    try:
        info = links.renew(share_id, parse_expiry(expires, now) if expires else None, now)
    except CloudFilmError as exc:
        raise _fail(exc.message) from exc
    finally:
        links.archive.close()
    console.print(f"{info.id} valid until {info.expires_at:%Y-%m-%d %H:%M} UTC", highlight=False)
