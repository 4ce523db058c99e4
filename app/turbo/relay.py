"""The relay: which sockets of this process listen to which channels, and the fan-out to them.

One relay per web process (see ``TurboState.relay``). Its registry maps each
channel to the outboxes of the local sockets that listen to it. Its
:class:`~turbocast.listener.Listener` thread keeps Redis's subscriptions equal
to the registry's channels and hands every message to :meth:`Relay.deliver`,
which puts it into the outbox of every socket on that channel (an outbox whose
writer is idle writes it to its socket at once, without waiting: see
:mod:`turbocast.outbox`); it never blocks on a socket. Its :class:`~turbocast.heartbeat.Heartbeat`
thread beats every outbox.

A socket's handler calls :meth:`Relay.attach`, waits for the
:class:`Subscription`'s ``ready`` event (Redis confirmed every channel), reads
its history, and only then starts writing; :meth:`Relay.detach` when it ends.
"""

from __future__ import annotations

import json
import logging
import os
import socket as _socket
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import metrics
from .channels import control_channel
from .control import CLOSE_SIGNED_OUT, Kind
from .heartbeat import Heartbeat
from .history import History
from .listener import Listener, ListenerState, PubSub
from .message import Message
from .outbox import Outbox
from .subscriber import SHARD_OPTIONS, ClusterSubscriber, Subscriber
from .topology import parse, publish

logger = logging.getLogger("turbocast.relay")

# Every relay of this process, for a graceful shutdown (see :func:`close_all_sockets`).
_RELAYS: weakref.WeakSet[Relay] = weakref.WeakSet()

#: Close code sent to every socket when the web process shuts down.
CLOSE_GOING_AWAY = 1001

#: How long a relay remembers a sign-out, to refuse a socket admitted meanwhile with
#: the old identity (a handshake whose cookie left the browser before the sign-out's
#: answer came back). A session id is never used again once rotated: remembered long.
#: A user may sign in again at once: remembered briefly (a refused client retries).
SESSION_ORDER_SECONDS = 3600.0
USER_ORDER_SECONDS = 5.0
_MAX_ORDERS = 10_000

#: A relay's report (``flask turbo sockets``) lists each socket up to this many sockets;
#: above it, only the counts per channel (the reply stays one small pub/sub message).
REPORT_MAX_SOCKETS = 50

#: How many characters of a session, socket or user id a report shows.
REPORT_ID_CHARS = 8


class Subscription:
    """What :meth:`Relay.attach` hands back: one socket's channels, outbox, session and id.

    ``ready`` is set once Redis has confirmed the subscription to every channel:
    from then on, everything published on them reaches the outbox, except what
    excludes ``session`` or ``socket``.
    """

    __slots__ = ("channels", "outbox", "session", "socket", "user", "ready")

    def __init__(
        self,
        channels: tuple[bytes, ...],
        outbox: Outbox,
        session: bytes | None = None,
        socket: bytes | None = None,
        user: bytes | None = None,
    ) -> None:
        self.channels = channels
        self.outbox = outbox
        self.session = session
        self.socket = socket
        self.user = user
        self.ready = threading.Event()


@dataclass(frozen=True)
class RelayState:
    """What :meth:`Relay.state` reports: a snapshot, for health checks."""

    #: Started in this process (not inherited through a fork) and its listener thread alive.
    running: bool
    #: The listener thread and its pub/sub connection.
    listener: ListenerState
    #: The heartbeat thread is alive; ``None``: heartbeats are off (``heartbeat_interval`` 0).
    heartbeat: bool | None


class Relay:
    """Forwards Redis pub/sub messages to the outboxes of this process's sockets.

    :param redis_url: the Redis server, a Redis Cluster or Sentinels (the forms of
        :mod:`turbocast.topology`).
    :param prefix: the channel namespace, used for the relay's own control channel.
    :param timeout: seconds for every Redis call the relay makes (connect, wake-up,
        an unanswered health-check ``PING``).
    :param health_check_interval: seconds of silence after which the pub/sub
        connection is pinged, so a dead link is noticed.
    :param history: reads channel histories for the catch-up after an outage;
        ``None`` turns the catch-up off (tests).
    :param heartbeat_interval: seconds between heartbeats to every socket's
        outbox, from a thread of their own; ``0``: none.
    :param pubsub_factory: opens a fresh pub/sub connection (by default a
        :class:`~turbocast.subscriber.Subscriber`); tests pass a fake.
    :param waker: publishes to the control channel; tests pass a fake.
    :param sender: publishes a report's reply ``(channel, data)``; tests pass a fake.
        Default: on the relay's Redis client (none with a fake ``waker``).
    :param thread_class: the class of the listener and heartbeat threads.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        prefix: str = "turbo",
        timeout: float = 5.0,
        health_check_interval: float = 15.0,
        history: History | None = None,
        heartbeat_interval: float = 0.0,
        pubsub_factory: Callable[[], PubSub] | None = None,
        waker: Callable[[str], object] | None = None,
        sender: Callable[[str, bytes], object] | None = None,
        thread_class: type[threading.Thread] = threading.Thread,
    ) -> None:
        redis_run_id: Callable[[], str | None] = lambda: None  # noqa: E731
        self._prefix = prefix
        self._sender = sender
        topology = parse(redis_url)
        if waker is None:
            # No retries inside redis-py: the listener does its own backoff, visibly.
            client = topology.client(
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
            sharded = topology.sharded
            waker = lambda channel: publish(client, sharded, channel, b"")  # noqa: E731
            if sender is None:
                self._sender = lambda channel, data: publish(client, sharded, channel, data)
            if not topology.sharded:  # (a cluster has a run_id per node)
                redis_run_id = lambda: _run_id(client)  # noqa: E731
        if pubsub_factory is None and topology.sharded:
            shards = topology.client(
                **SHARD_OPTIONS, socket_connect_timeout=timeout, socket_timeout=timeout
            )
            pubsub_factory = lambda: ClusterSubscriber(  # noqa: E731
                shards, health_check_interval=health_check_interval, timeout=timeout
            )
        elif pubsub_factory is None:
            pubsub_factory = lambda: Subscriber(  # noqa: E731
                redis_url, health_check_interval=health_check_interval, timeout=timeout
            )
        self._lock = threading.Lock()
        # channel -> outboxes; values are replaced, never mutated, so the listener
        # thread reads them without the lock.
        self._registry: dict[bytes, frozenset[Outbox]] = {}
        # outbox -> its socket's session id, for messages that exclude a session.
        self._sessions: dict[Outbox, bytes] = {}
        # outbox -> its socket's id, for messages that exclude one socket.
        self._sockets: dict[Outbox, bytes] = {}
        # outbox -> its socket's user id, for disconnect_user.
        self._users: dict[Outbox, bytes] = {}
        # Sign-outs received: (monotonic time, kind, id), oldest first.
        self._orders: deque[tuple[float, Kind, bytes]] = deque(maxlen=_MAX_ORDERS)
        self._waiting: list[Subscription] = []
        self._started = False
        self._listener = Listener(
            self,
            prefix=prefix,
            control_channel=f"{prefix}:relay:{uuid.uuid4().hex}",
            orders_channel=control_channel(prefix),
            pubsub_factory=pubsub_factory,
            waker=waker,
            history=history,
            redis_run_id=redis_run_id,
            thread_class=thread_class,
        )
        self._heartbeat = (
            Heartbeat(heartbeat_interval, self.outboxes, thread_class=thread_class)
            if heartbeat_interval > 0
            else None
        )
        #: The id of the process the relay runs in (a fork does not inherit its threads).
        self.pid: int | None = None
        #: How many messages were put into at least one outbox (for metrics and tests).
        self.delivered = 0
        _RELAYS.add(self)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the listener and heartbeat threads, once; later calls do nothing."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self.pid = os.getpid()
            # Started under the lock: a handler arriving meanwhile waits, then sees it done.
            self._listener.start()
            if self._heartbeat is not None:
                self._heartbeat.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads and wait for them.

        :param timeout: how long to wait for each.
        """
        self._listener.stop(timeout)
        if self._heartbeat is not None:
            self._heartbeat.stop(timeout)

    @property
    def running(self) -> bool:
        """Whether the listener thread is alive in this process."""
        return self._listener.alive and self.pid == os.getpid()

    def state(self) -> RelayState:
        """A snapshot of the relay's threads and its Redis connection (for health checks)."""
        return RelayState(
            running=self.running,
            listener=self._listener.state(),
            heartbeat=None if self._heartbeat is None else self._heartbeat.alive,
        )

    @property
    def connected(self) -> threading.Event:
        """Set while the listener is connected to Redis with every channel confirmed."""
        return self._listener.connected

    @property
    def control_channel(self) -> str:
        """The channel that wakes the listener."""
        return self._listener.control_channel

    # -- the registry (handler threads) ----------------------------------------

    def attach(
        self,
        channels: Iterable[str],
        outbox: Outbox,
        session: str | None = None,
        socket: str | None = None,
        user: str | None = None,
    ) -> Subscription:
        """Deliver what arrives on ``channels`` to ``outbox`` until :meth:`detach`.

        Wait for the subscription's ``ready`` before reading any history.

        :param channels: channel names from :mod:`turbocast.channels`.
        :param outbox: the socket's outbox.
        :param session: the socket's browser session id: a message that excludes it
            (``exclude=``) is not put into this outbox.
        :param socket: the socket's id: a message that excludes it (``exclude_socket=``)
            is not put into this outbox.
        :param user: the socket's user id (its channel key): :meth:`disconnect` of that
            user closes it.
        """
        sid = session.encode() if session is not None else None
        own = socket.encode() if socket is not None else None
        uid = user.encode() if user is not None else None
        sub = Subscription(
            tuple(dict.fromkeys(c.encode() for c in channels)), outbox, sid, own, uid
        )
        with self._lock:
            for channel in sub.channels:
                self._registry[channel] = self._registry.get(channel, frozenset()) | {outbox}
            if sid is not None:
                self._sessions[outbox] = sid
            if own is not None:
                self._sockets[outbox] = own
            if uid is not None:
                self._users[outbox] = uid
            self._waiting.append(sub)
        # Always through the listener, even for channels subscribed already: only it
        # knows whether an UNSUBSCRIBE of one of them is on its way.
        self._listener.wake()
        return sub

    def detach(self, sub: Subscription) -> None:
        """Stop delivering to a socket; unsubscribe channels no local socket needs.

        :param sub: what :meth:`attach` returned.
        """
        emptied = False
        with self._lock:
            if sub in self._waiting:
                self._waiting.remove(sub)
            self._sessions.pop(sub.outbox, None)
            self._sockets.pop(sub.outbox, None)
            self._users.pop(sub.outbox, None)
            for channel in sub.channels:
                remaining = self._registry.get(channel, frozenset()) - {sub.outbox}
                if remaining:
                    self._registry[channel] = remaining
                elif self._registry.pop(channel, None) is not None:
                    emptied = True
        if emptied:
            self._listener.wake()

    def outboxes(self) -> set[Outbox]:
        """The outboxes of every socket attached now."""
        with self._lock:
            return {o for group in self._registry.values() for o in group}

    def channels(self) -> set[str]:
        """The channels local sockets listen to now."""
        with self._lock:
            return {c.decode() for c in self._registry}

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down") -> int:
        """Ask every socket of this relay to close (the writers send the close frame).

        :param code: the close code.
        :param reason: the close reason.
        :returns: how many sockets were asked.
        """
        outboxes = self.outboxes()
        for outbox in outboxes:
            outbox.close(code, reason)
        return len(outboxes)

    # -- sign-outs ---------------------------------------------------------------

    def disconnect(self, kind: Kind, ident: bytes) -> int:
        """Close every local socket of one session or user with 4003 (signed out).

        Called by the listener for each order on the control channel. Remembered for
        a while (see :meth:`signed_out`), for sockets admitted meanwhile.

        :param kind: ``"session"`` or ``"user"``.
        :param ident: the session id or the user's channel key (ASCII).
        :returns: how many sockets were asked to close.
        """
        with self._lock:
            self._orders.append((time.monotonic(), kind, ident))
            owners = self._sessions if kind == "session" else self._users
            matched = [outbox for outbox, owner in owners.items() if owner == ident]
            sessions = {outbox: self._sessions.get(outbox, b"") for outbox in matched}
        for outbox in matched:
            outbox.close(CLOSE_SIGNED_OUT, "signed out")
            logger.info(
                "socket signed out",
                extra={
                    "turbo_session": sessions[outbox][:8].decode(),
                    "turbo_signed_out": kind,
                },
            )
        return len(matched)

    def signed_out(self, session: str, user: str | None, since: float) -> bool:
        """Whether a sign-out of this session or user arrived lately, or after ``since``.

        A socket's handler asks this once its subscription is ready: an order that
        arrived while it was being admitted found no outbox to close. "Lately":
        :data:`SESSION_ORDER_SECONDS` for a session, :data:`USER_ORDER_SECONDS` for a user.

        :param session: the socket's session id.
        :param user: its user's channel key, or ``None``.
        :param since: when its admission began (``time.monotonic()``).
        """
        now = time.monotonic()
        sid = session.encode()
        uid = user.encode() if user is not None else None
        with self._lock:
            orders = list(self._orders)
        for at, kind, ident in reversed(orders):
            if kind == "session" and ident == sid:
                if at >= since or now - at < SESSION_ORDER_SECONDS:
                    return True
            elif kind == "user" and ident == uid and (at >= since or now - at < USER_ORDER_SECONDS):
                return True
        return False

    # -- reports -----------------------------------------------------------------

    def snapshot(self, max_sockets: int = REPORT_MAX_SOCKETS) -> dict[str, Any]:
        """What this relay holds now, for ``flask turbo sockets``: JSON-ready.

        ``pid``, ``host``, ``sockets`` (how many), ``channels`` (each channel, without
        the prefix, ids cut to :data:`REPORT_ID_CHARS`: how many local sockets listen),
        and ``socket_list``: each socket's session, user, socket id (cut) and channels,
        or ``None`` when there are more than ``max_sockets`` sockets (only the counts).

        :param max_sockets: the most sockets listed one by one.
        """
        with self._lock:
            registry = dict(self._registry)
            sessions, sockets, users = dict(self._sessions), dict(self._sockets), dict(self._users)
        outboxes: dict[Outbox, list[str]] = {}
        channels: dict[str, int] = {}
        for channel, group in sorted(registry.items()):
            name = self._short_channel(channel)
            channels[name] = len(group)
            for outbox in group:
                outboxes.setdefault(outbox, []).append(name)
        listed: list[dict[str, Any]] | None = None
        if len(outboxes) <= max_sockets:
            listed = sorted(
                (
                    {
                        "session": _short(sessions.get(outbox)),
                        "user": _short(users.get(outbox)),
                        "socket": _short(sockets.get(outbox)),
                        "channels": names,
                    }
                    for outbox, names in outboxes.items()
                ),
                key=lambda s: (s["session"] or "", s["socket"] or ""),
            )
        return {
            "pid": self.pid if self.pid is not None else os.getpid(),
            "host": _socket.gethostname(),
            "sockets": len(outboxes),
            "channels": channels,
            "socket_list": listed,
        }

    def report(self, reply: bytes) -> None:
        """Publish :meth:`snapshot` as JSON on ``reply`` (a ``report`` order's channel).

        Called by the listener thread: one PUBLISH, bounded by the Redis timeout.

        :param reply: the reply channel.
        """
        if self._sender is None:
            logger.warning("relay cannot reply to a report: no sender")
            return
        self._sender(reply.decode(), json.dumps(self.snapshot()).encode())

    def _short_channel(self, channel: bytes) -> str:
        text = channel.decode()
        head = f"{self._prefix}:"
        rest = text[len(head) :] if text.startswith(head) else text
        kind, sep, ident = rest.partition(":")
        if kind in ("session", "user") and sep:
            return f"{kind}:{_short(ident.encode())}"
        return rest

    # -- called by the listener thread -------------------------------------------

    def wanted(self) -> set[bytes]:
        """The channels Redis must deliver to this process."""
        with self._lock:
            return set(self._registry)

    def confirm(self, confirmed: set[bytes]) -> None:
        """Tell every waiting socket whose channels Redis has all confirmed that it is live.

        :param confirmed: the channels subscribed and confirmed now.
        """
        if not self._waiting:
            return
        with self._lock:
            ready = [s for s in self._waiting if confirmed.issuperset(s.channels)]
            if not ready:
                return
            self._waiting = [s for s in self._waiting if not confirmed.issuperset(s.channels)]
        for sub in ready:
            sub.ready.set()

    def deliver(self, message: Message) -> None:
        """Put a message into the outbox of every local socket on its channel.

        A message that excludes a session skips the outboxes of that session's sockets;
        one that excludes a socket skips the outbox of the socket with that id.
        An outbox that passes its bound closes itself (4001) and takes no more.

        :param message: the message, shared by every socket it goes to.
        """
        outboxes = self._registry.get(message.channel)
        if not outboxes:
            return  # a socket left between UNSUBSCRIBE and this message
        excluded, excluded_socket = message.exclude, message.exclude_socket
        if excluded is None and excluded_socket is None:
            for outbox in outboxes:
                outbox.put(message)
            count = len(outboxes)
        else:
            sessions, sockets = self._sessions, self._sockets
            count = 0
            for outbox in outboxes:
                if (excluded is None or sessions.get(outbox) != excluded) and (
                    excluded_socket is None or sockets.get(outbox) != excluded_socket
                ):
                    outbox.put(message)
                    count += 1
        self.delivered += 1
        if count:
            metrics.relayed(message, count)


def _short(ident: bytes | None) -> str | None:
    # Enough of an id to tell sockets apart and match a log line; not the whole secret.
    if ident is None:
        return None
    text = ident.decode("utf-8", "replace")
    return text if len(text) <= REPORT_ID_CHARS else text[:REPORT_ID_CHARS] + "…"


def _run_id(client: redis.Redis) -> str | None:
    # A restarted Redis has a new run_id (and has lost what it did not persist).
    try:
        info: Any = client.info("server")
        return str(info.get("run_id"))
    except redis.RedisError:
        return None


def close_all_sockets(code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down") -> int:
    """Close every socket of every relay in this process: a web process going away.

    :param code: the close code (1001, "going away", tells clients to reconnect elsewhere).
    :param reason: the close reason.
    :returns: how many sockets were asked to close.
    """
    return sum(relay.close_all(code, reason) for relay in list(_RELAYS))
