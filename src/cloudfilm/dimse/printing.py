"""The virtual DICOM film printer: a Print Management SCP (PS3.4 Annex H).

A modality prints to cloudfilm as to a laser film printer. Served, under the Basic Grayscale
(1.2.840.10008.5.1.1.9) and Basic Color (1.2.840.10008.5.1.1.18) Print Management Meta SOP
Classes:

* **Printer** (N-GET of the well-known instance 1.2.840.10008.5.1.1.17): status ``NORMAL``;
* **Basic Film Session** (N-CREATE, N-SET, N-ACTION print, N-DELETE): one per association;
* **Basic Film Box** (N-CREATE, N-SET, N-ACTION print, N-DELETE): Image Display Format
  ``STANDARD\\C,R``, ``ROW\\...`` and ``COL\\...`` (``SLIDE``, ``SUPERSLIDE`` and ``CUSTOM\\i``
  get 0x0106), Film Orientation, Film Size ID, Magnification Type, Border and Empty Image
  Density. The N-CREATE response lists the image boxes in Referenced Image Box Sequence;
* **Basic Grayscale / Color Image Box** (N-SET): 8-bit, or 12 bits stored in 16, MONOCHROME2
  (MONOCHROME1 is inverted); RGB 8-bit, planar configuration 1 (0 is also read); Polarity;
  Pixel Aspect Ratio;

and, when proposed as their own presentation contexts, **Presentation LUT** (N-CREATE,
N-DELETE: shapes IDENTITY, LIN OD and INVERSE, or a LUT) and **Basic Annotation Box**
(N-SET; a film box with an Annotation Display Format ID gets :data:`ANNOTATION_BOXES` of them,
whose text is printed in a band at the top of the sheet).

The session's state lives in memory, per association, and dies with it: an association
dropped before a print action leaves nothing. Memory is bounded: at most
``print_max_image_boxes`` image boxes per film box (else 0x0213) and ``print_max_bytes`` of
images per association (else 0xC605); each image is reduced to its box when it arrives.

On N-ACTION (Action Type ID 1, print) of a film box, or of the film session (every film box),
each film box with images becomes one sheet composed as laid out (``cloudfilm.film.compose``)
and is kept (``cloudfilm.film.printed``: stored in the matched study, or as an unmatched film)
before the N-ACTION response: a print acknowledged is durable. Each print is audited.

Statuses (PS3.7 Annex C, PS3.4 H.4): 0x0105 no such attribute (an attribute the SCU may not
set), 0x0106 invalid attribute value, 0x0110 processing failure, 0x0111 duplicate SOP
instance, 0x0112 no such SOP instance, 0x0118 no such SOP class (not of the negotiated
context), 0x0120 missing attribute (N-CREATE), 0x0121 missing attribute value (N-SET),
0x0123 no such action, 0x0124 not authorised (no ``print`` permission), 0x0211 unrecognised
operation, 0x0213 resource limitation; 0xB602/0xB603 empty page (nothing stored), 0xC600 film
session without film box, 0xC605 insufficient memory.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid
from pynetdicom import evt

from cloudfilm import __version__
from cloudfilm.archive import Archive
from cloudfilm.core.errors import CloudFilmError
from cloudfilm.dimse import status
from cloudfilm.dimse.peers import PeerDirectory, Permission
from cloudfilm.dimse.principal import DimsePrincipal, audit
from cloudfilm.dimse.print_pixels import (
    DUPLICATE_SOP_INSTANCE,
    EMPTY_FILM_BOX,
    EMPTY_SESSION,
    INSUFFICIENT_MEMORY,
    INVALID_ATTRIBUTE_VALUE,
    MISSING_ATTRIBUTE,
    MISSING_ATTRIBUTE_VALUE,
    NO_FILM_BOX,
    NO_SUCH_ACTION,
    NO_SUCH_ATTRIBUTE,
    NO_SUCH_SOP_CLASS,
    NO_SUCH_SOP_INSTANCE,
    PROCESSING_FAILURE,
    RESOURCE_LIMITATION,
    UNRECOGNIZED_OPERATION,
    PresentationLut,
    Refused,
    image_cell,
    lut_table,
)
from cloudfilm.film.compose import (
    CellImage,
    ComposedSheet,
    SheetStyle,
    SheetText,
    compose_sheet,
    sheet_layout,
)
from cloudfilm.film.layout import (
    DisplayFormat,
    FilmSize,
    InvalidLayout,
    Magnification,
    Orientation,
    Rect,
    density_to_gray,
    parse_display_format,
    parse_film_size,
    parse_magnification,
    parse_orientation,
)
from cloudfilm.film.passthrough import pass_through_rules, queue_sheet
from cloudfilm.film.printed import KeptFilm, PrintedSheet, keep_printed

logger = logging.getLogger(__name__)

BASIC_FILM_SESSION = "1.2.840.10008.5.1.1.1"
BASIC_FILM_BOX = "1.2.840.10008.5.1.1.2"
GRAYSCALE_IMAGE_BOX = "1.2.840.10008.5.1.1.4"
COLOR_IMAGE_BOX = "1.2.840.10008.5.1.1.4.1"
ANNOTATION_BOX = "1.2.840.10008.5.1.1.15"
PRINTER = "1.2.840.10008.5.1.1.16"
PRINTER_INSTANCE = "1.2.840.10008.5.1.1.17"
PRESENTATION_LUT = "1.2.840.10008.5.1.1.23"
GRAYSCALE_META = "1.2.840.10008.5.1.1.9"
COLOR_META = "1.2.840.10008.5.1.1.18"
#: The SOP classes each abstract syntax we accept covers (a Meta SOP Class, PS3.4 H.3).
MEMBERS: dict[str, frozenset[str]] = {
    GRAYSCALE_META: frozenset({BASIC_FILM_SESSION, BASIC_FILM_BOX, GRAYSCALE_IMAGE_BOX, PRINTER}),
    COLOR_META: frozenset({BASIC_FILM_SESSION, BASIC_FILM_BOX, COLOR_IMAGE_BOX, PRINTER}),
    PRINTER: frozenset({PRINTER}),
    ANNOTATION_BOX: frozenset({ANNOTATION_BOX}),
    PRESENTATION_LUT: frozenset({PRESENTATION_LUT}),
}
PRINT_CONTEXTS = tuple(MEMBERS)
#: Annotation boxes of a film box that names an Annotation Display Format ID.
ANNOTATION_BOXES = 4
PRINT_ACTION = 1

_PRIORITIES = ("HIGH", "MED", "LOW")
_POLARITIES = ("NORMAL", "REVERSE")
_LUT_SHAPES = ("IDENTITY", "LIN OD", "INVERSE")


# ------------------------------------------------------------------------------- state


@dataclass
class ImageBox:
    uid: str
    sop_class: str
    position: int
    cell: CellImage | None = None
    nbytes: int = 0


@dataclass
class AnnotationBox:
    uid: str
    position: int
    text: str = ""


@dataclass
class FilmBox:
    uid: str
    color: bool
    display_format: DisplayFormat
    size: FilmSize
    orientation: Orientation
    magnification: Magnification
    border: int
    empty: int
    attributes: Dataset
    image_boxes: list[ImageBox] = field(default_factory=list)
    annotations: list[AnnotationBox] = field(default_factory=list)
    lut_uid: str | None = None


@dataclass
class FilmSession:
    uid: str
    label: str
    attributes: Dataset
    film_boxes: list[FilmBox] = field(default_factory=list)


@dataclass
class PrintState:
    """One association's print objects (PS3.4 H.2.2: one film session per association)."""

    session: FilmSession | None = None
    film_boxes: dict[str, FilmBox] = field(default_factory=dict)
    image_boxes: dict[str, tuple[FilmBox, ImageBox]] = field(default_factory=dict)
    annotation_boxes: dict[str, AnnotationBox] = field(default_factory=dict)
    luts: dict[str, PresentationLut] = field(default_factory=dict)
    bytes_held: int = 0

    def drop_film_box(self, box: FilmBox) -> None:
        self.film_boxes.pop(box.uid, None)
        for image_box in box.image_boxes:
            self.image_boxes.pop(image_box.uid, None)
            self.bytes_held -= image_box.nbytes
        for annotation in box.annotations:
            self.annotation_boxes.pop(annotation.uid, None)


@dataclass(frozen=True)
class _Request:
    """What a handler needs of one N-* request."""

    operation: str
    sop_class: str
    instance: str
    context_class: str
    little_endian: bool
    event: Any


# ------------------------------------------------------------------------------ the SCP


class PrintScp:
    """The Print Management SCP of one DIMSE server (handlers bound in ``DimseServer``)."""

    def __init__(
        self,
        archive: Archive,
        principal_of: Callable[[Any], DimsePrincipal | None],
        ae_title: str,
    ) -> None:
        self.archive = archive
        self.principal_of = principal_of
        self.ae_title = ae_title
        self._states: weakref.WeakKeyDictionary[Any, PrintState] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def handlers(self) -> list[tuple[Any, Callable[[Any], Any]]]:
        return [
            (evt.EVT_N_GET, self.on_get),
            (evt.EVT_N_CREATE, self.on_create),
            (evt.EVT_N_SET, self.on_set),
            (evt.EVT_N_ACTION, self.on_action),
            (evt.EVT_N_DELETE, self.on_delete),
        ]

    def forget(self, assoc: Any) -> None:
        """Drop an association's print objects (released or aborted: nothing is printed)."""
        with self._lock:
            self._states.pop(assoc, None)

    def _state(self, assoc: Any) -> PrintState:
        with self._lock:
            state = self._states.get(assoc)
            if state is None:
                state = self._states[assoc] = PrintState()
            return state

    # ------------------------------------------------------------------ event handlers

    def on_get(self, event: Any) -> tuple[Dataset, Dataset | None]:
        return self._serve(event, "N-GET")

    def on_create(self, event: Any) -> tuple[Dataset, Dataset | None]:
        return self._serve(event, "N-CREATE")

    def on_set(self, event: Any) -> tuple[Dataset, Dataset | None]:
        return self._serve(event, "N-SET")

    def on_action(self, event: Any) -> tuple[Dataset, Dataset | None]:
        return self._serve(event, "N-ACTION")

    def on_delete(self, event: Any) -> Dataset:
        return self._serve(event, "N-DELETE")[0]

    def _serve(self, event: Any, operation: str) -> tuple[Dataset, Dataset | None]:
        """Answer one request; never raises (0x0110 when this handler fails)."""
        principal = None
        try:
            principal = self.principal_of(event.assoc)
            if principal is None or not principal.can(Permission.PRINT):
                audit(self.archive, principal, "print", "denied", detail=operation)
                raise Refused(status.NOT_AUTHORIZED, "this AE may not print here")
            request = _request(event, operation)
            if request.sop_class not in MEMBERS.get(request.context_class, frozenset()):
                raise Refused(
                    NO_SUCH_SOP_CLASS,
                    f"SOP class {request.sop_class} is not of context {request.context_class}",
                )
            handler = _OPERATIONS.get((operation, request.sop_class))
            if handler is None:
                raise Refused(UNRECOGNIZED_OPERATION, f"{operation} of {request.sop_class}")
            state = self._state(event.assoc)
            code, reply = handler(self, request, state, principal)
            return status.status_dataset(code), reply
        except Refused as refused:
            logger.warning("%s from %s refused (0x%04X): %s", operation, principal,
                           refused.code, refused.comment)  # fmt: skip
            return status.status_dataset(refused.code, refused.comment), None
        except Exception:
            logger.exception("print %s handler failed", operation)
            return status.status_dataset(PROCESSING_FAILURE, "internal error"), None

    # ------------------------------------------------------------------ printer

    def _printer_get(
        self, request: _Request, state: PrintState, principal: DimsePrincipal
    ) -> tuple[int, Dataset | None]:
        if request.instance != PRINTER_INSTANCE:
            raise Refused(NO_SUCH_SOP_INSTANCE, "the Printer is 1.2.840.10008.5.1.1.17")
        now = datetime.now()
        ds = Dataset()
        ds.PrinterStatus = "NORMAL"
        ds.PrinterStatusInfo = "NORMAL"
        ds.PrinterName = self.ae_title[:64]
        ds.Manufacturer = "cloudfilm"
        ds.ManufacturerModelName = "cloudfilm virtual film printer"
        ds.DeviceSerialNumber = self.ae_title[:64]
        ds.SoftwareVersions = __version__
        ds.DateOfLastCalibration = now.strftime("%Y%m%d")
        ds.TimeOfLastCalibration = now.strftime("%H%M%S")
        wanted = list(request.event.attribute_identifiers or [])
        if wanted:
            kept = Dataset()
            for tag in wanted:
                if tag in ds:
                    kept[tag] = ds[tag]
            ds = kept
        return status.SUCCESS, ds

    # ------------------------------------------------------------------ film session

    def _session_create(
        self, request: _Request, state: PrintState, principal: DimsePrincipal
    ) -> tuple[int, Dataset | None]:
        if state.session is not None:
            raise Refused(RESOURCE_LIMITATION, "one film session per association")
        attributes = request.event.attribute_list
        ds = Dataset()
        ds.NumberOfCopies = "1"
        ds.PrintPriority = "MED"
        ds.MediumType = "BLUE FILM"
        ds.FilmDestination = "MAGAZINE"
        _session_attributes(ds, attributes)
        uid = _new_uid(request, state)
        state.session = FilmSession(uid, str(ds.get("FilmSessionLabel", "") or ""), ds)
        reply = _copy(ds)
        if not request.event.request.AffectedSOPInstanceUID:
            reply.AffectedSOPInstanceUID = uid
        return status.SUCCESS, reply

    def _session_set(
        self, request: _Request, state: PrintState, principal: DimsePrincipal
    ) -> tuple[int, Dataset | None]:
        session = _session(state, request.instance)
        _session_attributes(session.attributes, request.event.modification_list)
        session.label = str(session.attributes.get("FilmSessionLabel", "") or "")
        return status.SUCCESS, _copy(session.attributes)

    def _session_action(
        self, request: _Request, state: PrintState, principal: DimsePrincipal
    ) -> tuple[int, Dataset | None]:
        session = _session(state, request.instance)
        _check_action(request)
        if not session.film_boxes:
            raise Refused(NO_FILM_BOX, "the film session has no film box")
        kept = self._print(session.film_boxes, session, principal)
        return (status.SUCCESS if kept else EMPTY_SESSION), None

    def _session_delete(
        self, request: _Request, state: PrintState, principal: DimsePrincipal
    ) -> tuple[int, Dataset | None]:
        session = _session(state, request.instance)
        for box in list(session.film_boxes):
            state.drop_film_box(box)
        state.session = None
        return status.SUCCESS, None

    # ------------------------------------------------------------------ film box

    def _box_create(
        self, request: _Request, state: PrintState, principal: DimsePrincipal
    ) -> tuple[int, Dataset | None]:
        attributes = request.event.attribute_list
        session = _referenced_session(state, attributes)
        settings = self.archive.settings
        if "ImageDisplayFormat" not in attributes:
            raise Refused(MISSING_ATTRIBUTE, "Image Display Format (2010,0010) is missing")
        ds = Dataset()
        ds.ImageDisplayFormat = attributes.ImageDisplayFormat
        ds.FilmOrientation = settings.film_default_orientation
        ds.FilmSizeID = settings.film_default_size
        ds.MagnificationType = "CUBIC"
        ds.BorderDensity = "BLACK"
        ds.EmptyImageDensity = "BLACK"
        ds.MaxDensity = 300
        ds.ReferencedFilmSessionSequence = [status.referenced(BASIC_FILM_SESSION, session.uid)]
        _box_attributes(ds, attributes, creating=True)
        box = _film_box(_new_uid(request, state), ds, request.context_class == COLOR_META)
        if box.display_format.capacity > settings.print_max_image_boxes:
            raise Refused(
                RESOURCE_LIMITATION,
                f"at most {settings.print_max_image_boxes} image boxes per film box",
            )
        box.lut_uid = _lut_reference(state, attributes)
        image_class = COLOR_IMAGE_BOX if box.color else GRAYSCALE_IMAGE_BOX
        for position in range(1, box.display_format.capacity + 1):
            image_box = ImageBox(generate_uid(), image_class, position)
            box.image_boxes.append(image_box)
            state.image_boxes[image_box.uid] = (box, image_box)
        ds.ReferencedImageBoxSequence = [
            status.referenced(image_class, b.uid) for b in box.image_boxes
        ]
        if attributes.get("AnnotationDisplayFormatID") and request.event.assoc is not None:
            if _negotiated(request.event.assoc, ANNOTATION_BOX):
                for position in range(1, ANNOTATION_BOXES + 1):
                    annotation = AnnotationBox(generate_uid(), position)
                    box.annotations.append(annotation)
                    state.annotation_boxes[annotation.uid] = annotation
                ds.ReferencedBasicAnnotationBoxSequence = [
                    status.referenced(ANNOTATION_BOX, a.uid) for a in box.annotations
                ]
        state.film_boxes[box.uid] = box
        session.film_boxes.append(box)
        reply = _copy(ds)
        if not request.event.request.AffectedSOPInstanceUID:
            reply.AffectedSOPInstanceUID = box.uid
        return status.SUCCESS, reply

    def _box_set(
        self, request: _Request, state: PrintState, principal: DimsePrincipal
    ) -> tuple[int, Dataset | None]:
        box = _box(state, request.instance)
        changes = request.event.modification_list
        merged = _copy(box.attributes)
        _box_attributes(merged, changes, creating=False)
        updated = _film_box(box.uid, merged, box.color)
        lut_uid = (
            _lut_reference(state, changes)
            if "ReferencedPresentationLUTSequence" in changes
            else box.lut_uid
        )
        box.attributes = merged
        box.magnification, box.border, box.empty = (
            updated.magnification, updated.border, updated.empty
        )  # fmt: skip
        box.lut_uid = lut_uid
        return status.SUCCESS, _copy(merged)

    def _box_action(
        self, request: _Request, state: PrintState, principal: DimsePrincipal
    ) -> tuple[int, Dataset | None]:
        box = _box(state, request.instance)
        _check_action(request)
        session = state.session
        if session is None:  # not reached: deleting the session deletes its film boxes
            raise Refused(NO_SUCH_SOP_INSTANCE, "the film box's session is gone")
        kept = self._print([box], session, principal)
        return (status.SUCCESS if kept else EMPTY_FILM_BOX), None

    def _box_delete(
        self, request: _Request, state: PrintState, principal: DimsePrincipal
    ) -> tuple[int, Dataset | None]:
        box = _box(state, request.instance)
        state.drop_film_box(box)
        if state.session is not None:
            state.session.film_boxes = [b for b in state.session.film_boxes if b is not box]
        return status.SUCCESS, None

    # ------------------------------------------------------------------ image boxes

    def _image_box_set(
        self, request: _Request, state: PrintState, principal: DimsePrincipal
    ) -> tuple[int, Dataset | None]:
        found = state.image_boxes.get(request.instance)
        if found is None or found[1].sop_class != request.sop_class:
            raise Refused(NO_SUCH_SOP_INSTANCE, f"no image box {request.instance}")
        box, image_box = found
        changes = request.event.modification_list
        position = _int(changes, "ImageBoxPosition", MISSING_ATTRIBUTE_VALUE)
        if position != image_box.position:
            raise Refused(
                INVALID_ATTRIBUTE_VALUE,
                f"Image Box Position {position} is not this box's ({image_box.position})",
            )
        keyword = "BasicColorImageSequence" if box.color else "BasicGrayscaleImageSequence"
        if keyword not in changes:
            raise Refused(MISSING_ATTRIBUTE_VALUE, f"{keyword} is missing")
        items = changes[keyword].value or []
        polarity = str(changes.get("Polarity", "NORMAL") or "NORMAL").strip().upper()
        if polarity not in _POLARITIES:
            raise Refused(INVALID_ATTRIBUTE_VALUE, f"Polarity {polarity!r}")
        if "MagnificationType" in changes:
            _magnification(changes.MagnificationType)
        lut_uid = (
            _lut_reference(state, changes)
            if "ReferencedPresentationLUTSequence" in changes
            else box.lut_uid
        )
        cell = None
        if items:
            lut = state.luts.get(lut_uid) if lut_uid else None
            cell = image_cell(items[0], box.color, request.little_endian, lut)
            cell = replace(cell, reverse=polarity == "REVERSE")
            rect = _box_rect(box, image_box.position, self.archive.settings.film_dpi)
            cell = cell.within(rect, box.magnification)
        nbytes = int(cell.pixels.nbytes) if cell is not None else 0
        limit = self.archive.settings.print_max_bytes
        if state.bytes_held - image_box.nbytes + nbytes > limit:
            raise Refused(INSUFFICIENT_MEMORY, f"more than {limit} bytes of images held")
        state.bytes_held += nbytes - image_box.nbytes
        image_box.cell, image_box.nbytes = cell, nbytes
        return status.SUCCESS, None

    def _annotation_set(
        self, request: _Request, state: PrintState, principal: DimsePrincipal
    ) -> tuple[int, Dataset | None]:
        annotation = state.annotation_boxes.get(request.instance)
        if annotation is None:
            raise Refused(NO_SUCH_SOP_INSTANCE, f"no annotation box {request.instance}")
        changes = request.event.modification_list
        position = _int(changes, "AnnotationPosition", MISSING_ATTRIBUTE_VALUE)
        if position != annotation.position:
            raise Refused(INVALID_ATTRIBUTE_VALUE, f"Annotation Position {position}")
        annotation.text = str(changes.get("TextString", "") or "").strip()[:64]
        return status.SUCCESS, None

    # ------------------------------------------------------------------ presentation LUT

    def _lut_create(
        self, request: _Request, state: PrintState, principal: DimsePrincipal
    ) -> tuple[int, Dataset | None]:
        attributes = request.event.attribute_list
        lut = PresentationLut(_new_uid(request, state))
        if "PresentationLUTSequence" in attributes and attributes.PresentationLUTSequence:
            lut.table, lut.first = lut_table(attributes.PresentationLUTSequence[0])
        elif "PresentationLUTShape" in attributes:
            shape = str(attributes.PresentationLUTShape or "").strip().upper()
            if shape not in _LUT_SHAPES:
                raise Refused(INVALID_ATTRIBUTE_VALUE, f"Presentation LUT Shape {shape!r}")
            lut.shape = shape
        else:
            raise Refused(MISSING_ATTRIBUTE, "Presentation LUT Sequence or Shape is missing")
        state.luts[lut.uid] = lut
        reply = Dataset()
        if not request.event.request.AffectedSOPInstanceUID:
            reply.AffectedSOPInstanceUID = lut.uid
        return status.SUCCESS, reply

    def _lut_delete(
        self, request: _Request, state: PrintState, principal: DimsePrincipal
    ) -> tuple[int, Dataset | None]:
        if state.luts.pop(request.instance, None) is None:
            raise Refused(NO_SUCH_SOP_INSTANCE, f"no Presentation LUT {request.instance}")
        return status.SUCCESS, None

    # ------------------------------------------------------------------ printing

    def _print(
        self, boxes: list[FilmBox], session: FilmSession, principal: DimsePrincipal
    ) -> list[KeptFilm]:
        """Compose and keep each film box with images; an empty one is skipped."""
        kept = []
        for box in boxes:
            sheet = self._compose(box)
            if sheet is None:
                continue
            printed = PrintedSheet(
                sheet,
                principal.calling_ae,
                film_session_label=session.label,
                institution=principal.institution,
                institution_pk=principal.institution_pk,
                related_aes=self._related_aes(principal),
                annotated=any(a.text for a in box.annotations),
            )
            try:
                film = keep_printed(self.archive, printed)
            except CloudFilmError as exc:
                audit(self.archive, principal, "print", "failure", detail=exc.message[:200])
                raise Refused(PROCESSING_FAILURE, f"sheet not kept: {exc.message}") from exc
            detail = f"{box.display_format.dicom()} {box.size.id} {box.orientation.value}: " + (
                f"stored {film.stored.sop_instance_uid} ({film.match.reason})"
                if film.stored is not None
                else f"unmatched film {film.unmatched_id} ({film.match.reason})"
            )
            audit(
                self.archive, principal, "print", "success",
                study_uid=film.match.study_uid or "", detail=detail[:1000],
            )  # fmt: skip
            self._pass_through(film, sheet, principal)
            kept.append(film)
        return kept

    def _pass_through(
        self, film: KeptFilm, sheet: ComposedSheet, principal: DimsePrincipal
    ) -> None:
        """Queue the kept sheet for the film printers of the pass-through rules it matches.

        Never raises: the sheet is kept whatever happens here (a failure is logged)."""
        rules = pass_through_rules(
            self.archive.settings, principal.calling_ae, principal.institution
        )
        for rule in rules:
            try:
                queue_sheet(
                    self.archive,
                    printer=rule.printer,
                    requested_by=f"rule:{principal.calling_ae}",
                    film_size=sheet.size.id,
                    institution=principal.institution,
                    copies=rule.copies,
                    study_uid=film.stored.study_uid if film.stored else None,
                    sop_instance_uid=film.stored.sop_instance_uid if film.stored else None,
                    printed_film_id=film.unmatched_id if film.stored is None else None,
                )
            except Exception:
                logger.exception("sheet printed by %s not queued for %s", principal.calling_ae,
                                 rule.printer)  # fmt: skip

    def _compose(self, box: FilmBox) -> ComposedSheet | None:
        cells: list[CellImage | None] = [None] * box.display_format.capacity
        for image_box in box.image_boxes:
            cells[image_box.position - 1] = image_box.cell
        if all(cell is None for cell in cells):
            return None
        lines = tuple(a.text for a in sorted(box.annotations, key=lambda a: a.position) if a.text)
        settings = self.archive.settings
        style = SheetStyle(
            dpi=settings.film_dpi,
            annotate=bool(lines),
            label_images=False,
            magnification=box.magnification,
            border=box.border,
            empty=box.empty,
            font_path=settings.card_font_path,
        )
        header = SheetText(left=lines) if lines else None
        return compose_sheet(
            cells, box.display_format, box.size, box.orientation, style=style, header=header
        )

    def _related_aes(self, principal: DimsePrincipal) -> tuple[str, ...]:
        """The other known AEs of the caller's institution."""
        if not principal.institution:
            return ()
        peers = PeerDirectory(self.archive).all()
        return tuple(
            p.ae_title
            for p in peers
            if p.institution == principal.institution and p.ae_title != principal.calling_ae
        )


Handler = Callable[[PrintScp, _Request, PrintState, DimsePrincipal], tuple[int, Dataset | None]]
_OPERATIONS: dict[tuple[str, str], Handler] = {
    ("N-GET", PRINTER): PrintScp._printer_get,
    ("N-CREATE", BASIC_FILM_SESSION): PrintScp._session_create,
    ("N-SET", BASIC_FILM_SESSION): PrintScp._session_set,
    ("N-ACTION", BASIC_FILM_SESSION): PrintScp._session_action,
    ("N-DELETE", BASIC_FILM_SESSION): PrintScp._session_delete,
    ("N-CREATE", BASIC_FILM_BOX): PrintScp._box_create,
    ("N-SET", BASIC_FILM_BOX): PrintScp._box_set,
    ("N-ACTION", BASIC_FILM_BOX): PrintScp._box_action,
    ("N-DELETE", BASIC_FILM_BOX): PrintScp._box_delete,
    ("N-SET", GRAYSCALE_IMAGE_BOX): PrintScp._image_box_set,
    ("N-SET", COLOR_IMAGE_BOX): PrintScp._image_box_set,
    ("N-SET", ANNOTATION_BOX): PrintScp._annotation_set,
    ("N-CREATE", PRESENTATION_LUT): PrintScp._lut_create,
    ("N-DELETE", PRESENTATION_LUT): PrintScp._lut_delete,
}


# ----------------------------------------------------------------------------- helpers


def _request(event: Any, operation: str) -> _Request:
    req = event.request
    if operation == "N-CREATE":
        sop_class = str(req.AffectedSOPClassUID or "")
        instance = str(req.AffectedSOPInstanceUID or "")
    else:
        sop_class = str(req.RequestedSOPClassUID or "")
        instance = str(req.RequestedSOPInstanceUID or "")
    syntax = UID(str(event.context.transfer_syntax))
    return _Request(
        operation,
        sop_class,
        instance,
        str(event.context.abstract_syntax),
        bool(syntax.is_little_endian),
        event,
    )


def _new_uid(request: _Request, state: PrintState) -> str:
    """The SCU's Affected SOP Instance UID, or a new one (PS3.7 10.1.5.1.4)."""
    uid = request.instance or generate_uid()
    taken = (
        (state.session is not None and state.session.uid == uid)
        or uid in state.film_boxes
        or uid in state.image_boxes
        or uid in state.luts
    )
    if taken:
        raise Refused(DUPLICATE_SOP_INSTANCE, f"SOP instance {uid} exists")
    return uid


def _copy(ds: Dataset) -> Dataset:
    copied = Dataset()
    for element in ds:
        copied.add(element)
    return copied


def _negotiated(assoc: Any, abstract_syntax: str) -> bool:
    try:
        return any(str(cx.abstract_syntax) == abstract_syntax for cx in assoc.accepted_contexts)
    except Exception:
        return False


def _session(state: PrintState, uid: str) -> FilmSession:
    if state.session is None or state.session.uid != uid:
        raise Refused(NO_SUCH_SOP_INSTANCE, f"no film session {uid}")
    return state.session


def _box(state: PrintState, uid: str) -> FilmBox:
    box = state.film_boxes.get(uid)
    if box is None:
        raise Refused(NO_SUCH_SOP_INSTANCE, f"no film box {uid}")
    return box


def _check_action(request: _Request) -> None:
    action = request.event.action_type
    if action != PRINT_ACTION:
        raise Refused(NO_SUCH_ACTION, f"Action Type ID {action} is not 1 (print)")


def _int(ds: Dataset, keyword: str, missing: int) -> int:
    if keyword not in ds or ds[keyword].value in (None, ""):
        raise Refused(missing, f"{keyword} is missing")
    try:
        return int(ds[keyword].value)
    except (TypeError, ValueError):
        raise Refused(INVALID_ATTRIBUTE_VALUE, f"{keyword} {ds[keyword].value!r}") from None


def _session_attributes(target: Dataset, given: Dataset) -> None:
    """Check and copy the Film Session attributes of an N-CREATE or N-SET (PS3.4 H.4.1)."""
    for element in given:
        keyword = element.keyword
        value = element.value
        if keyword == "NumberOfCopies":
            try:
                copies = int(value)
            except (TypeError, ValueError):
                copies = 0
            if not 1 <= copies <= 99:
                raise Refused(INVALID_ATTRIBUTE_VALUE, f"Number of Copies {value!r}")
        elif keyword == "PrintPriority":
            if str(value or "").strip().upper() not in _PRIORITIES:
                raise Refused(INVALID_ATTRIBUTE_VALUE, f"Print Priority {value!r}")
        elif keyword not in (
            "MediumType", "FilmDestination", "FilmSessionLabel", "MemoryAllocation", "OwnerID",
            "SpecificCharacterSet",
        ):  # fmt: skip
            raise Refused(NO_SUCH_ATTRIBUTE, f"{keyword or element.tag} is not a film session's")
        target.add(element)


_BOX_SETTABLE = (
    "MagnificationType", "MaxDensity", "ConfigurationInformation",
    "ReferencedPresentationLUTSequence", "SmoothingType", "BorderDensity", "EmptyImageDensity",
    "MinDensity", "Trim", "Illumination", "ReflectedAmbientLight",
)  # fmt: skip
_BOX_CREATE_ONLY = (
    "ImageDisplayFormat", "ReferencedFilmSessionSequence", "FilmOrientation", "FilmSizeID",
    "AnnotationDisplayFormatID", "RequestedResolutionID", "ICCProfile",
)  # fmt: skip


def _box_attributes(target: Dataset, given: Dataset, *, creating: bool) -> None:
    """Copy the Film Box attributes the SCU may give (PS3.4 H.4.2.2.1, H.4.2.2.2)."""
    for element in given:
        keyword = element.keyword
        if keyword in _BOX_SETTABLE or (creating and keyword in _BOX_CREATE_ONLY):
            target.add(element)
        elif keyword != "SpecificCharacterSet":
            raise Refused(NO_SUCH_ATTRIBUTE, f"{keyword or element.tag} cannot be set here")


def _film_box(uid: str, ds: Dataset, color: bool) -> FilmBox:
    """A film box from its attributes; 0x0106 for a value we cannot print."""
    try:
        display_format = parse_display_format(str(ds.ImageDisplayFormat))
        size = parse_film_size(str(ds.FilmSizeID))
        orientation = parse_orientation(str(ds.FilmOrientation))
        magnification = _magnification(ds.MagnificationType)
        border = density_to_gray(_text(ds.get("BorderDensity")), 0)
        empty = density_to_gray(_text(ds.get("EmptyImageDensity")), 0)
    except InvalidLayout as exc:
        raise Refused(INVALID_ATTRIBUTE_VALUE, exc.message) from None
    return FilmBox(uid, color, display_format, size, orientation, magnification, border, empty, ds)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _magnification(value: object) -> Magnification:
    try:
        return parse_magnification(str(value or "CUBIC"))
    except InvalidLayout as exc:
        raise Refused(INVALID_ATTRIBUTE_VALUE, exc.message) from None


def _box_rect(box: FilmBox, position: int, dpi: float) -> Rect:
    """Where image box ``position`` is on the sheet (without an annotation band)."""
    style = SheetStyle(dpi=dpi)
    cells = sheet_layout(box.display_format, box.size, box.orientation, style, header=False).cells
    return cells[position - 1]


def _referenced_session(state: PrintState, attributes: Dataset) -> FilmSession:
    items = attributes.get("ReferencedFilmSessionSequence") or []
    if not items:
        raise Refused(MISSING_ATTRIBUTE, "Referenced Film Session Sequence is missing")
    uid = str(items[0].get("ReferencedSOPInstanceUID", "") or "")
    if state.session is None or state.session.uid != uid:
        raise Refused(INVALID_ATTRIBUTE_VALUE, f"no film session {uid} on this association")
    return state.session


def _lut_reference(state: PrintState, attributes: Dataset) -> str | None:
    items = attributes.get("ReferencedPresentationLUTSequence") or []
    if not items:
        return None
    uid = str(items[0].get("ReferencedSOPInstanceUID", "") or "")
    if uid not in state.luts:
        raise Refused(INVALID_ATTRIBUTE_VALUE, f"no Presentation LUT {uid}")
    return uid
