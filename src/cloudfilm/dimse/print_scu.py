"""Printing a film sheet on a real DICOM film printer: a Print Management SCU (PS3.4 Annex H).

A sheet (composed in cloudfilm or printed by a modality to the virtual printer) is already
laid out, so it goes to the printer as one image in a ``STANDARD\\1,1`` film box, on the film
size it was composed for, in the orientation its shape says. The session is the usual one:

1. N-GET Printer Status (a printer in ``FAILURE`` is not sent anything);
2. N-CREATE Basic Film Session (Number of Copies, Medium Type ``BLUE FILM``);
3. N-CREATE Basic Film Box (Image Display Format, Film Orientation, Film Size ID);
4. N-SET the one image box: 8-bit MONOCHROME2, or RGB with planar configuration 1 under the
   Basic Color Print Management Meta SOP Class when the printer accepts colour and the sheet
   has it;
5. N-ACTION print on the film box, then N-DELETE the film session.

A failure status at any step ends the session with :class:`PrintFailed`; warnings (0xB6xx:
the image was cropped or resized by the printer) are logged and the sheet counts as printed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_context

from cloudfilm.core.config import Settings
from cloudfilm.dimse.peers import Peer
from cloudfilm.dimse.printing import (
    BASIC_FILM_BOX,
    BASIC_FILM_SESSION,
    COLOR_IMAGE_BOX,
    COLOR_META,
    GRAYSCALE_IMAGE_BOX,
    GRAYSCALE_META,
    PRINTER,
    PRINTER_INSTANCE,
)
from cloudfilm.dimse.scu import associate

logger = logging.getLogger(__name__)

__all__ = ["FilmToPrint", "PrintFailed", "print_sheet"]


class PrintFailed(Exception):
    """The printer refused a step of the print session (the message says which and why)."""


@dataclass(frozen=True)
class FilmToPrint:
    """A whole sheet and the film it goes on."""

    image: Image.Image
    #: Film Size ID (2010,0050), e.g. ``14INX17IN``; '' leaves the printer's default.
    film_size: str = ""
    copies: int = 1
    #: Film Session Label (2000,0050), e.g. the accession number.
    label: str = ""


def print_sheet(ae: AE, peer: Peer, film: FilmToPrint, *, settings: Settings) -> str:
    """Print ``film`` on the printer ``peer``; returns what the printer said (for the log).

    Raises
    ------
    CannotAssociate
        The printer cannot be reached or refuses the association.
    PrintFailed
        The printer accepts neither meta SOP class, reports a failure, or refuses a step.
    """
    color = film.image.mode not in ("L", "1", "I;16", "I")
    contexts = [build_context(COLOR_META, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])] * (
        color
    ) + [build_context(GRAYSCALE_META, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
    assoc = associate(ae, peer, contexts, settings=settings)
    try:
        accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
        if color and COLOR_META in accepted:
            meta = COLOR_META
        elif GRAYSCALE_META in accepted:
            meta, color = GRAYSCALE_META, False
        else:
            raise PrintFailed(f"{peer.ae_title} accepts no Print Management meta SOP class")
        return _session(assoc, meta, color, film)
    finally:
        if assoc.is_established:
            assoc.release()


def _session(assoc: Any, meta: str, color: bool, film: FilmToPrint) -> str:
    status, printer = assoc.send_n_get([Tag("PrinterStatus")], PRINTER, PRINTER_INSTANCE,
                                       meta_uid=meta)  # fmt: skip
    _check(status, "printer N-GET")
    printer_status = str(getattr(printer, "PrinterStatus", "") or "")
    if printer_status == "FAILURE":
        raise PrintFailed("the printer reports FAILURE")
    session_uid = generate_uid()
    session = Dataset()
    session.NumberOfCopies = str(max(1, min(film.copies, 99)))
    session.MediumType = "BLUE FILM"
    if film.label:
        session.FilmSessionLabel = film.label[:64]
    status, _ = assoc.send_n_create(session, BASIC_FILM_SESSION, session_uid, meta_uid=meta)
    _check(status, "film session N-CREATE")
    try:
        box_uid = _film_box(assoc, meta, session_uid, film)
        status, _ = assoc.send_n_action(None, 1, BASIC_FILM_BOX, box_uid, meta_uid=meta)
        _check(status, "film box N-ACTION print")
    finally:
        if assoc.is_established:
            assoc.send_n_delete(BASIC_FILM_SESSION, session_uid, meta_uid=meta)
    return f"printed ({printer_status or 'status not given'})"


def _film_box(assoc: Any, meta: str, session_uid: str, film: FilmToPrint) -> str:
    width, height = film.image.size
    box = Dataset()
    box.ImageDisplayFormat = "STANDARD\\1,1"
    box.FilmOrientation = "LANDSCAPE" if width > height else "PORTRAIT"
    if film.film_size:
        box.FilmSizeID = film.film_size
    reference = Dataset()
    reference.ReferencedSOPClassUID = BASIC_FILM_SESSION
    reference.ReferencedSOPInstanceUID = session_uid
    box.ReferencedFilmSessionSequence = [reference]
    box_uid = generate_uid()
    status, created = assoc.send_n_create(box, BASIC_FILM_BOX, box_uid, meta_uid=meta)
    _check(status, "film box N-CREATE")
    items = list(getattr(created, "ReferencedImageBoxSequence", None) or [])
    if not items:
        raise PrintFailed("the printer created a film box without an image box")
    image_box = Dataset()
    image_box.ImageBoxPosition = 1
    color = meta == COLOR_META
    sequence = "BasicColorImageSequence" if color else "BasicGrayscaleImageSequence"
    setattr(image_box, sequence, [_image_item(film.image, color)])
    image_class = COLOR_IMAGE_BOX if color else GRAYSCALE_IMAGE_BOX
    status, _ = assoc.send_n_set(image_box, image_class, items[0].ReferencedSOPInstanceUID,
                                 meta_uid=meta)  # fmt: skip
    _check(status, "image box N-SET")
    return box_uid


def _image_item(image: Image.Image, color: bool) -> Dataset:
    """The Basic Grayscale (8-bit MONOCHROME2) or Color (RGB, planar configuration 1) image."""
    item = Dataset()
    item.Columns, item.Rows = image.size
    item.PixelRepresentation = 0
    item.BitsAllocated, item.BitsStored, item.HighBit = 8, 8, 7
    if color:
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        item.SamplesPerPixel = 3
        item.PhotometricInterpretation = "RGB"
        item.PlanarConfiguration = 1
        item.PixelData = np.ascontiguousarray(pixels.transpose(2, 0, 1)).tobytes()
    else:
        item.SamplesPerPixel = 1
        item.PhotometricInterpretation = "MONOCHROME2"
        item.PixelData = np.asarray(image.convert("L"), dtype=np.uint8).tobytes()
    return item


def _check(status: Dataset | None, step: str) -> None:
    """Raise :class:`PrintFailed` for a missing or failure status; log a warning status."""
    if status is None or "Status" not in status:
        raise PrintFailed(f"{step}: no answer from the printer")
    code = int(status.Status)
    if code == 0x0000:
        return
    comment = str(status.get("ErrorComment", "") or "")
    if 0xB000 <= code <= 0xBFFF or code == 0x0107 or code == 0x0116:
        logger.warning("printer warning at %s: 0x%04X %s", step, code, comment)
        return
    raise PrintFailed(f"{step} refused with status 0x{code:04X} {comment}".strip())
