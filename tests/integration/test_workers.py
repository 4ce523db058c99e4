"""Celery workers and beat push through turbocast: real worker, beat, gunicorn and Redis."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import simple_websocket

from tests.support import (
    WebServer,
    connect,
    demo_stack,
    numsub,
    open_session,
    post,
    session_id_of,
    wait_for,
)
from turbocast import broadcast_channel, channel_for

ENV = {"DEMO_CLOCK_SECONDS": "0.5", "DEMO_JOB_STEPS": "5", "DEMO_JOB_STEP_SECONDS": "0.05"}


@pytest.fixture(scope="module")
def stack(redis_url: str, log_dir: Path) -> Iterator[WebServer]:
    """gunicorn, a Celery worker and Celery beat, all on the test Redis."""
    with demo_stack(redis_url, log_dir, ENV) as web:
        yield web


class Browser:
    """A session with its socket open; it sorts what arrives by target."""

    def __init__(self, web: WebServer, redis_client) -> None:
        self.cookie = open_session(web.base_url)
        self.sid = session_id_of(self.cookie)
        self.ws = connect(web.ws_url, self.cookie)
        wait_for(lambda: numsub(redis_client, channel_for(self.sid)) >= 1)

    def next_not_clock(self, timeout: float = 15.0) -> str:
        """The next message that is not the periodic clock broadcast."""

        def pick() -> str | None:
            message = self.ws.receive(timeout=0.2)
            return message if message and 'target="clock"' not in message else None

        return wait_for(pick, timeout=timeout, interval=0, what="a non-clock message")

    def next_clock(self, timeout: float = 15.0) -> str:
        def pick() -> str | None:
            message = self.ws.receive(timeout=0.2)
            return message if message and 'target="clock"' in message else None

        return wait_for(pick, timeout=timeout, interval=0, what="a clock broadcast")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def browsers(stack: WebServer, redis_client) -> Iterator[tuple[Browser, Browser]]:
    a, b = Browser(stack, redis_client), Browser(stack, redis_client)
    yield a, b
    a.close()
    b.close()


def test_a_view_enqueues_a_task_whose_stream_reaches_only_that_session(stack, browsers):
    a, b = browsers
    response = post(stack.base_url, "/notify", a.cookie, {"text": "for-A"})
    assert 'action="update" target="notify-status"' in response

    message = a.next_not_clock()
    assert message.startswith('<turbo-stream action="prepend" target="notifications">')
    assert '<li class="notification">for-A <time>' in message  # rendered from the template

    # B's first message (clocks aside) is its own notification: A's never reached it.
    post(stack.base_url, "/notify", b.cookie, {"text": "for-B"})
    assert "for-B" in b.next_not_clock()


def test_beat_broadcast_reaches_sockets_of_two_sessions(stack, browsers, redis_client):
    a, b = browsers
    wait_for(lambda: numsub(redis_client, broadcast_channel()) >= 1)
    for browser in (a, b):
        clock = browser.next_clock()
        assert re.fullmatch(
            r'<turbo-stream action="update" target="clock"><template><time>\d\d:\d\d:\d\d</time>\n?'
            r"</template></turbo-stream>",
            clock,
        ), clock


def test_progress_job_pushes_every_step_in_order_then_the_result(stack, browsers):
    a, _ = browsers
    response = post(stack.base_url, "/jobs", a.cookie)
    job_id = re.search(r'id="job-([0-9a-f]+)"', response).group(1)
    assert 'data-done="0" data-steps="5"' in response

    seen = []
    while True:
        message = a.next_not_clock()
        assert f'target="job-{job_id}"' in message
        done = int(re.search(r'data-done="(\d+)"', message).group(1))
        seen.append(done)
        if "sum of squares" in message:
            assert "sum of squares 1..5 = 55" in message
            break
    assert seen == [1, 2, 3, 4, 5, 5]


def test_a_closed_socket_gets_nothing_and_breaks_nothing(stack, redis_client):
    browser = Browser(stack, redis_client)
    browser.close()
    wait_for(lambda: numsub(redis_client, channel_for(browser.sid)) == 0, what="unsubscribe")
    post(stack.base_url, "/notify", browser.cookie, {"text": "nobody home"})
    other = Browser(stack, redis_client)
    try:
        post(stack.base_url, "/notify", other.cookie, {"text": "still served"})
        assert "still served" in other.next_not_clock()
    finally:
        other.close()
    with pytest.raises(simple_websocket.ConnectionClosed):
        browser.ws.send("x")
