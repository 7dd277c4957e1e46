"""``multipart/related`` bodies (RFC 2387 over RFC 2046 5.1): a streaming parser and writer.

The parser is a push parser: ``feed`` takes whatever bytes arrived and returns events
(``PartStart`` with the part's headers, ``PartData`` chunks, ``PartEnd``); it keeps at most one
boundary's length of data between calls plus one part's header block (bounded by
``max_header_bytes``), so memory does not grow with the body. Anything that does not follow
the grammar raises ``MalformedRequest`` (HTTP 400) — never another exception.

The grammar, as read here: an optional preamble; then ``--boundary``, optional spaces or tabs,
CRLF; header lines up to an empty line; the body up to CRLF ``--boundary``; repeated; the
last delimiter is ``--boundary--`` and anything after it (the epilogue) is ignored. A body
that starts with ``--boundary`` (no preamble, the usual case) is handled by treating the
stream as if it began with CRLF.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from enum import Enum, auto

from cloudfilm.core.errors import MalformedRequest

#: RFC 2046 allows 1 to 70 characters; we accept what real clients send, up to 200 bytes.
MAX_BOUNDARY = 200
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
_HEADER_NAME = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True)
class PartStart:
    """A part begins; header names are lower-cased, values decoded as Latin-1."""

    headers: dict[str, str]

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


class _State(Enum):
    PREAMBLE = auto()
    AFTER_DELIMITER = auto()
    HEADERS = auto()
    BODY = auto()
    EPILOGUE = auto()


def check_boundary(boundary: str | None) -> bytes:
    """The boundary parameter as bytes; ``MalformedRequest`` when missing or unusable."""
    if not boundary:
        raise MalformedRequest("multipart Content-Type without a boundary parameter")
    try:
        raw = boundary.encode("ascii")
    except UnicodeEncodeError as exc:
        raise MalformedRequest("multipart boundary is not ASCII") from exc
    if len(raw) > MAX_BOUNDARY or b"\r" in raw or b"\n" in raw:
        raise MalformedRequest("multipart boundary is too long or holds a line break")
    return raw


class MultipartParser:
    """Incremental ``multipart/*`` parser with bounded memory."""

    def __init__(self, boundary: bytes, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES):
        if not boundary or len(boundary) > MAX_BOUNDARY:
            raise MalformedRequest("multipart boundary must have 1 to 200 characters")
        self._delimiter = b"\r\n--" + boundary
        self._max_header_bytes = max_header_bytes
        self._buffer = bytearray(b"\r\n")  # so that a leading "--boundary" is found too
        self._state = _State.PREAMBLE
        self.parts = 0

    @property
    def complete(self) -> bool:
        """True once the closing delimiter has been read."""
        return self._state is _State.EPILOGUE

    def feed(self, data: bytes) -> list[Event]:
        """Parse more bytes; returns the events they complete."""
        if self._state is _State.EPILOGUE:
            return []
        self._buffer += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        """The body ended: ``MalformedRequest`` unless the closing delimiter was seen."""
        if self._state is not _State.EPILOGUE:
            where = "inside a part" if self._state is _State.BODY else "before the end"
            raise MalformedRequest(f"multipart body ended {where}: no closing boundary delimiter")

    # One transition; False when more input is needed.
    def _step(self, events: list[Event]) -> bool:
        state = self._state
        if state is _State.PREAMBLE:
            return self._skip_to_delimiter()
        if state is _State.AFTER_DELIMITER:
            return self._after_delimiter()
        if state is _State.HEADERS:
            return self._headers(events)
        if state is _State.BODY:
            return self._body(events)
        self._buffer.clear()  # epilogue: ignored
        return False

    def _skip_to_delimiter(self) -> bool:
        index = self._buffer.find(self._delimiter)
        if index < 0:
            keep = len(self._delimiter) - 1
            if len(self._buffer) > keep:
                del self._buffer[: len(self._buffer) - keep]
            return False
        del self._buffer[: index + len(self._delimiter)]
        self._state = _State.AFTER_DELIMITER
        return True

    def _after_delimiter(self) -> bool:
        buf = self._buffer
        if len(buf) < 2:
            return False
        if buf[:2] == b"--":
            self._state = _State.EPILOGUE
            buf.clear()
            return False
        index = 0
        while index < len(buf) and buf[index] in b" \t":
            index += 1
            if index > 256:
                raise MalformedRequest("too much padding after a multipart boundary")
        if len(buf) - index < 2:
            return False
        if buf[index : index + 2] != b"\r\n":
            raise MalformedRequest("multipart boundary delimiter not followed by CRLF")
        del buf[: index + 2]
        self._state = _State.HEADERS
        return True

    def _headers(self, events: list[Event]) -> bool:
        buf = self._buffer
        if buf[:2] == b"\r\n":  # a part without headers
            end, block = 2, b""
        else:
            found = buf.find(b"\r\n\r\n")
            if found < 0:
                if len(buf) > self._max_header_bytes:
                    raise MalformedRequest("multipart part headers are too long")
                return False
            if found > self._max_header_bytes:
                raise MalformedRequest("multipart part headers are too long")
            end, block = found + 4, bytes(buf[:found])
        del buf[:end]
        events.append(PartStart(_parse_headers(block)))
        self.parts += 1
        self._state = _State.BODY
        return True

    def _body(self, events: list[Event]) -> bool:
        buf = self._buffer
        index = buf.find(self._delimiter)
        if index < 0:
            safe = len(buf) - (len(self._delimiter) - 1)
            if safe > 0:
                events.append(PartData(bytes(buf[:safe])))
                del buf[:safe]
            return False
        if index:
            events.append(PartData(bytes(buf[:index])))
        del buf[: index + len(self._delimiter)]
        events.append(PartEnd())
        self._state = _State.AFTER_DELIMITER
        return True


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):  # obsolete line folding (RFC 5322): continue the last
            if not headers:
                raise MalformedRequest("multipart header block starts with a continuation")
            last = next(reversed(headers))
            headers[last] += " " + line.strip().decode("latin-1")
            continue
        name, colon, value = line.partition(b":")
        name = name.strip()
        if not colon or not _HEADER_NAME.match(name):
            raise MalformedRequest(f"unreadable multipart header line {line[:80]!r}")
        headers[name.decode("ascii").lower()] = value.strip().decode("latin-1")
    return headers


# ----------------------------------------------------------------------------- writing


def new_boundary() -> str:
    """A random boundary that will not occur in DICOM data by chance."""
    return f"cloudfilm-{secrets.token_hex(16)}"


def related_content_type(boundary: str, part_type: str, **params: str) -> str:
    """``multipart/related; type="…"; boundary=…`` (RFC 2387) with extra parameters."""
    extra = "".join(f"; {name.replace('_', '-')}={value}" for name, value in params.items())
    return f'multipart/related; type="{part_type}"{extra}; boundary={boundary}'


def part_header(boundary: str, headers: dict[str, str]) -> bytes:
    """The delimiter and headers that open a part (CRLF first, as RFC 2046 writes it)."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"\r\n--{boundary}\r\n{lines}\r\n".encode("latin-1")


def closing(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode("ascii")


def encode_parts(boundary: str, parts: list[tuple[dict[str, str], bytes]]) -> bytes:
    """A whole multipart body in memory (for small answers and tests)."""
    out = bytearray()
    for headers, body in parts:
        out += part_header(boundary, headers)
        out += body
    out += closing(boundary)
    return bytes(out)
