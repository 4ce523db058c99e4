"""The relay's pub/sub connection, read with hiredis directly.

redis-py's ``PubSub.get_message`` costs about 5 µs of Python per message (a
readiness poll, the parser's buffer, a dict per message) — a large share of
what the relay spends on one. Here redis-py still opens the connection (TLS,
``unix://``, AUTH, SELECT, every URL option) and packs the commands, but the
replies are read off its socket in one ``recv`` per batch and parsed by
hiredis's C reader: every message that arrived together is handed over at once.

Only the relay thread uses a :class:`Subscriber`. Silence is checked: after
``health_check_interval`` seconds without a byte from Redis it sends ``PING``
(answered on a subscribed connection too), and when that goes unanswered for as
long again the connection counts as lost.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# A subscribed connection's replies: [kind, channel, payload-or-count].
_MESSAGE = b"message"
_PONG = b"pong"
_RECV_BYTES = 1 << 16


class Subscriber:
    """One Redis pub/sub connection for the relay thread.

    :param redis_url: the Redis server (``redis://``, ``rediss://`` or ``unix://``).
    :param health_check_interval: seconds of silence after which Redis is pinged;
        ``0`` turns the check off.
    :param poll_interval: the longest :meth:`read` waits, so the relay can look
        at its stop flag and registry.
    :raises redis.ConnectionError: when Redis cannot be reached.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        health_check_interval: float = 15.0,
        poll_interval: float = 1.0,
    ) -> None:
        # redis-py makes the connection (its own health checks off: they would
        # read from the socket behind this class's back) and retries nothing.
        # RESP2: subscribed replies are plain arrays.
        pool = redis.ConnectionPool.from_url(
            redis_url,
            protocol=2,
            health_check_interval=0,
            socket_keepalive=True,
            socket_connect_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )
        self._conn: Any = pool.make_connection()
        self._conn.connect()  # type: ignore[no-untyped-call]
        sock = getattr(self._conn, "_sock", None)
        if sock is None:  # pragma: no cover - redis-py keeps its socket in _sock
            raise redis.ConnectionError("redis-py connection has no socket")
        sock.settimeout(poll_interval)
        self._sock: socket.socket = sock
        self._reader = hiredis.Reader()
        self._interval = health_check_interval
        self._heard = time.monotonic()
        self._pinged = False

    def subscribe(self, *channels: bytes) -> None:
        """Subscribe to ``channels`` (the confirmations are read, and skipped, by :meth:`read`).

        :param channels: channel names.
        """
        self._send("SUBSCRIBE", *channels)

    def unsubscribe(self, *channels: bytes) -> None:
        """Unsubscribe from ``channels``.

        :param channels: channel names.
        """
        self._send("UNSUBSCRIBE", *channels)

    def _send(self, *args: bytes | str) -> None:
        self._conn.send_packed_command(self._conn.pack_command(*args), check_health=False)

    def read(self) -> list[tuple[bytes, bytes]]:
        """Wait up to the poll interval; return every message that arrived, in order.

        :returns: ``(channel, payload)`` pairs; empty when nothing came (or only
            confirmations and pongs).
        :raises redis.ConnectionError: when the connection is closed or silent
            past its health check.
        :raises redis.ResponseError: when Redis answers a command with an error.
        """
        try:
            data = self._sock.recv(_RECV_BYTES)
        except TimeoutError:
            self._check_health()
            return []
        except OSError as exc:
            raise redis.ConnectionError(f"Error reading from Redis: {exc}") from exc
        if not data:
            raise redis.ConnectionError("Connection closed by server.")
        self._heard = time.monotonic()
        self._pinged = False
        reader = self._reader
        reader.feed(data)
        messages: list[tuple[bytes, bytes]] = []
        try:
            reply = reader.gets()
            while reply is not False:
                # (RESP3 pushes are a list subclass; this connection speaks RESP2.)
                if isinstance(reply, list) and reply[0] == _MESSAGE:
                    messages.append((reply[1], reply[2]))
                elif isinstance(reply, hiredis.ReplyError):
                    raise redis.ResponseError(str(reply))
                reply = reader.gets()
        except hiredis.ProtocolError as exc:
            raise redis.ConnectionError(f"Protocol error from Redis: {exc}") from exc
        return messages

    def _check_health(self) -> None:
        if not self._interval:
            return
        silent = time.monotonic() - self._heard
        if self._pinged and silent >= 2 * self._interval:
            raise redis.ConnectionError(f"Redis did not answer PING for {silent:.0f}s")
        if not self._pinged and silent >= self._interval:
            self._send("PING")
            self._pinged = True

    def close(self) -> None:
        """Close the connection."""
        self._conn.disconnect()
