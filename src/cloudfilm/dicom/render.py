"""Rendering frames to consumer images (JPEG, PNG, GIF) for /rendered, /thumbnail and WADO-URI.

The grayscale pipeline is PS3.3's (C.11, Figure C.11-1): stored values → Modality LUT (Rescale
Slope/Intercept or Modality LUT Sequence, C.11.1) → VOI LUT (window or VOI LUT Sequence,
C.11.2) → Presentation LUT (MONOCHROME1 and Presentation LUT Shape INVERSE invert, C.11.6) →
8-bit output. For integer pixels the three steps are computed once over the range of values
present in the frame and applied with a single table lookup (``lut[pixels - min]``), so
rendering a 512×512 CT costs one pass over the pixels plus the JPEG encoder.

Where the VOI comes from, in order (PS3.18 8.3.5.1.4 and 8.3.5.1.5): the ``window`` parameter;
the frame's Frame VOI LUT functional group (enhanced multi-frame, C.7.6.16.2.10); Window
Center/Width of the instance (the first pair when multi-valued); the VOI LUT Sequence; else the
range of the frame's values after the Modality LUT (min → black, max → white).

Colour images (RGB, YBR_FULL, YBR_FULL_422 converted to RGB per C.7.6.3.1.2, PALETTE COLOR
through its lookup tables per C.7.6.3.1.5) are not windowed, as in PS3.18 8.3.5.1.4.

Viewport (PS3.18 8.3.5.1.3): ``(vw, vh)`` or ``(vw, vh, sx, sy, sw, sh)``. The source region
(the whole image by default; a negative ``sw``/``sh`` flips) is scaled to fit within vw × vh
keeping its aspect ratio, and never enlarged: the result is at most the viewport and at most the
source region's size (clients scale up for display; we do not send bigger images than there
are pixels). No padding is added.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.pixels.processing import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    convert_color_space,
)
from pydicom.valuerep import PersonName

from cloudfilm.core.errors import InvalidQuery, NotAcceptable
from cloudfilm.dicom.frames import FrameReader

logger = logging.getLogger(__name__)

__all__ = [
    "MEDIA_TYPES",
    "WINDOW_PRESETS",
    "Window",
    "default_window",
    "display_pixels",
    "functional_group",
    "render_frame",
    "render_instance",
    "render_multiframe_gif",
    "render_thumbnail",
]

MediaType = Literal["image/jpeg", "image/png", "image/gif"]
MEDIA_TYPES: tuple[str, ...] = ("image/jpeg", "image/png", "image/gif")
WindowParam = tuple[float, float] | tuple[float, float, str]
ViewportParam = tuple[int, int] | tuple[int, int, float, float, float, float]
U8 = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]
_FUNCTIONS = {"LINEAR": "LINEAR", "LINEAR_EXACT": "LINEAR_EXACT", "SIGMOID": "SIGMOID",
              "LINEAR-EXACT": "LINEAR_EXACT"}  # fmt: skip
_LUT_LIMIT = 1 << 17  # largest value range rendered through a lookup table
_TECHNIQUE = (("KVP", "kV"), ("XRayTubeCurrent", "mA"), ("ExposureTime", "ms"),
              ("SliceThickness", "mm"), ("RepetitionTime", "TR"), ("EchoTime", "TE"))  # fmt: skip
_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): centre and width in modality units, and the function."""

    center: float
    width: float
    function: str = "LINEAR"

    @classmethod
    def of(cls, value: WindowParam) -> Window:
        """From the ``window`` parameter: ``(center, width)`` or ``(center, width, function)``.

        The function is ``linear``, ``linear-exact`` or ``sigmoid`` (PS3.18 8.3.5.1.4), in any
        case. Raises :class:`InvalidQuery` for a bad function or a width that is not positive.
        """
        center, width = float(value[0]), float(value[1])
        extra = value[2:]
        name = str(extra[0]).upper() if extra else "LINEAR"
        function = _FUNCTIONS.get(name)
        if function is None:
            raise InvalidQuery(f"window function {name!r} is not linear, linear-exact or sigmoid")
        if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
            raise InvalidQuery(f"window width must be a positive number, got {value[1]!r}")
        return cls(center, width, function)

    @classmethod
    def preset(cls, name: str) -> Window:
        """A named preset of :data:`WINDOW_PRESETS` (any case); :class:`InvalidQuery` if none."""
        found = WINDOW_PRESETS.get(name.strip().lower())
        if found is None:
            raise InvalidQuery(
                f"window preset {name!r} is unknown; use one of {', '.join(WINDOW_PRESETS)}"
            )
        return found


#: CT window presets (centre, width in HU), the same as the viewer's preset menu.
WINDOW_PRESETS: dict[str, Window] = {
    "lung": Window(-600, 1500),
    "mediastinum": Window(50, 350),
    "bone": Window(400, 1800),
    "brain": Window(40, 80),
    "abdomen": Window(60, 400),
}


# ---------------------------------------------------------------------------------- public API


def render_frame(
    ds_header: Dataset,
    pixels: npt.NDArray[Any],
    *,
    window: WindowParam | Window | None = None,
    viewport: ViewportParam | None = None,
    quality: int = 90,
    media_type: str = "image/jpeg",
    annotation: Iterable[str] | str | None = None,
    frame_index: int = 0,
    photometric: str | None = None,
) -> bytes:
    """Render one decoded frame to a JPEG, PNG or GIF image.

    Parameters
    ----------
    ds_header
        The instance's header (at least the Image Pixel module, PS3.3 C.7.6.3).
    pixels
        One frame as decoded (rows × columns, or rows × columns × samples).
    window
        ``(center, width[, function])`` in modality units; None for the instance's default.
    viewport
        ``(vw, vh)`` or ``(vw, vh, sx, sy, sw, sh)`` (PS3.18 8.3.5.1.3); see the module notes.
    quality
        JPEG quality, 1-100 (PS3.18 8.3.5.1.2); ignored for PNG and GIF.
    media_type
        ``image/jpeg``, ``image/png`` or ``image/gif``.
    annotation
        ``"patient"`` and/or ``"technique"`` (PS3.18 8.3.5.1.1), as a list or comma separated.
    frame_index
        0-based frame number, for per-frame functional groups and the annotation.
    photometric
        Photometric Interpretation of ``pixels`` when the decoder changed it (YBR → RGB).

    Raises
    ------
    InvalidQuery
        A parameter out of range.
    NotAcceptable
        An unsupported media type or photometric interpretation.
    """
    _check_output(media_type, quality)
    image = _to_image(ds_header, pixels, window, viewport, annotation, frame_index, photometric)
    return _encode([image], media_type, quality)


def display_pixels(
    ds_header: Dataset,
    pixels: npt.NDArray[Any],
    *,
    window: WindowParam | Window | None = None,
    frame_index: int = 0,
    photometric: str | None = None,
) -> U8:
    """The 8-bit displayed values of one frame: rows × columns (gray) or × 3 (RGB).

    Applies the Modality, VOI and Presentation LUTs to grayscale frames and converts colour
    frames to 8-bit RGB; see the module notes. No scaling.
    """
    pi = (photometric or str(ds_header.get("PhotometricInterpretation", "")) or "").strip()
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        return _color(ds_header, pixels, pi)
    if pixels.ndim != 2:
        raise NotAcceptable(f"cannot render pixels of shape {pixels.shape}")
    if pi == "PALETTE COLOR":
        return _palette(ds_header, pixels)
    if pi not in ("MONOCHROME1", "MONOCHROME2", ""):
        logger.debug("single-sample %s rendered as MONOCHROME2", pi)
    win = window if isinstance(window, Window) or window is None else Window.of(window)
    gray = _grayscale(ds_header, pixels, win, frame_index)
    shape = str(ds_header.get("PresentationLUTShape", "") or "").strip().upper()
    if pi == "MONOCHROME1" or shape == "INVERSE":
        np.subtract(255, gray, out=gray)
    return gray


def render_instance(
    blob: bytes | BinaryIO,
    dataset_offset: int,
    transfer_syntax: str,
    frame_index: int = 0,
    **params: Any,
) -> bytes:
    """Read, decode and render one frame of a stored instance (only that frame is decoded).

    ``params`` are those of :func:`render_frame` (window, viewport, quality, media_type,
    annotation). Raises :class:`~cloudfilm.core.errors.NotFound` for a missing frame or an
    instance without pixels, :class:`NotAcceptable` when the frame cannot be decoded.
    """
    reader = FrameReader(_stream(blob), dataset_offset, transfer_syntax)
    decoded = reader.decode(frame_index)
    return render_frame(
        reader.header,
        decoded.pixels,
        frame_index=frame_index,
        photometric=decoded.photometric_interpretation,
        **params,
    )


def render_multiframe_gif(
    blob: bytes | BinaryIO,
    dataset_offset: int,
    transfer_syntax: str,
    *,
    window: WindowParam | Window | None = None,
    viewport: ViewportParam | None = None,
    annotation: Iterable[str] | str | None = None,
    max_frames: int = 1000,
) -> bytes:
    """All frames (at most ``max_frames``, evenly sampled) as an animated GIF that loops.

    The frame duration comes from Frame Time (0018,1063), Cine Rate (0018,0040) or
    Recommended Display Frame Rate (0008,2144), else 100 ms. Without a ``window`` parameter
    every frame uses the window of the first one, so the animation does not flicker.
    """
    reader = FrameReader(_stream(blob), dataset_offset, transfer_syntax)
    count = reader.number_of_frames
    indices = _sample(count, max_frames)
    images: list[Image.Image] = []
    header = reader.header
    for index in indices:
        decoded = reader.decode(index)
        if window is None and decoded.pixels.ndim == 2 and not images:
            window = _default_window(header, decoded.pixels, index)
        images.append(
            _to_image(
                header, decoded.pixels, window, viewport, annotation, index,
                decoded.photometric_interpretation,
            )
        )  # fmt: skip
    if not images:
        raise NotAcceptable("the instance has no frames to animate")
    return _encode(images, "image/gif", 100, duration=_frame_duration(header))


def render_thumbnail(
    blob: bytes | BinaryIO,
    dataset_offset: int,
    transfer_syntax: str,
    *,
    size: int = 128,
    quality: int = 75,
    media_type: str = "image/jpeg",
) -> bytes:
    """A small image (fits ``size`` × ``size``) of the middle frame, default window."""
    reader = FrameReader(_stream(blob), dataset_offset, transfer_syntax)
    index = max(reader.number_of_frames, 1) // 2
    decoded = reader.decode(index)
    return render_frame(
        reader.header,
        decoded.pixels,
        viewport=(size, size),
        quality=quality,
        media_type=media_type,
        frame_index=index,
        photometric=decoded.photometric_interpretation,
    )


# ---------------------------------------------------------------------------- pipeline steps


def _stream(blob: bytes | BinaryIO) -> BinaryIO:
    return io.BytesIO(blob) if isinstance(blob, bytes | bytearray) else blob


def _check_output(media_type: str, quality: int) -> None:
    if media_type not in MEDIA_TYPES:
        raise NotAcceptable(f"cannot render {media_type!r}; choose one of {', '.join(MEDIA_TYPES)}")
    if not 1 <= int(quality) <= 100:
        raise InvalidQuery(f"quality must be between 1 and 100, got {quality}")


def _to_image(
    ds: Dataset,
    pixels: npt.NDArray[Any],
    window: WindowParam | Window | None,
    viewport: ViewportParam | None,
    annotation: Iterable[str] | str | None,
    frame_index: int,
    photometric: str | None,
) -> Image.Image:
    region = _crop(pixels, viewport)
    values = display_pixels(
        ds, region, window=window, frame_index=frame_index, photometric=photometric
    )
    image = Image.fromarray(values, "RGB" if values.ndim == 3 else "L")
    image = _fit(image, viewport)
    kinds = _annotation_kinds(annotation)
    if kinds:
        _annotate(image, ds, kinds, frame_index)
    return image


def _grayscale(ds: Dataset, pixels: npt.NDArray[Any], window: Window | None, index: int) -> U8:
    """Modality LUT → VOI → 8 bits, in one table lookup for integer data."""
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8)
    if np.issubdtype(pixels.dtype, np.integer) and pixels.size:
        low, high = int(pixels.min()), int(pixels.max())
        if high - low < _LUT_LIMIT:
            domain = np.arange(low, high + 1, dtype=np.int64)
            table = _values_to_display(ds, domain, window, index)
            return np.take(table, _offsets(pixels, low), mode="clip")
    return _values_to_display(ds, pixels, window, index)


def _offsets(pixels: npt.NDArray[Any], low: int) -> npt.NDArray[Any]:
    """``pixels - low`` as table indices, in 8/16-bit unsigned arithmetic when possible.

    The difference fits because the table spans at most the value range; wrapping unsigned
    subtraction gives it without widening the frame to 64 bits (4x faster for a CT).
    """
    size = pixels.dtype.itemsize
    if size <= 2:
        unsigned = pixels.view(f"u{size}")
        return unsigned - unsigned.dtype.type(low & (2 ** (8 * size) - 1)) if low else unsigned
    return pixels.astype(np.int64) - low


def _values_to_display(
    ds: Dataset, stored: npt.NDArray[Any], window: Window | None, index: int
) -> U8:
    """Display values (0-255) for stored values (the whole frame, or its range for a LUT)."""
    values = _modality(ds, stored, index)
    win = window or _instance_window(ds, index)
    if win is None and "VOILUTSequence" in ds:
        voi = _voi_lut_sequence(ds, stored, values)
        if voi is not None:
            return voi
    if win is None:
        # The range of modality values (for a LUT domain: of every value in the frame's range).
        low, high = float(np.min(values)), float(np.max(values))
        width = max(high - low, 1e-6)
        scaled = (values - low) * (255.0 / width) if high > low else np.zeros_like(values)
        return _to_u8(scaled)
    return _to_u8(_apply_window(values, win))


def _modality(ds: Dataset, stored: npt.NDArray[Any], index: int) -> F64:
    """Modality LUT (PS3.3 C.11.1): Rescale Slope/Intercept or the Modality LUT Sequence."""
    group = functional_group(ds, index, "PixelValueTransformationSequence")
    source = group if group is not None else ds
    if "ModalityLUTSequence" in ds and "RescaleSlope" not in source:
        try:
            return np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
        except Exception as exc:
            logger.warning("Modality LUT Sequence unusable (%s); ignored", exc)
    slope = _number(source.get("RescaleSlope"), 1.0) or 1.0
    intercept = _number(source.get("RescaleIntercept"), 0.0)
    values = stored.astype(np.float64)
    if slope != 1.0:
        values *= slope
    if intercept:
        values += intercept
    return values


def _instance_window(ds: Dataset, index: int) -> Window | None:
    """Window Center/Width of the frame (functional groups) or the instance, first pair."""
    group = functional_group(ds, index, "FrameVOILUTSequence")
    for source in (group, ds):
        if source is None or "WindowCenter" not in source or "WindowWidth" not in source:
            continue
        center = _number(source.get("WindowCenter"), None)
        width = _number(source.get("WindowWidth"), None)
        if center is None or width is None or width <= 0:
            continue
        function = str(source.get("VOILUTFunction", "") or ds.get("VOILUTFunction", "") or "")
        return Window(center, width, _FUNCTIONS.get(function.strip().upper(), "LINEAR"))
    return None


def default_window(ds: Dataset, pixels: npt.NDArray[Any], frame_index: int = 0) -> Window | None:
    """The window :func:`display_pixels` applies to a grayscale frame given no ``window``: the
    frame's or instance's own, else its value range (LINEAR_EXACT); None for a VOI LUT."""
    return _default_window(ds, pixels, frame_index)


def _default_window(ds: Dataset, pixels: npt.NDArray[Any], index: int) -> Window | None:
    """The window a frame is shown with by default, as a fixed Window (for animations)."""
    found = _instance_window(ds, index)
    if found is not None or "VOILUTSequence" in ds:
        return found
    values = _modality(ds, np.array([pixels.min(), pixels.max()]), index)
    low, high = float(values.min()), float(values.max())
    return Window((low + high) / 2, max(high - low, 1e-6), "LINEAR_EXACT")


def _apply_window(x: F64, win: Window) -> F64:
    """VOI LUT functions of PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID), to 0..255."""
    c, w, y_max = win.center, win.width, 255.0
    if win.function == "SIGMOID":
        return y_max / (1.0 + np.exp(-4.0 * (x - c) / w))
    if win.function == "LINEAR_EXACT":
        return np.clip((x - c) / w + 0.5, 0.0, 1.0) * y_max
    w = max(w, 1.0)
    if w == 1.0:  # C.11.2.1.2.1: a width of 1 is a threshold at c - 0.5
        return np.where(x <= c - 0.5, 0.0, y_max)
    return np.clip((x - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0) * y_max


def _voi_lut_sequence(ds: Dataset, stored: npt.NDArray[Any], values: F64) -> U8 | None:
    """The first VOI LUT of the VOI LUT Sequence (PS3.3 C.11.2.1.1), scaled to 8 bits."""
    try:
        item = ds.VOILUTSequence[0]
        descriptor = [int(v) for v in item.LUTDescriptor]
        first_mapped = descriptor[1]
        if first_mapped >= 2**15 and values.min() < 0:  # signed first value (US in the header)
            descriptor[1] = first_mapped - 2**16
        lut_bits = descriptor[2]
        mapped = apply_voi_lut(np.rint(values).astype(np.int64), _only_voi_lut(ds), prefer_lut=True)
        top = float(np.max(mapped)) if mapped.size else 0.0
        bits = (
            lut_bits if 8 <= lut_bits <= 16 and top < 2**lut_bits else max(8, int(top).bit_length())
        )
        return _to_u8(np.asarray(mapped, dtype=np.float64) * (255.0 / (2**bits - 1)))
    except Exception as exc:
        logger.warning("VOI LUT Sequence unusable (%s); falling back", exc)
        return None


def _only_voi_lut(ds: Dataset) -> Dataset:
    """A dataset with the VOI LUT only (so pydicom does not prefer a window)."""
    voi = Dataset()
    voi.VOILUTSequence = ds.VOILUTSequence
    voi.PixelRepresentation = ds.get("PixelRepresentation", 0)
    voi.BitsStored = ds.get("BitsStored", 16)
    return voi


def _to_u8(values: F64) -> U8:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _color(ds: Dataset, pixels: npt.NDArray[Any], pi: str) -> U8:
    """Three-sample pixels as 8-bit RGB (PS3.3 C.7.6.3.1.2)."""
    arr = pixels
    if arr.dtype != np.uint8:
        stored = int(ds.get("BitsStored", arr.dtype.itemsize * 8) or 8)
        shift = max(stored - 8, 0)
        arr = np.clip(arr.astype(np.int64) >> shift, 0, 255).astype(np.uint8)
    if pi in ("YBR_FULL", "YBR_FULL_422"):
        arr = convert_color_space(arr, pi, "RGB")
    elif pi not in ("RGB", "YBR_ICT", "YBR_RCT", ""):
        raise NotAcceptable(f"Photometric Interpretation {pi} cannot be rendered")
    return np.ascontiguousarray(arr)


def _palette(ds: Dataset, pixels: npt.NDArray[Any]) -> U8:
    """PALETTE COLOR through its Red/Green/Blue LUTs (PS3.3 C.7.6.3.1.5, C.7.9)."""
    try:
        rgb = apply_color_lut(pixels, ds)
    except Exception as exc:
        raise NotAcceptable(f"the palette colour lookup tables are unusable: {exc}") from exc
    if rgb.dtype != np.uint8:
        top = int(rgb.max()) if rgb.size else 0
        rgb = (rgb >> 8) if top > 255 else rgb
    return np.ascontiguousarray(rgb[..., :3].astype(np.uint8))


# ------------------------------------------------------------------------ geometry & output


def _crop(pixels: npt.NDArray[Any], viewport: ViewportParam | None) -> npt.NDArray[Any]:
    if viewport is None or len(viewport) != 6:
        return pixels
    rows, columns = pixels.shape[:2]
    sx, sy, sw, sh = (round(float(v)) for v in viewport[2:6])
    x0, y0 = max(0, sx), max(0, sy)
    x1 = columns if sw == 0 else min(columns, x0 + abs(sw))
    y1 = rows if sh == 0 else min(rows, y0 + abs(sh))
    if x0 >= x1 or y0 >= y1:
        raise InvalidQuery("the viewport's source region lies outside the image")
    region = pixels[y0:y1, x0:x1]
    if sw < 0:
        region = region[:, ::-1]
    if sh < 0:
        region = region[::-1]
    return region


def _fit(image: Image.Image, viewport: ViewportParam | None) -> Image.Image:
    if viewport is None:
        return image
    vw, vh = int(viewport[0] or 0), int(viewport[1] or 0)
    if vw < 0 or vh < 0 or (vw == 0 and vh == 0):
        raise InvalidQuery(f"viewport width and height must be positive, got {vw},{vh}")
    width, height = image.size
    scale = min(vw / width if vw else np.inf, vh / height if vh else np.inf, 1.0)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _encode(
    images: Sequence[Image.Image], media_type: str, quality: int, duration: int = 100
) -> bytes:
    out = io.BytesIO()
    first = images[0]
    if media_type == "image/jpeg":
        first.save(out, "JPEG", quality=int(quality))
    elif media_type == "image/png":
        first.save(out, "PNG", compress_level=3)
    else:
        frames = [im if im.mode == "L" else im.convert("P", palette=Image.Palette.ADAPTIVE)
                  for im in images]  # fmt: skip
        if len(frames) == 1:
            frames[0].save(out, "GIF")
        else:
            frames[0].save(
                out, "GIF", save_all=True, append_images=frames[1:], duration=duration, loop=0
            )
    return out.getvalue()


def _frame_duration(ds: Dataset) -> int:
    frame_time = _number(ds.get("FrameTime"), 0.0)
    if frame_time > 0:
        return max(round(float(frame_time)), 20)
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = _number(ds.get(keyword), 0.0)
        if rate > 0:
            return max(round(1000 / float(rate)), 20)
    return 100


def _sample(count: int, limit: int) -> list[int]:
    if count <= limit:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, limit)})


# ------------------------------------------------------------------------------- annotation


def _annotation_kinds(annotation: Iterable[str] | str | None) -> list[str]:
    if not annotation:
        return []
    items = annotation.split(",") if isinstance(annotation, str) else list(annotation)
    kinds = [item.strip().lower() for item in items if item.strip()]
    for kind in kinds:
        if kind not in ("patient", "technique"):
            raise InvalidQuery(f"annotation {kind!r} is not 'patient' or 'technique'")
    return kinds


def _annotate(image: Image.Image, ds: Dataset, kinds: list[str], index: int) -> None:
    """Burn in text (PS3.18 8.3.5.1.1): patient top left, technique bottom left."""
    size = max(9, min(image.size) // 28)
    draw = ImageDraw.Draw(image)
    fill: Any = 255 if image.mode == "L" else (255, 255, 255)
    stroke: Any = 0 if image.mode == "L" else (0, 0, 0)
    if "patient" in kinds:
        y = 2
        for line in _patient_lines(ds):
            font = _font(size, bool(_CJK.search(line)))
            text = line if _has_cjk_font() or not _CJK.search(line) else _CJK.sub("?", line)
            draw.text((3, y), text, font=font, fill=fill, stroke_width=1, stroke_fill=stroke)
            y += size + 2
    if "technique" in kinds:
        lines = _technique_lines(ds, index)
        y = image.size[1] - (size + 2) * len(lines) - 2
        for line in lines:
            font = _font(size, False)
            draw.text((3, y), _CJK.sub("?", line), font=font, fill=fill, stroke_width=1,
                      stroke_fill=stroke)  # fmt: skip
            y += size + 2


def _patient_lines(ds: Dataset) -> list[str]:
    lines = []
    name = ds.get("PatientName")
    if name:
        lines.append(_person_name(name))
    ident = str(ds.get("PatientID", "") or "")
    sex, birth = str(ds.get("PatientSex", "") or ""), str(ds.get("PatientBirthDate", "") or "")
    details = " ".join(part for part in (ident, sex, _date(birth)) if part)
    if details:
        lines.append(details)
    study = " ".join(
        part
        for part in (
            _date(str(ds.get("StudyDate", "") or "")),
            str(ds.get("StudyDescription", "") or ""),
        )
        if part
    )
    if study:
        lines.append(study)
    return lines


def _person_name(value: Any) -> str:
    """The name to show: ideographic (Chinese) when a CJK font exists, else alphabetic."""
    name = value if isinstance(value, PersonName) else PersonName(str(value))
    alphabetic = str(name.alphabetic or "").replace("^", " ").strip()
    ideographic = str(name.ideographic or "").replace("^", "").strip()
    if ideographic and _has_cjk_font():
        return f"{ideographic} {alphabetic}".strip()
    if alphabetic and (_has_cjk_font() or not _CJK.search(alphabetic)):
        return alphabetic
    return alphabetic or ideographic


def _technique_lines(ds: Dataset, index: int) -> list[str]:
    frames = int(_number(ds.get("NumberOfFrames"), 1.0) or 1)
    first = " ".join(
        part
        for part in (str(ds.get("Modality", "") or ""), str(ds.get("SeriesDescription", "") or ""))
        if part
    )
    second = []
    for keyword, unit in _TECHNIQUE:
        value = ds.get(keyword)
        if value not in (None, ""):
            second.append(f"{_number(value, 0.0):g} {unit}")
    window = _instance_window(ds, index)
    if window is not None:
        second.append(f"W {window.width:g} L {window.center:g}")
    lines = [line for line in (first, " ".join(second)) if line]
    if frames > 1:
        lines.append(f"frame {index + 1}/{frames}")
    return lines


def _date(value: str) -> str:
    value = value.strip()
    return (
        f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value
    )


@functools.lru_cache(maxsize=1)
def _cjk_font_path() -> str | None:
    """A font file that covers Chinese, from fontconfig (e.g. fonts-noto-cjk, fonts-wqy-*)."""
    if shutil.which("fc-list") is None:
        return None
    try:
        found = subprocess.run(
            ["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    paths = sorted(line.strip().rstrip(":") for line in found.splitlines() if line.strip())
    return paths[0] if paths else None


def _has_cjk_font() -> bool:
    return _cjk_font_path() is not None


@functools.lru_cache(maxsize=16)
def _font(size: int, cjk: bool) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = _cjk_font_path() if cjk else None
    for candidate in (path, "DejaVuSans.ttf"):
        if candidate:
            try:
                return ImageFont.truetype(candidate, size)
            except OSError:
                continue
    return ImageFont.load_default(size)


# ----------------------------------------------------------------------------------- helpers


def functional_group(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """The item of a functional group macro for frame ``index`` (PS3.3 C.7.6.16)."""
    for container, position in (("PerFrameFunctionalGroupsSequence", index),
                                ("SharedFunctionalGroupsSequence", 0)):  # fmt: skip
        groups = ds.get(container)
        if not groups or position >= len(groups):
            continue
        inner = groups[position].get(keyword)
        if inner:
            item: Dataset = inner[0]
            return item
    return None


def _number(value: Any, default: Any) -> Any:
    if value is None or value == "":
        return default
    if isinstance(value, list | tuple) or (
        hasattr(value, "__getitem__") and not isinstance(value, str | bytes)
    ):
        try:
            value = value[0]
        except (IndexError, TypeError):
            return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if np.isfinite(number) else default
