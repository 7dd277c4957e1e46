"""Share secrets: token shape, what the index keeps (never the token), sealing, cookies."""

from __future__ import annotations

import base64
import hashlib
import string
from pathlib import Path

import pytest
from share_support import People, token_of
from sqlalchemy import select

from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.index.models import Share
from cloudfilm.sharing import crypto
from cloudfilm.sharing.links import ShareLinks, ShareRequest

URLSAFE = set(string.ascii_letters + string.digits + "-_")


def test_new_tokens_are_22_urlsafe_characters_of_128_bits() -> None:
    tokens = {crypto.new_token() for _ in range(2000)}
    assert len(tokens) == 2000
    for token in tokens:
        assert len(token) == crypto.TOKEN_LENGTH == 22
        assert set(token) <= URLSAFE
        assert crypto.is_token(token)
        assert len(base64.urlsafe_b64decode(token + "==")) == 16
    assert not crypto.is_token("A" * 21)
    assert not crypto.is_token("A" * 23)
    assert not crypto.is_token("A" * 21 + "!")
    assert not crypto.is_token("A" * 21 + "\u00e9")


def test_codes_are_six_digits_and_answers_normalise() -> None:
    codes = {crypto.new_code() for _ in range(500)}
    assert all(len(c) == 6 and c.isdigit() for c in codes)
    assert len(codes) > 400
    assert crypto.normalize_code(" 123 456 ") == "123456"
    assert crypto.normalize_code("123-456") == "123456"
    assert crypto.normalize_birth_date("1980-05-17") == "19800517"
    assert crypto.normalize_birth_date("1980/05/17") == "19800517"
    assert crypto.normalize_birth_date("19800517") == "19800517"
    assert crypto.normalize_id_suffix(" 123x ") == "123X"
    assert crypto.id_suffix_of("110105198005171234") == "1234"
    assert crypto.id_suffix_of("PA-11010519800517123X") == "123X"
    assert crypto.id_suffix_of("ab") is None
    for bad in ("12345", "1234567", "abcdef", "１２３４５６", "9" * 65):
        with pytest.raises(crypto.InvalidAnswer):
            crypto.normalize_code(bad)
    for bad in ("1980-02-30", "80-05-17", "yesterday", "1" * 100):
        with pytest.raises(crypto.InvalidAnswer):
            crypto.normalize_birth_date(bad)
    for bad in ("123", "12345", "12$4", "１２３４"):
        with pytest.raises(crypto.InvalidAnswer):
            crypto.normalize_id_suffix(bad)


def test_sealing_needs_the_same_key_and_context() -> None:
    keys = crypto.ShareKeys("k" * 40)
    sealed = keys.seal("secret-token", "token:abc")
    assert "secret-token" not in sealed
    assert keys.unseal(sealed, "token:abc") == "secret-token"
    assert keys.unseal(sealed, "token:abd") is None
    assert crypto.ShareKeys("x" * 40).unseal(sealed, "token:abc") is None
    assert keys.unseal("not base64 !!", "token:abc") is None
    assert keys.seal("same", "c") != keys.seal("same", "c")  # a fresh nonce each time


def test_session_cookie_is_bound_to_share_key_and_time() -> None:
    keys = crypto.ShareKeys("k" * 40)
    value = keys.session_cookie("0123456789abcdef", 2000)
    assert keys.session_valid(value, "0123456789abcdef", 1999)
    assert not keys.session_valid(value, "0123456789abcdef", 2000)  # expired
    assert not keys.session_valid(value, "fedcba9876543210", 1999)  # another share
    assert not crypto.ShareKeys("x" * 40).session_valid(value, "0123456789abcdef", 1999)
    forged = value.replace(".2000.", ".9999.")
    assert not keys.session_valid(forged, "0123456789abcdef", 1999)
    for junk in ("", "v1", "v1.0123456789abcdef.２０００.x", "v1.0123456789abcdef.1.é", "a" * 500):
        assert not keys.session_valid(junk, "0123456789abcdef", 0)


@pytest.mark.db
def test_the_index_keeps_only_the_hash_and_sealed_copies(
    archive: Archive, settings: Settings, people: People, links: ShareLinks
) -> None:
    issued = links.issue(ShareRequest(study_uids=[people.a1.study], secret="code"))
    token, code = token_of(issued.link), issued.code
    assert code is not None
    with archive.sessions() as session:
        row = session.scalars(select(Share).where(Share.id == issued.info.id)).one()
        stored = {c.name: getattr(row, c.name) for c in Share.__table__.columns}
    text = repr(stored)
    assert token not in text and code not in text
    assert row.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert row.secret_hash is not None and row.secret_hash.startswith("$argon2id$")
    # a copy of the database with another server key yields no link and no code
    other = ShareLinks(archive, settings.model_copy(update={"secret_key": "z" * 48}))
    assert other.reveal(issued.info.id) == (None, None)
    assert links.reveal(issued.info.id) == (issued.link, code)
    if settings.database_url is None:  # SQLite: the database file itself never holds the token
        archive.engine.dispose()  # checkpoint the WAL into the main file
        for path in Path(settings.data_dir).glob("index.sqlite3*"):
            data = path.read_bytes()
            assert token.encode() not in data, path
        assert issued.info.id.encode() in Path(settings.data_dir, "index.sqlite3").read_bytes()
