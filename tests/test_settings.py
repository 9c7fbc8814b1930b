"""Settings: environment variables, defaults and the checks between them."""

from pathlib import Path

import pytest

from batchgrid.errors import ConfigError
from batchgrid.settings import Settings


def test_settings_when_visibility_timeout_is_below_hard_limit_are_refused() -> None:
    with pytest.raises(ConfigError, match="VISIBILITY_TIMEOUT_S"):
        Settings(_env_file=None, hard_time_limit_s=600, visibility_timeout_s=60)


def test_settings_when_soft_limit_is_not_below_hard_limit_are_refused() -> None:
    with pytest.raises(ConfigError, match="SOFT_TIME_LIMIT_S"):
        Settings(_env_file=None, soft_time_limit_s=60, hard_time_limit_s=60)


def test_settings_from_environment_split_comma_separated_roots(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BATCHGRID_STORAGE_ROOTS", f"{tmp_path}/a, {tmp_path}/b")
    monkeypatch.setenv("BATCHGRID_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("BATCHGRID_CHUNK_BYTES", "1048576")

    settings = Settings(_env_file=None)

    assert settings.storage_roots == [f"{tmp_path}/a", f"{tmp_path}/b"]
    assert settings.chunk_bytes == 1048576
    assert settings.job_store_url == "redis://redis:6379/0"


def test_settings_when_broker_is_amqp_need_a_separate_result_backend() -> None:
    settings = Settings(_env_file=None, broker_url="amqp://guest@localhost//")

    assert settings.job_store_url is None


def test_settings_when_broker_url_is_empty_string_mean_embedded() -> None:
    assert Settings(_env_file=None, broker_url="").broker_url is None


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()

    missing = [
        name
        for name in Settings.model_fields
        if f"`BATCHGRID_{name.upper()}`" not in readme
    ]

    assert missing == []


def test_settings_when_a_root_is_the_filesystem_root_are_refused() -> None:
    with pytest.raises(ConfigError, match="whole filesystem"):
        Settings(_env_file=None, storage_roots=["/"])


def test_settings_when_roots_are_relative_make_them_absolute(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, storage_roots=["data"])

    assert Path(settings.storage_roots[0]).is_absolute()


def test_settings_when_result_backend_is_not_redis_are_refused() -> None:
    with pytest.raises(ConfigError, match="BATCHGRID_RESULT_BACKEND_URL"):
        Settings(_env_file=None, result_backend_url="db+postgresql://x/y")


@pytest.mark.parametrize("url", ["valkey://localhost:6379/0", "redis+socket:///tmp/s"])
def test_settings_when_broker_scheme_is_one_a_client_cannot_read_are_refused(
    url: str,
) -> None:
    with pytest.raises(ConfigError, match="unsupported scheme"):
        Settings(_env_file=None, broker_url=url)
