"""Error answers and cross-origin headers for every DICOMweb route.

Every DICOMweb route uses ``DicomwebRoute``: whatever the route raises becomes a JSON problem
body (RFC 9457, ``application/problem+json``) with the HTTP status of the error, a precise
``detail`` and our machine-readable ``error`` code. An unexpected exception is logged with its
traceback and answered as a 500 problem that says nothing about the code (never a stack
trace). The same wrapper adds the CORS headers browser viewers need to every answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from cloudfilm.core.errors import CloudFilmError
from cloudfilm.core.logs import request_label

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
#: Response headers a browser script may read (CORS ``Access-Control-Expose-Headers``).
EXPOSED_HEADERS = "ETag, Warning, Content-Type, Content-Length, Content-Location, Location"
ALLOWED_HEADERS = (
    "Authorization, Content-Type, Accept, Accept-Encoding, If-None-Match, If-Modified-Since, "
    "Cache-Control, Range, X-Requested-With"
)
ALLOWED_METHODS = "GET, HEAD, POST, OPTIONS"


#: The challenge of a 401 (RFC 9110 11.6.1): an API key as a Bearer token (RFC 6750).
CHALLENGE = 'Bearer realm="cloudfilm"'


def problem(status: int, detail: str, code: str | None = None, **extra: Any) -> JSONResponse:
    """A JSON problem body (RFC 9457) for ``status``."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "error": code or title.lower().replace(" ", "-"),
        **extra,
    }
    headers = {"WWW-Authenticate": CHALLENGE} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_for(exc: CloudFilmError) -> JSONResponse:
    return problem(exc.status, exc.message, exc.code)


def _validation_detail(exc: RequestValidationError) -> str:
    messages = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "path"))
        messages.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(messages) or "invalid request"


def add_cors(request: Request, response: Response, origins: Sequence[str]) -> None:
    """Allow the calling origin (or any, with ``*``) to read the answer."""
    origin = request.headers.get("origin")
    if "*" in origins:
        response.headers["Access-Control-Allow-Origin"] = "*"
    elif origin and origin in origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        vary = response.headers.get("Vary")
        response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"
    else:
        return
    response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS


def preflight(request: Request, origins: Sequence[str]) -> Response:
    """The answer to a CORS preflight (``OPTIONS`` with ``Access-Control-Request-Method``)."""
    response = Response(status_code=204)
    add_cors(request, response, origins)
    if "Access-Control-Allow-Origin" in response.headers:
        response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = "86400"
    response.headers["Allow"] = ALLOWED_METHODS
    return response


def make_route_class(origins: Sequence[str]) -> type[APIRoute]:
    """An ``APIRoute`` subclass that turns errors into problems and adds CORS headers."""
    allowed = tuple(origins)

    class DicomwebRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                try:
                    response = await handler(request)
                except CloudFilmError as exc:
                    response = problem_for(exc)
                except ClientDisconnect:
                    logger.info("client left during %s", request_label(request))
                    response = problem(400, "the client closed the connection", "disconnected")
                except RequestValidationError as exc:
                    response = problem(400, _validation_detail(exc), "malformed-request")
                except HTTPException as exc:
                    response = problem(exc.status_code, str(exc.detail))
                except Exception:
                    logger.exception("DICOMweb %s failed", request_label(request))
                    response = problem(
                        500,
                        "the server failed to answer this request; the failure is logged",
                        "internal-error",
                    )
                add_cors(request, response, allowed)
                return response

            return guarded

    return DicomwebRoute
