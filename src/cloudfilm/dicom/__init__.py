"""Pure DICOM helpers: parsing, character sets, DICOM JSON, synthetic data. No I/O policy here."""

from cloudfilm.dicom.charset import apply_pydicom_fixes

apply_pydicom_fixes()
