"""Gunicorn hooks for a graceful shutdown: ``gunicorn -c python:turbocast.gunicorn_hooks ...``.

When gunicorn tells a worker to stop (SIGTERM: a deploy, a scale-down, Ctrl-C
under a process manager), the worker stops accepting and waits up to
``--graceful-timeout`` for its requests to finish. A WebSocket never finishes by
itself, so turbocast closes every socket of the worker at once with 1001
("going away"): reconnecting clients (``transport="websocket"``, Server-Sent
Events) come straight back, to another worker or the restarted one, and resume
where they were.

Keep your own gunicorn settings in your own config module and import the hooks
there: ``from turbocast.gunicorn_hooks import post_worker_init, worker_exit, child_exit``
(``child_exit`` is for Prometheus metrics in multiprocess mode, see :mod:`turbocast.metrics`).

gunicorn's master imports this module before it forks; a gevent worker patches
only afterwards. So it imports nothing but the standard library's basics here,
and the rest of turbocast (redis, ssl) inside the hooks, which run in the worker
after the patch: the worker starts without gevent's "Monkey-patching ssl after
ssl has already been imported".
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Any


def install_graceful_shutdown() -> None:
    """Close every socket of this process with 1001 when SIGTERM arrives, then go on as before.

    Call it from the process's main thread once the server installed its own handler.
    """
    # Imported now, not inside the handler: a signal handler must not import.
    from .relay import close_all_sockets

    previous = signal.getsignal(signal.SIGTERM)
    close: Callable[[], object] = close_all_sockets
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        import gevent

        # Under gevent the handler runs in whichever greenlet was running (the hub
        # included), which may hold the very lock closing takes: close from a greenlet
        # of its own, as gunicorn's gevent worker handles its own signals.
        close = partial(gevent.spawn, close_all_sockets)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # Only flags and wake-ups here: no logging or I/O inside a signal handler.
        close()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)


def batch_scheduling() -> None:
    """Ask Linux not to preempt the thread that wakes another (``SCHED_BATCH``).

    A message to a socket whose writer is busy wakes that writer (to an idle one's
    socket the relay writes itself). By default the kernel may switch to the woken
    writer at once, which then blocks on the GIL that the relay still holds: two
    wasted context switches per message, the costliest part of delivery on a busy
    core. Under ``SCHED_BATCH`` the relay runs on until
    it waits for Redis again, and the writers follow. Threads created afterwards
    (gunicorn's request threads, the relay, socket readers) inherit it.
    """
    if os.environ.get("TURBO_SCHED_BATCH", "1") == "0" or not hasattr(os, "SCHED_BATCH"):
        return
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


#: How long a thread may keep the GIL before a waiting one forces a switch (Python: 5 ms).
SWITCH_INTERVAL = 0.05


def switch_interval(worker: Any) -> None:
    """Let a thread keep the GIL for up to 50 ms before a waiting one forces a switch.

    A broadcast used to wake the writer thread of every socket at once (now only
    those of busy sockets: the relay writes to idle ones itself). With Python's
    5 ms interval, each of a thousand waiting writers timed out in turn and
    forced a switch; on one core those forced switches fed on each other (a
    GIL convoy) and a broadcast that took 50 ms could take seconds. Measured
    again since the relay writes itself, 5 and 50 ms could not be told apart
    (bench/NOTES.md, item 11). Writers hold
    the GIL for microseconds and release it on every write, so a longer interval
    costs them nothing; what it allows is a CPU-bound view holding the GIL for
    up to the interval while a message waits. ``TURBO_SWITCH_INTERVAL`` (seconds)
    changes it; ``0`` keeps Python's own.

    Only for threaded workers: under gevent the writers are greenlets, which
    never wait for the GIL, and there it measurably grew each idle socket's memory.

    :param worker: the gunicorn worker (its class says whether it runs gevent).
    """
    if "gevent" in type(worker).__module__:
        return
    seconds = float(os.environ.get("TURBO_SWITCH_INTERVAL", SWITCH_INTERVAL))
    if seconds > 0:
        sys.setswitchinterval(seconds)


def post_worker_init(worker: Any) -> None:
    """Gunicorn's hook, run in each worker after it installed its signal handlers."""
    install_graceful_shutdown()
    batch_scheduling()
    switch_interval(worker)


def child_exit(server: Any, worker: Any) -> None:
    """Gunicorn's hook, run in the master when a worker exited (or was killed).

    With Prometheus metrics in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set), the
    worker's live gauges (its open sockets, its relay) are removed: prometheus-client's
    ``mark_process_dead``. Its counters stay, summed into the server's.
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    try:
        from prometheus_client import multiprocess
    except ImportError:  # turbocast[metrics] not installed: nothing was counted
        return
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def worker_exit(server: Any, worker: Any) -> None:
    """Gunicorn's hook, run in a worker that stops: let handed-off sockets close cleanly.

    Under gevent the sockets' writers are greenlets of their own (see
    :mod:`turbocast.handoff`), which gunicorn does not wait for; each was asked
    to close with 1001 on SIGTERM, and here they get the graceful timeout to do so.
    """
    from . import handoff
    from .relay import close_all_sockets

    close_all_sockets()
    handoff.join(timeout=float(getattr(worker.cfg, "graceful_timeout", 5)))
