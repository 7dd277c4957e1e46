"""Lockout after wrong codes holds across server processes (two ``cloudfilm serve``).

Both processes share one index (SQLite file, or PostgreSQL): the counters live there, so
attempts spread over the two servers add up. Client addresses are set with X-Forwarded-For,
which uvicorn trusts from loopback (as from a reverse proxy on the same host).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests
from share_support import People, free_port, token_of

from cloudfilm.sharing.links import ShareLinks, ShareRequest

pytestmark = [pytest.mark.db, pytest.mark.slow]


@pytest.fixture
def two_servers(cli_env: dict[str, str], people: People) -> Iterator[list[str]]:
    """Two ``cloudfilm serve`` processes on the test archive; their origins."""
    processes, origins = [], []
    try:
        for _ in range(2):
            port = free_port()
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "cloudfilm.cli", "serve", "--port", str(port)],
                    env={**cli_env, "CLOUDFILM_LOG_LEVEL": "WARNING"},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
            origins.append(f"http://127.0.0.1:{port}")
        for origin, process in zip(origins, processes, strict=True):
            _wait_healthy(origin, process)
        yield origins
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(20)


def _wait_healthy(origin: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            pytest.fail(f"cloudfilm serve exited: {stderr[-2000:]}")
        try:
            if requests.get(f"{origin}/health", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    pytest.fail(f"cloudfilm serve at {origin} did not become healthy")


def attempt(origin: str, token: str, answer: str, client: str) -> requests.Response:
    return requests.post(
        f"{origin}/s/{token}/unlock",
        data={"answer": answer},
        headers={"X-Forwarded-For": client, "Accept-Language": "en"},
        allow_redirects=False,
        timeout=30,
    )


def wrong(code: str | None) -> str:
    return "000000" if code != "000000" else "111111"


def test_share_lockout_holds_across_two_processes(
    two_servers: list[str], people: People, links: ShareLinks
) -> None:
    issued = links.issue(ShareRequest(study_uids=[people.a1.study], secret="code"))
    token = token_of(issued.link)
    statuses = [
        attempt(two_servers[i % 2], token, wrong(issued.code), f"10.0.0.{i + 1}").status_code
        for i in range(5)
    ]  # five clients, alternating servers: only the share's own counter reaches the limit
    assert statuses == [401, 401, 401, 401, 429]
    for origin in two_servers:
        locked = attempt(origin, token, issued.code or "", "10.0.0.99")
        assert locked.status_code == 429
        assert "try again in 15 minutes" in locked.text
        assert 14 * 60 < int(locked.headers["Retry-After"]) <= 15 * 60
    other = links.issue(ShareRequest(study_uids=[people.a1.study], secret="code"))
    assert attempt(two_servers[1], token_of(other.link), other.code or "",
                   "10.0.0.99").status_code == 303  # fmt: skip


def test_client_lockout_holds_across_two_processes(
    two_servers: list[str], people: People, links: ShareLinks
) -> None:
    shares = [links.issue(ShareRequest(study_uids=[people.a1.study], secret="code"))
              for _ in range(6)]  # fmt: skip
    statuses = [
        attempt(two_servers[i % 2], token_of(s.link), wrong(s.code), "10.9.9.9").status_code
        for i, s in enumerate(shares[:5])
    ]  # one client, one wrong code on each of five shares
    assert statuses == [401, 401, 401, 401, 429]
    last = shares[5]
    assert attempt(two_servers[0], token_of(last.link), last.code or "",
                   "10.9.9.9").status_code == 429  # fmt: skip
    assert attempt(two_servers[1], token_of(last.link), last.code or "",
                   "10.9.9.10").status_code == 303  # fmt: skip


def test_many_concurrent_wrong_codes_are_all_counted(
    two_servers: list[str], people: People, links: ShareLinks
) -> None:
    """Attempts racing on two processes: none is lost, so the lock comes at the limit."""
    from concurrent.futures import ThreadPoolExecutor

    issued = links.issue(ShareRequest(study_uids=[people.a1.study], secret="code"))
    token = token_of(issued.link)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda i: attempt(two_servers[i % 2], token, wrong(issued.code), f"10.1.{i}.1"),
            range(12),
        ))  # fmt: skip
    codes = sorted(a.status_code for a in answers)
    assert codes.count(401) == 4, codes  # exactly four wrong codes were checked before the lock
    assert codes.count(429) == 8, codes
