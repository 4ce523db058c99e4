"""One browser's WebSocket, held on wsproto's public API, one writer at a time.

Who does what, for one socket:

- **The handler** (the request's thread; under gunicorn's gevent worker the lean
  greenlet it is handed to, see :mod:`turbocast.handoff`) builds a
  :class:`WebSocket` from the upgrade request (nothing is sent yet), sends the 101
  with :meth:`~WebSocket.accept`, and from then on is the socket's
  **writer** (:meth:`~WebSocket.serve`): messages, pongs, the close echo and the
  heartbeat's pings all go out from it, in order. A plain socket in threads mode
  lets the relay write a message itself while the writer is idle and nothing
  waits (:meth:`~turbocast.outbox.Outbox.write_now`): no thread to wake. Whoever
  writes holds the outbox's write turn.
- **A reader** only reads: the process's shared reader (:mod:`turbocast.readers`:
  epoll over every plain socket) in threads mode; under gevent, a read watcher
  of gevent's own loop per socket; a reader of its own for a TLS socket (a
  thread, or a greenlet under gevent). What must be answered (a pong, the echo
  of a client's close) goes to the writer through the socket's outbox.
- **Closing** is the writer's: :meth:`~WebSocket.serve` ends with its ``finally``,
  :meth:`~WebSocket.abort` when something failed before or around it. Either
  sends FIN after the last frame, waits briefly for the peer's answer, stops the
  reading, and only then closes the socket (a closed descriptor is soon reused).

A TLS socket and threads. OpenSSL forbids using one ``SSL`` object from two
threads at once, ``SSL_read`` in one and ``SSL_write`` in the other included
(OpenSSL's FAQ, "Is OpenSSL thread-safe?"; its maintainers in openssl/openssl
#20446 and #18209). CPython (3.11 here) releases the GIL around both calls and
takes no lock of its own per socket (3.13.6 added one and withdrew it for sockets
in gh-137588, as it deadlocked a reader blocked in ``recv``; gh-143756 tracks the
crashes). So a reader thread in a blocking ``recv`` while the writer sends is not
safe. Instead the TLS socket is made non-blocking and one lock is held only
around each non-blocking ``SSL_read``/``SSL_write``; both threads wait for
readiness with ``poll()`` outside the lock, and the send timeout is that wait's
deadline. Under gevent there is nothing to lock: greenlets switch only while
waiting, never inside an OpenSSL call.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import quote

from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from . import metrics
from .control import CLOSE_SIGNED_OUT as CLOSE_SIGNED_OUT
from .errors import HandshakeError
from .handoff import is_gevent_socket, is_tls_socket
from .message import SUBPROTOCOL, Cursor, Message, identity_frame
from .outbox import HEARTBEAT, Closing, Outbox
from .readers import readers

logger = logging.getLogger("turbocast.socket")

#: Close code when the server shuts down; clients should reconnect elsewhere.
CLOSE_GOING_AWAY = 1001
#: Close code when a client floods the server with frames.
CLOSE_POLICY_VIOLATION = 1008
#: Close code when a client sends a frame larger than ``TURBO_MAX_INCOMING_BYTES``.
CLOSE_MESSAGE_TOO_BIG = 1009
#: Close code when the server failed after the 101 (the client should reconnect).
CLOSE_INTERNAL_ERROR = 1011

# gevent's loop: watch for readability (libev's and libuv's EV_READ).
_GEVENT_READ = 1
# What one read asks for: a plain socket's pongs are tiny; a TLS record is up to 16 KiB.
_RECEIVE_BYTES = 4096
_TLS_RECEIVE_BYTES = 16384
# How long the writer waits for the peer to answer its close before closing anyway.
_CLOSE_WAIT = 2.0
# How often a TLS reader thread looks whether it should stop (it is also woken).
_TLS_POLL_SECONDS = 1.0

#: How to send bytes on the socket: blocks until all are sent, raises OSError past the timeout.
Sender = Callable[[bytes | memoryview], Any]

_NO_LOCK: AbstractContextManager[object] = contextlib.nullcontext()


def socket_of(environ: dict[str, Any]) -> tuple[Any, str]:
    """The client's socket in a WSGI environ, and which server it is (the response's mode).

    The same servers, found the same way, as simple-websocket's ``Server``: Werkzeug
    and gunicorn put the socket in the environ, eventlet's input hands it out, and
    gevent's own WSGI server is reached through its input's file descriptor.

    :param environ: the WSGI environ of the upgrade request.
    :raises HandshakeError: (500) when the server does not give its socket out.
    """
    if (sock := environ.get("werkzeug.socket")) is not None:
        return sock, "werkzeug"
    if (sock := environ.get("gunicorn.socket")) is not None:
        return sock, "gunicorn"
    if (eventlet_input := environ.get("eventlet.input")) is not None:  # pragma: no cover
        return eventlet_input.get_socket(), "eventlet"
    if str(environ.get("SERVER_SOFTWARE", "")).startswith("gevent"):
        # For an upgrade, gevent's input is the connection's file itself (else its rfile).
        stream = environ.get("wsgi.input")
        fileno = getattr(getattr(stream, "rfile", stream), "fileno", None)
        if fileno is not None and environ.get("wsgi.url_scheme") != "https":
            # Its own descriptor (the server closes the original): a gevent socket.
            from gevent import socket as gevent_socket

            return gevent_socket.socket(fileno=os.dup(fileno())), "gevent"
    raise HandshakeError("this server does not give its sockets to the application", status=500)


def _upgrade_request(handshake: WSConnection, environ: dict[str, Any]) -> Request:
    """Feed the request's method, path and headers to wsproto; its ``Request`` event."""
    if environ.get("REQUEST_METHOD", "GET") != "GET":
        raise HandshakeError("a WebSocket upgrade must be a GET request")
    headers = [
        (key[5:].replace("_", "-").encode("latin-1"), str(value).encode("latin-1"))
        for key, value in environ.items()
        if key.startswith("HTTP_")
    ]
    target = quote(str(environ.get("PATH_INFO") or "/"), safe="/;:@&=+$,!~*'()%")
    try:
        handshake.initiate_upgrade_connection(headers, target)
        events = list(handshake.events())
    except RemoteProtocolError as exc:
        hint = exc.event_hint
        extra: dict[str, str] = {}
        if isinstance(hint, RejectConnection):
            extra = {name.decode(): value.decode() for name, value in hint.headers}
        # wsproto answers an unknown version with 426, which HTTP requires to carry
        # an Upgrade header, a hop-by-hop header WSGI does not let an app send; 400
        # with Sec-WebSocket-Version is RFC 6455's own example (§4.4).
        raise HandshakeError(str(exc), status=400, headers=extra) from None
    except Exception as exc:  # noqa: BLE001 - h11 refuses a header or path it cannot carry
        raise HandshakeError(f"malformed upgrade request ({exc.__class__.__name__})") from None
    request = next((event for event in events if isinstance(event, Request)), None)
    if request is None:  # pragma: no cover - wsproto raises first
        raise HandshakeError("not a WebSocket upgrade request")
    key = dict(request.extra_headers).get(b"sec-websocket-key", b"")
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        valid_key = False
    if not valid_key:
        raise HandshakeError("Sec-WebSocket-Key is not 16 bytes in base64")
    return request


def _deflate_offered(offers: Any) -> bool:
    """Whether the client offers permessage-deflate in a form accepted here: none of its
    offers limits the server's window below 15 bits (so one shared frame fits all)."""
    found = False
    for offer in offers:
        name, *params = [part.strip() for part in str(offer).split(";")]
        if name != PerMessageDeflate.name:
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "server_max_window_bits" and value.strip(' "') not in ("", "15"):
                return False  # (wsproto would take the first offer: decline them all)
        found = True
    return found


def _wait_for(fd: int, events: int, timeout: float | None) -> bool:
    """Wait until ``fd`` is ready for ``events`` (or hung up); ``False`` after ``timeout`` s."""
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(None if timeout is None else timeout * 1000))


class WebSocket:
    """A server-side WebSocket whose writer sends on it (the relay too, in the writer's idle turns).

    :param environ: the WSGI environ of the upgrade request (or handoff's lean one).
    :param outbox: the queue this socket's messages and heartbeats arrive in.
    :param send_timeout: seconds one write may wait for the peer before it counts
        as stuck and is dropped (``0``: no limit).
    :param max_incoming_bytes: the largest message a client may send (else 1009).
    :param max_incoming_rate: how many messages a client may send per 10 s (else 1008).
    :param deflate: compress messages (permessage-deflate, RFC 7692) when the client offers
        it (``TURBO_WEBSOCKET_DEFLATE``).
    :raises HandshakeError: when the request is not an upgrade this server accepts;
        nothing was sent, so the endpoint answers with its status and headers.
    """

    def __init__(
        self,
        environ: dict[str, Any],
        outbox: Outbox,
        *,
        send_timeout: float,
        max_incoming_bytes: int,
        max_incoming_rate: int,
        deflate: bool = False,
    ) -> None:
        handshake = WSConnection(ConnectionType.SERVER)
        self._request: Request | None = _upgrade_request(handshake, environ)
        self._handshake: WSConnection | None = handshake
        sock, mode = socket_of(environ)
        self.sock: Any = sock
        #: Which server this is (see the endpoint's response): "werkzeug", "gunicorn", ...
        self.mode = mode
        self.outbox = outbox
        self.send_timeout = send_timeout
        self.max_incoming_bytes = max_incoming_bytes
        self.max_incoming_rate = max_incoming_rate
        self._deflate_allowed = deflate
        #: Whether permessage-deflate was negotiated (set by accept()).
        self.deflate = False
        #: The subprotocol chosen at accept (:data:`~turbocast.message.SUBPROTOCOL` or None).
        self.subprotocol: str | None = None
        self.tls = is_tls_socket(sock)
        self.gevent = is_gevent_socket(sock)

        # After the 101 only the frame protocol is kept (not h11's handshake machinery
        # or the request), for as long as the page stays open.
        self._protocol: Connection | None = None
        # The reader feeds the frame protocol while the writer encodes with it. Not
        # under gevent: neither switches inside a call on it (no I/O there).
        self._protocol_lock: AbstractContextManager[object] = (
            _NO_LOCK if self.gevent else threading.Lock()
        )
        # Around each call on a TLS socket's SSL object, with a reader thread (see
        # above); a TLS reader greenlet never switches inside one.
        self._tls_lock: AbstractContextManager[object] = (
            threading.Lock() if self.tls and not self.gevent else _NO_LOCK
        )
        self._send: Sender = sock.sendall
        self._cursor = Cursor()  # what the socket was sent, per channel (replay and live)
        self._reader: Any = None  # "shared", a thread or a greenlet once reading
        self._upgraded = False  # the whole 101 went out
        self._close_sent = False
        self._closing_down = False  # the writer is finishing: the reader stays out of the outbox
        self._stop = False  # a TLS reader must return
        self._finished = False
        self._peer_done = threading.Event()  # the peer's close frame or EOF came
        self._pong_received = True
        self._incoming_count = 0
        self._incoming_len = 0
        self._incoming_window = time.monotonic()

    @property
    def tagged(self) -> bool:
        """Whether the client speaks ``turbocast.v1`` (ids with every message); set by accept()."""
        return self.subprotocol == SUBPROTOCOL

    @property
    def transport(self) -> str:
        """What the metrics count it under: ``"websocket"`` (``turbocast.v1``) or ``"turbo"``."""
        return "websocket" if self.tagged else "turbo"

    # -- the handshake (handler) ------------------------------------------------------------

    def accept(self) -> None:
        """Send the 101 and start reading; from then on the caller is the socket's writer.

        Chooses ``turbocast.v1`` when the client offers it, and permessage-deflate when
        the client offers it and the setting allows, always with
        ``server_no_context_takeover``: each message is compressed on its own, so its
        compressed frame is the same bytes for every such socket and is made once. An
        offer that limits the server's window (``server_max_window_bits`` below 15) is
        declined: the shared frame is compressed with the full window. Sets the send
        timeout first, so the 101 is bounded too.

        :raises Exception: whatever failed; the socket is then already closed, with
            a 1011 close frame if the 101 had gone out, and the server must not
            write an HTTP response on it.
        """
        handshake, self._handshake = self._handshake, None
        request, self._request = self._request, None
        if handshake is None or request is None:
            raise RuntimeError("accept() is called once")
        try:
            self.subprotocol = SUBPROTOCOL if SUBPROTOCOL in request.subprotocols else None
            extensions: list[Extension] = []
            if self._deflate_allowed and _deflate_offered(request.extensions):
                extensions.append(PerMessageDeflate(server_no_context_takeover=True))
            response = handshake.send(
                AcceptConnection(subprotocol=self.subprotocol, extensions=extensions)
            )
            # The frame protocol reads (and inflates) what the client sends.
            self.deflate = any(extension.enabled() for extension in extensions)
            self._protocol = Connection(
                ConnectionType.SERVER, extensions=extensions if self.deflate else None
            )
            self._send = self._set_send_timeout()
            self._send(response)
            self._upgraded = True
            self._start_reading()
        except BaseException:
            self.abort(CLOSE_INTERNAL_ERROR, "handshake failed")
            raise

    def _set_send_timeout(self) -> Sender:
        sock = self.sock
        if self.gevent:
            # The fd is non-blocking and gevent waits for writability itself: its
            # socket timeout bounds a send. Reads: the shared reader never waits, a
            # TLS reader greenlet waits again when its read times out.
            sock.settimeout(self.send_timeout or None)
            return sock.sendall  # type: ignore[no-any-return]
        if self.tls:
            sock.setblocking(False)
            return self._send_tls
        # Blocking, and only sends get a deadline: SO_SNDTIMEO leaves reads alone.
        sock.settimeout(None)
        if self.send_timeout:
            seconds = int(self.send_timeout)
            micros = int((self.send_timeout - seconds) * 1_000_000)
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, micros)
            )
        return sock.sendall  # type: ignore[no-any-return]

    def _start_reading(self) -> None:
        if self.gevent and not self.tls:
            # Not the shared reader: gevent's selector watches only the descriptors
            # registered when its select() began (a new socket waited up to a poll
            # for its first read), and one unregistered and closed under a running
            # select() left a watcher on a descriptor reused by the next socket, whose
            # writer then never woke. Instead a read watcher of gevent's own loop per
            # socket (no greenlet: an idle socket costs a few bytes, not a stack),
            # whose callback reads without waiting, as the shared reader does.
            from gevent import get_hub

            watcher = get_hub().loop.io(self.sock.fileno(), _GEVENT_READ)
            watcher.start(self._on_readable)
            self._reader = watcher
        elif self.gevent:
            import gevent

            self._reader = gevent.spawn(self._read_gevent)
        elif not self.tls:
            self._reader = "shared"
            readers().add(self)
        else:
            thread = threading.Thread(target=self._read_tls, name="turbo-reader-tls", daemon=True)
            thread.start()
            self._reader = thread

    # -- reading (a reader, never the writer) --------------------------------------------------

    def fileno(self) -> int:
        """The socket's file descriptor (for the shared reader)."""
        return int(self.sock.fileno())

    def read_ready(self) -> bool:
        """Read what a plain socket has, without waiting; ``False`` once the peer is gone.

        The shared reader calls this when epoll says the socket is readable.
        """
        try:
            if self.gevent:
                # gevent's own recv would wait; its descriptor is non-blocking, so read it.
                data = os.read(self.sock.fileno(), _RECEIVE_BYTES)
            else:
                data = self.sock.recv(_RECEIVE_BYTES, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""
        if data and self._received(data):
            return True
        self._peer_gone()
        return False

    def _read_tls(self) -> None:
        """A TLS socket's reader thread: waits without the lock, reads under it."""
        fd = self.sock.fileno()
        skip_wait = False
        try:
            while not self._stop:
                if not skip_wait and not _wait_for(fd, select.POLLIN, _TLS_POLL_SECONDS):
                    continue
                data, alive, skip_wait = self._recv_tls()
                if data and not self._received(data):
                    alive = False
                if not alive:
                    break
        except Exception:  # noqa: BLE001 - this socket is done; the writer will see it
            logger.exception("reading a TLS socket failed")
        self._peer_gone()

    def _recv_tls(self) -> tuple[bytes, bool, bool]:
        """What OpenSSL can give now: ``(data, alive, more_may_be_buffered)``."""
        chunks: list[bytes] = []
        with self._tls_lock:
            if self._stop:
                return b"", False, False
            # A record holds up to 16 KiB that OpenSSL keeps, unseen by poll(): read
            # until it wants more from the network (bounded, so the writer gets in).
            for _ in range(16):
                try:
                    data = self.sock.recv(_TLS_RECEIVE_BYTES)
                except ssl.SSLWantReadError:
                    return b"".join(chunks), True, False
                except ssl.SSLWantWriteError:
                    break  # rare (a key update to answer): wait for room, below
                except (OSError, ValueError):
                    return b"".join(chunks), False, False
                if not data:
                    return b"".join(chunks), False, False
                chunks.append(data)
            else:
                return b"".join(chunks), True, True
        _wait_for(self.sock.fileno(), select.POLLOUT, _TLS_POLL_SECONDS)
        return b"".join(chunks), True, False

    def _on_readable(self) -> None:
        """gevent's loop says a plain socket is readable: read it (in the hub, never waiting)."""
        try:
            alive = self.read_ready()
        except Exception:  # noqa: BLE001 - the hub must go on; this socket is done
            logger.exception("reading a socket failed")
            alive = False
        if not alive and self._reader is not None and self._reader != "shared":
            self._reader.stop()

    def _read_gevent(self) -> None:
        """A TLS socket's reader greenlet under gevent: a blocking read, gevent waits for it."""
        try:
            while not self._stop:
                try:
                    data = self.sock.recv(_TLS_RECEIVE_BYTES if self.tls else _RECEIVE_BYTES)
                except TimeoutError:
                    continue  # the socket's timeout is meant for sends: wait again
                except (OSError, ValueError):
                    break  # reset, or closed by the writer
                if not data or not self._received(data):
                    break
        except Exception:  # noqa: BLE001 - this socket is done; the writer will see it
            logger.exception("reading a TLS socket failed")
        self._peer_gone()

    def _received(self, data: bytes) -> bool:
        """Handle bytes from the peer; ``False`` when they cannot be taken any more."""
        protocol = self._protocol
        assert protocol is not None
        try:
            with self._protocol_lock:
                protocol.receive_data(data)
                events = list(protocol.events())
        except LocalProtocolError:
            return False  # more after the closing handshake: nothing to read any more
        for event in events:
            self._handle(event)
        return True

    def _handle(self, event: Event) -> None:
        if isinstance(event, CloseConnection):
            self._peer_done.set()
            if not self._closing_down:
                self.outbox.put_control(event.response())
                self.outbox.close(None, f"client closed ({event.code})")
        elif self._closing_down:
            return
        elif isinstance(event, Ping):
            self.outbox.put_control(event.response())
            self._count_incoming(len(event.payload))
        elif isinstance(event, Pong):
            self._pong_received = True
        elif isinstance(event, (TextMessage, BytesMessage)):
            # Clients are not expected to send anything; small messages are ignored.
            self._incoming_len += len(event.data)
            if event.message_finished:
                size, self._incoming_len = self._incoming_len, 0
                self._count_incoming(size)
            elif self._incoming_len > self.max_incoming_bytes:
                self._refuse(CLOSE_MESSAGE_TOO_BIG, "message too big")

    def _count_incoming(self, size: int) -> None:
        if size > self.max_incoming_bytes:
            self._refuse(CLOSE_MESSAGE_TOO_BIG, "message too big")
            return
        now = time.monotonic()
        if now - self._incoming_window > 10.0:
            self._incoming_window, self._incoming_count = now, 0
        self._incoming_count += 1
        if self._incoming_count > self.max_incoming_rate:
            self._refuse(CLOSE_POLICY_VIOLATION, "too many messages from client")

    def _refuse(self, code: int, reason: str) -> None:
        if self.outbox.closing is None:
            logger.warning(
                "closing socket: %s",
                reason,
                extra={"turbo_close_code": code, "turbo_close_reason": reason},
            )
        self.outbox.close(code, reason)

    def _peer_gone(self) -> None:
        self._peer_done.set()
        if not self._closing_down:
            self.outbox.close(None, "peer disconnected")

    # -- writing (the writer, or the relay in its turn: see _write_now) ------------------------

    def _encode(self, event: Event) -> bytes:
        protocol = self._protocol
        assert protocol is not None
        with self._protocol_lock:
            return protocol.send(event)

    def _send_tls(self, data: bytes | memoryview) -> None:
        """``sendall`` for a non-blocking TLS socket: the lock only around each SSL_write."""
        view = memoryview(data)
        sent = 0
        timeout = self.send_timeout or None
        while sent < len(view):
            with self._tls_lock:
                try:
                    # After a "want", OpenSSL needs the same bytes again: view[sent:] is.
                    sent += self.sock.send(view[sent:])
                    continue
                except ssl.SSLWantWriteError:
                    wanted = select.POLLOUT
                except ssl.SSLWantReadError:
                    wanted = select.POLLIN
            if not _wait_for(self.sock.fileno(), wanted, timeout):
                raise TimeoutError("the peer did not read for send_timeout seconds")

    def _frame(self, message: Message) -> bytes:
        if self.deflate:
            return message.tagged_deflated_frame if self.tagged else message.plain_deflated_frame
        return message.tagged_frame if self.tagged else message.plain_frame

    def _write(self, messages: list[Message], *, replay: bool = False) -> None:
        admitted = [m for m in messages if self._cursor.admit(m)]
        if not admitted:
            return
        frames = [self._frame(m) for m in admitted]
        self._send(b"".join(frames) if len(frames) > 1 else frames[0])
        if replay:  # (live messages are counted once per process, by the relay)
            metrics.replayed(admitted)

    def _write_now(self, message: Message) -> bytes | memoryview:
        """The relay's write, under the write turn: what the socket takes now; returns the rest.

        The rest is a view of the message's shared frame, not a copy: a large message the
        sockets take only part of costs no memory per socket.
        """
        frame = self._frame(message)  # first: if making it fails, the cursor has not moved
        if not self._cursor.admit(message):
            return b""
        try:
            sent = self.sock.send(frame, socket.MSG_DONTWAIT)
        except OSError:  # full (EAGAIN), or gone: the writer's own send finds out which
            sent = 0
        except Exception:  # noqa: BLE001 - admitted: the writer sends it all instead
            logger.exception("the relay could not write to a socket; its writer will")
            sent = 0
        if sent == len(frame):
            return b""
        return memoryview(frame)[sent:] if sent else frame

    def serve(self, replay: list[Message], *, socket_id: str | None = None) -> str:
        """Write until the connection ends, then close it; the writer calls this after accept().

        Heartbeats arrive through the outbox too (:data:`~turbocast.outbox.HEARTBEAT`,
        from the process's heartbeat thread): each sends a ping, and a peer that has
        not answered the previous one by then is dropped. The writer itself keeps
        no timer: it waits for its outbox and nothing else.

        :param replay: messages from the history to send first (the outbox may
            already hold some of them; nothing is sent twice). The list is emptied
            once sent, so a long-lived socket does not keep its replay.
        :param socket_id: the socket's id, told first (``i <id>``) to a ``turbocast.v1``
            client; a plain client is told nothing.
        :returns: why the connection ended, for the log.
        :raises Exception: an unexpected failure, after a 1011 close frame was tried.
            Whatever happened, the reading has stopped and the socket is closed.
        """
        if self._protocol is None or self._finished:
            raise RuntimeError("serve() follows a successful accept(), once")
        outbox = self.outbox
        try:
            if socket_id is not None and self.tagged:
                self._send(identity_frame(socket_id))
            if replay:
                self._write(replay, replay=True)
                replay.clear()
            # Live: a plain socket lets the relay write while the writer waits. Not
            # gevent's, eventlet's (monkey-patched or not) or a TLS socket: those wait
            # for the peer whatever the flags, or have no thread to spare.
            if type(self.sock).__module__ == "socket" and not self.gevent:
                outbox.write_now(self._write_now)
            while True:
                controls, messages, closing = outbox.drain(None)  # with the write turn
                ended = True  # unless the turn returns with the connection open
                try:
                    reason = self._write_turn(outbox.take_rest(), controls, messages, closing)
                    ended = reason is not None
                finally:
                    outbox.end_turn(last=ended)
                if reason is not None:
                    return reason
        except (OSError, LocalProtocolError) as exc:
            # SO_SNDTIMEO, gevent's or our own TLS timeout: the peer stopped reading
            # for send_timeout seconds; or it is gone.
            return f"write failed: {exc.__class__.__name__}"
        except BaseException:
            self._send_close(CLOSE_INTERNAL_ERROR, "internal error")
            raise
        finally:
            self._finish()

    def _write_turn(
        self,
        rest: bytes | memoryview,
        controls: list[object],
        messages: list[Message],
        closing: Closing | None,
    ) -> str | None:
        """Send what one drain gave, in order; returns why the connection ends, or ``None``."""
        if rest:
            self._send(rest)  # the end of a frame the relay began
        for event in controls:
            if event is HEARTBEAT:
                if not self._pong_received:
                    return "heartbeat timeout: no pong"
                self._pong_received = False
                event = Ping()
            assert isinstance(event, Event)
            self._send(self._encode(event))
            if isinstance(event, CloseConnection):
                self._close_sent = True  # the echo of the client's close
                self.outbox.stop_writing_now()  # nothing may follow a close frame
        if messages and not self._close_sent:  # (nothing follows the echo of a close)
            self._write(messages)
        if closing is not None:
            if closing.code is not None:
                self._send_close(closing.code, closing.reason)
            return closing.reason
        return None

    def _send_close(self, code: int, reason: str) -> None:
        if self._close_sent:
            return
        self.outbox.stop_writing_now()  # nothing may follow a close frame
        try:
            self._send(self._encode(CloseConnection(code=code, reason=reason)))
            self._close_sent = True
        except Exception:  # noqa: BLE001 - the peer may already be gone; closing anyway
            logger.debug("close frame not sent", exc_info=True)

    def abort(self, code: int, reason: str) -> None:
        """Close after a failure: a close frame with ``code`` if the 101 went out, then the end.

        For the writer's side only (the handler when something failed before or
        around :meth:`serve`). Idempotent; never raises.

        :param code: the close code, e.g. :data:`CLOSE_INTERNAL_ERROR`.
        :param reason: a short text for the close frame.
        """
        if self._finished:
            return
        try:
            if self._upgraded:
                self._send_close(code, reason)
        finally:
            try:
                self._finish()
            except Exception:  # noqa: BLE001 - abort never raises
                logger.debug("abort did not finish cleanly", exc_info=True)

    # -- closing (the writer only) -------------------------------------------------------------

    def _finish(self) -> None:
        """FIN, the peer's answer (briefly), stop reading, close. Once, whatever happened."""
        if self._finished:
            return
        self._finished = True
        self._closing_down = True
        self.outbox.stop_writing_now()  # the relay writes nothing more to this socket
        sock = self.sock
        if not self.tls:
            # FIN after the last frame: the peer answers our close and hangs up. (A
            # TLS socket cannot half-close; its peer answers the close frame itself.)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        try:
            if self._close_sent and self._reader is not None:
                self._peer_done.wait(_CLOSE_WAIT)
            self._stop_reading()
        finally:
            # Nothing more goes either way, whatever the server does with the socket next.
            with contextlib.suppress(OSError), self._tls_lock:
                sock.shutdown(socket.SHUT_RDWR)
            # Werkzeug closes it itself after the response, which then fails quietly
            # (a broken pipe) instead of finding a closed descriptor.
            if self.mode != "werkzeug":
                with contextlib.suppress(OSError):
                    sock.close()

    def _stop_reading(self) -> None:
        """Stop reading; the reader touches the socket no more once this returns."""
        reader, self._reader = self._reader, None
        if reader is None:
            return
        if reader == "shared":
            readers().remove(self)
            return
        if self.gevent and not self.tls:
            reader.stop()  # a loop watcher: stopped, it calls back no more
            reader.close()
            return
        # A TLS reader: shutting the socket down wakes it (EOF); it sees _stop.
        self._stop = True
        with contextlib.suppress(OSError), self._tls_lock:
            self.sock.shutdown(socket.SHUT_RDWR)
        reader.join(_CLOSE_WAIT)
        if self.gevent and not reader.dead:  # pragma: no cover - closing wakes it
            reader.kill(block=False)
        elif not self.gevent and reader.is_alive():  # pragma: no cover - poll has a timeout
            logger.warning("a TLS reader did not stop in time")
