"""The client's address behind reverse proxies (setting ``trusted_proxies``).

Behind a TLS-terminating proxy (nginx, HAProxy, a cloud load balancer) the TCP peer of every
request is the proxy; the client is in ``X-Forwarded-For`` and the scheme it used in
``X-Forwarded-Proto``. Anyone can send those headers, so they are believed only when the
direct peer is a trusted proxy (an address or CIDR block of ``trusted_proxies``; empty by
default, so by default the headers are ignored and the peer is the client):

- the client is the **right-most** address of ``X-Forwarded-For`` (all its header lines, in
  order) that is not a trusted proxy: each proxy appends the address it saw, so walking from
  the right past our own proxies reaches the first address nobody we trust vouches beyond.
  Whatever a client wrote to the left of that is ignored. A hop that is not an IP address
  (``unknown``, a name, garbage) ends the walk at the last trusted address;
- the scheme is the right-most value of ``X-Forwarded-Proto`` (set by the nearest proxy),
  when it is ``http`` or ``https``.

:class:`ProxyHeadersMiddleware` applies this once, outermost, to the ASGI scope
(``client``, ``scheme``), so every reader sees the same answer: :func:`client_address`
(audit trail, sign-in and share lockouts, share access records, OAuth) and
``request.url.scheme`` (the ``Secure`` flag of the session and CSRF cookies). The server's
own proxy-header handling (uvicorn's ``--proxy-headers``) is turned off by ``cloudfilm
serve`` so that this setting alone decides.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str) -> IPAddress | None:
    """An address of a forwarded header: ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``,
    ``[2001:db8::1]:443``; None for anything else."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    if not text or len(text) > 45:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The proxies of one deployment and what they tell about a request."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks: list[IPNetwork] = [ipaddress.ip_network(e, strict=False) for e in entries]

    def trusts(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in net for net in self.networks)

    def client(self, peer: str, forwarded_for: Iterable[str]) -> str:
        """The client's address: ``peer`` unless it is a trusted proxy, else the right-most
        untrusted address of the ``X-Forwarded-For`` values (see the module docstring)."""
        current = parse_address(peer)
        if not self.trusts(current):
            return peer
        hops = [hop for value in forwarded_for for hop in value.split(",")]
        for hop in reversed(hops):
            address = parse_address(hop)
            if address is None:
                break
            current = address
            if not self.trusts(address):
                break
        return str(current)

    def scheme(self, peer: str, scheme: str, forwarded_proto: Iterable[str]) -> str:
        """The scheme the client used: the nearest proxy's ``X-Forwarded-Proto`` when the
        peer is trusted and says ``http`` or ``https``; else the connection's."""
        if not self.trusts(parse_address(peer)):
            return scheme
        values = [v.strip().lower() for value in forwarded_proto for v in value.split(",")]
        if values and values[-1] in ("http", "https"):
            return values[-1]
        return scheme


def _headers(scope: Scope, name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope.get("headers") or () if k == name]


class ProxyHeadersMiddleware:
    """Rewrites the scope's ``client`` and ``scheme`` from trusted proxies' headers (the
    outermost middleware; the original peer stays in ``scope["cloudfilm.peer"]``)."""

    def __init__(self, app: ASGIApp, trusted: list[str]) -> None:
        self.app = app
        self.proxies = TrustedProxies(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.proxies.networks:
            client = scope.get("client")
            peer = str(client[0]) if client else ""
            if peer and self.proxies.trusts(parse_address(peer)):
                found = self.proxies.client(peer, _headers(scope, b"x-forwarded-for"))
                scheme = self.proxies.scheme(
                    peer, scope.get("scheme", "http"), _headers(scope, b"x-forwarded-proto")
                )
                if scope["type"] == "websocket":
                    scheme = "wss" if scheme == "https" else "ws"
                scope = {**scope, "client": (found, 0), "scheme": scheme, "cloudfilm.peer": peer}
        await self.app(scope, receive, send)


def scope_client_address(scope: Scope | dict[str, Any]) -> str:
    """The client's address of an ASGI scope (after :class:`ProxyHeadersMiddleware`)."""
    client = scope.get("client")
    return str(client[0]) if client else ""


def client_address(request: Request) -> str:
    """The client's address of a request: the one place that reads it (audit, lockouts,
    share access records, OAuth)."""
    return scope_client_address(request.scope)
