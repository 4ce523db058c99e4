"""Under gevent, each socket's writer is a lean greenlet of its own.

A socket lives for as long as its page is open, and its writer waits almost all
that time. Under gunicorn's gevent worker the request's greenlet would keep,
while it waits, its saved C stack (gunicorn's handler, the WSGI call, Flask's
dispatch), the request's environ and Flask's context: most of an idle socket's
memory. So once the handshake is done, the socket's file descriptor is
duplicated and handed, with a small environ, to a new greenlet started from
gevent's hub (a shallow stack); the request returns, gunicorn closes its own
descriptor, and the connection carries on in the new greenlet, which is from
then on the socket's one writer.

Sockets handed off this way no longer count against gunicorn's
``--worker-connections``. A stopping worker waits for them in :func:`join`
(the ``worker_exit`` hook), so their closing frames still go out.

Under threads (and any server but gunicorn with gevent) nothing changes: the
handler thread stays the writer. Nor for a TLS socket under gevent: an SSL socket
cannot be duplicated (its TLS state lives in the one object), so it is served in
the request's greenlet.
"""

from __future__ import annotations

import logging
import ssl
import sys
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("turbocast.socket")

# The live writer greenlets of this process, and what join() waits on.
_writers: set[Any] = set()
_all_done: Any = None


def is_gevent_socket(sock: object) -> bool:
    """Whether ``sock`` is gevent's (non-blocking underneath; gevent waits for it).

    :param sock: a socket object.
    """
    return type(sock).__module__.startswith("gevent")


def is_tls_socket(sock: object) -> bool:
    """Whether ``sock`` speaks TLS (the standard library's SSL socket, or gevent's).

    :param sock: a socket object.
    """
    if isinstance(sock, ssl.SSLSocket):
        return True
    # gevent's SSL socket is not a subclass of the standard one (unless monkey-patched).
    gevent_ssl = sys.modules.get("gevent.ssl")
    return gevent_ssl is not None and isinstance(sock, gevent_ssl.SSLSocket)


def lean_environ(environ: dict[str, Any]) -> dict[str, Any] | None:
    """What a handed-off socket keeps of its environ, with its socket duplicated; else ``None``.

    Only gunicorn's gevent worker qualifies: its environ carries the client's
    socket as ``gunicorn.socket``, and that socket is gevent's. Not a TLS socket:
    it cannot be duplicated.

    :param environ: the WSGI environ of the upgrade request.
    """
    sock = environ.get("gunicorn.socket")
    if sock is None or not is_gevent_socket(sock) or is_tls_socket(sock):
        return None
    lean = {key: value for key, value in environ.items() if key.startswith("HTTP_")}
    lean["gunicorn.socket"] = sock.dup()
    return lean


def spawn(run: Callable[[], object]) -> None:
    """Run a socket's writer in a greenlet of its own, started from the hub.

    A raw greenlet (``gevent.spawn_raw``): no spawning stack is captured, and
    nothing but the writer's own frames is kept while it waits.

    :param run: serves the socket until it ends, then cleans up.
    """
    import gevent

    def writer() -> None:
        try:
            run()
        except Exception:  # noqa: BLE001 - logged here: no request is left to report it
            logger.exception("socket writer failed")
        finally:
            _writers.discard(current)
            if not _writers and _all_done is not None:
                _all_done.set()

    current = gevent.spawn_raw(writer)
    _writers.add(current)


def join(timeout: float) -> int:
    """Wait up to ``timeout`` seconds for the writers to finish; how many are still running.

    :param timeout: seconds.
    """
    global _all_done
    if not _writers:
        return 0
    from gevent.event import Event

    _all_done = Event()
    _all_done.wait(timeout)
    left = len(_writers)
    if left:
        logger.warning("%d socket writers still running at exit", left)
    return left
