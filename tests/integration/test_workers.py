"""Celery workers and beat push through turbocast: real worker, beat, gunicorn and Redis."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import celery._state
import pytest
import redis
import simple_websocket
from celery import Celery
from flask import Flask

from app import create_app
from tests.support import (
    SECRET_KEY,
    WebServer,
    connect,
    demo_stack,
    login,
    numsub,
    open_session,
    page_stream_url,
    post,
    session_id_of,
    wait_for,
)
from turbocast import (
    CeleryNotConfiguredError,
    Turbo,
    broadcast_channel,
    channel_for,
    stream_channel,
    user_channel,
)

ENV = {"DEMO_CLOCK_SECONDS": "0.5", "DEMO_JOB_STEPS": "5", "DEMO_JOB_STEP_SECONDS": "0.05"}


@pytest.fixture(scope="module")
def stack(redis_url: str, log_dir: Path) -> Iterator[WebServer]:
    """gunicorn, a Celery worker and Celery beat, all on the test Redis."""
    with demo_stack(redis_url, log_dir, ENV) as web:
        yield web


class Browser:
    """A session with its socket open; it sorts what arrives by target."""

    def __init__(
        self, web: WebServer, redis_client, cookie: str | None = None, url: str | None = None
    ) -> None:
        """A new session (or ``cookie``'s) with its socket open on ``url`` (or the plain one)."""
        self.cookie = cookie or open_session(web.base_url)
        self.sid = session_id_of(self.cookie)
        self.ws = connect(url or web.ws_url, self.cookie)
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


# -- the *_later calls, on the app's own Celery app -----------------------------------------


def test_every_later_audience_reaches_its_socket_through_a_real_worker(
    stack, redis_url, redis_client
):
    """A Flask app like the web one enqueues; the real worker renders and publishes."""
    plain = Browser(stack, redis_client)
    user_cookie = login(stack.base_url, open_session(stack.base_url), "later-ann")
    user = Browser(stack, redis_client, cookie=user_cookie)
    board_cookie = open_session(stack.base_url)
    board_url = page_stream_url(stack.base_url, "/boards/7", board_cookie)
    board = Browser(stack, redis_client, cookie=board_cookie, url=board_url)
    wait_for(lambda: numsub(redis_client, user_channel("later-ann")) >= 1)
    wait_for(lambda: numsub(redis_client, stream_channel("board:7")) >= 1)
    app = create_app({"REDIS_URL": redis_url, "SECRET_KEY": SECRET_KEY})
    turbo = app.extensions["turbo"].turbo
    notification = {"template": "demo/_notification.html", "sent_at": "now"}
    try:
        with app.test_request_context("/"):
            turbo.to_session_later(plain.sid, "append", "notifications", text="to-session",
                                   **notification)  # fmt: skip
            turbo.to_user_later("later-ann", "append", "notifications", text="to-user",
                                **notification)  # fmt: skip
            turbo.to_stream_later("board:7", "append", "board-messages", text="to-stream",
                                  **notification)  # fmt: skip
        # Each socket's first message (clocks aside) is its own: no audience leaked.
        for browser, text, target in [
            (plain, "to-session", "notifications"),
            (user, "to-user", "notifications"),
            (board, "to-stream", "board-messages"),
        ]:
            message = browser.next_not_clock()
            assert message.startswith(f'<turbo-stream action="append" target="{target}">')
            assert f'<li class="notification">{text} <time>now</time></li>' in message

        with app.test_request_context("/"):
            turbo.to_all_later("append", "notifications", text="to-all", **notification)
        for browser in (plain, user, board):
            assert '<li class="notification">to-all <time>' in browser.next_not_clock()
    finally:
        for browser in (plain, user, board):
            browser.close()
        app.extensions["celery"].close()


def _other_db(redis_url: str, db: int) -> str:
    parts = urlsplit(redis_url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def test_without_a_celery_app_later_raises_and_nothing_reaches_any_broker(redis_url, monkeypatch):
    """No ``celery=`` and no ``app.extensions["celery"]``: the call raises; Celery's default
    app, here a trap on a Redis database of its own, is never used."""
    trap_url = _other_db(redis_url, 11)
    trap_redis = redis.Redis.from_url(trap_url)
    trap_redis.flushdb()
    trap = Celery("trap", broker=trap_url, set_as_current=False)
    trap.conf.broker_connection_retry_on_startup = False
    monkeypatch.setattr(celery._state, "default_app", trap)
    monkeypatch.setattr(celery._state._tls, "current_app", trap)

    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET_KEY, REDIS_URL=redis_url)
    turbo = Turbo(app)
    kwargs = {"template": "t.html", "text": "lost"}
    try:
        with app.test_request_context("/"):
            for call in (
                lambda: turbo.to_session_later("A" * 32, "append", "x", **kwargs),
                lambda: turbo.to_user_later("ann", "append", "x", **kwargs),
                lambda: turbo.to_stream_later("board:1", "append", "x", **kwargs),
                lambda: turbo.to_all_later("append", "x", **kwargs),
            ):
                with pytest.raises(CeleryNotConfiguredError, match="celery="):
                    call()
        assert trap_redis.dbsize() == 0, trap_redis.keys()

        # The check can see a message: once the app names the trap, the same call lands.
        app.extensions["celery"] = trap
        with app.test_request_context("/"):
            turbo.to_all_later("append", "x", **kwargs)
        assert trap_redis.llen("celery") == 1
    finally:
        trap_redis.flushdb()
        trap_redis.close()
        trap.close()
