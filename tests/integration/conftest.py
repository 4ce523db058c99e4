"""Integration fixtures: a real gunicorn web server against the test Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import WebServer


@pytest.fixture(scope="module", params=["gthread", "gevent"])
def web(request: pytest.FixtureRequest, redis_url: str, log_dir: Path) -> Iterator[WebServer]:
    """gunicorn serving the app in each serving mode, with small limits that tests can reach."""
    server = WebServer(
        redis_url,
        env={"TURBO_OUTBOX_BYTES": "16384", "TURBO_SEND_TIMEOUT": "60", "TURBO_PING_INTERVAL": "5"},
        worker_class=request.param,
    ).start(log_dir)
    yield server
    server.stop()
