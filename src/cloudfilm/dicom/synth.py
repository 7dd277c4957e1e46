"""Deterministic synthetic DICOM studies (CT, MR, CR, US) for tests, demos and benchmarks.

Everything, UIDs included, is a pure function of the arguments: the same ``seed`` gives the same
bytes, another seed other UIDs, identifiers and noise. Nothing touches the network or a database;
only :func:`write_studies` writes files.

Conventions
-----------
* Patient coordinates are DICOM LPS, in mm: +x towards the patient's left, +y posterior,
  +z superior. Axial images use ImageOrientationPatient ``[1, 0, 0, 0, 1, 0]``.
* Phantoms are drawn in mm, so overriding ``rows``/``columns`` rescales the pixel spacing and
  keeps the anatomy.
* ``charset="ir58"`` is ``\\ISO 2022 IR 58`` (GB2312 with ISO 2022 escape sequences). pydicom
  3.0 writes that code extension wrongly (no ``ESC $ ) A``), so the Chinese text of those
  datasets is encoded here (see :func:`_encode_iso2022_ir58`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.charset import convert_encodings, encode_string
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.encoders.base import (
    JPEG2000LosslessEncoder,
    JPEGLSLosslessEncoder,
    RLELosslessEncoder,
)
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
)
from pydicom.uid import (
    ComputedRadiographyImageStorage as CRImageStorage,
)
from pydicom.uid import (
    UltrasoundMultiFrameImageStorage as USMultiFrameStorage,
)
from pydicom.valuerep import PersonName

__all__ = ["CHARSETS", "MODALITIES", "TRANSFER_SYNTAXES", "generate_studies", "write_studies"]

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
Arr = npt.NDArray[np.generic]

_COMPRESSED = {"rle": RLELosslessEncoder, "jpegls": JPEGLSLosslessEncoder}
_COMPRESSED["jpeg2000"] = JPEG2000LosslessEncoder

#: Short name -> Transfer Syntax UID; compressed ones only when an encoder is installed.
TRANSFER_SYNTAXES: dict[str, str] = {
    "explicit": str(ExplicitVRLittleEndian),
    "implicit": str(ImplicitVRLittleEndian),
    **{name: str(enc.UID) for name, enc in _COMPRESSED.items() if enc.is_available},
}
#: Supported ``charset`` names (see ``_CHARSET_TERMS`` for the Specific Character Set values).
CHARSETS = ("utf8", "gb18030", "ir58")
#: Supported ``modality`` values.
MODALITIES = ("CT", "MR", "CR", "US")

_CHARSET_TERMS: dict[str, str | list[str]] = {
    "utf8": "ISO_IR 192",
    "gb18030": "GB18030",
    "ir58": ["", "ISO 2022 IR 58"],  # value 1 empty = default repertoire (ISO-IR 6) in G0
}
_CHARSET_CODECS = {"utf8": "utf-8", "gb18030": "gb18030", "ir58": "gb2312"}
_IR58_ESCAPE = b"\x1b$)A"  # designates GB2312 (ISO-IR 58) to G1, PS3.3 Table C.12-4

# (romanised, ideographic) family and given names; sex follows the given name.
_FAMILY = [("Zhang", "张"), ("Wang", "王"), ("Li", "李"), ("Liu", "刘"), ("Chen", "陈")]
_FAMILY += [("Yang", "杨"), ("Zhao", "赵"), ("Huang", "黄"), ("Zhou", "周"), ("Wu", "吴")]
_GIVEN = [("Wei", "伟", "M"), ("Fang", "芳", "F"), ("Na", "娜", "F"), ("Yang", "洋", "M")]
_GIVEN += [("Jing", "静", "F"), ("Lei", "磊", "M"), ("Min", "敏", "F"), ("Qiang", "强", "M")]
_GIVEN += [("Jie", "杰", "M"), ("Xiuying", "秀英", "F")]
_SECOND = [("Hua", "华"), ("Ming", "明"), ("Hong", "红"), ("Jun", "军"), ("Ping", "平")]


@dataclass(frozen=True)
class _Spec:
    """Per-modality defaults: SOP class, geometry and descriptions (Chinese, English)."""

    sop_class: str
    rows: int
    columns: int
    body_part: str
    study_zh: str
    study_en: str
    series: str


_SPECS = {
    "CT": _Spec(CTImageStorage, 512, 512, "CHEST", "胸腹部 CT 平扫", "CT Chest/Abdomen", "Axial"),
    "MR": _Spec(MRImageStorage, 256, 256, "HEAD", "头颅 MR 平扫", "MR Head", "T1 SE AXIAL"),
    "CR": _Spec(CRImageStorage, 2500, 3000, "CHEST", "胸部正位片", "Chest PA", "CHEST PA"),
    "US": _Spec(USMultiFrameStorage, 480, 640, "HEART", "心脏超声", "Echocardiography", "Cine"),
}
_US_MAX_FRAMES = 30
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cloudfilm:dicom:synth")


@dataclass(frozen=True)
class _Options:
    seed: int
    modality: str
    slices: int
    patients: int
    studies_per_patient: int
    transfer_syntax: str
    charset: str
    rows: int
    columns: int


@dataclass(frozen=True)
class _Study:
    """Identity shared by every instance of one study (and its single series)."""

    opts: _Options
    study_index: int
    alphabetic: str
    ideographic: str
    sex: str
    birth: date
    when: date
    time: str
    patient_id: str
    accession: str
    study_uid: str
    series_uid: str
    frame_uid: str


# --------------------------------------------------------------------------- determinism


def _uid(*parts: object) -> str:
    """Deterministic ``2.25.<int>`` UID: the integer is a name-based (version 5) UUID.

    ``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)`` ignores ``entropy_srcs`` and
    returns a random UUID4, and with ``prefix="2.25."`` it appends 59 digits of a SHA-512,
    which is no UUID; the 2.25 arc (PS3.5 B.2) needs a 128-bit UUID, hence ``uuid5``.
    """
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '/'.join(map(str, parts))).int}"


def _digest(*parts: object) -> int:
    raw = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(raw[:16], "big")


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(_digest("rng", *parts))


# --------------------------------------------------------------------------- character sets


def _encode_iso2022_ir58(value: str, delimiters: str) -> bytes:
    """Encode `value` for Specific Character Set ``\\ISO 2022 IR 58`` (PS3.5 6.1.2.5, Annex K).

    ASCII stays in G0; every run containing Chinese starts with ``ESC $ ) A`` and is GB2312
    with the high bit set (EUC-CN). The designation is repeated after each delimiter (``^`` and
    ``=`` in PN, ``\\`` between values), where the initial state is restored.

    pydicom 3.0.2 puts ``iso_ir_58`` in ``charset.handled_encodings`` (codecs that emit their
    own escape sequences), but Python's ``iso_ir_58`` is plain GB2312: it writes no escape
    sequence, and on reading keeps ``ESC $ ) A`` in the decoded text. Hence this encoder.
    """
    out = bytearray()
    for part in re.split(f"([{re.escape(delimiters)}])", value):
        out += part.encode("ascii") if part.isascii() else _IR58_ESCAPE + part.encode("gb2312")
    return bytes(out)


def _text(zh: str, en: str, charset: str) -> str:
    """Chinese text where the character set can encode it, English otherwise."""
    try:
        zh.encode(_CHARSET_CODECS[charset])
    except UnicodeEncodeError:
        return en
    return zh


def _pydicom_writes_ir58() -> bool:
    """Whether pydicom emits ``ESC $ ) A`` itself, as after ``charset.apply_pydicom_fixes()``."""
    probe = encode_string("中", convert_encodings(_CHARSET_TERMS["ir58"]))
    return probe.startswith(_IR58_ESCAPE)


def _set_text(ds: Dataset, keyword: str, value: str, charset: str) -> None:
    """Set an SH/LO/ST element.

    For IR 58 with an unpatched pydicom, non-ASCII text is stored pre-encoded (``bytes``) so
    that the file is still right; with the fix of :mod:`cloudfilm.dicom.charset` (applied when
    :mod:`cloudfilm.dicom` is imported) the value stays ``str``.
    """
    if charset == "ir58" and not value.isascii() and not _pydicom_writes_ir58():
        setattr(ds, keyword, _encode_iso2022_ir58(value, "\\"))
    else:
        setattr(ds, keyword, value)


def _set_pn(ds: Dataset, keyword: str, value: str, charset: str) -> None:
    """Set a PN element; for IR 58 our encoded bytes are attached as ``original_string``.

    pydicom writes ``original_string`` unchanged when the dataset's encodings match, so the
    file is right whether or not pydicom is patched, and the in-memory value stays Unicode.
    """
    if charset == "ir58" and not value.isascii():
        encodings = convert_encodings(_CHARSET_TERMS[charset])
        raw = _encode_iso2022_ir58(value, "^=\\")
        setattr(ds, keyword, PersonName(value, encodings=encodings, original_string=raw))
    else:
        setattr(ds, keyword, value)


# --------------------------------------------------------------------------- identity


def _patient_name(seed: int, index: int) -> tuple[str, str, str]:
    """Return (alphabetic, ideographic, sex); distinct for the first 500 patients of a seed."""
    q = index + seed * 37
    fam_rom, fam_han = _FAMILY[q % 10]
    giv_rom, giv_han, sex = _GIVEN[(q // 10 + q) % 10]
    if index >= 100:
        sec_rom, sec_han = _SECOND[(index // 100 - 1) % len(_SECOND)]
        giv_rom, giv_han = giv_rom + sec_rom.lower(), giv_han + sec_han
    return f"{fam_rom}^{giv_rom}", f"{fam_han}^{giv_han}", sex


def _make_study(opts: _Options, patient: int, study: int) -> _Study:
    alphabetic, ideographic, sex = _patient_name(opts.seed, patient)
    prng = _rng(opts.seed, "patient", patient)
    birth = date(1940, 1, 1) + timedelta(days=int(prng.integers(0, 65 * 365)))
    srng = _rng(opts.seed, "study", patient, study, opts.modality)
    when = date(2024, 1, 2) + timedelta(days=int(prng.integers(0, 300)) + 120 * study)
    hh, mm, ss = (int(srng.integers(7, 18)), int(srng.integers(0, 60)), int(srng.integers(0, 60)))
    tag = _digest("id", opts.seed) % 1_000_000
    # Study UIDs depend on everything that changes the content, not on the encoding.
    key = (opts.seed, patient, study, opts.modality, opts.slices, opts.rows, opts.columns)
    return _Study(
        opts=opts,
        study_index=study,
        alphabetic=alphabetic,
        ideographic=ideographic,
        sex=sex,
        birth=birth,
        when=when,
        time=f"{hh:02d}{mm:02d}{ss:02d}",
        patient_id=f"CF{tag:06d}{patient:04d}",
        accession=f"A{tag:06d}{patient:04d}{study:02d}",
        study_uid=_uid("study", *key),
        series_uid=_uid("series", *key),
        frame_uid=_uid("frame", *key),
    )


def _base_dataset(st: _Study, number: int) -> Dataset:
    """Patient, General Study/Series/Equipment/Image and SOP Common modules for one instance."""
    opts, spec, cs = st.opts, _SPECS[st.opts.modality], st.opts.charset
    ds = Dataset()
    ds.SpecificCharacterSet = _CHARSET_TERMS[cs]
    ds.SOPClassUID = spec.sop_class
    ds.SOPInstanceUID = _uid("instance", st.series_uid, number)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = st.when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = st.time
    ds.AccessionNumber = st.accession
    ds.Modality = opts.modality
    ds.Manufacturer = ds.ManufacturerModelName = "cloudfilm synth"
    _set_text(ds, "InstitutionName", _text("云胶片示范医院", "Cloudfilm Demo Hospital", cs), cs)
    _set_pn(ds, "ReferringPhysicianName", _name("Li^Ming", "李^明", cs), cs)
    _set_text(ds, "StudyDescription", _text(spec.study_zh, spec.study_en, cs), cs)
    ds.SeriesDescription = spec.series
    _set_pn(ds, "PatientName", _name(st.alphabetic, st.ideographic, cs), cs)
    ds.PatientID = st.patient_id
    ds.PatientBirthDate = st.birth.strftime("%Y%m%d")
    ds.PatientSex = st.sex
    ds.PatientAge = f"{(st.when - st.birth).days // 365:03d}Y"
    ds.BodyPartExamined = spec.body_part
    ds.StudyInstanceUID = st.study_uid
    ds.SeriesInstanceUID = st.series_uid
    ds.StudyID = f"{st.study_index + 1}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"][: 3 if opts.modality in ("CT", "MR") else 2]
    return ds


def _name(alphabetic: str, ideographic: str, charset: str) -> str:
    """PN with alphabetic and ideographic component groups when the charset allows it."""
    return f"{alphabetic}={_text(ideographic, '', charset)}".rstrip("=")


def _pixel_module(ds: Dataset, shape: tuple[int, int], bits_stored: int, signed: bool) -> None:
    """Greyscale Image Pixel module, 16 bits allocated."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)


def _ds(value: float) -> float:
    """Round to fit a DS value (at most 16 characters)."""
    return round(float(value), 6)


# --------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class _Grid:
    """Pixel-centre coordinates in mm: ``x`` per column, ``y`` per row (both ascending)."""

    x: F32
    y: F32
    spacing: float

    @property
    def x0(self) -> float:
        return float(self.x[0])

    @property
    def y0(self) -> float:
        return float(self.y[0])

    @classmethod
    def centred(cls, rows: int, columns: int, spacing: float) -> _Grid:
        x = (np.arange(columns, dtype=np.float32) - (columns - 1) / 2) * spacing
        y = (np.arange(rows, dtype=np.float32) - (rows - 1) / 2) * spacing
        return cls(x.astype(np.float32), y.astype(np.float32), spacing)


def _ellipse(
    g: _Grid, cx: float, cy: float, a: float, b: float
) -> tuple[slice, slice, npt.NDArray[np.bool_]] | None:
    """Bounding window and mask of the ellipse with centre (cx, cy) and semi-axes a, b (mm)."""
    if a <= 0 or b <= 0:
        return None
    x0, y0, sp = g.x0, g.y0, g.spacing
    c0, c1 = (
        max(math.ceil((cx - a - x0) / sp), 0),
        min(math.floor((cx + a - x0) / sp) + 1, g.x.size),
    )
    r0, r1 = (
        max(math.ceil((cy - b - y0) / sp), 0),
        min(math.floor((cy + b - y0) / sp) + 1, g.y.size),
    )
    if c1 <= c0 or r1 <= r0:
        return None
    dx = ((g.x[c0:c1] - cx) / a) ** 2
    dy = ((g.y[r0:r1] - cy) / b) ** 2
    return slice(r0, r1), slice(c0, c1), dy[:, None] + dx[None, :] <= 1.0


def _paint(img: F32, g: _Grid, cx: float, cy: float, a: float, b: float, value: float) -> None:
    """Fill an ellipse (mm) of `img` with `value`, touching only its bounding window."""
    hit = _ellipse(g, cx, cy, a, b)
    if hit is not None:
        rs, cs, mask = hit
        img[rs, cs][mask] = value


def _ramp(x: float, start: float, end: float) -> float:
    """0 before `start`, 1 after `end`, a square-root rise in between (rounded organ tips)."""
    return math.sqrt(min(max((x - start) / (end - start), 0.0), 1.0))


def _slab(count: int, extent: float, choices: tuple[float, ...]) -> tuple[float, list[float]]:
    """Slice thickness (mm) covering about `extent` mm, and slice centres around extent/2."""
    thick = next((t for t in reversed(choices) if count * t <= extent * 1.2), choices[0])
    first = extent / 2 - (count - 1) * thick / 2
    return thick, [first + i * thick for i in range(count)]


# --------------------------------------------------------------------------- CT


def _ct_body(z: float) -> tuple[float, float, float]:
    """Body outline semi-axes (lateral a, AP b) and centre y in mm at depth z below the apex."""
    return 140.0 + 12.0 * math.sin(math.pi * z / 300.0), 105.0 + 5.0 * math.cos(z / 60.0), 10.0


def _ct_thorax(img: F32, g: _Grid, z: float, vessels: F32) -> None:
    """Lungs with vessels, heart, great vessels and trachea (HU)."""
    a, b, cy = _ct_body(z)
    for side, base_end in ((-1, 200.0), (1, 215.0)):  # patient right (-x) has the higher dome
        f = _ramp(z, 0.0, 60.0) * _ramp(base_end - z, 0.0, 60.0)
        lx, ly, la, lb = side * 0.42 * a, cy - 0.05 * b, 0.33 * a * f, 0.62 * b * f
        _paint(img, g, lx, ly, la, lb, -850.0)
        for u, v, r, ph in vessels[vessels[:, 0] == side][:, 1:]:
            du = u + 0.12 * math.sin(z / 25.0 + ph)
            _paint(img, g, lx + du * la * 0.8, ly + v * lb * 0.8, r * f, r * f, 35.0)
    h = max(math.sin(math.pi * (z - 90.0) / 115.0), 0.0) if 90.0 < z < 205.0 else 0.0
    _paint(img, g, 0.08 * a, cy - 0.2 * b, 54.0 * h, 48.0 * h, -90.0)  # pericardial fat
    _paint(img, g, 0.08 * a, cy - 0.2 * b, 48.0 * h, 42.0 * h, 45.0)  # heart
    if 60.0 < z < 130.0:
        _paint(img, g, 0.05 * a, cy - 0.28 * b, 15.0, 15.0, 45.0)  # ascending aorta
    if z > 50.0:
        _paint(img, g, 0.14 * a, cy + 0.45 * b, 11.0, 11.0, 45.0)  # descending aorta
    if z < 85.0:
        _paint(img, g, 0.0, cy - 0.38 * b, 9.0, 9.0, -1000.0)  # trachea


def _ct_abdomen(img: F32, g: _Grid, z: float) -> None:
    """Liver, spleen, stomach with a gas bubble and kidneys (HU)."""
    a, b, cy = _ct_body(z)
    liver = _ramp(z, 175.0, 225.0)
    _paint(img, g, -0.35 * a, cy, 0.45 * a * liver, 0.6 * b * liver, 60.0)
    spleen = _ramp(z, 205.0, 235.0) * _ramp(290.0 - z, 0.0, 30.0)
    _paint(img, g, 0.58 * a, cy + 0.3 * b, 30.0 * spleen, 45.0 * spleen, 50.0)
    stomach = _ramp(z, 195.0, 215.0) * _ramp(265.0 - z, 0.0, 20.0)
    _paint(img, g, 0.33 * a, cy - 0.25 * b, 45.0 * stomach, 35.0 * stomach, 20.0)
    _paint(img, g, 0.33 * a, cy - 0.25 * b - 22.0 * stomach, 25 * stomach, 10 * stomach, -950.0)
    kidney = _ramp(z, 240.0, 260.0)
    for side in (-1, 1):
        _paint(img, g, side * 0.35 * a, cy + 0.42 * b, 26.0 * kidney, 34.0 * kidney, 35.0)


def _bone(img: F32, g: _Grid, cx: float, cy: float, a: float, b: float, shell: float) -> None:
    """Cortical bone (900 HU) with a cancellous core (300 HU) `shell` mm inside."""
    _paint(img, g, cx, cy, a, b, 900.0)
    _paint(img, g, cx, cy, a - shell, b - shell, 300.0)


def _ct_bones(img: F32, g: _Grid, z: float) -> None:
    """Vertebra (with discs every 28 mm), posterior arch, sternum and rib sections (HU)."""
    a, b, cy = _ct_body(z)
    vy = cy + 0.6 * b
    if (z % 28.0) < 5.0:
        _paint(img, g, 0.0, vy, 17.0, 14.0, 90.0)  # intervertebral disc
    else:
        _bone(img, g, 0.0, vy, 17.0, 14.0, 3.0)
    _paint(img, g, 0.0, vy + 24.0, 14.0, 11.0, 800.0)  # lamina
    _paint(img, g, 0.0, vy + 47.0, 4.0, 13.0, 800.0)  # spinous process
    _paint(img, g, 0.0, vy + 22.0, 8.0, 7.0, 15.0)  # spinal canal (CSF)
    if 30.0 < z < 195.0:
        _bone(img, g, 0.0, cy - b + 18.0, 13.0, 6.0, 2.5)  # sternum
    if 10.0 < z < 235.0:
        for k in range(6):
            for side in (-1, 1):
                t = 0.25 + 0.42 * k + 0.12 * math.sin(z / 18.0 + k)  # angle from anterior
                rx, ry = side * (a - 17.0) * math.sin(t), cy - (b - 17.0) * math.cos(t)
                _bone(img, g, rx, ry, 6.0, 5.0, 2.0)


def _ct_slice(g: _Grid, z: float, vessels: F32, rng: np.random.Generator) -> Arr:
    """One axial CT image in HU (int16) at depth `z` mm below the lung apex."""
    img = np.full((g.y.size, g.x.size), -1000.0, dtype=np.float32)
    a, b, cy = _ct_body(z)
    _paint(img, g, 0.0, cy, a, b, -100.0)  # subcutaneous fat
    _paint(img, g, 0.0, cy, a - 13.0, b - 13.0, 45.0)  # muscle / soft tissue
    _ct_thorax(img, g, z, vessels)
    _ct_abdomen(img, g, z)
    _ct_bones(img, g, z)
    body = _ellipse(g, 0.0, cy, a, b)
    if body is not None:  # quantum noise inside the patient only: air stays exactly -1000
        rs, cs, mask = body
        noise = rng.standard_normal(mask.shape, dtype=np.float32) * np.float32(8.0)
        img[rs, cs] += np.where(mask, noise, np.float32(0.0))
    return np.rint(img).clip(-1024, 3071).astype("<i2")


def _ct_series(st: _Study) -> Iterator[tuple[Dataset, Arr]]:
    """Axial chest/abdomen CT: stored values are HU (signed, slope 1, intercept 0)."""
    opts = st.opts
    g = _Grid.centred(opts.rows, opts.columns, 360.0 / max(opts.rows, opts.columns))
    rng = _rng(st.series_uid, "pixels")
    # 16 lung vessels per side: side, offsets u, v (fractions of the lung), radius mm, phase
    side = np.repeat([-1.0, 1.0], 16)[:, None]
    shape = rng.uniform([-0.8, -0.8, 1.2, 0.0], [0.8, 0.8, 4.0, 2 * math.pi], (32, 4))
    vessels = np.hstack([side, shape]).astype(np.float32)
    thick, depths = _slab(opts.slices, 300.0, (0.625, 1.0, 1.25, 2.5, 5.0))
    for i, z in enumerate(depths):
        ds = _base_dataset(st, i + 1)
        _pixel_module(ds, (opts.rows, opts.columns), 16, signed=True)
        _cross_section(ds, st, g, thick, 100.0 - z)
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = [40, -600], [400, 1500]
        ds.WindowCenterWidthExplanation = ["SOFT TISSUE", "LUNG"]
        ds.KVP, ds.XRayTubeCurrent, ds.ConvolutionKernel = 120, 200, "STANDARD"
        ds.ReconstructionDiameter = _ds(g.spacing * max(opts.rows, opts.columns))
        ds.GantryDetectorTilt = 0
        yield ds, _ct_slice(g, z, vessels, rng)


def _cross_section(ds: Dataset, st: _Study, g: _Grid, thick: float, z_patient: float) -> None:
    """Image Plane module plus Frame of Reference for an axial slice at z (mm, +superior)."""
    ds.FrameOfReferenceUID = st.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.AcquisitionNumber = 1
    ds.ImagePositionPatient = [_ds(g.x[0]), _ds(g.y[0]), _ds(z_patient)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [_ds(g.spacing), _ds(g.spacing)]
    ds.SliceThickness = ds.SpacingBetweenSlices = _ds(thick)
    ds.SliceLocation = _ds(z_patient)
    ds.SeriesDescription = f"{ds.SeriesDescription} {thick:g}mm"


# --------------------------------------------------------------------------- MR


def _mr_slice(g: _Grid, zc: float, rng: np.random.Generator) -> Arr:
    """T1-weighted axial head image (0..4095) at `zc` mm above the head centre."""
    img = np.zeros((g.y.size, g.x.size), dtype=np.float32)
    s = math.sqrt(max(0.0, 1.0 - ((zc - 5.0) / 85.0) ** 2))
    ha, hb = 74.0 * s, 94.0 * s
    _paint(img, g, 0.0, 0.0, ha, hb, 1600.0)  # scalp fat (bright on T1)
    _paint(img, g, 0.0, 0.0, ha - 5.0, hb - 5.0, 120.0)  # cortical skull (signal void)
    _paint(img, g, 0.0, 2.0, ha - 11.0, hb - 11.0, 350.0)  # subarachnoid CSF
    _paint(img, g, 0.0, 2.0, ha - 13.0, hb - 13.0, 950.0)  # grey matter
    _paint(img, g, 0.0, 4.0, 0.72 * (ha - 13.0), 0.72 * (hb - 13.0), 1300.0)  # white matter
    v = max(math.sin(math.pi * (zc + 5.0) / 40.0), 0.0) if -5.0 < zc < 35.0 else 0.0
    for side in (-1, 1):
        _paint(img, g, side * 8.0, -6.0, 5.0 * v + 1.0 * (v > 0), 24.0 * v, 300.0)
    if -22.0 < zc < -5.0:
        _paint(img, g, 0.0, 4.0, 2.0, 10.0, 300.0)  # third ventricle
    e = max(math.sin(math.pi * (zc + 65.0) / 32.0), 0.0) if -65.0 < zc < -33.0 else 0.0
    for side in (-1, 1):
        _paint(img, g, side * 30.0, -72.0, 14.0 * e, 14.0 * e, 1600.0)  # orbital fat
        _paint(img, g, side * 30.0, -74.0, 11.0 * e, 11.0 * e, 250.0)  # globe (vitreous)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(18.0)
    return np.rint(np.abs(img)).clip(0, 4095).astype("<u2")  # magnitude image: Rician-like


def _mr_series(st: _Study) -> Iterator[tuple[Dataset, Arr]]:
    """Axial T1 spin-echo head series, inferior to superior, 12 of 16 bits used."""
    opts = st.opts
    g = _Grid.centred(opts.rows, opts.columns, 240.0 / max(opts.rows, opts.columns))
    rng = _rng(st.series_uid, "pixels")
    thick, levels = _slab(opts.slices, 140.0, (1.0, 2.0, 3.0, 4.0, 5.0))
    for i, level in enumerate(levels):
        zc = level - 70.0
        ds = _base_dataset(st, i + 1)
        _pixel_module(ds, (opts.rows, opts.columns), 12, signed=False)
        _cross_section(ds, st, g, thick, zc)
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = 500.0, 15.0, 1
        ds.MagneticFieldStrength, ds.ImagingFrequency = 3.0, 127.74
        ds.FlipAngle, ds.ImagedNucleus = 90.0, "1H"
        ds.WindowCenter, ds.WindowWidth = 800, 1600
        yield ds, _mr_slice(g, zc, rng)


# --------------------------------------------------------------------------- CR


def _blob(x: F32, y: F32, cx: float, cy: float, a: float, b: float) -> F32:
    """Normalised thickness (0..1) of an ellipsoid seen in projection, centre/semi-axes in mm."""
    inside: F32 = np.clip(1.0 - ((x - cx) / a) ** 2 - ((y - cy) / b) ** 2, 0.0, None)
    return np.sqrt(inside)


def _cr_attenuation(x: F32, y: F32, phase: float) -> F32:
    """Relative X-ray attenuation of a chest phantom; x, y in mm (y down from the neck)."""
    ax = np.abs(x)
    body = _blob(x, y, 0.0, 270.0, 165.0, 330.0) + 0.5 * _blob(x, y, 0.0, -40.0, 55.0, 90.0)
    dome = 245.0 + 0.004 * (ax - 70.0) ** 2 - 12.0 * (x < 0)  # right hemidiaphragm higher
    lungs = _blob(ax, y, 75.0, 150.0, 62.0, 125.0) * np.clip((dome - y) / 12.0, 0.0, 1.0)
    hx, hy = ax - 45.0, y - 175.0  # vessel markings radiate from the hila and fade outwards
    hr = np.hypot(hx, hy)
    rays = (0.5 + 0.5 * np.cos(np.arctan2(hy, hx) * 26.0 + np.sin(hr / 14.0) * 2.0)) ** 10
    att = body - 0.6 * lungs * (1.0 - 0.1 * rays * np.exp(-hr / 80.0))
    att += 0.22 * _blob(x, y, 22.0, 222.0, 72.0, 58.0) + 0.2 * _blob(x, y, 0.0, 140.0, 30.0, 130.0)
    spine = _blob(x, y, 0.0, 250.0, 18.0, 400.0) * (0.85 + 0.15 * np.cos(y / 4.4 + phase) ** 2)
    s = y + 0.45 * ax - 0.0035 * x**2  # rib arcs: s is constant along one rib
    ribs = np.clip(1.0 - np.abs(np.mod(s, 24.0) - 5.0) / 5.0, 0.0, None) * (s > 40.0)
    cage = _blob(ax, y, 70.0, 150.0, 85.0, 140.0) > 0
    clavicle = np.clip(1.0 - np.abs(y - 40.0 - 0.2 * ax) / 6.0, 0.0, None) * (ax < 140.0)
    bones = 0.22 * spine + 0.22 * ribs * cage * (ax > 12.0) + 0.35 * clavicle * (ax > 12.0)
    total: F32 = (att + bones * (body > 0)).astype(np.float32)
    return total


def _cr_image(rows: int, columns: int, spacing: float, rng: np.random.Generator) -> Arr:
    """PA chest radiograph, MONOCHROME2 (dense = bright), 12-bit values."""
    x = ((np.arange(columns, dtype=np.float32) - columns / 2) * spacing)[None, :]
    y = ((np.arange(rows, dtype=np.float32) - rows * 0.12) * spacing)[:, None]
    att = _cr_attenuation(x, y, float(rng.uniform(0.0, math.pi)))
    img: F32 = 150.0 + 2400.0 * att + rng.standard_normal((rows, columns), np.float32) * 12.0
    return np.rint(img).clip(0, 4095).astype("<u2")


def _cr_series(st: _Study) -> Iterator[tuple[Dataset, Arr]]:
    """One computed radiograph (``slices`` is ignored)."""
    opts = st.opts
    spacing = 0.14 * max(2500 / opts.rows, 3000 / opts.columns)
    ds = _base_dataset(st, 1)
    _pixel_module(ds, (opts.rows, opts.columns), 12, signed=False)
    ds.ViewPosition, ds.PatientOrientation = "PA", ["L", "F"]
    ds.ImagerPixelSpacing = ds.PixelSpacing = [_ds(spacing), _ds(spacing)]
    ds.KVP, ds.DistanceSourceToDetector, ds.ExposureTime = 120, 1800, 10
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = 2100, 3800
    ds.PresentationLUTShape = "IDENTITY"
    yield ds, _cr_image(opts.rows, opts.columns, spacing, _rng(st.series_uid, "pixels"))


# --------------------------------------------------------------------------- US


def _us_frames(rows: int, columns: int, frames: int, rng: np.random.Generator) -> Arr:
    """Sector (fan) B-mode cine of a beating chamber, RGB uint8, shape (frames, rows, cols, 3)."""
    x = np.arange(columns, dtype=np.float32)[None, :] - columns / 2
    y = np.arange(rows, dtype=np.float32)[:, None] - rows * 0.05
    r, theta = np.hypot(x, y) / rows, np.arctan2(x, y)  # depth as a fraction of the height
    sector = (np.abs(theta) < 0.65) & (r < 0.88) & (y > 0)
    speckle = rng.rayleigh(0.6, (rows, columns)).astype(np.float32)
    base = 190.0 * np.exp(-1.6 * r) * (1.0 + 0.8 * (np.abs(r - 0.06) < 0.015))
    out = np.zeros((frames, rows, columns, 3), dtype=np.uint8)
    tick = sector & (np.abs(theta - 0.63) < 0.02) & (np.mod(r * 20.0, 1.0) < 0.08)
    for f in range(frames):
        beat = math.sin(2 * math.pi * f / 15.0)
        d = np.hypot((x / rows) / (0.17 + 0.03 * beat), (y / rows - 0.5) / (0.13 + 0.02 * beat))
        gain = np.where(d < 1.0, 0.08, np.where(d < 1.25, 1.9, 1.0))
        noise = rng.rayleigh(0.6, (rows, columns)).astype(np.float32)
        grey = np.clip(base * gain * (0.7 * speckle + 0.3 * noise) * sector, 0, 255)
        out[f] = np.rint(grey).astype(np.uint8)[:, :, None]
        out[f][tick] = (255, 220, 0)  # yellow depth marks
        _ecg(out[f], f, frames)
    return out


def _ecg(frame: npt.NDArray[np.uint8], index: int, frames: int) -> None:
    """Draw a green ECG trace with a sweep gap along the bottom of an RGB frame."""
    rows, columns = frame.shape[:2]
    cols = np.arange(columns)
    phase = np.mod(cols / (columns / 3.0), 1.0)
    wave = np.exp(-(((phase - 0.3) / 0.02) ** 2)) - 0.2 * np.exp(-(((phase - 0.6) / 0.06) ** 2))
    ys = np.clip(np.rint(rows * 0.95 - wave * rows * 0.05), 0, rows - 1).astype(int)
    gap = np.abs(cols - (index + 1) * columns / max(frames, 1)) > columns * 0.03
    frame[ys[gap], cols[gap]] = (0, 255, 0)


def _us_series(st: _Study) -> Iterator[tuple[Dataset, Arr]]:
    """One Ultrasound Multi-frame instance of ``min(slices, 30)`` RGB frames at 30 frames/s."""
    opts = st.opts
    frames = min(opts.slices, _US_MAX_FRAMES)
    ds = _base_dataset(st, 1)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = opts.rows, opts.columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = frames
    ds.FrameTime, ds.CineRate, ds.RecommendedDisplayFrameRate = 33.3, 30, 30
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.BurnedInAnnotation = "NO"
    region = Dataset()
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = opts.columns - 1, opts.rows - 1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX = region.PhysicalDeltaY = 16.0 / opts.rows  # 16 cm field depth
    ds.SequenceOfUltrasoundRegions = [region]
    yield ds, _us_frames(opts.rows, opts.columns, frames, _rng(st.series_uid, "pixels"))


_SERIES: dict[str, Callable[[_Study], Iterator[tuple[Dataset, Arr]]]] = {
    "CT": _ct_series,
    "MR": _mr_series,
    "CR": _cr_series,
    "US": _us_series,
}


# --------------------------------------------------------------------------- public API


def _finalize(ds: Dataset, pixels: Arr, transfer_syntax: str) -> Dataset:
    """Attach File Meta Information and the Pixel Data in the requested transfer syntax."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    uid = UID(TRANSFER_SYNTAXES[transfer_syntax])
    if transfer_syntax in _COMPRESSED:
        # Lossless re-encoding keeps the SOP Instance UID (and the output deterministic).
        ds.compress(uid, pixels, generate_instance_uid=False)
    else:
        ds.PixelData = pixels.tobytes()
        meta.TransferSyntaxUID = uid
    return ds


def _options(
    seed: int,
    modality: str,
    slices: int,
    patients: int,
    studies_per_patient: int,
    transfer_syntax: str,
    charset: str,
    rows: int | None,
    columns: int | None,
) -> _Options:
    """Validate the arguments of :func:`generate_studies` and fill the modality defaults."""
    for name, value, allowed in (
        ("modality", modality, MODALITIES),
        ("transfer_syntax", transfer_syntax, tuple(TRANSFER_SYNTAXES)),
        ("charset", charset, CHARSETS),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    size = {"rows": rows, "columns": columns}
    minimum = {name: (16 if value is None else value, 16) for name, value in size.items()}
    minimum |= {"slices": (slices, 1), "patients": (patients, 1)}
    minimum |= {"studies_per_patient": (studies_per_patient, 1)}
    for name, (count, least) in minimum.items():
        if count < least:
            raise ValueError(f"{name} must be at least {least}, not {count}")
    spec = _SPECS[modality]
    count = {"CR": 1, "US": min(slices, _US_MAX_FRAMES)}.get(modality, slices)
    return _Options(
        seed=seed,
        modality=modality,
        slices=count,
        patients=patients,
        studies_per_patient=studies_per_patient,
        transfer_syntax=transfer_syntax,
        charset=charset,
        rows=spec.rows if rows is None else rows,
        columns=spec.columns if columns is None else columns,
    )


def generate_studies(
    *,
    seed: int = 0,
    modality: str = "CT",
    slices: int = 50,
    patients: int = 1,
    studies_per_patient: int = 1,
    transfer_syntax: str = "explicit",
    charset: str = "utf8",
    rows: int | None = None,
    columns: int | None = None,
) -> Iterator[Dataset]:
    """Yield complete datasets (with ``file_meta`` set) one instance at a time (bounded memory).

    Parameters
    ----------
    seed
        Everything (UIDs, names, dates, noise) is a deterministic function of the arguments.
    modality
        ``"CT"``: axial chest/abdomen, 512×512, int16 Hounsfield units (slope 1, intercept 0).
        ``"MR"``: axial T1 head, 256×256, uint16 with 12 bits stored.
        ``"CR"``: one PA chest radiograph, 2500×3000 (rows×columns), 12 bits stored, 0.14 mm.
        ``"US"``: one multi-frame RGB cine, 480×640, ``min(slices, 30)`` frames at 30 frames/s.
    slices
        Images per CT/MR series (slice thickness adapts to cover the anatomy); US frames.
    patients, studies_per_patient
        ``patients × studies_per_patient`` studies, each with one series.
    transfer_syntax
        A key of :data:`TRANSFER_SYNTAXES`; compressed syntaxes are lossless.
    charset
        A member of :data:`CHARSETS`: Specific Character Set ``ISO_IR 192``, ``GB18030`` or
        ``\\ISO 2022 IR 58``. Names get alphabetic and ideographic PN groups. IR 58 text is
        encoded here (pydicom 3.0 omits the escape sequences); only if pydicom is unpatched
        are its Chinese LO values held as pre-encoded ``bytes``.
    rows, columns
        Override the image matrix; the phantom keeps its size in mm.

    Raises
    ------
    ValueError
        On an unknown modality, transfer syntax or charset, or a non-positive count.
    """
    opts = _options(
        seed, modality, slices, patients, studies_per_patient, transfer_syntax, charset, rows,
        columns,
    )  # fmt: skip
    return _generate(opts)


def _generate(opts: _Options) -> Iterator[Dataset]:
    for patient in range(opts.patients):
        for study in range(opts.studies_per_patient):
            st = _make_study(opts, patient, study)
            logger.debug("synth %s study %s for %s", opts.modality, st.study_uid, st.patient_id)
            for ds, pixels in _SERIES[opts.modality](st):
                yield _finalize(ds, pixels, opts.transfer_syntax)


def write_studies(
    out_dir: Path,
    *,
    seed: int = 0,
    modality: str = "CT",
    slices: int = 50,
    patients: int = 1,
    studies_per_patient: int = 1,
    transfer_syntax: str = "explicit",
    charset: str = "utf8",
    rows: int | None = None,
    columns: int | None = None,
) -> list[Path]:
    """Write :func:`generate_studies` output as DICOM Part 10 files and return their paths.

    Layout: ``out_dir/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<InstanceNumber>.dcm``.
    Each file has the 128-byte preamble, ``DICM`` and File Meta Information whose Transfer
    Syntax UID is the one the data set is encoded with. Keyword arguments are those of
    :func:`generate_studies`.
    """
    paths: list[Path] = []
    for ds in generate_studies(
        seed=seed, modality=modality, slices=slices, patients=patients,
        studies_per_patient=studies_per_patient, transfer_syntax=transfer_syntax,
        charset=charset, rows=rows, columns=columns,
    ):  # fmt: skip
        folder = Path(out_dir, ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{ds.InstanceNumber}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.info("wrote %d synthetic %s instances under %s", len(paths), modality, out_dir)
    return paths
