"""app.turbo.relay: subscriptions, delivery, and surviving Redis, against an in-memory PubSub.

The relay is given a fake ``pubsub_factory`` and ``waker``: no Redis and no network.
Each fake PubSub records what the relay asked of it and hands out a script of messages
(payloads as the Publisher sends them: ``b"<id> <html>"``). A script ends with
:class:`Done`, a ``BaseException`` that the relay does not catch, so ``Relay._run`` can
be driven to the end in the test's own thread. A fake History answers the catch-up
after a lost connection.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable

import pytest
import redis

# Not `import app.turbo.relay as ...`: once `app` is imported, its attribute `turbo`
# is the extension instance, which shadows the subpackage (see test_extension.py).
import app.turbo.relay as relay_module
from app.turbo.channels import history_key
from app.turbo.message import REFRESH_HTML, Message
from app.turbo.outbox import CLOSE_OUTBOX_OVERFLOW, HEARTBEAT, Outbox, encode_text_frame
from app.turbo.relay import Relay

DEADLINE = 5.0
CHAT = "turbo:session:abcdefghijklmnop"
NEWS = "turbo:broadcast"
BOOM = "turbo:stream:boom"
CHAT_HISTORY = history_key(CHAT)
NEWS_HISTORY = history_key(NEWS)


def payload(message_id: str, html: bytes) -> bytes:
    """What the Publisher sends on a channel: the history id, a space, the HTML."""
    return message_id.encode() + b" " + html


class Done(BaseException):
    """Ends a scripted run: not an Exception, so the relay lets it through."""


def message(channel: str | bytes, data: bytes, kind: str = "message") -> dict:
    if isinstance(channel, str):
        channel = channel.encode()
    return {"type": kind, "pattern": None, "channel": channel, "data": data}


class FakePubSub:
    """An in-memory stand-in for the relay's Subscriber."""

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

    def read(self) -> list[tuple[bytes, bytes]]:
        if self.closed:
            raise redis.ConnectionError("pubsub used after close")
        if not self.script:
            # Nothing scripted: behave like a quiet connection, without spinning.
            self.idle.set()
            threading.Event().wait(0.01)
            return []
        item = self.script.pop(0)
        if isinstance(item, BaseException) or (
            isinstance(item, type) and issubclass(item, BaseException)
        ):
            raise item
        if callable(item):
            item()  # something happening elsewhere meanwhile (e.g. Redis restarts)
            return []
        if item is None or item["type"] != "message":  # type: ignore[index]
            return []
        return [(item["channel"], item["data"])]  # type: ignore[index]

    def close(self) -> None:
        self.closed = True


class Factory:
    """Hands out the given fake PubSubs in order; records every one it made.

    :param then_done: once the given ones are used up, raise :class:`Done` rather
        than hand out quiet ones (ends a run that would reconnect forever).
    """

    def __init__(self, *pubsubs: FakePubSub, then_done: bool = False) -> None:
        self.pending = list(pubsubs)
        self.made: list[FakePubSub] = []
        self.then_done = then_done

    def __call__(self) -> FakePubSub:
        if not self.pending and self.then_done:
            raise Done()
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

    closing = None

    def put(self, message: Message) -> bool:
        raise RuntimeError("boom")

    raw_put = put

    def check_bound(self) -> bool:
        return False


class FakeHistory:
    """Answers ``since(key, position)`` from a table; records every call.

    :param answers: ``{history key: (entries, gap)}``; other keys have nothing.
    :param fail: exceptions to raise, one per call, before answering; ``None``: answer.
    :param watch: a pubsub whose subscriptions are noted at each call.
    """

    def __init__(
        self,
        answers: dict[str, tuple[list[tuple[str, bytes]], bool]] | None = None,
        *,
        fail: Callable[[str], BaseException | None] = lambda key: None,
        watch: FakePubSub | None = None,
    ) -> None:
        self.answers = answers or {}
        self.fail = fail
        self.watch = watch
        self.calls: list[tuple[str, str]] = []
        self.subscribed_at_call: list[set[bytes]] = []

    def since(self, key: str, position: str) -> tuple[list[tuple[str, bytes]], bool]:
        self.calls.append((key, position))
        if self.watch is not None:
            self.subscribed_at_call.append(self.watch.subscribed)
        error = self.fail(key)
        if error is not None:
            raise error
        return self.answers.get(key, ([], False))


def make_relay(
    *pubsubs: FakePubSub, history: FakeHistory | None = None, then_done: bool = False
) -> tuple[Relay, Factory, Waker]:
    factory, waker = Factory(*pubsubs, then_done=then_done), Waker()
    relay = Relay(
        "redis://unused.invalid/0",
        pubsub_factory=factory,
        waker=waker,
        history=history,  # type: ignore[arg-type]
    )
    return relay, factory, waker


def run_until_done(relay: Relay) -> None:
    with pytest.raises(Done):
        relay._run()


def messages_of(outbox: Outbox) -> list[Message]:
    return outbox.drain(0)[1]


def htmls_of(outbox: Outbox) -> list[bytes]:
    return [m.html for m in messages_of(outbox)]


def delivered_of(outbox: Outbox) -> list[tuple[str | None, bytes]]:
    return [(m.id, m.html) for m in messages_of(outbox)]


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


def test_one_message_reaches_every_outbox_as_the_same_object_with_its_frame_encoded_once():
    relay, _, _ = make_relay()
    outboxes = [Outbox(8) for _ in range(3)]
    for outbox in outboxes:
        relay.attach([NEWS], outbox)
    html = b"<turbo-stream></turbo-stream>"

    relay._dispatch(NEWS.encode(), payload("1700000000000-0", html))

    delivered = [messages_of(outbox) for outbox in outboxes]
    assert all(len(d) == 1 for d in delivered)
    first = delivered[0][0]
    assert delivered[1][0] is first
    assert delivered[2][0] is first
    assert (first.channel, first.label, first.id, first.html) == (
        NEWS.encode(),
        "b",
        "1700000000000-0",
        html,
    )
    assert first.plain_frame == encode_text_frame(html)
    assert first.plain_frame is first.plain_frame  # encoded once, then the same bytes object
    assert relay.delivered == 1


def test_a_payload_without_an_id_is_still_delivered_with_no_id():
    relay, _, _ = make_relay()
    outbox = Outbox(8)
    relay.attach([CHAT], outbox)

    relay._dispatch(CHAT.encode(), b"<turbo-stream></turbo-stream>")

    assert delivered_of(outbox) == [(None, b"<turbo-stream></turbo-stream>")]
    assert relay._last == {}  # nothing to catch up from


def test_messages_are_labelled_with_their_channel_kind():
    relay, _, _ = make_relay()
    outbox = Outbox(8)
    relay.attach([CHAT, NEWS, "turbo:user:ann", "turbo:stream:board:1"], outbox)

    for channel in (CHAT, NEWS, "turbo:user:ann", "turbo:stream:board:1"):
        relay._dispatch(channel.encode(), payload("1-0", b"<x>"))

    assert [m.label for m in messages_of(outbox)] == ["s", "b", "u", "t:board:1"]


def test_dispatch_remembers_the_last_id_delivered_on_each_channel():
    relay, _, _ = make_relay()
    relay.attach([CHAT, NEWS], Outbox(8))

    relay._dispatch(CHAT.encode(), payload("1700-1", b"a"))
    relay._dispatch(CHAT.encode(), payload("1700-2", b"b"))
    relay._dispatch(CHAT.encode(), b"<no id>")
    relay._dispatch(NEWS.encode(), payload("1699-0", b"c"))

    assert relay._last == {CHAT.encode(): (1700, 2), NEWS.encode(): (1699, 0)}


def test_dispatch_to_an_unknown_channel_delivers_nothing():
    relay, _, _ = make_relay()
    outbox = Outbox(8)
    relay.attach([CHAT], outbox)

    relay._dispatch(b"turbo:session:somebody-else-here", payload("1-0", b"x"))

    assert messages_of(outbox) == []
    assert relay.delivered == 0
    assert relay._last == {}


def test_an_overflowing_outbox_does_not_stop_delivery_to_the_others():
    relay, _, _ = make_relay()
    slow, fast = Outbox(1), Outbox(8)
    relay.attach([NEWS], slow)
    relay.attach([NEWS], fast)

    relay._dispatch(NEWS.encode(), payload("1-0", b"one"))
    relay._dispatch(NEWS.encode(), payload("2-0", b"two"))  # slow overflows here

    assert slow.closing is not None and slow.closing.code == CLOSE_OUTBOX_OVERFLOW
    assert delivered_of(fast) == [("1-0", b"one"), ("2-0", b"two")]
    assert relay.dropped == 1
    assert relay.delivered == 2


# -- _run: the whole loop ------------------------------------------------------------------


def test_run_survives_bad_messages_and_a_lost_connection(caplog):
    first = FakePubSub(
        [
            message(CHAT, payload("1-0", b"good-1")),
            message(b"turbo:session:nobody-listens-here", payload("2-0", b"unknown")),
            message(CHAT, b"bogus", kind="psubscribe"),
            message(BOOM, payload("3-0", b"explodes")),
            message(CHAT, payload("4-0", b"good-2")),
            redis.ConnectionError("Connection reset by peer"),
        ]
    )
    second = FakePubSub([message(CHAT, payload("5-0", b"good-3")), Done()])
    relay, factory, _ = make_relay(first, second)
    outbox = Outbox(8)
    relay.attach([CHAT, NEWS], outbox)
    relay.attach([BOOM], ExplodingOutbox())  # type: ignore[arg-type]
    first.script.insert(3, message(relay.control_channel, b""))

    with caplog.at_level(logging.INFO, logger="turbocast.relay"):
        run_until_done(relay)

    assert htmls_of(outbox) == [b"good-1", b"good-2", b"good-3"]
    assert factory.made == [first, second]
    assert first.closed and second.closed
    everything = {CHAT.encode(), NEWS.encode(), BOOM.encode(), relay.control_channel.encode()}
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
    assert dropped[0].turbo_channel == BOOM.encode()


def test_run_reconnects_after_the_pubsub_factory_itself_fails(caplog):
    calls = []

    def flaky_factory():
        calls.append(1)
        if len(calls) == 1:
            raise redis.ConnectionError("Connection refused")
        return FakePubSub([message(CHAT, payload("1-0", b"after")), Done()])

    relay = Relay("redis://unused.invalid/0", pubsub_factory=flaky_factory, waker=Waker())
    outbox = Outbox(8)
    relay.attach([CHAT], outbox)

    with caplog.at_level(logging.WARNING, logger="turbocast.relay"):
        run_until_done(relay)

    assert len(calls) == 2
    assert htmls_of(outbox) == [b"after"]
    assert any("relay lost Redis" in r.getMessage() for r in caplog.records)


def test_run_logs_and_survives_an_unexpected_error_in_the_pubsub(caplog):
    first = FakePubSub([ValueError("parser confused")])
    second = FakePubSub([message(CHAT, payload("1-0", b"after")), Done()])
    relay, _, _ = make_relay(first, second)
    outbox = Outbox(8)
    relay.attach([CHAT], outbox)

    with caplog.at_level(logging.WARNING, logger="turbocast.relay"):
        run_until_done(relay)

    assert htmls_of(outbox) == [b"after"]
    errors = [r for r in caplog.records if "relay error" in r.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info is not None


def test_run_returns_when_stopped():
    relay, factory, _ = make_relay()
    relay.stop()  # no thread yet: only sets the stop flag

    relay._run()

    assert factory.made == []


# -- catch-up after a lost connection ------------------------------------------------------

T0 = 1_700_000_000_000


def tid(offset_ms: int, seq: int = 0) -> str:
    """A history id ``offset_ms`` after T0."""
    return f"{T0 + offset_ms}-{seq}"


LOST = redis.ConnectionError("Connection reset by peer")


def test_the_first_connection_reads_no_history():
    history = FakeHistory()
    relay, _, _ = make_relay(
        FakePubSub([message(CHAT, payload(tid(1), b"a")), Done()]), history=history
    )
    relay.attach([CHAT, NEWS], Outbox(8))

    run_until_done(relay)

    assert history.calls == []


def test_after_a_lost_connection_each_channel_catches_up_from_the_last_id_delivered_on_it():
    first = FakePubSub(
        [
            message(CHAT, payload(tid(0), b"<a>")),
            message(NEWS, payload(tid(1), b"<n>")),
            message(CHAT, payload(tid(5, 1), b"<b>")),
            message(CHAT, b"<no id>"),  # not a position: catch-up still starts at tid(5, 1)
            LOST,
        ]
    )
    second = FakePubSub([Done()])
    history = FakeHistory({CHAT_HISTORY: ([(tid(6), b"<c>"), (tid(7), b"<d>")], False)})
    relay, _, _ = make_relay(first, second, history=history)
    outbox = Outbox(16)
    relay.attach([CHAT, NEWS], outbox)

    run_until_done(relay)

    assert sorted(history.calls) == sorted([(CHAT_HISTORY, tid(5, 1)), (NEWS_HISTORY, tid(1))])
    assert delivered_of(outbox) == [
        (tid(0), b"<a>"),
        (tid(1), b"<n>"),
        (tid(5, 1), b"<b>"),
        (None, b"<no id>"),
        (tid(6), b"<c>"),
        (tid(7), b"<d>"),
    ]
    assert relay._last[CHAT.encode()] == (T0 + 7, 0)


def test_caught_up_messages_carry_their_channel_and_label():
    first = FakePubSub([message(CHAT, payload(tid(0), b"<a>")), LOST])
    history = FakeHistory({CHAT_HISTORY: ([(tid(1), b"<b>")], False)})
    relay, _, _ = make_relay(first, FakePubSub([Done()]), history=history)
    outbox = Outbox(8)
    relay.attach([CHAT], outbox)

    run_until_done(relay)

    caught_up = messages_of(outbox)[-1]
    assert (caught_up.channel, caught_up.label, caught_up.id, caught_up.gap) == (
        CHAT.encode(),
        "s",
        tid(1),
        False,
    )


def test_catch_up_reads_the_history_only_after_resubscribing_every_channel():
    # Subscribed first, then read: what is published in between is in both, never in neither.
    first = FakePubSub([message(CHAT, payload(tid(0), b"<a>")), LOST])
    second = FakePubSub([Done()])
    history = FakeHistory(watch=second)
    relay, _, _ = make_relay(first, second, history=history)
    relay.attach([CHAT, NEWS], Outbox(8))

    run_until_done(relay)

    assert len(history.subscribed_at_call) == 2
    assert all({CHAT.encode(), NEWS.encode()} <= s for s in history.subscribed_at_call)


def test_a_channel_with_nothing_delivered_catches_up_from_just_before_the_loss():
    first = FakePubSub([message(CHAT, payload(tid(0), b"<a>")), LOST])
    history = FakeHistory()
    relay, _, _ = make_relay(first, FakePubSub([Done()]), history=history)
    relay.attach([CHAT, NEWS], Outbox(8))

    before_ms = int(time.time() * 1000)
    run_until_done(relay)
    after_ms = int(time.time() * 1000)

    [(key, position)] = [call for call in history.calls if call[0] == NEWS_HISTORY]
    match = re.fullmatch(r"([0-9]+)-0", position)
    assert match is not None, position
    # A little before the loss, in case this host's clock and Redis's disagree.
    assert before_ms - 10_000 <= int(match.group(1)) <= after_ms


def test_a_channel_with_nothing_delivered_gets_the_entries_even_when_a_gap_is_reported():
    # From a time-based position the exact id is never in the history: not a real gap.
    first = FakePubSub([LOST])
    history = FakeHistory({NEWS_HISTORY: ([(tid(1), b"<n1>"), (tid(2), b"<n2>")], True)})
    relay, _, _ = make_relay(first, FakePubSub([Done()]), history=history)
    relay._info = lambda: {"run_id": "same"}
    outbox = Outbox(8)
    relay.attach([NEWS], outbox)

    run_until_done(relay)

    assert delivered_of(outbox) == [(tid(1), b"<n1>"), (tid(2), b"<n2>")]
    assert not any(m.gap for m in messages_of(outbox))


def test_a_gap_while_redis_kept_running_sends_exactly_one_refresh_instead_of_the_entries():
    first = FakePubSub([message(CHAT, payload(tid(0), b"<a>")), LOST])
    second = FakePubSub([message(CHAT, payload(tid(9), b"<live>")), Done()])
    history = FakeHistory({CHAT_HISTORY: ([(tid(5), b"<x>"), (tid(8), b"<y>")], True)})
    relay, _, _ = make_relay(first, second, history=history)
    relay._info = lambda: {"run_id": "same-redis"}
    outbox = Outbox(8)
    relay.attach([CHAT], outbox)

    run_until_done(relay)

    got = messages_of(outbox)
    gaps = [m for m in got if m.gap]
    assert len(gaps) == 1
    assert gaps[0].html == REFRESH_HTML
    assert gaps[0].id == tid(8)  # the newest entry: the refresh covers everything up to it
    assert gaps[0].label == "s"
    assert [(m.id, m.html, m.gap) for m in got] == [
        (tid(0), b"<a>", False),
        (tid(8), REFRESH_HTML, True),
        (tid(9), b"<live>", False),
    ]


def test_a_gap_with_an_empty_history_refreshes_at_the_last_delivered_id():
    first = FakePubSub([message(CHAT, payload(tid(3), b"<a>")), LOST])
    history = FakeHistory({CHAT_HISTORY: ([], True)})
    relay, _, _ = make_relay(first, FakePubSub([Done()]), history=history)
    relay._info = lambda: {"run_id": "same-redis"}
    outbox = Outbox(8)
    relay.attach([CHAT], outbox)

    run_until_done(relay)

    got = messages_of(outbox)
    assert [(m.id, m.html, m.gap) for m in got] == [
        (tid(3), b"<a>", False),
        (tid(3), REFRESH_HTML, True),
    ]


def test_a_gap_after_a_redis_restart_delivers_the_entries_and_no_refresh():
    server = {"run_id": "before-restart"}
    first = FakePubSub([message(CHAT, payload(tid(0), b"<a>")), LOST])
    history = FakeHistory({CHAT_HISTORY: ([(tid(5), b"<x>"), (tid(8), b"<y>")], True)})
    relay, _, _ = make_relay(first, FakePubSub([Done()]), history=history)
    relay._info = lambda: dict(server)
    outbox = Outbox(8)
    relay.attach([CHAT], outbox)
    first.script.insert(1, lambda: server.update(run_id="after-restart"))

    run_until_done(relay)

    got = messages_of(outbox)
    assert not any(m.gap for m in got)
    assert [(m.id, m.html) for m in got] == [(tid(0), b"<a>"), (tid(5), b"<x>"), (tid(8), b"<y>")]


def test_an_unknown_run_id_counts_as_the_same_redis_so_a_gap_still_refreshes():
    def no_info() -> dict:
        raise redis.ConnectionError("INFO failed")

    first = FakePubSub([message(CHAT, payload(tid(0), b"<a>")), LOST])
    history = FakeHistory({CHAT_HISTORY: ([(tid(5), b"<x>")], True)})
    relay, _, _ = make_relay(first, FakePubSub([Done()]), history=history)
    relay._info = no_info
    outbox = Outbox(8)
    relay.attach([CHAT], outbox)

    run_until_done(relay)

    assert [m.gap for m in messages_of(outbox)] == [False, True]


def test_catch_up_with_no_history_configured_only_resumes_live_delivery():
    first = FakePubSub([message(CHAT, payload(tid(0), b"<a>")), LOST])
    second = FakePubSub([message(CHAT, payload(tid(9), b"<live>")), Done()])
    relay, factory, _ = make_relay(first, second, history=None)
    outbox = Outbox(8)
    relay.attach([CHAT], outbox)

    run_until_done(relay)

    assert delivered_of(outbox) == [(tid(0), b"<a>"), (tid(9), b"<live>")]
    assert factory.made == [first, second]


def test_catch_up_interrupted_by_another_lost_connection_is_done_again_from_the_same_place():
    failures = [redis.ConnectionError("lost again"), None, None]
    first = FakePubSub([message(CHAT, payload(tid(2), b"<a>")), LOST])
    history = FakeHistory(
        {CHAT_HISTORY: ([(tid(3), b"<b>")], False)}, fail=lambda key: failures.pop(0)
    )
    relay, factory, _ = make_relay(first, FakePubSub(), FakePubSub([Done()]), history=history)
    outbox = Outbox(8)
    relay.attach([CHAT, NEWS], outbox)

    run_until_done(relay)

    assert len(factory.made) == 3
    chat_calls = [position for key, position in history.calls if key == CHAT_HISTORY]
    news_calls = [position for key, position in history.calls if key == NEWS_HISTORY]
    assert chat_calls == [tid(2), tid(2)]
    assert len(news_calls) == 1  # the second attempt got that far; the first did not
    assert delivered_of(outbox) == [(tid(2), b"<a>"), (tid(3), b"<b>")]


def test_a_second_outage_catches_up_from_a_fresh_loss_time_and_the_new_last_ids():
    first = FakePubSub([message(CHAT, payload(tid(1), b"<a>")), LOST])
    second = FakePubSub([message(CHAT, payload(tid(4), b"<b>")), LOST])
    history = FakeHistory()
    relay, _, _ = make_relay(first, second, FakePubSub([Done()]), history=history)
    relay.attach([CHAT], Outbox(8))

    run_until_done(relay)

    assert history.calls == [(CHAT_HISTORY, tid(1)), (CHAT_HISTORY, tid(4))]


def test_a_history_error_on_one_channel_does_not_stop_live_delivery_on_the_others():
    def wrong_type(key: str) -> BaseException | None:
        if key == NEWS_HISTORY:
            return redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")
        return None

    first = FakePubSub([message(CHAT, payload(tid(1), b"<a>")), LOST])
    second = FakePubSub([message(CHAT, payload(tid(9), b"<live>")), Done()])
    history = FakeHistory(fail=wrong_type)
    # then_done: a relay that keeps reconnecting ends the run instead of spinning.
    relay, _, _ = make_relay(first, second, history=history, then_done=True)
    outbox = Outbox(8)
    relay.attach([CHAT, NEWS], outbox)

    run_until_done(relay)

    assert (tid(9), b"<live>") in delivered_of(outbox)


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
        pubsub.script.append(message(CHAT, payload("1700000000000-0", b"hello")))

        controls, messages, closing = outbox.drain(DEADLINE)
    finally:
        relay.stop(timeout=DEADLINE)

    assert [(m.id, m.html) for m in messages] == [("1700000000000-0", b"hello")]
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


def test_a_fan_out_past_an_outbox_bound_closes_it_and_stops_feeding_it():
    relay = Relay("redis://unused", pubsub_factory=lambda: None, waker=lambda _c: None)
    small, big = Outbox(2), Outbox(100)
    relay.attach(["turbo:broadcast"], small)
    relay.attach(["turbo:broadcast"], big)
    for n in range(5):
        relay._deliver(Message(b"turbo:broadcast", "b", f"1-{n}", b"<p></p>"))
    assert small.closing is not None and small.closing.code == CLOSE_OUTBOX_OVERFLOW
    assert relay.dropped == 1
    assert len(big) == 5
    assert len(relay._puts[b"turbo:broadcast"]) == 1  # only the healthy outbox is fed
    _, messages, _ = small.drain(0)
    assert messages == []  # what waited is thrown away


def test_heartbeat_thread_beats_every_attached_outbox_until_stopped():
    relay = Relay(
        "redis://unused.invalid/0",
        pubsub_factory=FakePubSub,
        waker=Waker(),
        heartbeat_interval=0.05,
    )
    first, second, gone = Outbox(100), Outbox(100), Outbox(100)
    relay.attach([CHAT], first)
    relay.attach([CHAT, NEWS], second)
    relay.detach(relay.attach([NEWS], gone))
    relay.start()
    try:
        for outbox in (first, second):
            beats: list[object] = []
            while len(beats) < 2:  # and again, an interval later; each drain waits for one
                controls, messages, _ = outbox.drain(DEADLINE)
                assert controls and not messages
                beats += controls
            assert set(map(id, beats)) == {id(HEARTBEAT)}
    finally:
        relay.stop(timeout=DEADLINE)

    assert not any(t.name == "turbo-heartbeat" for t in threading.enumerate())
    assert len(gone) == 0


def test_no_heartbeat_thread_when_the_interval_is_zero():
    relay = Relay("redis://unused.invalid/0", pubsub_factory=FakePubSub, waker=Waker())
    relay.start()
    try:
        assert relay.connected.wait(DEADLINE)
        assert not any(t.name == "turbo-heartbeat" for t in threading.enumerate())
    finally:
        relay.stop(timeout=DEADLINE)
