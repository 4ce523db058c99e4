"""exclude=: every socket of one session is left out, live, in a replay, and from a worker.

Real gunicorn, Redis, Celery worker and ``turbocast.v1`` WebSocket clients. Session
A has two tabs on a board; sessions B and C one each. A push to the board that
excludes A reaches B and C once, and neither of A's tabs, whichever way it comes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from markupsafe import Markup

from app import create_app
from tests.support import (
    SECRET_KEY,
    CeleryProcess,
    ResumingClient,
    WebServer,
    numsub,
    open_session,
    page_stream_url,
    session_id_of,
    wait_for,
)
from turbocast import Publisher, TurboStream, stream_channel

BOARD = 5


@pytest.fixture(scope="module")
def stack(redis_url: str, log_dir: Path) -> Iterator[WebServer]:
    """gunicorn and a Celery worker (no beat: no clock ticks among the messages)."""
    web = WebServer(redis_url).start(log_dir)
    worker = CeleryProcess(redis_url, "worker")
    try:
        worker.start(log_dir)
        yield web
    finally:
        worker.stop()
        web.stop()


class Page:
    """One session's board page: its stream URL as rendered (positions before any push)."""

    def __init__(self, web: WebServer) -> None:
        self.cookie = open_session(web.base_url)
        self.sid = session_id_of(self.cookie)
        self.url = page_stream_url(web.base_url, f"/boards/{BOARD}", self.cookie)

    def tab(self) -> ResumingClient:
        return ResumingClient(self.url, self.cookie).connect()


@pytest.fixture
def pages(stack: WebServer, redis_client) -> Iterator[dict[str, list[ResumingClient]]]:
    a, b, c = Page(stack), Page(stack), Page(stack)
    tabs = {"a": [a.tab(), a.tab()], "b": [b.tab()], "c": [c.tab()]}
    wait_for(lambda: numsub(redis_client, stream_channel(f"board:{BOARD}")) >= 1)
    # The relay confirms every socket's channels before its 101: all four listen now.
    tabs_pages = {"a": a, "b": b, "c": c}
    yield {**tabs, "pages": tabs_pages}  # type: ignore[dict-item]
    for client in tabs["a"] + tabs["b"] + tabs["c"]:
        client.close()


def _stream(text: str) -> TurboStream:
    return TurboStream.append("board-messages", Markup("<p>{}</p>").format(text))


def _htmls_until_marker(client: ResumingClient) -> list[str]:
    """What a tab gets up to and including the marker (no push may come twice before it)."""
    htmls = []
    while True:
        _, _, _, html = client.next(timeout=15)
        htmls.append(html)
        if "marker" in html:
            return htmls


def test_a_stream_push_excluding_a_session_skips_both_its_tabs_and_reaches_the_others_once(
    pages, redis_url
):
    a = pages["pages"]["a"]
    publisher = Publisher(redis_url)
    try:
        publisher.to_stream(f"board:{BOARD}", _stream("not for A"), exclude=a.sid)
        publisher.to_stream(f"board:{BOARD}", _stream("marker"))
    finally:
        publisher.close()

    for tab in pages["a"]:
        assert _htmls_until_marker(tab) == [str(_stream("marker"))]
    for tab in pages["b"] + pages["c"]:
        assert _htmls_until_marker(tab) == [str(_stream("not for A")), str(_stream("marker"))]

    # The same through the history: pages rendered before the pushes, connecting now.
    for name, expected in [
        ("a", [str(_stream("marker"))]),
        ("b", [str(_stream("not for A")), str(_stream("marker"))]),
    ]:
        replayed = ResumingClient(pages["pages"][name].url, pages["pages"][name].cookie)
        replayed.connect()
        try:
            assert _htmls_until_marker(replayed) == expected
        finally:
            replayed.close()


def test_a_later_push_excluding_a_session_is_rendered_by_the_worker_and_skips_it(pages, redis_url):
    a = pages["pages"]["a"]
    app = create_app({"REDIS_URL": redis_url, "SECRET_KEY": SECRET_KEY})
    turbo = app.extensions["turbo"].turbo
    try:
        with app.app_context():
            publisher = turbo.publisher
        with app.test_request_context("/"):
            turbo.to_stream_later(f"board:{BOARD}", "append", "board-messages",
                                  template="demo/_notification.html", text="later, not for A",
                                  sent_at="now", exclude=a.sid)  # fmt: skip
        for tab in pages["b"] + pages["c"]:
            _, _, _, html = tab.next(timeout=30)
            assert '<li class="notification">later, not for A <time>now</time></li>' in html
        # Published after the worker's push (B and C have it): A's tabs get this first.
        publisher.to_stream(f"board:{BOARD}", _stream("marker"))
        for tab in pages["a"]:
            assert _htmls_until_marker(tab) == [str(_stream("marker"))]
        for tab in pages["b"] + pages["c"]:
            assert _htmls_until_marker(tab) == [str(_stream("marker"))]
    finally:
        app.extensions["celery"].close()
