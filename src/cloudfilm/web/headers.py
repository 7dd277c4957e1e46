"""HTTP header values shared by downloads: Content-Disposition with non-ASCII file names."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

#: Characters no file system or browser accepts in a file name, and control characters.
_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f]+')
_SPACES = re.compile(r"[\s_]+")


def safe_filename(name: str, *, limit: int = 120) -> str:
    """``name`` with path separators, reserved and control characters replaced by ``_``."""
    cleaned = _SPACES.sub("_", _UNSAFE.sub("_", unicodedata.normalize("NFC", name)))
    return cleaned.strip("._")[:limit]


def content_disposition(filename: str, fallback: str, *, inline: bool = False) -> str:
    """A Content-Disposition value naming ``filename`` in any script (RFC 6266).

    ``filename`` carries an ASCII name for old clients (``fallback`` when ``filename`` has no
    usable ASCII form) and ``filename*`` the UTF-8 name percent-encoded (RFC 8187, formerly
    RFC 5987), which browsers prefer.
    """
    name = safe_filename(filename) or safe_filename(fallback)
    stem, dot, extension = name.rpartition(".")
    if not dot:
        stem, extension = name, ""
    ascii_stem = safe_filename(stem.encode("ascii", "ignore").decode("ascii"))
    if ascii_stem and extension.isascii():
        ascii_name = f"{ascii_stem}.{extension}" if extension else ascii_stem
    else:
        ascii_name = safe_filename(fallback)
    kind = "inline" if inline else "attachment"
    value = f'{kind}; filename="{ascii_name}"'
    if name != ascii_name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value
