"""One reader for every socket of a process.

simple-websocket gives each socket a thread of its own that sits in ``recv()``
almost all the time, since clients are not expected to send anything. Here one
thread (a greenlet under gevent) waits on all of a process's sockets at once
with epoll and reads whichever has something: a pong, a client's close, a stray
frame, or the end of the connection. It never writes; what a socket must send
back goes through that socket's outbox to its own writer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import threading
from typing import Any, Protocol

logger = logging.getLogger("turbocast.socket")


class Readable(Protocol):
    """What the reader needs of a connection."""

    sock: Any

    def read_ready(self) -> bool:
        """Read what arrived; ``False`` once the connection is over."""
        ...


class Readers:
    """The process's reader thread and its selector; started with the first socket."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.pid = os.getpid()

    def add(self, conn: Readable) -> None:
        """Start reading a connection's socket.

        :param conn: the connection.
        """
        with self._lock:
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="turbo-reader", daemon=True)
                self._thread.start()

    def remove(self, conn: Readable) -> None:
        """Stop reading a connection's socket (before it is closed).

        :param conn: the connection.
        """
        with self._lock, contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(conn.sock)  # (or it is already gone)

    def _run(self) -> None:
        while True:
            try:
                ready = self._selector.select(timeout=1.0)
            except OSError:  # pragma: no cover - a socket closed under select
                logger.debug("turbocast: reader select failed", exc_info=True)
                continue
            for key, _ in ready:
                conn: Readable = key.data
                try:
                    alive = conn.read_ready()
                except Exception:  # noqa: BLE001 - one bad socket must not stop the reader
                    logger.exception("turbocast: reading a socket failed")
                    alive = False
                if not alive:
                    self.remove(conn)


_readers: Readers | None = None
_readers_lock = threading.Lock()


def readers() -> Readers:
    """This process's readers (a fork gets its own)."""
    global _readers
    with _readers_lock:
        if _readers is None or _readers.pid != os.getpid():
            _readers = Readers()
        return _readers


class SharedReader:
    """Stands in for simple-websocket's reader thread: registers with the shared reader.

    simple-websocket's ``Server`` makes ``thread_class(target=self._thread)`` and
    starts it; this "thread" hands the connection to :func:`readers` instead.
    """

    def __init__(self, target: Any) -> None:
        self.conn = target.__self__
        self.name = "turbo-reader"

    def start(self) -> None:
        readers().add(self.conn)

    def join(self, timeout: float | None = None) -> None:
        """Nothing to wait for: the shared reader lives on."""
