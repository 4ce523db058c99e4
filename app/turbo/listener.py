"""The relay's Redis listener: one thread per process between Redis pub/sub and the relay.

It holds the process's one pub/sub connection (a
:class:`~turbocast.subscriber.Subscriber`) and keeps its subscriptions equal to
the channels the relay's sockets listen to. A channel counts as subscribed only
once Redis has confirmed the SUBSCRIBE: the relay tells a new socket it may read
its history only then, so nothing published meanwhile falls between the two.

It outlives Redis: on a lost connection it backs off (1 s doubling to 60 s, with
jitter), reconnects, subscribes everything again, and, once Redis confirmed every
channel, catches up from each channel's history on what was published while it
was away (merged across channels in publish order), then hands over the live
messages it held back meanwhile. A message it already delivered on a channel is
never delivered again (catch-up and live overlap).

Only this thread touches the pub/sub connection. Handler threads change the
relay's registry and call :meth:`Listener.wake`, which publishes to this
listener's own control channel, so the change is made within one round trip
rather than at the next poll.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from . import metrics
from .channels import history_key, label_for
from .control import Kind, parse_order, parse_report
from .history import Entry, History, format_id
from .message import REFRESH_HTML, Message, published_seconds
from .subscriber import SUBSCRIBED, Event

logger = logging.getLogger("turbocast.relay")

BACKOFF_START = 1.0
BACKOFF_CAP = 60.0

# Outage catch-up for channels with no message seen yet starts this long before
# the outage began, in case the clocks of this host and Redis's disagree a little.
_CLOCK_SLACK_MS = 2000


class PubSub(Protocol):
    """What the listener needs of a pub/sub connection (a Subscriber, or a test's fake)."""

    def subscribe(self, *channels: bytes) -> None: ...

    def unsubscribe(self, *channels: bytes) -> None: ...

    def read(self) -> list[Event]: ...

    def close(self) -> None: ...


class Registry(Protocol):
    """What the listener needs of the relay."""

    def wanted(self) -> set[bytes]: ...

    def deliver(self, message: Message) -> None: ...

    def confirm(self, confirmed: set[bytes]) -> None: ...

    def disconnect(self, kind: Kind, ident: bytes) -> int: ...

    def report(self, reply: bytes) -> None: ...


@dataclass(frozen=True)
class ListenerState:
    """What :meth:`Listener.state` reports: a snapshot, for health checks."""

    #: The thread is running.
    alive: bool
    #: The pub/sub connection is up, every channel confirmed and caught up.
    connected: bool
    #: Channels the relay wants that Redis has not confirmed on this connection (yet).
    pending: int
    #: Why the last connection was lost (``None`` while connected, or never lost).
    error: str | None


class Listener:
    """Reads Redis pub/sub for one relay and hands every message to it.

    :param relay: the registry it serves: which channels are wanted, where messages go.
    :param prefix: the channel namespace (for labels and history keys).
    :param control_channel: the channel :meth:`wake` publishes to.
    :param orders_channel: the channel every relay gets orders on (sign-outs, see
        :mod:`turbocast.control`); ``None``: none.
    :param pubsub_factory: opens a fresh pub/sub connection.
    :param waker: publishes an empty message to a channel (the wake-up).
    :param history: reads channel histories for the catch-up; ``None``: no catch-up.
    :param redis_run_id: returns Redis's ``run_id`` (a restarted Redis lost its
        history), or ``None`` when unknown.
    :param thread_class: the class of the listener thread.
    """

    def __init__(
        self,
        relay: Registry,
        *,
        prefix: str,
        control_channel: str,
        orders_channel: str | None = None,
        pubsub_factory: Callable[[], PubSub],
        waker: Callable[[str], object],
        history: History | None,
        redis_run_id: Callable[[], str | None] = lambda: None,
        thread_class: type[threading.Thread] = threading.Thread,
    ) -> None:
        self._relay = relay
        self.prefix = prefix
        self.control_channel = control_channel
        self._control = control_channel.encode()
        self._orders = orders_channel.encode() if orders_channel is not None else None
        self._pubsub_factory = pubsub_factory
        self._waker = waker
        self._history = history
        self._redis_run_id = redis_run_id
        self._thread = thread_class(target=self._run, name="turbo-relay", daemon=True)
        self._stop = threading.Event()
        self._dirty = threading.Event()
        self._can_wake = False
        # Subscription state of the current connection: channels whose last command
        # was SUBSCRIBE, how many SUBSCRIBEs of each await Redis's confirmation, and
        # those Redis confirmed with nothing pending.
        self._subscribed: set[bytes] = set()
        self._pending: dict[bytes, int] = {}
        self._confirmed: set[bytes] = set()
        self._labels: dict[bytes, str] = {}
        # The id of the last message delivered on each channel: where to catch up from.
        self._last: dict[bytes, tuple[int, int]] = {}
        self._lost_at_ms: int | None = None
        self._run_id: str | None = None
        self._error: str | None = None
        # Since when (monotonic) Redis is counted as out; None while connected.
        self._outage_mark: float | None = None
        #: Set while the pub/sub connection is up, every channel confirmed and caught up.
        self.connected = threading.Event()

    # -- lifecycle (called by the relay) ------------------------------------------

    def start(self) -> None:
        """Start the thread (the relay calls this once, under its lock)."""
        self._thread.start()
        logger.info("relay started", extra={"turbo_control": self.control_channel})

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it.

        :param timeout: how long to wait.
        """
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the thread is running."""
        return self._thread.is_alive()

    def state(self) -> ListenerState:
        """A snapshot of the thread and its connection (any thread may call it)."""
        connected = self.connected.is_set()
        confirmed = set(self._confirmed)  # (replaced or changed by the thread: copy once)
        return ListenerState(
            alive=self.alive,
            connected=connected,
            pending=len(self._relay.wanted() - confirmed),
            error=None if connected else self._error,
        )

    def wake(self) -> None:
        """The relay's registry changed: subscribe or unsubscribe now, not at the next poll."""
        self._dirty.set()
        if not self._can_wake:
            return  # (re)connecting: it subscribes everything anyway
        try:
            self._waker(self.control_channel)
        except redis.RedisError:
            logger.debug("relay wake-up not sent", exc_info=True)

    # -- the thread -----------------------------------------------------------------

    def _run(self) -> None:
        delay = BACKOFF_START
        attempt = 0
        while not self._stop.is_set():
            try:
                for _ in self._session():
                    delay, attempt = BACKOFF_START, 0
            except (redis.RedisError, OSError) as exc:
                self._lost(exc, delay, attempt)
            except Exception as exc:  # noqa: BLE001 - the listener thread must never die
                logger.exception("relay error")
                self._lost(exc, delay, attempt)
            else:
                continue
            attempt += 1
            self._stop.wait(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, BACKOFF_CAP)

    def _lost(self, exc: BaseException, delay: float, attempt: int) -> None:
        self._error = f"{exc.__class__.__name__}: {exc}"
        self._count_outage()
        logger.warning(
            "relay lost Redis (%s); reconnecting in up to %.0fs",
            exc.__class__.__name__,
            delay,
            extra={"turbo_error": repr(exc), "turbo_attempt": attempt},
        )

    def _count_outage(self, *, over: bool = False) -> None:
        # Counted at each failed attempt and at the reconnect, so the counter grows during
        # an outage, not only once it ends.
        now = time.monotonic()
        if self._outage_mark is not None:
            metrics.OUTAGE_SECONDS.inc(now - self._outage_mark)
        self._outage_mark = None if over else now

    def _session(self) -> Any:
        """One connection's life: subscribe, confirm, catch up, then relay until it breaks.

        A generator: it yields once the connection is fully up, so the caller can
        reset its backoff.
        """
        pubsub = self._pubsub_factory()
        self._subscribed, self._pending, self._confirmed = set(), {}, set()
        resuming = self._lost_at_ms is not None
        held: list[tuple[bytes, bytes]] = []  # live messages held back during the catch-up
        try:
            # Orders are not replayed: one missed during an outage closes nothing.
            pubsub.subscribe(*filter(None, (self._control, self._orders)))
            self._can_wake = True
            self._dirty.set()
            while not self._stop.is_set():
                if self._dirty.is_set():
                    self._sync(pubsub)
                for kind, channel, data in pubsub.read():
                    if kind == SUBSCRIBED:
                        self._on_confirmed(channel)
                    elif channel == self._control:
                        continue
                    elif channel == self._orders:
                        self._order(data)
                    elif resuming:
                        held.append((channel, data))
                    else:
                        self._dispatch(channel, data)
                if not self.connected.is_set() and self._subscribed <= self._confirmed:
                    if resuming:
                        self._catch_up(self._lost_at_ms or 0)
                        for channel, data in held:
                            self._dispatch(channel, data)
                        held.clear()
                        resuming = False
                        self._lost_at_ms = None
                        metrics.RECONNECTS.inc()
                    self._count_outage(over=True)
                    self.connected.set()
                    metrics.RELAY_CONNECTED.set(1)
                    logger.info(
                        "relay subscribed to Redis",
                        extra={"turbo_channels": len(self._subscribed)},
                    )
                    yield
                if self.connected.is_set():
                    self._relay.confirm(self._confirmed)
        finally:
            self._can_wake = False
            if self.connected.is_set():
                self._outage_mark = time.monotonic()
                if self._lost_at_ms is None:
                    self._lost_at_ms = int(time.time() * 1000)
            self.connected.clear()
            metrics.RELAY_CONNECTED.set(0)
            try:
                pubsub.close()
            except Exception:  # noqa: BLE001 - the connection is already broken
                logger.debug("closing pub/sub failed", exc_info=True)

    def _sync(self, pubsub: PubSub) -> None:
        # Make Redis's view match the registry: one SUBSCRIBE and one UNSUBSCRIBE at most.
        self._dirty.clear()
        wanted = self._relay.wanted()
        new = wanted - self._subscribed
        gone = self._subscribed - wanted
        if new:
            pubsub.subscribe(*new)
            self._subscribed |= new
            for channel in new:
                self._pending[channel] = self._pending.get(channel, 0) + 1
            if self._run_id is None:
                self._run_id = self._redis_run_id()
        if gone:
            pubsub.unsubscribe(*gone)
            self._subscribed -= gone
            self._confirmed -= gone
        # Also channels dropped while disconnected (never in ``gone``): a socket that
        # wants one again later must not catch up from where it stood back then.
        for channel in (self._last.keys() | self._labels.keys()) - wanted:
            self._last.pop(channel, None)
            self._labels.pop(channel, None)

    def _order(self, data: bytes) -> None:
        reply = parse_report(data)
        if reply is not None:
            try:
                self._relay.report(reply)
            except Exception:  # noqa: BLE001 - one bad order must not cost the connection
                logger.exception("relay failed to report its sockets")
            return
        order = parse_order(data)
        if order is None:
            logger.warning("relay ignored a malformed order", extra={"turbo_order": data[:80]})
            return
        try:
            self._relay.disconnect(*order)
        except Exception:  # noqa: BLE001 - one bad order must not cost the connection
            logger.exception("relay failed to carry out an order")

    def _on_confirmed(self, channel: bytes) -> None:
        # Replies come in order: the last SUBSCRIBE's confirmation is the one that counts.
        left = self._pending.get(channel, 0) - 1
        if left > 0:
            self._pending[channel] = left
            return
        self._pending.pop(channel, None)
        if channel in self._subscribed:
            self._confirmed.add(channel)

    def _label(self, channel: bytes) -> str:
        label = self._labels.get(channel)
        if label is None:
            label = self._labels[channel] = label_for(channel.decode(), self.prefix)
        return label

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        if channel not in self._subscribed:
            return  # unsubscribed meanwhile
        try:
            message = Message.from_payload(channel, self._label(channel), data)
        except Exception:  # noqa: BLE001 - one bad message must not stop the others
            logger.exception("relay dropped a message", extra={"turbo_channel": channel})
            return
        self._deliver(message)

    def _deliver(self, message: Message) -> None:
        if message.key is not None:
            last = self._last.get(message.channel)
            # (A gap's refresh may carry the last id delivered: the history is empty.)
            if last is not None and message.key <= last and not message.gap:
                return  # delivered already (the catch-up and live overlap)
            self._last[message.channel] = message.key
        try:
            self._relay.deliver(message)
        except Exception:  # noqa: BLE001 - one bad outbox must not cost the connection
            logger.exception("relay dropped a message", extra={"turbo_channel": message.channel})

    def _catch_up(self, lost_at: int) -> None:
        """After an outage: deliver what each channel's history got while the relay was away.

        :param lost_at: when the connection was lost (ms since the epoch, this host's clock).
        """
        history = self._history
        if history is None:
            return
        run_id = self._redis_run_id()
        restarted = run_id is not None and self._run_id is not None and run_id != self._run_id
        self._run_id = run_id or self._run_id
        fallback = (max(0, lost_at - _CLOCK_SLACK_MS), 0)
        channels = sorted(self._subscribed)
        reads = [
            (history_key(c.decode(), self.prefix), format_id(self._last.get(c) or fallback))
            for c in channels
        ]
        missed: list[Message] = []
        for channel, (entries, gap) in zip(channels, self._read_histories(reads), strict=True):
            last = self._last.get(channel)
            label = self._label(channel)
            # A gap where nothing was delivered yet (its position is a time, never an id)
            # or after a restart (what Redis holds now is all there is) is no loss, unless
            # the replay was cut at maxlen: more came than one brings, so a refresh too.
            cut = len(entries) >= history.maxlen
            if gap and (cut or (last is not None and not restarted)):
                if entries:
                    newest = entries[-1][0]
                else:  # (a cut replay has entries: this is a channel delivered before)
                    assert last is not None
                    newest = format_id(last)
                missed.append(Message(channel, label, newest, REFRESH_HTML, gap=True))
                continue
            missed += [
                Message(
                    channel,
                    label,
                    i,
                    html,
                    exclude=x,
                    exclude_socket=sock,
                    published=published_seconds(t),
                )
                for i, html, x, sock, t in entries
            ]
        # Ids come from one clock across channels: their order is the publish order.
        missed.sort(key=lambda m: m.key or (0, 0))
        for message in missed:
            self._deliver(message)
        logger.info(
            "relay caught up after the outage",
            extra={"turbo_messages": len(missed), "turbo_redis_restarted": restarted},
        )

    def _read_histories(self, reads: list[tuple[str, str]]) -> list[tuple[list[Entry], bool]]:
        # One snapshot of every history (see History.since_many); one bad key (say
        # WRONGTYPE) must not hold up every other channel, so then one by one.
        assert self._history is not None
        try:
            return self._history.since_many(reads)
        except redis.ResponseError:
            results: list[tuple[list[Entry], bool]] = []
            for key, position in reads:
                try:
                    results.append(self._history.since(key, position))
                except redis.ResponseError:
                    logger.exception(
                        "relay could not read a channel's history",
                        extra={"turbo_key": key},
                    )
                    results.append(([], False))
            return results
