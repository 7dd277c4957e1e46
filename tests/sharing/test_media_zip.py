"""The download ZIP laid out as DICOM media: DICOMDIR, byte-exact originals, transcoding, memory."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from media_support import dcmread, extract, read_file_set, store_synthetic
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from cloudfilm.archive import Archive
from cloudfilm.dicomweb.lookup import StoredInstance, find_instances
from cloudfilm.sharing.media import MediaSummary, media_zip
from support.instances import make_dataset, part10

pytestmark = pytest.mark.db

_COMPONENT = re.compile(r"^[A-Z0-9_]{1,8}$")


def _instances(archive: Archive, *study_uids: str) -> list[StoredInstance]:
    found: list[StoredInstance] = []
    with archive.engine.connect() as conn:
        for uid in study_uids:
            found += find_instances(conn, uid)
    return found


def test_dicomdir_lists_every_file_byte_exact(archive: Archive, tmp_path: Path) -> None:
    ct = store_synthetic(
        archive, seed=11, slices=4, rows=32, columns=32, studies_per_patient=2, charset="gb18030"
    )
    mr = store_synthetic(
        archive, seed=12, modality="MR", slices=3, rows=32, columns=32, transfer_syntax="rle"
    )
    studies = list(dict.fromkeys(ds.StudyInstanceUID for ds in ct + mr))
    summary = MediaSummary()
    body = media_zip(archive, _instances(archive, *studies), readme="hello", summary=summary)
    zf = extract(body, tmp_path)
    fs = read_file_set(tmp_path)
    assert len(fs) == len(ct) + len(mr) == summary.files
    assert sorted(fs.find_values("PatientID")) == sorted({ct[0].PatientID, mr[0].PatientID})
    assert len(fs.find_values("StudyInstanceUID")) == 3
    for instance in fs:
        path = Path(instance.path)
        assert path.is_file()
        assert path.read_bytes() == archive.read_instance(instance.SOPInstanceUID)
        assert instance.TransferSyntaxUID == dcmread(path).file_meta.TransferSyntaxUID
    names = zf.namelist()
    assert names[0] == "README.TXT" and names[-1] == "DICOMDIR"
    for name in names:
        parts = name.split("/")
        assert len(parts) <= 8 and all(
            _COMPONENT.match(p) for p in [*parts[:-1], parts[-1].replace(".TXT", "")]
        ), name
    # Uncompressed DICOM is deflated, RLE pixel data stored as it is.
    rle_names = {"/".join(i.ReferencedFileID) for i in fs if i.TransferSyntaxUID == RLELossless}
    for info in zf.infolist():
        if info.filename in rle_names:
            assert info.compress_type == zipfile.ZIP_STORED
        elif info.filename.startswith("DICOM/"):
            assert info.compress_type == zipfile.ZIP_DEFLATED


def test_readme_is_bilingual_utf8_with_bom(archive: Archive, tmp_path: Path) -> None:
    ds = store_synthetic(archive, seed=13, slices=1, rows=16, columns=16)[0]
    extract(media_zip(archive, _instances(archive, ds.StudyInstanceUID), readme="说明\nRead me"),
            tmp_path)  # fmt: skip
    raw = (tmp_path / "README.TXT").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and raw.decode("utf-8-sig") == "说明\r\nRead me"


def test_transcode_to_explicit_little_endian(archive: Archive, tmp_path: Path) -> None:
    implicit = store_synthetic(
        archive, seed=14, slices=2, rows=32, columns=32, transfer_syntax="implicit"
    )
    rle = store_synthetic(
        archive, seed=15, modality="MR", slices=2, rows=32, columns=32, transfer_syntax="rle"
    )
    summary = MediaSummary()
    uids = (implicit[0].StudyInstanceUID, rle[0].StudyInstanceUID)
    body = media_zip(
        archive, _instances(archive, *uids), readme="x",
        transfer_syntax=ExplicitVRLittleEndian, summary=summary,
    )  # fmt: skip
    extract(body, tmp_path)
    fs = read_file_set(tmp_path)
    assert summary.transcoded == 4 and not summary.kept_as_stored
    originals = {ds.SOPInstanceUID: ds for ds in implicit + rle}
    for instance in fs:
        assert instance.TransferSyntaxUID == ExplicitVRLittleEndian
        written = dcmread(instance.path)
        assert written.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert written.SOPInstanceUID == instance.SOPInstanceUID
        np.testing.assert_array_equal(
            written.pixel_array, originals[instance.SOPInstanceUID].pixel_array
        )


def test_undecodable_instance_is_kept_as_stored(archive: Archive, tmp_path: Path) -> None:
    mpeg2 = UID("1.2.840.10008.1.2.4.100")  # MPEG2 Main Profile: no decoder here
    ds = make_dataset(Rows=16, Columns=16, BitsAllocated=8, BitsStored=8, HighBit=7,
                      PixelRepresentation=0, SamplesPerPixel=1)  # fmt: skip
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = mpeg2
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert archive.store(buffer.getvalue()).ok
    summary = MediaSummary()
    body = media_zip(
        archive, _instances(archive, ds.StudyInstanceUID), readme="x",
        transfer_syntax=ExplicitVRLittleEndian, summary=summary,
    )  # fmt: skip
    extract(body, tmp_path)
    (instance,) = list(read_file_set(tmp_path))
    assert summary.kept_as_stored == [ds.SOPInstanceUID]
    assert instance.TransferSyntaxUID == mpeg2
    assert Path(instance.path).read_bytes() == archive.read_instance(ds.SOPInstanceUID)


def test_instance_deleted_while_streaming_is_left_out(archive: Archive, tmp_path: Path) -> None:
    stored = store_synthetic(archive, seed=16, slices=3, rows=16, columns=16)
    listed = _instances(archive, stored[0].StudyInstanceUID)
    archive.delete_instance(stored[1].SOPInstanceUID)
    summary = MediaSummary()
    extract(media_zip(archive, listed, readme="x", summary=summary), tmp_path)
    fs = read_file_set(tmp_path)
    assert {i.SOPInstanceUID for i in fs} == {stored[0].SOPInstanceUID, stored[2].SOPInstanceUID}
    assert summary.missing == [stored[1].SOPInstanceUID]


def test_level_zero_stores_everything(archive: Archive, tmp_path: Path) -> None:
    ds = store_synthetic(archive, seed=17, slices=2, rows=16, columns=16)[0]
    zf = extract(
        media_zip(archive, _instances(archive, ds.StudyInstanceUID), readme="x", deflate_level=0),
        tmp_path,
    )
    assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}


@pytest.mark.skipif(shutil.which("dcmmkdir") is None, reason="needs DCMTK's dcmmkdir")
def test_dcmtk_finds_every_file_in_the_directory(archive: Archive, tmp_path: Path) -> None:
    stored = store_synthetic(archive, seed=18, slices=3, rows=16, columns=16)
    extract(media_zip(archive, _instances(archive, stored[0].StudyInstanceUID), readme="x"),
            tmp_path)  # fmt: skip
    files = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "DICOM").rglob("IM*"))
    # Appending files already listed: DCMTK loads the record tree through its offsets and
    # finds each SOP instance there (General Purpose CD-R profile checks included).
    out = subprocess.run(
        ["dcmmkdir", "-v", "+A", "+id", str(tmp_path), *files],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    )  # fmt: skip
    assert out.stderr.count("directory record for this SOP instance already exists") == 3
    assert "E:" not in out.stderr


def _big_instance(folder: Path, study: str, frames: int) -> Path:
    """A multi-frame 512×512 16-bit instance written to a file (never held in memory)."""
    ds = make_dataset(StudyInstanceUID=study, Rows=512, Columns=512, NumberOfFrames=frames)
    del ds.PixelData
    header = part10(ds, ImplicitVRLittleEndian)
    length = frames * 512 * 512 * 2
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    rng = np.random.default_rng(frames)
    with path.open("wb") as fh:
        fh.write(header + b"\xe0\x7f\x10\x00" + length.to_bytes(4, "little"))
        for _ in range(frames):
            fh.write(rng.integers(0, 4096, 512 * 512, dtype=np.uint16).tobytes())
    return path


def test_memory_stays_bounded_for_a_large_study(archive: Archive, tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.99"
    for frames in (80, 80, 80):  # 3 × 40 MiB
        path = _big_instance(tmp_path, study, frames)
        with path.open("rb") as fh:
            assert archive.store(fh).ok
        path.unlink()
    instances = _instances(archive, study)
    total = sum(i.size_bytes for i in instances)
    assert total > 120 * 1024 * 1024
    streamed = 0
    tracemalloc.start()
    try:
        for chunk in media_zip(archive, instances, readme="x"):
            streamed += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert streamed > total // 2  # 12-bit noise in 16-bit words deflates to about 3/4
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while streaming"
