"""One reader for every plain socket of a threaded web process.

Clients are not expected to send anything, so a thread per socket sitting in
``recv()`` would be wasted. Here one thread waits on all of a process's plain
sockets at once with epoll and reads whichever has something: a pong, a
client's close, a stray frame, or the end of the connection. It never writes;
what a socket must send back goes through that socket's outbox to its own
writer. (A TLS socket cannot be read this way, and under gevent each socket has
a read watcher of gevent's loop instead: see :mod:`turbocast.connection`.)

Registrations are keyed by file descriptor, and a descriptor is reused as soon
as its socket is closed. So a connection is removed before its socket closes,
:meth:`Readers.remove` returns only once the reader is done with it, and a
registration that a closed socket left behind is replaced, not an error.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
from contextlib import suppress
from typing import Protocol

logger = logging.getLogger("turbocast.socket")


class Readable(Protocol):
    """What the reader needs of a connection."""

    def fileno(self) -> int:
        """The socket's file descriptor."""
        ...

    def read_ready(self) -> bool:
        """Read what arrived without blocking; ``False`` once the connection is over."""
        ...


class Readers:
    """The process's reader thread and its selector; the thread starts with the first socket."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        # Held by the reader while it reads, so remove() waits for a read in progress.
        self._lock = threading.RLock()
        self._fds: dict[Readable, int] = {}
        self._thread: threading.Thread | None = None
        self.pid = os.getpid()

    def add(self, conn: Readable) -> None:
        """Start reading a connection's socket.

        :param conn: the connection; its socket must be open.
        """
        fd = conn.fileno()
        with self._lock:
            stale = self._selector.get_map().get(fd)
            if stale is not None:
                # A socket was closed without being removed and its descriptor went
                # to this one: what is registered under it is no longer real.
                logger.warning("replaced a stale reader registration", extra={"turbo_fd": fd})
                self._forget(stale.data)
            self._selector.register(fd, selectors.EVENT_READ, conn)
            self._fds[conn] = fd
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="turbo-reader", daemon=True)
                self._thread.start()

    def remove(self, conn: Readable) -> None:
        """Stop reading a connection's socket; call it before the socket is closed.

        Once it returns, the reader will not touch the connection again. Removing a
        connection twice, or one never added, does nothing.

        :param conn: the connection.
        """
        with self._lock:
            self._forget(conn)

    def __contains__(self, conn: object) -> bool:
        return conn in self._fds

    def _forget(self, conn: Readable) -> None:
        fd = self._fds.pop(conn, None)
        if fd is None:
            return
        key = self._selector.get_map().get(fd)
        if key is not None and key.data is conn:
            with suppress(KeyError, ValueError, OSError):
                self._selector.unregister(fd)

    def _run(self) -> None:
        while True:
            try:
                ready = self._selector.select(timeout=1.0)
            except OSError:  # pragma: no cover - a socket closed under select
                logger.debug("reader select failed", exc_info=True)
                continue
            with self._lock:
                for key, _ in ready:
                    conn: Readable = key.data
                    if self._fds.get(conn) != key.fd:
                        continue  # removed (or replaced) since select() returned
                    try:
                        alive = conn.read_ready()
                    except Exception:  # noqa: BLE001 - one bad socket must not stop the reader
                        logger.exception("reading a socket failed")
                        alive = False
                    if not alive:
                        self._forget(conn)


_readers: Readers | None = None
_readers_lock = threading.Lock()


def readers() -> Readers:
    """This process's readers (a fork gets its own)."""
    global _readers
    with _readers_lock:
        if _readers is None or _readers.pid != os.getpid():
            _readers = Readers()
        return _readers
