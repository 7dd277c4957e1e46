"""Configuration: one pydantic-settings object.

Values come, in order of precedence, from keyword arguments, ``CLOUDFILM_*`` environment
variables, the TOML file named by ``CLOUDFILM_CONFIG`` and the defaults below. Every field is
documented in ``sample-config.toml`` and ``docs/configuration.md`` (a test checks this).
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

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


def check_ae_title(value: str) -> str:
    """An AE title (PS3.5 6.2, VR AE): 1 to 16 characters, no backslash or control character.

    Leading and trailing spaces are not significant and are removed.
    """
    title = value.strip(" ")
    if not 1 <= len(title) <= 16 or any(c == "\\" or not " " <= c <= "~" for c in title):
        raise ValueError(f"{value!r} is not an AE title (1-16 printable ASCII, no backslash)")
    return title


class DimsePeerConfig(BaseModel):
    """A known DICOM peer declared in the configuration file (see docs/dimse.md)."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str
    host: str
    port: int = Field(104, ge=1, le=65535)
    #: What it may ask of us: any of "store", "query", "retrieve".
    allow: list[Literal["store", "query", "retrieve"]] = ["store"]
    #: Addresses it may call from: host names, IP addresses or CIDR blocks; empty = ``host``.
    allowed_from: list[str] = []
    description: str = ""
    institution: str = ""

    _ae = field_validator("ae_title")(check_ae_title)


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
    dimse_accept_unknown_storage: bool = Field(
        False, description="accept C-ECHO and C-STORE from AE titles that are not known peers"
    )
    dimse_peers: list[DimsePeerConfig] = Field(
        [], description="known DICOM peers, besides those added with `cloudfilm peers add`"
    )

    _dimse_ae = field_validator("dimse_ae_title")(check_ae_title)

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
        if len(self.s3_bucket) < 3:
            raise ValueError("CLOUDFILM_S3_BUCKET must have at least 3 characters")
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
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"


def load_settings(**overrides: object) -> Settings:
    """Read the settings, with explicit overrides (e.g. from CLI options) on top."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)  # type: ignore[arg-type]
