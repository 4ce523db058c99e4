"""turbocast.settings and Publisher.from_config: one table of settings, read the Flask way."""

from __future__ import annotations

import re

import pytest
from flask import Flask

import turbocast
from tests.support import ROOT
from turbocast import DEFAULTS, Publisher, Turbo, TurboError
from turbocast.settings import redis_url, setting

URL = "redis://127.0.0.1:1/3"


def connection_kwargs(publisher: Publisher) -> dict:
    kwargs = publisher.client.connection_pool.connection_kwargs
    keys = ("host", "port", "db", "socket_timeout", "socket_connect_timeout")
    return {key: kwargs[key] for key in keys}


def test_defaults_is_the_settings_table_every_key_prefixed():
    assert turbocast.DEFAULTS is DEFAULTS
    assert all(key.startswith("TURBO_") for key in DEFAULTS)
    assert DEFAULTS["TURBO_CHANNEL_PREFIX"] == "turbo"
    assert DEFAULTS["TURBO_REDIS_URL"] is None


def test_the_components_take_their_defaults_from_the_table():
    from turbocast.channels import DEFAULT_PREFIX
    from turbocast.outbox import DEFAULT_OUTBOX_BYTES
    from turbocast.publisher import (
        DEFAULT_HISTORY_MAXLEN,
        DEFAULT_HISTORY_SECONDS,
        DEFAULT_MAX_MESSAGE_BYTES,
        DEFAULT_TIMEOUT,
    )

    own = {
        "TURBO_CHANNEL_PREFIX": DEFAULT_PREFIX,
        "TURBO_OUTBOX_BYTES": DEFAULT_OUTBOX_BYTES,
        "TURBO_MAX_MESSAGE_BYTES": DEFAULT_MAX_MESSAGE_BYTES,
        "TURBO_HISTORY_MAXLEN": DEFAULT_HISTORY_MAXLEN,
        "TURBO_HISTORY_SECONDS": DEFAULT_HISTORY_SECONDS,
        "TURBO_REDIS_TIMEOUT": DEFAULT_TIMEOUT,
    }
    assert own == {key: DEFAULTS[key] for key in own}


def test_setting_falls_back_to_its_default():
    assert setting({}, "TURBO_PING_INTERVAL") == DEFAULTS["TURBO_PING_INTERVAL"]
    assert setting({"TURBO_PING_INTERVAL": 3}, "TURBO_PING_INTERVAL") == 3


def test_redis_url_prefers_turbo_redis_url_then_redis_url():
    both = {"TURBO_REDIS_URL": "redis://push:6390/2", "REDIS_URL": URL}
    assert redis_url(both) == "redis://push:6390/2"
    assert redis_url({"TURBO_REDIS_URL": None, "REDIS_URL": URL}) == URL
    assert redis_url({"REDIS_URL": URL}) == URL


@pytest.mark.parametrize(
    "config", [{}, {"REDIS_URL": None}, {"REDIS_URL": "", "TURBO_REDIS_URL": ""}]
)
def test_redis_url_without_either_is_a_turbo_error_that_says_what_to_set(config):
    with pytest.raises(TurboError, match=r"set REDIS_URL \(or TURBO_REDIS_URL\)"):
        redis_url(config)


# -- Publisher.from_config -----------------------------------------------------------------


def test_from_config_with_only_a_redis_url_takes_every_default():
    publisher = Publisher.from_config({"REDIS_URL": URL})
    try:
        assert publisher.prefix == DEFAULTS["TURBO_CHANNEL_PREFIX"]
        assert publisher.max_message_bytes == DEFAULTS["TURBO_MAX_MESSAGE_BYTES"]
        assert publisher.history.maxlen == DEFAULTS["TURBO_HISTORY_MAXLEN"]
        assert publisher.history.max_age_ms == DEFAULTS["TURBO_HISTORY_SECONDS"] * 1000
        kwargs = connection_kwargs(publisher)
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", 1, 3)
        assert kwargs["socket_timeout"] == DEFAULTS["TURBO_REDIS_TIMEOUT"]
        assert kwargs["socket_connect_timeout"] == DEFAULTS["TURBO_REDIS_TIMEOUT"]
    finally:
        publisher.close()


def test_from_config_reads_every_publishing_setting():
    publisher = Publisher.from_config(
        {
            "REDIS_URL": "redis://ignored:1/0",
            "TURBO_REDIS_URL": URL,
            "TURBO_REDIS_TIMEOUT": "2.5",  # as an environment variable would give it
            "TURBO_CHANNEL_PREFIX": "shop",
            "TURBO_MAX_MESSAGE_BYTES": 99,
            "TURBO_HISTORY_MAXLEN": 7,
            "TURBO_HISTORY_SECONDS": 60,
        }
    )
    try:
        assert publisher.prefix == "shop"
        assert publisher.history.clock_key.startswith("shop:")
        assert publisher.max_message_bytes == 99
        assert publisher.history.maxlen == 7
        assert publisher.history.max_age_ms == 60_000
        kwargs = connection_kwargs(publisher)
        assert (kwargs["port"], kwargs["db"], kwargs["socket_timeout"]) == (1, 3, 2.5)
    finally:
        publisher.close()


def test_from_config_without_a_redis_url_is_a_clear_turbo_error():
    with pytest.raises(TurboError, match="REDIS_URL"):
        Publisher.from_config({"TURBO_CHANNEL_PREFIX": "shop"})


def test_from_config_takes_a_flask_config_and_agrees_with_the_extension():
    app = Flask(__name__)
    app.config.update(REDIS_URL=URL, TURBO_CHANNEL_PREFIX="shop", TURBO_HISTORY_MAXLEN=5)
    Turbo(app)
    worker = Publisher.from_config(app.config)
    with app.app_context():
        web = app.extensions["turbo"].publisher
    try:
        for publisher in (worker, web):
            assert (publisher.prefix, publisher.history.maxlen) == ("shop", 5)
        assert connection_kwargs(worker) == connection_kwargs(web)
    finally:
        worker.close()
        web.close()


# -- Flask's own from_prefixed_env ---------------------------------------------------------


@pytest.mark.parametrize("order", ["env-then-turbo", "turbo-then-env"])
def test_flask_prefixed_env_sets_what_the_extensions_publisher_uses(monkeypatch, order):
    monkeypatch.setenv("FLASK_TURBO_REDIS_URL", URL)
    monkeypatch.setenv("FLASK_TURBO_CHANNEL_PREFIX", "shop")
    monkeypatch.setenv("FLASK_TURBO_MAX_MESSAGE_BYTES", "1234")  # JSON: becomes an int
    app = Flask(__name__)
    turbo = Turbo()
    if order == "env-then-turbo":
        app.config.from_prefixed_env()
        turbo.init_app(app)
    else:  # the settings are read when used, not when init_app ran
        turbo.init_app(app)
        app.config.from_prefixed_env()

    with app.app_context():
        publisher = turbo.publisher
    try:
        assert app.config["TURBO_CHANNEL_PREFIX"] == "shop"
        assert publisher.prefix == "shop"
        assert publisher.max_message_bytes == 1234
        kwargs = connection_kwargs(publisher)
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", 1, 3)
    finally:
        publisher.close()


def test_the_readme_lists_every_setting_with_its_default():
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(TURBO_[A-Z_]+)` \| `([^`]*)` \|", readme, re.M))
    assert rows == {key: repr(value) for key, value in DEFAULTS.items()}
