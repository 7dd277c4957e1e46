"""Every file of the bundled test data, stored into one archive, has the outcome the table says.

The table is ``expected_outcomes.csv`` beside this file, one row per file of four sources:

- ``testdata``: ``../shared/testdata`` (fo-dicom and dicomParser files),
- ``pydicom``: pydicom's bundled ``test_files`` (with ``dicomdirtests``), ``charset_files`` and
  ``palettes`` (only what is installed; nothing is downloaded),
- ``pydicom-data``: the ``data_store/data`` folder of the pydicom-data package,
- ``deid-data``: the ``deid_data/data`` folder of the deid-data package.

``__pycache__`` folders are not data and are left out. Every other file has a row, so a file
added to any source fails ``test_table_lists_every_local_file`` until it is reviewed and added.

Columns: ``outcome`` is ``stored``, ``duplicate`` (same SOP Instance UID as a file processed
earlier in the sorted order; ``why`` names it), ``conflict``, ``rejected`` or ``skipped`` (a
DICOMDIR, which the importer skips as a media index, or a helper file: README, LICENSE, .py,
.json, .txt, .md); ``reason_contains`` is a stable part of the rejection reason; ``why`` is the
reviewed justification. Files are stored in one archive in sorted (source, path) order, so
duplicates are decided by that order.

To regenerate after a data change: store the new files, then review each new rejection against
the standard before writing its row; a file that is complete and has all four identifying UIDs
must not be rejected (that is a bug to fix, listed in ``KNOWN_BUGS`` until it is).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudfilm.archive import Archive, StoreStatus
from cloudfilm.importer import collect
from cloudfilm.index.queries import archive_totals
from cloudfilm.maintenance import check_archive
from support.paths import TESTDATA

pytestmark = [pytest.mark.db, pytest.mark.filterwarnings("ignore::UserWarning")]

TABLE = Path(__file__).with_name("expected_outcomes.csv")
COLUMNS = ["source", "relative_path", "outcome", "reason_contains", "why"]
OUTCOMES = {"stored", "duplicate", "conflict", "rejected", "skipped"}
HELPER_SUFFIXES = {".py", ".json", ".txt", ".md"}
HELPER_NAMES = {"README", "LICENSE"}
DICOMDIR_REASON = "DICOMDIR"
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
             b"UV"}  # fmt: skip


@dataclass(frozen=True)
class Bug:
    """A file whose table outcome is right but which src/ gets wrong today."""

    outcome: str  # what happens today
    reason: str  # part of today's reason
    description: str


#: Rows whose expected outcome src/ does not yet give; each has a strict-xfail test below.
KNOWN_BUGS: dict[tuple[str, str], Bug] = {}


@dataclass(frozen=True)
class Row:
    source: str
    relative_path: str
    outcome: str
    reason_contains: str
    why: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.relative_path)


def source_roots() -> dict[str, tuple[Path, tuple[str, ...]]]:
    """Each source: its root (paths are relative to it) and the folders under it that count."""
    import data_store
    import deid_data
    import pydicom.data

    return {
        "deid-data": (Path(os.path.dirname(deid_data.__file__)) / "data", ("",)),
        "pydicom": (
            Path(os.path.dirname(pydicom.data.__file__)),
            ("test_files", "charset_files", "palettes"),
        ),
        "pydicom-data": (Path(os.path.dirname(data_store.__file__)) / "data", ("",)),
        "testdata": (TESTDATA, ("",)),
    }


def local_files() -> list[tuple[str, str, Path]]:
    """(source, relative path, path) of every local file, in the processing order."""
    found = []
    for source, (root, folders) in source_roots().items():
        for folder in folders:
            for path in (root / folder).rglob("*"):
                rel = path.relative_to(root)
                if path.is_file() and "__pycache__" not in rel.parts:
                    found.append((source, rel.as_posix(), path))
    return sorted(found)


def load_table() -> list[Row]:
    with TABLE.open(newline="", encoding="utf-8") as fp:
        reader = csv.reader(fp)
        assert next(reader) == COLUMNS
        return [Row(*line) for line in reader]


def is_helper(relative_path: str) -> bool:
    path = Path(relative_path)
    return path.suffix.lower() in HELPER_SUFFIXES or path.name in HELPER_NAMES


def skipped_by_importer() -> set[Path]:
    """Files the importer's folder walk skips on purpose (DICOMDIRs), for every source folder."""
    skipped: set[Path] = set()
    for root, folders in source_roots().values():
        for folder in folders:
            for item in collect([root / folder]):
                if isinstance(item, tuple) and "!" not in item[0]:
                    skipped.add(Path(item[0]))
    return skipped


def meta_header_end(data: bytes, start: int) -> int:
    """Offset just past the group 0002 elements (always Explicit VR Little Endian) at ``start``."""
    pos = start
    while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            pos += 12 + int.from_bytes(data[pos + 8 : pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(data[pos + 6 : pos + 8], "little")
    return pos


def earlier_file(why: str) -> tuple[str, str] | None:
    """The (source, path) a duplicate row names as the file stored first."""
    match = re.match(r"same SOP Instance UID as ([^/\s]+)/(\S+)", why)
    return (match.group(1), match.group(2)) if match else None


def test_table_lists_every_local_file() -> None:
    on_disk = [(source, rel) for source, rel, _ in local_files()]
    listed = [row.key for row in load_table()]
    missing = sorted(set(on_disk) - set(listed))
    absent = sorted(set(listed) - set(on_disk))
    assert not missing, f"files without a row in {TABLE.name} (review and add them): {missing}"
    assert not absent, f"rows for files that are not here (remove them): {absent}"
    assert len(listed) == len(set(listed)), "a file is listed twice"
    assert listed == on_disk, f"{TABLE.name} is not in (source, path) order"


def test_table_rows_are_justified() -> None:
    rows = load_table()
    paths = {(source, rel): path for source, rel, path in local_files()}
    by_key = {row.key: row for row in rows}
    position = {row.key: i for i, row in enumerate(rows)}
    dicomdirs = skipped_by_importer()
    problems = []
    for row in rows:
        label = f"{row.source}/{row.relative_path}"
        if row.outcome not in OUTCOMES:
            problems.append(f"{label}: unknown outcome {row.outcome!r}")
        if not row.why.strip():
            problems.append(f"{label}: no justification")
        if row.outcome in ("rejected", "conflict") and not row.reason_contains:
            problems.append(f"{label}: a {row.outcome} row needs reason_contains")
        if row.outcome in ("stored", "duplicate") and row.reason_contains:
            problems.append(f"{label}: reason_contains is only for rejections and skips")
        path = paths.get(row.key)
        if path is None:
            continue
        skipped_dicomdir = row.outcome == "skipped" and row.reason_contains == DICOMDIR_REASON
        if skipped_dicomdir != (path in dicomdirs):
            problems.append(f"{label}: the importer {'skips' if path in dicomdirs else 'keeps'} it")
        helper = row.outcome == "skipped" and not row.reason_contains
        if helper != is_helper(row.relative_path):
            problems.append(f"{label}: helper rule and table disagree")
        if row.outcome == "duplicate":
            first = earlier_file(row.why)
            if first is None or first not in by_key:
                problems.append(f"{label}: why must say 'same SOP Instance UID as SOURCE/PATH'")
            elif by_key[first].outcome != "stored" or position[first] > position[row.key]:
                problems.append(f"{label}: {first} is not a stored file processed earlier")
    assert not problems, "\n".join(problems)


def test_every_file_has_its_expected_outcome(archive: Archive) -> None:
    table = {row.key: row for row in load_table()}
    failures: list[str] = []
    stored: dict[str, tuple[tuple[str, str], Path]] = {}
    studies: set[str] = set()
    series: set[str] = set()
    for source, rel, path in local_files():
        key, label = (source, rel), f"{source}/{rel}"
        row = table.get(key)
        if row is None:
            failures.append(f"{label}: not in the table")
            continue
        if row.outcome == "skipped":
            continue
        data = path.read_bytes()
        try:
            result = archive.store(data)
        except Exception as exc:  # store must answer, never raise
            failures.append(f"{label}: store raised {type(exc).__name__}: {exc}")
            continue
        got, reason = result.status.value, result.reason or ""
        bug = KNOWN_BUGS.get(key)
        if bug is not None and got == bug.outcome and bug.reason in reason:
            pass  # known, with a strict xfail test; the expected outcome is also accepted
        elif got != row.outcome:
            failures.append(f"{label}: {got} ({reason}), expected {row.outcome}")
        elif row.reason_contains and row.reason_contains not in reason:
            failures.append(f"{label}: reason {reason!r} lacks {row.reason_contains!r}")
        uid = result.sop_instance_uid or ""
        if result.status is StoreStatus.STORED:
            if uid in stored:
                failures.append(f"{label}: stored again although {stored[uid][0]} has its UID")
            stored[uid] = (key, path)
            studies.add(result.study_uid or "")
            series.add(result.series_uid or "")
        elif result.status is StoreStatus.DUPLICATE:
            first = earlier_file(row.why)
            if uid not in stored or stored[uid][0] != first:
                where = stored[uid][0] if uid in stored else "nothing"
                failures.append(f"{label}: duplicate of {where}, table says {first}")

    for uid, (key, path) in stored.items():  # after every duplicate: none replaced a blob
        failures += blob_problems(archive, uid, f"{key[0]}/{key[1]}", path.read_bytes())
    assert not failures, "\n".join(failures)

    assert sorted(i.sop_instance_uid for i in archive.iter_instances()) == sorted(stored)
    with archive.sessions() as session:
        totals = archive_totals(session)
    assert totals["instances"] == len(stored)
    assert totals["studies"] == len(studies)
    assert totals["series"] == len(series)
    report = check_archive(archive)
    assert report.consistent_after, report.lines()
    assert report.instances == report.blobs == len(stored)


def blob_problems(archive: Archive, uid: str, label: str, data: bytes) -> list[str]:
    """Why the stored blob is not what the input requires (empty when it is)."""
    blob = archive.read_instance(uid)
    if data[128:132] == b"DICM":
        return [] if blob == data else [f"{label}: blob differs from the Part 10 input"]
    offset = archive.instance(uid).dataset_offset
    own_meta = meta_header_end(data, 0)  # 0 for a bare data set
    problems = []
    if blob[128:132] != b"DICM":
        problems.append(f"{label}: blob is not a Part 10 file")
    if meta_header_end(blob, 132) != offset:
        problems.append(f"{label}: blob's meta header does not end at dataset_offset {offset}")
    if blob[offset:] != data[own_meta:]:
        problems.append(f"{label}: blob's data set differs from the input's")
    return problems


#: Files that once were wrongly handled, kept as single-file regression tests.
REGRESSIONS = [
    # Big endian with an undefined-length UN sequence: implicit VR little endian inside.
    ("testdata", "fo-dicom/GH177_D_CLUNIE_CT1_IVRLE_BigEndian_undefined_length.dcm"),
]


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(key, marks=pytest.mark.xfail(strict=True, reason=bug.description), id=key[1])
        for key, bug in KNOWN_BUGS.items()
    ]
    + [pytest.param(key, id=key[1]) for key in REGRESSIONS],
)
def test_known_bug_gets_its_table_outcome(archive: Archive, key: tuple[str, str]) -> None:
    """The table's outcome for a file src/ gets wrong, with what it depends on stored first."""
    table = {row.key: row for row in load_table()}
    paths = {(source, rel): path for source, rel, path in local_files()}
    row = table[key]
    first = earlier_file(row.why) if row.outcome == "duplicate" else None
    if first is not None:
        assert archive.store(paths[first].read_bytes()).status is StoreStatus.STORED
    result = archive.store(paths[key].read_bytes())
    assert result.status.value == row.outcome, result.reason
    if row.reason_contains:
        assert row.reason_contains in (result.reason or "")
