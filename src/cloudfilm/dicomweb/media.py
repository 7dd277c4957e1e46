"""Media types: parsing ``Content-Type`` and ``Accept`` headers (RFC 9110 8.3.1, 12.5.1).

DICOMweb puts the interesting part in parameters (``multipart/related;
type="application/dicom"; transfer-syntax=*``), whose quoted values may hold commas and
semicolons, so a naive split on ``,`` is wrong. Parsing never raises on odd input: what cannot
be read is skipped (``Accept``) or reported as ``MalformedRequest`` (``Content-Type``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cloudfilm.core.errors import MalformedRequest

#: Longest header value we look at; longer ones are hostile or broken.
MAX_HEADER_CHARS = 8192
#: Most media ranges we consider in one Accept header.
MAX_RANGES = 64


@dataclass(frozen=True)
class MediaType:
    """A media type or media range with lower-cased type and parameter names."""

    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def main(self) -> str:
        return self.type.split("/", 1)[0]

    def matches(self, concrete: str) -> bool:
        """True when this range (``*/*``, ``image/*`` or exact) covers ``concrete``."""
        if self.type in ("*/*", "*"):
            return True
        if self.type.endswith("/*"):
            return concrete.split("/", 1)[0] == self.main
        return self.type == concrete


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            current.append(char)
            quoted = not quoted
        elif char == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        out: list[str] = []
        escaped = False
        for char in inner:
            if escaped or char != "\\":
                out.append(char)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return value


def parse_media_type(text: str) -> MediaType | None:
    """One media type with parameters; None when it is not of the form ``type/subtype``."""
    pieces = _split_outside_quotes(text[:MAX_HEADER_CHARS], ";")
    main = pieces[0].strip().lower()
    if main == "*":
        main = "*/*"
    if main.count("/") != 1 or not all(main.split("/")) or any(c.isspace() for c in main):
        return None
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        name, eq, value = piece.partition("=")
        name = name.strip().lower()
        if not name or not eq:
            continue
        value = _unquote(value)
        if name == "q":
            try:
                q = min(1.0, max(0.0, float(value)))
            except ValueError:
                q = 0.0
            continue
        params.setdefault(name, value)
    return MediaType(main, params, q)


def parse_content_type(header: str | None) -> MediaType:
    """The request's ``Content-Type``; ``MalformedRequest`` when missing or unreadable."""
    if not header:
        raise MalformedRequest("the request has no Content-Type")
    parsed = parse_media_type(header)
    if parsed is None:
        raise MalformedRequest(f"unreadable Content-Type {header[:200]!r}")
    return parsed


def parse_accept(header: str | None, default: str = "*/*") -> list[MediaType]:
    """Acceptable media ranges, most preferred first (by q, then order); q=0 ranges dropped.

    An absent or empty header means ``default``.
    """
    if not header or not header.strip():
        header = default
    ranges: list[tuple[float, int, MediaType]] = []
    for index, piece in enumerate(_split_outside_quotes(header[:MAX_HEADER_CHARS], ",")):
        if index >= MAX_RANGES:
            break
        if not piece.strip():
            continue
        parsed = parse_media_type(piece)
        if parsed is not None and parsed.q > 0:
            ranges.append((-parsed.q, index, parsed))
    ranges.sort(key=lambda item: (item[0], item[1]))
    return [r for _, _, r in ranges]
