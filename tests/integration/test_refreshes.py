"""Debounced refreshes end to end: real Redis, gunicorn, Celery worker, script processes, sockets.

Every wait is on a condition with a deadline. "Exactly one refresh" is checked with a
sentinel: once every asker is done and the window's key is gone, a sentinel is
published, and it must be the next message after the one refresh.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support import (
    ROOT,
    SECRET_KEY,
    CeleryProcess,
    ResumingClient,
    WebServer,
    http_connection,
    numsub,
    open_session,
    page_stream_url,
    wait_for,
)
from turbocast import DEFAULTS, MIME_TYPE, Publisher, TurboStream, stream_channel
from turbocast.channels import refresh_key
from turbocast.refreshes import REQUEST_ID_HEADER, RefreshWindows

WINDOW = 0.5  # TURBO_REFRESH_DEBOUNCE's default, which every process here runs with

# A process with a Flask app of its own and no Celery app: the opener's timer sends.
TIMER_ASKER = textwrap.dedent(
    """
    import sys, time
    from flask import Flask
    from turbocast import Turbo
    import turbocast.refreshes  # imported now (it imports Celery), not in the timed calls

    app = Flask("asker")
    app.config.update(REDIS_URL=sys.argv[1], SECRET_KEY="x")
    turbo = Turbo(app)
    with app.app_context():
        turbo.publisher.client.ping()
        print("ready", flush=True)
        sys.stdin.readline()
        started = time.time()
        for _ in range(int(sys.argv[3])):
            turbo.refresh_stream(sys.argv[2])
        print(started, time.time(), flush=True)
    """
)

# The demo's app (Celery configured): asks once, then dies at once, as a killed process.
DYING_ASKER = textwrap.dedent(
    """
    import os, sys
    from app import create_app
    from app.extensions import turbo

    with create_app().app_context():
        turbo.refresh_stream(sys.argv[1])
    os._exit(0)
    """
)


@pytest.fixture(scope="module")
def worker(redis_url: str, log_dir: Path) -> Iterator[CeleryProcess]:
    process = CeleryProcess(redis_url, "worker").start(log_dir)
    yield process
    process.stop()


def listen_to_board(web: WebServer, redis_client: redis.Redis) -> tuple[ResumingClient, str]:
    """A page of a fresh board with its socket open and subscribed; returns it and the name."""
    board = random.randrange(10**6, 10**9)
    name = f"board:{board}"
    cookie = open_session(web.base_url)
    client = ResumingClient(page_stream_url(web.base_url, f"/boards/{board}", cookie), cookie)
    client.connect()
    wait_for(lambda: numsub(redis_client, stream_channel(name)) >= 1, what="the subscription")
    return client, name


def next_on(client: ResumingClient, name: str, timeout: float = 10.0) -> str:
    """The HTML of the next message on the stream ``name`` (nothing else arrives here)."""
    _, label, _, html = client.next(timeout)
    assert label == f"t:{name}", (label, html)
    return html


def refresh_request_id(html: str) -> str | None:
    """The request id of a refresh (``None``: it carries none); fails on anything else."""
    assert re.fullmatch(
        r'<turbo-stream action="refresh"( request-id="[^"]+")?></turbo-stream>', html
    ), html
    found = re.search(r'request-id="([^"]+)"', html)
    return found.group(1) if found else None


def assert_sentinel_is_next(
    client: ResumingClient, name: str, publisher: Publisher, redis_client: redis.Redis
) -> None:
    """With the window closed, a sentinel is the next message: no second refresh came."""
    wait_for(lambda: not redis_client.exists(refresh_key(name)), what="the window to close")
    publisher.to_stream(name, TurboStream.update("sentinel", "after the window"))
    assert 'target="sentinel"' in next_on(client, name)


def ask_in_a_request(web: WebServer, board: str, request_id: str | None) -> None:
    """POST the demo's refresh view as Turbo would, with its X-Turbo-Request-Id."""
    headers = {"Accept": MIME_TYPE}
    if request_id is not None:
        headers[REQUEST_ID_HEADER] = request_id
    conn = http_connection(web.base_url)
    try:
        conn.request("POST", f"/boards/{board.split(':')[1]}/refresh", headers=headers)
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.status == 200


# -- across processes -------------------------------------------------------------------


def test_twenty_refreshes_from_two_processes_within_100_ms_make_one(
    web, redis_client, redis_url, publisher
):
    client, name = listen_to_board(web, redis_client)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-c", TIMER_ASKER, redis_url, name, "10"]
    with contextlib.ExitStack() as stack:
        askers = [
            stack.enter_context(
                subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )  # fmt: skip
            )
            for _ in range(2)
        ]
        for asker in askers:
            stack.callback(asker.kill)  # after a failure; exiting the Popen then reaps it
        for asker in askers:
            assert asker.stdout is not None and asker.stdout.readline().strip() == "ready"
        for asker in askers:
            assert asker.stdin is not None
            asker.stdin.write("go\n")
            asker.stdin.flush()
        spans = [tuple(map(float, a.stdout.readline().split())) for a in askers]  # type: ignore[union-attr]
        # A process exits only after its timer (not a daemon thread) has sent, if it had one.
        assert [asker.wait(timeout=10) for asker in askers] == [0, 0]
    first, last = min(s[0] for s in spans), max(s[1] for s in spans)
    # The premise of one refresh is one window (0.5 s); here they take some 10-30 ms.
    # Not a speed check: a slower machine only narrows the margin.
    assert last - first < DEFAULTS["TURBO_REFRESH_DEBOUNCE"], f"the calls took {last - first:.3f}s"

    assert refresh_request_id(next_on(client, name)) is None  # no request: no request id
    assert_sentinel_is_next(client, name, publisher, redis_client)
    client.close()


# -- from a view, sent by the Celery worker ---------------------------------------------


def test_the_refresh_carries_the_request_id_of_the_request_that_asked(
    web, worker, redis_client, publisher
):
    client, name = listen_to_board(web, redis_client)
    request_id = str(uuid.uuid4())  # what Turbo 8 sends
    for _ in range(3):
        ask_in_a_request(web, name, request_id)

    assert refresh_request_id(next_on(client, name)) == request_id
    assert_sentinel_is_next(client, name, publisher, redis_client)
    client.close()


def test_refreshes_asked_by_different_requests_merge_into_one_without_a_request_id(
    web, worker, redis_client, publisher
):
    client, name = listen_to_board(web, redis_client)
    ask_in_a_request(web, name, str(uuid.uuid4()))
    ask_in_a_request(web, name, str(uuid.uuid4()))

    # Every tab refreshes, the two that asked too: no change goes unseen.
    assert refresh_request_id(next_on(client, name)) is None
    assert_sentinel_is_next(client, name, publisher, redis_client)
    client.close()


def test_a_refresh_asked_by_a_process_that_dies_at_once_is_sent_by_the_worker(
    web, worker, redis_client, redis_url, publisher
):
    client, name = listen_to_board(web, redis_client)
    env = {**os.environ, "REDIS_URL": redis_url, "SECRET_KEY": SECRET_KEY}
    asker = subprocess.run(
        [sys.executable, "-c", DYING_ASKER, name], cwd=ROOT, env=env, timeout=60,
        capture_output=True, text=True,
    )  # fmt: skip
    assert asker.returncode == 0, asker.stderr
    asked_at = time.monotonic()

    assert refresh_request_id(next_on(client, name)) is None
    assert time.monotonic() - asked_at < WINDOW + 5
    assert_sentinel_is_next(client, name, publisher, redis_client)
    client.close()


# -- the windows in Redis ---------------------------------------------------------------


@pytest.fixture
def windows(redis_client: redis.Redis) -> RefreshWindows:
    return RefreshWindows(redis_client, f"t{uuid.uuid4().hex[:8]}")


def test_the_first_call_opens_the_window_and_later_ones_are_taken_in(windows):
    assert windows.open("b", "r-1", "token-1", 5) is True
    assert windows.open("b", "r-1", "token-2", 5) is False
    assert windows.open("other", None, "token-3", 5) is True
    assert windows.close("b", "token-1") == (True, "r-1")
    # Closed: the next call opens the next window.
    assert windows.open("b", "r-1", "token-4", 5) is True


@pytest.mark.parametrize(
    ("request_ids", "carried"),
    [
        (["r-1", "r-1", "r-1"], "r-1"),
        (["r-1", "r-2"], None),
        (["r-1", "r-2", "r-1"], None),
        (["r-1", None], None),
        ([None, "r-1"], None),
        ([None, None], None),
    ],
)
def test_the_window_keeps_the_request_id_only_while_every_call_agrees(
    windows, request_ids, carried
):
    for n, request_id in enumerate(request_ids):
        windows.open("b", request_id, f"token-{n}", 5)
    assert windows.close("b", "token-0") == (True, carried)


def test_only_the_opener_closes_the_window(windows, redis_client):
    windows.open("b", "r-1", "token-1", 5)
    assert windows.close("b", "token-2") == (False, None)
    assert redis_client.exists(refresh_key("b", windows.prefix))
    assert windows.close("b", "token-1") == (True, "r-1")
    assert not redis_client.exists(refresh_key("b", windows.prefix))


def test_an_expired_window_still_sends_without_a_request_id(windows, redis_client):
    windows.open("b", "r-1", "token-1", 0.2)
    ttl = redis_client.pttl(refresh_key("b", windows.prefix))
    assert 0 < ttl <= 200
    wait_for(lambda: not redis_client.exists(refresh_key("b", windows.prefix)), what="expiry")
    assert windows.close("b", "token-1") == (True, None)
