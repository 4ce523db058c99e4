"""turbocast.relay: the registry, Redis-confirmed readiness, fan-out, and one set of threads.

No Redis and no network: the relay gets the scripted pub/sub connections of
fake_pubsub.py (a used-up script raises ``Done``, so the relay's listener is
driven to its end in the test's own thread), or, for the tests that run real
threads, its in-memory ``Broker``.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest
import redis

import turbocast.listener as listener_module
from tests.unit.fake_pubsub import (
    BOARD,
    CHAT,
    DEADLINE,
    NEWS,
    Broker,
    Done,
    Factory,
    FakePubSub,
    Waker,
    b,
    confirmed,
    note,
    published,
    tid,
)
from turbocast.message import Message
from turbocast.outbox import CLOSE_OUTBOX_OVERFLOW, HEARTBEAT, Outbox, encode_text_frame
from turbocast.relay import CLOSE_GOING_AWAY, Relay, Subscription, close_all_sockets
from turbocast.subscriber import MESSAGE

URL = "redis://unused.invalid/0"
BIG = 64 * 1024 * 1024  # an outbox bound no test reaches


def make_relay(*pubsubs: FakePubSub | None, **options: object) -> tuple[Relay, Factory, Waker]:
    factory, waker = Factory(*pubsubs), Waker()
    relay = Relay(URL, pubsub_factory=factory, waker=waker, **options)  # type: ignore[arg-type]
    return relay, factory, waker


def run_until_done(relay: Relay) -> None:
    """Run the relay's listener in this thread until its script ends."""
    with pytest.raises(Done):
        relay._listener._run()


def quiet() -> FakePubSub:
    """A connection on which nothing ever happens (not even a confirmation)."""
    return FakePubSub(idle=True, auto_confirm=False)


def message(channel: str, message_id: str, html: bytes = b"<p></p>") -> Message:
    return Message(b(channel), "b", message_id, html)


def ids_of(outbox: Outbox) -> list[str | None]:
    return [m.id for m in outbox.drain(0)[1]]


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(listener_module, "BACKOFF_START", 0.0)


# -- one listener and one heartbeat per process --------------------------------------------


class StartLog:
    """Makes a thread class whose ``start()`` is slow, and notes every thread started.

    The millisecond before the real start lets other callers of ``Relay.start`` run
    while a thread is made but not yet alive: the window of a check-then-start race.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.lock = threading.Lock()

    def thread_class(self) -> type[threading.Thread]:
        log = self

        class SlowStart(threading.Thread):
            def start(self) -> None:
                with log.lock:
                    log.names.append(self.name)
                time.sleep(0.001)  # yields: not a wait for anything
                super().start()

        return SlowStart

    def relay(self, **options: object) -> Relay:
        """A relay on quiet connections whose threads this log notes."""
        return Relay(
            URL,
            pubsub_factory=quiet,
            waker=Waker(),
            thread_class=self.thread_class(),
            **options,  # type: ignore[arg-type]
        )


def start_at_once(relay: Relay, callers: int = 20) -> None:
    """Call ``relay.start()`` from ``callers`` threads released together."""
    barrier = threading.Barrier(callers)
    failures: list[BaseException] = []

    def call() -> None:
        try:
            barrier.wait(DEADLINE)
            relay.start()
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=call, name=f"handler-{i}") for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert not any(t.is_alive() for t in threads)
    assert failures == []


def test_start_from_twenty_threads_at_once_starts_one_listener_and_one_heartbeat(caplog):
    log = StartLog()
    relay = log.relay(heartbeat_interval=3600.0)
    try:
        with caplog.at_level(logging.INFO):
            start_at_once(relay)

        assert sorted(log.names) == ["turbo-heartbeat", "turbo-relay"]
        assert relay.running
        assert relay.pid == os.getpid()
    finally:
        relay.stop(DEADLINE)

    assert not relay.running
    messages = [r.getMessage() for r in caplog.records]
    assert sum("relay started" in m for m in messages) == 1
    assert sum("heartbeat started" in m for m in messages) == 1


def test_start_again_does_nothing_and_stop_ends_both_threads():
    log = StartLog()
    relay = log.relay(heartbeat_interval=3600.0)
    try:
        relay.start()
        relay.start()
        assert relay.running
        assert relay.connected.wait(DEADLINE)  # nothing to subscribe: connected at once
    finally:
        relay.stop(DEADLINE)

    assert sorted(log.names) == ["turbo-heartbeat", "turbo-relay"]
    assert not relay.running
    assert relay._heartbeat is not None
    assert not relay._listener.alive and not relay._heartbeat.alive


def test_no_heartbeat_thread_when_the_interval_is_zero():
    log = StartLog()
    relay = log.relay()
    try:
        relay.start()
    finally:
        relay.stop(DEADLINE)

    assert log.names == ["turbo-relay"]


def test_the_heartbeat_beats_every_attached_outbox_and_no_detached_one():
    broker = Broker()
    relay = Relay(URL, pubsub_factory=broker.connect, waker=broker.waker, heartbeat_interval=0.01)
    first, second, gone = Outbox(BIG), Outbox(BIG), Outbox(BIG)
    relay.attach([CHAT], first)
    relay.attach([CHAT, NEWS], second)
    relay.detach(relay.attach([BOARD], gone))
    relay.start()
    try:
        for outbox in (first, second):
            beats = 0
            while beats < 2:  # and again an interval later: each drain waits for the next
                controls, messages, _ = outbox.drain(DEADLINE)
                assert controls and not messages
                assert all(c is HEARTBEAT for c in controls)
                beats += len(controls)
    finally:
        relay.stop(DEADLINE)

    assert len(gone) == 0


# -- the registry --------------------------------------------------------------------------


def test_attach_names_each_channel_once():
    relay, _, _ = make_relay()

    sub = relay.attach([CHAT, NEWS, CHAT], Outbox(BIG))

    assert isinstance(sub, Subscription)
    assert sub.channels == (b(CHAT), b(NEWS))
    assert not sub.ready.is_set()


def test_the_registry_follows_attach_and_detach():
    relay, _, _ = make_relay()
    first, second = Outbox(BIG), Outbox(BIG)

    one = relay.attach([CHAT, NEWS], first)
    two = relay.attach([NEWS], second)
    assert relay.channels() == {CHAT, NEWS}
    assert relay.wanted() == {b(CHAT), b(NEWS)}
    assert relay.outboxes() == {first, second}

    relay.detach(one)
    assert relay.channels() == {NEWS}
    assert relay.outboxes() == {second}

    relay.detach(two)
    relay.detach(two)  # twice: nothing happens
    assert relay.channels() == set()
    assert relay.outboxes() == set()
    assert relay._registry == {}  # no empty entries left behind


def test_two_outboxes_on_one_channel_make_one_subscribe():
    pubsub = FakePubSub()
    relay, _, _ = make_relay(pubsub)
    relay.attach([CHAT], Outbox(BIG))
    relay.attach([CHAT], Outbox(BIG))

    run_until_done(relay)

    assert pubsub.calls[1:] == [("subscribe", frozenset({b(CHAT)}))]


def test_detach_unsubscribes_a_channel_only_with_its_last_outbox():
    pubsub = FakePubSub()
    relay, _, _ = make_relay(pubsub)
    first = relay.attach([CHAT, NEWS], Outbox(BIG))
    second = relay.attach([NEWS], Outbox(BIG))
    pubsub.steps = [lambda: relay.detach(first), [], lambda: relay.detach(second), []]

    run_until_done(relay)

    assert pubsub.calls[1:] == [
        ("subscribe", frozenset({b(CHAT), b(NEWS)})),
        ("unsubscribe", frozenset({b(CHAT)})),
        ("unsubscribe", frozenset({b(NEWS)})),
    ]


def test_a_socket_that_leaves_before_redis_confirmed_is_no_longer_waiting():
    pubsub = FakePubSub(auto_confirm=False)
    relay, _, _ = make_relay(pubsub)
    leaving = relay.attach([CHAT], Outbox(BIG))
    staying = relay.attach([CHAT], Outbox(BIG))
    pubsub.steps = [lambda: relay.detach(leaving), confirmed(CHAT)]

    run_until_done(relay)

    assert staying.ready.is_set()
    assert not leaving.ready.is_set()
    assert relay._waiting == []


def test_a_socket_that_leaves_unconfirmed_does_not_stay_in_the_waiting_list():
    pubsub = FakePubSub(auto_confirm=False)
    relay, _, _ = make_relay(pubsub)
    sub = relay.attach([CHAT], Outbox(BIG))

    relay.detach(sub)

    assert relay._waiting == []


# -- ready: Redis confirmed every channel --------------------------------------------------


def test_ready_only_once_redis_confirmed_every_channel():
    seen: list[object] = []
    pubsub = FakePubSub(auto_confirm=False)
    relay, _, _ = make_relay(pubsub)
    sub = relay.attach([CHAT, NEWS], Outbox(BIG))
    pubsub.steps = [
        note(seen, sub.ready.is_set),
        confirmed(CHAT),
        note(seen, sub.ready.is_set),
        confirmed(NEWS),
        note(seen, sub.ready.is_set),
    ]

    run_until_done(relay)

    assert seen == [False, False, True]


def test_a_socket_attached_while_connected_is_ready_once_its_new_channel_is_confirmed():
    seen: list[object] = []
    pubsub = FakePubSub(auto_confirm=False)
    relay, _, waker = make_relay(pubsub)
    relay.attach([CHAT], Outbox(BIG))
    late: list[Subscription] = []
    pubsub.steps = [
        confirmed(CHAT),
        lambda: late.append(relay.attach([CHAT, NEWS], Outbox(BIG))),
        note(seen, lambda: late[0].ready.is_set()),
        confirmed(NEWS),
        note(seen, lambda: late[0].ready.is_set()),
    ]

    run_until_done(relay)

    assert seen == [False, True]
    assert waker.calls == [relay.control_channel]  # the listener was woken up for it
    assert pubsub.calls[-1] == ("subscribe", frozenset({b(NEWS)}))


def test_a_socket_on_a_channel_confirmed_already_is_ready_at_the_listeners_next_pass():
    seen: list[object] = []
    pubsub = FakePubSub(auto_confirm=False)
    relay, _, waker = make_relay(pubsub)
    relay.attach([CHAT], Outbox(BIG))
    later: list[Subscription] = []

    def attach_and_look() -> None:
        later.append(relay.attach([CHAT], Outbox(BIG)))
        seen.append(later[0].ready.is_set())  # attach itself never says ready

    pubsub.steps = [
        confirmed(CHAT),
        attach_and_look,
        note(seen, lambda: later[0].ready.is_set()),
    ]

    run_until_done(relay)

    assert seen == [False, True]
    assert waker.calls == [relay.control_channel]  # woken although nothing is new
    assert [name for name, _ in pubsub.calls] == ["subscribe", "subscribe"]  # no SUBSCRIBE again


class Reattached:
    """CHAT's one socket (``first``), and the steps of a script in which it leaves and
    another socket comes on CHAT (``again``): its readiness is what ``look`` notes."""

    def __init__(self) -> None:
        self.pubsub = FakePubSub(auto_confirm=False)
        self.relay, _, _ = make_relay(self.pubsub)
        self.first = self.relay.attach([CHAT], Outbox(BIG))
        self.again: list[Subscription] = []
        self.seen: list[object] = []

    def detach(self) -> None:
        self.relay.detach(self.first)

    def attach_again(self) -> None:
        self.again.append(self.relay.attach([CHAT], Outbox(BIG)))

    def look(self) -> None:
        self.seen.append(self.again[0].ready.is_set())


def test_a_channel_unsubscribed_then_attached_again_waits_for_its_new_confirmation():
    chat = Reattached()
    chat.pubsub.steps = [
        confirmed(CHAT),
        chat.detach,  # its last socket: UNSUBSCRIBE at the next pass
        [],
        chat.attach_again,  # SUBSCRIBE again
        chat.look,
        [],
        chat.look,  # the old confirmation does not count
        confirmed(CHAT),
        chat.look,
    ]

    run_until_done(chat.relay)

    assert [name for name, _ in chat.pubsub.calls[1:]] == ["subscribe", "unsubscribe", "subscribe"]
    assert chat.seen == [False, False, True]


def test_a_channel_attached_again_before_its_first_confirmation_waits_for_the_second():
    chat = Reattached()
    chat.pubsub.steps = [
        [],  # SUBSCRIBE CHAT sent; Redis has not answered yet
        chat.detach,
        [],  # UNSUBSCRIBE CHAT
        chat.attach_again,
        [],  # SUBSCRIBE CHAT: two SUBSCRIBEs pending now
        confirmed(CHAT),  # the answer to the first
        chat.look,
        confirmed(CHAT),  # the answer to the second
        chat.look,
    ]

    run_until_done(chat.relay)

    assert [name for name, _ in chat.pubsub.calls[1:]] == ["subscribe", "unsubscribe", "subscribe"]
    assert chat.seen == [False, True]
    assert not chat.first.ready.is_set()


def test_a_socket_that_arrives_during_an_outage_is_ready_only_after_the_catch_up():
    seen: list[object] = []
    late: list[Subscription] = []

    def attach_then_lose() -> None:
        late.append(relay.attach([NEWS], Outbox(BIG)))
        raise redis.ConnectionError("Connection reset by peer")

    first = FakePubSub(published(CHAT, tid(1), b"<a>"), attach_then_lose)
    second = FakePubSub(auto_confirm=False)
    relay, _, _ = make_relay(first, second)
    relay.attach([CHAT], Outbox(BIG))
    second.steps = [
        confirmed(NEWS),
        note(seen, lambda: late[0].ready.is_set()),  # CHAT not confirmed yet
        confirmed(CHAT),
        note(seen, lambda: late[0].ready.is_set()),
    ]

    run_until_done(relay)

    assert seen == [False, True]


# -- fan-out -------------------------------------------------------------------------------


def test_deliver_puts_the_same_message_object_into_every_outbox():
    relay, _, _ = make_relay()
    outboxes = [Outbox(BIG) for _ in range(5)]
    for outbox in outboxes:
        relay.attach([NEWS], outbox)
    other = Outbox(BIG)
    relay.attach([CHAT], other)
    html = b"<turbo-stream></turbo-stream>"
    sent = Message(b(NEWS), "b", tid(1), html)

    relay.deliver(sent)

    for outbox in outboxes:
        [got] = outbox.drain(0)[1]
        assert got is sent
    assert len(other) == 0
    assert sent.plain_frame == encode_text_frame(html)
    assert sent.plain_frame is sent.plain_frame  # encoded once, then the same bytes object
    assert relay.delivered == 1


def test_an_overflowing_outbox_does_not_stop_delivery_to_the_others():
    relay, _, _ = make_relay()
    size = message(NEWS, tid(0)).size
    slow = [Outbox(size) for _ in range(5)]  # room for one message each
    fast = [Outbox(BIG) for _ in range(5)]
    for outbox in slow + fast:
        relay.attach([NEWS], outbox)

    for n in range(3):
        relay.deliver(message(NEWS, tid(n)))

    for outbox in slow:
        assert outbox.closing is not None and outbox.closing.code == CLOSE_OUTBOX_OVERFLOW
        assert ids_of(outbox) == []  # what waited is thrown away
    for outbox in fast:
        assert outbox.closing is None
        assert ids_of(outbox) == [tid(0), tid(1), tid(2)]
    assert relay.delivered == 3


def test_deliver_on_a_channel_with_no_local_socket_does_nothing():
    relay, _, _ = make_relay()
    outbox = Outbox(BIG)
    sub = relay.attach([CHAT], outbox)

    relay.deliver(message(NEWS, tid(1)))
    relay.detach(sub)
    relay.deliver(message(CHAT, tid(2)))  # a socket left between UNSUBSCRIBE and this

    assert len(outbox) == 0
    assert relay.delivered == 0


def test_messages_from_redis_reach_the_outboxes_of_their_channel_only():
    pubsub = FakePubSub(
        published(CHAT, tid(1), b"<chat>"),
        published(NEWS, tid(2), b"<news>"),
        published(BOARD, tid(3), b"<board>"),
    )
    relay, _, _ = make_relay(pubsub)
    chat, news, both = Outbox(BIG), Outbox(BIG), Outbox(BIG)
    relay.attach([CHAT], chat)
    relay.attach([NEWS], news)
    relay.attach([CHAT, NEWS], both)

    run_until_done(relay)

    assert ids_of(chat) == [tid(1)]
    assert ids_of(news) == [tid(2)]
    assert ids_of(both) == [tid(1), tid(2)]


def test_close_all_asks_every_socket_to_close_once():
    relay, _, _ = make_relay()
    one, two = Outbox(BIG), Outbox(BIG)
    relay.attach([CHAT, NEWS], one)
    relay.attach([NEWS], two)

    assert relay.close_all() == 2

    for outbox in (one, two):
        assert outbox.closing is not None and outbox.closing.code == CLOSE_GOING_AWAY


def test_close_all_sockets_reaches_every_relay_of_the_process():
    outboxes = [Outbox(BIG), Outbox(BIG)]
    relays = [make_relay()[0] for _ in outboxes]
    for relay, outbox in zip(relays, outboxes, strict=True):
        relay.attach([CHAT], outbox)

    assert close_all_sockets(4000, "test") >= 2

    assert all(o.closing is not None and o.closing.code == 4000 for o in outboxes)


# -- threads together: nothing published after ready is missed ------------------------------


class Numbered:
    """Publishes numbered messages on one channel, from its own thread, until stopped."""

    def __init__(self, broker: Broker, channel: str) -> None:
        self.broker = broker
        self.channel = channel
        self.next = 0  # every message below this number has been published
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-publisher", daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            self.broker.publish(self.channel, f"{tid(0, n)} <p>{n}</p>".encode())
            n += 1
            self.next = n
            self.stop.wait(0.0002)  # pacing, so sockets and relay get the GIL too


def test_nothing_published_after_ready_is_missed_or_doubled_while_sockets_come_and_go():
    broker = Broker()
    relay = Relay(URL, pubsub_factory=broker.connect, waker=broker.waker)
    publisher = Numbered(broker, NEWS)
    results: dict[int, tuple[int, list[int]]] = {}
    failures: list[BaseException] = []

    def socket(i: int, barrier: threading.Barrier) -> None:
        # A socket's handler: attach, wait for ready, then read what arrives, as a writer does.
        try:
            outbox = Outbox(BIG)
            barrier.wait(DEADLINE)
            sub = relay.attach([NEWS, f"turbo:session:{i:016d}"], outbox)
            numbers: list[int] = []
            try:
                assert sub.ready.wait(DEADLINE)
                # Message `first` starts after this read: it is published after ready.
                first = publisher.next + 1
                deadline = time.monotonic() + DEADLINE
                while not numbers or numbers[-1] < first + 20:
                    assert time.monotonic() < deadline, "messages stopped arriving"
                    numbers += [m.key[1] for m in outbox.drain(0.05)[1] if m.key is not None]
            finally:
                relay.detach(sub)
            numbers += [m.key[1] for m in outbox.drain(0)[1] if m.key is not None]
            results[i] = (first, numbers)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failures.append(exc)

    relay.start()
    publisher.thread.start()
    try:
        for wave in range(3):  # between waves every socket has gone: NEWS unsubscribed too
            barrier = threading.Barrier(8)
            sockets = [
                threading.Thread(target=socket, args=(wave * 8 + i, barrier)) for i in range(8)
            ]
            for thread in sockets:
                thread.start()
            for thread in sockets:
                thread.join(DEADLINE * 2)
            assert not any(t.is_alive() for t in sockets)
    finally:
        publisher.stop.set()
        publisher.thread.join(DEADLINE)
        relay.stop(DEADLINE)

    assert failures == []
    assert len(results) == 24
    for first, numbers in results.values():
        assert numbers == sorted(set(numbers))  # in order, nothing twice
        # Delivery keeps publish order: no hole between ready and the last one that came.
        missing = set(range(first, numbers[-1])) - set(numbers)
        assert not missing, f"published after ready but never delivered: {sorted(missing)}"


# -- exclusion -----------------------------------------------------------------------------

SID_A = "sessionAsessionAsessionA"
SID_B = "sessionBsessionBsessionB"


def test_deliver_skips_every_socket_of_the_excluded_session_and_no_other():
    relay, _, _ = make_relay()
    a_tab1, a_tab2, b_tab, anonymous = Outbox(BIG), Outbox(BIG), Outbox(BIG), Outbox(BIG)
    relay.attach([NEWS], a_tab1, SID_A)
    relay.attach([NEWS], a_tab2, SID_A)
    relay.attach([NEWS], b_tab, SID_B)
    relay.attach([NEWS], anonymous)

    relay.deliver(Message(b(NEWS), "b", tid(1), b"<p>", exclude=SID_A.encode()))
    relay.deliver(Message(b(NEWS), "b", tid(2), b"<p>"))

    assert ids_of(a_tab1) == ids_of(a_tab2) == [tid(2)]
    assert ids_of(b_tab) == ids_of(anonymous) == [tid(1), tid(2)]


def test_an_excluding_message_from_redis_skips_that_session():
    # The publisher's head "<id>;x=<session id>;t=<µs>", as Redis hands it over.
    pubsub = FakePubSub(
        (MESSAGE, b(NEWS), f"{tid(1)};x={SID_A};t=1700000000000000 <p>".encode()),
        published(NEWS, tid(2), b"<q>"),
    )
    relay, _, _ = make_relay(pubsub)
    mine, theirs = Outbox(BIG), Outbox(BIG)
    relay.attach([NEWS], mine, SID_A)
    relay.attach([NEWS], theirs, SID_B)

    run_until_done(relay)

    assert ids_of(mine) == [tid(2)]
    assert ids_of(theirs) == [tid(1), tid(2)]


def test_a_detached_socket_forgets_its_session():
    relay, _, _ = make_relay()
    outbox = Outbox(BIG)
    relay.detach(relay.attach([NEWS], outbox, SID_A))

    assert relay._sessions == {}


# -- exclude_socket ------------------------------------------------------------------------

SOCKET_A1 = "tabOneOfSessionA"
SOCKET_A2 = "tabTwoOfSessionA"


def test_deliver_skips_the_excluded_socket_only_and_the_same_sessions_other_tab_gets_it():
    relay, _, _ = make_relay()
    a_tab1, a_tab2, b_tab, plain = Outbox(BIG), Outbox(BIG), Outbox(BIG), Outbox(BIG)
    relay.attach([NEWS], a_tab1, SID_A, SOCKET_A1)
    relay.attach([NEWS], a_tab2, SID_A, SOCKET_A2)
    relay.attach([NEWS], b_tab, SID_B, "tabOfSessionBbbb")
    relay.attach([NEWS], plain, SID_B)  # a socket without an id (an event stream)

    relay.deliver(Message(b(NEWS), "b", tid(1), b"<p>", exclude_socket=SOCKET_A1.encode()))
    relay.deliver(Message(b(NEWS), "b", tid(2), b"<p>"))

    assert ids_of(a_tab1) == [tid(2)]
    assert ids_of(a_tab2) == ids_of(b_tab) == ids_of(plain) == [tid(1), tid(2)]


def test_a_message_excluding_a_session_and_a_socket_skips_both():
    relay, _, _ = make_relay()
    a_tab, b_tab1, b_tab2 = Outbox(BIG), Outbox(BIG), Outbox(BIG)
    relay.attach([NEWS], a_tab, SID_A, SOCKET_A1)
    relay.attach([NEWS], b_tab1, SID_B, "tabOneOfSessionB")
    relay.attach([NEWS], b_tab2, SID_B, "tabTwoOfSessionB")

    relay.deliver(
        Message(
            b(NEWS), "b", tid(1), b"<p>", exclude=SID_A.encode(), exclude_socket=b"tabOneOfSessionB"
        )
    )

    assert ids_of(a_tab) == ids_of(b_tab1) == []
    assert ids_of(b_tab2) == [tid(1)]


def test_a_socket_excluding_message_from_redis_skips_that_socket_and_detach_forgets_its_id():
    pubsub = FakePubSub(
        (MESSAGE, b(NEWS), f"{tid(1)};s={SOCKET_A1};t=1700000000000000 <p>".encode()),
        published(NEWS, tid(2), b"<q>"),
    )
    relay, _, _ = make_relay(pubsub)
    mine, other_tab = Outbox(BIG), Outbox(BIG)
    sub = relay.attach([NEWS], mine, SID_A, SOCKET_A1)
    relay.attach([NEWS], other_tab, SID_A, SOCKET_A2)

    run_until_done(relay)

    assert ids_of(mine) == [tid(2)]
    assert ids_of(other_tab) == [tid(1), tid(2)]
    relay.detach(sub)
    assert mine not in relay._sockets
