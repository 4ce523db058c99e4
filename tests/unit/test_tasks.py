"""The Celery side, without a broker: what views enqueue is checked in the view."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app import create_app
from tests.support import ROOT
from turbocast import InvalidChannelError, InvalidStreamError, PublishError, send_later
from turbocast.tasks import publish_template
from workers.schedule import beat_schedule

CONFIG = {"REDIS_URL": "redis://127.0.0.1:1/0", "SECRET_KEY": "x", "TESTING": True}
SID = "A" * 32


@pytest.fixture
def app():
    return create_app(CONFIG)


def test_send_later_refuses_a_malformed_session_id_before_enqueueing(app):
    with app.app_context(), pytest.raises(InvalidChannelError):
        send_later("bad id", "append", "x", template="demo/_notification.html")


@pytest.mark.parametrize(
    ("action", "target", "kwargs"),
    [
        ("explode", "x", {}),
        ("append", None, {}),
        ("append", "x", {"targets": ".y"}),
        ("append", "x", {"method": "morph"}),
    ],
)
def test_send_later_refuses_a_bad_stream_before_enqueueing(app, action, target, kwargs):
    with app.app_context(), pytest.raises(InvalidStreamError):
        send_later(SID, action, target, template="demo/_notification.html", **kwargs)


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


def test_celery_uses_the_same_redis_and_includes_the_core_task(app):
    celery_app = app.extensions["celery"]
    assert celery_app.conf.broker_url == CONFIG["REDIS_URL"]
    assert "turbocast.tasks" in celery_app.conf.include


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
    hint = "need Celery: pip install 'turbocast[celery]'"
    assert result.stdout.splitlines() == [f"send_later() and broadcast_later() {hint}"] * 2
