"""ETag and Cache-Control for DICOMweb answers (RFC 9110 8.8.3, 13.1.2; RFC 9111 5.2).

Patient data is never stored by shared caches (``private``). An instance is immutable under
its SOP Instance UID (a replacement changes its SHA-256, hence its ETag), so instance-level
answers may be reused for a day; study and series answers change as instances arrive and are
revalidated each time (``no-cache``), which costs a 304 when nothing changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from fastapi import Request, Response

INSTANCE_CACHE = "private, max-age=86400"
REVALIDATE = "private, no-cache"
NO_STORE = "no-store"


def etag_of(parts: Iterable[str]) -> str:
    """A strong ETag over the given strings (SHA-256 of them, 32 hex digits)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return f'"{digest.hexdigest()[:32]}"'


def not_modified(request: Request, etag: str) -> bool:
    """True when ``If-None-Match`` names ``etag`` (or ``*``)."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    candidates = {c.strip().removeprefix("W/") for c in header.split(",")}
    return "*" in candidates or etag in candidates


def answer_304(etag: str, cache_control: str) -> Response:
    return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache_control})


def set_cache_headers(response: Response, etag: str | None, cache_control: str) -> None:
    if etag:
        response.headers["ETag"] = etag
    response.headers["Cache-Control"] = cache_control
