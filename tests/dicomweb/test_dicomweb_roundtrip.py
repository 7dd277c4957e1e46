"""Every bundled test file through DICOMweb: STOW-RS in, QIDO-RS, WADO-RS and metadata out.

The files and their expected outcomes come from ``tests/expected_outcomes.csv`` (see
``tests/test_testdata.py``): ``../shared/testdata``, pydicom's test files, pydicom-data and
deid-data, sent in the table's order so that its duplicates are duplicates here too. Each
stored file comes back byte-exact over WADO-RS with ``transfer-syntax=*`` (the whole Part 10
file when it arrived whole, else the data set after the generated header), each refused file
gets a 409 with the archive's reason, and each instance's ``/metadata`` is its cached header.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_support import LiveServer, outcome_table, retrieve_parts, stow_client, stow_raw
from pydicom.dataset import Dataset

from cloudfilm.archive import Archive

pytestmark = [pytest.mark.db, pytest.mark.filterwarnings("ignore::UserWarning")]

BATCH_BYTES = 24_000_000
TABLE = outcome_table()
KNOWN_BUGS = TABLE.KNOWN_BUGS
Row = TABLE.Row


@dataclass
class Sent:
    row: Any
    path: Path
    url: str | None = None
    sop_instance_uid: str | None = None


def expected_outcome(row: Row) -> str:
    bug = KNOWN_BUGS.get(row.key)
    return bug.outcome if bug else row.outcome


def rows_to_send() -> list[Sent]:
    roots = TABLE.source_roots()
    return [
        Sent(row, roots[row.source][0] / row.relative_path)
        for row in TABLE.load_table()
        if row.outcome != "skipped"
    ]


def _flush(client: DICOMwebClient, batch: list[Sent]) -> None:
    if not batch:
        return
    answers: list[requests.Response] = []  # to show the server's reasons (Warning headers)
    client._session.hooks["response"].append(lambda r, *_a, **_k: answers.append(r))
    try:
        result = stow_client(client, [s.path.read_bytes() for s in batch])
    finally:
        client._session.hooks["response"].pop()
    assert "FailedSOPSequence" not in result, (
        [s.row.relative_path for s in batch],
        [a.headers.get("Warning") for a in answers],
    )
    refs = result.ReferencedSOPSequence
    assert len(refs) == len(batch)
    for sent, ref in zip(batch, refs, strict=True):
        sent.sop_instance_uid = ref.ReferencedSOPInstanceUID
        sent.url = ref.RetrieveURL
    batch.clear()


def store_everything(client: DICOMwebClient, server: LiveServer) -> list[Sent]:
    everything = rows_to_send()
    batch: list[Sent] = []
    size = 0
    for sent in everything:
        if expected_outcome(sent.row) in ("stored", "duplicate"):
            batch.append(sent)
            size += sent.path.stat().st_size
            if size > BATCH_BYTES:
                _flush(client, batch)
                size = 0
            continue
        _flush(client, batch)
        size = 0
        response = stow_raw(server.url, [sent.path.read_bytes()])
        label = f"{sent.row.source}/{sent.row.relative_path}"
        assert response.status_code == 409, label
        reason = sent.row.reason_contains
        if sent.row.key in KNOWN_BUGS:
            reason = KNOWN_BUGS[sent.row.key].reason
        ascii_reason = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "?" for c in reason)
        assert ascii_reason in response.headers["Warning"], label
        assert response.json()["00081198"]["Value"][0]["00081197"]["Value"][0] > 0
    _flush(client, batch)
    return everything


def dataset_bytes(data: bytes) -> bytes:
    """The received bytes after any preamble and File Meta Information."""
    start = 132 if data[128:132] == b"DICM" else 0
    return data[TABLE.meta_header_end(data, start) :]


def test_every_file_round_trips(
    client: DICOMwebClient, live_server: LiveServer, archive: Archive
) -> None:
    everything = store_everything(client, live_server)
    stored = [s for s in everything if expected_outcome(s.row) == "stored"]
    assert len(stored) > 150
    for sent in stored:
        label = f"{sent.row.source}/{sent.row.relative_path}"
        assert sent.url is not None, label
        original = sent.path.read_bytes()
        url = sent.url.replace("http://127.0.0.1/", f"{live_server.origin}/")
        (part,) = retrieve_parts(client, url)
        if original[128:132] == b"DICM":
            assert part == original, label
        else:
            assert part.endswith(dataset_bytes(original)), label
            assert part[128:132] == b"DICM", label
        assert wado_uri(live_server, url, archive, str(sent.sop_instance_uid)) == part, label
    duplicates = [s for s in everything if expected_outcome(s.row) == "duplicate"]
    assert all(s.sop_instance_uid for s in duplicates)
    check_metadata(everything, live_server, archive)


def wado_uri(server: LiveServer, url: str, archive: Archive, sop: str) -> bytes:
    """The instance over WADO-URI, asked for in its stored transfer syntax (byte-exact)."""
    study, series = url.split("/studies/")[1].split("/series/")
    series = series.split("/instances/")[0]
    params = {
        "requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop,
        "contentType": "application/dicom",
        "transferSyntax": archive.instance(sop).transfer_syntax_uid,
    }  # fmt: skip
    response = requests.get(f"{server.origin}/wado", params=params, timeout=60)
    assert response.status_code == 200
    return response.content


def check_metadata(everything: list[Sent], live_server: LiveServer, archive: Archive) -> None:
    """Each instance's ``/metadata`` is its cached header with absolute BulkDataURIs."""
    checked = 0
    for sent in everything:
        if expected_outcome(sent.row) != "stored" or sent.url is None:
            continue
        url = sent.url.replace("http://127.0.0.1/", f"{live_server.origin}/")
        response = requests.get(f"{url}/metadata", timeout=60)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/dicom+json"
        (found,) = response.json()
        cached = archive.instance(str(sent.sop_instance_uid)).header_json
        assert _relative(found, url) == _parse(cached)
        ds = Dataset.from_json(found, bulk_data_uri_handler=lambda *_a: b"")
        assert (ds.get("SOPInstanceUID") or sent.sop_instance_uid) == sent.sop_instance_uid
        checked += 1
    assert checked > 150


def _parse(text: str) -> Any:
    import json

    return json.loads(text)


def _relative(found: Any, url: str) -> Any:
    """``found`` with absolute BulkDataURIs back to the cached relative form (and checked)."""
    if isinstance(found, dict):
        out = {}
        for key, value in found.items():
            if key == "BulkDataURI":
                assert value.startswith(f"{url}/bulkdata/"), value
                value = value[len(url) + 1 :]
            out[key] = _relative(value, url)
        return out
    if isinstance(found, list):
        return [_relative(v, url) for v in found]
    return found
