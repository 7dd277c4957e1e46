"""The virtual film printer: pynetdicom as a real Print SCU against the live DIMSE server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import select

from cloudfilm.archive import Archive
from cloudfilm.audit import trail_for
from cloudfilm.dicom.synth import generate_studies
from cloudfilm.dimse import DimseServer, Peer, PeerDirectory, Permission
from cloudfilm.dimse.printing import (
    ANNOTATION_BOX,
    BASIC_FILM_BOX,
    BASIC_FILM_SESSION,
    COLOR_IMAGE_BOX,
    COLOR_META,
    GRAYSCALE_IMAGE_BOX,
    GRAYSCALE_META,
    PRINTER,
    PRINTER_INSTANCE,
)
from cloudfilm.film.compose import SheetStyle, sheet_layout
from cloudfilm.film.layout import (
    Orientation,
    fit_image,
    parse_display_format,
    parse_film_size,
)
from cloudfilm.film.printed import attach, unmatched_film_png, unmatched_films
from cloudfilm.film.sheets import film_image, film_sheets
from cloudfilm.index.models import AuditEvent, Instance

pytestmark = pytest.mark.db

S, P = Permission.STORE, Permission.PRINT
MODALITY = "MODALITY"


@pytest.fixture
def printer(dimse: DimseServer, archive: Archive) -> DimseServer:
    """The live server, with a modality allowed to store and print, and one only to store."""
    directory = PeerDirectory(archive)
    directory.add(Peer(MODALITY, "127.0.0.1", 104, frozenset({S, P})))
    directory.add(Peer("OTHERCT", "127.0.0.1", 104, frozenset({S, P})))
    directory.add(Peer("NOPRINT", "127.0.0.1", 104, frozenset({S})))
    return dimse


# ------------------------------------------------------------------------------ helpers


def pattern(index: int, rows: int = 60, columns: int = 80) -> np.ndarray[Any, Any]:
    """A smooth 8-bit image that differs from one index to the next."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float64)
    angle = 0.7 + index * 1.3
    wave = np.sin((x * np.cos(angle) + y * np.sin(angle)) / (6 + 3 * index))
    ramp = (x / columns if index % 2 else y / rows) - 0.5
    values = 127.5 + 90 * wave + 60 * ramp
    return np.clip(values, 0, 255).astype(np.uint8)


def send_study(port: int, ae_title: str, *, seed: int, accession: str = "") -> str:
    """C-STORE a small synthetic CT study from ``ae_title``; its Study Instance UID."""
    datasets = list(generate_studies(seed=seed, slices=2, rows=32, columns=32))
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(datasets[0].SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CLOUDFILM")
    assert assoc.is_established
    try:
        for ds in datasets:
            if accession:
                ds.AccessionNumber = accession
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    return str(datasets[0].StudyInstanceUID)


@dataclass
class PrintJob:
    """What to print: images (None leaves a box empty) and how."""

    images: list[np.ndarray[Any, Any] | None]
    display_format: str = "STANDARD\\2,2"
    orientation: str = "PORTRAIT"
    film_size: str = "14INX17IN"
    label: str = ""
    color: bool = False
    #: Per position: "MONOCHROME1", "12BIT", "REVERSE".
    variants: dict[int, str] = field(default_factory=dict)
    annotations: list[str] = field(default_factory=list)


@dataclass
class PrintOutcome:
    statuses: dict[str, int] = field(default_factory=dict)
    image_boxes: list[str] = field(default_factory=list)


def image_item(pixels: np.ndarray[Any, Any], variant: str = "") -> Dataset:
    item = Dataset()
    item.Rows, item.Columns = pixels.shape[:2]
    item.PixelRepresentation = 0
    if pixels.ndim == 3:  # RGB, colour-by-plane (planar configuration 1)
        item.SamplesPerPixel = 3
        item.PhotometricInterpretation = "RGB"
        item.PlanarConfiguration = 1
        item.BitsAllocated, item.BitsStored, item.HighBit = 8, 8, 7
        item.PixelData = np.ascontiguousarray(pixels.transpose(2, 0, 1)).tobytes()
        return item
    item.SamplesPerPixel = 1
    item.PhotometricInterpretation = "MONOCHROME2"
    if variant == "12BIT":
        item.BitsAllocated, item.BitsStored, item.HighBit = 16, 12, 11
        item.PixelData = (pixels.astype("<u2") * 16 + 8).tobytes()
        return item
    if variant == "MONOCHROME1":
        item.PhotometricInterpretation = "MONOCHROME1"
        pixels = 255 - pixels
    item.BitsAllocated, item.BitsStored, item.HighBit = 8, 8, 7
    item.PixelData = pixels.astype(np.uint8).tobytes()
    return item


def associate(port: int, ae_title: str = MODALITY, *, color: bool = False) -> Any:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(COLOR_META if color else GRAYSCALE_META, ImplicitVRLittleEndian)
    ae.add_requested_context(ANNOTATION_BOX, ImplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title="CLOUDFILM")


def run_print(
    port: int, job: PrintJob, ae_title: str = MODALITY, *, abort_before_print: bool = False
) -> PrintOutcome:
    """A whole print session as a modality runs it; statuses by step."""
    outcome = PrintOutcome()
    meta = COLOR_META if job.color else GRAYSCALE_META
    assoc = associate(port, ae_title, color=job.color)
    assert assoc.is_established
    try:
        st, printer = assoc.send_n_get(
            [Tag("PrinterStatus")], PRINTER, PRINTER_INSTANCE, meta_uid=meta
        )
        outcome.statuses["printer"] = st.Status
        assert printer.PrinterStatus == "NORMAL"
        session = Dataset()
        session.NumberOfCopies = "1"
        session.MediumType = "BLUE FILM"
        if job.label:
            session.FilmSessionLabel = job.label
        session_uid = generate_uid()
        st, _ = assoc.send_n_create(session, BASIC_FILM_SESSION, session_uid, meta_uid=meta)
        outcome.statuses["session"] = st.Status
        box = Dataset()
        box.ImageDisplayFormat = job.display_format
        box.FilmOrientation = job.orientation
        box.FilmSizeID = job.film_size
        box.MagnificationType = "BILINEAR"
        box.BorderDensity = "WHITE"
        box.EmptyImageDensity = "BLACK"
        if job.annotations:
            box.AnnotationDisplayFormatID = "LABELS"
        reference = Dataset()
        reference.ReferencedSOPClassUID = BASIC_FILM_SESSION
        reference.ReferencedSOPInstanceUID = session_uid
        box.ReferencedFilmSessionSequence = [reference]
        box_uid = generate_uid()
        st, film_box = assoc.send_n_create(box, BASIC_FILM_BOX, box_uid, meta_uid=meta)
        outcome.statuses["film-box"] = st.Status
        if st.Status != 0x0000:
            return outcome
        image_class = COLOR_IMAGE_BOX if job.color else GRAYSCALE_IMAGE_BOX
        for item in film_box.ReferencedImageBoxSequence:
            assert item.ReferencedSOPClassUID == image_class
            outcome.image_boxes.append(str(item.ReferencedSOPInstanceUID))
        for position, (uid, pixels) in enumerate(
            zip(outcome.image_boxes, job.images, strict=False), start=1
        ):
            if pixels is None:
                continue
            variant = job.variants.get(position, "")
            changes = Dataset()
            changes.ImageBoxPosition = position
            if variant == "REVERSE":
                changes.Polarity = "REVERSE"
            sequence = "BasicColorImageSequence" if job.color else "BasicGrayscaleImageSequence"
            setattr(changes, sequence, [image_item(pixels, variant)])
            st, _ = assoc.send_n_set(changes, image_class, uid, meta_uid=meta)
            outcome.statuses[f"image-{position}"] = st.Status
        annotation_items = film_box.get("ReferencedBasicAnnotationBoxSequence") or []
        for position, (item, text) in enumerate(
            zip(annotation_items, job.annotations, strict=False), start=1
        ):
            changes = Dataset()
            changes.AnnotationPosition = position
            changes.TextString = text
            st, _ = assoc.send_n_set(changes, ANNOTATION_BOX, item.ReferencedSOPInstanceUID)
            outcome.statuses[f"annotation-{position}"] = st.Status
        if abort_before_print:
            assoc.abort()
            return outcome
        st, _ = assoc.send_n_action(None, 1, BASIC_FILM_BOX, box_uid, meta_uid=meta)
        outcome.statuses["print"] = st.Status
        st = assoc.send_n_delete(BASIC_FILM_SESSION, session_uid, meta_uid=meta)
        outcome.statuses["delete"] = st.Status
    finally:
        if assoc.is_established:
            assoc.release()
    return outcome


def only_sheet(archive: Archive, study_uid: str) -> Any:
    sheets = film_sheets(archive, study_uid)
    assert len(sheets) == 1
    return film_image(archive, study_uid, sheets[0].sop_instance_uid)


def regions(archive: Archive, job: PrintJob) -> list[tuple[int, int, int, int]]:
    """Where each sent image lands on the sheet: (x, y, width, height)."""
    style = SheetStyle(dpi=archive.settings.film_dpi)
    cells = sheet_layout(
        parse_display_format(job.display_format),
        parse_film_size(job.film_size),
        Orientation(job.orientation),
        style,
        header=False,
    ).cells
    found = []
    for cell, pixels in zip(cells, job.images, strict=False):
        if pixels is None:
            found.append((0, 0, 0, 0))
            continue
        rect = fit_image(pixels.shape[1], pixels.shape[0], cell)
        found.append((rect.x, rect.y, rect.width, rect.height))
    return found


def assert_matches(sheet: np.ndarray[Any, Any], sent: np.ndarray[Any, Any], rect: Any) -> None:
    """The sheet region shows the image sent (correlation after resizing, and mean)."""
    from PIL import Image

    x, y, width, height = rect
    inner = sheet[y + 2 : y + height - 2, x + 2 : x + width - 2].astype(np.float64)
    mode = "RGB" if sent.ndim == 3 else "L"
    expected = np.asarray(
        Image.fromarray(sent, mode).resize((width, height), Image.Resampling.BILINEAR)
    )[2:-2, 2:-2].astype(np.float64)
    assert inner.shape == expected.shape
    assert abs(inner.mean() - expected.mean()) < 4
    correlation = np.corrcoef(inner.ravel(), expected.ravel())[0, 1]
    assert correlation > 0.97, correlation


# --------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    ("display_format", "orientation", "count"),
    [("STANDARD\\2,2", "PORTRAIT", 4), ("STANDARD\\1,1", "LANDSCAPE", 1)],
)
def test_grayscale_sheet_shows_each_image_at_its_position(
    printer: DimseServer, archive: Archive, display_format: str, orientation: str, count: int
) -> None:
    study_uid = send_study(printer.port, MODALITY, seed=11)
    job = PrintJob([pattern(i) for i in range(count)], display_format, orientation)
    outcome = run_print(printer.port, job)
    assert set(outcome.statuses.values()) == {0x0000}, outcome.statuses
    film = only_sheet(archive, study_uid)
    assert film.film_size == "14INX17IN"
    width, height = film.image.size
    assert (width > height) == (orientation == "LANDSCAPE")
    pixels = np.asarray(film.image)
    for sent, rect in zip(job.images, regions(archive, job), strict=True):
        assert sent is not None
        assert_matches(pixels, sent, rect)
    # Border density WHITE around the boxes.
    assert pixels[1, 1] == 255


def test_grayscale_variants_12_bit_monochrome1_reverse_and_empty_box(
    printer: DimseServer, archive: Archive
) -> None:
    study_uid = send_study(printer.port, MODALITY, seed=12)
    images = [pattern(0), pattern(1), pattern(2), None]
    job = PrintJob(images, variants={1: "12BIT", 2: "MONOCHROME1", 3: "REVERSE"})
    outcome = run_print(printer.port, job)
    assert set(outcome.statuses.values()) == {0x0000}, outcome.statuses
    pixels = np.asarray(only_sheet(archive, study_uid).image)
    rects = regions(archive, job)
    assert_matches(pixels, pattern(0), rects[0])
    assert_matches(pixels, pattern(1), rects[1])  # MONOCHROME1 sent inverted, shown right
    assert_matches(pixels, 255 - pattern(2), rects[2])  # Polarity REVERSE
    cells = sheet_layout(
        parse_display_format(job.display_format),
        parse_film_size(job.film_size),
        Orientation.PORTRAIT,
        SheetStyle(dpi=archive.settings.film_dpi),
        header=False,
    ).cells
    empty = cells[3]
    assert pixels[empty.y + 5 : empty.bottom - 5, empty.x + 5 : empty.right - 5].max() == 0


def test_color_sheet_planar_configuration_1(printer: DimseServer, archive: Archive) -> None:
    study_uid = send_study(printer.port, MODALITY, seed=13)
    images = [np.stack([pattern(i), pattern(i + 1), pattern(i + 2)], axis=-1) for i in range(4)]
    job = PrintJob(list(images), "STANDARD\\2,2", "LANDSCAPE", color=True)
    outcome = run_print(printer.port, job)
    assert set(outcome.statuses.values()) == {0x0000}, outcome.statuses
    film = only_sheet(archive, study_uid)
    assert film.image.mode == "RGB"
    pixels = np.asarray(film.image)
    for sent, rect in zip(images, regions(archive, job), strict=True):
        for channel in range(3):
            assert_matches(pixels[..., channel], sent[..., channel], rect)


def test_sheet_goes_to_the_study_the_ae_sent_last(printer: DimseServer, archive: Archive) -> None:
    archive.settings.print_match_margin_seconds = 0  # the studies arrive milliseconds apart
    older = send_study(printer.port, MODALITY, seed=21)
    other = send_study(printer.port, "OTHERCT", seed=22)
    latest = send_study(printer.port, MODALITY, seed=23)
    assert run_print(printer.port, PrintJob([pattern(0)])).statuses["print"] == 0x0000
    assert len(film_sheets(archive, latest)) == 1
    assert film_sheets(archive, older) == [] and film_sheets(archive, other) == []
    assert trail_for(archive).flush(timeout=30)
    with archive.engine.connect() as conn:
        sources = conn.execute(select(Instance.source).where(Instance.source.like("print:%")))
        assert list(sources.scalars()) == [f"print:{MODALITY}"]
        audited = conn.execute(
            select(AuditEvent.outcome, AuditEvent.study_uid, AuditEvent.actor_id).where(
                AuditEvent.action == "print"
            )
        ).all()
    assert [tuple(row) for row in audited] == [("success", latest, MODALITY)]


def test_film_session_label_equal_to_an_accession_number_wins(
    printer: DimseServer, archive: Archive
) -> None:
    labelled = send_study(printer.port, "OTHERCT", seed=31, accession="ACC-7781")
    latest = send_study(printer.port, MODALITY, seed=32)
    outcome = run_print(printer.port, PrintJob([pattern(1)], "STANDARD\\1,1", label="ACC-7781"))
    assert outcome.statuses["print"] == 0x0000
    assert len(film_sheets(archive, labelled)) == 1
    assert film_sheets(archive, latest) == []


def test_without_a_candidate_the_sheet_waits_and_can_be_attached(
    printer: DimseServer, archive: Archive
) -> None:
    study_uid = send_study(printer.port, "OTHERCT", seed=41)  # not the printing AE
    job = PrintJob([pattern(0), pattern(1)], "STANDARD\\2,1")
    assert run_print(printer.port, job).statuses["print"] == 0x0000
    assert film_sheets(archive, study_uid) == []
    (waiting,) = unmatched_films(archive)
    assert waiting.calling_ae == MODALITY and waiting.images == 2
    assert unmatched_film_png(archive, waiting.id).startswith(b"\x89PNG")
    stored = attach(archive, waiting.id, study_uid)
    assert stored.study_uid == study_uid
    assert unmatched_films(archive) == []
    pixels = np.asarray(only_sheet(archive, study_uid).image)
    for sent, rect in zip(job.images, regions(archive, job), strict=True):
        assert sent is not None
        assert_matches(pixels, sent, rect)


def test_two_studies_sent_together_are_ambiguous(printer: DimseServer, archive: Archive) -> None:
    first = send_study(printer.port, MODALITY, seed=51)
    second = send_study(printer.port, MODALITY, seed=52)
    assert run_print(printer.port, PrintJob([pattern(0)])).statuses["print"] == 0x0000
    (waiting,) = unmatched_films(archive)
    assert set(waiting.candidates) == {first, second}


def test_annotations_are_printed_in_a_band(printer: DimseServer, archive: Archive) -> None:
    study_uid = send_study(printer.port, MODALITY, seed=61)
    job = PrintJob([pattern(0)], "STANDARD\\1,1", annotations=["ZHANG SAN", "CT 2026-12-09"])
    outcome = run_print(printer.port, job)
    assert set(outcome.statuses.values()) == {0x0000}, outcome.statuses
    film = only_sheet(archive, study_uid)
    pixels = np.asarray(film.image)
    band = pixels[20:90, 20:600]  # the header band at the top, left text: not all border
    assert (band < 128).any() and (band > 128).any()


def test_aborted_before_print_stores_nothing(printer: DimseServer, archive: Archive) -> None:
    study_uid = send_study(printer.port, MODALITY, seed=71)
    outcome = run_print(printer.port, PrintJob([pattern(0)]), abort_before_print=True)
    assert outcome.statuses["image-1"] == 0x0000
    assert film_sheets(archive, study_uid) == []
    assert unmatched_films(archive) == []


def test_a_peer_without_print_is_refused(printer: DimseServer, archive: Archive) -> None:
    ae = AE(ae_title="NOPRINT")
    ae.add_requested_context(GRAYSCALE_META, ImplicitVRLittleEndian)
    ae.add_requested_context("1.2.840.10008.1.1", ImplicitVRLittleEndian)  # Verification
    assoc = ae.associate("127.0.0.1", printer.port, ae_title="CLOUDFILM")
    assert assoc.is_established
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        assert accepted == {"1.2.840.10008.1.1"}  # the print context is refused
    finally:
        if assoc.is_established:
            assoc.release()


@pytest.fixture
def session(printer: DimseServer) -> Iterator[tuple[Any, str]]:
    """An open association with a film session."""
    assoc = associate(printer.port)
    assert assoc.is_established
    ds = Dataset()
    ds.NumberOfCopies = "1"
    session_uid = generate_uid()
    st, _ = assoc.send_n_create(ds, BASIC_FILM_SESSION, session_uid, meta_uid=GRAYSCALE_META)
    assert st.Status == 0x0000
    try:
        yield assoc, session_uid
    finally:
        if assoc.is_established:
            assoc.release()


def film_box_request(session_uid: str, **attributes: str) -> Dataset:
    box = Dataset()
    for keyword, value in attributes.items():
        setattr(box, keyword, value)
    reference = Dataset()
    reference.ReferencedSOPClassUID = BASIC_FILM_SESSION
    reference.ReferencedSOPInstanceUID = session_uid
    box.ReferencedFilmSessionSequence = [reference]
    return box


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({}, 0x0120),  # Image Display Format missing
        ({"ImageDisplayFormat": "SLIDE"}, 0x0106),
        ({"ImageDisplayFormat": "STANDARD\\x,2"}, 0x0106),
        ({"ImageDisplayFormat": "STANDARD\\2,2", "FilmSizeID": "99INX99IN"}, 0x0106),
        ({"ImageDisplayFormat": "STANDARD\\2,2", "FilmOrientation": "DIAGONAL"}, 0x0106),
        ({"ImageDisplayFormat": "STANDARD\\2,2", "MagnificationType": "ZOOM"}, 0x0106),
        ({"ImageDisplayFormat": "STANDARD\\2,2", "BorderDensity": "GREY"}, 0x0106),
        ({"ImageDisplayFormat": "STANDARD\\16,16"}, 0x0213),  # 256 boxes > 64
    ],
)
def test_bad_film_box_attributes_get_standard_statuses(
    session: tuple[Any, str], attributes: dict[str, str], expected: int
) -> None:
    assoc, session_uid = session
    request = film_box_request(session_uid, **attributes)
    st, _ = assoc.send_n_create(request, BASIC_FILM_BOX, meta_uid=GRAYSCALE_META)
    assert st.Status == expected


def test_bad_requests_get_standard_statuses(session: tuple[Any, str]) -> None:
    assoc, session_uid = session
    meta = GRAYSCALE_META
    bad = Dataset()
    bad.NumberOfCopies = "0"
    st, _ = assoc.send_n_set(bad, BASIC_FILM_SESSION, session_uid, meta_uid=meta)
    assert st.Status == 0x0106
    st, _ = assoc.send_n_get([], PRINTER, "1.2.3.4", meta_uid=meta)
    assert st.Status == 0x0112
    st, _ = assoc.send_n_action(None, 1, BASIC_FILM_SESSION, session_uid, meta_uid=meta)
    assert st.Status == 0xC600  # no film box yet
    box_request = film_box_request(session_uid, ImageDisplayFormat="STANDARD\\1,2")
    box_uid = generate_uid()
    st, box = assoc.send_n_create(box_request, BASIC_FILM_BOX, box_uid, meta_uid=meta)
    assert st.Status == 0x0000
    image_uid = box.ReferencedImageBoxSequence[0].ReferencedSOPInstanceUID
    st, _ = assoc.send_n_action(None, 7, BASIC_FILM_BOX, box_uid, meta_uid=meta)
    assert st.Status == 0x0123
    st, _ = assoc.send_n_action(None, 1, BASIC_FILM_BOX, box_uid, meta_uid=meta)
    assert st.Status == 0xB603  # empty page: nothing stored
    st, _ = assoc.send_n_get([], BASIC_FILM_BOX, box_uid, meta_uid=meta)
    assert st.Status == 0x0211
    wrong_position = Dataset()
    wrong_position.ImageBoxPosition = 2
    wrong_position.BasicGrayscaleImageSequence = [image_item(pattern(0))]
    st, _ = assoc.send_n_set(wrong_position, GRAYSCALE_IMAGE_BOX, image_uid, meta_uid=meta)
    assert st.Status == 0x0106
    no_pixels = Dataset()
    no_pixels.ImageBoxPosition = 1
    item = image_item(pattern(0))
    del item.Rows
    no_pixels.BasicGrayscaleImageSequence = [item]
    st, _ = assoc.send_n_set(no_pixels, GRAYSCALE_IMAGE_BOX, image_uid, meta_uid=meta)
    assert st.Status == 0x0121
    colour = Dataset()
    colour.ImageBoxPosition = 1
    colour.BasicGrayscaleImageSequence = [image_item(np.zeros((4, 4, 3), np.uint8))]
    st, _ = assoc.send_n_set(colour, GRAYSCALE_IMAGE_BOX, image_uid, meta_uid=meta)
    assert st.Status == 0x0106
    st, _ = assoc.send_n_set(colour, GRAYSCALE_IMAGE_BOX, "1.2.3.999", meta_uid=meta)
    assert st.Status == 0x0112
    st = assoc.send_n_delete(BASIC_FILM_BOX, box_uid, meta_uid=meta)
    assert st.Status == 0x0000
    st = assoc.send_n_delete(BASIC_FILM_BOX, box_uid, meta_uid=meta)
    assert st.Status == 0x0112


def test_memory_limit_per_association(archive: Archive, printer: DimseServer) -> None:
    archive.settings.print_max_bytes = 1024 * 1024
    assoc = associate(printer.port)
    meta = GRAYSCALE_META
    try:
        session_uid = generate_uid()
        st, _ = assoc.send_n_create(None, BASIC_FILM_SESSION, session_uid, meta_uid=meta)
        box_request = film_box_request(session_uid, ImageDisplayFormat="STANDARD\\1,1")
        box_request.FilmSizeID = "14INX17IN"
        st, box = assoc.send_n_create(box_request, BASIC_FILM_BOX, meta_uid=meta)
        image_uid = box.ReferencedImageBoxSequence[0].ReferencedSOPInstanceUID
        big = Dataset()
        big.ImageBoxPosition = 1
        big.BasicGrayscaleImageSequence = [image_item(pattern(0, 1500, 1500))]
        st, _ = assoc.send_n_set(big, GRAYSCALE_IMAGE_BOX, image_uid, meta_uid=meta)
        assert st.Status == 0xC605
    finally:
        assoc.release()


def test_cli_lists_and_attaches_unmatched_films(
    printer: DimseServer, archive: Archive, cli_env: dict[str, str]
) -> None:
    import json
    import os

    from typer.testing import CliRunner

    from cloudfilm.cli import app

    def cli(*args: str) -> tuple[int, str]:
        unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("CLOUDFILM_")}
        result = CliRunner().invoke(app, list(args), env={**unset, **cli_env})
        return result.exit_code, result.output

    study_uid = send_study(printer.port, "OTHERCT", seed=81)
    assert (
        run_print(printer.port, PrintJob([pattern(0)], label="NO-SUCH-ACC")).statuses["print"]
        == 0x0000
    )
    code, out = cli("films", "unmatched", "--json")
    assert code == 0, out
    (listed,) = json.loads(out)
    assert listed["calling_ae"] == MODALITY and listed["film_session_label"] == "NO-SUCH-ACC"
    code, out = cli("films", "attach", str(listed["id"]), "1.2.3.404")
    assert code == 1 and "not found" in out
    code, out = cli("films", "attach", str(listed["id"]), study_uid, "--json")
    assert code == 0, out
    assert json.loads(out)["study_uid"] == study_uid
    assert len(film_sheets(archive, study_uid)) == 1
    code, out = cli("films", "attach", str(listed["id"]), study_uid)
    assert code == 1 and "already" in out
    code, out = cli("films", "unmatched", "--json")
    assert json.loads(out) == []
