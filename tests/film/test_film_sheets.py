"""Film sheets from a study in the archive: choosing images (by hand, key objects, evenly
spaced), storing the sheet as a Secondary Capture of the study, finding and exporting it."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from film_support import correlation, key_object, resized, store_all, synthetic_ct
from PIL import Image
from pydicom.dataset import Dataset
from pypdf import PdfReader

from cloudfilm.archive import Archive
from cloudfilm.core.errors import NotFound, Unprocessable
from cloudfilm.dicom.render import Window, display_pixels
from cloudfilm.dicom.synth import generate_studies
from cloudfilm.film.layout import Orientation, parse_film_size, parse_layout
from cloudfilm.film.sheets import (
    FILM_SERIES,
    SECONDARY_CAPTURE,
    FilmRequest,
    FrameRef,
    compose_film,
    evenly_spaced,
    film_image,
    film_sheets,
    key_object_references,
    select_frames,
    sheet_pdf,
    sheet_png,
    store_film,
)

pytestmark = pytest.mark.db

FILM = parse_film_size("14INX17IN")
MM_PER_POINT = 25.4 / 72


@pytest.fixture
def ct(archive: Archive) -> list[Dataset]:
    return synthetic_ct(archive)


def _request(layout: str = "4x5", **fields: object) -> FilmRequest:
    fields.setdefault("size", FILM)
    return FilmRequest(parse_layout(layout), **fields)  # type: ignore[arg-type]


def _uids(frames: list[FrameRef]) -> list[str]:
    return [f.sop_instance_uid for f in frames]


def test_evenly_spaced_indices() -> None:
    assert evenly_spaced(100, 4) == [12, 37, 62, 87]
    assert evenly_spaced(30, 20) == [0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 23,
                                     24, 26, 27, 29]  # fmt: skip
    assert evenly_spaced(5, 20) == [0, 1, 2, 3, 4]
    assert evenly_spaced(0, 4) == []
    for count, boxes in ((1000, 30), (31, 30), (7, 6)):
        picked = evenly_spaced(count, boxes)
        gaps = np.diff(picked)
        assert len(picked) == boxes and len(set(picked)) == boxes
        assert gaps.max() - gaps.min() <= 1  # as even as whole numbers allow
        assert picked[0] + picked[-1] in (count - 1, count - 2, count)  # centred


def test_evenly_spaced_through_a_series(archive: Archive, ct: list[Dataset]) -> None:
    study, series = ct[0].StudyInstanceUID, ct[0].SeriesInstanceUID
    selection = select_frames(archive, study, _request("3x2", series_uid=series))
    assert selection.source == "series"
    assert _uids(selection.frames) == [ct[i].SOPInstanceUID for i in evenly_spaced(30, 6)]
    first = select_frames(archive, study, _request("3x2", series_uid=series, evenly=False))
    assert _uids(first.frames) == [ds.SOPInstanceUID for ds in ct[:6]]
    # Without a choice: the largest image series, evenly spaced.
    default = select_frames(archive, study, _request("3x2"))
    assert _uids(default.frames) == _uids(selection.frames)
    with pytest.raises(Unprocessable, match=r"series 1\.2\.3 is not in study"):
        select_frames(archive, study, _request(series_uid="1.2.3"))


def test_frames_of_a_multiframe_series_are_spaced_evenly(archive: Archive) -> None:
    (cine,) = store_all(archive, generate_studies(seed=4, modality="US", slices=12))
    selection = select_frames(archive, cine.StudyInstanceUID, _request("2x2"))
    assert [f.frame for f in selection.frames] == [2, 5, 8, 11]
    sheet, _selection, _header = compose_film(archive, cine.StudyInstanceUID, _request("2x2"))
    assert sheet.image.mode == "RGB"


def test_key_object_selection(archive: Archive, ct: list[Dataset]) -> None:
    study = ct[0].StudyInstanceUID
    chosen = [ct[12], ct[3], ct[25], ct[7]]
    (document,) = store_all(archive, [key_object(chosen)])
    assert key_object_references(document) == [(ds.SOPInstanceUID, ()) for ds in chosen]
    expected = [ds.SOPInstanceUID for ds in chosen]
    by_uid = select_frames(archive, study, _request(key_object=document.SOPInstanceUID))
    assert (by_uid.source, _uids(by_uid.frames)) == ("key-object", expected)
    assert _uids(select_frames(archive, study, _request(key_object="latest")).frames) == expected
    # With no choice, the study's latest key object selection is used.
    assert _uids(select_frames(archive, study, _request()).frames) == expected
    # The sheet shows the key images in the document's order.
    window = Window(40, 400)
    sheet, _s, _h = compose_film(
        archive, study, _request("2x2", key_object="latest", window=window, annotations=False)
    )
    for ds, placement in zip(chosen, sheet.placements, strict=True):
        assert placement is not None
        rect = placement.image
        expected_pixels = resized(
            display_pixels(ds, ds.pixel_array, window=window), rect.width, rect.height
        )
        shown = sheet.pixels[rect.y : rect.bottom, rect.x : rect.right]
        assert correlation(shown, expected_pixels) >= 0.99
    with pytest.raises(Unprocessable, match="4 images were chosen but STANDARD\\\\1,3 has 3"):
        select_frames(archive, study, _request("1x3", key_object="latest"))
    with pytest.raises(Unprocessable, match="is not a Key Object Selection document"):
        select_frames(archive, study, _request(key_object=ct[0].SOPInstanceUID))


def test_key_object_frames_and_images_of_other_studies(archive: Archive, ct: list[Dataset]) -> None:
    (cine,) = store_all(archive, generate_studies(seed=5, modality="US", slices=10))
    elsewhere = key_object([cine])
    document = key_object([ct[4], cine, ct[9]], frames={0: [1]})
    document.StudyInstanceUID = ct[0].StudyInstanceUID  # a KOS of the CT study
    store_all(archive, [elsewhere, _with_patient(document, ct[0])])
    selection = select_frames(archive, ct[0].StudyInstanceUID, _request(key_object="latest"))
    assert _uids(selection.frames) == [ct[4].SOPInstanceUID, ct[9].SOPInstanceUID]
    assert any(cine.SOPInstanceUID in note and "left out" in note for note in selection.notes)
    # Frames named in the document; none named means every frame.
    cine_frames = select_frames(archive, cine.StudyInstanceUID, _request(key_object="latest"))
    assert [f.frame for f in cine_frames.frames] == list(range(1, 11))


def _with_patient(document: Dataset, source: Dataset) -> Dataset:
    for keyword in ("PatientID", "PatientName", "StudyDate", "StudyTime", "AccessionNumber"):
        setattr(document, keyword, source.get(keyword))
    return document


def test_images_by_hand(archive: Archive, ct: list[Dataset]) -> None:
    study = ct[0].StudyInstanceUID
    refs = (FrameRef(ct[2].SOPInstanceUID), FrameRef(ct[1].SOPInstanceUID, 1, Window(-600, 1500)))
    selection = select_frames(archive, study, _request("2x1", images=refs, window=Window(40, 80)))
    assert [(f.sop_instance_uid, f.window) for f in selection.frames] == [
        (ct[2].SOPInstanceUID, Window(40, 80)), (ct[1].SOPInstanceUID, Window(-600, 1500)),
    ]  # fmt: skip
    for refs_, message in (
        ((FrameRef("1.2.3"),), "instance 1.2.3 is not in study"),
        ((FrameRef(ct[0].SOPInstanceUID, 2),), "frame 2 of instance .* it has 1 frame"),
        (tuple(FrameRef(ds.SOPInstanceUID) for ds in ct[:3]), "3 images were chosen"),
    ):
        with pytest.raises(Unprocessable, match=message):
            select_frames(archive, study, _request("2x1", images=refs_))
    with pytest.raises(NotFound):
        select_frames(archive, "1.2.3.4", _request())
    with pytest.raises(Unprocessable, match="one way"):
        _request(images=refs, series_uid=ct[0].SeriesInstanceUID)


def test_stored_sheet_reads_back_in_its_study(archive: Archive, ct: list[Dataset]) -> None:
    study = ct[0].StudyInstanceUID
    first = store_film(archive, study, _request("4x5", series_uid=ct[0].SeriesInstanceUID))
    assert (first.status, first.images, first.instance_number) == ("stored", 20, 1)
    second = store_film(archive, study, _request("2x2", size=parse_film_size("A3")))
    assert second.series_uid == first.series_uid and second.instance_number == 2
    ds = pydicom.dcmread(io.BytesIO(archive.read_instance(first.sop_instance_uid)))
    assert ds.SOPClassUID == SECONDARY_CAPTURE == first.sop_class_uid
    assert ds.StudyInstanceUID == study and ds.SeriesInstanceUID == first.series_uid
    assert ds.SeriesDescription == FILM_SERIES
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert (ds.ConversionType, ds.BurnedInAnnotation, ds.Modality) == ("WSD", "YES", "OT")
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    # The Chinese name (stored in GB18030 by the modality) survives, and the patient is the same.
    assert ds.PatientName == ct[0].PatientName
    assert ds.PatientName.ideographic == ct[0].PatientName.ideographic
    assert str(ds.PatientName.ideographic)
    assert (ds.PatientID, ds.AccessionNumber) == (ct[0].PatientID, ct[0].AccessionNumber)
    assert (ds.Rows, ds.Columns) == (2550, 2100)
    assert [float(v) for v in ds.NominalScannedPixelSpacing] == pytest.approx([25.4 / 150] * 2)
    picked = [ct[i].SOPInstanceUID for i in evenly_spaced(30, 20)]
    assert [item.ReferencedSOPInstanceUID for item in ds.SourceImageSequence] == picked
    composed, _s, _h = compose_film(
        archive, study, _request("4x5", series_uid=ct[0].SeriesInstanceUID)
    )
    assert np.array_equal(ds.pixel_array, composed.pixels)  # lossless
    sheets = film_sheets(archive, study)
    assert [s.sop_instance_uid for s in sheets] == [first.sop_instance_uid, second.sop_instance_uid]
    a3 = parse_film_size("A3").pixels(Orientation.PORTRAIT, 150)
    assert (sheets[1].columns, sheets[1].rows) == a3
    # The films are not images to put on film: the default still picks the CT series.
    again = select_frames(archive, study, _request("2x2"))
    assert {f.sop_instance_uid for f in again.frames} <= {d.SOPInstanceUID for d in ct}
    assert film_sheets(archive, "1.2.3") == []


@pytest.mark.parametrize(
    ("size", "orientation", "dpi"),
    [("14INX17IN", Orientation.PORTRAIT, 150), ("A3", Orientation.LANDSCAPE, 100),
     ("11INX14IN", Orientation.PORTRAIT, 200), ("24CMX30CM", Orientation.LANDSCAPE, 120)],
)  # fmt: skip
def test_pdf_and_png_have_the_film_size(
    archive: Archive, ct: list[Dataset], size: str, orientation: Orientation, dpi: int
) -> None:
    film = parse_film_size(size)
    study = ct[0].StudyInstanceUID
    request = _request("2x3", size=film, orientation=orientation, dpi=dpi)
    stored = store_film(archive, study, request)
    exported = film_image(archive, study, stored.sop_instance_uid)
    width_mm, height_mm = film.dimensions_mm(orientation)
    assert (exported.width_mm, exported.height_mm, exported.film_size) == (width_mm, height_mm,
                                                                            size)  # fmt: skip
    page = PdfReader(io.BytesIO(sheet_pdf(exported.image, width_mm, height_mm))).pages[0]
    assert float(page.mediabox.width) * MM_PER_POINT == pytest.approx(width_mm, abs=0.01)
    assert float(page.mediabox.height) * MM_PER_POINT == pytest.approx(height_mm, abs=0.01)
    (embedded,) = page.images
    assert embedded.image.size == film.pixels(orientation, dpi)  # full resolution
    png = Image.open(io.BytesIO(sheet_png(exported.image, exported.dpi)))
    assert png.size == film.pixels(orientation, dpi)
    assert png.info["dpi"] == pytest.approx((dpi, dpi), abs=0.05)  # pHYs: whole pixels per metre
    with pytest.raises(NotFound):
        film_image(archive, study, ct[0].SOPInstanceUID)
