"""The relay: one thread per web process between Redis pub/sub and the sockets held here.

It subscribes only to the channels of sockets this process holds (reference
counted: SUBSCRIBE on the first, UNSUBSCRIBE when the last goes), encodes each
message into a WebSocket frame once, and puts that frame into the outbox of
every local socket the channel reaches. It never writes to a socket and never
blocks on one. It outlives Redis restarts: on a lost connection it backs off
(1 s doubling to 60 s, with jitter), reconnects, subscribes everything again,
and catches up from each channel's history on what was published meanwhile.

Only the relay thread touches its pub/sub connection (a
:class:`~app.turbo.subscriber.Subscriber`, read with hiredis directly).
Handler threads change the registry under a lock and wake the relay by
publishing to the relay's own control channel, so a new socket is subscribed
within one Redis round trip rather than at the next poll.
"""

from __future__ import annotations

import logging
import operator
import os
import random
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import repeat
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .channels import history_key, label_for
from .history import History, format_id
from .message import REFRESH_HTML, Message
from .outbox import Outbox
from .subscriber import Subscriber

logger = logging.getLogger("turbocast.relay")

PubSubFactory = Callable[[], Any]

# Every relay of this process, for a graceful shutdown (see :func:`close_all_sockets`).
_RELAYS: weakref.WeakSet[Relay] = weakref.WeakSet()

#: Close code sent to every socket when the web process shuts down.
CLOSE_GOING_AWAY = 1001

# Outage catch-up for channels with no message seen yet starts this long before
# the outage began, in case the clocks of this host and Redis's disagree a little.
_CLOCK_SLACK_MS = 2000

BACKOFF_START = 1.0
BACKOFF_CAP = 60.0


class Subscription:
    """What :meth:`Relay.attach` hands back: the channels one socket listens to."""

    __slots__ = ("channels", "outbox")

    def __init__(self, channels: tuple[bytes, ...], outbox: Outbox) -> None:
        self.channels = channels
        self.outbox = outbox


class Relay:
    """Forwards Redis pub/sub messages to the outboxes of this process's sockets.

    :param redis_url: the Redis server (``redis://``, ``rediss://`` or ``unix://``).
    :param prefix: the channel namespace, used for the relay's own control channel.
    :param health_check_interval: seconds of silence after which the pub/sub
        connection is pinged, so a dead link is noticed.
    :param pubsub_factory: opens a fresh pub/sub connection (by default a
        :class:`~app.turbo.subscriber.Subscriber`); tests pass a fake.
    :param waker: publishes to the control channel; tests pass a fake.
    :param history: reads channel histories for the catch-up after an outage;
        ``None`` turns the catch-up off (tests).
    :param thread_class: the class of the relay thread.
    :param heartbeat_interval: seconds between heartbeats to every socket's
        outbox (:meth:`Outbox.beat`), from a thread of their own; ``0``: none.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        prefix: str = "turbo",
        health_check_interval: float = 15.0,
        pubsub_factory: PubSubFactory | None = None,
        waker: Callable[[str], object] | None = None,
        history: History | None = None,
        thread_class: type[threading.Thread] = threading.Thread,
        heartbeat_interval: float = 0.0,
    ) -> None:
        self.prefix = prefix
        self.heartbeat_interval = heartbeat_interval
        self.control_channel = f"{prefix}:relay:{uuid.uuid4().hex}"
        self._control = self.control_channel.encode()
        if pubsub_factory is None or waker is None:
            # No retries inside redis-py: the relay does its own backoff, visibly.
            client = redis.Redis.from_url(
                redis_url,
                health_check_interval=health_check_interval,
                socket_keepalive=True,
                socket_connect_timeout=5,
                retry=Retry(NoBackoff(), 0),
            )
        if pubsub_factory is None:
            pubsub_factory = lambda: Subscriber(  # noqa: E731
                redis_url, health_check_interval=health_check_interval
            )
        if waker is None:
            waker = lambda channel: client.publish(channel, b"")  # noqa: E731
            history = history or History(client)
            self._info: Callable[[], Any] | None = lambda: client.info("server")
        else:
            self._info = None
        self._history = history
        self._pubsub_factory = pubsub_factory
        self._waker = waker
        self._thread_class = thread_class
        self._lock = threading.Lock()
        # channel -> outboxes; values are replaced, never mutated, so the relay
        # thread reads them without the lock.
        self._registry: dict[bytes, frozenset[Outbox]] = {}
        # channel -> the outboxes' raw puts, for the fan-out; replaced with the registry.
        self._puts: dict[bytes, tuple[Callable[[Message], None], ...]] = {}
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beater: threading.Thread | None = None
        self._subscribed: set[bytes] = set()
        self._labels: dict[bytes, str] = {}
        # The id of the last message delivered on each channel: where to catch up from.
        self._last: dict[bytes, tuple[int, int]] = {}
        self._lost_at_ms: int | None = None
        self._run_id: str | None = None
        #: The id of the process the relay thread runs in (a fork does not inherit it).
        self.pid: int | None = None
        #: Set while the pub/sub connection is up and subscribed to everything.
        self.connected = threading.Event()
        #: How many messages were put into at least one outbox (for metrics and tests).
        self.delivered = 0
        self.dropped = 0
        _RELAYS.add(self)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the relay thread once; later calls do nothing."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self.pid = os.getpid()
            thread = self._thread_class(target=self._run, name="turbo-relay", daemon=True)
            self._thread = thread
            beater = None
            running = self._beater is not None and self._beater.is_alive()
            if self.heartbeat_interval > 0 and not running:
                beater = self._thread_class(target=self._beat, name="turbo-heartbeat", daemon=True)
                self._beater = beater
        thread.start()
        if beater is not None:
            beater.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the relay thread and wait for it.

        :param timeout: how long to wait for the thread to finish.
        """
        self._stop.set()
        for thread in (self._thread, self._beater):
            if thread is not None:
                thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the relay thread is alive in this process."""
        return self._thread is not None and self._thread.is_alive() and self.pid == os.getpid()

    # -- the registry (handler threads) ----------------------------------------

    def attach(self, channels: Iterable[str], outbox: Outbox) -> Subscription:
        """Deliver what arrives on ``channels`` to ``outbox`` until :meth:`detach`.

        :param channels: channel names from :mod:`app.turbo.channels`.
        :param outbox: the socket's outbox.
        """
        sub = Subscription(tuple(dict.fromkeys(c.encode() for c in channels)), outbox)
        changed = False
        with self._lock:
            for channel in sub.channels:
                current = self._registry.get(channel, frozenset())
                changed = changed or not current
                self._set(channel, current | {outbox})
        if changed:
            self._wake()
        return sub

    def detach(self, sub: Subscription) -> None:
        """Stop delivering to a socket; unsubscribe channels no local socket needs.

        :param sub: what :meth:`attach` returned.
        """
        changed = False
        with self._lock:
            for channel in sub.channels:
                remaining = self._registry.get(channel, frozenset()) - {sub.outbox}
                if remaining:
                    self._set(channel, remaining)
                else:
                    self._registry.pop(channel, None)
                    self._puts.pop(channel, None)
                    changed = True
        if changed:
            self._wake()

    def _set(self, channel: bytes, outboxes: frozenset[Outbox]) -> None:
        # Under the lock. Outboxes that are closing get nothing more.
        self._registry[channel] = outboxes
        self._puts[channel] = tuple(o.raw_put for o in outboxes if o.closing is None)

    def _mute(self, outbox: Outbox) -> None:
        # An overflowing socket's writer may be stuck in a send: stop feeding it now.
        with self._lock:
            for channel, outboxes in list(self._registry.items()):
                if outbox in outboxes:
                    self._set(channel, outboxes)

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down") -> int:
        """Ask every socket of this relay to close (the writers send the close frame).

        :param code: the close code.
        :param reason: the close reason.
        :returns: how many sockets were asked.
        """
        outboxes = self._outboxes()
        for outbox in outboxes:
            outbox.close(code, reason)
        return len(outboxes)

    def _outboxes(self) -> set[Outbox]:
        with self._lock:
            return {o for group in self._registry.values() for o in group}

    def _beat(self) -> None:
        # The heartbeat thread: every socket's writer is told when to ping.
        while not self._stop.wait(self.heartbeat_interval):
            for outbox in self._outboxes():
                outbox.beat()

    def channels(self) -> set[str]:
        """The channels local sockets listen to now."""
        with self._lock:
            return {c.decode() for c in self._registry}

    def _wake(self) -> None:
        self._dirty.set()
        if not self.connected.is_set():
            return  # the reconnect subscribes everything anyway
        try:
            self._waker(self.control_channel)
        except redis.RedisError:
            # The relay is reconnecting and will resubscribe from the registry.
            logger.debug("turbocast: relay wake-up not sent", exc_info=True)

    # -- the relay thread --------------------------------------------------------

    def _run(self) -> None:
        delay = BACKOFF_START
        attempt = 0
        while not self._stop.is_set():
            try:
                for channel, data in self._listen():
                    delay, attempt = BACKOFF_START, 0
                    try:
                        self._dispatch(channel, data)
                    except Exception:
                        logger.exception(
                            "turbocast: relay dropped a message", extra={"turbo_channel": channel}
                        )
            except (redis.RedisError, OSError) as exc:
                self._lost(exc, delay, attempt)
            except Exception as exc:  # noqa: BLE001 - the relay thread must never die
                logger.exception("turbocast: relay error")
                self._lost(exc, delay, attempt)
            else:
                continue
            attempt += 1
            self._stop.wait(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, BACKOFF_CAP)

    def _lost(self, exc: BaseException, delay: float, attempt: int) -> None:
        self.connected.clear()
        logger.warning(
            "turbocast: relay lost Redis (%s); reconnecting in up to %.0fs",
            exc.__class__.__name__,
            delay,
            extra={"turbo_error": repr(exc), "turbo_attempt": attempt},
        )

    def _listen(self) -> Iterator[tuple[bytes, bytes]]:
        """Connect, subscribe everything, and yield ``(channel, data)`` until stopped."""
        pubsub = self._pubsub_factory()
        try:
            self._subscribed = set()
            self._dirty.set()
            pubsub.subscribe(self._control)
            self._sync(pubsub)
            self.connected.set()
            logger.info(
                "turbocast: relay subscribed to Redis",
                extra={"turbo_channels": len(self._subscribed)},
            )
            if self._lost_at_ms is not None:
                self._catch_up(self._lost_at_ms)
                self._lost_at_ms = None
            while not self._stop.is_set():
                if self._dirty.is_set():
                    self._sync(pubsub)
                for channel, data in pubsub.read():
                    if channel != self._control:
                        yield channel, data
        finally:
            if self.connected.is_set() and self._lost_at_ms is None:
                self._lost_at_ms = int(time.time() * 1000)
            self.connected.clear()
            try:
                pubsub.close()
            except Exception:  # noqa: BLE001 - the connection is already broken
                logger.debug("turbocast: closing pub/sub failed", exc_info=True)

    def _catch_up(self, lost_at: int) -> None:
        """After an outage: deliver what each channel's history got while the relay was away.

        :param lost_at: when the connection was lost (ms since the epoch, this host's clock).
        """
        if self._history is None:
            return
        run_id = self._redis_run_id()
        restarted = run_id is not None and self._run_id is not None and run_id != self._run_id
        self._run_id = run_id or self._run_id
        fallback = (max(0, lost_at - _CLOCK_SLACK_MS), 0)
        caught_up = 0
        for channel in list(self._registry):
            name = channel.decode()
            last = self._last.get(channel)
            try:
                entries, gap = self._history.since(
                    history_key(name, self.prefix), format_id(last or fallback)
                )
            except redis.ResponseError:
                # One bad key (say WRONGTYPE) must not hold up every other channel.
                logger.exception(
                    "turbocast: relay could not read a channel's history",
                    extra={"turbo_channel": name},
                )
                continue
            label = self._label(channel)
            # A restarted Redis has lost its history: what it holds now is all there is.
            if gap and last is not None and not restarted:
                newest = entries[-1][0] if entries else format_id(last)
                self._deliver(Message(channel, label, newest, REFRESH_HTML, gap=True))
                continue
            for message_id, html in entries:
                self._deliver(Message(channel, label, message_id, html))
                caught_up += 1
        logger.info(
            "turbocast: relay caught up after the outage",
            extra={"turbo_messages": caught_up, "turbo_redis_restarted": restarted},
        )

    def _redis_run_id(self) -> str | None:
        if self._info is None:
            return None
        try:
            return str(self._info().get("run_id"))
        except redis.RedisError:
            return None

    def _label(self, channel: bytes) -> str:
        label = self._labels.get(channel)
        if label is None:
            label = self._labels[channel] = label_for(channel.decode(), self.prefix)
        return label

    def _sync(self, pubsub: Any) -> None:
        # Make Redis's view match the registry: one SUBSCRIBE and one UNSUBSCRIBE at most.
        self._dirty.clear()
        wanted = set(self._registry)
        new = wanted - self._subscribed
        gone = self._subscribed - wanted
        if new:
            pubsub.subscribe(*new)
            self._subscribed |= new
            if self._run_id is None:
                self._run_id = self._redis_run_id()
        if gone:
            pubsub.unsubscribe(*gone)
            self._subscribed -= gone
            for channel in gone:
                self._last.pop(channel, None)
                self._labels.pop(channel, None)

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        if channel in self._registry:
            self._deliver(Message.from_payload(channel, self._label(channel), data))

    def _deliver(self, message: Message) -> None:
        puts = self._puts.get(message.channel)
        if not puts:
            return  # a socket left between UNSUBSCRIBE and this message
        if message.key is not None:
            self._last[message.channel] = message.key
        # One C-level loop over the queues: a broadcast to a thousand sockets is not
        # interrupted by the threads it wakes (they wait for the GIL until it is done).
        deque(map(operator.call, puts, repeat(message, len(puts))), maxlen=0)
        for outbox in self._registry.get(message.channel, ()):
            if outbox.check_bound():
                self.dropped += 1
                self._mute(outbox)
        self.delivered += 1


def close_all_sockets(code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down") -> int:
    """Close every socket of every relay in this process: a web process going away.

    :param code: the close code (1001, "going away", tells clients to reconnect elsewhere).
    :param reason: the close reason.
    :returns: how many sockets were asked to close.
    """
    return sum(relay.close_all(code, reason) for relay in list(_RELAYS))
