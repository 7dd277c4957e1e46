"""DICOM JSON (PS3.18 Annex F) of an instance's header, without pixel data.

Binary values larger than ``BULK_THRESHOLD`` bytes become ``BulkDataURI`` entries holding a
path relative to the instance (``bulkdata/7FE00010``, ``bulkdata/00540016/0/00181072`` for a
value inside a sequence item); the DICOMweb layer turns them into absolute URLs.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import warnings
from typing import Any

from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

#: Binary values larger than this (in bytes) are referenced, not inlined.
BULK_THRESHOLD = 1024

#: pydicom's ``to_json_dict(suppress_invalid_tags=True)`` switches its process-wide reading
#: validation mode while it runs; two threads doing so at once can leave it at RAISE.
_PYDICOM_CONFIG_LOCK = threading.Lock()


def header_json_dict(ds: Dataset, pixel_data_vr: str | None = None) -> dict[str, Any]:
    """The DICOM JSON object of ``ds`` (read without pixel data).

    Parameters
    ----------
    ds
        The header, as read up to (not including) Pixel Data.
    pixel_data_vr
        VR of Pixel Data (7FE0,0010) when the instance has pixels; adds its BulkDataURI.
    """
    with _PYDICOM_CONFIG_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result: dict[str, Any] = ds.to_json_dict(
            bulk_data_threshold=1 << 62, suppress_invalid_tags=True
        )
    _reference_bulk(result, "bulkdata")
    if pixel_data_vr:
        result["7FE00010"] = {"vr": pixel_data_vr, "BulkDataURI": "bulkdata/7FE00010"}
    return result


def header_json(ds: Dataset, pixel_data_vr: str | None = None) -> str:
    """``header_json_dict`` serialised compactly (as cached in the index)."""
    return json.dumps(
        header_json_dict(ds, pixel_data_vr), ensure_ascii=False, separators=(",", ":")
    )


def _reference_bulk(obj: dict[str, Any], path: str) -> None:
    for tag, attr in obj.items():
        if not isinstance(attr, dict):
            continue
        inline = attr.get("InlineBinary")
        if isinstance(inline, str) and len(inline) * 3 // 4 > BULK_THRESHOLD:
            del attr["InlineBinary"]
            attr["BulkDataURI"] = f"{path}/{tag}"
        for index, item in enumerate(attr.get("Value", []) if attr.get("vr") == "SQ" else []):
            if isinstance(item, dict):
                _reference_bulk(item, f"{path}/{tag}/{index}")


def inline_size(attr: dict[str, Any]) -> int:
    """Decoded size of an InlineBinary value, in bytes (for tests and diagnostics)."""
    return len(base64.b64decode(attr.get("InlineBinary", "")))
