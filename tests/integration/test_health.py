"""The health check against a real gunicorn and a Redis of the test's own, stopped and started.

Redis stopped: the check fails (503) within its documented time. Started again: it
passes within its documented time, and not before the relay has resubscribed (a check
that only PINGed Redis would pass while the relay is still backing off).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from app.embedded_redis import EmbeddedRedis
from tests.support import WebServer, http_connection, wait_for

#: The server's settings: every Redis call, and the health check's PING, may take 1 s.
REDIS_TIMEOUT = 1.0
HEALTH_TIMEOUT = 1.0
#: README "Health checks": a check answers within twice TURBO_HEALTH_TIMEOUT, and the first
#: check that starts after Redis stops fails. (+1 s for a busy machine.)
FAIL_BOUND = 2 * HEALTH_TIMEOUT + 1.0


def pass_bound(outage: float) -> float:
    """README: after an outage of ``outage`` seconds the relay retries within
    min(60, 2 x outage + 1) s, reconnects within 2 x TURBO_REDIS_TIMEOUT, and the next
    check (at most 2 x TURBO_HEALTH_TIMEOUT) passes. (+1 s for a busy machine.)"""
    return min(60.0, 2 * outage + 1) + 2 * REDIS_TIMEOUT + 2 * HEALTH_TIMEOUT + 1.0


def health(web: WebServer) -> tuple[int, dict[str, Any]]:
    conn = http_connection(web.base_url, timeout=2 * HEALTH_TIMEOUT + 3)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_the_check_fails_while_redis_is_stopped_and_passes_once_the_relay_is_back(
    log_dir, worker_class
):
    server = EmbeddedRedis().start()
    env = {
        "TURBO_REDIS_TIMEOUT": str(REDIS_TIMEOUT),
        "TURBO_HEALTH_TIMEOUT": str(HEALTH_TIMEOUT),
        "TURBO_REDIS_HEALTH_CHECK_INTERVAL": "1",
        "TURBO_PING_INTERVAL": "1",
    }
    web = WebServer(server.url, env=env, worker_class=worker_class).start(log_dir)
    try:
        # No socket came: the check itself starts the relay, and waits for it to subscribe.
        status, report = health(web)
        assert (status, report["ok"]) == (200, True), report
        assert report["checks"]["relay"]["running"] and report["checks"]["heartbeat"]["alive"]

        server.stop()
        stopped = time.monotonic()
        mark = len(web.log())
        status, report = wait_for(
            lambda: (r := health(web))[0] == 503 and r,
            timeout=FAIL_BOUND,
            what=f"the check to fail within {FAIL_BOUND}s of Redis stopping",
        )
        assert not report["checks"]["redis"]["ok"], report

        # Keep Redis down until the relay's backoff has grown to 4 s: it then retries 2 to 4 s
        # later, while Redis answers PING at once.
        wait_for(
            lambda: "reconnecting in up to 4s" in web.log()[mark:],
            timeout=20,
            what="the relay to back off for 4 s",
        )
        server.start()  # the same port, empty
        outage = time.monotonic() - stopped
        mark = len(web.log())
        bound = pass_bound(outage)
        status, report = wait_for(
            lambda: (r := health(web))[0] == 200 and r,
            timeout=bound,
            interval=0.1,
            what=f"the check to pass within {bound:.1f}s of Redis starting again",
        )
        assert report["ok"] and report["checks"]["relay"]["connected"], report
        assert re.search(r"relay subscribed to Redis", web.log()[mark:]), (
            "the check passed before the relay had resubscribed: it ignores the relay"
        )
    finally:
        web.stop()
        server.close()
