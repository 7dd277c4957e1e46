"""C-STORE of every test file: stored with its data set byte-exact, or refused precisely.

Two senders, both real:

- pynetdicom, proposing each file's own SOP class and transfer syntax and sending the file's
  data set bytes untouched (what the archive receives is then known exactly);
- DCMTK's storescu as a site would run it (``-R``: propose the files' SOP classes, with its
  default uncompressed transfer syntaxes). storescu re-encodes what it sends (it drops trailing
  padding, for one), so what it sent is captured by sending the same files to DCMTK's
  ``storescp +B`` (bit-preserving) and compared with what the archive kept.

The expected outcome of each file is the reviewed one of ``tests/expected_outcomes.csv``: a
file the archive stores on import is stored over DIMSE too; a file it rejects is refused with
a C-STORE failure status of PS3.4 B.2.3 (or stored, when what made it unreadable was only its
File Meta Information, which DIMSE does not carry). One association carries many files, bad
ones included, and must survive them all.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pydicom.data
import pytest
from dimse_support import (
    TESTDATA,
    Dcmtk,
    dataset_of,
    start_storescp,
    stored_dataset,
)
from pydicom.filereader import _read_file_meta_info
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_context
from pynetdicom.dimse_primitives import C_STORE

from cloudfilm.archive import Archive
from cloudfilm.core.errors import CloudFilmError
from cloudfilm.dicom.parse import parse_instance
from cloudfilm.dimse import DimseServer

pytestmark = [pytest.mark.db, pytest.mark.filterwarnings("ignore::UserWarning")]

TABLE = Path(__file__).resolve().parents[1] / "expected_outcomes.csv"
HELPERS = {".py", ".json", ".txt", ".md"}
#: C-STORE failures a refused file may get (PS3.4 B.2.3): out of resources, data set does not
#: match SOP class, cannot understand, identity conflict.
REFUSALS = {0xA700, 0xA900, 0xC000, 0xC001}
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: Media Storage Directory Storage (DICOMDIR) and Color Palette Storage.
NOT_STORAGE = {"1.2.840.10008.1.3.10", "1.2.840.10008.5.1.4.39.1"}


@dataclass
class CorpusFile:
    source: str
    relative: str
    path: Path
    outcome: str  # the table's
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    offset: int  # where the data set starts in the file
    #: The SOP Instance UID the archive indexes its bare data set under; None when the data
    #: set alone cannot be stored, e.g. it lacks its SOP Instance UID, which only the file's
    #: meta header had (import keeps such a file; over DIMSE it is refused 0xA900).
    indexed_uid: str | None

    @property
    def label(self) -> str:
        return f"{self.source}/{self.relative}"


def corpus() -> list[CorpusFile]:
    """Every file of ../shared/testdata and pydicom's test files, as the table lists them."""
    with TABLE.open(newline="", encoding="utf-8") as fp:
        table = {(r["source"], r["relative_path"]): r["outcome"] for r in csv.DictReader(fp)}
    base = Path(pydicom.data.__file__).parent
    roots = [
        ("pydicom", base, ("test_files", "charset_files", "palettes")),
        ("testdata", TESTDATA, ("",)),
    ]
    found = []
    for source, root, folders in roots:
        for folder in folders:
            for path in sorted((root / folder).rglob("*")):
                rel = path.relative_to(root).as_posix()
                if not path.is_file() or "__pycache__" in rel:
                    continue
                if path.suffix.lower() in HELPERS or path.name in ("README", "LICENSE"):
                    continue
                found.append(describe(source, rel, path, table[(source, rel)]))
    return sorted(found, key=lambda f: (f.source, f.relative))


def describe(source: str, rel: str, path: Path, outcome: str) -> CorpusFile:
    """What a sender needs: SOP class and instance, transfer syntax, where the data set starts.

    Taken from the file as the archive reads it on import, else from its meta header, else
    defaults (a file nothing can read is still sent, to be refused). ``indexed_uid`` is what
    the archive makes of the bare data set, which is what DIMSE carries.
    """
    data = path.read_bytes()
    sop_class, sop_instance = SECONDARY_CAPTURE, generate_uid()
    ts, offset = ImplicitVRLittleEndian, 0
    try:
        parsed = parse_instance(io.BytesIO(data))
        sop_class, sop_instance = parsed.sop_class_uid, parsed.sop_instance_uid
        ts, offset = parsed.transfer_syntax, parsed.received_dataset_offset
    except CloudFilmError:
        if data[128:132] == b"DICM":
            offset = 132
            try:
                stream = io.BytesIO(data)
                stream.seek(132)
                meta = _read_file_meta_info(stream)
                offset = stream.tell()
                sop_class = _uid(meta.get("MediaStorageSOPClassUID")) or sop_class
                sop_instance = _uid(meta.get("MediaStorageSOPInstanceUID")) or sop_instance
                ts = _uid(meta.get("TransferSyntaxUID")) or ts
            except Exception:
                pass
    indexed = None
    try:
        indexed = parse_instance(io.BytesIO(data[offset:]), transfer_syntax=ts).sop_instance_uid
    except CloudFilmError:
        pass
    return CorpusFile(source, rel, path, outcome, sop_class, sop_instance, ts, offset, indexed)


def _uid(value: object) -> str:
    return str(value or "").strip("\0 ")


def batches(files: list[CorpusFile], limit: int = 100) -> list[list[CorpusFile]]:
    """Groups of files needing at most ``limit`` presentation contexts each."""
    groups: list[list[CorpusFile]] = [[]]
    pairs: set[tuple[str, str]] = set()
    for f in files:
        pair = (f.sop_class, f.transfer_syntax)
        if pair not in pairs and len(pairs) == limit:
            groups.append([])
            pairs = set()
        pairs.add(pair)
        groups[-1].append(f)
    return groups


#: Stands for "no presentation context accepted": the SOP class is not a storage one
#: (Media Storage Directory, i.e. DICOMDIR; the Non-Patient Object Color Palette), which the
#: archive, storing patients' images only, does not negotiate (PS3.8 9.3.3.2, result 3).
NOT_NEGOTIATED = -1


def send_raw(assoc: object, f: CorpusFile, msg_id: int) -> tuple[int, str]:
    """C-STORE the file's data set bytes exactly as they are in the file; (status, comment)."""
    context = next(
        (
            cx
            for cx in assoc.accepted_contexts  # type: ignore[attr-defined]
            if cx.abstract_syntax == f.sop_class and cx.transfer_syntax[0] == f.transfer_syntax
        ),
        None,
    )
    if context is None:
        return NOT_NEGOTIATED, "presentation context not accepted"
    req = C_STORE()
    req.MessageID = msg_id
    req.AffectedSOPClassUID = f.sop_class
    req.AffectedSOPInstanceUID = f.sop_instance
    req.Priority = 0
    req._dataset_path = (f.path, f.offset)
    assoc._reactor_checkpoint.clear()  # type: ignore[attr-defined]
    try:
        while not assoc._is_paused:  # type: ignore[attr-defined]
            pass
        assoc.dimse.send_msg(req, context.context_id)  # type: ignore[attr-defined]
        _, rsp = assoc.dimse.get_msg(block=True)  # type: ignore[attr-defined]
    finally:
        assoc._reactor_checkpoint.set()  # type: ignore[attr-defined]
    assert rsp is not None, f"{f.label}: no C-STORE response"
    return int(rsp.Status), str(rsp.ErrorComment or "")


def check_outcome(
    f: CorpusFile, code: int, comment: str, archive: Archive, first: dict[str, str], *, exact: bool
) -> list[str]:
    """Problems with one file's answer (empty when it is right).

    ``exact``: the file's data set bytes were sent as they are, so the first stored copy of
    each SOP Instance UID must be them.
    """
    if code == 0x0000:
        uid = f.indexed_uid
        if uid is None:
            return [f"{f.label}: stored, although its data set cannot be parsed"]
        if uid not in first:
            first[uid] = f.label
            if exact and stored_dataset(archive, uid) != f.path.read_bytes()[f.offset :]:
                return [f"{f.label}: stored data set differs from the bytes sent"]
        return []
    if f.outcome in ("stored", "duplicate") and f.indexed_uid is not None:
        return [f"{f.label}: refused 0x{code:04X} ({comment}), the table says {f.outcome}"]
    if code == NOT_NEGOTIATED and f.sop_class in NOT_STORAGE:
        return []
    if code not in REFUSALS or not comment:
        return [f"{f.label}: refused with 0x{code:04X} {comment!r}, not a precise refusal"]
    return []


def send_with_pynetdicom(port: int, files: list[CorpusFile]) -> dict[str, tuple[int, str]]:
    """Each file's data set bytes as they are, one association per 100 contexts."""
    outcomes = {}
    for group in batches(files):
        ae = AE(ae_title="PYSCU")
        pairs = dict.fromkeys((f.sop_class, f.transfer_syntax) for f in group)
        ae.requested_contexts = [build_context(sop, ts) for sop, ts in pairs]
        assoc = ae.associate("127.0.0.1", port, ae_title="CLOUDFILM")
        assert assoc.is_established
        try:
            for msg_id, f in enumerate(group, start=1):
                outcomes[f.label] = send_raw(assoc, f, msg_id)
                assert assoc.is_established, f"association lost after {f.label}"
        finally:
            assoc.release()
    return outcomes


STATUS_LINE = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")


def send_with_storescu(
    dcmtk: Dcmtk, port: int, called: str, files: list[CorpusFile]
) -> dict[str, int | None]:
    """Send with storescu as a site would (-R), in batches; each file's status (None: unsent)."""
    by_path = {str(f.path): f.label for f in files}
    outcomes: dict[str, int | None] = {f.label: None for f in files}
    for group in batches(files, limit=40):
        out = dcmtk.run("storescu", "-d", "-nh", "-R", "-aec", called, "127.0.0.1", port,
                        *[f.path for f in group], timeout=300)  # fmt: skip
        assert "Association Accepted" in out.stderr, out.stderr[-2000:]
        current: str | None = None
        for line in out.stderr.splitlines():
            if line.startswith("I: Sending file: "):
                current = by_path[line.removeprefix("I: Sending file: ").strip()]
            elif current and (match := STATUS_LINE.search(line)):
                outcomes[current] = int(match.group(1), 16)
                current = None
    return outcomes


def test_every_file_is_stored_exactly_or_refused_precisely(
    dcmtk: Dcmtk, dimse: DimseServer, archive: Archive, tmp_path: Path
) -> None:
    files = corpus()
    assert len(files) > 250
    # storescu first, as a site runs it; pynetdicom sends what storescu cannot.
    by_storescu = send_with_storescu(dcmtk, dimse.port, "CLOUDFILM", files)
    rest = [f for f in files if by_storescu[f.label] is None]
    by_pynetdicom = send_with_pynetdicom(dimse.port, rest)
    assert sum(code is not None for code in by_storescu.values()) > 150
    assert len(by_pynetdicom) >= 20  # compressed, private, bare and broken files

    problems: list[str] = []
    first: dict[str, str] = {}
    from_storescu: dict[str, CorpusFile] = {}
    for f in files:  # in the order they were sent: storescu's, then pynetdicom's
        code = by_storescu[f.label]
        if code is not None:  # what storescu sent is compared with storescp's copy below
            problems += check_outcome(f, code, "(storescu)", archive, first, exact=False)
            if code == 0 and f.indexed_uid and first.get(f.indexed_uid) == f.label:
                from_storescu[f.indexed_uid] = f
    for f in rest:
        code, comment = by_pynetdicom[f.label]
        problems += check_outcome(f, code, comment, archive, first, exact=True)
    assert not problems, "\n".join(problems)
    for uid in first:  # every stored instance is indexed once, with where it came from
        assert archive.instance(uid).source in ("dimse:STORESCU", "dimse:PYSCU")

    # What storescu sent, captured bit for bit by storescp +B, is what the archive kept.
    scp = start_storescp(dcmtk, tmp_path / "reference", "REFERENCE")
    try:
        reference = send_with_storescu(dcmtk, scp.port, "REFERENCE", list(from_storescu.values()))
    finally:
        scp.process.terminate()
        scp.process.wait(10)
    assert all(code == 0 for code in reference.values())
    received = {}
    for path in scp.files():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        received[str(ds.SOPInstanceUID)] = dataset_of(path.read_bytes())
    assert set(received) == set(from_storescu)
    differing = [
        f.label for uid, f in from_storescu.items() if stored_dataset(archive, uid) != received[uid]
    ]
    assert not differing, f"stored data sets differ from what storescu sent: {differing}"


@pytest.mark.parametrize(
    "name",
    ["image_dfl.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "JPEG-LL.dcm", "MR_small_bigendian.dcm"],
)
def test_compressed_and_deflated_data_sets_are_kept_as_sent(
    dimse: DimseServer, archive: Archive, name: str
) -> None:
    """Each in its own transfer syntax (deflate, JPEG 2000, RLE, JPEG lossless, big endian)."""
    path = Path(pydicom.data.get_testdata_file(name))
    f = describe("pydicom", name, path, "stored")
    (status, comment), *_ = send_with_pynetdicom(dimse.port, [f]).values()
    assert (status, comment) == (0, "")
    assert f.indexed_uid is not None
    row = archive.instance(f.indexed_uid)
    assert row.transfer_syntax_uid == f.transfer_syntax
    assert stored_dataset(archive, f.indexed_uid) == path.read_bytes()[f.offset :]
