"""Scripted and in-memory Redis pub/sub connections for the listener and relay tests.

:class:`FakePubSub` is one scripted connection: each ``read()`` hands over the next
step of its script, in Redis's order (published messages as the Publisher sends
them, ``b"<id> <html>"``, and Redis's confirmations of each SUBSCRIBE). A step can
also be a callable (something happening elsewhere meanwhile: a socket attaches, the
test notes what it sees) or an exception (the connection breaks). A used-up script
raises :class:`Done`, a ``BaseException`` the listener does not catch, so a listener
is driven to its end in the test's own thread. :class:`FakeRegistry` is the relay as
the listener sees it; :class:`FakeHistory` answers the catch-up after a lost
connection; :class:`Broker` is an in-memory Redis pub/sub for the tests that run
real threads.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import redis

from turbocast.message import Message
from turbocast.subscriber import MESSAGE, SUBSCRIBED, Event

DEADLINE = 5.0
CHAT = "turbo:session:abcdefghijklmnop"
NEWS = "turbo:broadcast"
BOARD = "turbo:stream:board:1"

T0 = 1_700_000_000_000


def tid(offset_ms: int, seq: int = 0) -> str:
    """A history id ``offset_ms`` after T0."""
    return f"{T0 + offset_ms}-{seq}"


def b(channel: str | bytes) -> bytes:
    return channel.encode() if isinstance(channel, str) else channel


def published(channel: str | bytes, message_id: str | None, html: bytes) -> Event:
    """What Redis hands over for one PUBLISH by the Publisher (``None``: by someone else)."""
    data = html if message_id is None else message_id.encode() + b" " + html
    return (MESSAGE, b(channel), data)


def confirmed(channel: str | bytes) -> Event:
    """Redis's confirmation of a SUBSCRIBE to ``channel``."""
    return (SUBSCRIBED, b(channel), b"")


class Done(BaseException):
    """Ends a scripted run: not an Exception, so the listener lets it through."""


# Raised by a step: each time a new instance, as a broken connection would.
LOST = redis.ConnectionError

Step = Event | list[Event] | Callable[[], object] | BaseException | type[BaseException]


class FakePubSub:
    """One scripted pub/sub connection.

    :param steps: what each ``read()`` does, in order: an event or a list of events
        (handed over as one batch), a callable (called; nothing handed over), or an
        exception (raised). Once used up, ``read()`` raises :class:`Done`, or with
        ``idle`` waits a little and hands over nothing, like a quiet connection.
    :param auto_confirm: Redis confirms each SUBSCRIBE at the next ``read()``, before
        the next step (as it answers in order); without it, the steps say when.
    """

    def __init__(self, *steps: Step, auto_confirm: bool = True, idle: bool = False) -> None:
        self.steps = list(steps)
        self.auto_confirm = auto_confirm
        self.idle = idle
        self.owed: list[Event] = []  # confirmations Redis will send next
        self.calls: list[tuple[str, frozenset[bytes]]] = []
        self.handed: list[Event] = []
        self.closed = False
        self.quiet = threading.Event()  # set once an idle read found nothing to do

    @property
    def subscribed(self) -> set[bytes]:
        channels: set[bytes] = set()
        for name, args in self.calls:
            channels = channels | args if name == "subscribe" else channels - args
        return channels

    @property
    def confirmations(self) -> list[bytes]:
        """The channels whose confirmation was handed over so far, in order."""
        return [channel for kind, channel, _ in self.handed if kind == SUBSCRIBED]

    def subscribe(self, *channels: bytes) -> None:
        self.calls.append(("subscribe", frozenset(channels)))
        if self.auto_confirm:
            self.owed += [confirmed(c) for c in channels]

    def unsubscribe(self, *channels: bytes) -> None:
        self.calls.append(("unsubscribe", frozenset(channels)))

    def read(self) -> list[Event]:
        if self.closed:
            raise redis.ConnectionError("pubsub used after close")
        if self.owed:
            events, self.owed = self.owed, []
        elif not self.steps:
            if not self.idle:
                raise Done()
            self.quiet.set()
            threading.Event().wait(0.005)  # a poll interval of a quiet connection
            events = []
        else:
            step = self.steps.pop(0)
            if isinstance(step, BaseException) or (
                isinstance(step, type) and issubclass(step, BaseException)
            ):
                raise step
            if callable(step):
                step()
                events = []
            elif isinstance(step, tuple):
                events = [step]
            else:
                events = list(step)
        self.handed += events
        return events

    def close(self) -> None:
        self.closed = True


class Factory:
    """Hands out the given fake connections in order, then raises :class:`Done`.

    A step of ``None`` is a connection attempt that fails (Redis refuses it).
    """

    def __init__(self, *pubsubs: FakePubSub | None, then: Callable[[], FakePubSub] | None = None):
        self.pending = list(pubsubs)
        self.made: list[FakePubSub] = []
        self.attempts = 0
        self.then = then

    def __call__(self) -> FakePubSub:
        self.attempts += 1
        if not self.pending:
            if self.then is None:
                raise Done()
            pubsub = self.then()
        else:
            pubsub = self.pending.pop(0)  # type: ignore[assignment]
            if pubsub is None:
                raise redis.ConnectionError("Connection refused")
        self.made.append(pubsub)
        return pubsub


class Waker:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, channel: str) -> None:
        self.calls.append(channel)


class FakeRegistry:
    """The relay as the listener sees it: wanted channels in, messages and confirmations out."""

    def __init__(self, *channels: str) -> None:
        self.channels = {b(c) for c in channels}
        self.delivered: list[Message] = []
        self.confirmations: list[set[bytes]] = []

    def wanted(self) -> set[bytes]:
        return set(self.channels)

    def deliver(self, message: Message) -> None:
        self.delivered.append(message)

    def confirm(self, confirmed: set[bytes]) -> None:
        self.confirmations.append(set(confirmed))

    @property
    def ids(self) -> list[str | None]:
        return [m.id for m in self.delivered]

    @property
    def seen(self) -> list[tuple[bytes, str | None, bytes]]:
        return [(m.channel, m.id, m.html) for m in self.delivered]


class FakeHistory:
    """Answers ``since(key, position)`` from a table; records every call.

    :param answers: ``{history key: (entries, gap)}``; other keys have nothing. An entry
        is ``(id, html)``, ``(id, html, excluded session)``, ``(id, html, excluded
        session, excluded socket)``, or ``(id, html, excluded session, excluded socket,
        publish time in µs)`` as History returns it (what is left out is ``None``).
    :param fail: the exception to raise for a call (given the key), or ``None``: answer.
    :param on_call: called at each call (to note what the test wants to know then).
    :param maxlen: the most entries one read brings (a longer answer is a cut replay).
    """

    def __init__(
        self,
        answers: dict[str, tuple[list[tuple[Any, ...]], bool]] | None = None,
        *,
        fail: Callable[[str], BaseException | None] = lambda key: None,
        on_call: Callable[[], object] = lambda: None,
        maxlen: int = 1000,
    ) -> None:
        self.maxlen = maxlen
        self.answers = {
            key: ([(*e, *(None,) * (5 - len(e))) for e in entries], gap)
            for key, (entries, gap) in (answers or {}).items()
        }
        self.fail = fail
        self.on_call = on_call
        self.calls: list[tuple[str, str]] = []
        self.snapshot_failures = 0

    def since(self, key: str, position: str) -> tuple[list[tuple[Any, ...]], bool]:
        self.calls.append((key, position))
        self.on_call()
        error = self.fail(key)
        if error is not None:
            raise error
        return self.answers.get(key, ([], False))

    def since_many(self, reads: list[tuple[str, str]]) -> list[tuple[list[tuple[Any, ...]], bool]]:
        # One snapshot, as Redis reads it: a failing key fails the whole read.
        results = []
        for key, position in reads:
            self.calls.append((key, position))
            self.on_call()
            error = self.fail(key)
            if error is not None:
                self.snapshot_failures += 1
                raise error
            results.append(self.answers.get(key, ([], False)))
        return results

    def position(self, key: str) -> str:
        [position] = [p for k, p in self.calls if k == key]
        return position


class Broker:
    """An in-memory Redis pub/sub for threaded tests: order as Redis keeps it.

    Each connection gets, in one queue, the confirmation of each SUBSCRIBE and every
    message published on its channels after it, so a message published after a
    confirmation was read always follows it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connections: list[BrokerPubSub] = []

    def connect(self) -> BrokerPubSub:
        conn = BrokerPubSub(self)
        with self.lock:
            self.connections.append(conn)
        return conn

    def publish(self, channel: str | bytes, data: bytes) -> int:
        channel = b(channel)
        with self.lock:
            receivers = [c for c in self.connections if channel in c.channels]
            for conn in receivers:
                conn.events.put((MESSAGE, channel, data))
        return len(receivers)

    def waker(self, channel: str) -> None:
        self.publish(channel, b"")


class BrokerPubSub:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.channels: set[bytes] = set()
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.closed = False

    def subscribe(self, *channels: bytes) -> None:
        with self.broker.lock:
            self.channels |= set(channels)
            for channel in channels:
                self.events.put(confirmed(channel))

    def unsubscribe(self, *channels: bytes) -> None:
        with self.broker.lock:
            self.channels -= set(channels)

    def read(self) -> list[Event]:
        if self.closed:
            raise redis.ConnectionError("closed")
        try:
            events = [self.events.get(timeout=0.01)]
        except queue.Empty:
            return []
        events.extend(self.events.get_nowait() for _ in range(self.events.qsize()))
        return events

    def close(self) -> None:
        with self.broker.lock:
            self.closed = True
            if self in self.broker.connections:
                self.broker.connections.remove(self)


def note(into: list[object], what: Callable[[], object]) -> Callable[[], None]:
    """A step that notes what ``what()`` says at that point of the script."""
    return lambda: into.append(what())
