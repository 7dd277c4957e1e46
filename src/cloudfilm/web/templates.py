"""Rendering pages: Jinja2 with autoescaping, the chosen language, and security headers.

Every page goes through :func:`render_page`, so every page gets the same headers: a strict
Content-Security-Policy (scripts and styles only from this server, no inline script), no
framing, ``nosniff``, and ``Referrer-Policy: no-referrer`` (share pages carry a secret token in
their URL, which must not leak to other sites through the Referer header).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from cloudfilm import __version__
from cloudfilm.web.i18n import LANG_COOKIE, LANGUAGES, choose_language, translator

STATIC_PATH = "/static"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; font-src 'self'; object-src 'self'; frame-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@cache
def environment() -> Environment:
    """The template environment: HTML autoescaped, undefined names fail loudly in tests."""
    env = Environment(
        loader=PackageLoader("cloudfilm.web", "templates"),
        autoescape=select_autoescape(["html", "xml", "svg"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["version"] = __version__
    env.globals["static"] = static_url
    return env


def static_url(name: str) -> str:
    """The URL of a static file, with the version so that an upgrade is never served stale."""
    return f"{STATIC_PATH}/{name}?v={__version__}"


def render_page(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """Render ``template`` in the request's language, with the security headers.

    The template sees ``t`` (the translator), ``lang``, ``other_lang`` (for the switch link),
    ``request`` and everything in ``context``.
    """
    lang = choose_language(request)
    values: dict[str, Any] = {
        "request": request,
        "lang": lang,
        "other_lang": next(other for other in LANGUAGES if other != lang),
        "t": translator(lang),
    }
    values.update(context or {})
    body = environment().get_template(template).render(values)
    response = HTMLResponse(body, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    if headers:
        response.headers.update(headers)
    if request.query_params.get("lang") in LANGUAGES:
        response.set_cookie(
            LANG_COOKIE, lang, max_age=365 * 24 * 3600, httponly=True, samesite="lax"
        )
    return response
