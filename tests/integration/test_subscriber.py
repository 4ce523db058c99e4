"""turbocast.subscriber: the relay's hiredis-read pub/sub connection, on a real redis-server."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
import redis

from app.embedded_redis import EmbeddedRedis
from tests.support import numsub, wait_for
from turbocast.subscriber import MESSAGE, SUBSCRIBED, Event, Subscriber


def events(sub: Subscriber, count: int, timeout: float = 10.0) -> list[Event]:
    """Read until ``count`` events came (messages and confirmations); fail after ``timeout``."""
    got: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"got {len(got)} of {count} events: {got}"
        got.extend(sub.read())
    assert len(got) == count, f"more than {count} events: {got}"
    return got


def collect(sub: Subscriber, count: int, timeout: float = 10.0) -> list[tuple[bytes, bytes]]:
    """Read until ``count`` messages came; fail after ``timeout`` seconds."""
    got: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"got {len(got)} of {count} messages"
        for kind, channel, payload in sub.read():
            assert kind == MESSAGE, (kind, channel)
            got.append((channel, payload))
    return got


@pytest.fixture
def subscriber(redis_url: str) -> Iterator[Subscriber]:
    sub = Subscriber(redis_url, poll_interval=0.05)
    yield sub
    sub.close()


def subscribed(sub: Subscriber, *channels: str) -> None:
    """Subscribe, and read Redis's confirmation of each channel, in order."""
    sub.subscribe(*(c.encode() for c in channels))
    assert events(sub, len(channels)) == [(SUBSCRIBED, c.encode(), b"") for c in channels]


def test_delivers_only_subscribed_channels_in_order(subscriber, redis_client):
    subscribed(subscriber, "t:a", "t:b")

    for i in range(5):
        redis_client.publish("t:a", f"a{i}")
        redis_client.publish("t:other", f"x{i}")
        redis_client.publish("t:b", f"b{i}")

    got = collect(subscriber, 10)
    assert [d for c, d in got if c == b"t:a"] == [b"a0", b"a1", b"a2", b"a3", b"a4"]
    assert [d for c, d in got if c == b"t:b"] == [b"b0", b"b1", b"b2", b"b3", b"b4"]
    assert {c for c, _ in got} == {b"t:a", b"t:b"}


def test_a_burst_arrives_in_batches_each_message_once(subscriber, redis_client):
    subscribed(subscriber, "t:burst")
    pipe = redis_client.pipeline(transaction=False)
    for i in range(2000):
        pipe.publish("t:burst", b"%d " % i + b"<p>x</p>" * 30)
    pipe.execute()

    got = collect(subscriber, 2000)

    assert [int(d.split(b" ", 1)[0]) for _, d in got] == list(range(2000))
    assert len(got) == 2000


def test_a_message_larger_than_one_read_arrives_whole(subscriber, redis_client):
    subscribed(subscriber, "t:big")
    payload = os.urandom(300_000)
    redis_client.publish("t:big", payload)

    assert collect(subscriber, 1) == [(b"t:big", payload)]


def test_unsubscribe_stops_delivery(subscriber, redis_client):
    subscribed(subscriber, "t:gone", "t:kept")
    subscriber.unsubscribe(b"t:gone")
    wait_for(lambda: numsub(redis_client, "t:gone") == 0, what="UNSUBSCRIBE")

    redis_client.publish("t:gone", "lost")
    redis_client.publish("t:kept", "kept")

    # The UNSUBSCRIBE's own reply is not handed over: only the message.
    assert collect(subscriber, 1) == [(b"t:kept", b"kept")]


def test_confirmations_come_in_redis_order_with_the_messages(subscriber, redis_client):
    subscriber.subscribe(b"t:first")
    assert events(subscriber, 1) == [(SUBSCRIBED, b"t:first", b"")]
    redis_client.publish("t:first", "one")  # Redis has queued it before the next SUBSCRIBE
    subscriber.subscribe(b"t:second", b"t:third")
    wait_for(lambda: numsub(redis_client, "t:third") == 1, what="SUBSCRIBE t:third")
    redis_client.publish("t:second", "two")
    redis_client.publish("t:first", "three")

    assert events(subscriber, 5) == [
        (MESSAGE, b"t:first", b"one"),
        (SUBSCRIBED, b"t:second", b""),
        (SUBSCRIBED, b"t:third", b""),
        (MESSAGE, b"t:second", b"two"),
        (MESSAGE, b"t:first", b"three"),
    ]


def test_a_message_published_once_the_confirmation_was_read_always_arrives(
    subscriber, redis_client
):
    # What the relay's readiness rests on: no waiting for anything but the confirmation.
    for i in range(50):
        channel = f"t:confirmed:{i}"
        subscriber.subscribe(channel.encode())
        assert events(subscriber, 1) == [(SUBSCRIBED, channel.encode(), b"")]

        assert redis_client.publish(channel, f"m{i}") == 1

        assert collect(subscriber, 1) == [(channel.encode(), f"m{i}".encode())]


def test_every_subscribe_is_confirmed_even_to_a_channel_subscribed_again(subscriber, redis_client):
    # SUBSCRIBE, UNSUBSCRIBE, SUBSCRIBE: two confirmations (the relay counts them), and
    # the UNSUBSCRIBE's reply is not handed over.
    subscriber.subscribe(b"t:again")
    subscriber.unsubscribe(b"t:again")
    subscriber.subscribe(b"t:again")
    subscriber.subscribe(b"t:again")

    assert events(subscriber, 3) == [(SUBSCRIBED, b"t:again", b"")] * 3
    assert redis_client.publish("t:again", "once") == 1
    assert collect(subscriber, 1) == [(b"t:again", b"once")]


def test_quiet_read_returns_nothing_within_the_poll_interval(subscriber):
    subscribed(subscriber, "t:quiet")
    started = time.monotonic()

    assert subscriber.read() == []
    assert time.monotonic() - started < 5


def test_error_reply_raises_response_error(subscriber):
    subscriber.subscribe()  # SUBSCRIBE with no channel: Redis answers an error

    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        wait_for(lambda: subscriber.read() or None, timeout=5, what="the error reply")


def test_unreachable_redis_raises_connection_error():
    with EmbeddedRedis() as server:
        url = server.url
    with pytest.raises(redis.ConnectionError):
        Subscriber(url)


def test_killed_server_raises_connection_error():
    with EmbeddedRedis() as server:
        sub = Subscriber(server.url, poll_interval=0.05)
        try:
            subscribed(sub, "t:x")
            server.kill()
            with pytest.raises(redis.ConnectionError):
                wait_for(lambda: sub.read() or None, timeout=5, what="the lost connection")
        finally:
            sub.close()


def test_silence_is_pinged_and_an_unanswered_ping_is_a_lost_connection():
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        sub = Subscriber(server.url, health_check_interval=0.3, timeout=1.0, poll_interval=0.05)
        try:
            subscribed(sub, "t:x")

            # A live server answers the PING: reading goes on with nothing to report.
            def pinged() -> bool:
                assert sub.read() == []
                return any(c["cmd"] == "ping" for c in client.client_list(_type="pubsub"))

            wait_for(pinged, timeout=5, what="a PING after silence")

            # A server that stops answering (the link is dead) is noticed, once a PING
            # has gone unanswered for `timeout` (the last pong came at most one interval ago).
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                with pytest.raises(redis.ConnectionError, match="did not answer PING"):
                    wait_for(lambda: sub.read() or None, timeout=5, what="the silent link")
                assert time.monotonic() - stopped >= 0.9
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
        finally:
            sub.close()
            client.close()
