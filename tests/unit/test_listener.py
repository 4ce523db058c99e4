"""turbocast.listener: subscriptions confirmed by Redis, delivery, and surviving Redis.

No Redis and no network. The listener gets a scripted :class:`FakePubSub` per
connection (see fake_pubsub.py): a used-up script raises :class:`Done`, so
``Listener._run`` is driven to its end in the test's own thread. The relay is an
in-memory :class:`FakeRegistry`; a :class:`FakeHistory` answers the catch-up after
a lost connection; the thread test runs on the in-memory :class:`Broker`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

import pytest
import redis

import turbocast.listener as listener_module
from tests.unit.fake_pubsub import (
    BOARD,
    CHAT,
    DEADLINE,
    LOST,
    NEWS,
    Broker,
    Done,
    Factory,
    FakeHistory,
    FakePubSub,
    FakeRegistry,
    Waker,
    b,
    confirmed,
    note,
    published,
    tid,
)
from turbocast.channels import history_key
from turbocast.listener import BACKOFF_CAP, Listener
from turbocast.message import REFRESH_HTML, Message
from turbocast.subscriber import MESSAGE

CONTROL = "turbo:relay:0123456789abcdef"
CHAT_HISTORY = history_key(CHAT)
NEWS_HISTORY = history_key(NEWS)
BOARD_HISTORY = history_key(BOARD)


def make_listener(
    *pubsubs: FakePubSub | None,
    registry: FakeRegistry | None = None,
    history: FakeHistory | None = None,
    run_id: Callable[[], str | None] = lambda: None,
    waker: Callable[[str], object] | None = None,
) -> tuple[Listener, FakeRegistry, Factory]:
    registry = registry if registry is not None else FakeRegistry(CHAT)
    factory = Factory(*pubsubs)
    listener = Listener(
        registry,
        prefix="turbo",
        control_channel=CONTROL,
        pubsub_factory=factory,
        waker=waker or Waker(),
        history=history,  # type: ignore[arg-type]
        redis_run_id=run_id,
    )
    return listener, registry, factory


def run_until_done(listener: Listener) -> None:
    with pytest.raises(Done):
        listener._run()


def wants(registry: FakeRegistry, listener: Listener, *channels: str) -> Callable[[], None]:
    """A step: the sockets now want just ``channels`` (one came or left); wake the listener."""

    def step() -> None:
        registry.channels = {b(c) for c in channels}
        listener.wake()

    return step


def wait_until(condition: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.002)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    # The reconnect wait is a stop-event wait; make it immediate (see the backoff tests).
    monkeypatch.setattr(listener_module, "BACKOFF_START", 0.0)


# -- subscribing, confirmed by Redis -------------------------------------------------------


def test_subscribes_the_control_channel_then_every_wanted_channel():
    pubsub = FakePubSub()
    listener, _, _ = make_listener(pubsub, registry=FakeRegistry(CHAT, NEWS))

    run_until_done(listener)

    assert pubsub.calls == [
        ("subscribe", frozenset({b(CONTROL)})),
        ("subscribe", frozenset({b(CHAT), b(NEWS)})),
    ]
    assert pubsub.closed
    assert not listener.connected.is_set()


def test_connected_only_once_redis_confirmed_every_channel():
    seen: list[object] = []
    pubsub = FakePubSub(auto_confirm=False)
    listener, registry, _ = make_listener(pubsub, registry=FakeRegistry(CHAT, NEWS))
    is_connected = listener.connected.is_set
    pubsub.steps = [
        confirmed(CONTROL),  # the control channel counts for nothing
        note(seen, is_connected),
        confirmed(CHAT),
        note(seen, is_connected),
        confirmed(NEWS),
        note(seen, is_connected),
    ]

    run_until_done(listener)

    assert seen == [False, False, True]
    # The registry hears of confirmations only once connected, and then of both.
    assert registry.confirmations and registry.confirmations[0] == {b(CHAT), b(NEWS)}


def test_with_nothing_wanted_the_listener_is_connected_at_once():
    seen: list[object] = []
    pubsub = FakePubSub(auto_confirm=False)
    listener, registry, _ = make_listener(pubsub, registry=FakeRegistry())
    pubsub.steps = [[], note(seen, listener.connected.is_set)]  # a first poll, then look

    run_until_done(listener)

    assert seen == [True]
    assert pubsub.calls == [("subscribe", frozenset({b(CONTROL)}))]


def test_a_channel_wanted_later_is_confirmed_to_the_registry_only_after_redis_confirmed_it():
    pubsub = FakePubSub(auto_confirm=False)
    registry = FakeRegistry(CHAT)
    listener, _, _ = make_listener(pubsub, registry=registry)
    marks: list[int] = []
    pubsub.steps = [
        confirmed(CHAT),
        wants(registry, listener, CHAT, NEWS),  # a socket on NEWS comes
        lambda: marks.append(len(registry.confirmations)),
        confirmed(NEWS),
    ]

    run_until_done(listener)

    assert pubsub.calls[-1] == ("subscribe", frozenset({b(NEWS)}))
    [upto] = marks
    assert all(c == {b(CHAT)} for c in registry.confirmations[:upto])  # pending: not yet
    assert registry.confirmations[-1] == {b(CHAT), b(NEWS)}


def test_a_confirmation_of_an_earlier_subscribe_does_not_confirm_a_later_one():
    # SUBSCRIBE, UNSUBSCRIBE, SUBSCRIBE again before Redis answered the first: Redis
    # answers each in order, and only the second SUBSCRIBE's answer counts.
    pubsub = FakePubSub(auto_confirm=False)
    registry = FakeRegistry(CHAT, NEWS)
    listener, _, _ = make_listener(pubsub, registry=registry)

    marks: list[object] = []
    pubsub.steps = [
        confirmed(NEWS),
        wants(registry, listener, NEWS),  # CHAT's last socket leaves before Redis confirmed it
        wants(registry, listener, CHAT, NEWS),  # and a new one comes: SUBSCRIBE CHAT again
        confirmed(CHAT),  # the answer to the first SUBSCRIBE
        note(marks, lambda: registry.confirmations[-1]),
        confirmed(CHAT),  # the answer to the second
        note(marks, lambda: registry.confirmations[-1]),
    ]

    run_until_done(listener)

    assert [name for name, _ in pubsub.calls[1:]] == ["subscribe", "unsubscribe", "subscribe"]
    assert marks == [{b(NEWS)}, {b(CHAT), b(NEWS)}]


def test_an_unsubscribed_channel_needs_a_new_confirmation_when_wanted_again():
    pubsub = FakePubSub(auto_confirm=False)
    registry = FakeRegistry(CHAT, NEWS)
    listener, _, _ = make_listener(pubsub, registry=registry)

    marks: list[object] = []
    pubsub.steps = [
        [confirmed(CHAT), confirmed(NEWS)],
        wants(registry, listener, NEWS),
        [],  # a pass to send the UNSUBSCRIBE
        note(marks, lambda: registry.confirmations[-1]),
        wants(registry, listener, CHAT, NEWS),
        note(marks, lambda: registry.confirmations[-1]),
        confirmed(CHAT),
        note(marks, lambda: registry.confirmations[-1]),
    ]

    run_until_done(listener)

    assert marks == [{b(NEWS)}, {b(NEWS)}, {b(CHAT), b(NEWS)}]


def test_an_unwanted_channel_is_unsubscribed_and_its_messages_in_flight_dropped():
    pubsub = FakePubSub()
    registry = FakeRegistry(CHAT, NEWS)
    listener, _, _ = make_listener(pubsub, registry=registry)
    pubsub.steps = [
        published(CHAT, tid(1), b"<before>"),
        wants(registry, listener, NEWS),  # CHAT's last socket leaves
        published(CHAT, tid(2), b"<in flight>"),  # sent by Redis before the UNSUBSCRIBE
        published(NEWS, tid(3), b"<news>"),
    ]

    run_until_done(listener)

    assert pubsub.calls[-1] == ("unsubscribe", frozenset({b(CHAT)}))
    assert registry.ids == [tid(1), tid(3)]


def test_nothing_changed_sends_nothing_more_to_redis():
    pubsub = FakePubSub()
    listener, _, _ = make_listener(pubsub, registry=FakeRegistry(CHAT))
    pubsub.steps = [listener.wake, listener.wake, published(CHAT, tid(1), b"<a>")]

    run_until_done(listener)

    assert len(pubsub.calls) == 2  # the control channel, then CHAT: once


# -- delivery ------------------------------------------------------------------------------


def test_a_message_right_after_its_channels_confirmation_is_delivered():
    # Redis sends a confirmation before anything published after the SUBSCRIBE.
    pubsub = FakePubSub(
        [confirmed(CHAT), published(CHAT, tid(1), b"<first>")],
        published(CHAT, tid(2), b"<second>"),
        auto_confirm=False,
    )
    listener, registry, _ = make_listener(pubsub)

    run_until_done(listener)

    assert registry.ids == [tid(1), tid(2)]


def test_the_first_connection_delivers_at_once_while_other_channels_await_confirmation():
    pubsub = FakePubSub(
        [confirmed(CHAT), published(CHAT, tid(1), b"<a>")],
        auto_confirm=False,
    )
    listener, registry, _ = make_listener(pubsub, registry=FakeRegistry(CHAT, NEWS))
    seen: list[object] = []
    pubsub.steps.append(note(seen, lambda: (registry.ids, listener.connected.is_set())))

    run_until_done(listener)

    # Nothing to catch up on a first connection: no reason to hold anything back.
    assert seen == [([tid(1)], False)]


def test_messages_carry_their_channel_label_id_and_html():
    pubsub = FakePubSub(
        published(CHAT, tid(1), b"<s>"),
        published(NEWS, tid(2), b"<b>"),
        published("turbo:user:ann", tid(3), b"<u>"),
        published(BOARD, tid(4), b"<t>"),
    )
    registry = FakeRegistry(CHAT, NEWS, "turbo:user:ann", BOARD)
    listener, _, _ = make_listener(pubsub, registry=registry)

    run_until_done(listener)

    assert [(m.label, m.id, m.html, m.gap) for m in registry.delivered] == [
        ("s", tid(1), b"<s>", False),
        ("b", tid(2), b"<b>", False),
        ("u", tid(3), b"<u>", False),
        ("t:board:1", tid(4), b"<t>", False),
    ]


def test_the_control_channel_and_confirmations_are_never_delivered():
    pubsub = FakePubSub(
        published(CONTROL, None, b""),
        confirmed(CHAT),
        published(CHAT, tid(1), b"<a>"),
    )
    listener, registry, _ = make_listener(pubsub)

    run_until_done(listener)

    assert registry.seen == [(b(CHAT), tid(1), b"<a>")]


def test_a_payload_without_an_id_is_delivered_with_none_and_moves_no_position():
    pubsub = FakePubSub(
        published(CHAT, tid(5), b"<a>"),
        published(CHAT, None, b"<turbo-stream></turbo-stream>"),
        published(CHAT, None, b"12x <not an id>"),
        published(CHAT, tid(6), b"<b>"),
    )
    listener, registry, _ = make_listener(pubsub)

    run_until_done(listener)

    assert registry.ids == [tid(5), None, None, tid(6)]
    assert registry.delivered[2].html == b"12x <not an id>"


def test_a_message_already_delivered_on_its_channel_is_not_delivered_again():
    pubsub = FakePubSub(
        published(CHAT, tid(5), b"<a>"),
        published(CHAT, tid(5), b"<a again>"),
        published(CHAT, tid(4), b"<older>"),
        published(NEWS, tid(4), b"<other channel, own order>"),
        published(CHAT, tid(5, 1), b"<b>"),
    )
    listener, registry, _ = make_listener(pubsub, registry=FakeRegistry(CHAT, NEWS))

    run_until_done(listener)

    assert registry.seen == [
        (b(CHAT), tid(5), b"<a>"),
        (b(NEWS), tid(4), b"<other channel, own order>"),
        (b(CHAT), tid(5, 1), b"<b>"),
    ]


# -- the thread never dies -----------------------------------------------------------------


def test_a_bad_message_is_logged_and_dropped_and_the_next_ones_still_arrive(caplog):
    bogus = "turbo:bogus:x"  # no label for it: making its message fails
    pubsub = FakePubSub(
        published(CHAT, tid(1), b"<good-1>"),
        published(bogus, tid(2), b"<bad>"),
        published(CHAT, tid(3), b"<good-2>"),
    )
    listener, registry, factory = make_listener(pubsub, registry=FakeRegistry(CHAT, bogus))

    with caplog.at_level(logging.INFO, logger="turbocast.relay"):
        run_until_done(listener)

    assert registry.ids == [tid(1), tid(3)]
    assert len(factory.made) == 1  # no reconnect for one bad message
    [dropped] = [r for r in caplog.records if "relay dropped a message" in r.getMessage()]
    assert dropped.levelno == logging.ERROR
    assert dropped.exc_info is not None
    assert dropped.turbo_channel == b(bogus)


def test_a_lost_connection_is_logged_and_everything_subscribed_again(caplog):
    first = FakePubSub(published(CHAT, tid(1), b"<a>"), LOST)
    second = FakePubSub(published(CHAT, tid(2), b"<b>"))
    listener, registry, factory = make_listener(first, second, registry=FakeRegistry(CHAT, NEWS))

    with caplog.at_level(logging.INFO, logger="turbocast.relay"):
        run_until_done(listener)

    assert registry.ids == [tid(1), tid(2)]
    assert factory.made == [first, second]
    assert first.closed and second.closed
    everything = {b(CONTROL), b(CHAT), b(NEWS)}
    assert first.subscribed == everything
    assert second.subscribed == everything
    [lost] = [r for r in caplog.records if "relay lost Redis" in r.getMessage()]
    assert lost.levelno == logging.WARNING
    assert "ConnectionError" in lost.getMessage()
    assert lost.turbo_attempt == 0
    subscribed = [r for r in caplog.records if "relay subscribed to Redis" in r.getMessage()]
    assert [r.turbo_channels for r in subscribed] == [2, 2]


def test_a_failed_connection_attempt_is_retried(caplog):
    pubsub = FakePubSub(published(CHAT, tid(1), b"<after>"))
    listener, registry, factory = make_listener(None, None, pubsub)

    with caplog.at_level(logging.WARNING, logger="turbocast.relay"):
        run_until_done(listener)

    assert factory.attempts == 3  # two refused, then served
    assert registry.ids == [tid(1)]
    lost = [r for r in caplog.records if "relay lost Redis" in r.getMessage()]
    assert [r.turbo_attempt for r in lost] == [0, 1]


@pytest.mark.parametrize(
    "error", [ValueError("parser confused"), RuntimeError("boom"), KeyError("x")]
)
def test_an_unexpected_error_is_logged_with_its_traceback_and_the_listener_reconnects(
    caplog, error
):
    first = FakePubSub(error)
    second = FakePubSub(published(CHAT, tid(1), b"<after>"))
    listener, registry, _ = make_listener(first, second)

    with caplog.at_level(logging.WARNING, logger="turbocast.relay"):
        run_until_done(listener)

    assert registry.ids == [tid(1)]
    [logged] = [r for r in caplog.records if "relay error" in r.getMessage()]
    assert logged.exc_info is not None and logged.exc_info[1] is error
    assert first.closed


def test_an_error_from_the_registry_drops_that_message_and_keeps_the_connection(caplog):
    class Exploding(FakeRegistry):
        def deliver(self, message: Message) -> None:
            if message.html == b"<boom>":
                raise RuntimeError("boom")
            super().deliver(message)

    registry = Exploding(CHAT)
    first = FakePubSub(published(CHAT, tid(1), b"<boom>"), published(CHAT, tid(2), b"<after>"))
    listener, _, factory = make_listener(first, registry=registry)

    with caplog.at_level(logging.WARNING, logger="turbocast.relay"):
        run_until_done(listener)

    assert registry.ids == [tid(2)]
    assert any("relay dropped a message" in r.getMessage() for r in caplog.records)
    assert not any("relay lost Redis" in r.getMessage() for r in caplog.records)


def test_closing_a_broken_connection_may_fail_too():
    class Unclosable(FakePubSub):
        def close(self) -> None:
            raise OSError("already gone")

    first = Unclosable(LOST)
    second = FakePubSub(published(CHAT, tid(1), b"<after>"))
    listener, registry, _ = make_listener(first, second)

    run_until_done(listener)

    assert registry.ids == [tid(1)]


def test_run_returns_at_once_when_stopped():
    listener, _, factory = make_listener()
    listener.stop()  # no thread yet: only sets the stop flag

    listener._run()

    assert factory.attempts == 0


# -- backoff -------------------------------------------------------------------------------


class RecordingStop(threading.Event):
    """A stop event whose timed wait returns at once and is recorded (the backoff)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        return self.is_set()


def test_backoff_doubles_up_to_the_cap_with_jitter_and_resets_after_a_connection(monkeypatch):
    monkeypatch.setattr(listener_module, "BACKOFF_START", 1.0)
    refused = [None] * 8
    listener, registry, _ = make_listener(
        *refused, FakePubSub(published(CHAT, tid(1), b"<up>"), LOST), None, None
    )
    listener._stop = stop = RecordingStop()

    run_until_done(listener)

    assert registry.ids == [tid(1)]
    expected = [1, 2, 4, 8, 16, 32, 60, 60] + [1, 2, 4]  # reset once connected
    assert BACKOFF_CAP == 60
    assert len(stop.waits) == len(expected)
    for wait, delay in zip(stop.waits, expected, strict=True):
        assert delay * 0.5 <= wait <= delay  # jitter: never all at once after an outage


def test_a_connection_that_breaks_before_redis_confirmed_everything_keeps_backing_off(
    monkeypatch,
):
    monkeypatch.setattr(listener_module, "BACKOFF_START", 1.0)
    unconfirmed = [FakePubSub(LOST, auto_confirm=False) for _ in range(3)]
    listener, _, _ = make_listener(*unconfirmed)
    listener._stop = stop = RecordingStop()

    run_until_done(listener)

    assert len(stop.waits) == 3
    for wait, delay in zip(stop.waits, [1, 2, 4], strict=True):
        assert delay * 0.5 <= wait <= delay  # never connected: no reset


# -- catch-up after a lost connection ------------------------------------------------------


def test_the_first_connection_reads_no_history():
    history = FakeHistory()
    listener, _, _ = make_listener(
        FakePubSub(published(CHAT, tid(1), b"<a>")),
        registry=FakeRegistry(CHAT, NEWS),
        history=history,
    )

    run_until_done(listener)

    assert history.calls == []


def test_each_channel_catches_up_from_the_last_id_delivered_on_it():
    first = FakePubSub(
        published(CHAT, tid(0), b"<a>"),
        published(NEWS, tid(1), b"<n>"),
        published(CHAT, tid(5, 1), b"<b>"),
        published(CHAT, None, b"<no id>"),  # not a position: CHAT still stands at tid(5, 1)
        LOST,
    )
    history = FakeHistory({CHAT_HISTORY: ([(tid(6), b"<c>"), (tid(7), b"<d>")], False)})
    listener, registry, _ = make_listener(
        first, FakePubSub(), registry=FakeRegistry(CHAT, NEWS), history=history
    )

    run_until_done(listener)

    assert sorted(history.calls) == sorted([(CHAT_HISTORY, tid(5, 1)), (NEWS_HISTORY, tid(1))])
    assert registry.ids == [tid(0), tid(1), tid(5, 1), None, tid(6), tid(7)]


def test_live_and_caught_up_messages_carry_the_publishers_time():
    live = (MESSAGE, b(CHAT), f"{tid(0)};t=1700000000500000 <a>".encode())
    first = FakePubSub(live, LOST)
    entries = [(tid(6), b"<c>", None, None, b"1700000001250000"), (tid(7), b"<d>")]
    history = FakeHistory({CHAT_HISTORY: (entries, False)})
    listener, registry, _ = make_listener(
        first, FakePubSub(), registry=FakeRegistry(CHAT), history=history
    )

    run_until_done(listener)

    assert [(m.id, m.published) for m in registry.delivered] == [
        (tid(0), 1700000000.5),
        (tid(6), 1700000001.25),
        (tid(7), None),  # an entry written before the publisher's time was kept
    ]


def test_a_channel_with_nothing_delivered_catches_up_from_just_before_the_loss():
    first = FakePubSub(published(CHAT, tid(0), b"<a>"), LOST)
    history = FakeHistory()
    listener, _, _ = make_listener(
        first, FakePubSub(), registry=FakeRegistry(CHAT, NEWS), history=history
    )

    before_ms = int(time.time() * 1000)
    run_until_done(listener)
    after_ms = int(time.time() * 1000)

    match = re.fullmatch(r"([0-9]+)-0", history.position(NEWS_HISTORY))
    assert match is not None
    # A little before the loss (2 s), in case this host's clock and Redis's disagree.
    assert before_ms - 2000 <= int(match.group(1)) <= after_ms - 2000
    assert history.position(CHAT_HISTORY) == tid(0)


def test_caught_up_messages_are_merged_across_channels_in_publish_order():
    first = FakePubSub(published(CHAT, tid(0), b"<c0>"), published(NEWS, tid(0, 1), b"<n0>"), LOST)
    history = FakeHistory(
        {
            CHAT_HISTORY: ([(tid(2), b"<c2>"), (tid(4), b"<c4>")], False),
            NEWS_HISTORY: ([(tid(1), b"<n1>"), (tid(3), b"<n3>"), (tid(4, 1), b"<n4>")], False),
            BOARD_HISTORY: ([(tid(3, 5), b"<t3>")], False),
        }
    )
    listener, registry, _ = make_listener(
        first, FakePubSub(), registry=FakeRegistry(CHAT, NEWS, BOARD), history=history
    )

    run_until_done(listener)

    assert registry.ids[2:] == [tid(1), tid(2), tid(3), tid(3, 5), tid(4), tid(4, 1)]
    caught = registry.delivered[2:]
    assert [(m.channel, m.label, m.gap) for m in caught[:2]] == [
        (b(NEWS), "b", False),
        (b(CHAT), "s", False),
    ]


def test_live_messages_wait_until_every_channel_is_confirmed_then_come_after_the_catch_up():
    first = FakePubSub(published(CHAT, tid(0), b"<a>"), published(NEWS, tid(0, 1), b"<n>"), LOST)
    second = FakePubSub(auto_confirm=False)
    confirmations_at_history: list[list[bytes]] = []
    history = FakeHistory(
        {
            CHAT_HISTORY: ([(tid(5), b"<b>"), (tid(7), b"<c>")], False),
            NEWS_HISTORY: ([(tid(6), b"<o>")], False),
        },
        on_call=lambda: confirmations_at_history.append(list(second.confirmations)),
    )
    listener, registry, _ = make_listener(
        first, second, registry=FakeRegistry(CHAT, NEWS), history=history
    )
    seen: list[object] = []
    second.steps = [
        [confirmed(CHAT), published(CHAT, tid(7), b"<c>"), published(CHAT, tid(8), b"<d>")],
        note(seen, lambda: (list(registry.ids), listener.connected.is_set())),
        [confirmed(NEWS), published(NEWS, tid(9), b"<p>")],
        note(seen, lambda: (list(registry.ids), listener.connected.is_set())),
        published(CHAT, tid(10), b"<e>"),
    ]

    run_until_done(listener)

    before = [tid(0), tid(0, 1)]
    assert seen == [
        (before, False),  # CHAT's live messages held: NEWS is not confirmed yet
        (before + [tid(5), tid(6), tid(7), tid(8), tid(9)], True),
    ]
    # History read once both were confirmed; tid(7) came both ways and went out once.
    assert all(set(c) >= {b(CHAT), b(NEWS)} for c in confirmations_at_history)
    assert len(confirmations_at_history) == 2
    assert registry.ids == before + [tid(5), tid(6), tid(7), tid(8), tid(9), tid(10)]


def test_a_message_live_and_in_the_history_is_delivered_once():
    first = FakePubSub(published(CHAT, tid(1), b"<a>"), LOST)
    second = FakePubSub(
        [published(CHAT, tid(2), b"<b>"), published(CHAT, tid(3), b"<c>")],
        published(CHAT, tid(3), b"<c>"),
        published(CHAT, tid(4), b"<d>"),
    )
    history = FakeHistory({CHAT_HISTORY: ([(tid(2), b"<b>"), (tid(3), b"<c>")], False)})
    listener, registry, _ = make_listener(first, second, history=history)

    run_until_done(listener)

    assert registry.ids == [tid(1), tid(2), tid(3), tid(4)]


def test_the_registry_hears_of_no_confirmation_until_the_catch_up_is_done():
    # A socket that waits meanwhile must not read its own history before this catch-up.
    counts: list[int] = []

    def count() -> None:
        counts.append(len(registry.confirmations))

    def lose() -> None:
        count()
        raise LOST()

    first = FakePubSub(published(CHAT, tid(1), b"<a>"), lose)
    second = FakePubSub(count, confirmed(CHAT), count, confirmed(NEWS), count, auto_confirm=False)
    history = FakeHistory({CHAT_HISTORY: ([(tid(2), b"<b>")], False)}, on_call=count)
    listener, registry, _ = make_listener(
        first, second, registry=FakeRegistry(CHAT, NEWS), history=history
    )

    run_until_done(listener)

    n = counts[0]
    # At the loss; before and between the confirmations; at both history reads; then one.
    assert counts == [n, n, n, n, n, n + 1]
    assert registry.confirmations[-1] == {b(CHAT), b(NEWS)}
    assert registry.ids == [tid(1), tid(2)]


def test_a_gap_while_redis_kept_running_sends_exactly_one_refresh_instead_of_the_entries():
    first = FakePubSub(published(CHAT, tid(0), b"<a>"), LOST)
    second = FakePubSub(published(CHAT, tid(9), b"<live>"))
    history = FakeHistory({CHAT_HISTORY: ([(tid(5), b"<x>"), (tid(8), b"<y>")], True)})
    listener, registry, _ = make_listener(
        first, second, history=history, run_id=lambda: "same-redis"
    )

    run_until_done(listener)

    assert [(m.id, m.html, m.gap, m.label) for m in registry.delivered] == [
        (tid(0), b"<a>", False, "s"),
        (tid(8), REFRESH_HTML, True, "s"),  # the newest entry: the refresh covers all of it
        (tid(9), b"<live>", False, "s"),
    ]


def test_a_gap_with_an_empty_history_refreshes_at_the_last_delivered_id():
    first = FakePubSub(published(CHAT, tid(3), b"<a>"), LOST)
    history = FakeHistory({CHAT_HISTORY: ([], True)})
    listener, registry, _ = make_listener(
        first, FakePubSub(), history=history, run_id=lambda: "same-redis"
    )

    run_until_done(listener)

    assert [(m.id, m.html, m.gap) for m in registry.delivered] == [
        (tid(3), b"<a>", False),
        (tid(3), REFRESH_HTML, True),
    ]


def test_a_gap_after_a_redis_restart_delivers_the_entries_and_no_refresh():
    server = {"run_id": "before-restart"}
    first = FakePubSub(
        published(CHAT, tid(0), b"<a>"),
        lambda: server.update(run_id="after-restart"),
        LOST,
    )
    history = FakeHistory({CHAT_HISTORY: ([(tid(5), b"<x>"), (tid(8), b"<y>")], True)})
    listener, registry, _ = make_listener(
        first, FakePubSub(), history=history, run_id=lambda: server["run_id"]
    )

    run_until_done(listener)

    assert not any(m.gap for m in registry.delivered)
    assert registry.seen == [
        (b(CHAT), tid(0), b"<a>"),
        (b(CHAT), tid(5), b"<x>"),
        (b(CHAT), tid(8), b"<y>"),
    ]


def test_an_unknown_run_id_counts_as_the_same_redis_so_a_gap_still_refreshes():
    first = FakePubSub(published(CHAT, tid(0), b"<a>"), LOST)
    history = FakeHistory({CHAT_HISTORY: ([(tid(5), b"<x>")], True)})
    listener, registry, _ = make_listener(first, FakePubSub(), history=history)

    run_until_done(listener)

    assert [m.gap for m in registry.delivered] == [False, True]


def test_a_channel_with_nothing_delivered_gets_the_entries_even_when_a_gap_is_reported():
    # From a time-based position the exact id is never in the history: not a real gap.
    first = FakePubSub(LOST)
    history = FakeHistory({NEWS_HISTORY: ([(tid(1), b"<n1>"), (tid(2), b"<n2>")], True)})
    listener, registry, _ = make_listener(
        first, FakePubSub(), registry=FakeRegistry(NEWS), history=history, run_id=lambda: "same"
    )

    run_until_done(listener)

    assert [(m.id, m.gap) for m in registry.delivered] == [(tid(1), False), (tid(2), False)]


def test_a_replay_cut_at_maxlen_refreshes_where_nothing_was_delivered_or_redis_restarted():
    # More came during the outage than a replay brings: the newest maxlen are not all.
    server = {"run_id": "before-restart"}
    first = FakePubSub(
        published(CHAT, tid(0), b"<a>"),
        lambda: server.update(run_id="after-restart"),
        LOST,
    )
    cut = ([(tid(5), b"<x>"), (tid(8), b"<y>")], True)
    history = FakeHistory({CHAT_HISTORY: cut, NEWS_HISTORY: cut}, maxlen=2)
    listener, registry, _ = make_listener(
        first,
        FakePubSub(),
        registry=FakeRegistry(CHAT, NEWS),
        history=history,
        run_id=lambda: server["run_id"],
    )

    run_until_done(listener)

    assert [(m.channel, m.id, m.html, m.gap) for m in registry.delivered] == [
        (b(CHAT), tid(0), b"<a>", False),
        (b(NEWS), tid(8), REFRESH_HTML, True),  # nothing delivered before, yet cut
        (b(CHAT), tid(8), REFRESH_HTML, True),  # restarted, yet cut
    ]


def test_without_history_a_reconnect_only_resumes_live_delivery():
    first = FakePubSub(published(CHAT, tid(0), b"<a>"), LOST)
    second = FakePubSub(published(CHAT, tid(9), b"<live>"))
    listener, registry, factory = make_listener(first, second, history=None)

    run_until_done(listener)

    assert registry.ids == [tid(0), tid(9)]
    assert factory.made == [first, second]


def test_a_history_error_on_one_channel_does_not_stop_the_others(caplog):
    def wrong_type(key: str) -> BaseException | None:
        if key == NEWS_HISTORY:
            return redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")
        return None

    first = FakePubSub(published(CHAT, tid(1), b"<a>"), published(NEWS, tid(1, 1), b"<n>"), LOST)
    second = FakePubSub(published(CHAT, tid(9), b"<live>"), published(NEWS, tid(9, 1), b"<nl>"))
    history = FakeHistory(
        {
            CHAT_HISTORY: ([(tid(2), b"<b>")], False),
            BOARD_HISTORY: ([(tid(3), b"<t>")], False),
        },
        fail=wrong_type,
    )
    listener, registry, factory = make_listener(
        first, second, registry=FakeRegistry(CHAT, NEWS, BOARD), history=history
    )

    with caplog.at_level(logging.ERROR, logger="turbocast.relay"):
        run_until_done(listener)

    # The snapshot failed on the bad key; then each history alone.
    assert history.snapshot_failures == 1
    assert registry.ids == [tid(1), tid(1, 1), tid(2), tid(3), tid(9), tid(9, 1)]
    assert len(factory.made) == 2
    [logged] = [r for r in caplog.records if "could not read a channel's history" in r.getMessage()]
    assert logged.turbo_key == NEWS_HISTORY


def test_a_catch_up_cut_short_by_another_loss_is_done_again_from_the_same_place():
    failures: list[BaseException | None] = [redis.ConnectionError("lost again"), None]
    first = FakePubSub(published(CHAT, tid(2), b"<a>"), LOST)
    # Confirmed, with a live message held back, then lost while reading CHAT's history.
    second = FakePubSub(
        [confirmed(CHAT), confirmed(NEWS), published(CHAT, tid(3), b"<b>")], auto_confirm=False
    )
    third = FakePubSub()
    history = FakeHistory(
        {CHAT_HISTORY: ([(tid(3), b"<b>")], False)},
        fail=lambda key: failures.pop(0) if key == CHAT_HISTORY else None,
    )
    listener, registry, factory = make_listener(
        first, second, third, registry=FakeRegistry(CHAT, NEWS), history=history
    )

    run_until_done(listener)

    assert len(factory.made) == 3
    chat_calls = [position for key, position in history.calls if key == CHAT_HISTORY]
    assert chat_calls == [tid(2), tid(2)]
    assert registry.ids == [tid(2), tid(3)]


def test_a_second_outage_catches_up_from_a_fresh_loss_time_and_the_new_last_ids():
    first = FakePubSub(published(CHAT, tid(1), b"<a>"), LOST)
    second = FakePubSub(published(CHAT, tid(4), b"<b>"), LOST)
    history = FakeHistory()
    listener, _, _ = make_listener(first, second, FakePubSub(), history=history)

    run_until_done(listener)

    assert history.calls == [(CHAT_HISTORY, tid(1)), (CHAT_HISTORY, tid(4))]


def test_a_channel_dropped_while_disconnected_forgets_where_it_stood():
    # Its last socket left during the outage; a socket that wants it much later must
    # not, at the next outage, catch up (or get a gap refresh) from that old id.
    registry = FakeRegistry(CHAT)
    first = FakePubSub(published(CHAT, tid(1), b"<a>"), lambda: registry.channels.clear(), LOST)

    def chat_wanted_again() -> None:
        registry.channels.add(b(CHAT))
        listener.wake()

    second = FakePubSub(chat_wanted_again, LOST)
    history = FakeHistory({CHAT_HISTORY: ([(tid(2), b"<old>")], True)})
    listener, _, _ = make_listener(
        first, second, FakePubSub(), registry=registry, history=history, run_id=lambda: "same"
    )

    run_until_done(listener)

    [(key, position)] = history.calls
    assert key == CHAT_HISTORY
    assert position != tid(1)  # from just before the second loss, by this host's clock
    assert not any(m.gap for m in registry.delivered)


# -- wake-ups and the thread ---------------------------------------------------------------


def test_wake_publishes_to_the_control_channel_only_while_connected():
    waker = Waker()
    pubsub = FakePubSub()
    listener, _, _ = make_listener(pubsub, waker=waker)
    listener.wake()  # not connected: the next connection subscribes everything anyway
    assert waker.calls == []
    pubsub.steps = [listener.wake]

    run_until_done(listener)

    assert waker.calls == [CONTROL]
    listener.wake()  # the connection is gone again
    assert waker.calls == [CONTROL]


def test_a_failed_wake_up_is_swallowed_the_next_poll_subscribes_anyway():
    def failing_waker(channel: str) -> None:
        raise redis.ConnectionError("down")

    pubsub = FakePubSub()
    registry = FakeRegistry()
    listener, _, _ = make_listener(pubsub, registry=registry, waker=failing_waker)
    pubsub.steps = [wants(registry, listener, CHAT)]  # a socket comes

    run_until_done(listener)

    assert pubsub.calls[-1] == ("subscribe", frozenset({b(CHAT)}))


def test_the_thread_runs_logs_its_start_once_and_stops(caplog):
    broker = Broker()
    registry = FakeRegistry(CHAT)
    listener = Listener(
        registry,
        prefix="turbo",
        control_channel=CONTROL,
        pubsub_factory=broker.connect,
        waker=broker.waker,
        history=None,
    )
    with caplog.at_level(logging.INFO, logger="turbocast.relay"):
        listener.start()
    try:
        assert listener.connected.wait(DEADLINE)
        assert listener.alive
        broker.publish(CHAT, tid(1).encode() + b" <a>")
        wait_until(lambda: registry.ids == [tid(1)], "the message")
    finally:
        listener.stop(DEADLINE)

    assert not listener.alive
    assert not listener.connected.is_set()
    assert broker.connections == []  # the connection was closed
    started = [r for r in caplog.records if "relay started" in r.getMessage()]
    assert len(started) == 1
    assert started[0].turbo_control == CONTROL


def test_stop_of_a_listener_never_started_returns_at_once():
    listener, _, _ = make_listener()

    listener.stop(DEADLINE)

    assert not listener.alive
