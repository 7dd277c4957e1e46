"""Film sheets made from a study in the archive: choose the images, compose, store, find.

Images are chosen

* **by hand**: SOP Instance UIDs with frame numbers (1-based, as Referenced Frame Number);
* **from a Key Object Selection document** (PS3.3 A.59) of the study: the IMAGE items of its
  content tree in document order (each Referenced Frame Number, or every frame when none is
  given), else the instances of its Current Requested Procedure Evidence Sequence;
* **evenly spaced through a series**: with N boxes and M frames, frame ``floor((i + ½)·M/N)``
  for box ``i`` (all M when M ≤ N), frames in Instance Number order.

With no choice given, the latest Key Object Selection of the study is used, else the image
series with the most frames, evenly spaced.

Each image is rendered with its window: the request's (explicit centre/width or a preset name of
:data:`cloudfilm.dicom.render.WINDOW_PRESETS`), else the image's own.

A sheet is stored as a Secondary Capture Image (PS3.3 A.8.1, made with highdicom) in the study:
Image Type ``DERIVED\\SECONDARY``, Conversion Type ``WSD``, 8-bit MONOCHROME2 (RGB when an image
is in colour), RLE Lossless. Patient and study attributes are copied from a stored instance of
the study (the helpers of :mod:`cloudfilm.sharing.reports`), written in UTF-8. All sheets of a
study go into one series whose Series Description is ``Film`` (:data:`FILM_SERIES`), which is
how :func:`film_sheets` finds them; Nominal Scanned Pixel Spacing (0018,2010) holds the size of
a sheet pixel on the film (25.4 mm / dpi), from which the film size is found again on export,
and the index keeps its Film Size ID (``Instance.film_size``, for the figures of film saved);
Source Image Sequence lists the images shown. Burned In Annotation is ``YES`` when the sheet
carries the patient's name.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless, generate_uid
from sqlalchemy import Select, func, select, update

from cloudfilm import __version__
from cloudfilm.archive import Archive
from cloudfilm.core.errors import CloudFilmError, NotFound, StorageFailure, Unprocessable
from cloudfilm.dicom.frames import FrameReader, read_header
from cloudfilm.dicom.render import Window
from cloudfilm.dicomweb.lookup import StoredInstance, find_instances
from cloudfilm.film.compose import (
    CellImage,
    ComposedSheet,
    SheetStyle,
    cell_from_frame,
    compose_sheet,
    sheet_layout,
    sheet_text,
)
from cloudfilm.film.layout import (
    MM_PER_INCH,
    DisplayFormat,
    FilmSize,
    Magnification,
    Orientation,
    match_film_size,
)
from cloudfilm.index.models import Instance, Series, Study
from cloudfilm.sharing.reports import normalised_header, study_context

logger = logging.getLogger(__name__)

__all__ = [
    "FILM_SERIES",
    "SECONDARY_CAPTURE",
    "FilmImage",
    "FilmRequest",
    "FilmSheet",
    "FrameRef",
    "Selection",
    "StoredFilm",
    "compose_film",
    "evenly_spaced",
    "film_image",
    "film_sheets",
    "key_object_references",
    "select_frames",
    "sheet_pdf",
    "sheet_png",
    "store_film",
    "store_sheet",
]

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
#: Series Description of the series holding a study's film sheets.
FILM_SERIES = "Film"
UTF8 = "ISO_IR 192"
MANUFACTURER = "cloudfilm"
_Query = TypeVar("_Query", bound="Select[*tuple[Any, ...]]")  # a string: 2.0 has Select[tuple]


@dataclass(frozen=True)
class FrameRef:
    """One image for a box: an instance, its frame (1-based) and, optionally, its window."""

    sop_instance_uid: str
    frame: int = 1
    window: Window | None = None


@dataclass(frozen=True)
class FilmRequest:
    """What a film sheet is made of. Give at most one of ``images``, ``series_uid`` and
    ``key_object`` (a SOP Instance UID, or ``"latest"``); none picks a default (module notes)."""

    display_format: DisplayFormat
    size: FilmSize
    orientation: Orientation = Orientation.PORTRAIT
    images: tuple[FrameRef, ...] = ()
    series_uid: str | None = None
    #: With ``series_uid``: evenly spaced (True) or the first images in order (False).
    evenly: bool = True
    key_object: str | None = None
    #: Window of every image without its own; None: each image's own window.
    window: Window | None = None
    annotations: bool = True
    magnification: Magnification = Magnification.CUBIC
    #: Sheet resolution in dots per inch; None: the ``film_dpi`` setting.
    dpi: float | None = None
    border: int = 0
    empty: int = 0

    def __post_init__(self) -> None:
        given = [bool(self.images), self.series_uid is not None, self.key_object is not None]
        if sum(given) > 1:
            raise Unprocessable("choose the images one way: images, series or key_object")


@dataclass(frozen=True)
class Selection:
    """The images chosen, how, and anything the caller should know."""

    frames: list[FrameRef]
    source: str
    notes: list[str] = field(default_factory=list)
    #: The study's instances, by SOP Instance UID.
    instances: dict[str, StoredInstance] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredFilm:
    """A stored film sheet."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int
    status: str
    images: int
    source: str
    notes: list[str]


@dataclass(frozen=True)
class FilmSheet:
    """A film sheet found in a study."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    instance_number: int | None
    rows: int | None
    columns: int | None
    received_at: datetime


@dataclass(frozen=True)
class FilmImage:
    """A stored sheet read back: its pixels and its size on film."""

    image: Image.Image
    width_mm: float
    height_mm: float
    dpi: float
    #: The Film Size ID it matches, if any.
    film_size: str | None


# ----------------------------------------------------------------------------- selection


def evenly_spaced(count: int, boxes: int) -> list[int]:
    """Indices of ``boxes`` items evenly spaced among ``count``: the middle of each of
    ``boxes`` equal runs (``floor((i + 0.5) * count / boxes)``), or all when they fit."""
    if count <= boxes:
        return list(range(count))
    return [int((i + 0.5) * count / boxes) for i in range(boxes)]


def key_object_references(ds: Dataset) -> list[tuple[str, tuple[int, ...]]]:
    """``(SOP Instance UID, frame numbers)`` a Key Object Selection document points at.

    The IMAGE items of the content tree, depth first in document order (PS3.3 C.17.3); an
    empty tuple of frames means every frame. Without IMAGE items, the instances of the Current
    Requested Procedure Evidence Sequence (0040,A375). Each instance once, first place kept.
    """
    found: list[tuple[str, tuple[int, ...]]] = []

    def walk(items: Sequence[Dataset]) -> None:
        for item in items:
            if str(item.get("ValueType", "")).upper() == "IMAGE":
                for ref in item.get("ReferencedSOPSequence", []):
                    frames = ref.get("ReferencedFrameNumber")
                    numbers = [frames] if isinstance(frames, int | str) else list(frames or [])
                    found.append((str(ref.ReferencedSOPInstanceUID), _frames(numbers)))
            walk(item.get("ContentSequence", []))

    walk(ds.get("ContentSequence", []))
    if not found:
        for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
            for series in study.get("ReferencedSeriesSequence", []):
                for ref in series.get("ReferencedSOPSequence", []):
                    found.append((str(ref.ReferencedSOPInstanceUID), ()))
    unique: dict[str, tuple[int, ...]] = {}
    for uid, frames in found:
        unique.setdefault(uid, frames)
    return list(unique.items())


def _frames(values: Sequence[object]) -> tuple[int, ...]:
    numbers = []
    for value in values:
        try:
            numbers.append(int(str(value)))
        except ValueError:
            continue
    return tuple(n for n in numbers if n >= 1)


def select_frames(archive: Archive, study_uid: str, request: FilmRequest) -> Selection:
    """The images of the study for the sheet's boxes (see the module notes).

    Raises
    ------
    NotFound
        The study is not in the archive.
    Unprocessable
        An image, series or key object that is not in the study, a frame that does not exist,
        more images than boxes, nothing to show.
    """
    with archive.engine.connect() as conn:
        instances = find_instances(conn, study_uid)
    boxes = request.display_format.capacity
    if request.images:
        frames = _by_hand(instances, request, study_uid)
        selection = Selection(frames, "images")
    elif request.series_uid is not None:
        selection = _from_series(instances, request.series_uid, request, study_uid)
    elif request.key_object is not None:
        selection = _from_key_object(archive, instances, request, study_uid)
    else:
        films = _film_series_uids(archive, study_uid)
        selection = _default(archive, instances, films, request, study_uid)
    if len(selection.frames) > boxes:
        raise Unprocessable(
            f"{len(selection.frames)} images were chosen but {request.display_format.dicom()} "
            f"has {boxes} image boxes; choose a larger layout or fewer images"
        )
    if not selection.frames:
        raise Unprocessable(f"no images to put on film in study {study_uid}")
    return replace(selection, instances={i.sop_instance_uid: i for i in instances})


def _images(instances: list[StoredInstance]) -> list[StoredInstance]:
    """Instances with pixel data (rows and columns)."""
    return [i for i in instances if i.rows and i.columns]


def _by_hand(
    instances: list[StoredInstance], request: FilmRequest, study_uid: str
) -> list[FrameRef]:
    known = {i.sop_instance_uid: i for i in instances}
    for ref in request.images:
        found = known.get(ref.sop_instance_uid)
        if found is None:
            raise Unprocessable(f"instance {ref.sop_instance_uid} is not in study {study_uid}")
        _check_frame(found, ref.frame)
    return [
        FrameRef(ref.sop_instance_uid, ref.frame, ref.window or request.window)
        for ref in request.images
    ]


def _check_frame(instance: StoredInstance, frame: int) -> None:
    if not (instance.rows and instance.columns):
        raise Unprocessable(f"instance {instance.sop_instance_uid} has no pixel data to show")
    count = instance.number_of_frames or 1
    if not 1 <= frame <= count:
        raise Unprocessable(
            f"frame {frame} of instance {instance.sop_instance_uid} does not exist; "
            f"it has {count} frame(s)"
        )


def _all_frames(instances: list[StoredInstance]) -> list[tuple[str, int]]:
    return [
        (i.sop_instance_uid, frame)
        for i in _images(instances)
        for frame in range(1, (i.number_of_frames or 1) + 1)
    ]


def _from_series(
    instances: list[StoredInstance], series_uid: str, request: FilmRequest, study_uid: str
) -> Selection:
    members = [i for i in instances if i.series_uid == series_uid]
    if not members:
        raise Unprocessable(f"series {series_uid} is not in study {study_uid}")
    frames = _all_frames(members)
    if not frames:
        raise Unprocessable(f"series {series_uid} has no images")
    boxes = request.display_format.capacity
    picked = evenly_spaced(len(frames), boxes) if request.evenly else range(min(boxes, len(frames)))
    chosen = [FrameRef(frames[i][0], frames[i][1], request.window) for i in picked]
    how = "evenly spaced" if request.evenly else "first"
    notes = [f"{len(chosen)} of {len(frames)} images of series {series_uid}, {how}"]
    return Selection(chosen, "series", notes)


def _key_objects(instances: list[StoredInstance]) -> list[StoredInstance]:
    return [i for i in instances if i.sop_class_uid == KEY_OBJECT_SELECTION]


def _from_key_object(
    archive: Archive, instances: list[StoredInstance], request: FilmRequest, study_uid: str
) -> Selection:
    documents = _key_objects(instances)
    wanted = request.key_object
    if wanted == "latest":
        if not documents:
            raise Unprocessable(f"study {study_uid} has no Key Object Selection document")
        document = max(documents, key=lambda i: i.pk)
    else:
        matches = [d for d in documents if d.sop_instance_uid == wanted]
        if not matches:
            raise Unprocessable(
                f"{wanted} is not a Key Object Selection document of study {study_uid}"
            )
        document = matches[0]
    with archive.blobs.open(document.blob_key) as fp:
        ds = read_header(fp, document.dataset_offset, document.transfer_syntax_uid)
    known = {i.sop_instance_uid: i for i in _images(instances)}
    frames: list[FrameRef] = []
    notes: list[str] = []
    for uid, numbers in key_object_references(ds):
        found = known.get(uid)
        if found is None:
            notes.append(f"instance {uid} is not an image of this study; left out")
            continue
        count = found.number_of_frames or 1
        for number in numbers or tuple(range(1, count + 1)):
            if number <= count:
                frames.append(FrameRef(uid, number, request.window))
            else:
                notes.append(f"frame {number} of instance {uid} does not exist; left out")
    if not frames:
        raise Unprocessable(
            f"Key Object Selection {document.sop_instance_uid} references no image of study "
            f"{study_uid}"
        )
    notes.insert(0, f"key images of {document.sop_instance_uid}")
    return Selection(frames, "key-object", notes)


def _default(
    archive: Archive,
    instances: list[StoredInstance],
    films: set[str],
    request: FilmRequest,
    study_uid: str,
) -> Selection:
    """The latest key object selection, else the largest image series, evenly spaced."""
    if _key_objects(instances):
        latest = FilmRequest(
            request.display_format, request.size, key_object="latest", window=request.window
        )
        return _from_key_object(archive, instances, latest, study_uid)
    sizes: dict[str, int] = {}
    for image in _images(instances):
        if image.series_uid not in films:
            sizes[image.series_uid] = sizes.get(image.series_uid, 0) + (image.number_of_frames or 1)
    if not sizes:
        raise Unprocessable(f"study {study_uid} has no images to put on film")
    largest = max(sizes, key=lambda uid: sizes[uid])
    return _from_series(instances, largest, request, study_uid)


# ---------------------------------------------------------------------------- composition


def compose_film(
    archive: Archive, study_uid: str, request: FilmRequest
) -> tuple[ComposedSheet, Selection, Dataset]:
    """Choose, render and lay out the images; also returns the study header used for the
    sheet's text (a stored instance's cached header).

    Each image is reduced to its box as soon as it is rendered, so memory holds about one
    sheet of pixels whatever the size of the images.
    """
    selection = select_frames(archive, study_uid, request)
    evidence, _next_series = study_context(archive, study_uid)
    header = evidence[0]
    settings = archive.settings
    style = SheetStyle(
        dpi=request.dpi or settings.film_dpi,
        annotate=request.annotations,
        magnification=request.magnification,
        border=request.border,
        empty=request.empty,
        font_path=settings.card_font_path,
    )
    size, orientation = request.size, request.orientation
    boxes = sheet_layout(request.display_format, size, orientation, style, header=True).cells
    cells = [
        _render(archive, selection.instances[ref.sop_instance_uid], ref).within(
            box, request.magnification
        )
        for ref, box in zip(selection.frames, boxes, strict=False)
    ]
    sheet = compose_sheet(
        cells, request.display_format, size, orientation, style=style, header=sheet_text(header)
    )
    return sheet, selection, header


def _render(archive: Archive, instance: StoredInstance, ref: FrameRef) -> CellImage:
    """Decode one frame of a stored instance and render it for its box."""
    try:
        with archive.blobs.open(instance.blob_key) as fp:
            reader = FrameReader(fp, instance.dataset_offset, instance.transfer_syntax_uid)
            decoded = reader.decode(ref.frame - 1)
            header = reader.header
        return cell_from_frame(
            header,
            decoded.pixels,
            window=ref.window,
            frame_index=ref.frame - 1,
            photometric=decoded.photometric_interpretation,
        )
    except CloudFilmError as exc:
        raise Unprocessable(
            f"frame {ref.frame} of instance {ref.sop_instance_uid} cannot be shown: {exc.message}"
        ) from exc


# -------------------------------------------------------------------------------- storage


def store_film(archive: Archive, study_uid: str, request: FilmRequest) -> StoredFilm:
    """Compose a sheet from the study and store it in the study's film series."""
    sheet, selection, header = compose_film(archive, study_uid, request)
    sources = [(selection.instances[ref.sop_instance_uid], ref.frame) for ref in selection.frames]
    stored = store_sheet(
        archive, study_uid, sheet, header=header, sources=sources, annotated=request.annotations
    )
    return replace(stored, source=selection.source, notes=selection.notes)


def store_sheet(
    archive: Archive,
    study_uid: str,
    sheet: ComposedSheet,
    *,
    header: Dataset | None = None,
    sources: Sequence[tuple[StoredInstance, int]] = (),
    annotated: bool = True,
    source: str = "film",
    institution: int | None = None,
) -> StoredFilm:
    """Store a composed sheet as a Secondary Capture in the study's film series.

    ``header`` is a stored instance's header of the study (default: the one
    :func:`cloudfilm.sharing.reports.study_context` picks); ``sources`` the images shown,
    with their 1-based frame numbers (Source Image Sequence); ``annotated`` whether the
    sheet carries the patient's name (Burned In Annotation). ``source`` is kept in the
    index (``film``; ``print:<AE>`` for a sheet printed to the virtual printer) and
    ``institution`` is the key of the institution that made it (see ``Archive.store``).

    Raises
    ------
    NotFound
        The study is not in the archive.
    StorageFailure, Conflict...
        When the archive refuses the object.
    """
    evidence, next_series = study_context(archive, study_uid)
    header = header if header is not None else evidence[0]
    series_uid, series_number, instance_number = _film_series(archive, study_uid, next_series)
    ds = _sheet_dataset(
        sheet, header, series_uid, series_number, instance_number, sources, annotated
    )
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    result = archive.store(buffer.getvalue(), source=source[:100], institution=institution)
    if not result.ok:
        raise result.error or StorageFailure(result.reason or "the film sheet was not stored")
    # The Film Size ID is kept in the index for the figures of film saved (film.stats). It is
    # written just after the sheet: a crash in between leaves NULL, priced at the default.
    with archive.sessions.begin() as session:
        session.execute(
            update(Instance)
            .where(Instance.sop_instance_uid == str(result.sop_instance_uid))
            .values(film_size=sheet.size.id)
        )
    logger.info("film sheet %s stored in study %s", result.sop_instance_uid, study_uid)
    return StoredFilm(
        study_uid=str(result.study_uid),
        series_uid=str(result.series_uid),
        sop_instance_uid=str(result.sop_instance_uid),
        sop_class_uid=str(result.sop_class_uid),
        instance_number=instance_number,
        status=result.status.value,
        images=sum(p is not None for p in sheet.placements),
        source="sheet",
        notes=[],
    )


def _film_series(archive: Archive, study_uid: str, next_series: int) -> tuple[str, int, int]:
    """Series UID and number of the study's film series (new if none) and the next Instance
    Number in it. Two sheets made at the same moment may share a number; both are kept."""
    stmt = (
        _film_instances(
            select(Series.series_uid, Series.series_number, func.max(Instance.instance_number)),
            study_uid,
        )
        .group_by(Series.pk, Series.series_uid, Series.series_number)
        .order_by(Series.pk)
        .limit(1)
    )
    with archive.engine.connect() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        return generate_uid(), next_series, 1
    return row[0], int(row[1] or next_series), int(row[2] or 0) + 1


def _film_instances(stmt: _Query, study_uid: str) -> _Query:
    """``stmt`` (selecting from Series) over the film sheets of the study: Secondary Capture
    instances of series described :data:`FILM_SERIES`."""
    return (
        stmt.join(Study, Study.pk == Series.study_pk)
        .join(Instance, Instance.series_pk == Series.pk)
        .where(
            Study.study_uid == study_uid,
            Series.description == FILM_SERIES,
            Instance.sop_class_uid == SECONDARY_CAPTURE,
        )
    )


def _film_series_uids(archive: Archive, study_uid: str) -> set[str]:
    with archive.engine.connect() as conn:
        return set(
            conn.execute(
                select(Series.series_uid)
                .join(Study, Study.pk == Series.study_pk)
                .where(Study.study_uid == study_uid, Series.description == FILM_SERIES)
            ).scalars()
        )


def _sheet_dataset(
    sheet: ComposedSheet,
    header: Dataset,
    series_uid: str,
    series_number: int,
    instance_number: int,
    sources: Sequence[tuple[StoredInstance, int]],
    annotated: bool,
    now: datetime | None = None,
) -> Dataset:
    """The Secondary Capture Image of a sheet (see the module notes)."""
    now = now or datetime.now()
    source = normalised_header(header)
    pixels = sheet.pixels
    import highdicom as hd  # here, not at import: it costs the server ≈ 30 MB of RSS

    # highdicom asks a Patient Orientation of a PATIENT image; a sheet of many images has
    # none, so the Type 2 attribute is emptied afterwards (PS3.3 C.7.6.1).
    ds: Dataset = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation="RGB" if pixels.ndim == 3 else "MONOCHROME2",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),
        transfer_syntax_uid=RLELossless,
        series_description=FILM_SERIES,
        software_versions=__version__,
        content_date=now.date(),
        content_time=now.time(),
        specific_character_set=UTF8,
    )
    ds.copy_patient_and_study_information(source)
    ds.SpecificCharacterSet = UTF8
    ds.PatientOrientation = None
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ConversionType = "WSD"  # SC Equipment: workstation (PS3.3 C.8.6.1)
    ds.BurnedInAnnotation = "YES" if annotated else "NO"
    if source.get("InstitutionName"):
        ds.InstitutionName = str(source.InstitutionName)[:64]
    spacing = MM_PER_INCH / sheet.geometry.dpi
    ds.NominalScannedPixelSpacing = [f"{spacing:.10g}", f"{spacing:.10g}"]
    ds.DerivationDescription = (
        f"cloudfilm film sheet {sheet.display_format.dicom()} on {sheet.size.id} "
        f"{sheet.orientation.value}, {sheet.geometry.dpi:g} dpi"
    )
    if sources:
        ds.SourceImageSequence = [_source_item(inst, frame) for inst, frame in sources]
    return ds


def _source_item(instance: StoredInstance, frame: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = instance.sop_class_uid
    item.ReferencedSOPInstanceUID = instance.sop_instance_uid
    if (instance.number_of_frames or 1) > 1:
        item.ReferencedFrameNumber = frame
    return item


# ------------------------------------------------------------------------------- finding


def film_sheets(archive: Archive, study_uid: str) -> list[FilmSheet]:
    """The study's film sheets, oldest first (by series, then Instance Number, then arrival):
    Secondary Capture instances of series described ``Film``. Empty when there are none."""
    columns = (
        Series.series_uid,
        Instance.sop_instance_uid,
        Instance.instance_number,
        Instance.rows,
        Instance.columns,
        Instance.received_at,
    )
    stmt = _film_instances(select(*columns), study_uid).order_by(
        Series.series_number, Series.pk, Instance.instance_number, Instance.pk
    )
    with archive.engine.connect() as conn:
        return [FilmSheet(study_uid, *row) for row in conn.execute(stmt)]


def film_image(archive: Archive, study_uid: str, sop_instance_uid: str) -> FilmImage:
    """A stored film sheet of the study, decoded, with its size on film.

    The size comes from Nominal Scanned Pixel Spacing (mm per sheet pixel), snapped to the
    Film Size ID it matches within a pixel. Raises :class:`NotFound` when the instance is not a
    film sheet of the study.
    """
    if not any(s.sop_instance_uid == sop_instance_uid for s in film_sheets(archive, study_uid)):
        raise NotFound(f"film sheet {sop_instance_uid} of study {study_uid} not found")
    with archive.engine.connect() as conn:
        (instance,) = find_instances(conn, study_uid, sop_instance_uid=sop_instance_uid)
    with archive.blobs.open(instance.blob_key) as fp:
        reader = FrameReader(fp, instance.dataset_offset, instance.transfer_syntax_uid)
        pixels = reader.decode(0).pixels
        header = reader.header
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    rows, columns = pixels.shape[:2]
    spacing = [float(v) for v in header.get("NominalScannedPixelSpacing") or ()]
    if len(spacing) != 2 or min(spacing) <= 0:
        spacing = [MM_PER_INCH / archive.settings.film_dpi] * 2
    width_mm, height_mm = columns * spacing[1], rows * spacing[0]
    match = match_film_size(width_mm, height_mm, tolerance_mm=max(spacing))
    film_size = None
    if match is not None:
        width_mm, height_mm = match[0].dimensions_mm(match[1])
        film_size = match[0].id
    return FilmImage(image, width_mm, height_mm, round(MM_PER_INCH / spacing[1], 3), film_size)


def sheet_png(image: Image.Image, dpi: float) -> bytes:
    """The sheet as a PNG whose pHYs chunk says its resolution (prints at film size)."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG", dpi=(dpi, dpi), compress_level=6)
    return buffer.getvalue()


def sheet_pdf(image: Image.Image, width_mm: float, height_mm: float, title: str = "Film") -> bytes:
    """A one-page PDF of the film's size with the sheet image at full resolution (lossless,
    Flate)."""
    from fpdf import FPDF  # here, not at import: it costs the server ≈ 15 MB of RSS

    orientation = "landscape" if width_mm > height_mm else "portrait"
    short, long = sorted((width_mm, height_mm))
    pdf = FPDF(orientation=orientation, unit="mm", format=(short, long))
    pdf.set_margin(0)
    pdf.set_auto_page_break(False)
    pdf.set_title(title)
    pdf.set_creator(f"cloudfilm {__version__}")
    pdf.add_page()
    pdf.image(image, x=0, y=0, w=width_mm, h=height_mm)
    return bytes(pdf.output())
