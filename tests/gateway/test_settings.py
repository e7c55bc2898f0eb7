"""Settings merge defaults < TOML file < PARROT_* environment < CLI flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import Settings, load_settings


def test_defaults() -> None:
    settings = load_settings({}, env={})
    assert settings == Settings()
    assert (settings.host, settings.port, settings.redis_url) == ("127.0.0.1", 8000, None)
    assert settings.local_engine and not settings.echo


def test_sources_in_order(tmp_path: Path) -> None:
    config = tmp_path / "parrot.toml"
    config.write_text('port = 9000\nredis_url = "redis://file"\nengine_urls = ["http://a"]\n')
    env = {"PARROT_REDIS_URL": "redis://env", "PARROT_ENGINE_URLS": "http://b, http://c"}
    settings = load_settings({"port": None, "echo": True}, config_file=str(config), env=env)
    assert settings.port == 9000  # file; the flag was not given
    assert settings.redis_url == "redis://env"
    assert settings.engine_urls == ("http://b", "http://c")
    assert settings.echo
    settings = load_settings({"port": 7000}, config_file=str(config), env=env)
    assert settings.port == 7000


def test_env_values_are_converted_and_config_path_from_env(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("health_interval_s = 0.5\n")
    env = {"PARROT_PORT": "8123", "PARROT_LOCAL_ENGINE": "false", "PARROT_CONFIG": str(config)}
    settings = load_settings({}, env=env)
    assert settings.port == 8123 and settings.local_engine is False
    assert load_settings({}, env={"PARROT_NATIVE_KERNELS": "false"}).native_kernels is False
    assert settings.health_interval_s == 0.5


def test_bad_settings_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="port"):
        load_settings({}, env={"PARROT_PORT": "eighty"})
    config = tmp_path / "c.toml"
    config.write_text("no_such_setting = 1\n")
    with pytest.raises(ValueError, match="no_such_setting"):
        load_settings({}, config_file=str(config), env={})
    with pytest.raises(AttributeError):
        Settings().port = 1  # type: ignore[misc]


def test_the_served_engine_gets_every_core_unless_told(monkeypatch) -> None:
    from engine.builtin import factory
    from gateway.engines import builtin_engine

    seen: list[tuple] = []

    def fake_create_builtin_engine(model, **options):  # records the options, builds nothing
        keys = ("num_threads", "attention_threads", "wide_attention_context")
        seen.append(tuple(options[k] for k in keys))
        return None

    monkeypatch.setattr(factory, "create_builtin_engine", fake_create_builtin_engine)
    builtin_engine(Settings())
    builtin_engine(Settings(threads=1, attention_threads=5, wide_attention_context=100))
    # None: the engine keeps torch's own count (every core), attention included.
    assert seen == [(None, None, 2048), (1, 5, 100)]
