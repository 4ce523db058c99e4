"""turbocast's settings: every ``TURBO_*`` key, its default, and what it does.

``Turbo(app)`` fills in these defaults with ``app.config.setdefault`` and reads the
values from ``app.config`` when it uses them, so any way of filling Flask's config
works: ``app.config.update(...)``, ``app.config.from_prefixed_env()``
(``FLASK_TURBO_CHANNEL_PREFIX=shop``), a settings file. A worker or a script without
a web app builds its publisher from the same keys, ``Publisher.from_config(config)``,
so the web app and its workers cannot disagree.

This module imports only turbocast's errors: the components take their own
defaults from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import TurboError

#: Every setting, with its default.
DEFAULTS: dict[str, Any] = {
    # The Redis of the push channels and their history: one server, a Redis Cluster
    # (redis+cluster://) or Sentinels (redis+sentinel://), see turbocast.topology; unset: REDIS_URL.
    "TURBO_REDIS_URL": None,
    # Path of the WebSocket endpoint.
    "TURBO_WEBSOCKET_ROUTE": "/turbo-stream",
    # Compress messages (permessage-deflate) for clients that offer it; off by default.
    "TURBO_WEBSOCKET_DEFLATE": False,
    # Namespace of the Redis channels and keys; every process of an app must agree on it.
    "TURBO_CHANNEL_PREFIX": "turbo",
    # Bytes of messages that may wait for one slow socket before it is closed with 4001.
    "TURBO_OUTBOX_BYTES": 1024 * 1024,
    # Seconds any Redis call (connect, reply) may take; a publish retries once after it.
    "TURBO_REDIS_TIMEOUT": 5.0,
    # Seconds between heartbeat pings to each socket; 0 turns them off.
    "TURBO_PING_INTERVAL": 25.0,
    # Seconds one write to a socket may block before the peer is dropped as stuck.
    "TURBO_SEND_TIMEOUT": 30.0,
    # Largest message a publisher accepts, in bytes of UTF-8 (MessageTooLargeError).
    "TURBO_MAX_MESSAGE_BYTES": 1024 * 1024,
    # Largest message a client may send before its socket is closed with 1009.
    "TURBO_MAX_INCOMING_BYTES": 4096,
    # Messages a client may send per 10 s before its socket is closed with 1008.
    "TURBO_MAX_INCOMING_RATE": 50,
    # How many proxies in front of the app set X-Forwarded-Proto/-Host; 0 ignores them.
    "TURBO_TRUSTED_PROXIES": 0,
    # Seconds of pub/sub silence before the relay pings Redis to find a dead link.
    "TURBO_REDIS_HEALTH_CHECK_INTERVAL": 15.0,
    # Path of the health check (turbocast.health_view); None: not mounted.
    "TURBO_HEALTH_ROUTE": None,
    # Seconds the health check waits for Redis's PONG, and for a (re)starting relay.
    "TURBO_HEALTH_TIMEOUT": 1.0,
    # Path of the Prometheus metrics (turbocast.metrics_view; needs turbocast[metrics]); None:
    # not mounted.
    "TURBO_METRICS_ROUTE": None,
    # Origins, besides the site's own, whose pages may open a socket (["*"]: any).
    "TURBO_ALLOWED_ORIGINS": [],
    # Open sockets one session may hold in one web process; 0: no cap.
    "TURBO_MAX_SOCKETS_PER_SESSION": 16,
    # Named streams one socket may ask for.
    "TURBO_MAX_STREAMS_PER_SOCKET": 32,
    # Messages each channel's history keeps for replay (trimming by count never leaves
    # fewer: Redis trims whole stream nodes, so up to a node more; trimming by age may);
    # every publisher must agree on it.
    "TURBO_HISTORY_MAXLEN": 1000,
    # Seconds a message stays in its channel's history.
    "TURBO_HISTORY_SECONDS": 3600.0,
    # What turbo_stream_source() renders: "websocket" (turbocast's element, reconnects and
    # resumes), "turbo" (Turbo's own element; does not reconnect) or "sse".
    "TURBO_TRANSPORT": "websocket",
    # Path of the Server-Sent Events endpoint.
    "TURBO_SSE_ROUTE": "/turbo-stream/events",
    # Path under which turbo_scripts() serves Turbo's and turbocast's JavaScript.
    "TURBO_ASSETS_ROUTE": "/_turbocast",
    # Model broadcasts: where a worker gets a SQLAlchemy session to load a changed instance
    # again, a sessionmaker or its import path ("yourapp.db:Session"); unset: Flask-SQLAlchemy's.
    "TURBO_SQLALCHEMY_SESSION": None,
    # Presence (turbo_stream_source(presence=[...])): seconds a closed socket still counts, so
    # that a reload or a Turbo navigation is neither a leave nor a join.
    "TURBO_PRESENCE_GRACE": 3.0,
    # Presence: seconds a live socket counts without its web process's renewal (every third
    # of it); a process killed takes its members with it within this plus half a second.
    "TURBO_PRESENCE_TTL": 15.0,
    # Seconds a named stream's refresh waits, taking in every other refresh of that stream asked
    # for meanwhile by any process: one refresh per window (turbo-rails' debouncer: 0.5); 0: none.
    "TURBO_REFRESH_DEBOUNCE": 0.5,
}


def setting(config: Mapping[str, Any], key: str) -> Any:
    """One setting's value from ``config``, or its default when ``config`` lacks it.

    :param config: a Flask app's config, or any mapping of settings.
    :param key: the setting's name, a key of :data:`DEFAULTS`.
    """
    return config.get(key, DEFAULTS[key])


def redis_url(config: Mapping[str, Any]) -> str:
    """The Redis server of the push channels: ``TURBO_REDIS_URL``, else ``REDIS_URL``.

    :param config: a Flask app's config, or any mapping of settings.
    :raises TurboError: when neither is set.
    """
    url = config.get("TURBO_REDIS_URL") or config.get("REDIS_URL")
    if not url:
        raise TurboError(
            "turbocast needs Redis: set REDIS_URL (or TURBO_REDIS_URL) in the config, "
            "e.g. app.config['REDIS_URL'] = 'redis://localhost:6379/0'"
        )
    return str(url)
