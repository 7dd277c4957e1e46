"""Configuration: every setting documented; unsafe production settings refused."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from cloudfilm.core.config import DEV_SECRET_KEY, Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_sample_config_and_the_docs() -> None:
    sample = (ROOT / "src/cloudfilm/sample-config.toml").read_text()
    docs = (ROOT / "docs/configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"{name} =" in sample, f"{name} missing from sample-config.toml"
        assert f"`{name}`" in docs, f"{name} missing from docs/configuration.md"
        assert f"`CLOUDFILM_{name.upper()}`" in docs, f"CLOUDFILM_{name.upper()} undocumented"


def test_sample_config_loads_and_matches_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    sample = ROOT / "src/cloudfilm/sample-config.toml"
    monkeypatch.setenv("CLOUDFILM_CONFIG", str(sample))
    for key in list(__import__("os").environ):
        if key.startswith("CLOUDFILM_") and key != "CLOUDFILM_CONFIG":
            monkeypatch.delenv(key)
    loaded = Settings()
    values = tomllib.loads(sample.read_text())
    for name, value in values.items():
        assert str(getattr(loaded, name)) == str(value)
        assert str(Settings.model_fields[name].default) == str(value), name


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('http_port = 9000\nlog_level = "DEBUG"\n')
    monkeypatch.setenv("CLOUDFILM_CONFIG", str(config))
    monkeypatch.setenv("CLOUDFILM_HTTP_PORT", "9100")
    loaded = Settings()
    assert loaded.http_port == 9100
    assert loaded.log_level == "DEBUG"


def test_unknown_setting_in_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.toml"
    config.write_text("data_dri = 'x'\n")
    monkeypatch.setenv("CLOUDFILM_CONFIG", str(config))
    with pytest.raises(ValidationError, match="data_dri"):
        Settings()


def test_missing_config_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDFILM_CONFIG", "/nonexistent/cloudfilm.toml")
    with pytest.raises(ValueError, match="not a file"):
        Settings()


@pytest.mark.parametrize("secret", [DEV_SECRET_KEY, "short"])
def test_production_refuses_weak_secret(secret: str) -> None:
    with pytest.raises(ValidationError, match="CLOUDFILM_SECRET_KEY"):
        Settings(env="production", secret_key=secret)


def test_production_accepts_a_real_secret() -> None:
    assert Settings(env="production", secret_key="x" * 40).env == "production"


def test_s3_needs_an_endpoint() -> None:
    with pytest.raises(ValidationError, match="S3_ENDPOINT"):
        Settings(storage="s3")


def test_default_database_is_sqlite_in_the_data_folder(tmp_path: Path) -> None:
    url = Settings(data_dir=tmp_path, database_url=None).resolved_database_url
    assert url == f"sqlite:///{(tmp_path / 'index.sqlite3').resolve()}"
