"""The demo's safe start: no SECRET_KEY, no start (outside debug and testing)."""

from __future__ import annotations

import stat

import pytest

from app import create_app
from app.config import ConfigError
from app.launcher import checkout_secret_key


def test_without_a_secret_key_the_demo_refuses_to_start():
    with pytest.raises(ConfigError, match="SECRET_KEY is not set"):
        create_app({"SECRET_KEY": None})


@pytest.mark.parametrize("mode", ["DEBUG", "TESTING"])
def test_debug_and_testing_start_with_a_random_key(mode, caplog):
    first = create_app({"SECRET_KEY": None, mode: True})
    second = create_app({"SECRET_KEY": None, mode: True})
    assert len(first.secret_key) >= 64
    assert first.secret_key != second.secret_key
    assert "SECRET_KEY is not set: using a random key" in caplog.text


def test_make_run_makes_one_key_per_checkout_and_keeps_it(tmp_path):
    path = tmp_path / "instance" / "secret_key"
    key = checkout_secret_key(path)
    assert len(key) == 64
    assert checkout_secret_key(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert checkout_secret_key(tmp_path / "other" / "secret_key") != key


def test_an_empty_key_file_is_refused_not_used(tmp_path):
    path = tmp_path / "secret_key"
    path.write_text("\n")
    with pytest.raises(SystemExit, match="is empty"):
        checkout_secret_key(path)
