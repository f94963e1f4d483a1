"""Configuration: file -> environment -> overrides, with clear errors."""

import pytest

from frontend.config import load_settings, redact_url
from frontend.errors import ConfigError


def test_layers_override_in_order(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('redis_url = "redis://file:1/0"\nflood_rate = 2.0\nlog_level = "DEBUG"\n')
    s = load_settings(str(path), env={"GREENROOM_FLOOD_RATE": "3", "GREENROOM_LOG_LEVEL": "WARNING"},
                      overrides={"log_level": "ERROR", "redis_url": None})
    assert (s.redis_url, s.flood_rate, s.log_level) == ("redis://file:1/0", 3.0, "ERROR")


def test_example_config_loads():
    s = load_settings("configs/greenroom.toml", env={})
    assert s.max_text_bytes == 16384 and s.ping_interval == 120


def test_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("nonsense = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'nonsense'"):
        load_settings(str(bad), env={})
    with pytest.raises(ConfigError, match="not a valid float"):
        load_settings(env={"GREENROOM_FLOOD_RATE": "fast"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(str(tmp_path / "missing.toml"), env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("a = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(str(broken), env={})


def test_per_server_overrides(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('[servers."irc.example.org"]\nflood_rate = 1.5\n')
    s = load_settings(str(path), env={})
    assert s.for_server("irc.example.org", "flood_rate") == 1.5
    assert s.for_server("other", "flood_rate") == 0.5


def test_redis_password_is_redacted():
    assert redact_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("rediss://user:s3cret@host/0") == "rediss://user:***@host/0"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"


def test_the_garbage_collector_setting(tmp_path):
    import gc

    from frontend import gc_tuning

    assert load_settings(env={}).gc_young_threshold == 5_000
    assert load_settings("configs/greenroom.toml", env={}).gc_young_threshold == 5_000
    for bad in ("-1", str(2 ** 31), str(10 ** 30)):
        with pytest.raises(ConfigError, match="gc_young_threshold must be 0"):
            load_settings(env={"GREENROOM_GC_YOUNG_THRESHOLD": bad})
    before = gc.get_threshold()
    try:
        assert gc_tuning.apply(50_000) == (50_000, *gc_tuning.PYTHON_THRESHOLDS[1:]) == gc.get_threshold()
        assert gc_tuning.apply(0) == gc_tuning.PYTHON_THRESHOLDS == gc.get_threshold()
        for bad in (-5, 2 ** 31):
            with pytest.raises(ValueError):
                gc_tuning.apply(bad)
    finally:
        gc.set_threshold(*before)
