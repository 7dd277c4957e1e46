"""cloudfilm: cloud film, a DICOM archive that replaces printed film with shareable links."""

__version__ = "0.1.0"
