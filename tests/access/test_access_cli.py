"""``cloudfilm institutions|users|apikeys`` and ``import --institution``, as subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from cloudfilm.access.accounts import Accounts
from cloudfilm.archive import Archive
from cloudfilm.index.models import Institution, StudyAccess
from support.instances import make_dataset, part10

pytestmark = pytest.mark.db


def run(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudfilm.cli", *args], env=env, input=stdin,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_first_admin_keys_and_import(
    cli_env: dict[str, str], archive: Archive, tmp_path: Path
) -> None:
    env = {**cli_env, "PYTHONIOENCODING": "utf-8"}
    added = run(env, "institutions", "add", "hosp-a", "--name", "北京协和医院")
    assert added.returncode == 0, added.stderr
    assert run(env, "institutions", "add", "hosp-a").returncode == 1  # exists already
    listed = json.loads(run(env, "institutions", "list", "--json").stdout)
    assert listed == [{"code": "hosp-a", "name": "北京协和医院"}]
    secret = "first admin password"
    made = run(env, "users", "create", "admin", "--role", "admin", "--institution", "hosp-a",
               "--password-stdin", stdin=secret + "\n")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert secret not in made.stdout + made.stderr
    short = run(env, "users", "create", "x", "--role", "admin", "--institution", "hosp-a",
                "--password-stdin", stdin="short\n")  # fmt: skip
    assert short.returncode == 1 and "at least 10" in short.stderr
    assert Accounts(archive).sign_in("admin", secret, "127.0.0.1").user is not None
    users = json.loads(run(env, "users", "list", "--json").stdout)
    assert [(u["username"], u["role"], u["institution"]) for u in users] == [
        ("admin", "admin", "hosp-a")
    ]
    created = json.loads(run(env, "apikeys", "create", "--institution", "hosp-a",
                             "--label", "RIS", "--json").stdout)  # fmt: skip
    key = created["key"]
    assert Accounts(archive).api_key(key) is not None
    keys = json.loads(run(env, "apikeys", "list", "--json").stdout)
    assert [(k["key_id"], k["revoked"]) for k in keys] == [(created["key_id"], False)]
    assert key not in json.dumps(keys)  # the secret is shown once, never listed
    assert run(env, "apikeys", "revoke", created["key_id"]).returncode == 0
    assert Accounts(archive).api_key(key) is None
    # import into an institution
    ds = make_dataset(PatientID="IMP1")
    (tmp_path / "one.dcm").write_bytes(part10(ds))
    imported = run(env, "import", str(tmp_path / "one.dcm"), "--institution", "hosp-a")
    assert imported.returncode == 0, imported.stderr
    with archive.sessions() as session:
        owners = session.execute(
            select(Institution.code, StudyAccess.relation).join(
                StudyAccess, StudyAccess.institution_pk == Institution.pk
            )
        ).all()
    assert [tuple(o) for o in owners] == [("hosp-a", "owner")]
    unknown = run(env, "import", str(tmp_path / "one.dcm"), "--institution", "nowhere")
    assert unknown.returncode == 2 and "institutions add" in unknown.stderr
