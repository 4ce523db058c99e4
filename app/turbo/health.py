"""Liveness that means something: can this web process hold sockets and push to them now?

:func:`check` (``turbo.health()``) reports, for the process that answers it:

``redis``
    Redis answers a ``PING`` within ``TURBO_HEALTH_TIMEOUT`` seconds.
``relay``
    The relay's listener thread (``turbo-relay``) is alive in this process, and its
    pub/sub connection is up with every channel confirmed. Channels a new socket
    asked for a moment ago may still be pending while the connection is up: that is
    one round trip, reported (``pending``) but not a failure.
``heartbeat``
    The heartbeat thread (``turbo-heartbeat``) is alive (passes when
    ``TURBO_PING_INTERVAL`` is 0: no heartbeats).

The check starts the relay when this process has none yet (the relay otherwise
starts with the first socket): a load balancer's first check warms the process,
and the answer says whether it CAN hold sockets, not only whether one came. The
first check of a fresh process, or one while Redis is back but the relay still
reconnecting, waits up to ``TURBO_HEALTH_TIMEOUT`` for the relay to connect.
Redis reachable but the relay not (yet) reconnected fails: sockets of this
process would get nothing.

:func:`health_view` answers 200 with the report as JSON when healthy, 503 when not;
mount it with ``TURBO_HEALTH_ROUTE`` or route it yourself.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from flask import Response, jsonify
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from .topology import parse

if TYPE_CHECKING:
    from .extension import TurboState
    from .relay import RelayState

logger = logging.getLogger("turbocast.health")


@dataclass(frozen=True)
class Check:
    """One check's outcome: whether it passed, why (in words), and what it saw."""

    ok: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason, **self.details}


@dataclass(frozen=True)
class Health:
    """A health report: ``ok`` when every check passed."""

    ok: bool
    checks: dict[str, Check]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data: ``{"ok": ..., "checks": {name: {...}}}``."""
        return {"ok": self.ok, "checks": {n: c.to_dict() for n, c in self.checks.items()}}


def assess(
    redis_error: str | None, relay: RelayState | None, relay_error: str | None = None
) -> Health:
    """The report from what was observed (no I/O: the logic the unit tests hold).

    :param redis_error: why the ``PING`` failed; ``None``: Redis answered.
    :param relay: the relay's state; ``None`` when it could not be started.
    :param relay_error: why the relay could not be started.
    """
    if redis_error is None:
        redis_check = Check(True, "Redis answered PING")
    else:
        redis_check = Check(False, f"Redis did not answer PING: {redis_error}")

    if relay is None:
        relay_check = Check(False, f"the relay could not start: {relay_error}")
        heartbeat_check = Check(False, "no relay, so no heartbeat", {"alive": False})
        return Health(
            False, {"redis": redis_check, "relay": relay_check, "heartbeat": heartbeat_check}
        )

    listener = relay.listener
    details = {
        "running": relay.running,
        "connected": listener.connected,
        "pending": listener.pending,
    }
    if not relay.running:
        relay_check = Check(False, "the relay thread is not running in this process", details)
    elif not listener.connected:
        why = f" ({listener.error})" if listener.error else ""
        relay_check = Check(False, f"the relay is not subscribed to Redis{why}", details)
    elif listener.pending:
        relay_check = Check(
            True,
            f"subscribed; {listener.pending} new channel(s) awaiting confirmation",
            details,
        )
    else:
        relay_check = Check(True, "subscribed, every channel confirmed", details)

    if relay.heartbeat is None:
        heartbeat_check = Check(True, "heartbeats are off (TURBO_PING_INTERVAL 0)", {"alive": None})
    elif relay.heartbeat:
        heartbeat_check = Check(True, "the heartbeat thread is alive", {"alive": True})
    else:
        heartbeat_check = Check(False, "the heartbeat thread is not running", {"alive": False})

    checks = {"redis": redis_check, "relay": relay_check, "heartbeat": heartbeat_check}
    return Health(all(c.ok for c in checks.values()), checks)


def ping(url: str, timeout: float) -> str | None:
    """``PING`` Redis once on a fresh connection; ``None`` when it answered within ``timeout``.

    :returns: why not, otherwise.
    """
    try:
        client = parse(url).client(
            socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
    except redis.RedisError as exc:  # (a cluster's client connects when made)
        return f"{exc.__class__.__name__}: {exc}"
    try:
        with client:
            client.ping()
    except (redis.RedisError, RedisClusterException, OSError) as exc:
        return f"{exc.__class__.__name__}: {exc}"
    return None


def check(state: TurboState) -> Health:
    """Check this process: Redis, the relay (started if need be), the heartbeat.

    Takes at most about twice ``TURBO_HEALTH_TIMEOUT``: the ``PING``, then, only when
    Redis answered and the relay is not connected, the wait for it to connect.

    :param state: the app's turbocast state.
    """
    timeout = float(state.config["TURBO_HEALTH_TIMEOUT"])
    redis_error = ping(state.redis_url, timeout)
    try:
        relay = state.relay()
    except Exception as exc:  # noqa: BLE001 - a report, not a crash
        logger.warning("health: the relay could not start", exc_info=True)
        report = assess(redis_error, None, f"{exc.__class__.__name__}: {exc}")
    else:
        if redis_error is None and not relay.connected.is_set():
            # A relay started just now, or one reconnecting: give it a moment.
            relay.connected.wait(timeout)
        report = assess(redis_error, relay.state())
    if not report.ok:
        failed = {n: c.reason for n, c in report.checks.items() if not c.ok}
        logger.warning("health check failed: %s", failed, extra={"turbo_health": failed})
    return report


def health_view() -> tuple[Response, int]:
    """A Flask view: 200 with the report as JSON when healthy, 503 when not (never cached).

    ``TURBO_HEALTH_ROUTE = "/healthz"`` mounts it; or route it yourself::

        app.add_url_rule("/healthz", view_func=turbocast.health_view)
    """
    from .extension import _state

    started = time.monotonic()
    report = check(_state())
    body = report.to_dict()
    body["seconds"] = round(time.monotonic() - started, 3)
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response, 200 if report.ok else 503
