"""Configuration: one pydantic-settings object.

Values come, in order of precedence, from keyword arguments, ``CLOUDFILM_*`` environment
variables, the TOML file named by ``CLOUDFILM_CONFIG`` and the defaults below. Every field is
documented in ``sample-config.toml`` and ``docs/configuration.md`` (a test checks this).
"""

from __future__ import annotations

import ipaddress
import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEV_SECRET_KEY = "development-only-insecure-secret-key"

#: Our DICOM implementation identity (PS3.7 D.3.3.2); the root is a UUID-derived 2.25 UID.
IMPLEMENTATION_CLASS_UID = "2.25.176955106453958328632946432118325963857"
IMPLEMENTATION_VERSION_NAME = "CLOUDFILM_010"

#: Film Size ID Defined Terms (PS3.3 C.13.5.1); their sizes are in ``cloudfilm.film.layout``.
FilmSizeId = Literal[
    "8INX10IN", "8_5INX11IN", "10INX12IN", "10INX14IN", "11INX14IN", "11INX17IN",
    "14INX14IN", "14INX17IN", "24CMX24CM", "24CMX30CM", "A4", "A3",
]  # fmt: skip


def check_ae_title(value: str) -> str:
    """An AE title (PS3.5 6.2, VR AE): 1 to 16 characters, no backslash or control character.

    Leading and trailing spaces are not significant and are removed.
    """
    title = value.strip(" ")
    if not 1 <= len(title) <= 16 or any(c == "\\" or not " " <= c <= "~" for c in title):
        raise ValueError(f"{value!r} is not an AE title (1-16 printable ASCII, no backslash)")
    return title


def check_modalities(value: list[str]) -> list[str]:
    """Modality codes (0008,0060) such as ``CT``: upper-cased, 1 to 16 ASCII characters."""
    cleaned = [m.strip().upper() for m in value]
    if any(not m or len(m) > 16 or not m.isascii() for m in cleaned):
        raise ValueError(f"{value!r}: modalities are 1-16 character codes such as CT")
    return cleaned


class DimsePeerConfig(BaseModel):
    """A known DICOM peer declared in the configuration file (see docs/dimse.md)."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str
    host: str
    port: int = Field(104, ge=1, le=65535)
    #: What it may ask of us: any of "store", "query", "retrieve", "print".
    allow: list[Literal["store", "query", "retrieve", "print"]] = ["store"]
    #: Addresses it may call from: host names, IP addresses or CIDR blocks; empty = ``host``.
    allowed_from: list[str] = []
    description: str = ""
    institution: str = ""
    #: Department it belongs to (e.g. "radiology"), for the figures of film saved.
    department: str = ""
    #: Talk to it over DICOM TLS only, both ways (see docs/dimse.md, "DICOM TLS").
    tls: bool = False

    _ae = field_validator("ae_title")(check_ae_title)


class FilmPassThroughConfig(BaseModel):
    """A pass-through rule: sheets printed to the virtual printer by matching callers are
    also printed on real film, on a film printer that is a known peer (docs/film.md)."""

    model_config = ConfigDict(extra="forbid")

    #: AE title of the film printer (a known peer).
    printer: str
    #: Only sheets printed by this calling AE title; None: any.
    from_ae: str | None = None
    #: Only sheets printed by peers of this institution (its code); None: any.
    institution: str | None = None
    copies: int = Field(1, ge=1, le=10)

    _printer = field_validator("printer")(check_ae_title)

    @field_validator("from_ae")
    @classmethod
    def _from_ae(cls, value: str | None) -> str | None:
        return None if value is None else check_ae_title(value)


class DimseRouteConfig(BaseModel):
    """A routing rule: instances that arrive and match are forwarded to a known peer.

    Every condition given must hold; see docs/dimse.md ("Routing and the queue").
    """

    model_config = ConfigDict(extra="forbid")

    #: AE title of the known peer to forward to.
    to: str
    #: Only instances received over DIMSE from this calling AE title.
    from_ae: str | None = None
    #: Only instances that arrived this way; empty: any.
    sources: list[Literal["dimse", "stow", "import"]] = []
    #: Only instances whose series has one of these modalities (0008,0060); empty: any.
    modalities: list[str] = []

    _to = field_validator("to")(check_ae_title)

    @field_validator("from_ae")
    @classmethod
    def _from_ae(cls, value: str | None) -> str | None:
        return None if value is None else check_ae_title(value)

    _modalities = field_validator("modalities")(check_modalities)


class Settings(BaseSettings):
    """All settings of a cloudfilm deployment."""

    model_config = SettingsConfigDict(env_prefix="CLOUDFILM_", extra="forbid")

    env: Literal["development", "production"] = Field(
        "development", description="development or production; production refuses unsafe defaults"
    )
    data_dir: Path = Field(
        Path("cloudfilm-data"), description="folder for the embedded index, blobs and temp files"
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the index; default SQLite in the data folder"
    )
    storage: Literal["file", "s3"] = Field("file", description="blob backend: file or s3")
    s3_endpoint: str | None = Field(
        None, description="S3 endpoint URL (e.g. http://127.0.0.1:8333)"
    )
    s3_bucket: str = Field("cloudfilm", description="S3 bucket name (3 characters or more)")
    s3_access_key: str | None = Field(None, description="S3 access key id")
    s3_secret_key: str | None = Field(None, description="S3 secret access key")
    s3_region: str = Field("us-east-1", description="S3 region name")
    secret_key: str = Field(DEV_SECRET_KEY, description="server secret for signing and hashing")
    public_base_url: str = Field(
        "http://127.0.0.1:8080", description="address printed in share links and QR codes"
    )
    http_host: str = Field("127.0.0.1", description="address the HTTP server listens on")
    http_port: int = Field(8080, ge=1, le=65535, description="port the HTTP server listens on")
    max_instance_bytes: int = Field(
        4 * 1024**3, ge=1, description="largest single DICOM instance accepted, in bytes"
    )
    min_free_bytes: int = Field(
        1024**3, ge=0, description="refuse new data when the data folder has less free space"
    )
    conflict_policy: Literal["reject", "replace"] = Field(
        "reject", description="what to do when a known SOP Instance UID arrives with other IDs"
    )
    spool_memory_bytes: int = Field(
        16 * 1024**2, ge=0, description="incoming data above this size is spooled to disk"
    )
    blob_writer_threads: int = Field(
        4, ge=1, le=64, description="threads that write and fsync blobs while stores go on"
    )
    dicomweb_root: str = Field(
        "/dicomweb", pattern=r"^/[A-Za-z0-9._~/-]*[^/]$", description="path of the DICOMweb root"
    )
    wado_uri_path: str = Field(
        "/wado", pattern=r"^/[A-Za-z0-9._~/-]*[^/]$", description="path of WADO-URI"
    )
    qido_default_limit: int = Field(
        100, ge=1, description="QIDO-RS results per page when the request gives no limit"
    )
    qido_max_limit: int = Field(1000, ge=1, description="largest QIDO-RS page a request gets")
    stow_max_body_bytes: int = Field(
        8 * 1024**3, ge=1, description="largest STOW-RS request body accepted, in bytes"
    )
    dicomweb_cors_origins: list[str] = Field(
        ["*"], description="origins allowed to call DICOMweb from a browser (CORS)"
    )
    render_cache_bytes: int = Field(
        1024**3, ge=0, description="size bound of the rendered-image cache in bytes; 0 disables"
    )
    log_level: str = Field("INFO", description="Python logging level")
    dimse_ae_title: str = Field("CLOUDFILM", description="our DICOM AE title (1-16 characters)")
    dimse_host: str = Field("127.0.0.1", description="address the DIMSE (DICOM) server listens on")
    dimse_port: int = Field(
        11112, ge=1, le=65535, description="port the DIMSE (DICOM) server listens on"
    )
    dimse_max_pdu: int = Field(
        262144, ge=16384, le=2**24, description="largest PDU the DIMSE server receives, in bytes"
    )
    dimse_max_associations: int = Field(
        16, ge=1, le=256, description="most DIMSE associations served at the same time"
    )
    dimse_processes: int = Field(
        1, ge=1, le=64,
        description="processes of `cloudfilm dimse` sharing its port(s); more use more cores",
    )  # fmt: skip
    dimse_accept_unknown_storage: bool = Field(
        False, description="accept C-ECHO and C-STORE from AE titles that are not known peers"
    )
    dimse_tls_port: int | None = Field(
        None, ge=1, le=65535,
        description="port of the DICOM TLS listener (2762 is usual); unset: no TLS listener",
    )  # fmt: skip
    dimse_tls_certificate: Path | None = Field(
        None, description="PEM certificate (with its chain) that we present over DICOM TLS"
    )
    dimse_tls_private_key: Path | None = Field(
        None, description="PEM private key of dimse_tls_certificate, without a passphrase"
    )
    dimse_tls_ca_certificates: Path | None = Field(
        None, description="PEM file of the CA certificates that peers' certificates must chain to"
    )
    dimse_peers: list[DimsePeerConfig] = Field(
        [], description="known DICOM peers, besides those added with `cloudfilm peers add`"
    )
    dimse_routes: list[DimseRouteConfig] = Field(
        [], description="routing rules: what arrives and matches is forwarded to a known peer"
    )
    dimse_retry_base_seconds: float = Field(
        30.0, gt=0, le=86400, description="first wait before retrying a forward or a report"
    )
    dimse_retry_max_seconds: float = Field(
        3600.0, gt=0, le=7 * 86400, description="longest wait between two retries, in seconds"
    )
    dimse_retry_max_attempts: int = Field(
        20, ge=1, le=1000, description="attempts before a forward or a report is marked failed"
    )
    dimse_queue_poll_seconds: float = Field(
        5.0, gt=0, le=3600, description="how often background workers look for due jobs"
    )
    dimse_queue_batch: int = Field(
        100, ge=1, le=10000, description="most queued instances sent over one association"
    )
    dimse_queue_keep_days: int = Field(
        7, ge=0, le=3650, description="days finished jobs stay listed; 0 keeps them for ever"
    )
    oauth_token_minutes: int = Field(
        60, ge=1, le=1440, description="lifetime of an OAuth 2.0 access token, in minutes"
    )
    share_default_days: int = Field(
        365, ge=1, le=3650, description="validity of a new cloud film link, in days"
    )
    share_reshare_default_days: int = Field(
        7, ge=1, le=3650, description="validity of a patient's reshare when none is asked, in days"
    )
    share_lockout_failures: int = Field(
        5, ge=1, le=100, description="wrong codes that lock a share out for a while"
    )
    share_lockout_client_failures: int = Field(
        20, ge=1, le=1000,
        description="wrong codes, over all shares, that lock one client address out for a while",
    )  # fmt: skip
    signin_lockout_failures: int = Field(
        5, ge=1, le=100,
        description="wrong passwords that lock a staff username out for share_lockout_minutes",
    )  # fmt: skip
    staff_session_hours: int = Field(
        10, ge=1, le=24 * 30, description="how long a staff sign-in lasts, in hours"
    )
    trusted_proxies: list[str] = Field(
        [],
        description="addresses or CIDR blocks of reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed; empty: the TCP peer is the client",
    )
    share_lockout_minutes: int = Field(
        15, ge=1, le=7 * 24 * 60, description="how long a share or client stays locked, in minutes"
    )
    share_session_hours: int = Field(
        12, ge=1, le=24 * 30, description="how long a browser stays unlocked after the code, hours"
    )
    auto_share_enabled: bool = Field(
        False, description="issue a cloud film automatically when a study becomes stable"
    )
    auto_share_stable_seconds: int = Field(
        300, ge=1, le=7 * 86400, description="a study is stable this long after its last instance"
    )
    auto_share_modalities: list[str] = Field(
        [], description="automatic cloud films only for studies with one of these modalities"
    )
    auto_share_source_aes: list[str] = Field(
        [], description="automatic cloud films only for studies sent over DIMSE by these AEs"
    )
    auto_share_protection: Literal["code", "birth-date", "id-suffix", "none"] = Field(
        "code", description="what an automatic cloud film asks before it opens"
    )
    auto_share_permissions: list[Literal["view", "download", "reshare"]] = Field(
        ["view", "download", "reshare"], description="permissions of an automatic cloud film"
    )
    auto_share_days: int | None = Field(
        None, ge=1, le=3650, description="validity of an automatic cloud film, days; unset: default"
    )
    auto_share_max_age_hours: int = Field(
        24, ge=1, le=24 * 3650, description="older studies are never shared automatically, hours"
    )
    auto_share_poll_seconds: float = Field(
        30.0, gt=0, le=3600, description="how often the rule looks for studies that became stable"
    )
    card_font_path: Path | None = Field(
        None, description="TrueType CJK font for cloud film cards; default: a Debian CJK font"
    )
    download_deflate_level: int = Field(
        1, ge=0, le=9, description="zlib level for uncompressed DICOM in download ZIPs; 0 stores"
    )
    report_max_bytes: int = Field(
        50 * 1024**2, ge=1024, description="largest report (PDF or JSON) staff may attach, bytes"
    )
    film_dpi: int = Field(
        150, ge=72, le=300, description="resolution of composed film sheets, dots per inch"
    )
    film_default_size: FilmSizeId = Field(
        "14INX17IN", description="film size of a sheet when none is asked (PS3.3 Film Size ID)"
    )
    film_default_orientation: Literal["PORTRAIT", "LANDSCAPE"] = Field(
        "PORTRAIT", description="film orientation of a sheet when none is asked"
    )
    print_match_minutes: int = Field(
        120,
        ge=1,
        le=10080,
        description="a printed film goes to the study its calling AE sent within these minutes",
    )
    print_match_margin_seconds: float = Field(
        10.0,
        ge=0,
        description="a study sent this close before the latest makes a print's match ambiguous",
    )
    print_max_image_boxes: int = Field(
        64, ge=1, le=256, description="most image boxes of one printed film box"
    )
    print_max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024 * 1024,
        description="most image bytes the virtual printer holds for one association",
    )
    film_printer: str | None = Field(
        None, description="AE title of the known peer staff print on real film with, if any"
    )
    print_pass_through: list[FilmPassThroughConfig] = Field(
        [],
        description="rules: sheets printed by matching callers also go to a real film printer",
    )
    pix_strong_key_issuers: list[str] = Field(
        ["CN-NID"],
        description="Other Patient IDs issuers whose ID links a patient across institutions",
    )
    notifier: Literal["outbox", "http"] = Field(
        "outbox",
        description="how one-time codes reach patients: outbox (kept) or http (SMS gateway)",
    )
    sms_gateway_url: str | None = Field(
        None, description="URL the http notifier POSTs {to, text} to (an SMS gateway)"
    )
    sms_gateway_token: str | None = Field(
        None, description="bearer token the http notifier sends to the SMS gateway"
    )
    consent_code_minutes: int = Field(
        10, ge=1, le=60, description="minutes a consent's one-time code stays valid"
    )
    consent_code_attempts: int = Field(
        5, ge=1, le=20, description="wrong one-time codes before a pending consent is dropped"
    )
    consent_max_days: int = Field(
        365, ge=1, le=3650, description="longest period a consent may be given for, in days"
    )
    film_prices: dict[FilmSizeId, Annotated[float, Field(ge=0)]] = Field(
        {}, description="price of one sheet of film by Film Size ID, for the money saved"
    )
    film_price_default: float = Field(
        0.0, ge=0, description="price of a sheet whose film size has no entry in film_prices"
    )
    film_currency: str = Field(
        "CNY", pattern=r"^[A-Z]{3}$", description="ISO 4217 code of the currency of the prices"
    )
    figures_time_zone: str = Field(
        "UTC", description="IANA time zone of the days, weeks and months of the film figures"
    )
    audit_flush_seconds: float = Field(
        0.5, gt=0, le=60, description="longest wait before recorded audit events are written"
    )
    audit_head_seconds: float = Field(
        5.0, ge=0, le=3600, description="shortest interval between two lines of the audit head"
    )
    audit_head_path: Path | None = Field(
        None, description="append-only file of audit chain heads; default data_dir/audit/head.log"
    )

    _dimse_ae = field_validator("dimse_ae_title")(check_ae_title)
    _auto_share_modalities = field_validator("auto_share_modalities")(check_modalities)

    @field_validator("film_printer")
    @classmethod
    def _film_printer(cls, value: str | None) -> str | None:
        return None if value is None else check_ae_title(value)

    @field_validator("figures_time_zone")
    @classmethod
    def _figures_time_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ValueError, ZoneInfoNotFoundError):
            raise ValueError(f"{value!r} is not an IANA time zone such as Asia/Shanghai") from None
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError as exc:
                raise ValueError(
                    f"trusted_proxies: {entry!r} is not an IP address or CIDR block"
                ) from exc
        return [entry.strip() for entry in value]

    @field_validator("auto_share_source_aes")
    @classmethod
    def _auto_share_source_aes(cls, value: list[str]) -> list[str]:
        return [check_ae_title(ae) for ae in value]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("CLOUDFILM_CONFIG")
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise ValueError(f"CLOUDFILM_CONFIG names {config_file!r}, which is not a file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.env == "production":
            if self.secret_key == DEV_SECRET_KEY or len(self.secret_key) < 32:
                raise ValueError(
                    "CLOUDFILM_SECRET_KEY must be set to a random value of at least 32 "
                    "characters in production (e.g. python -c 'import secrets; "
                    "print(secrets.token_urlsafe(48))')"
                )
        if self.storage == "s3" and not self.s3_endpoint:
            raise ValueError("CLOUDFILM_STORAGE=s3 needs CLOUDFILM_S3_ENDPOINT")
        if self.notifier == "http" and not self.sms_gateway_url:
            raise ValueError("CLOUDFILM_NOTIFIER=http needs CLOUDFILM_SMS_GATEWAY_URL")
        if len(self.s3_bucket) < 3:
            raise ValueError("CLOUDFILM_S3_BUCKET must have at least 3 characters")
        tls_wanted = self.dimse_tls_port is not None or any(p.tls for p in self.dimse_peers)
        tls_files = (
            self.dimse_tls_certificate,
            self.dimse_tls_private_key,
            self.dimse_tls_ca_certificates,
        )
        if tls_wanted and any(f is None for f in tls_files):
            raise ValueError(
                "DICOM TLS needs CLOUDFILM_DIMSE_TLS_CERTIFICATE, CLOUDFILM_DIMSE_TLS_PRIVATE_KEY "
                "and CLOUDFILM_DIMSE_TLS_CA_CERTIFICATES"
            )
        if self.qido_default_limit > self.qido_max_limit:
            raise ValueError(
                "CLOUDFILM_QIDO_DEFAULT_LIMIT must not exceed CLOUDFILM_QIDO_MAX_LIMIT"
            )
        return self

    @cached_property
    def resolved_database_url(self) -> str:
        """The index URL, defaulting to SQLite inside the data folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"

    @property
    def audit_head_file(self) -> Path:
        """Where the audit chain's head is appended (``audit_head_path`` or its default)."""
        return self.audit_head_path or self.data_dir / "audit" / "head.log"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"


def load_settings(**overrides: object) -> Settings:
    """Read the settings, with explicit overrides (e.g. from CLI options) on top."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)  # type: ignore[arg-type]
