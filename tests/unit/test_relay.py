"""app.turbo.relay: subscriptions, delivery, and surviving Redis, against an in-memory PubSub.

The relay is given a fake ``pubsub_factory`` and ``waker``: no Redis and no network.
Each fake PubSub records what the relay asked of it and hands out a script of messages.
A script ends with :class:`Done`, a ``BaseException`` that the relay does not catch, so
``Relay._run`` can be driven to the end in the test's own thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

import pytest
import redis

# Not `import app.turbo.relay as ...`: once `app` is imported, its attribute `turbo`
# is the extension instance, which shadows the subpackage (see test_extension.py).
import app.turbo.relay as relay_module
from app.turbo.outbox import CLOSE_OUTBOX_OVERFLOW, Outbox, encode_text_frame
from app.turbo.relay import Relay

DEADLINE = 5.0
CHAT = "turbo:session:abcdefghijklmnop"
NEWS = "turbo:broadcast"


class Done(BaseException):
    """Ends a scripted run: not an Exception, so the relay lets it through."""


def message(channel: str | bytes, data: bytes, kind: str = "message") -> dict:
    if isinstance(channel, str):
        channel = channel.encode()
    return {"type": kind, "pattern": None, "channel": channel, "data": data}


class FakePubSub:
    """An in-memory stand-in for redis-py's PubSub."""

    def __init__(self, script: Iterable[object] = ()) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, frozenset[bytes]]] = []
        self.closed = False
        self.idle = threading.Event()

    @property
    def subscribed(self) -> set[bytes]:
        channels: set[bytes] = set()
        for name, args in self.calls:
            if name == "subscribe":
                channels |= args
            elif name == "unsubscribe":
                channels -= args
        return channels

    def subscribe(self, *channels: bytes) -> None:
        self.calls.append(("subscribe", frozenset(channels)))

    def unsubscribe(self, *channels: bytes) -> None:
        self.calls.append(("unsubscribe", frozenset(channels)))

    def get_message(self, timeout: float = 0.0) -> dict | None:
        if self.closed:
            raise redis.ConnectionError("pubsub used after close")
        if not self.script:
            # Nothing scripted: behave like a quiet connection, without spinning.
            self.idle.set()
            threading.Event().wait(min(timeout, 0.01))
            return None
        item = self.script.pop(0)
        if isinstance(item, BaseException) or (
            isinstance(item, type) and issubclass(item, BaseException)
        ):
            raise item
        return item  # type: ignore[return-value]

    def close(self) -> None:
        self.closed = True


class Factory:
    """Hands out the given fake PubSubs in order; records every one it made."""

    def __init__(self, *pubsubs: FakePubSub) -> None:
        self.pending = list(pubsubs)
        self.made: list[FakePubSub] = []

    def __call__(self) -> FakePubSub:
        pubsub = self.pending.pop(0) if self.pending else FakePubSub()
        self.made.append(pubsub)
        return pubsub


class Waker:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, channel: str) -> None:
        self.calls.append(channel)


class ExplodingOutbox:
    """An outbox whose put fails, to make one dispatch raise."""

    def put(self, frame: bytes) -> bool:
        raise RuntimeError("boom")


def make_relay(*pubsubs: FakePubSub) -> tuple[Relay, Factory, Waker]:
    factory, waker = Factory(*pubsubs), Waker()
    relay = Relay("redis://unused.invalid/0", pubsub_factory=factory, waker=waker)
    return relay, factory, waker


def run_until_done(relay: Relay) -> None:
    with pytest.raises(Done):
        relay._run()


def frames_of(outbox: Outbox) -> list[bytes]:
    return outbox.drain(0)[1]


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    # The reconnect wait is a stop-event wait; make it immediate.
    monkeypatch.setattr(relay_module, "BACKOFF_START", 0.0)


# -- reference-counted subscriptions (_sync) -----------------------------------------------


def test_two_outboxes_on_one_channel_make_one_subscribe():
    relay, _, _ = make_relay()
    pubsub = FakePubSub()

    relay.attach([CHAT], Outbox(8))
    relay.attach([CHAT], Outbox(8))
    relay._sync(pubsub)

    assert pubsub.calls == [("subscribe", frozenset({CHAT.encode()}))]


def test_detaching_one_of_two_outboxes_sends_no_unsubscribe():
    relay, _, _ = make_relay()
    pubsub = FakePubSub()
    first = relay.attach([CHAT], Outbox(8))
    relay.attach([CHAT], Outbox(8))
    relay._sync(pubsub)

    relay.detach(first)
    relay._sync(pubsub)

    assert [name for name, _ in pubsub.calls] == ["subscribe"]
    assert relay.channels() == {CHAT}


def test_detaching_the_last_outbox_unsubscribes_the_channel():
    relay, _, _ = make_relay()
    pubsub = FakePubSub()
    first = relay.attach([CHAT, NEWS], Outbox(8))
    second = relay.attach([NEWS], Outbox(8))
    relay._sync(pubsub)

    relay.detach(first)
    relay._sync(pubsub)
    relay.detach(second)
    relay._sync(pubsub)

    assert pubsub.calls == [
        ("subscribe", frozenset({CHAT.encode(), NEWS.encode()})),
        ("unsubscribe", frozenset({CHAT.encode()})),
        ("unsubscribe", frozenset({NEWS.encode()})),
    ]
    assert relay.channels() == set()


def test_sync_with_nothing_changed_sends_nothing():
    relay, _, _ = make_relay()
    pubsub = FakePubSub()
    relay.attach([CHAT], Outbox(8))
    relay._sync(pubsub)

    relay._sync(pubsub)

    assert len(pubsub.calls) == 1


def test_attach_names_each_channel_once():
    relay, _, _ = make_relay()

    sub = relay.attach([CHAT, NEWS, CHAT], Outbox(8))

    assert sub.channels == (CHAT.encode(), NEWS.encode())


def test_attach_wakes_the_relay_only_when_connected_and_a_channel_is_new():
    relay, _, waker = make_relay()
    relay.attach([CHAT], Outbox(8))
    assert waker.calls == []  # not connected: the reconnect subscribes everything

    relay.connected.set()
    relay.attach([CHAT], Outbox(8))  # already subscribed: nothing to tell Redis
    assert waker.calls == []
    relay.attach([NEWS], Outbox(8))

    assert waker.calls == [relay.control_channel]


def test_a_failed_wake_up_is_swallowed_because_the_reconnect_resubscribes():
    def failing_waker(channel: str) -> None:
        raise redis.ConnectionError("down")

    relay = Relay("redis://unused.invalid/0", pubsub_factory=FakePubSub, waker=failing_waker)
    relay.connected.set()

    relay.attach([CHAT], Outbox(8))

    assert relay.channels() == {CHAT}


# -- _listen -------------------------------------------------------------------------------


def test_listen_subscribes_the_control_channel_then_every_registered_channel():
    pubsub = FakePubSub([Done()])
    relay, _, _ = make_relay(pubsub)
    relay.attach([CHAT, NEWS], Outbox(8))

    with pytest.raises(Done):
        list(relay._listen())

    assert pubsub.calls[0] == ("subscribe", frozenset({relay.control_channel.encode()}))
    assert pubsub.calls[1] == ("subscribe", frozenset({CHAT.encode(), NEWS.encode()}))
    assert pubsub.closed
    assert not relay.connected.is_set()


def test_listen_yields_only_data_messages_and_never_the_control_channel():
    pubsub = FakePubSub()
    relay, _, _ = make_relay(pubsub)
    pubsub.script = [
        message(CHAT, b"one"),
        None,
        message(relay.control_channel, b""),
        message(CHAT, b"bogus", kind="subscribe"),
        message(CHAT, b"bogus", kind="pmessage"),
        message(CHAT, b"bogus", kind="pong"),
        message(NEWS, b"two"),
        Done(),
    ]

    yielded = []
    with pytest.raises(Done):
        for item in relay._listen():
            yielded.append(item)

    assert yielded == [(CHAT.encode(), b"one"), (NEWS.encode(), b"two")]


def test_listen_subscribes_a_channel_attached_while_it_runs():
    pubsub = FakePubSub([message(CHAT, b"first"), message(NEWS, b"second"), Done()])
    relay, _, _ = make_relay(pubsub)
    relay.attach([CHAT], Outbox(8))
    listener = relay._listen()

    assert next(listener) == (CHAT.encode(), b"first")
    assert relay.connected.is_set()
    relay.attach([NEWS], Outbox(8))
    assert next(listener) == (NEWS.encode(), b"second")

    assert pubsub.calls[-1] == ("subscribe", frozenset({NEWS.encode()}))
    with pytest.raises(Done):
        next(listener)


def test_listen_unsubscribes_a_channel_detached_while_it_runs():
    pubsub = FakePubSub([message(CHAT, b"first"), None, Done()])
    relay, _, _ = make_relay(pubsub)
    sub = relay.attach([CHAT], Outbox(8))
    listener = relay._listen()
    next(listener)

    relay.detach(sub)
    with pytest.raises(Done):
        next(listener)

    assert pubsub.calls[-1] == ("unsubscribe", frozenset({CHAT.encode()}))


def test_listen_logs_the_subscription(caplog):
    relay, _, _ = make_relay(FakePubSub([Done()]))
    relay.attach([CHAT], Outbox(8))

    with caplog.at_level(logging.INFO, logger="turbocast.relay"), pytest.raises(Done):
        list(relay._listen())

    assert any("relay subscribed to Redis" in r.getMessage() for r in caplog.records)


# -- _dispatch -----------------------------------------------------------------------------


def test_one_frame_is_encoded_once_and_the_same_bytes_object_reaches_every_outbox():
    relay, _, _ = make_relay()
    outboxes = [Outbox(8) for _ in range(3)]
    for outbox in outboxes:
        relay.attach([NEWS], outbox)

    relay._dispatch(NEWS.encode(), b"<turbo-stream></turbo-stream>")

    frames = [frames_of(outbox) for outbox in outboxes]
    assert all(len(f) == 1 for f in frames)
    assert frames[0][0] == encode_text_frame(b"<turbo-stream></turbo-stream>")
    assert frames[1][0] is frames[0][0]
    assert frames[2][0] is frames[0][0]
    assert relay.delivered == 1


def test_dispatch_to_an_unknown_channel_delivers_nothing():
    relay, _, _ = make_relay()
    outbox = Outbox(8)
    relay.attach([CHAT], outbox)

    relay._dispatch(b"turbo:session:somebody-else-here", b"x")

    assert frames_of(outbox) == []
    assert relay.delivered == 0


def test_an_overflowing_outbox_does_not_stop_delivery_to_the_others():
    relay, _, _ = make_relay()
    slow, fast = Outbox(1), Outbox(8)
    relay.attach([NEWS], slow)
    relay.attach([NEWS], fast)

    relay._dispatch(NEWS.encode(), b"one")
    relay._dispatch(NEWS.encode(), b"two")  # slow overflows here

    assert slow.closing is not None and slow.closing.code == CLOSE_OUTBOX_OVERFLOW
    assert frames_of(fast) == [encode_text_frame(b"one"), encode_text_frame(b"two")]
    assert relay.dropped == 1
    assert relay.delivered == 2


# -- _run: the whole loop ------------------------------------------------------------------


def test_run_survives_bad_messages_and_a_lost_connection(caplog):
    first = FakePubSub(
        [
            message(CHAT, b"good-1"),
            message(b"turbo:session:nobody-listens-here", b"unknown"),
            message(CHAT, b"bogus", kind="psubscribe"),
            message(b"turbo:boom", b"explodes"),
            message(CHAT, b"good-2"),
            redis.ConnectionError("Connection reset by peer"),
        ]
    )
    second = FakePubSub([message(CHAT, b"good-3"), Done()])
    relay, factory, _ = make_relay(first, second)
    outbox = Outbox(8)
    relay.attach([CHAT, NEWS], outbox)
    relay.attach(["turbo:boom"], ExplodingOutbox())  # type: ignore[arg-type]
    first.script.insert(3, message(relay.control_channel, b""))

    with caplog.at_level(logging.INFO, logger="turbocast.relay"):
        run_until_done(relay)

    assert frames_of(outbox) == [encode_text_frame(d) for d in (b"good-1", b"good-2", b"good-3")]
    assert factory.made == [first, second]
    assert first.closed and second.closed
    everything = {CHAT.encode(), NEWS.encode(), b"turbo:boom", relay.control_channel.encode()}
    assert first.subscribed == everything
    assert second.subscribed == everything  # resubscribed on the new connection

    lost = [r for r in caplog.records if "relay lost Redis" in r.getMessage()]
    assert len(lost) == 1
    assert lost[0].levelno == logging.WARNING
    assert "ConnectionError" in lost[0].getMessage()

    dropped = [r for r in caplog.records if "relay dropped a message" in r.getMessage()]
    assert len(dropped) == 1
    assert dropped[0].levelno == logging.ERROR
    assert dropped[0].exc_info is not None and isinstance(dropped[0].exc_info[1], RuntimeError)
    assert dropped[0].turbo_channel == b"turbo:boom"


def test_run_reconnects_after_the_pubsub_factory_itself_fails(caplog):
    calls = []

    def flaky_factory():
        calls.append(1)
        if len(calls) == 1:
            raise redis.ConnectionError("Connection refused")
        return FakePubSub([message(CHAT, b"after"), Done()])

    relay = Relay("redis://unused.invalid/0", pubsub_factory=flaky_factory, waker=Waker())
    outbox = Outbox(8)
    relay.attach([CHAT], outbox)

    with caplog.at_level(logging.WARNING, logger="turbocast.relay"):
        run_until_done(relay)

    assert len(calls) == 2
    assert frames_of(outbox) == [encode_text_frame(b"after")]
    assert any("relay lost Redis" in r.getMessage() for r in caplog.records)


def test_run_logs_and_survives_an_unexpected_error_in_the_pubsub(caplog):
    first = FakePubSub([ValueError("parser confused")])
    second = FakePubSub([message(CHAT, b"after"), Done()])
    relay, _, _ = make_relay(first, second)
    outbox = Outbox(8)
    relay.attach([CHAT], outbox)

    with caplog.at_level(logging.WARNING, logger="turbocast.relay"):
        run_until_done(relay)

    assert frames_of(outbox) == [encode_text_frame(b"after")]
    errors = [r for r in caplog.records if "relay error" in r.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info is not None


def test_run_returns_when_stopped():
    relay, factory, _ = make_relay()
    relay.stop()  # no thread yet: only sets the stop flag

    relay._run()

    assert factory.made == []


# -- the thread ----------------------------------------------------------------------------


def _relay_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "turbo-relay"]


def test_start_is_idempotent_and_stop_ends_the_thread():
    pubsub = FakePubSub()
    relay, factory, _ = make_relay(pubsub)
    before = len(_relay_threads())
    try:
        relay.start()
        relay.start()
        assert relay.connected.wait(DEADLINE)
        assert pubsub.idle.wait(DEADLINE)

        assert len(_relay_threads()) == before + 1
        assert relay.running
        assert factory.made == [pubsub]
    finally:
        relay.stop(timeout=DEADLINE)

    assert not relay.running
    assert len(_relay_threads()) == before
    assert pubsub.closed


def test_running_thread_delivers_to_an_outbox_attached_later():
    pubsub = FakePubSub()
    relay, _, waker = make_relay(pubsub)
    outbox = Outbox(8)
    try:
        relay.start()
        assert relay.connected.wait(DEADLINE)
        relay.attach([CHAT], outbox)
        assert waker.calls == [relay.control_channel]
        pubsub.script.append(message(CHAT, b"hello"))

        controls, frames, closing = outbox.drain(DEADLINE)
    finally:
        relay.stop(timeout=DEADLINE)

    assert frames == [encode_text_frame(b"hello")]
    assert ("subscribe", frozenset({CHAT.encode()})) in pubsub.calls


def test_relay_can_start_again_after_stop():
    relay, factory, _ = make_relay(FakePubSub(), FakePubSub())
    try:
        relay.start()
        assert relay.connected.wait(DEADLINE)
        relay.stop(timeout=DEADLINE)
        assert not relay.running

        relay.start()
        assert relay.connected.wait(DEADLINE)
        assert relay.running
    finally:
        relay.stop(timeout=DEADLINE)

    assert len(factory.made) == 2
