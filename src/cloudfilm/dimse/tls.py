"""DICOM TLS (PS3.15 Annex B): the contexts of our TLS listener and of our calls to TLS peers.

Both directions are mutual TLS: the listener asks every caller for a certificate that chains to
``dimse_tls_ca_certificates`` and presents ``dimse_tls_certificate``; a call to a peer marked
``tls`` checks the peer's certificate against the same CA file and its name against the peer's
host, and presents ours. Only TLS 1.2 and newer are offered (the BCP 195 profile of PS3.15
B.9); the cipher suites are OpenSSL's defaults for that floor.

A peer marked ``tls`` is admitted only over the TLS listener (``admitted_over_tls``), so that a
forged AE title on the plain port cannot stand in for a hospital that signs its connections.
"""

from __future__ import annotations

import logging
import ssl
from functools import lru_cache
from pathlib import Path
from typing import Any

from cloudfilm.core.config import Settings

logger = logging.getLogger(__name__)


class TlsNotConfigured(Exception):
    """A peer needs DICOM TLS but the certificate, key or CA file is not set."""


class _LazyHandshakeContext(ssl.SSLContext):
    """A server context whose sockets shake hands on their first read, not in ``accept``.

    pynetdicom wraps each accepted socket in its accept loop; with the default eager handshake
    one caller that connects and says nothing would stall every other TLS caller. Deferred, the
    handshake runs on the association's own thread, under its network timeout.
    """

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def _files(settings: Settings) -> tuple[Path, Path, Path]:
    cert = settings.dimse_tls_certificate
    key = settings.dimse_tls_private_key
    cas = settings.dimse_tls_ca_certificates
    if cert is None or key is None or cas is None:
        raise TlsNotConfigured(
            "DICOM TLS needs dimse_tls_certificate, dimse_tls_private_key and "
            "dimse_tls_ca_certificates"
        )
    return cert, key, cas


def server_context(settings: Settings) -> ssl.SSLContext:
    """The context of the TLS listener: our certificate, and a required client certificate.

    Raises
    ------
    TlsNotConfigured
        When a file is not set; ``OSError`` or ``ssl.SSLError`` when one cannot be read.
    """
    cert, key, cas = _files(settings)
    context = _LazyHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cafile=str(cas))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@lru_cache(maxsize=4)
def _client_context(cert: Path, key: Path, cas: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server and its name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cafile=str(cas))
    return context


def client_tls_args(settings: Settings, host: str) -> tuple[ssl.SSLContext, str]:
    """``tls_args`` for ``AE.associate`` to a TLS peer listening at ``host``.

    Raises
    ------
    TlsNotConfigured
        When a file is not set; ``OSError`` or ``ssl.SSLError`` when one cannot be read.
    """
    return _client_context(*_files(settings)), host


def admitted_over_tls(assoc: Any) -> bool:
    """Whether the association's connection is a TLS one whose handshake has completed."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    return isinstance(sock, ssl.SSLSocket) and sock.version() is not None


def peer_certificate_subject(assoc: Any) -> str:
    """The caller's certificate subject (``CN=…, O=…``), or '' on a plain connection."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return ""
    try:
        cert = sock.getpeercert() or {}
    except (ValueError, OSError):
        return ""
    subject: Any = cert.get("subject", ())
    parts = [f"{key}={value}" for rdn in subject for key, value in rdn]
    return ", ".join(parts)
