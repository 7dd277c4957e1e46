"""CSRF protection of the staff forms: double-submit tokens, keyed with the server secret.

The browser holds a random nonce (256 bits) in the cookie ``cloudfilm_staff_csrf``: HttpOnly,
``SameSite=Strict``, scoped to ``/staff``. Every form of the staff pages carries a hidden
``csrf_token``: the HMAC-SHA256, under a key derived from ``secret_key``, of the form's purpose
(``issue``, ``revoke``) and that nonce. A POST is accepted only when the cookie is present and
the form's token is the HMAC of that cookie's nonce for that purpose (compared in constant
time). A forging site can neither read the cookie nor compute the HMAC without the server key,
and ``SameSite=Strict`` keeps the cookie off cross-site requests in the first place; a token
taken from one kind of form does not work in another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from starlette.requests import Request
from starlette.responses import Response

from cloudfilm.core.errors import Forbidden
from cloudfilm.sharing.crypto import derive_key

CSRF_COOKIE = "cloudfilm_staff_csrf"
CSRF_FIELD = "csrf_token"
#: Path of the cookie (under the application's root path).
STAFF_PATH = "/staff"
_NONCE = re.compile(r"^[A-Za-z0-9_-]{43}$")


class CsrfRefused(Forbidden):
    """A staff form without a valid CSRF token (403)."""


def new_nonce() -> str:
    """A new random nonce for the cookie: 256 bits, 43 URL-safe characters."""
    return secrets.token_urlsafe(32)


class CsrfKeys:
    """Makes and checks the form tokens of one server secret."""

    def __init__(self, secret_key: str) -> None:
        self._key = derive_key(secret_key, b"cloudfilm staff csrf v1")

    def token(self, nonce: str, purpose: str) -> str:
        """The token of forms for ``purpose`` in the browser holding ``nonce``."""
        message = f"{purpose}\n{nonce}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")

    def valid(self, nonce: str, purpose: str, given: str) -> bool:
        """Whether ``given`` is the token of ``purpose`` for ``nonce``."""
        if not _NONCE.match(nonce) or not given.isascii() or len(given) > 100:
            return False
        return hmac.compare_digest(self.token(nonce, purpose), given)


def cookie_nonce(request: Request) -> str | None:
    """The nonce of the request's cookie, when it has a well-formed one."""
    value = request.cookies.get(CSRF_COOKIE, "")
    return value if _NONCE.match(value) else None


def set_nonce_cookie(request: Request, response: Response, nonce: str) -> None:
    """Give the browser its nonce (a session cookie: it lasts until the browser closes)."""
    response.set_cookie(
        CSRF_COOKIE,
        nonce,
        path=f"{request.scope.get('root_path', '')}{STAFF_PATH}",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def check_form(keys: CsrfKeys, request: Request, form: dict[str, str], purpose: str) -> None:
    """Raise :class:`CsrfRefused` unless the form's token matches the cookie for ``purpose``."""
    nonce = cookie_nonce(request)
    if nonce is None or not keys.valid(nonce, purpose, form.get(CSRF_FIELD, "")):
        raise CsrfRefused(
            "this form has expired or did not come from this site; reload the page and try again"
        )
