"""The relay's pub/sub connection, read with hiredis directly.

redis-py's ``PubSub.get_message`` costs about 5 µs of Python per message (a
readiness poll, the parser's buffer, a dict per message) — a large share of
what the relay spends on one. Here redis-py still opens the connection (TLS,
``unix://``, AUTH, SELECT, every URL option) and packs the commands, but the
replies are read off its socket in one ``recv`` per batch and parsed by
hiredis's C reader: every message that arrived together is handed over at once.

Only the relay's listener thread uses a :class:`Subscriber`. It hands over
messages and Redis's confirmations of each SUBSCRIBE, in the order Redis sent
them: a channel counts as subscribed only once Redis confirmed it. Silence is
checked: after ``health_check_interval`` seconds without a byte from Redis it
sends ``PING`` (answered on a subscribed connection too), and when that goes
unanswered for ``timeout`` seconds the connection counts as lost.
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
#: The kind of a published message in what :meth:`Subscriber.read` returns.
MESSAGE = b"message"
#: The kind of Redis's confirmation of a SUBSCRIBE (one per channel).
SUBSCRIBED = b"subscribe"
_RECV_BYTES = 1 << 16

#: What :meth:`Subscriber.read` returns: ``(kind, channel, payload)``.
Event = tuple[bytes, bytes, bytes]


class Subscriber:
    """One Redis pub/sub connection for the relay thread.

    :param redis_url: the Redis server (``redis://``, ``rediss://`` or ``unix://``).
    :param health_check_interval: seconds of silence after which Redis is pinged;
        ``0`` turns the check off.
    :param timeout: seconds to connect, and for an unanswered ``PING``.
    :param poll_interval: the longest :meth:`read` waits, so the relay can look
        at its stop flag and registry.
    :raises redis.ConnectionError: when Redis cannot be reached.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        health_check_interval: float = 15.0,
        timeout: float = 5.0,
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
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
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
        self._timeout = timeout
        self._heard = time.monotonic()
        self._pinged = False

    def subscribe(self, *channels: bytes) -> None:
        """Subscribe to ``channels``; :meth:`read` hands over Redis's confirmation of each.

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

    def read(self) -> list[Event]:
        """Wait up to the poll interval; return every message and confirmation that arrived.

        :returns: ``(kind, channel, payload)`` in the order Redis sent them: kind
            :data:`MESSAGE` with the published payload, or :data:`SUBSCRIBED` (payload
            ``b""``) when Redis confirms a SUBSCRIBE; empty when nothing came (or
            only pongs and unsubscribe confirmations).
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
        events: list[Event] = []
        try:
            reply = reader.gets()
            while reply is not False:
                # (RESP3 pushes are a list subclass; this connection speaks RESP2.)
                if isinstance(reply, list) and reply[0] == MESSAGE:
                    events.append((MESSAGE, reply[1], reply[2]))
                elif isinstance(reply, list) and reply[0] == SUBSCRIBED:
                    events.append((SUBSCRIBED, reply[1], b""))
                elif isinstance(reply, hiredis.ReplyError):
                    raise redis.ResponseError(str(reply))
                reply = reader.gets()
        except hiredis.ProtocolError as exc:
            raise redis.ConnectionError(f"Protocol error from Redis: {exc}") from exc
        return events

    def _check_health(self) -> None:
        if not self._interval:
            return
        silent = time.monotonic() - self._heard
        if self._pinged and silent >= self._interval + self._timeout:
            raise redis.ConnectionError(f"Redis did not answer PING for {silent:.0f}s")
        if not self._pinged and silent >= self._interval:
            self._send("PING")
            self._pinged = True

    def close(self) -> None:
        """Close the connection."""
        self._conn.disconnect()
