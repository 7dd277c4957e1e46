"""``cloudfilm share`` and ``cloudfilm shares``: the printed link works in a live server."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import requests
from share_support import People, token_of, unlock

pytestmark = pytest.mark.db


def cloudfilm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudfilm.cli", *args],
        env={**env, "PYTHONIOENCODING": "utf-8", "CLOUDFILM_LOG_LEVEL": "WARNING",
             "COLUMNS": "300"},
        capture_output=True, text=True, encoding="utf-8", timeout=180,
    )  # fmt: skip


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_cli_share_prints_a_link_that_works(
    origin: str, cli_env: dict[str, str], people: People
) -> None:
    env = {**cli_env, "CLOUDFILM_PUBLIC_BASE_URL": origin}
    text = cloudfilm(env, "share", people.a1.study, "--code", "--expires", "30d")
    assert text.returncode == 0, text.stderr
    link, code_line = text.stdout.splitlines()[:2]
    assert link.startswith(f"{origin}/s/") and len(token_of(link)) == 22
    code = code_line.removeprefix("access code: ")
    assert len(code) == 6 and code.isdigit()
    browser = requests.Session()
    assert 'name="answer"' in browser.get(link, timeout=30).text
    assert unlock(browser, origin, token_of(link), code).status_code == 303
    page = browser.get(link, headers={"Accept-Language": "en"}, timeout=30)
    assert page.status_code == 200 and "CT chest A1" in page.text
    made = ok_json(cloudfilm(env, "share", people.a2.study, "--allow", "download,reshare",
                             "--check", "birth-date", "--label", "张医生", "--json"))  # fmt: skip
    assert made["protection"] == "birth-date" and made["code"] is None
    assert made["permissions"] == ["download", "reshare", "view"] and made["label"] == "张医生"
    listed = ok_json(cloudfilm(env, "shares", "list", "--json"))
    assert {s["id"] for s in listed} >= {made["id"]} and len(listed) == 2
    shown = ok_json(cloudfilm(env, "shares", "show", made["id"], "--reveal"))
    assert shown["link"] == made["link"]
    revoked = cloudfilm(env, "shares", "revoke", made["id"])
    assert revoked.returncode == 0 and made["id"] in revoked.stdout
    assert requests.get(made["link"], timeout=30).status_code == 410
    table = cloudfilm(env, "shares", "list", "--state", "revoked")
    assert table.returncode == 0 and made["id"] in table.stdout
    renewed = cloudfilm(env, "shares", "renew", listed[-1]["id"], "--expires", "2w")
    assert renewed.returncode == 0, renewed.stderr


def test_cli_share_by_accession_and_refusals(cli_env: dict[str, str], people: People) -> None:
    pending = ok_json(cloudfilm(cli_env, "share", "--accession", "ACC-FRONT-DESK", "--json"))
    assert pending["pending"] is True and pending["study_uids"] == []
    text = cloudfilm(cli_env, "share", "--accession", "ACC-FRONT-DESK")
    assert "no images yet" in text.stdout
    refusals = {
        ("share", "1.2.3.404"): 1,
        ("share", people.a1.study, "--check", "shoe-size"): 2,
        ("share", people.a1.study, "--code", "--check", "birth-date"): 2,
        ("share", people.a1.study, "--expires", "someday"): 2,
        ("share", people.a1.study, "--allow", "delete"): 2,
        ("share", people.a1.study, people.b1.study): 2,
        ("share",): 2,
        ("shares", "revoke", "0123456789abcdef"): 1,
        ("shares", "list", "--state", "lost"): 2,
    }
    for args, code in refusals.items():
        result = cloudfilm(cli_env, *args)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, args
