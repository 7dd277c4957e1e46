"""Languages of the pages: Simplified Chinese (``zh``) and English (``en``).

Messages live in ``locales/{area}.{lang}.json`` (one file per page area and language, so that
areas are edited independently); every key must exist in both languages (a test checks). The
language is chosen, in order, by a ``?lang=`` parameter (which the page remembers in a cookie), the
``cloudfilm_lang`` cookie, the browser's ``Accept-Language``, and Chinese when the browser says
nothing (the product's first users are in China).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from importlib import resources

from starlette.requests import Request

LANGUAGES = ("zh", "en")
DEFAULT_LANGUAGE = "zh"
LANG_COOKIE = "cloudfilm_lang"

Translator = Callable[..., str]


@cache
def catalogs() -> dict[str, dict[str, str]]:
    """All messages by language, merged from every ``locales/*.{lang}.json`` file."""
    merged: dict[str, dict[str, str]] = {lang: {} for lang in LANGUAGES}
    folder = resources.files("cloudfilm.web").joinpath("locales")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        name = entry.name
        if not name.endswith(".json"):
            continue
        lang = name.rsplit(".", 2)[-2]
        if lang not in merged:
            raise ValueError(f"locale file {name} names an unknown language {lang!r}")
        messages = json.loads(entry.read_text(encoding="utf-8"))
        duplicate = merged[lang].keys() & messages.keys()
        if duplicate:
            raise ValueError(f"locale file {name} repeats keys {sorted(duplicate)}")
        merged[lang].update(messages)
    return merged


def parse_accept_language(header: str) -> str | None:
    """The first of our languages the ``Accept-Language`` header asks for, by quality."""
    choices: list[tuple[float, int, str]] = []
    for index, item in enumerate(header.split(",")):
        parts = item.strip().split(";")
        tag = parts[0].strip().lower()
        quality = 1.0
        for param in parts[1:]:
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        primary = tag.split("-")[0]
        if primary in LANGUAGES and quality > 0:
            choices.append((-quality, index, primary))
    return min(choices)[2] if choices else None


def choose_language(request: Request) -> str:
    """The language of this request's page (see the module docstring for the order)."""
    asked = request.query_params.get("lang", "").lower()
    if asked in LANGUAGES:
        return asked
    cookie = request.cookies.get(LANG_COOKIE, "")
    if cookie in LANGUAGES:
        return cookie
    header = request.headers.get("accept-language", "")
    if header:
        return parse_accept_language(header) or "en"
    return DEFAULT_LANGUAGE


def translator(lang: str) -> Translator:
    """``t(key, **values)``: the message in ``lang`` with ``{name}`` fields filled in.

    A missing key shows as the key itself (visible in tests) rather than failing the page.
    """
    messages = catalogs()[lang]

    def t(key: str, **values: object) -> str:
        text = messages.get(key, key)
        return text.format(**values) if values else text

    return t
