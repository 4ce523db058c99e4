"""turbocast.refreshes without a network: who opens a window, who sends, which request id.

The windows live in a dict here (the Lua scripts that keep them in Redis are tested
against a real Redis in tests/integration/test_refreshes.py), the timer only records
what it was asked to run, and the publisher's ``to_stream`` records what it was asked
to send.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from flask import Flask
from sqlalchemy.orm import Session

from turbocast import InvalidChannelError, InvalidStreamError, PublishError, Turbo, TurboStream
from turbocast.refreshes import (
    REQUEST_ID_HEADER,
    TASK_NAME,
    Refresher,
    RefreshWindows,
    current_request_id,
)

REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens: a test that reaches Redis fails
_queues = itertools.count()


class MemoryWindows(RefreshWindows):
    """The windows in a dict, with the Lua scripts' rules (and no expiry)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.prefix = prefix
        self.open_windows: dict[str, tuple[str, str | None]] = {}

    def open(self, name: str, request_id: str | None, token: str, ttl: float) -> bool:
        if name not in self.open_windows:
            self.open_windows[name] = (token, request_id)
            return True
        opener, kept = self.open_windows[name]
        self.open_windows[name] = (opener, kept if kept == request_id else None)
        return False

    def close(self, name: str, token: str) -> tuple[bool, str | None]:
        opener, request_id = self.open_windows.get(name, (None, None))
        if opener is None:
            return True, None
        if opener != token:
            return False, None
        del self.open_windows[name]
        return True, request_id


class RecordingTimer:
    """Records each timer started; a test runs them when it likes."""

    started: list[RecordingTimer] = []

    def __init__(self, delay: float, function: Any, args: tuple[Any, ...]) -> None:
        self.delay, self.function, self.args = delay, function, args
        self.name = ""

    def start(self) -> None:
        RecordingTimer.started.append(self)

    def run(self) -> None:
        self.function(*self.args)


@pytest.fixture
def windows(monkeypatch) -> dict[str, tuple[str, str | None]]:
    """Every Refresher keeps its windows in one dict; returns it."""
    shared: dict[str, tuple[str, str | None]] = {}

    def make(client: Any, prefix: str) -> MemoryWindows:
        store = MemoryWindows(client, prefix)
        store.open_windows = shared
        return store

    monkeypatch.setattr(Refresher, "windows_class", staticmethod(make))
    return shared


@pytest.fixture
def timers(monkeypatch) -> list[RecordingTimer]:
    started: list[RecordingTimer] = []
    monkeypatch.setattr(RecordingTimer, "started", started)
    monkeypatch.setattr(Refresher, "timer_class", RecordingTimer)
    return started


def flask_app(celery: Celery | None = None, **config: Any) -> tuple[Flask, Turbo, list]:
    """An app whose publisher records what it sends: ``(name, html)`` of each stream."""
    app = Flask(__name__)
    app.config.update(SECRET_KEY="x", REDIS_URL=REDIS_URL, **config)
    turbo = Turbo(app, celery=celery)
    sent: list[tuple[str, str]] = []
    with app.app_context():
        publisher = turbo.publisher

    def to_stream(name: str, *streams: Any) -> int:
        sent.append((name, "".join(str(s.render()) for s in streams)))
        return 1

    publisher.to_stream = to_stream  # type: ignore[method-assign]
    return app, turbo, sent


def refresh_html(request_id: str | None = None) -> str:
    return str(TurboStream.refresh(request_id=request_id).render())


def run_timers(timers: list[RecordingTimer]) -> None:
    while timers:
        timers.pop(0).run()


# -- one refresh a window ---------------------------------------------------------------


def test_twenty_calls_in_a_window_start_one_timer_and_send_one_refresh(windows, timers):
    app, turbo, sent = flask_app()
    with app.app_context():
        for _ in range(20):
            turbo.refresh_stream("board:1")

    assert len(timers) == 1
    assert timers[0].delay == 0.5  # turbo-rails' Turbo::Debouncer::DEFAULT_DELAY
    assert sent == []  # trailing: nothing before the window ends
    run_timers(timers)
    assert sent == [("board:1", refresh_html())]


def test_a_call_after_the_send_opens_the_next_window(windows, timers):
    app, turbo, sent = flask_app()
    with app.app_context():
        turbo.refresh_stream("board:1")
        run_timers(timers)
        turbo.refresh_stream("board:1")
        run_timers(timers)

    assert sent == [("board:1", refresh_html()), ("board:1", refresh_html())]


def test_each_stream_has_its_own_window(windows, timers):
    app, turbo, sent = flask_app()
    with app.app_context():
        for name in ("board:1", "board:2", "board:1", "board:2"):
            turbo.refresh_stream(name)
    run_timers(timers)

    assert sorted(sent) == [("board:1", refresh_html()), ("board:2", refresh_html())]


def test_the_window_follows_the_setting(windows, timers):
    app, turbo, sent = flask_app(TURBO_REFRESH_DEBOUNCE=2.5)
    with app.app_context():
        turbo.refresh_stream("board:1")

    assert [t.delay for t in timers] == [2.5]


def test_a_debounce_of_zero_sends_each_refresh_at_once(windows, timers):
    app, turbo, sent = flask_app(TURBO_REFRESH_DEBOUNCE=0)
    with app.test_request_context(headers={REQUEST_ID_HEADER: "r-1"}):
        turbo.refresh_stream("board:1")
        turbo.refresh_stream("board:1")

    assert timers == [] and windows == {}
    assert sent == [("board:1", refresh_html("r-1"))] * 2


def test_a_send_whose_window_expired_still_sends_without_a_request_id(windows, timers):
    app, turbo, sent = flask_app()
    with app.test_request_context(headers={REQUEST_ID_HEADER: "r-1"}):
        turbo.refresh_stream("board:1")
    windows.clear()  # what Redis does when the window's key outlives its time to live
    run_timers(timers)

    assert sent == [("board:1", refresh_html())]


def test_a_late_send_leaves_a_newer_window_to_its_opener(windows, timers):
    app, turbo, sent = flask_app()
    with app.app_context():
        turbo.refresh_stream("board:1")
        late = timers.pop()
        windows.clear()  # expired...
        turbo.refresh_stream("board:1")  # ...and a new window opened
        late.run()
        assert sent == []
        run_timers(timers)

    assert sent == [("board:1", refresh_html())]


# -- the request id ---------------------------------------------------------------------


def test_a_call_in_a_request_carries_its_turbo_request_id(windows, timers):
    app, turbo, sent = flask_app()
    with app.test_request_context(method="POST", headers={REQUEST_ID_HEADER: "3f1c-aa"}):
        for _ in range(3):
            turbo.refresh_stream("board:1")
    run_timers(timers)

    assert sent == [("board:1", refresh_html("3f1c-aa"))]
    assert 'request-id="3f1c-aa"' in sent[0][1]


def test_calls_from_different_requests_make_one_refresh_that_carries_no_request_id(windows, timers):
    app, turbo, sent = flask_app()
    with app.test_request_context(headers={REQUEST_ID_HEADER: "r-1"}):
        turbo.refresh_stream("board:1")
    with app.test_request_context(headers={REQUEST_ID_HEADER: "r-2"}):
        turbo.refresh_stream("board:1")
    with app.test_request_context(headers={REQUEST_ID_HEADER: "r-1"}):
        turbo.refresh_stream("board:1")
    run_timers(timers)

    assert sent == [("board:1", refresh_html())]


def test_a_call_without_a_request_id_takes_it_from_the_window(windows, timers):
    app, turbo, sent = flask_app()
    with app.test_request_context(headers={REQUEST_ID_HEADER: "r-1"}):
        turbo.refresh_stream("board:1")
    with app.app_context():  # a Celery task, a script
        turbo.refresh_stream("board:1")
    run_timers(timers)

    assert sent == [("board:1", refresh_html())]


def test_outside_a_request_there_is_no_request_id_unless_given(windows, timers):
    app, turbo, sent = flask_app()
    with app.app_context():
        assert current_request_id() is None
        turbo.refresh_stream("board:1")
        turbo.refresh_stream("board:2", request_id="given-1")
    run_timers(timers)

    assert sorted(sent) == [("board:1", refresh_html()), ("board:2", refresh_html("given-1"))]


def test_an_explicit_none_drops_the_current_requests_id(windows, timers):
    app, turbo, sent = flask_app()
    with app.test_request_context(headers={REQUEST_ID_HEADER: "r-1"}):
        turbo.refresh_stream("board:1", request_id=None)
    run_timers(timers)

    assert sent == [("board:1", refresh_html())]


@pytest.mark.parametrize("header", ['x" onmouseover="alert(1)', "a" * 129, "", "ü"])
def test_a_malformed_request_id_header_is_ignored(windows, timers, header):
    app, turbo, sent = flask_app()
    with app.test_request_context(headers={REQUEST_ID_HEADER: header}):
        assert current_request_id() is None
        turbo.refresh_stream("board:1")
    run_timers(timers)

    assert sent == [("board:1", refresh_html())]


def test_a_bad_name_or_given_request_id_raises_in_the_caller(windows, timers):
    app, turbo, _ = flask_app()
    with app.app_context():
        with pytest.raises(InvalidChannelError):
            turbo.refresh_stream("no spaces")
        with pytest.raises(InvalidStreamError):
            turbo.refresh_stream("board:1", request_id='x"y')
    assert timers == [] and windows == {}


def test_a_refresh_from_an_after_commit_hook_in_a_view_carries_the_request_id(windows, timers):
    app, turbo, sent = flask_app()
    engine = sa.create_engine("sqlite://")
    with Session(engine) as session:

        @sa.event.listens_for(session, "after_commit")
        def refresh_board(session: Session) -> None:
            turbo.refresh_stream("board:7")

        @app.post("/boards/7/rows")
        def add_rows() -> str:
            for n in range(3):
                session.execute(sa.text("select :n"), {"n": n})
                session.commit()
            return "ok"

        response = app.test_client().post("/boards/7/rows", headers={REQUEST_ID_HEADER: "r-9"})

    assert response.status_code == 200
    run_timers(timers)
    assert sent == [("board:7", refresh_html("r-9"))]


# -- who sends --------------------------------------------------------------------------


def memory_celery() -> Celery:
    app = Celery("refreshes", broker="memory://", set_as_current=False)
    app.conf.task_default_queue = f"test-refreshes-{next(_queues)}"
    return app


def test_with_a_celery_app_the_opener_enqueues_the_send_with_a_countdown(windows, timers):
    celery_app = memory_celery()
    app, turbo, sent = flask_app(celery_app)
    calls: list[tuple[str, list, dict]] = []

    def send_task(name: str, args: list, **options: Any) -> None:
        calls.append((name, args, options))

    celery_app.send_task = send_task  # type: ignore[method-assign]
    with app.app_context():
        for _ in range(5):
            turbo.refresh_stream("board:1")

    assert timers == []
    ((name, args, options),) = calls
    assert name == TASK_NAME and args[0] == "board:1" and options == {"countdown": 0.5}
    # What the worker then runs:
    with app.app_context():
        from turbocast.refreshes import _send_refresh

        _send_refresh(*args)
    assert sent == [("board:1", refresh_html())]


def test_when_the_broker_refuses_the_send_a_timer_sends_it(windows, timers, caplog):
    celery_app = memory_celery()
    app, turbo, sent = flask_app(celery_app)

    def send_task(name: str, args: list, **options: Any) -> None:
        raise ConnectionRefusedError("broker down")

    celery_app.send_task = send_task  # type: ignore[method-assign]
    with app.app_context():
        turbo.refresh_stream("board:1")
    run_timers(timers)

    assert sent == [("board:1", refresh_html())]
    assert "could not enqueue a refresh" in caplog.text


def test_a_negative_debounce_is_refused(windows):
    app, turbo, _ = flask_app(TURBO_REFRESH_DEBOUNCE=-1)
    with app.app_context(), pytest.raises(ValueError, match="TURBO_REFRESH_DEBOUNCE"):
        turbo.refresh_stream("board:1")


def test_without_redis_a_refresh_raises_publish_error_as_any_push_does(caplog):
    app, turbo, sent = flask_app(TURBO_REDIS_TIMEOUT=0.5)  # REDIS_URL: nothing listens there
    with app.app_context(), pytest.raises(PublishError, match="not asked: Redis did not answer"):
        turbo.refresh_stream("board:1")
    assert sent == []
    assert "refresh not asked" in caplog.text
