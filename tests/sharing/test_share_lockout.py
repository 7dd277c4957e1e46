"""Lockout after wrong codes holds across server processes (two ``cloudfilm serve``).

Both processes share one index (SQLite file, or PostgreSQL): the counters live there, so
attempts spread over the two servers add up. Client addresses are set with X-Forwarded-For,
which the servers trust from loopback (``trusted_proxies``: as from a reverse proxy on the
same host).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from share_support import People, ServeProcess, ThreadServer, token_of

from cloudfilm.sharing import crypto
from cloudfilm.sharing.links import ShareLinks, ShareRequest

pytestmark = [pytest.mark.db, pytest.mark.slow]


@pytest.fixture
def two_servers(cli_env: dict[str, str], people: People, tmp_path: Path) -> Iterator[list[str]]:
    """Two ``cloudfilm serve`` processes on the test archive; their origins."""
    env = {**cli_env, "CLOUDFILM_TRUSTED_PROXIES": '["127.0.0.1"]'}
    servers = [ServeProcess(env, tmp_path / f"serve-{i}.log") for i in range(2)]
    try:
        for server in servers:
            server.wait_healthy()
        yield [server.origin for server in servers]
    finally:
        for server in servers:
            server.stop()


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
              for _ in range(21)]  # fmt: skip
    statuses = [
        attempt(two_servers[i % 2], token_of(s.link), wrong(s.code), "10.9.9.9").status_code
        for i, s in enumerate(shares[:20])
    ]  # one client, one wrong code on each of twenty shares (the client limit)
    assert statuses == [401] * 19 + [429]
    last = shares[20]
    assert attempt(two_servers[0], token_of(last.link), last.code or "",
                   "10.9.9.9").status_code == 429  # fmt: skip
    mapped = "::ffff:10.9.9.9"  # the same client, written as an IPv4-mapped IPv6 address
    assert attempt(two_servers[1], token_of(last.link), last.code or "",
                   mapped).status_code == 429  # fmt: skip
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


def test_racing_attempts_get_no_more_checks_than_the_limit(
    serve: Callable[..., ThreadServer],
    people: People,
    links: ShareLinks,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each attempt is counted before its answer is checked: twelve racing wrong answers on
    one share get exactly five argon2 checks, not one per request that passed a stale look."""
    from concurrent.futures import ThreadPoolExecutor

    checks: list[str] = []
    real_verify = crypto.verify_answer

    def counting_verify(stored: str, answer: str) -> bool:
        checks.append(answer)
        time.sleep(0.05)  # widen the window a check-then-count design would leave open
        return real_verify(stored, answer)

    monkeypatch.setattr(crypto, "verify_answer", counting_verify)
    origin = serve().origin
    issued = links.issue(ShareRequest(study_uids=[people.a1.study], secret="code"))
    token = token_of(issued.link)
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(
            lambda i: attempt(origin, token, wrong(issued.code), f"10.2.{i}.1"), range(12)
        ))  # fmt: skip
    codes = sorted(a.status_code for a in answers)
    assert codes == [401] * 4 + [429] * 8, codes
    assert len(checks) == 5
    locked = attempt(origin, token, issued.code or "", "10.2.99.1")
    assert locked.status_code == 429 and len(checks) == 5  # the right code is not even checked
