"""DICOM JSON (PS3.18 F.2) to the Native DICOM Model XML (PS3.19 A.1).

Used for ``application/dicom+xml`` answers: the STOW-RS Store Instances Response and QIDO-RS
results. Characters XML 1.0 cannot carry (C0 controls such as the ESC of ISO 2022 text) are
replaced by U+FFFD; the JSON answers keep them.
"""

from __future__ import annotations

import re
from typing import Any
from xml.etree.ElementTree import Element, SubElement, tostring

from pydicom.datadict import keyword_for_tag

NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_PN_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(value: Any) -> str:
    return _XML_INVALID.sub("\ufffd", str(value))


def _keyword(tag: str) -> str:
    try:
        return str(keyword_for_tag(int(tag, 16)) or "")
    except ValueError:
        return ""


def _add_dataset(parent: Element, dataset: dict[str, Any]) -> None:
    for tag in sorted(dataset):
        attr = dataset[tag]
        if not isinstance(attr, dict):
            continue
        vr = str(attr.get("vr", "UN"))
        element = SubElement(parent, "DicomAttribute", {"tag": tag.upper(), "vr": vr})
        keyword = _keyword(tag)
        if keyword:
            element.set("keyword", keyword)
        if "BulkDataURI" in attr:
            SubElement(element, "BulkData", {"uri": _text(attr["BulkDataURI"])})
            continue
        if "InlineBinary" in attr:
            SubElement(element, "InlineBinary").text = _text(attr["InlineBinary"])
            continue
        for number, value in enumerate(attr.get("Value", []), start=1):
            if vr == "SQ":
                item = SubElement(element, "Item", {"number": str(number)})
                if isinstance(value, dict):
                    _add_dataset(item, value)
            elif vr == "PN":
                _add_person_name(element, number, value)
            else:
                node = SubElement(element, "Value", {"number": str(number)})
                if value is not None:
                    node.text = _text(value)


def _add_person_name(parent: Element, number: int, value: Any) -> None:
    node = SubElement(parent, "PersonName", {"number": str(number)})
    if not isinstance(value, dict):
        return
    for group in _PN_GROUPS:
        text = value.get(group)
        if not text:
            continue
        group_node = SubElement(node, group)
        for name, part in zip(_PN_COMPONENTS, str(text).split("^"), strict=False):
            if part:
                SubElement(group_node, name).text = _text(part)


def to_native_xml(dataset: dict[str, Any]) -> bytes:
    """One data set as a ``NativeDicomModel`` document, UTF-8 with an XML declaration."""
    root = Element("NativeDicomModel", {"xmlns": NAMESPACE, "xml:space": "preserve"})
    _add_dataset(root, dataset)
    body = tostring(root, encoding="unicode")
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body.encode("utf-8")
