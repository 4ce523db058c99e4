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

On a Redis Cluster the relay's pub/sub is sharded (``SSUBSCRIBE``): each channel
lives on the shard that owns its hash slot, so a :class:`ClusterSubscriber` holds one
:class:`Subscriber` per shard it needs and waits on all of them at once. When the
cluster moves a slot (a resharding, a failover), Redis unsubscribes the slot's
channels on its own (an ``sunsubscribe`` the relay did not ask for) or answers
``MOVED``, or the shard's connection breaks: each counts as a lost connection, and
the listener connects again to every shard as the cluster is now, subscribes, and
catches up from the histories, as after any outage.
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from .topology import Client, parse

# A subscribed connection's replies: [kind, channel, payload-or-count].
#: The kind of a published message in what :meth:`Subscriber.read` returns.
MESSAGE = b"message"
#: The kind of Redis's confirmation of a SUBSCRIBE (one per channel).
SUBSCRIBED = b"subscribe"
#: The kind of an unsubscribe from a shard (only a sharded :class:`Subscriber` hands
#: these over, to its :class:`ClusterSubscriber`): asked for, or the slot moved.
UNSUBSCRIBED = b"sunsubscribe"
_KINDS = {
    b"message": MESSAGE,
    b"smessage": MESSAGE,
    b"subscribe": SUBSCRIBED,
    b"ssubscribe": SUBSCRIBED,
    b"sunsubscribe": UNSUBSCRIBED,
}
# What a connection to a shard or a server is opened with: redis-py's own health checks
# off (they would read from the socket behind this module's back), no retries inside
# redis-py (the listener backs off itself), RESP2 (subscribed replies are plain arrays).
_OPTIONS = {"protocol": 2, "health_check_interval": 0, "socket_keepalive": True}
_RECV_BYTES = 1 << 16

#: What :meth:`Subscriber.read` returns: ``(kind, channel, payload)``.
Event = tuple[bytes, bytes, bytes]


class Subscriber:
    """One Redis pub/sub connection for the relay thread.

    :param redis_url: the Redis server: one server (``redis://``, ``rediss://``,
        ``unix://``) or the primary Sentinel names (``redis+sentinel://``); see
        :mod:`turbocast.topology`. Not used when ``connection`` is given.
    :param health_check_interval: seconds of silence after which Redis is pinged;
        ``0`` turns the check off.
    :param timeout: seconds to connect, and for an unanswered ``PING``.
    :param poll_interval: the longest :meth:`read` waits, so the relay can look
        at its stop flag and registry.
    :param connection: a redis-py connection to use instead (one shard's, from a
        :class:`ClusterSubscriber`), not yet connected.
    :param sharded: subscribe with ``SSUBSCRIBE`` (a Redis Cluster's shard).
    :raises redis.ConnectionError: when Redis cannot be reached.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        health_check_interval: float = 15.0,
        timeout: float = 5.0,
        poll_interval: float = 1.0,
        connection: Any = None,
        sharded: bool = False,
    ) -> None:
        if connection is None:
            if redis_url is None:
                raise ValueError("a Subscriber needs a redis_url or a connection")
            pool = parse(redis_url).connection_pool(
                **_OPTIONS,
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
            connection = pool.make_connection()
        self._conn: Any = connection
        self._sharded = sharded
        self._conn.connect()
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
        self._send("SSUBSCRIBE" if self._sharded else "SUBSCRIBE", *channels)

    def unsubscribe(self, *channels: bytes) -> None:
        """Unsubscribe from ``channels``.

        :param channels: channel names.
        """
        self._send("SUNSUBSCRIBE" if self._sharded else "UNSUBSCRIBE", *channels)

    def _send(self, *args: bytes | str) -> None:
        self._conn.send_packed_command(self._conn.pack_command(*args), check_health=False)

    def read(self) -> list[Event]:
        """Wait up to the poll interval; return every message and confirmation that arrived.

        :returns: ``(kind, channel, payload)`` in the order Redis sent them: kind
            :data:`MESSAGE` with the published payload, or :data:`SUBSCRIBED` (payload
            ``b""``) when Redis confirms a SUBSCRIBE; empty when nothing came (or
            only pongs and unsubscribe confirmations). A sharded one also hands over
            every ``sunsubscribe`` (kind :data:`UNSUBSCRIBED`).
        :raises redis.ConnectionError: when the connection is closed or silent
            past its health check.
        :raises redis.ResponseError: when Redis answers a command with an error.
        """
        try:
            data = self._sock.recv(_RECV_BYTES)
        except TimeoutError:
            self.check_health()
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
        sharded = self._sharded
        try:
            reply = reader.gets()
            while reply is not False:
                # (RESP3 pushes are a list subclass; this connection speaks RESP2.)
                if isinstance(reply, list) and reply[0] in _KINDS:
                    kind = _KINDS[reply[0]]
                    if kind == MESSAGE:
                        events.append((MESSAGE, reply[1], reply[2]))
                    elif kind == SUBSCRIBED:
                        events.append((SUBSCRIBED, reply[1], b""))
                    elif sharded:
                        events.append((UNSUBSCRIBED, reply[1], b""))
                elif isinstance(reply, hiredis.ReplyError):
                    raise redis.ResponseError(str(reply))
                reply = reader.gets()
        except hiredis.ProtocolError as exc:
            raise redis.ConnectionError(f"Protocol error from Redis: {exc}") from exc
        return events

    def fileno(self) -> int:
        """The connection's socket, to wait on several at once."""
        return self._sock.fileno()

    def check_health(self) -> None:
        """Ping Redis after a silence; raise when the ping went unanswered.

        :raises redis.ConnectionError: silent past ``health_check_interval`` + ``timeout``.
        """
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


class ClusterSubscriber:
    """Sharded pub/sub on a Redis Cluster: a :class:`Subscriber` per shard the channels need.

    Channels go to the primary that owns their hash slot in the cluster's slot map as
    it was when this was made; a slot that moves afterwards breaks this connection (see
    the module's description), and the listener makes a new one.

    :param client: the cluster's client (its slot map is refreshed here); its node
        clients open the shards' connections, so it must be made with
        :data:`SHARD_OPTIONS`.
    :param health_check_interval: as for :class:`Subscriber`, per shard.
    :param timeout: as for :class:`Subscriber`.
    :param poll_interval: the longest :meth:`read` waits, on every shard at once.
    :raises redis.ConnectionError: when the cluster cannot be reached or has no map.
    """

    def __init__(
        self,
        client: Client,
        *,
        health_check_interval: float = 15.0,
        timeout: float = 5.0,
        poll_interval: float = 1.0,
    ) -> None:
        self._client = client
        self._interval = health_check_interval
        self._timeout = timeout
        self._poll_ms = int(poll_interval * 1000)
        self._shards: dict[str, Subscriber] = {}
        self._poller = select.poll()
        self._by_fd: dict[int, Subscriber] = {}
        self._where: dict[bytes, str] = {}
        self._leaving: dict[bytes, int] = {}
        try:
            client.nodes_manager.initialize()
        except (RedisClusterException, redis.RedisError) as exc:
            raise redis.ConnectionError(f"no Redis Cluster slot map: {exc}") from exc

    def _shard_of(self, channel: bytes) -> Subscriber:
        try:
            node = self._client.get_node_from_key(channel)
        except RedisClusterException as exc:  # a slot no primary serves (mid-failover)
            raise redis.ConnectionError(f"no shard for {channel!r}: {exc}") from exc
        shard = self._shards.get(node.name)
        if shard is None:
            connection = self._client.get_redis_connection(node).connection_pool
            shard = Subscriber(
                health_check_interval=self._interval,
                timeout=self._timeout,
                poll_interval=self._poll_ms / 1000,
                connection=connection.make_connection(),
                sharded=True,
            )
            self._shards[node.name] = shard
            self._by_fd[shard.fileno()] = shard
            self._poller.register(shard.fileno(), select.POLLIN)
        self._where[channel] = node.name
        return shard

    def subscribe(self, *channels: bytes) -> None:
        """``SSUBSCRIBE`` each channel on its shard; confirmations come through :meth:`read`.

        :param channels: channel names.
        """
        # One SSUBSCRIBE per hash slot: Redis refuses channels of several slots in one.
        groups: dict[int, tuple[Subscriber, list[bytes]]] = {}
        for channel in channels:
            shard = self._shard_of(channel)
            slot = self._client.keyslot(channel)
            groups.setdefault(slot, (shard, []))[1].append(channel)
        for shard, names in groups.values():
            shard.subscribe(*names)

    def unsubscribe(self, *channels: bytes) -> None:
        """``SUNSUBSCRIBE`` each channel on the shard it was subscribed on.

        :param channels: channel names.
        """
        for channel in channels:
            name = self._where.pop(channel, None)
            if name is not None:
                self._leaving[channel] = self._leaving.get(channel, 0) + 1
                self._shards[name].unsubscribe(channel)

    def read(self) -> list[Event]:
        """Wait up to the poll interval on every shard; what arrived, as :meth:`Subscriber.read`.

        :raises redis.ConnectionError: a shard's connection broke or fell silent, or a
            shard unsubscribed a channel on its own (its slot moved).
        :raises redis.ResponseError: a shard refused a command (``MOVED``: the slot moved).
        """
        ready = {fd for fd, _ in self._poller.poll(self._poll_ms)}
        events: list[Event] = []
        for fd, shard in self._by_fd.items():
            if fd not in ready:
                shard.check_health()
                continue
            for event in shard.read():
                if event[0] != UNSUBSCRIBED:
                    events.append(event)
                    continue
                channel = event[1]
                left = self._leaving.get(channel, 0)
                if left <= 0:
                    raise redis.ConnectionError(
                        f"the cluster moved the slot of {channel!r} (its shard unsubscribed it)"
                    )
                if left == 1:
                    del self._leaving[channel]
                else:
                    self._leaving[channel] = left - 1
        return events

    def close(self) -> None:
        """Close every shard's connection."""
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()
        self._by_fd.clear()


#: Options the cluster client of a :class:`ClusterSubscriber` needs (with its timeouts).
SHARD_OPTIONS = {**_OPTIONS, "retry": Retry(NoBackoff(), 0)}
