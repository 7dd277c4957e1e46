"""Helpers for the DICOMweb tests: raw multipart bodies and their parts.

``dicomweb-client`` re-encodes datasets with pydicom when it stores them, which would defeat
byte-exact checks, so raw files go through its lower-level POST of ready-made parts
(``_http_post_multipart_application_dicom``) or, for refused requests, through ``requests``.
"""

from __future__ import annotations

import importlib
import re
import socket
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from cloudfilm.archive import Archive

TESTS = Path(__file__).resolve().parents[1]
BOUNDARY = "test-boundary-7d1f"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def multipart(
    parts: list[bytes], boundary: str = BOUNDARY, part_type: str = "application/dicom"
) -> bytes:
    body = bytearray()
    for part in parts:
        body += f"\r\n--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode()
        body += part
    body += f"\r\n--{boundary}--\r\n".encode()
    return bytes(body)


def stow_raw(
    url: str, parts: list[bytes], study: str | None = None, **headers: str
) -> requests.Response:
    """POST ``parts`` to STOW-RS with ``requests`` (any status comes back)."""
    target = f"{url}/studies" + (f"/{study}" if study else "")
    all_headers = {
        "Content-Type": STOW_TYPE,
        **{k.replace("_", "-"): v for k, v in headers.items()},
    }
    return requests.post(target, data=multipart(parts), headers=all_headers, timeout=120)


def stow_client(client: DICOMwebClient, parts: list[bytes], study: str | None = None) -> Dataset:
    """Store raw Part 10 files with dicomweb-client (raises on 409 and other errors)."""
    url = f"{client.base_url}/studies" + (f"/{study}" if study else "")
    result: Dataset = client._http_post_multipart_application_dicom(url, parts)
    return result


def retrieve_parts(
    client: DICOMwebClient, url: str, transfer_syntax: str | None = "*"
) -> list[bytes]:
    """The raw parts of a WADO-RS answer, read by dicomweb-client's multipart decoder.

    (Its public retrieve methods parse the parts with pydicom, which would hide the bytes.)
    """
    accept = 'multipart/related; type="application/dicom"'
    if transfer_syntax:
        accept += f"; transfer-syntax={transfer_syntax}"
    response = client._http_get(url, headers={"Accept": accept})
    return list(client._decode_multipart_message(response, stream=False))


def part_headers(response: requests.Response) -> list[dict[str, str]]:
    """The headers of every part of a multipart answer (an independent, simple reader)."""
    match = re.search(r"boundary=\"?([^\";]+)\"?", response.headers["Content-Type"])
    assert match, response.headers["Content-Type"]
    delimiter = b"--" + match.group(1).encode()
    found = []
    for chunk in response.content.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head = chunk.split(b"\r\n\r\n", 1)[0]
        lines = head.decode("latin-1").strip().split("\r\n")
        found.append(
            {
                k.strip().lower(): v.strip()
                for k, v in (ln.split(":", 1) for ln in lines if ":" in ln)
            }
        )
    return found


def element_value(dataset_json: dict[str, Any], tag: str) -> Any:
    values = dataset_json.get(tag, {}).get("Value", [])
    return values[0] if values else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    """A running server: ``url`` is the DICOMweb root, ``origin`` the scheme, host and port."""

    origin: str
    url: str
    archive: Archive


def outcome_table() -> types.ModuleType:
    """``tests/test_testdata.py`` (the table of expected outcomes and its helpers).

    That module does ``from conftest import TESTDATA``; when several ``conftest.py`` files are
    on the path, ``conftest`` may name another one, so a stand-in module provides the value
    while it is imported.
    """
    if "test_testdata" in sys.modules:
        return sys.modules["test_testdata"]
    saved = sys.modules.get("conftest")
    if saved is None or not hasattr(saved, "TESTDATA"):
        shim = types.ModuleType("conftest")
        shim.TESTDATA = TESTS.parent.parent / "shared" / "testdata"  # type: ignore[attr-defined]
        sys.modules["conftest"] = shim
    try:
        if str(TESTS) not in sys.path:
            sys.path.insert(0, str(TESTS))
        return importlib.import_module("test_testdata")
    finally:
        if saved is not None:
            sys.modules["conftest"] = saved
        else:
            sys.modules.pop("conftest", None)
