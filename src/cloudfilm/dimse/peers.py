"""Known DICOM peers: who may call us, from which addresses, and what they may ask.

A peer is a remote application entity identified by its AE title (PS3.8 7.1.1.3 calling AE
title). AE titles are trivially forged, so a call is also checked against the addresses the
peer may call from: host names, IP addresses or CIDR blocks (empty: the peer's own host).
Peers come from two places: the index (``cloudfilm peers add``) and the ``dimse_peers``
setting; a peer in the configuration wins over an index row with the same AE title and cannot
be changed from the command line.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from cloudfilm.archive import Archive
from cloudfilm.core.config import DimsePeerConfig, check_ae_title
from cloudfilm.core.errors import Conflict, InvalidQuery, NotFound
from cloudfilm.index.models import DimsePeer

logger = logging.getLogger(__name__)


class Permission(StrEnum):
    """What a peer may ask of us."""

    STORE = "store"  # C-STORE (PS3.4 Annex B)
    QUERY = "query"  # C-FIND (PS3.4 C.4.1)
    RETRIEVE = "retrieve"  # C-MOVE and C-GET (PS3.4 C.4.2, C.4.3)
    PRINT = "print"  # Basic Grayscale/Color Print Management (PS3.4 Annex H)


def parse_permissions(text: str | Iterable[str]) -> frozenset[Permission]:
    """``"store,query"`` (or a list of names) as permissions; ``"none"`` or ``""`` is none.

    Raises
    ------
    InvalidQuery
        For a name that is not ``store``, ``query``, ``retrieve``, ``print`` or ``none``.
    """
    names = text.split(",") if isinstance(text, str) else list(text)
    found: set[Permission] = set()
    for name in (n.strip().lower() for n in names):
        if name in ("", "none"):
            continue
        try:
            found.add(Permission(name))
        except ValueError:
            raise InvalidQuery(
                f"unknown permission {name!r}: use store, query, retrieve, print or none"
            ) from None
    return frozenset(found)


def check_address_pattern(pattern: str) -> str:
    """A host name, an IP address or a CIDR block (``10.1.0.0/16``), stripped.

    Raises
    ------
    InvalidQuery
        For an empty value, a malformed CIDR block or a name with characters hosts never have.
    """
    text = pattern.strip()
    if "/" in text:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise InvalidQuery(f"{pattern!r} is not a CIDR block: {exc}") from None
        return text
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:%")
    if not text or len(text) > 255 or not set(text) <= allowed:
        raise InvalidQuery(f"{pattern!r} is neither a host name, an address nor a CIDR block")
    return text


@dataclass(frozen=True)
class Peer:
    """A known remote AE: where to reach it, where it may call from, what it may do."""

    ae_title: str
    host: str
    port: int
    permissions: frozenset[Permission] = frozenset()
    allowed_from: tuple[str, ...] = ()
    description: str = ""
    institution: str = ""
    #: Department of the institution it belongs to (e.g. ``radiology``), for the film figures.
    department: str = ""
    #: Reached and admitted over DICOM TLS only (``cloudfilm.dimse.tls``).
    tls: bool = False
    #: Where the peer is defined: the index (``cloudfilm peers``) or the configuration file.
    origin: Literal["index", "config"] = "index"

    def may(self, permission: Permission) -> bool:
        return permission in self.permissions

    def may_call_from(self, address: str) -> bool:
        """Whether a connection from ``address`` (an IP address) can be this peer."""
        try:
            caller = _plain_address(address)
        except ValueError:
            return False
        return any(_matches(caller, pattern) for pattern in self.allowed_from or (self.host,))

    def as_json(self) -> dict[str, object]:
        return {
            "ae_title": self.ae_title,
            "host": self.host,
            "port": self.port,
            "allow": sorted(p.value for p in self.permissions),
            "allowed_from": list(self.allowed_from),
            "description": self.description,
            "institution": self.institution,
            "department": self.department,
            "tls": self.tls,
            "origin": self.origin,
        }


def _plain_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _matches(caller: ipaddress.IPv4Address | ipaddress.IPv6Address, pattern: str) -> bool:
    try:
        return caller in ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        pass
    try:  # a host name: any of its addresses
        infos = socket.getaddrinfo(pattern, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        logger.warning("cannot resolve %r, listed as a peer address", pattern)
        return False
    for info in infos:
        try:
            if _plain_address(str(info[4][0])) == caller:
                return True
        except ValueError:
            continue
    return False


def _from_config(item: DimsePeerConfig) -> Peer:
    return Peer(
        ae_title=item.ae_title,
        host=item.host,
        port=item.port,
        permissions=parse_permissions(item.allow),
        allowed_from=tuple(check_address_pattern(p) for p in item.allowed_from),
        description=item.description,
        institution=item.institution,
        department=item.department,
        tls=item.tls,
        origin="config",
    )


def _from_row(row: DimsePeer) -> Peer:
    permissions = {
        Permission.STORE: row.can_store,
        Permission.QUERY: row.can_query,
        Permission.RETRIEVE: row.can_retrieve,
        Permission.PRINT: row.can_print,
    }
    return Peer(
        ae_title=row.ae_title,
        host=row.host,
        port=row.port,
        permissions=frozenset(p for p, allowed in permissions.items() if allowed),
        allowed_from=tuple(row.allowed_from or ()),
        description=row.description,
        institution=row.institution,
        department=row.department,
        tls=row.tls,
        origin="index",
    )


class PeerDirectory:
    """The known peers of one archive: its ``dimse_peer`` rows and its configured peers."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self._configured = {p.ae_title: p for p in map(_from_config, archive.settings.dimse_peers)}

    def get(self, ae_title: str) -> Peer | None:
        """The peer with this AE title (surrounding spaces ignored), or None."""
        title = ae_title.strip()
        if title in self._configured:
            return self._configured[title]
        with self.archive.sessions() as session:
            row = session.execute(
                select(DimsePeer).where(DimsePeer.ae_title == title)
            ).scalar_one_or_none()
            return _from_row(row) if row is not None else None

    def all(self) -> list[Peer]:
        """Every known peer, sorted by AE title."""
        with self.archive.sessions() as session:
            stored = [_from_row(row) for row in session.execute(select(DimsePeer)).scalars()]
        found = {p.ae_title: p for p in stored} | self._configured
        return [found[title] for title in sorted(found)]

    def add(self, peer: Peer) -> Peer:
        """Keep a new peer in the index.

        Raises
        ------
        Conflict
            When a peer with this AE title exists (in the index or the configuration).
        InvalidQuery
            For a malformed AE title, port or address pattern.
        """
        title = _checked_title(peer.ae_title)
        if not 1 <= peer.port <= 65535:
            raise InvalidQuery(f"port {peer.port} is not between 1 and 65535")
        if not peer.host.strip():
            raise InvalidQuery("a peer needs a host")
        if title in self._configured:
            raise Conflict(f"{title} is defined in the configuration file; change it there")
        row = DimsePeer(
            ae_title=title,
            host=check_address_pattern(peer.host),
            port=peer.port,
            allowed_from=[check_address_pattern(p) for p in peer.allowed_from],
            description=peer.description,
            institution=peer.institution,
            department=peer.department.strip(),
            can_store=Permission.STORE in peer.permissions,
            can_query=Permission.QUERY in peer.permissions,
            can_retrieve=Permission.RETRIEVE in peer.permissions,
            can_print=Permission.PRINT in peer.permissions,
            tls=peer.tls,
        )
        try:
            with self.archive.sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            raise Conflict(f"a peer with AE title {title} already exists") from None
        return _from_row(row)

    def remove(self, ae_title: str) -> None:
        """Forget a peer kept in the index.

        Raises
        ------
        NotFound
            When no such peer is in the index.
        Conflict
            When the peer is defined in the configuration file.
        """
        title = ae_title.strip()
        if title in self._configured:
            raise Conflict(f"{title} is defined in the configuration file; remove it there")
        with self.archive.sessions.begin() as session:
            gone = session.execute(delete(DimsePeer).where(DimsePeer.ae_title == title))
        if not gone.rowcount:  # type: ignore[attr-defined]
            raise NotFound(f"no peer with AE title {title}")


def _checked_title(title: str) -> str:
    try:
        return check_ae_title(title)
    except ValueError as exc:
        raise InvalidQuery(str(exc)) from None
