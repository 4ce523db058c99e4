"""One browser's WebSocket, with exactly one writer.

simple-websocket (flask-sock's engine) answers pings, echoes close frames and
sends its own heartbeat pings from its reader thread while the handler thread
sends data: two threads writing to one socket can interleave frames. Here the
reading is done by the process's one reader (:mod:`app.turbo.readers`, instead
of a thread per socket) and only reads; everything it wants sent goes through
the socket's :class:`~app.turbo.outbox.Outbox`, and the handler thread — the
one writer — sends data, control replies and heartbeats alike.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from typing import Any

from simple_websocket import Server
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

from .handoff import is_gevent_socket
from .message import SUBPROTOCOL, Cursor, Message
from .outbox import HEARTBEAT, Outbox
from .readers import SharedReader, readers

logger = logging.getLogger("turbocast.socket")

#: Close code when the server shuts down; clients should reconnect elsewhere.
CLOSE_GOING_AWAY = 1001
#: Close code when a client floods the server with frames.
CLOSE_POLICY_VIOLATION = 1008
#: Close code when a client sends a frame larger than ``TURBO_MAX_INCOMING_BYTES``.
CLOSE_MESSAGE_TOO_BIG = 1009


class TurboConnection(Server):  # type: ignore[misc]
    """A server-side WebSocket whose handler thread is its only writer.

    The handshake happens in the constructor (in the handler thread); then a
    reader thread starts. Call :meth:`serve` from the handler thread: it returns
    when the connection ends.

    :param environ: the WSGI environ of the upgrade request.
    :param outbox: the queue this socket's frames (and heartbeats) arrive in.
    :param send_timeout: seconds one write may block before the peer counts as
        stuck and the connection is dropped (``0``: no limit).
    :param max_incoming_bytes: the largest message a client may send.
    :param max_incoming_rate: how many messages a client may send per 10 seconds.
    """

    def __init__(
        self,
        environ: dict[str, Any],
        outbox: Outbox,
        *,
        send_timeout: float = 30.0,
        max_incoming_bytes: int = 4096,
        max_incoming_rate: int = 50,
    ) -> None:
        self.outbox = outbox
        self.max_incoming_bytes = max_incoming_bytes
        self.max_incoming_rate = max_incoming_rate
        self._incoming_count = 0
        self._incoming_len = 0
        self._incoming_window = time.monotonic()
        self._eof = threading.Event()
        # ping_interval=None: the reader must not send pings itself. SharedReader:
        # no reader thread per socket; the process's one reader reads this socket.
        super().__init__(
            environ,
            ping_interval=None,
            max_message_size=None,
            thread_class=SharedReader,
        )
        # The handshake is done: keep only the frame protocol, not the HTTP
        # handshake machinery (h11) or the request's environ, for as long as the
        # page stays open.
        self.ws: Any = self.ws.connection
        self.environ: dict[str, Any] = {}
        if send_timeout and is_gevent_socket(self.sock):
            # A gevent socket (gunicorn -k gevent, gevent's own server): the fd is
            # non-blocking and gevent waits for writability itself, so its socket
            # timeout is what bounds a send. The shared reader reads the raw socket
            # without waiting, so reads are not affected.
            self.sock.settimeout(send_timeout)
        elif send_timeout:
            # Only sends get a deadline: SO_SNDTIMEO leaves the reader's recv alone.
            seconds = int(send_timeout)
            micros = int((send_timeout - seconds) * 1_000_000)
            self.sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, micros)
            )

    # -- reading (the process's reader thread) ----------------------------------

    def read_ready(self) -> bool:
        """Read what the client sent; ``False`` when it has gone (EOF, reset, bad frames)."""
        # The real socket, not gevent's wrapper, which would wait instead of raising.
        raw: Any = getattr(self.sock, "_sock", None) or self.sock
        try:
            data = raw.recv(self.receive_bytes, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""
        if data:
            try:
                self.ws.receive_data(data)
                self._handle_events()
                return True
            except LocalProtocolError:
                pass
            except Exception:  # noqa: BLE001 - whatever it was, this socket is done
                logger.exception("turbocast: reading a socket failed")
        # The peer is gone: wake the writer.
        self._eof.set()
        self.outbox.close(None, "peer disconnected")
        return False

    def _handle_events(self) -> bool:
        for event in self.ws.events():
            if isinstance(event, Request):
                # The handshake runs in the handler thread, before the reader starts,
                # so answering here is still the one writer. No permessage-deflate: a
                # frame is then the same bytes for every socket and is encoded once.
                self.subprotocol = SUBPROTOCOL if SUBPROTOCOL in event.subprotocols else None
                self.sock.sendall(self.ws.send(AcceptConnection(subprotocol=self.subprotocol)))
            elif isinstance(event, CloseConnection):
                self.close_reason = event.code
                self.close_message = event.reason
                self.outbox.put_control(event.response())
                self.outbox.close(None, f"client closed ({event.code})")
            elif isinstance(event, Ping):
                self.outbox.put_control(event.response())
                self._count_incoming(len(event.payload))
            elif isinstance(event, Pong):
                self.pong_received = True
            elif isinstance(event, (TextMessage, BytesMessage)):
                # Clients are not expected to send anything; small frames are ignored.
                self._incoming_len += len(event.data)
                if event.message_finished:
                    size, self._incoming_len = self._incoming_len, 0
                    self._count_incoming(size)
                elif self._incoming_len > self.max_incoming_bytes:
                    self._refuse(CLOSE_MESSAGE_TOO_BIG, "message too big")
        # Keep reading until EOF: after a close the peer still has to hang up.
        return True

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
                "turbocast: closing socket: %s",
                reason,
                extra={"turbo_close_code": code, "turbo_close_reason": reason},
            )
        self.outbox.close(code, reason)

    # -- the writer (handler thread) --------------------------------------------

    @property
    def tagged(self) -> bool:
        """Whether the client speaks ``turbocast.v1`` (ids with every message)."""
        return self.subprotocol == SUBPROTOCOL

    def _write(self, messages: list[Message], cursor: Cursor) -> None:
        tagged = self.tagged
        frames = [m.tagged_frame if tagged else m.plain_frame for m in messages if cursor.admit(m)]
        if frames:
            self.sock.sendall(b"".join(frames) if len(frames) > 1 else frames[0])

    def serve(self, replay: list[Message] | None = None) -> str:
        """Write what the outbox holds until the connection ends; the handler thread calls this.

        Heartbeats arrive through the outbox too (:data:`~app.turbo.outbox.HEARTBEAT`,
        from the relay's heartbeat thread): each sends a ping, and a peer that has
        not answered the previous one by then is dropped. The writer itself keeps
        no timer: it waits for its outbox and nothing else.

        :param replay: messages from the history to send first (the outbox may
            already hold some of them; nothing is sent twice). The list is emptied
            once sent, so a long-lived socket does not keep its replay.
        :returns: why the connection ended, for the log.
        """
        cursor = Cursor()
        drain = self.outbox.drain
        try:
            if replay:
                self._write(replay, cursor)
                replay.clear()
            while True:
                controls, messages, closing = drain(None)
                for event in controls:
                    if event is HEARTBEAT:
                        if not self.pong_received:
                            return "heartbeat timeout: no pong"
                        self.pong_received = False
                        event = Ping()
                    self.sock.sendall(self.ws.send(event))
                if messages:
                    self._write(messages, cursor)
                if closing is not None:
                    if closing.code is not None:
                        self._send_close(closing.code, closing.reason)
                    return closing.reason
        except (OSError, LocalProtocolError) as exc:
            # EAGAIN (SO_SNDTIMEO) or gevent's timeout: the peer stopped reading for
            # send_timeout seconds.
            return f"write failed: {exc.__class__.__name__}"
        finally:
            self.connected = False
            self._shutdown()

    def _send_close(self, code: int, reason: str) -> None:
        try:
            self.sock.sendall(self.ws.send(CloseConnection(code=code, reason=reason)))
        except Exception:  # noqa: BLE001 - the peer may already be gone; closing anyway
            logger.debug("turbocast: close frame not sent", exc_info=True)

    def _shutdown(self) -> None:
        # FIN after the last frame; give the peer a moment to answer with its own.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        self._eof.wait(timeout=2.0)
        readers().remove(self)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
