"""The heartbeat: one thread per process tells every socket's writer when to ping.

Each ``interval`` seconds it puts :data:`~turbocast.outbox.HEARTBEAT` into the
outbox of every socket the relay holds. The writer then sends a ping, and drops
its peer if the previous ping was not answered (see the socket's writer). So a
writer keeps no timer of its own, and exactly one thread beats: two would send
two pings per interval and drop healthy peers whose pong was still on its way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from .outbox import Outbox

logger = logging.getLogger("turbocast.heartbeat")


class Heartbeat:
    """Beats every outbox that ``outboxes()`` returns, each ``interval`` seconds.

    :param interval: seconds between beats (the ping interval).
    :param outboxes: returns the outboxes to beat now (the relay's sockets).
    :param thread_class: the class of the heartbeat thread.
    """

    def __init__(
        self,
        interval: float,
        outboxes: Callable[[], Iterable[Outbox]],
        *,
        thread_class: type[threading.Thread] = threading.Thread,
    ) -> None:
        if interval <= 0:
            raise ValueError("a heartbeat needs an interval above 0")
        self.interval = interval
        self._outboxes = outboxes
        self._stop = threading.Event()
        self._thread = thread_class(target=self._run, name="turbo-heartbeat", daemon=True)

    def start(self) -> None:
        """Start the thread (the relay calls this once, under its lock)."""
        self._thread.start()
        logger.info("heartbeat started", extra={"turbo_interval": self.interval})

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it.

        :param timeout: how long to wait.
        """
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the thread is running."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for outbox in self._outboxes():
                outbox.beat()
