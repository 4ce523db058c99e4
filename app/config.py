"""Configuration: defaults, overridden by environment variables of the same name.

Every key below can be set in the environment (``SECRET_KEY=... REDIS_URL=...``);
values are parsed as JSON when they parse (numbers, booleans, objects) and kept
as strings otherwise. ``create_app(test_config)`` overrides both.

=============================  ===========================================================
``SECRET_KEY``                 Signs the session cookie that identifies a browser to its
                               socket. Required in production; the same on every process.
``REDIS_URL``                  The Redis server: Celery's broker and the push channels.
``LOG_LEVEL``                  Logging level when nothing else configured logging (INFO).
``CELERY``                     Celery settings as a JSON object, over the defaults below
                               (broker: REDIS_URL; results ignored).
``DEMO_CLOCK_SECONDS``         How often beat broadcasts the demo's live clock (2).
``DEMO_JOB_STEPS``             Steps of the demo's progress job (10).
``DEMO_JOB_STEP_SECONDS``      Seconds of (pretend) work per step (0.4).
``TURBO_REDIS_URL``            A separate Redis for the push channels (default: REDIS_URL).
``TURBO_WEBSOCKET_ROUTE``      Path of the WebSocket endpoint (``/turbo-stream``).
``TURBO_CHANNEL_PREFIX``       Namespace of the Redis channels (``turbo``).
``TURBO_OUTBOX_BYTES``         Bytes of messages that may wait for one slow socket before
                               it is closed with code 4001 (1 MiB).
``TURBO_REDIS_TIMEOUT``        Seconds any Redis call from a request or the relay may take;
                               a handshake Redis does not serve in time gets 503 (5).
``TURBO_PING_INTERVAL``        Seconds between heartbeat pings; 0 turns them off (25).
``TURBO_SEND_TIMEOUT``         Seconds one write to a socket may block before the peer is
                               dropped as stuck (30; threads mode only).
``TURBO_MAX_MESSAGE_BYTES``    Largest message ``publish`` accepts (1 MiB).
``TURBO_MAX_INCOMING_BYTES``   Largest message a client may send before being closed with
                               1009 (4096).
``TURBO_MAX_INCOMING_RATE``    Messages a client may send per 10 s before being closed with
                               1008 (50).
``TURBO_TRUSTED_PROXIES``      How many proxies in front of the app set X-Forwarded-Proto
                               and X-Forwarded-Host; 0 ignores those headers (0).
``TURBO_REDIS_HEALTH_CHECK_INTERVAL``  Seconds of pub/sub silence before the relay pings
                               Redis to find a dead link (15).
``TURBO_ALLOWED_ORIGINS``      Origins, besides the site's own, whose pages may open a socket
                               (a JSON list; ``["*"]`` allows any) ([]).
``TURBO_MAX_SOCKETS_PER_SESSION``  Open sockets one session may hold in one web process;
                               0 means no cap (16).
``TURBO_MAX_STREAMS_PER_SOCKET``   Named streams one socket may ask for (32).
``TURBO_HISTORY_MAXLEN``       Messages each channel's history keeps, for replay (1000).
``TURBO_HISTORY_SECONDS``      How long a message stays in the history (3600).
``TURBO_TRANSPORT``            What ``turbo_stream_source()`` renders: ``websocket`` (the
                               reconnecting element), ``turbo`` (Turbo's element on a
                               WebSocket; does not reconnect), ``sse`` (Server-Sent Events)
                               (``websocket``).
``TURBO_SSE_ROUTE``            Path of the Server-Sent Events endpoint
                               (``/turbo-stream/events``).
``TURBO_ASSETS_ROUTE``         Path under which Turbo's and turbocast's JavaScript are served
                               (``/_turbocast``).
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

#: Used only when SECRET_KEY is unset; create_app logs a warning when it is.
INSECURE_DEV_KEY = "turbocast-insecure-development-key"

DEFAULTS: dict[str, Any] = {
    "SECRET_KEY": None,
    "REDIS_URL": None,
    "LOG_LEVEL": "INFO",
    "CELERY": {},
    "DEMO_CLOCK_SECONDS": 2.0,
    "DEMO_JOB_STEPS": 10,
    "DEMO_JOB_STEP_SECONDS": 0.4,
    "SESSION_COOKIE_SAMESITE": "Lax",
    "SESSION_COOKIE_HTTPONLY": True,
    **TURBO_DEFAULTS,
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
        # The core's send_later()/broadcast_later() task; workers add their own tasks.
        "include": ["turbocast.tasks"],
        **config.get("CELERY", {}),
    }


def from_environ(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the settings that the environment sets, parsed.

    :param environ: the environment to read (``os.environ`` by default).
    """
    environ = os.environ if environ is None else environ
    return {key: _parse(environ[key]) for key in DEFAULTS if key in environ}
