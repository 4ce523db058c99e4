"""Configuration: defaults, overridden by environment variables of the same name.

Every key below can be set in the environment (``SECRET_KEY=... REDIS_URL=...``);
values are parsed as JSON when they parse (numbers, booleans, objects) and kept
as strings otherwise. ``create_app(test_config)`` overrides both.

=============================  ===========================================================
``SECRET_KEY``                 Signs the session cookie that identifies a browser to its
                               socket. Required (the app refuses to start without it, except
                               in debug or testing); the same on every process.
``REDIS_URL``                  The Redis server: Celery's broker and the push channels.
``DATABASE_URL``               The boards' and posts' database, a SQLAlchemy URL
                               (``postgresql+psycopg://...``); unset: SQLite in the instance
                               folder, ``instance/demo.sqlite``.
``LOG_LEVEL``                  Logging level when nothing else configured logging (INFO).
``CELERY``                     Celery settings as a JSON object, over the defaults below
                               (broker: REDIS_URL; results ignored).
``DEMO_CLOCK_SECONDS``         How often beat broadcasts the demo's live clock (2).
``DEMO_JOB_STEPS``             Steps of the demo's progress job (10).
``DEMO_JOB_STEP_SECONDS``      Seconds of (pretend) work per step (0.4).
``TURBO_*``                    turbocast's settings: each one, its default and what it
                               does are in app/turbo/settings.py (``turbocast.DEFAULTS``).
                               ``TURBO_REDIS_URL`` defaults to ``REDIS_URL``.
=============================  ===========================================================
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from turbocast import DEFAULTS as TURBO_DEFAULTS

logger = logging.getLogger(__name__)

#: Why the demo does not start without SECRET_KEY (outside debug and testing).
UNSIGNED_REFUSAL = (
    "SECRET_KEY is not set. It signs the session cookie that ties a browser to its pushes, "
    "and the names of the streams a page may hear: set it to a long random string, the same "
    "in every web and worker process, e.g. "
    "SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(32))'). "
    "(`make run` makes one for this checkout; debug and testing use a random one.)"
)


class ConfigError(RuntimeError):
    """The demo's configuration cannot be served safely."""


DEFAULTS: dict[str, Any] = {
    "SECRET_KEY": None,
    "REDIS_URL": None,
    "DATABASE_URL": None,
    "LOG_LEVEL": "INFO",
    "CELERY": {},
    "DEMO_CLOCK_SECONDS": 2.0,
    "DEMO_JOB_STEPS": 10,
    "DEMO_JOB_STEP_SECONDS": 0.4,
    "SESSION_COOKIE_SAMESITE": "Lax",
    "SESSION_COOKIE_HTTPONLY": True,
    **TURBO_DEFAULTS,
    # The demo's pages reconnect and resume (the library's default is Turbo's own element).
    "TURBO_TRANSPORT": "websocket",
}


def _parse(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def celery_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Celery's settings: on the same Redis as everything else, overridable by ``CELERY``.

    :param config: the Flask app's config.
    """
    return {
        "broker_url": config.get("REDIS_URL"),
        "task_ignore_result": True,
        "broker_connection_retry_on_startup": True,
        # No include for turbocast's task: turbo.init_app(app, celery=...) registers it.
        # Workers add their own tasks.
        **config.get("CELERY", {}),
    }


def database_url(config: Mapping[str, Any], instance_path: str) -> str:
    """The demo's database: ``DATABASE_URL``, else SQLite in the instance folder.

    :param config: the Flask app's config.
    :param instance_path: the app's instance folder.
    """
    return str(config.get("DATABASE_URL") or f"sqlite:///{instance_path}/demo.sqlite")


def from_environ(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the settings that the environment sets, parsed.

    :param environ: the environment to read (``os.environ`` by default).
    """
    environ = os.environ if environ is None else environ
    return {key: _parse(environ[key]) for key in DEFAULTS if key in environ}
