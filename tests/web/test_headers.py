"""Content-Disposition for downloads named in any script (RFC 6266, RFC 8187)."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from cloudfilm.web.headers import content_disposition, safe_filename


def test_ascii_name_needs_no_extended_parameter() -> None:
    assert content_disposition("Smith_20240501_CT.zip", "x.zip") == (
        'attachment; filename="Smith_20240501_CT.zip"'
    )


def test_chinese_name_gets_an_ascii_fallback_and_utf8_name() -> None:
    value = content_disposition("张三_20240501_CT.zip", "DICOM.zip")
    plain = value.split('filename="')[1].split('"')[0]
    assert plain == "20240501_CT.zip"
    assert unquote(value.split("filename*=UTF-8''")[1]) == "张三_20240501_CT.zip"


def test_name_without_ascii_uses_the_fallback() -> None:
    value = content_disposition("张三.zip", "DICOM.zip", inline=True)
    assert value.startswith("inline; filename=\"DICOM.zip\"; filename*=UTF-8''")


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ('a/b\\c:d*e?f"g<h>i|j.zip', "a_b_c_d_e_f_g_h_i_j.zip"),
        ("..\\..\\etc/passwd", "etc_passwd"),
        ("line\r\nbreak.zip", "line_break.zip"),
        ("  spaced  name .zip", "spaced_name_.zip"),
    ],
)
def test_unsafe_characters_are_replaced(name: str, safe: str) -> None:
    assert safe_filename(name) == safe
    assert "\r" not in content_disposition(name, "x.zip") and '"' not in safe_filename(name)
