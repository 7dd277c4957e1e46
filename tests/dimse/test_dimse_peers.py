"""Known peers and principals, without the network: addresses, permissions, admission."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudfilm.archive import Archive
from cloudfilm.core.errors import InvalidQuery
from cloudfilm.dimse.peers import (
    Peer,
    PeerDirectory,
    Permission,
    check_address_pattern,
    parse_permissions,
)
from cloudfilm.dimse.principal import admit
from cloudfilm.dimse.status import error_comment

S, Q, R = Permission.STORE, Permission.QUERY, Permission.RETRIEVE


@pytest.mark.parametrize(
    ("allowed", "address", "ok"),
    [
        ((), "10.1.2.3", True),  # empty: the peer's own host
        ((), "10.1.2.4", False),
        (("10.1.0.0/16",), "10.1.200.7", True),
        (("10.1.0.0/16",), "10.2.0.1", False),
        (("10.1.0.0/16",), "::ffff:10.1.2.3", True),  # IPv4-mapped IPv6
        (("localhost",), "127.0.0.1", True),
        (("192.168.7.7", "fd00::/8"), "fd00::1", True),
        (("fd00::/8",), "not an address", False),
    ],
)
def test_peer_may_call_from(allowed: tuple[str, ...], address: str, ok: bool) -> None:
    peer = Peer("CT1", "10.1.2.3", 104, frozenset(), allowed_from=allowed)
    assert peer.may_call_from(address) is ok


def test_parse_permissions() -> None:
    assert parse_permissions("store, QUERY,retrieve") == {S, Q, R}
    assert parse_permissions("none") == frozenset()
    assert parse_permissions(["query"]) == {Q}
    with pytest.raises(InvalidQuery, match="'write'"):
        parse_permissions("store,write")


@pytest.mark.parametrize("bad", ["", "a b", "10.0.0.0/40", "x" * 300, "host;rm", "1.2.3.4/x"])
def test_check_address_pattern_refuses(bad: str) -> None:
    with pytest.raises(InvalidQuery):
        check_address_pattern(bad)


@given(st.text(max_size=200))
def test_error_comment_is_always_a_valid_lo(text: str) -> None:
    comment = error_comment(text)
    assert len(comment) <= 64
    assert all(" " <= c <= "~" and c != "\\" for c in comment)


@pytest.mark.db
def test_admission(archive: Archive) -> None:
    directory = PeerDirectory(archive)
    directory.add(Peer("PACS", "127.0.0.1", 104, frozenset({Q, R})))
    directory.add(Peer("NOTHING", "127.0.0.1", 104, frozenset()))

    known = admit(directory, "PACS  ", "127.0.0.1", accept_unknown_storage=False).principal
    assert known is not None and known.calling_ae == "PACS"
    assert (known.can(S), known.can(Q), known.can(R)) == (False, True, True)
    assert known.can_view_study("1.2.3")

    nothing = admit(directory, "NOTHING", "127.0.0.1", accept_unknown_storage=False).principal
    assert nothing is not None
    assert not any(nothing.can(p) for p in Permission)
    assert not nothing.can_view_study("1.2.3")

    forged = admit(directory, "PACS", "10.0.0.9", accept_unknown_storage=True)
    assert forged.principal is None and "10.0.0.9" in forged.reason

    unknown = admit(directory, "CT9", "10.0.0.9", accept_unknown_storage=False)
    assert unknown.principal is None and "not a known peer" in unknown.reason

    stranger = admit(directory, "CT9", "10.0.0.9", accept_unknown_storage=True).principal
    assert stranger is not None and stranger.peer is None
    assert (stranger.can(S), stranger.can(Q), stranger.can(R)) == (True, False, False)
    assert not stranger.can_view_study("1.2.3")
