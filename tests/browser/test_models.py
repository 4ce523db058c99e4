"""Model broadcasts in Chromium, on PostgreSQL and on SQLite: the demo's posts and boards.

The test process changes the demo's models through the demo's own app (its Flask-SQLAlchemy
session, its Celery app); a real Celery worker renders each change and Redis carries it to
real gunicorn and a real Chromium page on the board's stream. "Nothing else was sent" is
checked with a marker: a later change through the same path, and the worker's count of
model broadcast tasks it received (tasks arrive in the order they were enqueued).
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from playwright.sync_api import Browser, BrowserContext

from app import create_app
from app.demo import services
from app.demo.models import Board, Post
from app.extensions import db
from tests.browser.conftest import ENV
from tests.browser.test_demo import Tab
from tests.support import SECRET_KEY, CeleryProcess, WebServer
from turbocast import DEFAULTS, suppressing_broadcasts
from turbocast.channels import refresh_key

BOARDS = itertools.count(100)


@dataclass
class Stack:
    web: WebServer
    worker: CeleryProcess

    def broadcasts_received(self) -> int:
        """How many model broadcast tasks the worker has received so far."""
        return len(
            re.findall(r"Task turbocast\.broadcast_model\[[^\]]+\] received", self.worker.log())
        )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite')}/models.sqlite"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="module")
def stack(database_url: str, redis_url: str, log_dir: Path) -> Iterator[Stack]:
    """The demo on ``database_url``: gunicorn, a Celery worker, and beat (the pages' clock)."""
    env = {**ENV, "DATABASE_URL": database_url}
    web = WebServer(redis_url, env=env).start(log_dir)
    worker = CeleryProcess(redis_url, "worker", env=env)
    beat = CeleryProcess(redis_url, "beat", env=env)
    try:
        worker.start(log_dir)
        beat.start(log_dir)
        yield Stack(web, worker)
    finally:
        beat.stop()
        worker.stop()
        web.stop()


@pytest.fixture(scope="module")
def app(database_url: str, redis_url: str) -> Iterator[Flask]:
    """The demo's app in the test process, on the stack's database, Redis and broker."""
    app = create_app(
        {"TESTING": True, "SECRET_KEY": SECRET_KEY, "REDIS_URL": redis_url,
         "DATABASE_URL": database_url}
    )  # fmt: skip
    yield app
    with app.app_context():
        db.engine.dispose()


def _board_tab(context: BrowserContext, stack: Stack, board_id: int) -> Tab:
    tab = Tab(context, stack.web.base_url).open(f"/boards/{board_id}")
    tab.connected()
    return tab


def _post(app: Flask, board_id: int, text: str) -> int:
    """Commit a post through the demo's session (its broadcast goes to the worker)."""
    with app.app_context():
        post = Post(board=services.board_for_change(board_id), text=text, author="test")
        db.session.add(post)
        db.session.commit()
        return post.id


def _texts(tab: Tab) -> list[str]:
    return [
        t.split(": ", 1)[1].split(" ")[0] for t in tab.page.locator("#posts li").all_inner_texts()
    ]


def test_a_created_updated_and_deleted_post_reaches_the_board_page(context, stack, app):
    board_id = next(BOARDS)
    tab = _board_tab(context, stack, board_id)

    post_id = _post(app, board_id, "first")
    tab.page.wait_for_selector(f"#posts > #post_{post_id}:has-text('first')")
    with app.app_context():
        db.session.get_one(Post, post_id).text = "edited"
        db.session.commit()
    tab.page.wait_for_selector(f"#post_{post_id}:has-text('edited')")
    assert _texts(tab) == ["edited"]
    with app.app_context():
        db.session.delete(db.session.get_one(Post, post_id))
        db.session.commit()
    tab.page.wait_for_selector(f"#post_{post_id}", state="detached")
    assert _texts(tab) == []


def test_a_rolled_back_transaction_or_savepoint_reaches_nobody(context, stack, app):
    board_id = next(BOARDS)
    tab = _board_tab(context, stack, board_id)
    before = stack.broadcasts_received()

    with app.app_context():
        services.board_for_change(board_id)  # a write first: SQLite's savepoint then nests
        db.session.add(Post(board_id=board_id, text="rolled-back", author="test"))
        db.session.flush()
        db.session.rollback()
        services.board_for_change(board_id)
        savepoint = db.session.begin_nested()
        db.session.add(Post(board_id=board_id, text="savepoint", author="test"))
        db.session.flush()
        savepoint.rollback()
        kept = Post(board_id=board_id, text="kept", author="test")
        db.session.add(kept)
        db.session.commit()
        kept_id = kept.id

    tab.page.wait_for_selector(f"#post_{kept_id}")
    assert _texts(tab) == ["kept"]
    assert stack.broadcasts_received() == before + 1


def test_a_post_flushed_three_times_in_one_transaction_is_broadcast_once(context, stack, app):
    board_id = next(BOARDS)
    tab = _board_tab(context, stack, board_id)
    before = stack.broadcasts_received()

    with app.app_context():
        post = Post(board=services.board_for_change(board_id), text="one", author="test")
        db.session.add(post)
        db.session.flush()
        post.text = "two"
        db.session.flush()
        post.text = "three"
        db.session.flush()
        db.session.commit()
        post_id = post.id
    marker_id = _post(app, board_id, "marker")

    # The worker runs two tasks at once: the two posts may arrive in either order.
    tab.page.wait_for_selector(f"#post_{marker_id}")
    tab.page.wait_for_selector(f"#post_{post_id}:has-text('three')")
    assert tab.page.locator(f"#post_{post_id}").count() == 1
    assert sorted(_texts(tab)) == ["marker", "three"]
    assert stack.broadcasts_received() == before + 2


def test_changes_inside_suppressing_broadcasts_are_not_sent(context, stack, app):
    board_id = next(BOARDS)
    tab = _board_tab(context, stack, board_id)
    before = stack.broadcasts_received()

    with suppressing_broadcasts():
        quiet_id = _post(app, board_id, "quiet")
    marker_id = _post(app, board_id, "marker")

    tab.page.wait_for_selector(f"#post_{marker_id}")
    assert _texts(tab) == ["marker"]
    assert stack.broadcasts_received() == before + 1
    tab.page.reload()  # it was saved all the same
    tab.page.wait_for_selector(f"#post_{quiet_id}")


class Watched:
    """A board tab that counts its refreshes: Turbo's morphs and renders, its GETs of the
    page, and the refresh streams its socket received."""

    def __init__(self, browser: Browser, stack: Stack, board_id: int) -> None:
        self.context = browser.new_context(viewport={"width": 900, "height": 400})
        self.context.set_default_timeout(15_000)
        self.tab = Tab(self.context, stack.web.base_url)
        self.path = f"/boards/{board_id}"
        self.gets: list[str] = []
        self.refresh_frames: list[str] = []
        page = self.tab.page
        page.on("request", self._request)
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))
        self.tab.open(self.path)
        self.tab.connected()
        page.evaluate(
            """() => {
                window.morphs = 0; window.renders = 0;
                addEventListener("turbo:morph", () => window.morphs++);
                addEventListener("turbo:render", () => window.renders++);
            }"""
        )

    def _request(self, request: Any) -> None:
        if request.method == "GET" and request.url.endswith(self.path):
            self.gets.append(request.url)

    def _frame(self, payload: Any) -> None:
        if isinstance(payload, str) and 'action="refresh"' in payload:
            self.refresh_frames.append(payload)

    def counts(self) -> tuple[int, int]:
        """How many morphs and renders Turbo did since the counters were set."""
        morphs, renders = self.tab.page.evaluate("[window.morphs, window.renders]")
        return morphs, renders

    def close(self) -> None:
        self.context.close()


def _window_closed(redis_client: redis.Redis, board_id: int) -> bool:
    return not redis_client.exists(refresh_key(f"board:{board_id}"))


def test_a_rename_in_one_tab_morphs_the_other_and_a_burst_refreshes_it_once(
    browser, stack, app, redis_client
):
    board_id = next(BOARDS)
    with app.app_context(), suppressing_broadcasts():
        services.board_for_change(board_id)
        db.session.add_all(Post(board_id=board_id, text=f"seed{i}", author="t") for i in range(40))
        db.session.commit()
    tab_a, tab_b = Watched(browser, stack, board_id), Watched(browser, stack, board_id)
    try:
        page_a, page_b = tab_a.tab.page, tab_b.tab.page
        page_b.fill("#board-text", "half typed")  # never submitted
        page_b.evaluate("window.scrollTo(0, 600)")  # after the fill, which scrolls to the input
        tab_b.tab.wait_for(lambda: page_b.evaluate("window.scrollY") == 600, what="the scroll")
        gets_a = len(tab_a.gets)

        page_a.fill("#board-name-input", "Renamed")
        page_a.click("#rename")

        page_a.wait_for_selector("#board-name:text-is('Renamed')")  # its own stream response
        page_b.wait_for_selector("#board-name:text-is('Renamed')")  # the refresh's morph
        assert tab_b.counts()[0] == 1
        assert page_b.evaluate("window.scrollY") == 600
        assert page_b.input_value("#board-text") == "half typed"
        # Tab A got the refresh too, with its own request's id, and skipped it: after a
        # later push that it applied, it has neither fetched the page again nor rendered.
        tab_a.tab.wait_for(lambda: tab_a.refresh_frames, what="the refresh in tab A")
        assert 'request-id="' in tab_a.refresh_frames[0]
        marker_id = _post(app, board_id, "marker")
        page_a.wait_for_selector(f"#post_{marker_id}")
        assert tab_a.counts() == (0, 0)
        assert len(tab_a.gets) == gets_a

        # Twenty changes within 100 ms: one refresh, once the window closes.
        page_b.wait_for_selector(f"#post_{marker_id}")
        page_b.evaluate("window.morphs = 0")
        frames_b = len(tab_b.refresh_frames)
        with app.app_context():
            board = db.session.get_one(Board, board_id)
            started = time.monotonic()
            for i in range(20):
                board.name = f"Burst {i}"
                db.session.commit()
            took = time.monotonic() - started
        # The premise of one refresh is one window (0.5 s); here they take some 20-60 ms.
        # Not a speed check: a slower machine only narrows the margin.
        assert took < DEFAULTS["TURBO_REFRESH_DEBOUNCE"], f"20 changes took {took:.3f}s"
        page_b.wait_for_selector("#board-name:text-is('Burst 19')")
        tab_b.tab.wait_for(lambda: _window_closed(redis_client, board_id), what="the window")
        marker_id = _post(app, board_id, "after the burst")
        page_b.wait_for_selector(f"#post_{marker_id}")
        assert tab_b.counts()[0] == 1
        assert len(tab_b.refresh_frames) == frames_b + 1
    finally:
        tab_a.close()
        tab_b.close()
