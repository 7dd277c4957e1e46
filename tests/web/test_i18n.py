"""Languages: every message exists in Chinese and English; the choice follows the request."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from cloudfilm.web.i18n import (
    LANGUAGES,
    catalogs,
    choose_language,
    parse_accept_language,
    translator,
)


def _request(query: str = "", headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "query_string": query.encode(), "headers": raw})


def test_every_message_exists_in_every_language() -> None:
    merged = catalogs()
    keys = {lang: set(messages) for lang, messages in merged.items()}
    for lang in LANGUAGES:
        missing = set().union(*keys.values()) - keys[lang]
        assert not missing, f"{lang} lacks {sorted(missing)}"
        assert all(value.strip() for value in merged[lang].values())


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        ("en-US,en;q=0.9", "en"),
        ("fr-FR, en;q=0.5, zh;q=0.7", "zh"),
        ("de-DE", None),
        ("zh;q=0, en", "en"),
        ("zh;q=abc, en;q=0.1", "en"),
    ],
)
def test_accept_language(header: str, expected: str | None) -> None:
    assert parse_accept_language(header) == expected


def test_choice_order() -> None:
    assert choose_language(_request("lang=en", {"Accept-Language": "zh-CN"})) == "en"
    assert choose_language(_request("", {"Cookie": "cloudfilm_lang=en"})) == "en"
    assert choose_language(_request("", {"Accept-Language": "en-GB"})) == "en"
    assert choose_language(_request("", {"Accept-Language": "de"})) == "en"
    assert choose_language(_request("")) == "zh"
    assert choose_language(_request("lang=xx")) == "zh"


def test_translator_fills_values_and_shows_missing_keys() -> None:
    t = translator("en")
    assert t("app.name") == "Cloud Film"
    assert translator("zh")("app.name") == "云胶片"
    assert t("no.such.key") == "no.such.key"
