"""Institutions, users and API keys in the index, and the principals they become.

- A **user** signs in with a username and password (argon2id hash). Wrong passwords are
  counted, like wrong share codes, per username and per client address in the index
  (``share_lockout`` rows with scopes ``user`` and ``signin``), so the limit holds across
  server processes; each attempt is counted before the password is checked. A signed-in
  browser holds ``u1.<user pk>.<epoch>.<until>.<mac>`` (HMAC-SHA256 under a key derived from
  the server key); changing the password bumps ``epoch`` and so ends every session.
- An **API key** is ``cfk_<key id>_<secret>`` (12 hex characters, then 32 random bytes in
  base64url); the index keeps only the HMAC-SHA256 of the secret under a derived key, since a
  random 256-bit secret needs no slow hash. It is sent as ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloudfilm.access.roles import PERMISSIONS, PLATFORM_ADMIN, check_role
from cloudfilm.archive import Archive
from cloudfilm.core.config import Settings
from cloudfilm.core.errors import Conflict, MalformedRequest, NotFound
from cloudfilm.index.models import ApiKey, Institution, UserAccount
from cloudfilm.sharing.crypto import derive_key
from cloudfilm.sharing.lockout import Lockout, Subject, Verdict, aware, client_subject

USER = "user"
SIGNIN_CLIENT = "signin"
MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 256
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_CODE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_KEY = re.compile(r"^cfk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_HASHER = PasswordHasher()


@cache
def _dummy_hash() -> str:
    """Checked against when the username is unknown, so that a wrong name costs as long as a
    wrong password (no user enumeration by timing). Made on first use, not at import."""
    return _HASHER.hash("not a password of anyone")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class InstitutionInfo:
    pk: int
    code: str
    name: str


@dataclass(frozen=True)
class UserInfo:
    pk: int
    username: str
    display_name: str
    role: str
    institution: InstitutionInfo | None
    disabled: bool
    session_epoch: int

    @property
    def permissions(self) -> frozenset[str]:
        return PERMISSIONS[self.role]


@dataclass(frozen=True)
class ApiKeyInfo:
    pk: int
    key_id: str
    role: str
    label: str
    institution: InstitutionInfo | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class SignIn:
    """The outcome of a sign-in attempt: a user, or why not (and for how long locked)."""

    user: UserInfo | None
    #: ``wrong`` (name or password), ``locked`` or ``disabled``; '' on success.
    error: str = ""
    verdict: Verdict | None = None


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise MalformedRequest(f"a password has at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise MalformedRequest(f"a password has at most {MAX_PASSWORD_CHARS} characters")


class Accounts:
    """Institutions, users and API keys of an archive."""

    def __init__(self, archive: Archive, settings: Settings | None = None) -> None:
        self.archive = archive
        self.settings = settings or archive.settings
        self._session_key = derive_key(self.settings.secret_key, b"cloudfilm user session v1")
        self._key_key = derive_key(self.settings.secret_key, b"cloudfilm api key v1")
        self.lockout = Lockout(
            archive.engine, archive.sessions,
            self.settings.signin_lockout_failures, self.settings.share_lockout_minutes,
            limits={USER: self.settings.signin_lockout_failures,
                    SIGNIN_CLIENT: self.settings.share_lockout_client_failures},
            cleared=(USER,),
        )  # fmt: skip

    # ---------------------------------------------------------------- institutions

    def add_institution(self, code: str, name: str = "") -> InstitutionInfo:
        if not _CODE.match(code):
            raise MalformedRequest(
                "an institution code is lower-case letters, digits, '.', '_' or '-' (64 at most)"
            )
        try:
            with self.archive.sessions.begin() as session:
                row = Institution(code=code, name=name.strip()[:400], created_at=utcnow())
                session.add(row)
                session.flush()
                return _institution(row)
        except IntegrityError as exc:
            raise Conflict(f"institution {code} exists already") from exc

    def institutions(self) -> list[InstitutionInfo]:
        with self.archive.sessions() as session:
            rows = session.scalars(select(Institution).order_by(Institution.code)).all()
            return [_institution(r) for r in rows]

    def institution(self, code: str) -> InstitutionInfo:
        with self.archive.sessions() as session:
            return _institution(self._institution_row(session, code))

    def _institution_row(self, session: Session, code: str) -> Institution:
        row = session.scalar(select(Institution).where(Institution.code == code))
        if row is None:
            raise NotFound(f"institution {code[:64]} not found")
        return row

    # ----------------------------------------------------------------------- users

    def create_user(
        self,
        username: str,
        password: str,
        role: str,
        institution: str | None,
        display_name: str = "",
    ) -> UserInfo:
        """A new user; a platform admin has no institution, everyone else has one."""
        if not _USERNAME.match(username):
            raise MalformedRequest(
                "a username is letters, digits, '.', '_', '@' or '-' (64 at most)"
            )
        try:
            check_role(role)
        except ValueError as exc:
            raise MalformedRequest(str(exc)) from exc
        check_password_rules(password)
        if (role == PLATFORM_ADMIN) != (institution is None):
            raise MalformedRequest(
                "a platform admin belongs to no institution; every other user to one"
            )
        password_hash = _HASHER.hash(password)
        try:
            with self.archive.sessions.begin() as session:
                inst = self._institution_row(session, institution) if institution else None
                row = UserAccount(
                    username=username, display_name=display_name.strip()[:200],
                    institution_pk=inst.pk if inst else None, role=role,
                    password_hash=password_hash, session_epoch=0, disabled=False,
                    created_at=utcnow(), password_changed_at=utcnow(),
                )  # fmt: skip
                session.add(row)
                session.flush()
                return _user(row, inst)
        except IntegrityError as exc:
            raise Conflict(f"user {username} exists already") from exc

    def users(self, institution: str | None = None) -> list[UserInfo]:
        with self.archive.sessions() as session:
            stmt = select(UserAccount).order_by(UserAccount.username)
            if institution is not None:
                stmt = stmt.where(
                    UserAccount.institution_pk == self._institution_row(session, institution).pk
                )
            return [self._user_info(session, r) for r in session.scalars(stmt).all()]

    def user(self, username: str) -> UserInfo:
        with self.archive.sessions() as session:
            row = session.scalar(select(UserAccount).where(UserAccount.username == username))
            if row is None:
                raise NotFound(f"user {username[:64]} not found")
            return self._user_info(session, row)

    def set_password(self, username: str, password: str) -> None:
        """Set a new password (admin or CLI); every session of the user ends."""
        check_password_rules(password)
        password_hash = _HASHER.hash(password)
        with self.archive.sessions.begin() as session:
            changed = session.execute(
                update(UserAccount)
                .where(UserAccount.username == username)
                .values(
                    password_hash=password_hash,
                    session_epoch=UserAccount.session_epoch + 1,
                    password_changed_at=utcnow(),
                )
            )
            if not changed.rowcount:  # type: ignore[attr-defined]
                raise NotFound(f"user {username[:64]} not found")

    def set_disabled(self, username: str, disabled: bool) -> None:
        with self.archive.sessions.begin() as session:
            changed = session.execute(
                update(UserAccount)
                .where(UserAccount.username == username)
                .values(disabled=disabled, session_epoch=UserAccount.session_epoch + 1)
            )
            if not changed.rowcount:  # type: ignore[attr-defined]
                raise NotFound(f"user {username[:64]} not found")

    def set_role(self, username: str, role: str) -> None:
        """Give a user another role within their institution (not to or from
        ``platform-admin``, which would change whether the user has an institution)."""
        try:
            check_role(role)
        except ValueError as exc:
            raise MalformedRequest(str(exc)) from exc
        with self.archive.sessions.begin() as session:
            row = session.scalar(select(UserAccount).where(UserAccount.username == username))
            if row is None:
                raise NotFound(f"user {username[:64]} not found")
            if PLATFORM_ADMIN in (role, row.role) and role != row.role:
                raise MalformedRequest(
                    "a platform admin belongs to no institution: create a new account instead"
                )
            row.role = role

    def sign_in(
        self,
        username: str,
        password: str,
        address: str,
        now: datetime | None = None,
        *,
        agent: str = "",
        action: str = "sign-in",
    ) -> SignIn:
        """Check a username and password under the lockout (see the module docstring); every
        attempt is recorded in the audit trail (never the password)."""
        result = self._sign_in(username, password, address, now)
        from cloudfilm.audit import AuditRecord, trail_for

        user = result.user
        trail_for(self.archive).record(
            AuditRecord(
                action=action,
                outcome="success" if user else "denied",
                actor_kind="user",
                actor_id=username.strip()[:64],
                institution=user.institution.code if user and user.institution else "",
                address=address,
                agent=agent,
                detail=result.error,
            )
        )
        return result

    def _sign_in(self, username: str, password: str, address: str, now: datetime | None) -> SignIn:
        now = now or utcnow()
        username = username.strip()[:64]
        subjects: list[Subject] = [
            (USER, username.lower()),
            (SIGNIN_CLIENT, client_subject(address)),
        ]
        if len(password) > MAX_PASSWORD_CHARS:
            return SignIn(None, "wrong", self.lockout.check(subjects, now))
        counted, verdict = self.lockout.reserve(subjects, now)
        if not counted:
            return SignIn(None, "locked", verdict)
        with self.archive.sessions() as session:
            row = session.scalar(select(UserAccount).where(UserAccount.username == username))
            stored = row.password_hash if row is not None else _dummy_hash()
            passed = _verify(stored, password) and row is not None
            info = self._user_info(session, row) if row is not None and passed else None
        if info is None:
            return SignIn(None, "locked" if verdict.locked_until else "wrong", verdict)
        self.lockout.passed(subjects, now)
        if info.disabled:
            return SignIn(None, "disabled", verdict)
        with self.archive.sessions.begin() as session:
            session.execute(
                update(UserAccount).where(UserAccount.pk == info.pk).values(last_sign_in_at=now)
            )
        return SignIn(info)

    def change_password(self, username: str, old: str, new: str, address: str) -> bool:
        """The user's own change: the old password must pass (under the lockout)."""
        check_password_rules(new)
        if self.sign_in(username, old, address, action="password-change").user is None:
            return False
        self.set_password(username, new)
        return True

    def session_cookie(self, user: UserInfo, until: datetime) -> str:
        body = f"u1.{user.pk}.{user.session_epoch}.{int(until.timestamp())}"
        return f"{body}.{self._mac(self._session_key, body)}"

    def user_from_cookie(self, value: str, now: datetime | None = None) -> UserInfo | None:
        """The signed-in user of a session cookie; None when forged, expired or ended."""
        parts = value.split(".")
        if len(parts) != 5 or parts[0] != "u1" or not all(p.isdigit() for p in parts[1:4]):
            return None
        body = ".".join(parts[:4])
        if not hmac.compare_digest(parts[4], self._mac(self._session_key, body)):
            return None
        now = now or utcnow()
        if int(parts[3]) <= now.timestamp():
            return None
        with self.archive.sessions() as session:
            row = session.get(UserAccount, int(parts[1]))
            if row is None or row.disabled or row.session_epoch != int(parts[2]):
                return None
            return self._user_info(session, row)

    def _user_info(self, session: Session, row: UserAccount) -> UserInfo:
        return _user(row, self._institution_of(session, row.institution_pk))

    @staticmethod
    def _institution_of(session: Session, pk: int | None) -> Institution | None:
        return session.get(Institution, pk) if pk is not None else None

    # -------------------------------------------------------------------- API keys

    def create_api_key(
        self, institution: str | None, role: str, label: str = "", created_by: str = ""
    ) -> tuple[ApiKeyInfo, str]:
        """A new key and its secret form (shown once)."""
        try:
            check_role(role)
        except ValueError as exc:
            raise MalformedRequest(str(exc)) from exc
        if (role == PLATFORM_ADMIN) != (institution is None):
            raise MalformedRequest("a platform key has no institution; every other key has one")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        with self.archive.sessions.begin() as session:
            inst = self._institution_row(session, institution) if institution else None
            row = ApiKey(
                key_id=key_id, secret_hmac=self._mac(self._key_key, secret),
                institution_pk=inst.pk if inst else None, role=role, label=label.strip()[:200],
                created_by=created_by[:200], created_at=utcnow(),
            )  # fmt: skip
            session.add(row)
            session.flush()
            return _api_key(row, inst), f"cfk_{key_id}_{secret}"

    def api_keys(self) -> list[ApiKeyInfo]:
        with self.archive.sessions() as session:
            rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all()
            return [_api_key(r, self._institution_of(session, r.institution_pk)) for r in rows]

    def revoke_api_key(self, key_id: str) -> None:
        with self.archive.sessions.begin() as session:
            changed = session.execute(
                update(ApiKey)
                .where(ApiKey.key_id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            if not changed.rowcount:  # type: ignore[attr-defined]
                raise NotFound(f"active API key {key_id[:16]} not found")

    def api_key(self, key: str, now: datetime | None = None) -> ApiKeyInfo | None:
        """The active key of a Bearer value; None when malformed, unknown, wrong or revoked."""
        match = _KEY.match(key)
        if match is None:
            return None
        key_id, secret = match.groups()
        now = now or utcnow()
        with self.archive.sessions() as session:
            row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
            if row is None or row.revoked_at is not None:
                return None
            if not hmac.compare_digest(row.secret_hmac, self._mac(self._key_key, secret)):
                return None
            info = _api_key(row, self._institution_of(session, row.institution_pk))
            stale = row.last_used_at is None or aware(row.last_used_at) < now - timedelta(minutes=5)
        if stale:  # written at most every 5 minutes: a busy client must not write per request
            with self.archive.sessions.begin() as session:
                session.execute(update(ApiKey).where(ApiKey.pk == info.pk).values(last_used_at=now))
        return info

    def active_api_key(self, key_id: str) -> ApiKeyInfo | None:
        """The key with this id if it is not revoked (for an OAuth token that names it)."""
        with self.archive.sessions() as session:
            row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
            if row is None or row.revoked_at is not None:
                return None
            return _api_key(row, self._institution_of(session, row.institution_pk))

    @staticmethod
    def _mac(key: bytes, body: str) -> str:
        return hmac.new(key, body.encode("utf-8"), hashlib.sha256).hexdigest()


def _verify(stored: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def _institution(row: Institution) -> InstitutionInfo:
    return InstitutionInfo(row.pk, row.code, row.name)


def _user(row: UserAccount, inst: Institution | None) -> UserInfo:
    return UserInfo(
        row.pk, row.username, row.display_name, row.role,
        _institution(inst) if inst else None, row.disabled, row.session_epoch,
    )  # fmt: skip


def _api_key(row: ApiKey, inst: Institution | None) -> ApiKeyInfo:
    return ApiKeyInfo(
        row.pk, row.key_id, row.role, row.label, _institution(inst) if inst else None,
        aware(row.created_at), aware(row.revoked_at) if row.revoked_at else None,
    )  # fmt: skip
