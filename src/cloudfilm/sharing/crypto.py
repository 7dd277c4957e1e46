"""The secrets of share links: tokens, access codes, sealed copies and signed session cookies.

- A **token** is 128 random bits as 22 URL-safe characters (``secrets.token_urlsafe(16)``). The
  index keeps its SHA-256, to find the share, and a copy sealed with AES-256-GCM under a key
  derived from ``settings.secret_key`` (HKDF-SHA256), so that staff can reprint a card. A copy
  of the database without the server key yields no usable link.
- An **access code** is 6 random digits. The index keeps its argon2id hash (to check it) and a
  sealed copy (to reprint it). A **patient check** answer (birth date, last characters of the
  Patient ID) is kept only as an argon2id hash.
- After the code or check is passed, the browser holds a **session cookie**
  ``v1.<share id>.<until>.<mac>``: ``until`` in Unix seconds, ``mac`` the HMAC-SHA256 of the
  rest under another derived key. It is only as good as the share behind it: every request
  still checks that the share is active.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from datetime import date

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: Random bytes in a token (128 bits: 22 characters of base64url).
TOKEN_BYTES = 16
TOKEN_LENGTH = 22
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{22}$")
CODE_DIGITS = 6
#: Longest answer (code, date, ID suffix) looked at; longer input is refused unread.
MAX_ANSWER_CHARS = 64
_NONCE_BYTES = 12
_HASHER = PasswordHasher()  # argon2id, RFC 9106 low-memory profile (t=3, m=64 MiB, p=4)


class InvalidAnswer(ValueError):
    """An entered code or patient-check answer that cannot be one (not counted as a failure)."""


def new_token() -> str:
    """A new share token: 128 random bits, 22 URL-safe characters."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def is_token(text: str) -> bool:
    """Whether ``text`` has the shape of a token (checked before any look-up)."""
    return bool(_TOKEN.match(text))


def token_digest(token: str) -> str:
    """SHA-256 of the token, in hex: the only form in which the index can find it."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def new_code() -> str:
    """A new access code: 6 random digits (leading zeros kept)."""
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def new_share_id() -> str:
    """A new public share identifier: 64 random bits in hex."""
    return secrets.token_hex(8)


def hash_answer(normalized: str) -> str:
    """The argon2id hash of a normalised code or patient-check answer."""
    return _HASHER.hash(normalized)


def verify_answer(stored_hash: str, normalized: str) -> bool:
    """Whether ``normalized`` is the answer whose hash is ``stored_hash`` (constant time)."""
    try:
        return _HASHER.verify(stored_hash, normalized)
    except (VerificationError, InvalidHashError):
        return False


def _bounded(text: str) -> str:
    if len(text) > MAX_ANSWER_CHARS:
        raise InvalidAnswer(f"the answer is longer than {MAX_ANSWER_CHARS} characters")
    return re.sub(r"[\s\-/.]", "", text)


def normalize_code(text: str) -> str:
    """An access code as entered (spaces and dashes allowed) → its 6 digits."""
    digits = _bounded(text)
    if not (len(digits) == CODE_DIGITS and digits.isascii() and digits.isdigit()):
        raise InvalidAnswer(f"the access code has {CODE_DIGITS} digits")
    return digits


def normalize_birth_date(text: str) -> str:
    """A birth date as ``YYYY-MM-DD``, ``YYYY/MM/DD``, ``YYYY.MM.DD`` or ``YYYYMMDD`` → the
    DICOM form ``YYYYMMDD`` (VR DA, PS3.5 6.2)."""
    compact = _bounded(text)
    if not (len(compact) == 8 and compact.isascii() and compact.isdigit()):
        raise InvalidAnswer("the birth date is year, month and day, e.g. 1980-05-17")
    try:
        date(int(compact[:4]), int(compact[4:6]), int(compact[6:]))
    except ValueError as exc:
        raise InvalidAnswer(f"{text.strip()} is not a date") from exc
    return compact


ID_SUFFIX_CHARS = 4


def normalize_id_suffix(text: str) -> str:
    """The last characters of a Patient ID as entered → upper-case, 4 letters or digits."""
    compact = _bounded(text).upper()
    if not (len(compact) == ID_SUFFIX_CHARS and compact.isascii() and compact.isalnum()):
        raise InvalidAnswer(f"enter the last {ID_SUFFIX_CHARS} characters of the patient ID")
    return compact


def id_suffix_of(patient_id: str) -> str | None:
    """The expected answer of an ``id-suffix`` check for a Patient ID (0010,0020), or None
    when the ID has fewer than 4 letters or digits."""
    kept = "".join(c for c in patient_id.upper() if c.isascii() and c.isalnum())
    return kept[-ID_SUFFIX_CHARS:] if len(kept) >= ID_SUFFIX_CHARS else None


class ShareKeys:
    """Keys derived from the server secret: one seals tokens and codes, one signs cookies."""

    def __init__(self, secret_key: str) -> None:
        material = secret_key.encode("utf-8")
        self._aead = AESGCM(_derive(material, b"cloudfilm share seal v1"))
        self._mac_key = _derive(material, b"cloudfilm share session v1")

    def seal(self, plaintext: str, context: str) -> str:
        """``plaintext`` encrypted and authenticated, bound to ``context`` (e.g. the share id
        and what it is), as base64url text."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
        return base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def unseal(self, sealed: str, context: str) -> str | None:
        """The plaintext of :meth:`seal`, or None when the key or the context differ."""
        try:
            raw = base64.urlsafe_b64decode(sealed.encode("ascii"))
            opened = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode())
        except (InvalidTag, ValueError, binascii.Error):
            return None
        return opened.decode("utf-8")

    def session_cookie(self, share_id: str, until: int) -> str:
        """A cookie value that unlocks ``share_id`` until ``until`` (Unix seconds)."""
        body = f"v1.{share_id}.{until}"
        return f"{body}.{self._mac(body)}"

    def session_valid(self, value: str, share_id: str, now: int) -> bool:
        """Whether a cookie value unlocks ``share_id`` at ``now`` (Unix seconds)."""
        if len(value) > 200:
            return False
        parts = value.split(".")
        if len(parts) != 4 or parts[0] != "v1" or parts[1] != share_id:
            return False
        if not (parts[2].isascii() and parts[2].isdigit() and parts[3].isascii()):
            return False
        body = ".".join(parts[:3])
        return hmac.compare_digest(self._mac(body), parts[3]) and int(parts[2]) > now

    def _mac(self, body: str) -> str:
        digest = hmac.new(self._mac_key, body.encode("ascii"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def derive_key(secret_key: str, purpose: bytes) -> bytes:
    """A 32-byte key for one ``purpose`` (e.g. ``b"cloudfilm staff csrf v1"``), derived from
    the server secret with HKDF-SHA256: one secret, independent keys."""
    return _derive(secret_key.encode("utf-8"), purpose)


def _derive(material: bytes, info: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info)
    return hkdf.derive(material)
