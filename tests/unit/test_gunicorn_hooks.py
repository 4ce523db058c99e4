"""turbocast.gunicorn_hooks: what a web worker changes about itself."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

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
