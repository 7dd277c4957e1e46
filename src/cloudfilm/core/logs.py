"""Logging set-up that keeps secrets out of the logs.

A cloud film link's token is a bearer secret: whoever reads it from a log line can open the
patient's images. Paths of the share doors (``/s/{token}/…``) therefore never reach a log
whole: :class:`RedactSecrets` rewrites every record that passes the handlers we set up (our
own loggers and uvicorn's access and error logs), and request paths are logged by their route
template (:func:`request_label`) where one is known.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

from starlette.requests import Request

FORMAT = "%(levelname)s %(name)s: %(message)s"

#: A share token in a path, and secret-looking query parameters.
_SHARE_PATH = re.compile(r"/s/[^/?#\s\"']+")
_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:token|access_token|api_key|apikey|key|code|password|answer)=)[^&#\s\"']*"
)
REDACTED = "/s/{token}"


def redact(text: str) -> str:
    """``text`` with share tokens and secret query values replaced."""
    if "/s/" not in text and "=" not in text:
        return text
    text = _SHARE_PATH.sub(REDACTED, text)
    return _SECRET_QUERY.sub(r"\1***", text)


def _redact_value(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class RedactSecrets(logging.Filter):
    """Rewrites a record's message and string arguments with :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_value(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _redact_value(arg) for key, arg in record.args.items()}
        return True


def configure(level: str | int) -> None:
    """Root logging for the CLI: one stderr handler with the secret filter."""
    logging.basicConfig(level=level, format=FORMAT)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())


def uvicorn_config(access_log: bool = True) -> dict[str, Any]:
    """uvicorn's logging configuration with the secret filter on its handlers."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact"] = {"()": RedactSecrets}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact")
    if not access_log:
        config["loggers"]["uvicorn.access"]["handlers"] = []
    return config


def request_label(request: Request) -> str:
    """How a request is named in a log line: its route template (no values) or, when no
    route matched, its path with secrets redacted."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return f"{request.method} {path}"
    return f"{request.method} {redact(request.url.path)}"
