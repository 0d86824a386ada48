"""Settings from the environment: secrets from files, and errors that name the BRIDGE_* variable
in one line without echoing a value."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import SECRET_SETTINGS, SettingsError, env_name, get_settings


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No BRIDGE_* variable and no .env: only what the test sets."""
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_every_secret_setting_reads_a_file(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    values = {
        "database_url": "postgresql://bridge:pw@db:5432/bridge",
        "mailmodo_api_key": "mm-key-from-file",
        "clevertap_passcode": "ct-pass-from-file",
        "clevertap_webhook_secrets": "ct-one,ct-two",
        "mailmodo_webhook_secrets": "mm-one",
        "admin_token": "admin-from-file",
    }
    assert set(values) == set(SECRET_SETTINGS)
    for name, value in values.items():
        path = tmp_path / name
        path.write_text(value + "\n")  # as `echo value > file` and most secret stores write
        env.setenv(env_name(name) + "_FILE", str(path))
    settings = get_settings()
    assert settings.database_url == "postgresql+psycopg://bridge:pw@db:5432/bridge"
    assert settings.mailmodo_api_key == "mm-key-from-file"
    assert settings.clevertap_passcode == "ct-pass-from-file"
    assert settings.clevertap_webhook_secrets == ["ct-one", "ct-two"]
    assert settings.mailmodo_webhook_secrets == ["mm-one"]
    assert settings.admin_token == "admin-from-file"


def test_a_secret_file_beats_dotenv(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BRIDGE_ADMIN_TOKEN=from-dotenv\n")
    (tmp_path / "token").write_text("from-file")
    env.setenv("BRIDGE_ADMIN_TOKEN_FILE", str(tmp_path / "token"))
    assert get_settings().admin_token == "from-file"


def test_a_secret_file_named_in_dotenv_is_read(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """.env.example shows the _FILE lines in the file copied to .env: they work there too."""
    (tmp_path / "key").write_text("mm-key-from-file\n")
    (tmp_path / ".env").write_text(f"BRIDGE_MAILMODO_API_KEY_FILE={tmp_path / 'key'}\n")
    assert get_settings().mailmodo_api_key == "mm-key-from-file"


def test_the_environment_decides_before_dotenv_for_secret_files(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text("from-file")
    (tmp_path / ".env").write_text(f"BRIDGE_ADMIN_TOKEN_FILE={tmp_path / 'token'}\n")
    env.setenv("BRIDGE_ADMIN_TOKEN", "from-env")
    assert get_settings().admin_token == "from-env"  # a value in the environment wins
    (tmp_path / ".env").write_text(
        f"BRIDGE_ADMIN_TOKEN=a\nBRIDGE_ADMIN_TOKEN_FILE={tmp_path / 'token'}\n"
    )
    env.delenv("BRIDGE_ADMIN_TOKEN")
    get_settings.cache_clear()
    with pytest.raises(SettingsError, match=r"not both \(\.env\)"):
        get_settings()


def test_a_value_and_a_file_for_one_setting_is_an_error(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text("from-file")
    env.setenv("BRIDGE_ADMIN_TOKEN_FILE", str(tmp_path / "token"))
    env.setenv("BRIDGE_ADMIN_TOKEN", "from-env")
    with pytest.raises(SettingsError, match="BRIDGE_ADMIN_TOKEN or BRIDGE_ADMIN_TOKEN_FILE"):
        get_settings()


def test_an_unreadable_secret_file_names_its_variable(env: pytest.MonkeyPatch) -> None:
    env.setenv("BRIDGE_MAILMODO_API_KEY_FILE", "/nonexistent/key")
    with pytest.raises(SettingsError, match=r"^BRIDGE_MAILMODO_API_KEY_FILE: cannot read"):
        get_settings()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("BRIDGE_CLEVERTAP_REGION", "mars", "BRIDGE_CLEVERTAP_REGION: unknown region 'mars'"),
        ("BRIDGE_PORT", "http", "BRIDGE_PORT: Input should be a valid integer"),
        ("BRIDGE_SQLITE_SYNCHRONOUS", "often", "BRIDGE_SQLITE_SYNCHRONOUS: must be OFF"),
        ("BRIDGE_LOG_LEVEL", "bogus", "BRIDGE_LOG_LEVEL: must be DEBUG, INFO"),
        ("BRIDGE_PUBLIC_URL", "bridge.example.com", "BRIDGE_PUBLIC_URL: must start with https://"),
        ("BRIDGE_DATABASE_URL", "mysql://u:hunter22@db/x", "BRIDGE_DATABASE_URL: unsupported"),
        ("BRIDGE_DATABASE_URL", "postgresql+asyncpg://u@db/x", "unsupported database"),
    ],
)
def test_errors_name_the_variable_in_one_line(
    env: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    env.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        get_settings()
    text = str(caught.value)
    assert message in text
    assert "\n" not in text
    assert "hunter22" not in text  # a URL's password is never echoed


def test_good_database_urls_pass(env: pytest.MonkeyPatch) -> None:
    for url in ("sqlite:///./x.db", "sqlite+pysqlite:///x.db", "postgres://u@h/d"):
        env.setenv("BRIDGE_DATABASE_URL", url)
        get_settings.cache_clear()
        get_settings()
