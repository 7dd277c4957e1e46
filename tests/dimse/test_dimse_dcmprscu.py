"""The virtual film printer with DCMTK's print client: ``dcmpsprt`` renders images into a
Stored Print object and Hardcopy Grayscale Images, ``dcmprscu`` prints them to cloudfilm
(a ``dcmpstat.cfg`` written by the test names cloudfilm as its printer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from dimse_support import Dcmtk
from print_support import PrinterSection, write_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from test_dimse_print import PrintJob, assert_matches, only_sheet, pattern, regions, send_study

from cloudfilm.archive import Archive
from cloudfilm.dimse import DimseServer, Peer, PeerDirectory, Permission
from cloudfilm.film.printed import unmatched_films

pytestmark = pytest.mark.db

CLIENT = "DCMPRSCU"


@pytest.fixture
def printer(dimse: DimseServer, archive: Archive) -> DimseServer:
    PeerDirectory(archive).add(
        Peer(CLIENT, "127.0.0.1", 104, frozenset({Permission.STORE, Permission.PRINT}))
    )
    return dimse


def image_files(folder: Path, count: int) -> list[Path]:
    """Secondary Capture files of ``count`` distinct 8-bit patterns."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.Modality, ds.PatientName, ds.PatientID = "OT", "Print^Test", "PRINT-1"
        pixels = pattern(index)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = pixels.tobytes()
        path = folder / f"image{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def print_with_dcmtk(
    dcmtk: Dcmtk, folder: Path, port: int, *, columns: int, rows: int, film_size: str,
    orientation: str, label: str = "", session_print: bool = False,
) -> list[np.ndarray[Any, Any]]:  # fmt: skip
    """Render the images with dcmpsprt and print them with dcmprscu; the 8-bit images sent,
    in Image Box Position order."""
    cfg = write_config(folder, [PrinterSection("CLOUDFILM", "CLOUDFILM", port)],
                       calling_ae=CLIENT)  # fmt: skip
    images = image_files(folder / "images", columns * rows)
    rendered = dcmtk.run(
        "dcmpsprt", "-c", cfg, "-p", "CLOUDFILM", "--layout", columns, rows,
        "--filmsize", film_size, f"--{orientation.lower()}", *images, cwd=folder,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    (stored_print,) = (folder / "database").glob("SP_*.dcm")
    extra = ["--session-print"] if session_print else []
    if label:
        extra += ["--label", label]
    printed = dcmtk.run("dcmprscu", "-c", cfg, "-p", "CLOUDFILM", *extra, stored_print,
                        cwd=folder)  # fmt: skip
    assert printed.returncode == 0, printed.stdout + printed.stderr
    assert "failed" not in (printed.stdout + printed.stderr).lower()
    boxes = sorted(pydicom.dcmread(stored_print).ImageBoxContentSequence,
                   key=lambda b: int(b.ImageBoxPosition))  # fmt: skip
    sent = []
    for box in boxes:
        uid = box.ReferencedImageSequence[0].ReferencedSOPInstanceUID
        (hardcopy,) = [
            h for h in map(pydicom.dcmread, (folder / "database").glob("HG_*.dcm"))
            if h.SOPInstanceUID == uid
        ]  # fmt: skip
        pixels = np.asarray(hardcopy.pixel_array)
        if int(hardcopy.BitsStored) > 8:  # 12 bits: the printer keeps the top 8
            pixels = pixels >> (int(hardcopy.BitsStored) - 8)
        sent.append(pixels.astype(np.uint8))
    return sent


@pytest.mark.parametrize(
    ("columns", "rows", "film_size", "orientation", "session_print"),
    [
        (2, 2, "14INX17IN", "PORTRAIT", False),
        (3, 2, "14INX17IN", "LANDSCAPE", True),
        (1, 2, "11INX14IN", "PORTRAIT", False),
    ],
)
def test_dcmprscu_prints_a_sheet_into_the_study(
    dcmtk: Dcmtk, tmp_path: Path, archive: Archive, printer: DimseServer,
    columns: int, rows: int, film_size: str, orientation: str, session_print: bool,
) -> None:  # fmt: skip
    study = send_study(printer.port, CLIENT, seed=41)
    sent = print_with_dcmtk(
        dcmtk, tmp_path, printer.port, columns=columns, rows=rows, film_size=film_size,
        orientation=orientation, session_print=session_print,
    )  # fmt: skip
    sheet = only_sheet(archive, study)
    job = PrintJob(list(sent), f"STANDARD\\{columns},{rows}", orientation, film_size)
    pixels = np.asarray(sheet.image.convert("L"))
    landscape = orientation == "LANDSCAPE"
    assert (pixels.shape[1] > pixels.shape[0]) == landscape
    assert sheet.film_size == film_size
    for image, rect in zip(sent, regions(archive, job), strict=True):
        assert_matches(pixels, image, rect)


def test_dcmprscu_label_names_the_study_by_accession(
    dcmtk: Dcmtk, tmp_path: Path, archive: Archive, printer: DimseServer
) -> None:
    wanted = send_study(printer.port, CLIENT, seed=42, accession="ACC-DCMTK-1")
    latest = send_study(printer.port, CLIENT, seed=43)
    print_with_dcmtk(dcmtk, tmp_path, printer.port, columns=1, rows=1, film_size="8INX10IN",
                     orientation="PORTRAIT", label="ACC-DCMTK-1")  # fmt: skip
    assert only_sheet(archive, wanted).film_size == "8INX10IN"
    with pytest.raises(AssertionError):
        only_sheet(archive, latest)


def test_dcmprscu_without_a_study_leaves_an_unmatched_film(
    dcmtk: Dcmtk, tmp_path: Path, archive: Archive, printer: DimseServer
) -> None:
    print_with_dcmtk(dcmtk, tmp_path, printer.port, columns=2, rows=1, film_size="14INX17IN",
                     orientation="PORTRAIT")  # fmt: skip
    (film,) = unmatched_films(archive)
    assert (film.calling_ae, film.display_format, film.images) == (CLIENT, "STANDARD\\2,1", 2)


def test_dcmprscu_from_an_ae_without_print_is_refused(
    dcmtk: Dcmtk, tmp_path: Path, archive: Archive, dimse: DimseServer
) -> None:
    PeerDirectory(archive).add(Peer(CLIENT, "127.0.0.1", 104, frozenset({Permission.STORE})))
    cfg = write_config(tmp_path, [PrinterSection("CLOUDFILM", "CLOUDFILM", dimse.port)],
                       calling_ae=CLIENT)  # fmt: skip
    images = image_files(tmp_path / "images", 1)
    rendered = dcmtk.run("dcmpsprt", "-c", cfg, "-p", "CLOUDFILM", *images, cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    (stored_print,) = (tmp_path / "database").glob("SP_*.dcm")
    printed = dcmtk.run("dcmprscu", "-c", cfg, "-p", "CLOUDFILM", stored_print, cwd=tmp_path)
    assert printed.returncode != 0 or "fail" in (printed.stdout + printed.stderr).lower()
    assert unmatched_films(archive) == []
