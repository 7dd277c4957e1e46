"""Character sets: corrections to pydicom and fall-backs for files that do not declare theirs.

Chinese names reach us as GB18030, GBK, ISO 2022 IR 58 (GB2312 with escape sequences) or UTF-8
(PS3.5 6.1 and Annex K/J). pydicom decodes most of these correctly; the exceptions are fixed here,
each with a test in ``tests/dicom/test_charset.py``.
"""

from __future__ import annotations

import logging

import pydicom.charset
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

#: VRs whose values are decoded with the Specific Character Set (PS3.5 6.1.2.3).
TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})

_fixed = False


def apply_pydicom_fixes() -> None:
    """Correct pydicom's ISO 2022 IR 58 handling (idempotent).

    pydicom lists ``iso_ir_58`` among the codecs that "strip the escape sequences themselves",
    but Python's ``iso_ir_58`` is plain GB2312 (EUC-CN), which knows nothing of ISO 2022
    escapes. The result is names such as ``'Zhang^XiaoDong=\\x1b$)A张^\\x1b$)A小东'``. Once the
    codec is taken off that list, pydicom strips ``ESC $ ) A`` itself before decoding, and adds
    it when encoding, which is what PS3.5 Annex K requires.
    """
    global _fixed
    if _fixed:
        return
    pydicom.charset.handled_encodings = tuple(  # type: ignore[assignment]
        e for e in pydicom.charset.handled_encodings if e != "iso_ir_58"
    )
    _fixed = True


def declared_charsets(ds: Dataset) -> list[str]:
    """The dataset's Specific Character Set values (empty when none is declared)."""
    value = ds.get("SpecificCharacterSet")
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    return [str(v) for v in value]


def guess_undeclared_charset(ds: Dataset) -> str | None:
    """A Specific Character Set for text that uses bytes above 0x7F without declaring any.

    Such files are common in Chinese hospitals. Returns ``"ISO_IR 192"`` when every such value
    is valid UTF-8, ``"GB18030"`` otherwise (a superset of GBK and GB2312), and ``None`` when
    the dataset declares a character set other than the default or has only ASCII text.
    """
    declared = declared_charsets(ds)
    if declared and any(c not in ("ISO_IR 6", "ISO 2022 IR 6") for c in declared):
        return None
    raw_values: list[bytes] = []
    for elem in ds.elements():
        if isinstance(elem, RawDataElement) and elem.VR in TEXT_VRS and elem.value:
            if any(b > 0x7F for b in elem.value):
                raw_values.append(bytes(elem.value))
    if not raw_values:
        return None
    try:
        for raw in raw_values:
            raw.decode("utf-8")
    except UnicodeDecodeError:
        return "GB18030"
    return "ISO_IR 192"


def pn_search_key(name: str | None) -> str:
    """A search key for a Person Name: each component group, upper-cased, between ``|``.

    ``"Wang^XiaoDong=王^小東"`` becomes ``"|WANG^XIAODONG|王^小東|"`` so that a SQL ``LIKE`` on
    one group's text (with ``^`` separating components) finds it, whatever group holds it.
    """
    if not name:
        return "||"
    groups = [g.strip().rstrip("^").upper() for g in name.split("=")]
    return "|" + "|".join(g for g in groups if g) + "|"
