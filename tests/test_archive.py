"""The archive façade: store outcomes, durability order, deletion and derived counts, names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from sqlalchemy import event, select

from cloudfilm.archive import Archive, StoreStatus
from cloudfilm.core.config import Settings
from cloudfilm.core.errors import MissingIdentifier, OutOfResources, TooLarge
from cloudfilm.index.models import Instance, Patient, Study
from cloudfilm.index.queries import StudyQuery, find_studies
from cloudfilm.maintenance import check_archive
from support.instances import bare, make_dataset, part10

pytestmark = pytest.mark.db

CHARSET_DIR = Path(__file__).resolve().parents[2] / "shared/testdata/fo-dicom/charset"


def blob_files(archive: Archive) -> list[str]:
    return list(archive.blobs.keys())


def study_row(archive: Archive, uid: str) -> Study:
    with archive.sessions() as session:
        return session.execute(select(Study).where(Study.study_uid == uid)).scalar_one()


def test_store_part10_keeps_the_file_whole(archive: Archive) -> None:
    data = part10(make_dataset(PatientName="Doe^Jane"))
    result = archive.store(data)
    assert result.status is StoreStatus.STORED and result.ok
    assert archive.read_instance(result.sop_instance_uid or "") == data
    row = archive.instance(result.sop_instance_uid or "")
    assert row.received_whole and row.transfer_syntax_uid == ExplicitVRLittleEndian
    assert row.rows == 128 and row.columns == 128 and row.bits_allocated == 16
    header = json.loads(row.header_json)
    assert header["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]
    assert header["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"}
    assert len(row.header_json) < 20_000  # pixel data never cached


def test_bare_dataset_gets_a_generated_header_and_keeps_its_bytes(archive: Archive) -> None:
    ds = make_dataset()
    raw = bare(ds, implicit=True)
    result = archive.store(raw, transfer_syntax=ImplicitVRLittleEndian, source_ae="CT1")
    assert result.status is StoreStatus.STORED
    blob = archive.read_instance(ds.SOPInstanceUID)
    row = archive.instance(ds.SOPInstanceUID)
    assert blob[128:132] == b"DICM" and not row.received_whole
    assert blob[row.dataset_offset :] == raw
    stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(blob))
    assert stored.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert stored.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert stored.file_meta.SourceApplicationEntityTitle == "CT1"


def test_duplicate_is_success_and_stored_once(archive: Archive) -> None:
    ds = make_dataset()
    first = archive.store(part10(ds))
    again = archive.store(part10(ds))
    other_syntax = archive.store(part10(ds, ImplicitVRLittleEndian))
    as_bare = archive.store(bare(ds), transfer_syntax=ImplicitVRLittleEndian)
    assert first.status is StoreStatus.STORED
    assert [r.status for r in (again, other_syntax, as_bare)] == [StoreStatus.DUPLICATE] * 3
    assert all(r.ok for r in (again, other_syntax, as_bare))
    assert len(blob_files(archive)) == 1
    assert study_row(archive, ds.StudyInstanceUID).num_instances == 1
    assert archive.read_instance(ds.SOPInstanceUID) == part10(ds)  # the first one kept


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"PatientID": "OTHER"}, "patient"),
        ({"StudyInstanceUID": "1.2.3.4.5"}, "study"),
        ({"SeriesInstanceUID": "1.2.3.4.6"}, "series"),
    ],
)
def test_conflict_is_refused_and_changes_nothing(
    archive: Archive, change: dict[str, str], what: str
) -> None:
    ds = make_dataset()
    original = part10(ds)
    assert archive.store(original).status is StoreStatus.STORED
    for key, value in change.items():
        setattr(ds, key, value)
    result = archive.store(part10(ds))
    assert result.status is StoreStatus.CONFLICT and not result.ok
    assert what in (result.reason or "")
    assert result.error is not None and result.error.status == 409
    assert archive.read_instance(ds.SOPInstanceUID) == original
    assert len(blob_files(archive)) == 1


def test_replace_policy_swaps_the_instance(settings: Settings) -> None:
    settings = settings.model_copy(update={"conflict_policy": "replace"})
    with Archive.open(settings) as archive:
        ds = make_dataset(PatientID="P1")
        old_study = ds.StudyInstanceUID
        archive.store(part10(ds))
        ds.PatientID = "P2"
        ds.StudyInstanceUID = generate_uid()
        new = part10(ds)
        result = archive.store(new)
        assert result.status is StoreStatus.STORED and result.replaced
        assert archive.read_instance(ds.SOPInstanceUID) == new
        assert len(blob_files(archive)) == 1  # the old blob removed once the new was durable
        with archive.sessions() as session:
            assert (
                session.execute(select(Study).where(Study.study_uid == old_study)).first() is None
            )
            assert (
                session.execute(select(Patient).where(Patient.patient_id == "P1")).first() is None
            )
        assert check_archive(archive).consistent_after


def test_study_of_another_patient_is_a_conflict(archive: Archive) -> None:
    first = make_dataset(PatientID="A")
    archive.store(part10(first))
    intruder = make_dataset(PatientID="B", StudyInstanceUID=first.StudyInstanceUID)
    result = archive.store(part10(intruder))
    assert result.status is StoreStatus.CONFLICT
    assert "another patient" in (result.reason or "")
    assert len(blob_files(archive)) == 1


@pytest.mark.parametrize(
    ("keyword", "needle"),
    [
        ("SOPInstanceUID", "SOP Instance UID"),
        ("StudyInstanceUID", "StudyInstanceUID"),
        ("SeriesInstanceUID", "SeriesInstanceUID"),
    ],
)
def test_missing_identifier_is_rejected(archive: Archive, keyword: str, needle: str) -> None:
    ds = make_dataset()
    delattr(ds, keyword)
    result = archive.store(bare(ds), transfer_syntax=ImplicitVRLittleEndian)
    assert result.status is StoreStatus.REJECTED
    assert isinstance(result.error, MissingIdentifier) and needle in (result.reason or "")
    assert blob_files(archive) == []


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty"),
        (b"hello, this is not DICOM at all" * 10, "not DICOM"),
        (b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x40\x00garbage", "Meta"),
    ],
    ids=["empty", "text", "bad-meta"],
)
def test_garbage_is_rejected(archive: Archive, data: bytes, needle: str) -> None:
    result = archive.store(data)
    assert result.status is StoreStatus.REJECTED and needle in (result.reason or "")
    assert result.error is not None and result.error.status == 400
    assert blob_files(archive) == []


def test_truncated_file_is_rejected_and_leaves_nothing(archive: Archive) -> None:
    data = part10(make_dataset())
    result = archive.store(data[:-100])
    assert result.status is StoreStatus.REJECTED and "truncated" in (result.reason or "")
    assert blob_files(archive) == []
    assert not list((archive.settings.tmp_dir).iterdir())


def test_too_large_is_refused_from_bytes_and_streams(settings: Settings) -> None:
    data = part10(make_dataset())
    small = settings.model_copy(update={"max_instance_bytes": len(data) - 1})
    with Archive.open(small) as archive:
        for source in (data, __import__("io").BytesIO(data)):
            result = archive.store(source)
            assert result.status is StoreStatus.REJECTED
            assert isinstance(result.error, TooLarge) and result.error.status == 413
        assert blob_files(archive) == []


def test_free_space_floor_refuses_new_data(settings: Settings) -> None:
    full = settings.model_copy(update={"min_free_bytes": 1 << 60})
    with Archive.open(full) as archive:
        result = archive.store(part10(make_dataset()))
    assert isinstance(result.error, OutOfResources)
    assert result.error.dimse_status == 0xA700 and "free" in (result.reason or "")


def test_stream_input_is_spooled_and_stored(settings: Settings) -> None:
    data = part10(make_dataset())
    tiny_spool = settings.model_copy(update={"spool_memory_bytes": 1024})
    with Archive.open(tiny_spool) as archive:
        result = archive.store(__import__("io").BytesIO(data))
        assert result.status is StoreStatus.STORED
        assert archive.read_instance(result.sop_instance_uid or "") == data
        assert not list(archive.settings.tmp_dir.iterdir())


def test_durable_order_before_acknowledgement(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync(file) → rename → fsync(folder) → index commit → answer, for every store."""
    import cloudfilm.storage.fs as fs

    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def spy_fsync(fd: int) -> None:
        kind = "dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"
        calls.append(f"fsync-{kind}")
        real_fsync(fd)

    def spy_replace(src: str, dst: str) -> None:
        calls.append("rename")
        real_replace(src, dst)

    def on_commit(_conn: object) -> None:
        calls.append("commit")

    monkeypatch.setattr(fs.os, "fsync", spy_fsync)
    monkeypatch.setattr(fs.os, "replace", spy_replace)
    event.listen(archive.engine, "commit", on_commit)
    try:
        for _ in range(3):
            calls.clear()
            result = archive.store(part10(make_dataset()))
            assert result.status is StoreStatus.STORED
            calls.append("ack")
            sequence = [c for c in calls if c != "fsync-dir" or "rename" in calls]
            first = sequence.index("fsync-file")
            assert first < sequence.index("rename") < sequence.index("fsync-dir")
            assert sequence.index("fsync-dir") < sequence.index("commit") < sequence.index("ack")
    finally:
        event.remove(archive.engine, "commit", on_commit)
    if archive.engine.dialect.name == "sqlite":
        with archive.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_failed_commit_removes_the_blob(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("index is down")

    monkeypatch.setattr(archive, "_commit_instance", broken)
    result = archive.store(part10(make_dataset()))
    assert result.status is StoreStatus.REJECTED and "index is down" in (result.reason or "")
    assert result.error is not None and result.error.dimse_status == 0xA700
    assert blob_files(archive) == []


def test_derived_counts_follow_adds_and_deletes(archive: Archive) -> None:
    study = generate_uid()
    ct_series, sr_series = generate_uid(), generate_uid()
    ct = [make_dataset(StudyInstanceUID=study, SeriesInstanceUID=ct_series) for _ in range(3)]
    sr = make_dataset(StudyInstanceUID=study, SeriesInstanceUID=sr_series, Modality="SR")
    for ds in [*ct, sr]:
        assert archive.store(part10(ds)).status is StoreStatus.STORED
    row = study_row(archive, study)
    assert (row.num_series, row.num_instances, row.modalities) == (2, 4, "CT\\SR")
    size = row.size_bytes
    assert size == sum(len(part10(ds)) for ds in [*ct, sr])

    archive.delete_instance(ct[0].SOPInstanceUID)
    row = study_row(archive, study)
    assert (row.num_series, row.num_instances) == (2, 3)
    archive.delete_series(sr_series)
    row = study_row(archive, study)
    assert (row.num_series, row.num_instances, row.modalities) == (1, 2, "CT")
    assert len(blob_files(archive)) == 2
    archive.delete_study(study)
    with archive.sessions() as session:
        assert session.execute(select(Instance)).first() is None
        assert session.execute(select(Patient)).first() is None
    assert blob_files(archive) == []
    assert check_archive(archive).consistent_after


def test_delete_patient_removes_all_studies(archive: Archive) -> None:
    for _ in range(2):
        archive.store(part10(make_dataset(PatientID="PX")))
    keep = make_dataset(PatientID="PY")
    archive.store(part10(keep))
    result = archive.delete_patient("PX")
    assert result.instances == 2
    with archive.sessions() as session:
        assert [s.study_uid for s in find_studies(session, StudyQuery())] == [keep.StudyInstanceUID]


def _undeclared_gbk() -> bytes:
    """A file from a Chinese modality that writes GBK without Specific Character Set."""
    ds = make_dataset(PatientID="GBK1", PatientName="AAAAAA^BBBBB")
    ds.SpecificCharacterSet = None  # type: ignore[assignment]
    del ds.SpecificCharacterSet
    raw = part10(ds)
    old = str(ds.PatientName).encode("ascii")
    new = "李^四".encode("gbk")
    # swap the PN value bytes (even length, as PS3.5 requires) and fix its length field
    marker = b"\x10\x00\x10\x00PN" + len(old).to_bytes(2, "little") + old
    assert marker in raw
    padded = new + (b" " if len(new) % 2 else b"")
    return raw.replace(marker, b"\x10\x00\x10\x00PN" + len(padded).to_bytes(2, "little") + padded)


@pytest.mark.parametrize(
    ("name", "expect"),
    [
        ("王^小东", 1),
        ("张^小东", 1),
        ("王^小東", 1),
        ("*小东", 2),
        ("wang*", 2),
        ("李^四", 1),
        ("zhang^xiaodong", 1),
    ],
)
def test_chinese_names_are_found_by_unicode_search(
    archive: Archive, name: str, expect: int
) -> None:
    for file in ("chrX1.dcm", "chrX2.dcm", "chrGB2312.dcm"):  # UTF-8, GB18030, ISO 2022 IR 58
        assert archive.store((CHARSET_DIR / file).read_bytes()).ok
    assert archive.store(_undeclared_gbk()).status is StoreStatus.STORED
    with archive.sessions() as session:
        found = find_studies(session, StudyQuery(patient_name=name))
    assert len(found) == expect, [s.patient_name for s in found]
    for study in found:
        assert "\x1b" not in (study.patient_name or "")  # no stray ISO 2022 escapes


def test_undeclared_gbk_is_decoded_and_noted(archive: Archive) -> None:
    result = archive.store(_undeclared_gbk())
    assert any("GB18030" in w for w in result.warnings)
    row = archive.instance(result.sop_instance_uid or "")
    header = json.loads(row.header_json)
    assert header["00100010"]["Value"][0]["Alphabetic"] == "李^四"
