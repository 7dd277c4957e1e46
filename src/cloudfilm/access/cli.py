"""``cloudfilm institutions|users|apikeys …``: the platform's institutions, people and machines.

Registered in ``cloudfilm.cli``. Passwords are asked at a hidden prompt (twice), or read from
standard input with ``--password-stdin`` for scripts; they are never taken as an argument
(process lists and shell histories keep those). An API key is printed once, at creation.
Exit codes: 1 when something named is missing or refused, 2 on a usage error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from cloudfilm.access.roles import ROLES
from cloudfilm.cli_options import DataDir, JsonOut

if TYPE_CHECKING:
    from cloudfilm.access.accounts import Accounts

institutions_app = typer.Typer(help="Institutions (hospitals): add, list.", no_args_is_help=True)
users_app = typer.Typer(
    help="Staff users: create, list, passwd, disable, enable.", no_args_is_help=True
)
apikeys_app = typer.Typer(help="API keys of machine clients: create, list, revoke.",
                          no_args_is_help=True)  # fmt: skip
console = Console()
err = Console(stderr=True)

Role = Annotated[str, typer.Option("--role", help=f"One of: {', '.join(ROLES)}.")]
InstitutionOpt = Annotated[
    str | None,
    typer.Option("--institution", help="Institution code (none only for platform-admin)."),
]
PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input.")
]


def _accounts(data_dir: Path | None) -> Accounts:
    from cloudfilm import cli
    from cloudfilm.access.accounts import Accounts

    return Accounts(cli._open(data_dir))


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]{message}[/red]", highlight=False)
    return typer.Exit(code)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    value: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


@institutions_app.command("add")
def institutions_add(
    code: Annotated[str, typer.Argument(help="Short code, e.g. hosp-a.")],
    name: Annotated[str, typer.Option("--name", help="Full name, e.g. 北京协和医院.")] = "",
    data_dir: DataDir = None,
) -> None:
    """Add an institution."""
    from cloudfilm.core.errors import CloudFilmError

    accounts = _accounts(data_dir)
    try:
        added = accounts.add_institution(code, name)
    except CloudFilmError as exc:
        raise _fail(exc.message) from exc
    finally:
        accounts.archive.close()
    console.print(f"institution {added.code} added", highlight=False)


@institutions_app.command("list")
def institutions_list(data_dir: DataDir = None, json_out: JsonOut = False) -> None:
    """List institutions."""
    accounts = _accounts(data_dir)
    try:
        found = accounts.institutions()
    finally:
        accounts.archive.close()
    if json_out:
        print(json.dumps([{"code": i.code, "name": i.name} for i in found], ensure_ascii=False))
        return
    table = Table("code", "name")
    for inst in found:
        table.add_row(inst.code, inst.name)
    console.print(table)


@users_app.command("create")
def users_create(
    username: Annotated[str, typer.Argument(help="Sign-in name.")],
    role: Role,
    institution: InstitutionOpt = None,
    display_name: Annotated[str, typer.Option("--name", help="Name shown on pages.")] = "",
    password_stdin: PasswordStdin = False,
    data_dir: DataDir = None,
) -> None:
    """Create a user (the first admin too); the password is asked, never an argument."""
    from cloudfilm.core.errors import CloudFilmError

    password = _password(password_stdin)
    accounts = _accounts(data_dir)
    try:
        user = accounts.create_user(username, password, role, institution, display_name)
    except CloudFilmError as exc:
        raise _fail(exc.message) from exc
    finally:
        accounts.archive.close()
    where = user.institution.code if user.institution else "the platform"
    console.print(f"user {user.username} ({user.role}, {where}) created", highlight=False)


@users_app.command("list")
def users_list(
    institution: InstitutionOpt = None, data_dir: DataDir = None, json_out: JsonOut = False
) -> None:
    """List users (of one institution with --institution)."""
    from cloudfilm.core.errors import CloudFilmError

    accounts = _accounts(data_dir)
    try:
        found = accounts.users(institution)
    except CloudFilmError as exc:
        raise _fail(exc.message) from exc
    finally:
        accounts.archive.close()
    rows = [
        {
            "username": u.username,
            "name": u.display_name,
            "role": u.role,
            "institution": u.institution.code if u.institution else "",
            "disabled": u.disabled,
        }
        for u in found
    ]
    if json_out:
        print(json.dumps(rows, ensure_ascii=False))
        return
    table = Table("username", "name", "role", "institution", "disabled")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


@users_app.command("passwd")
def users_passwd(
    username: Annotated[str, typer.Argument(help="Sign-in name.")],
    password_stdin: PasswordStdin = False,
    data_dir: DataDir = None,
) -> None:
    """Set a user's password (ends the user's sessions)."""
    _change(data_dir, lambda a: a.set_password(username, _password(password_stdin)),
            f"password of {username} changed")  # fmt: skip


@users_app.command("disable")
def users_disable(username: str, data_dir: DataDir = None) -> None:
    """Disable a user (ends the user's sessions)."""
    _change(data_dir, lambda a: a.set_disabled(username, True), f"user {username} disabled")


@users_app.command("enable")
def users_enable(username: str, data_dir: DataDir = None) -> None:
    """Enable a disabled user."""
    _change(data_dir, lambda a: a.set_disabled(username, False), f"user {username} enabled")


def _change(data_dir: Path | None, change: Callable[[Accounts], object], done: str) -> None:
    from cloudfilm.core.errors import CloudFilmError

    accounts = _accounts(data_dir)
    try:
        change(accounts)
    except CloudFilmError as exc:
        raise _fail(exc.message) from exc
    finally:
        accounts.archive.close()
    console.print(done, highlight=False)


@apikeys_app.command("create")
def apikeys_create(
    role: Role = "technologist",
    institution: InstitutionOpt = None,
    label: Annotated[str, typer.Option("--label", help="What uses it, e.g. 'RIS'.")] = "",
    data_dir: DataDir = None,
    json_out: JsonOut = False,
) -> None:
    """Create an API key and print it (this once): send it as 'Authorization: Bearer <key>'."""
    from cloudfilm.core.errors import CloudFilmError

    accounts = _accounts(data_dir)
    try:
        info, key = accounts.create_api_key(institution, role, label, created_by="cli")
    except CloudFilmError as exc:
        raise _fail(exc.message) from exc
    finally:
        accounts.archive.close()
    if json_out:
        print(json.dumps({"key": key, "key_id": info.key_id, "role": info.role,
                          "institution": institution or ""}))  # fmt: skip
        return
    console.print(key, highlight=False, soft_wrap=True)
    err.print(f"API key {info.key_id} ({info.role}); shown this once: keep it secret")


@apikeys_app.command("list")
def apikeys_list(data_dir: DataDir = None, json_out: JsonOut = False) -> None:
    """List API keys (their public ids; the secrets are not kept)."""
    accounts = _accounts(data_dir)
    try:
        found = accounts.api_keys()
    finally:
        accounts.archive.close()
    rows = [
        {
            "key_id": k.key_id,
            "role": k.role,
            "institution": k.institution.code if k.institution else "",
            "label": k.label,
            "created_at": k.created_at.isoformat(timespec="seconds"),
            "revoked": k.revoked_at is not None,
        }
        for k in found
    ]
    if json_out:
        print(json.dumps(rows, ensure_ascii=False))
        return
    table = Table("key id", "role", "institution", "label", "created", "revoked")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


@apikeys_app.command("revoke")
def apikeys_revoke(key_id: str, data_dir: DataDir = None) -> None:
    """Revoke an API key at once."""
    _change(data_dir, lambda a: a.revoke_api_key(key_id), f"API key {key_id} revoked")
