"""Helpers of the film tests: synthetic studies in an archive, key objects, pixel measures."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from cloudfilm.archive import Archive
from cloudfilm.dicom.synth import generate_studies

Pixels = npt.NDArray[np.generic]


def store_all(archive: Archive, datasets: Iterable[Dataset]) -> list[Dataset]:
    """Store each dataset as a Part 10 file; all must be accepted. The datasets, in order."""
    kept = []
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        result = archive.store(buffer.getvalue(), source="test")
        assert result.ok, result.reason
        kept.append(ds)
    return kept


def synthetic_ct(archive: Archive, **options: object) -> list[Dataset]:
    """A stored synthetic chest CT (GB18030 text, like many Chinese modalities send)."""
    defaults: dict[str, object] = {"seed": 7, "slices": 30, "rows": 96, "columns": 96}
    defaults |= {"charset": "gb18030"}
    return store_all(archive, generate_studies(**(defaults | options)))  # type: ignore[arg-type]


def key_object(images: Sequence[Dataset], frames: dict[int, list[int]] | None = None) -> Dataset:
    """A Key Object Selection document (made with highdicom) whose content tree references
    ``images`` in this order; ``frames`` maps an index in ``images`` to frame numbers."""
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest, referenced_objects=list(images)
    )
    for index, numbers in (frames or {}).items():
        content[0].ContentSequence[index].ReferencedSOPSequence[0].ReferencedFrameNumber = numbers
    return hd.ko.KeyObjectSelectionDocument(
        evidence=list(images),
        content=content,
        series_instance_uid=generate_uid(),
        series_number=90,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test",
    )


def correlation(a: Pixels, b: Pixels) -> float:
    """Pearson correlation of two images of the same shape."""
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(np.corrcoef(x, y)[0, 1])


def resized(pixels: Pixels, width: int, height: int) -> Pixels:
    """An 8-bit image resized with Pillow (bicubic), as a numpy array."""
    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))


def longest_white_run(region: Pixels, level: int = 250) -> tuple[int, int, int]:
    """``(row, first column, length)`` of the longest horizontal run of pixels ≥ ``level``."""
    best = (0, 0, 0)
    for row, line in enumerate(np.asarray(region) >= level):
        padded = np.concatenate(([False], line, [False])).astype(np.int8)
        edges = np.flatnonzero(np.diff(padded))
        for start, end in zip(edges[::2], edges[1::2], strict=True):
            if end - start > best[2]:
                best = (row, int(start), int(end - start))
    return best
