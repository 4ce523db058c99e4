"""The Celery side, on Celery's in-memory broker: what ``*_later`` enqueues, on which app.

The Celery apps here are real ones whose broker is kombu's ``memory://`` transport:
a test reads back exactly what was sent, and nothing leaves the process.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import celery._state
import pytest
from celery import Celery
from flask import Flask

from app import create_app
from tests.support import ROOT
from turbocast import (
    CeleryNotConfiguredError,
    InvalidChannelError,
    InvalidStreamError,
    PublishError,
    Turbo,
    TurboError,
    broadcast_later,
    send_later,
)
from turbocast.tasks import TASK_NAME, publish_template
from workers.schedule import beat_schedule

CONFIG = {"REDIS_URL": "redis://127.0.0.1:1/0", "SECRET_KEY": "x", "TESTING": True}
SID = "A" * 32
_queues = itertools.count()


def memory_celery(name: str) -> Celery:
    """A real Celery app on the in-memory broker, with a queue of its own."""
    app = Celery(name, broker="memory://", set_as_current=False)
    app.conf.task_default_queue = f"test-{name}-{next(_queues)}"
    return app


def enqueued(celery_app: Celery) -> list[tuple[str, list[Any]]]:
    """Take what was sent to ``celery_app``'s queue: (task name, args) of each message."""
    messages = []
    with celery_app.connection_for_read() as connection:
        queue = connection.SimpleQueue(celery_app.conf.task_default_queue, no_ack=True)
        try:
            while True:
                message = queue.get(timeout=0.05)
                messages.append((message.headers["task"], message.payload[0]))
        except queue.Empty:
            pass
        finally:
            queue.close()
    return messages


@pytest.fixture
def app():
    return create_app(CONFIG)


@pytest.fixture
def worker_app() -> Celery:
    return memory_celery("worker")


@pytest.fixture
def trap(monkeypatch) -> Iterator[Celery]:
    """Celery's default and current app, on a broker the test reads: nothing may reach it."""
    trap = memory_celery("trap")
    monkeypatch.setattr(celery._state, "default_app", trap)
    monkeypatch.setattr(celery._state._tls, "current_app", trap)
    yield trap
    assert enqueued(trap) == [], "something was sent on Celery's default app"


def flask_app(celery: Celery | None = None, **config: Any) -> tuple[Flask, Turbo]:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="x", REDIS_URL="redis://127.0.0.1:1/0", **config)
    turbo = Turbo(app, celery=celery)
    return app, turbo


def later_calls(turbo: Turbo, **extra: Any) -> dict[str, Any]:
    """Every ``*_later`` call, each with a valid audience, and the channel it must name."""
    kwargs = {"template": "t.html", "text": "hi", **extra}
    return {
        "to_session_later": (
            lambda: turbo.to_session_later(SID, "append", "x", **kwargs),
            f"shop:session:{SID}",
        ),
        "to_user_later": (lambda: turbo.to_user_later(42, "append", "x", **kwargs), "shop:user:42"),
        "to_stream_later": (
            lambda: turbo.to_stream_later("board:1", "append", "x", **kwargs),
            "shop:stream:board:1",
        ),
        "to_all_later": (lambda: turbo.to_all_later("append", "x", **kwargs), "shop:broadcast"),
        "send_later": (lambda: send_later(SID, "append", "x", **kwargs), f"shop:session:{SID}"),
        "broadcast_later": (lambda: broadcast_later("append", "x", **kwargs), "shop:broadcast"),
    }


CALLS = list(later_calls(Turbo()))


# -- which Celery app --------------------------------------------------------------------


@pytest.mark.parametrize("call", CALLS)
def test_each_later_call_enqueues_the_task_on_the_given_celery_app(call, worker_app, trap):
    app, turbo = flask_app(worker_app, TURBO_CHANNEL_PREFIX="shop")
    enqueue, channel = later_calls(turbo)[call]
    with app.app_context():
        enqueue()

    assert enqueued(worker_app) == [
        (TASK_NAME, [channel, "append", "x", None, None, "t.html", {"text": "hi"}])
    ]


def test_targets_and_method_travel_to_the_worker(worker_app, trap):
    app, turbo = flask_app(worker_app)
    with app.app_context():
        turbo.to_all_later("replace", targets=".row", method="morph", template="t.html", n=1)

    assert enqueued(worker_app) == [
        (TASK_NAME, ["turbo:broadcast", "replace", None, ".row", "morph", "t.html", {"n": 1}])
    ]


def test_app_extensions_celery_is_used_and_looked_up_at_call_time(worker_app, trap):
    app, turbo = flask_app()
    app.extensions["celery"] = worker_app  # after init_app, as Flask's pattern may do it
    with app.app_context():
        turbo.to_all_later("append", "x", template="t.html")

    assert [name for name, _ in enqueued(worker_app)] == [TASK_NAME]


def test_the_celery_argument_wins_over_app_extensions_celery(worker_app, trap):
    other = memory_celery("other")
    app, turbo = flask_app(worker_app)
    app.extensions["celery"] = other
    with app.app_context():
        turbo.to_all_later("append", "x", template="t.html")

    assert len(enqueued(worker_app)) == 1
    assert enqueued(other) == []


def test_a_celery_app_given_to_turbo_serves_every_app_it_sets_up(worker_app, trap):
    turbo = Turbo(celery=worker_app)
    apps = [Flask("one"), Flask("two")]
    for app in apps:
        app.config.update(REDIS_URL="redis://127.0.0.1:1/0")
        turbo.init_app(app)
        with app.app_context():
            turbo.to_all_later("append", "x", template="t.html")

    assert len(enqueued(worker_app)) == 2


@pytest.mark.parametrize("call", CALLS)
def test_without_a_celery_app_each_later_call_says_how_to_fix_it_and_sends_nothing(call, trap):
    app, turbo = flask_app()
    with app.app_context(), pytest.raises(CeleryNotConfiguredError) as raised:
        later_calls(turbo)[call][0]()

    message = str(raised.value)
    assert "Turbo(app, celery=celery_app)" in message
    assert "init_app(app, celery=celery_app)" in message
    assert 'app.extensions["celery"]' in message
    assert isinstance(raised.value, TurboError)
    # (the trap fixture checks that Celery's default app got nothing)


def test_something_else_in_app_extensions_celery_is_not_a_celery_app(trap):
    app, turbo = flask_app()
    app.extensions["celery"] = object()
    with app.app_context(), pytest.raises(CeleryNotConfiguredError):
        turbo.to_all_later("append", "x", template="t.html")


def test_init_app_registers_the_task_on_the_demos_celery_app():
    # In a fresh process: this one imported turbocast.tasks long ago.
    script = (
        "from app import create_app\n"
        "import sys\n"
        "app = create_app({'REDIS_URL': 'redis://127.0.0.1:1/0', 'SECRET_KEY': 'x'})\n"
        "celery_app = app.extensions['celery']\n"
        "assert not celery_app.conf.include, celery_app.conf.include\n"
        "print('turbocast.publish_template' in celery_app.tasks)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True, text=True, check=False, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


# -- checked in the view, before anything is enqueued ---------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda turbo: turbo.to_session_later("bad id", "append", "x", template="t.html"),
        lambda turbo: turbo.to_user_later("no spaces", "append", "x", template="t.html"),
        lambda turbo: turbo.to_stream_later("", "append", "x", template="t.html"),
        lambda turbo: send_later("bad id", "append", "x", template="t.html"),
    ],
)
def test_a_malformed_audience_is_refused_before_enqueueing(call, worker_app, trap):
    app, turbo = flask_app(worker_app)
    with app.app_context(), pytest.raises(InvalidChannelError):
        call(turbo)
    assert enqueued(worker_app) == []


@pytest.mark.parametrize(
    ("action", "target", "kwargs"),
    [
        ("explode", "x", {}),
        ("append", None, {}),
        ("append", "x", {"targets": ".y"}),
        ("append", "x", {"method": "morph"}),
    ],
)
def test_a_bad_stream_is_refused_before_enqueueing(action, target, kwargs, worker_app, trap):
    app, turbo = flask_app(worker_app)
    with app.app_context():
        for call in (turbo.to_user_later, turbo.to_stream_later, turbo.to_session_later):
            with pytest.raises(InvalidStreamError):
                call(SID, action, target, template="t.html", **kwargs)
        with pytest.raises(InvalidStreamError):
            turbo.to_all_later(action, target, template="t.html", **kwargs)
    assert enqueued(worker_app) == []


@pytest.mark.parametrize("call", CALLS)
def test_exclude_travels_to_the_worker_as_the_eighth_argument(call, worker_app, trap):
    app, turbo = flask_app(worker_app, TURBO_CHANNEL_PREFIX="shop")
    enqueue, channel = later_calls(turbo, exclude="B" * 32)[call]
    with app.app_context():
        enqueue()

    assert enqueued(worker_app) == [
        (TASK_NAME, [channel, "append", "x", None, None, "t.html", {"text": "hi"}, "B" * 32])
    ]


@pytest.mark.parametrize("call", CALLS)
def test_a_malformed_exclude_is_refused_before_enqueueing(call, worker_app, trap):
    app, turbo = flask_app(worker_app)
    enqueue, _ = later_calls(turbo, exclude="not a session")[call]
    with app.app_context(), pytest.raises(InvalidChannelError, match="exclude="):
        enqueue()
    assert enqueued(worker_app) == []


def test_publish_template_retries_on_publish_errors_only():
    assert publish_template.autoretry_for == (PublishError,)
    assert publish_template.max_retries >= 3


def test_worker_tasks_retry_when_redis_is_unreachable():
    from workers import tasks

    for task in (tasks.run_job, tasks.broadcast_clock):
        assert task.autoretry_for == (PublishError,)


def test_beat_schedule_broadcasts_the_clock_and_drops_stale_ticks():
    schedule = beat_schedule(3.0)
    entry = schedule["broadcast-clock"]
    assert entry["task"] == "workers.tasks.broadcast_clock"
    assert entry["schedule"] == 3.0
    assert entry["options"]["expires"] == 3.0


def test_the_demos_celery_uses_the_same_redis_and_is_the_one_turbocast_enqueues_on(app):
    celery_app = app.extensions["celery"]
    assert celery_app.conf.broker_url == CONFIG["REDIS_URL"]
    assert app.extensions["turbo"].celery is celery_app


WITHOUT_CELERY = """
import sys

sys.modules["celery"] = None  # as if turbocast[celery] were not installed
from flask import Flask

from turbocast import Turbo, broadcast_later, send_later

app = Flask(__name__)
app.config.update(SECRET_KEY="x", REDIS_URL="redis://127.0.0.1:1/0")
Turbo(app)
with app.app_context():
    for call in (lambda: send_later("A" * 32, "append", "x", template="t.html"),
                 lambda: broadcast_later("append", "x", template="t.html")):
        try:
            call()
        except ImportError as error:
            print(error)
"""


def test_without_celery_turbocast_imports_and_send_later_says_what_to_install():
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_CELERY],
        capture_output=True, text=True, check=False, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    hint = "send_later(), broadcast_later() and the *_later methods need Celery"
    assert result.stdout.splitlines() == [f"{hint}: pip install 'turbocast[celery]'"] * 2


def _enqueued_kwargs(celery_app: Celery) -> list[dict[str, Any]]:
    """Take what was sent to ``celery_app``'s queue: the keyword arguments of each message."""
    with celery_app.connection_for_read() as connection:
        queue = connection.SimpleQueue(celery_app.conf.task_default_queue, no_ack=True)
        try:
            return [queue.get(timeout=0.5).payload[1]]
        finally:
            queue.close()


@pytest.mark.parametrize("call", CALLS)
def test_exclude_socket_travels_to_the_worker_as_a_keyword_leaving_the_arguments_as_they_were(
    call, worker_app, trap
):
    app, turbo = flask_app(worker_app, TURBO_CHANNEL_PREFIX="shop")
    enqueue, _ = later_calls(turbo, exclude_socket="Sock3tSock3tSock")[call]
    with app.app_context():
        enqueue()

    assert _enqueued_kwargs(worker_app) == [{"exclude_socket": "Sock3tSock3tSock"}]


@pytest.mark.parametrize("call", CALLS)
def test_a_malformed_exclude_socket_is_refused_before_enqueueing(call, worker_app, trap):
    app, turbo = flask_app(worker_app)
    enqueue, _ = later_calls(turbo, exclude_socket="not a socket")[call]
    with app.app_context(), pytest.raises(InvalidChannelError, match="exclude_socket="):
        enqueue()
    assert enqueued(worker_app) == []
