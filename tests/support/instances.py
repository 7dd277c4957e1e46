"""Small DICOM instances for tests, made from pydicom's CT_small.dcm with chosen identities."""

from __future__ import annotations

import io
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

CT_SMALL = get_testdata_file("CT_small.dcm")


def make_dataset(**attrs: Any) -> Dataset:
    """CT_small with new UIDs (unless given) and the attributes given by keyword."""
    assert CT_SMALL is not None
    ds = pydicom.dcmread(CT_SMALL)
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = attrs.pop("StudyInstanceUID", generate_uid())
    ds.SeriesInstanceUID = attrs.pop("SeriesInstanceUID", generate_uid())
    for key, value in attrs.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def part10(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """``ds`` as a Part 10 file in the given (uncompressed) transfer syntax."""
    ds = ds.copy()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = io.BytesIO()
    ds.save_as(
        buffer,
        enforce_file_format=True,
        implicit_vr=transfer_syntax == ImplicitVRLittleEndian,
        little_endian=True,
    )
    return buffer.getvalue()


def bare(ds: Dataset, implicit: bool = True) -> bytes:
    """``ds`` as a bare data set (no preamble, no meta), as DIMSE delivers it."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_dataset(buffer, ds)
    return bytes(buffer.getvalue())
