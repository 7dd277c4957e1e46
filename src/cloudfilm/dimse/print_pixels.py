"""Pixels of the virtual printer's image boxes, and the statuses its handlers answer with.

A print SCU sends *P-values* (PS3.14: perceptually linear presentation values), already
windowed on the modality: a Basic Grayscale Image Box holds 8 bits, or 12 bits stored in 16
(PS3.4 H.4.3.1), MONOCHROME2 (MONOCHROME1 inverted); a Basic Color Image Box RGB, 8 bits,
colour-by-plane (Planar Configuration 1, H.4.3.2). A Presentation LUT (H.4.9) maps P-values
through its LUT, or by its shape. Everything becomes the 8-bit image a sheet is composed from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from cloudfilm.film.compose import CellImage, Spacing

__all__ = ["PresentationLut", "Refused", "image_cell", "lut_table"]

#: Largest image (rows or columns) an image box takes.
MAX_IMAGE_SIDE = 16384

# Statuses (PS3.7 Annex C; PS3.4 H.4 for 0xB6xx and 0xC6xx).
NO_SUCH_ATTRIBUTE = 0x0105
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_INSTANCE = 0x0112
NO_SUCH_SOP_CLASS = 0x0118
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
NO_SUCH_ACTION = 0x0123
UNRECOGNIZED_OPERATION = 0x0211
RESOURCE_LIMITATION = 0x0213
EMPTY_SESSION = 0xB602
EMPTY_FILM_BOX = 0xB603
NO_FILM_BOX = 0xC600
INSUFFICIENT_MEMORY = 0xC605


class Refused(Exception):
    """A request answered with a failure or warning status."""

    def __init__(self, code: int, comment: str) -> None:
        super().__init__(comment)
        self.code = code
        self.comment = comment


@dataclass
class PresentationLut:
    """A Presentation LUT SOP instance: a shape, or a table from P-values to 8 bits."""

    uid: str
    shape: str = "IDENTITY"
    table: np.ndarray[Any, np.dtype[np.uint8]] | None = None
    first: int = 0


def lut_table(item: Dataset) -> tuple[np.ndarray[Any, np.dtype[np.uint8]], int]:
    """A Presentation LUT Sequence item (LUT Descriptor, LUT Data) as a table to 8 bits."""
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        data = np.asarray(item.LUTData, dtype=np.float64).ravel()
    except Exception:
        raise Refused(INVALID_ATTRIBUTE_VALUE, "LUT Descriptor or LUT Data unreadable") from None
    entries = entries or 65536
    if not 8 <= bits <= 16 or data.size < entries:
        raise Refused(INVALID_ATTRIBUTE_VALUE, "LUT Descriptor does not match LUT Data")
    top = float((1 << bits) - 1)
    table = np.clip(np.rint(data[:entries] * 255.0 / top), 0, 255).astype(np.uint8)
    return table, first


def image_cell(
    item: Dataset, color: bool, little_endian: bool, lut: PresentationLut | None = None
) -> CellImage:
    """The 8-bit image of a Basic Grayscale or Color Image Sequence item (PS3.4 H.4.3).

    Grayscale values are P-values: ``BitsStored`` bits (8, or 12 in 16 allocated) scaled to
    8 bits, or mapped through the Presentation LUT; MONOCHROME1 is inverted. Colour is RGB,
    8 bits, planar configuration 1 (colour-by-plane; 0 is also read).

    Raises
    ------
    Refused
        0x0121 for a missing attribute, 0x0106 for a value that is not allowed.
    """
    required = (
        "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
        "BitsStored", "HighBit", "PixelRepresentation", "PixelData",
    )  # fmt: skip
    for keyword in required:
        if keyword not in item or item[keyword].value in (None, b"", ""):
            raise Refused(MISSING_ATTRIBUTE_VALUE, f"image item: {keyword} is missing")
    samples = int(item.SamplesPerPixel)
    photometric = str(item.PhotometricInterpretation).strip().upper()
    rows, columns = int(item.Rows), int(item.Columns)
    allocated, stored, high = int(item.BitsAllocated), int(item.BitsStored), int(item.HighBit)
    if not (0 < rows <= MAX_IMAGE_SIDE and 0 < columns <= MAX_IMAGE_SIDE):
        raise Refused(INVALID_ATTRIBUTE_VALUE, f"image of {columns} x {rows} pixels")
    if int(item.PixelRepresentation) != 0 or high != stored - 1:
        raise Refused(INVALID_ATTRIBUTE_VALUE, "pixels must be unsigned, High Bit = stored - 1")
    data = bytes(item.PixelData)
    if color:
        if samples != 3 or photometric != "RGB" or (allocated, stored) != (8, 8):
            raise Refused(INVALID_ATTRIBUTE_VALUE, "colour image boxes take RGB, 8 bits")
        planar = int(item.get("PlanarConfiguration", 1) or 0)
        if len(data) < rows * columns * 3:
            raise Refused(INVALID_ATTRIBUTE_VALUE, "Pixel Data is shorter than the image")
        flat = np.frombuffer(data, dtype=np.uint8, count=rows * columns * 3)
        pixels = (
            flat.reshape(3, rows, columns).transpose(1, 2, 0)
            if planar == 1
            else flat.reshape(rows, columns, 3)
        )
    else:
        if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise Refused(INVALID_ATTRIBUTE_VALUE, "grayscale image boxes take MONOCHROME1/2")
        if (allocated, stored) not in ((8, 8), (16, 12), (16, 16)):
            raise Refused(INVALID_ATTRIBUTE_VALUE, f"{stored} of {allocated} bits")
        size = rows * columns * (allocated // 8)
        if len(data) < size:
            raise Refused(INVALID_ATTRIBUTE_VALUE, "Pixel Data is shorter than the image")
        dtype = (
            np.dtype(np.uint8) if allocated == 8 else np.dtype("<u2" if little_endian else ">u2")
        )
        raw = np.frombuffer(data, dtype=dtype, count=rows * columns).reshape(rows, columns)
        values = raw.astype(np.int64) & ((1 << stored) - 1)
        pixels = _to_8_bits(values, stored, lut)
        if photometric == "MONOCHROME1":
            pixels = 255 - pixels
    return CellImage(np.ascontiguousarray(pixels, dtype=np.uint8), spacing=_aspect(item))


def _to_8_bits(
    values: np.ndarray[Any, np.dtype[np.int64]], stored: int, lut: PresentationLut | None
) -> np.ndarray[Any, np.dtype[np.uint8]]:
    if lut is not None and lut.table is not None:
        index = np.clip(values - lut.first, 0, lut.table.size - 1)
        return np.asarray(lut.table[index], dtype=np.uint8)
    top = (1 << stored) - 1
    scaled = ((values * 255 + top // 2) // top).astype(np.uint8)
    if lut is not None and lut.shape == "INVERSE":
        return (255 - scaled).astype(np.uint8)
    return scaled


def _aspect(item: Dataset) -> Spacing | None:
    ratio = item.get("PixelAspectRatio")
    try:
        row, column = (float(v) for v in ratio) if ratio else (1.0, 1.0)
    except (TypeError, ValueError):
        raise Refused(INVALID_ATTRIBUTE_VALUE, f"Pixel Aspect Ratio {ratio!r}") from None
    if row <= 0 or column <= 0:
        raise Refused(INVALID_ATTRIBUTE_VALUE, f"Pixel Aspect Ratio {ratio!r}")
    return None if row == column else Spacing(row, column)
