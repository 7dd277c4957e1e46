"""Trusted reverse proxies (``trusted_proxies``): whose ``X-Forwarded-For`` and
``X-Forwarded-Proto`` are believed, and that the client address they give reaches the audit
trail, the sign-in lockout, share access records and the ``Secure`` cookie flag."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloudfilm.access.accounts import Accounts
from cloudfilm.api.app import create_app
from cloudfilm.api.proxies import TrustedProxies, parse_address
from cloudfilm.archive import Archive
from cloudfilm.audit import trail_for
from cloudfilm.audit.export import iter_rows
from cloudfilm.core.config import Settings
from cloudfilm.sharing.accesses import list_accesses
from cloudfilm.sharing.links import ShareLinks, ShareRequest, utcnow
from support.instances import make_dataset, part10

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KEY = "test-production-secret-key-0123456789abcdef"
PROXIES = ["10.0.0.0/8", "2001:db8:ffff::/48"]
CLIENT = "203.0.113.7"
ATTACKER = "198.51.100.9"


# ------------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # an untrusted peer: its headers are ignored, whatever they say
        (ATTACKER, ["10.0.0.1"], ATTACKER),
        (ATTACKER, [f"{CLIENT}, 10.0.0.2"], ATTACKER),
        # a trusted proxy: the address it appended
        ("10.0.0.1", [CLIENT], CLIENT),
        ("10.0.0.1", [], "10.0.0.1"),
        # what the client wrote itself, left of its real address, is ignored
        ("10.0.0.1", [f"1.1.1.1, 10.9.9.9, {CLIENT}"], CLIENT),
        # a chain of our proxies: past every trusted hop, the right-most untrusted address
        ("10.0.0.1", [f"{CLIENT}, 10.0.0.2, 10.0.0.3"], CLIENT),
        ("10.0.0.1", [f"8.8.8.8, {CLIENT}", "10.0.0.2"], CLIENT),  # two header lines
        # only trusted hops: the left-most of them
        ("10.0.0.1", ["10.0.0.9, 10.0.0.2"], "10.0.0.9"),
        # a hop that is no address ends the walk at the last trusted one
        ("10.0.0.1", [f"{CLIENT}, unknown"], "10.0.0.1"),
        ("10.0.0.1", [f"{CLIENT}, 10.0.0.2, <script>"], "10.0.0.1"),
        ("10.0.0.1", ["garbage, 10.0.0.2"], "10.0.0.2"),
        # ports, IPv6, IPv4-mapped IPv6 peers
        ("10.0.0.1", [f"{CLIENT}:51234"], CLIENT),
        ("10.0.0.1", ["[2001:db8::5]:443"], "2001:db8::5"),
        ("2001:db8:ffff::1", ["2001:db8::5"], "2001:db8::5"),
        ("::ffff:10.0.0.1", [CLIENT], CLIENT),
    ],
)
def test_the_client_is_the_right_most_untrusted_address(
    peer: str, forwarded: list[str], expected: str
) -> None:
    assert TrustedProxies(PROXIES).client(peer, forwarded) == expected


def test_without_trusted_proxies_the_headers_are_ignored() -> None:
    assert TrustedProxies([]).client("127.0.0.1", [CLIENT]) == "127.0.0.1"
    assert TrustedProxies([]).scheme("127.0.0.1", "http", ["https"]) == "http"


@pytest.mark.parametrize(
    ("peer", "proto", "expected"),
    [
        ("10.0.0.1", ["https"], "https"),
        ("10.0.0.1", ["http, https"], "https"),  # the nearest proxy's word
        ("10.0.0.1", ["https, http"], "http"),  # a client's own claim, corrected by the proxy
        ("10.0.0.1", ["gopher"], "http"),
        ("10.0.0.1", [], "http"),
        (ATTACKER, ["https"], "http"),
    ],
)
def test_the_scheme(peer: str, proto: list[str], expected: str) -> None:
    assert TrustedProxies(PROXIES).scheme(peer, "http", proto) == expected


def test_addresses_are_parsed_strictly() -> None:
    assert parse_address(" 203.0.113.7 ") is not None
    assert str(parse_address("[::ffff:203.0.113.7]:80")) == CLIENT
    for bad in ("", "unknown", "203.0.113.256", "1.2.3.4:5:6", "x" * 100, "１.２.３.４", "[]"):
        assert parse_address(bad) is None, bad


def test_the_setting_refuses_what_is_not_an_address() -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        Settings(trusted_proxies=["10.0.0.0/8", "proxy.example"])
    assert Settings(trusted_proxies=[" 10.0.0.0/8 "]).trusted_proxies == ["10.0.0.0/8"]


# ------------------------------------------------------------------------ the application


@pytest.fixture
def app_settings(archive: Archive) -> Settings:
    return archive.settings.model_copy(
        update={"env": "production", "secret_key": KEY, "trusted_proxies": PROXIES,
                "share_lockout_client_failures": 3}
    )  # fmt: skip


@pytest.fixture
def connect(archive: Archive, app_settings: Settings) -> Iterator[Any]:
    """A TestClient whose TCP peer is the given address."""
    opened: list[TestClient] = []

    def make(peer: str) -> TestClient:
        client = TestClient(create_app(app_settings, archive), client=(peer, 40000))
        opened.append(client)
        return client.__enter__()

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def _addresses(archive: Archive, action: str) -> list[str]:
    trail_for(archive).flush(timeout=10)
    return [str(r["address"]) for r in iter_rows(archive.engine) if r["action"] == action]


@pytest.mark.db
def test_the_audit_trail_records_the_client_behind_a_trusted_proxy(
    archive: Archive, connect: Any
) -> None:
    through_proxy = connect("10.0.0.1")
    through_proxy.get("/dicomweb/studies", headers={"X-Forwarded-For": f"6.6.6.6, {CLIENT}"})
    spoofer = connect(ATTACKER)
    spoofer.get("/dicomweb/studies", headers={"X-Forwarded-For": "10.0.0.1, 1.2.3.4"})
    assert _addresses(archive, "query") == [CLIENT, ATTACKER]


_NAMES = iter(range(1000))


def _signin_form(client: TestClient, headers: dict[str, str]) -> dict[str, str]:
    """A wrong sign-in, each under a new username (so only the client's counter can lock)."""
    page = client.get("/staff/signin", headers=headers)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found
    username = f"nobody{next(_NAMES)}"
    return {"csrf_token": found.group(1), "username": username, "password": "wrong password!"}


@pytest.mark.db
def test_the_sign_in_lockout_counts_the_real_client(archive: Archive, connect: Any) -> None:
    Accounts(archive).add_institution("hosp-a")
    proxy = connect("10.0.0.1")
    first = {"X-Forwarded-For": CLIENT}
    for _ in range(2):
        answer = proxy.post("/staff/signin", data=_signin_form(proxy, first), headers=first)
        assert answer.status_code == 401
    locked = proxy.post("/staff/signin", data=_signin_form(proxy, first), headers=first)
    assert locked.status_code == 429
    # another client behind the same proxy is not locked out with the first
    other = {"X-Forwarded-For": "203.0.113.99, 10.0.0.2"}
    assert proxy.post("/staff/signin", data=_signin_form(proxy, other),
                      headers=other).status_code == 401  # fmt: skip
    # an untrusted client cannot step out of its lock with a made-up header
    spoofer = connect(ATTACKER)
    for forwarded in ("1.1.1.1", "2.2.2.2"):
        spoofed = {"X-Forwarded-For": forwarded}
        spoofer.post("/staff/signin", data=_signin_form(spoofer, spoofed), headers=spoofed)
    spoofed = {"X-Forwarded-For": "3.3.3.3"}
    answer = spoofer.post("/staff/signin", data=_signin_form(spoofer, spoofed), headers=spoofed)
    assert answer.status_code == 429
    assert set(_addresses(archive, "sign-in")) == {CLIENT, "203.0.113.99", ATTACKER}


@pytest.mark.db
def test_share_access_records_hold_the_real_clients_network(
    archive: Archive, app_settings: Settings, connect: Any
) -> None:
    ds = make_dataset()
    assert archive.store(part10(ds)).ok
    links = ShareLinks(archive, app_settings)
    issued = links.issue(ShareRequest(study_uids=[str(ds.StudyInstanceUID)], secret="code"),
                         utcnow())  # fmt: skip
    proxy = connect("10.0.0.1")
    answer = proxy.post(f"/s/{issued.token}/unlock", data={"answer": issued.code},
                        headers={"X-Forwarded-For": CLIENT}, follow_redirects=False)  # fmt: skip
    assert answer.status_code == 303
    (access,) = list_accesses(archive, issued.info.id, with_reshares=False)
    assert access.client == "203.0.113.0/24"


@pytest.mark.db
def test_the_secure_flag_follows_a_trusted_proxys_scheme(connect: Any) -> None:
    https = {"X-Forwarded-Proto": "https", "X-Forwarded-For": CLIENT}
    cookie = connect("10.0.0.1").get("/staff/signin", headers=https).headers["set-cookie"]
    assert "secure" in cookie.lower()
    spoofed = connect(ATTACKER).get("/staff/signin", headers=https).headers["set-cookie"]
    assert "secure" not in spoofed.lower()
