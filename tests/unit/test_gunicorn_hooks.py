"""turbocast.gunicorn_hooks: what a web worker changes about itself."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support import ROOT
from turbocast import gunicorn_hooks


class ThreadWorker:
    """Stands in for gunicorn's gthread worker (only its class's module matters)."""


class GeventWorker:
    """Stands in for gunicorn's gevent worker."""


GeventWorker.__module__ = "gunicorn.workers.ggevent"


@pytest.fixture(autouse=True)
def kept_switch_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_the_worker_keeps_the_gil_longer_before_a_forced_switch(monkeypatch):
    monkeypatch.delenv("TURBO_SWITCH_INTERVAL", raising=False)
    sys.setswitchinterval(0.005)

    gunicorn_hooks.switch_interval(ThreadWorker())

    assert sys.getswitchinterval() == pytest.approx(gunicorn_hooks.SWITCH_INTERVAL)


def test_the_switch_interval_can_be_set(monkeypatch):
    monkeypatch.setenv("TURBO_SWITCH_INTERVAL", "0.02")

    gunicorn_hooks.switch_interval(ThreadWorker())

    assert sys.getswitchinterval() == pytest.approx(0.02)


def test_gevent_workers_keep_pythons_own(monkeypatch):
    monkeypatch.delenv("TURBO_SWITCH_INTERVAL", raising=False)
    sys.setswitchinterval(0.005)

    gunicorn_hooks.switch_interval(GeventWorker())

    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_zero_keeps_pythons_own(monkeypatch):
    monkeypatch.setenv("TURBO_SWITCH_INTERVAL", "0")
    sys.setswitchinterval(0.005)

    gunicorn_hooks.switch_interval(ThreadWorker())

    assert sys.getswitchinterval() == pytest.approx(0.005)


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, check=False, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_the_hooks_loads_nothing_a_gevent_worker_must_patch_first():
    # What gunicorn's master does with -c python:turbocast.gunicorn_hooks, before the fork.
    loaded = _run(
        "import sys; before = set(sys.modules); import turbocast.gunicorn_hooks;"
        "print(' '.join(sorted(set(sys.modules) - before)))"
    ).split()
    assert {"turbocast", "turbocast.gunicorn_hooks"} <= set(loaded)
    roots = {name.split(".")[0] for name in loaded}
    unwanted = {"ssl", "_ssl", "socket", "select", "selectors", "threading", "redis", "hiredis"}
    unwanted |= {"flask", "werkzeug", "wsproto", "celery", "gevent", "app", "workers"}
    assert roots & unwanted == set()
    assert [name for name in loaded if name.startswith("turbocast.")] == [
        "turbocast.gunicorn_hooks"
    ]


GEVENT_WORKER = """
import warnings

import turbocast.gunicorn_hooks as hooks  # gunicorn's master, before the fork

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from gevent import monkey

    monkey.patch_all()  # what gunicorn's gevent worker does first

class GeventWorker:
    class cfg:
        graceful_timeout = 1

GeventWorker.__module__ = "gunicorn.workers.ggevent"
hooks.post_worker_init(GeventWorker())  # imports the rest of turbocast, after the patch
hooks.worker_exit(None, GeventWorker())
for warning in caught:
    print(warning.category.__name__, warning.message)
print("started")
"""


def test_a_gevent_worker_patches_before_turbocast_loads_redis_or_ssl():
    pytest.importorskip("gevent")
    assert _run(GEVENT_WORKER).splitlines() == ["started"]


SIGTERM_INSIDE_A_LOCK = """
import os
import signal
import time

from gevent import monkey

monkey.patch_all()  # what gunicorn's gevent worker does first

import gevent

import turbocast.gunicorn_hooks as hooks
from turbocast.outbox import Outbox
from turbocast.relay import Relay

relay = Relay("redis://127.0.0.1:9/0", waker=lambda channel: None)
outbox = Outbox(1 << 20)
relay.attach(["turbo:broadcast"], outbox)
stopped = []
signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))  # gunicorn's
hooks.install_graceful_shutdown()

with relay._lock:  # a greenlet inside the relay's lock (a socket attaching) when SIGTERM comes
    os.kill(os.getpid(), signal.SIGTERM)  # the handler runs in this greenlet, here
deadline = time.monotonic() + 10
while outbox.closing is None and time.monotonic() < deadline:
    gevent.sleep(0.01)
print(stopped == [signal.SIGTERM], outbox.closing)
"""


def test_sigterm_under_gevent_closes_the_sockets_from_a_greenlet_of_its_own():
    # A signal handler runs in whatever greenlet was running, the hub included: one that
    # took a lock the running greenlet holds would wait for itself.
    pytest.importorskip("gevent")
    closed = "Closing(code=1001, reason='server shutting down')"
    assert _run(SIGTERM_INSIDE_A_LOCK) == f"True {closed}"
