"""``cloudfilm patients link|show|outbox`` in-process, on the test archive."""

from __future__ import annotations

import json
import os

import pytest
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from cloudfilm.archive import Archive
from cloudfilm.cli import app
from cloudfilm.patients.notify import OutboxNotifier
from support.instances import make_dataset, part10

pytestmark = pytest.mark.db
runner = CliRunner()


def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("CLOUDFILM_")}
    result = runner.invoke(app, list(args), env={**unset, **env})
    return result.exit_code, result.output


def test_link_show_and_outbox(archive: Archive, cli_env: dict[str, str]) -> None:
    item = Dataset()
    item.PatientID, item.IssuerOfPatientID = "440103198001010011", "CN-NID"
    assert archive.store(part10(make_dataset(PatientID="P-1", IssuerOfPatientID="hosp-a",
                                             OtherPatientIDsSequence=[item]))).ok  # fmt: skip
    assert archive.store(part10(make_dataset(PatientID="P-2", IssuerOfPatientID="hosp-b"))).ok
    code, out = cli(cli_env, "patients", "link", "P-2", "--issuer", "hosp-b",
                    "--strong-key", "440103-19800101-0011", "--phone", "+86 139 0000 2222",
                    "--json")  # fmt: skip
    assert code == 0, out
    shown = json.loads(out)
    assert {link["patient_id"] for link in shown["links"]} == {"P-1", "P-2"}  # the same key
    assert shown["phone_hint"] == "2222" and shown["has_strong_key"]
    code, out = cli(cli_env, "patients", "show", shown["id"])
    assert code == 0 and "P-1" in out and "P-2" in out
    code, out = cli(cli_env, "patients", "link", "NOBODY", "--json")
    assert code == 1 and "no patient" in out
    code, out = cli(cli_env, "patients", "link", "P-2", "--issuer", "hosp-b", "--phone", "x")
    assert code == 1
    OutboxNotifier(archive).send("+8613900002222", "验证码 123456")
    code, out = cli(cli_env, "patients", "outbox", "--json")
    assert code == 0 and json.loads(out)[0]["text"] == "验证码 123456"
