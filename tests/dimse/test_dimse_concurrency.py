"""Eight storescu associations at once, sending overlapping studies: all stored once."""

from __future__ import annotations

import io
import subprocess
import threading
from pathlib import Path

import pydicom
import pydicom.config
import pytest
from dimse_support import Dcmtk, dataset_of, dcmtk_env, stored_dataset
from pydicom.uid import generate_uid

from cloudfilm.archive import Archive
from cloudfilm.dimse import DimseServer
from cloudfilm.index.queries import archive_totals
from cloudfilm.maintenance import check_archive
from support.instances import make_dataset, part10

pytestmark = [pytest.mark.db, pytest.mark.slow]

STUDIES, SERIES, PER_SERIES, SENDERS, EACH = 3, 2, 4, 8, 12


def test_eight_parallel_storescu_associations_store_each_instance_once(
    dcmtk: Dcmtk, dimse: DimseServer, archive: Archive, tmp_path: Path
) -> None:
    files: list[Path] = []
    for s in range(STUDIES):
        study = generate_uid()
        for _ in range(SERIES):
            series = generate_uid()
            for i in range(PER_SERIES):
                ds = make_dataset(StudyInstanceUID=study, SeriesInstanceUID=series,
                                  PatientID=f"PAR{s}", InstanceNumber=i + 1)  # fmt: skip
                del ds[0xFFFCFFFC]  # trailing padding, which storescu would not send
                path = tmp_path / f"{len(files):03d}.dcm"
                path.write_bytes(part10(ds))
                files.append(path)
    total = len(files)
    # sender k sends EACH files starting at 3k: every file goes out several times, at once
    plans = [[files[(3 * k + j) % total] for j in range(EACH)] for k in range(SENDERS)]
    assert archive.settings.dimse_max_associations >= SENDERS
    command = [dcmtk.tool("storescu"), "-aec", "CLOUDFILM", "127.0.0.1", str(dimse.port)]
    procs = [
        subprocess.Popen(
            command + [str(path) for path in plan],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dcmtk_env(),
        )
        for plan in plans
    ]
    outcomes = [p.communicate(timeout=120) for p in procs]
    for proc, (_, err) in zip(procs, outcomes, strict=True):
        assert proc.returncode == 0, err
    sent = {path for plan in plans for path in plan}
    assert len(sent) == total  # every file was sent, most of them by several senders
    with archive.sessions() as session:
        totals = archive_totals(session)
    assert (totals["instances"], totals["series"], totals["studies"]) == (
        total,
        STUDIES * SERIES,
        STUDIES,
    )
    assert archive.counters["stored"] == total
    assert archive.counters["duplicate"] == SENDERS * EACH - total
    for path in files:
        data = path.read_bytes()
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert stored_dataset(archive, uid) == dataset_of(data)
    report = check_archive(archive)
    assert report.consistent_after, report.lines()


def test_concurrent_ingest_leaves_pydicom_settings_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The interleaving eight associations produce, made deterministic with two threads."""
    from cloudfilm.dicom import parse

    data = part10(make_dataset())
    before = pydicom.config.settings.reading_validation_mode
    inside, go_on = threading.Event(), threading.Event()
    read_dataset = parse.read_dataset

    def paused_read(*args: object, **kwargs: object) -> object:
        inside.set()
        go_on.wait(10)
        return read_dataset(*args, **kwargs)

    monkeypatch.setattr(parse, "read_dataset", paused_read)
    with pydicom.config.strict_reading():  # what header_json does, on the storing thread
        other = threading.Thread(target=parse.parse_instance, args=(io.BytesIO(data),))
        other.start()  # another association's store starts parsing meanwhile
        assert inside.wait(10)
    go_on.set()
    other.join(10)
    assert pydicom.config.settings.reading_validation_mode == before
