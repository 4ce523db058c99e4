"""The publisher's time on a real redis-server: every message carries it (``;t=<µs>``), on
pub/sub and in its history entry, and a retry carries the first attempt's."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from markupsafe import Markup

from tests.support import numsub, wait_for
from turbocast import TurboStream, stream_channel
from turbocast.channels import history_key
from turbocast.history import _PUBLISH, START
from turbocast.message import Message, published_seconds

SID = "t" * 32
SOCKET = "S" * 20


@pytest.fixture
def name() -> str:
    """A stream of the test's own."""
    return f"time-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def listener(redis_client: redis.Redis, name: str) -> Iterator[redis.client.PubSub]:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(stream_channel(name))
    wait_for(lambda: numsub(redis_client, stream_channel(name)) == 1, what="the listener")
    yield pubsub
    pubsub.close()


def _stream(text: str) -> TurboStream:
    return TurboStream.append("log", Markup("<p>{}</p>").format(text))


def _received(pubsub: redis.client.PubSub, count: int) -> list[bytes]:
    received: list[bytes] = []

    def enough() -> bool:
        message = pubsub.get_message(timeout=0.1)
        if message:
            received.append(bytes(message["data"]))
        return len(received) >= count

    wait_for(enough, what=f"{count} messages")
    return received


def _within(published_us: bytes, before: float, after: float) -> bool:
    """Whether a ``t`` (µs, as Redis holds it) lies in ``time.time()``'s [before, after]."""
    return math.floor(before * 1_000_000) <= int(published_us) <= after * 1_000_000


def test_a_publish_carries_the_publishers_time_on_pubsub_and_in_its_history_entry(
    publisher, listener, redis_client, name
):
    before = time.time()
    publisher.to_stream(name, _stream("one"))
    after = time.time()

    [payload] = _received(listener, 1)
    [(entry_id, fields)] = redis_client.xrange(history_key(stream_channel(name)))
    assert _within(fields[b"t"], before, after)
    assert payload == entry_id + b";t=" + fields[b"t"] + b" " + str(_stream("one")).encode()
    # The relay's reading of it, live and from the history.
    message = Message.from_payload(stream_channel(name).encode(), "t:x", payload)
    assert message.id == entry_id.decode()
    assert message.published == int(fields[b"t"]) / 1_000_000
    assert before - 1e-6 <= message.published <= after + 1e-6
    [(_, _, _, _, published_us)] = publisher.history.since(
        history_key(stream_channel(name)), START
    )[0]
    assert published_seconds(published_us) == message.published


def test_the_time_comes_last_after_both_exclusions(publisher, listener, redis_client, name):
    before = time.time()
    publisher.to_stream(name, _stream("one"), exclude=SID, exclude_socket=SOCKET)
    after = time.time()

    [payload] = _received(listener, 1)
    [(entry_id, fields)] = redis_client.xrange(history_key(stream_channel(name)))
    head, _, _ = payload.partition(b" ")
    assert head == entry_id + f";x={SID};s={SOCKET};t=".encode() + fields[b"t"]
    assert _within(fields[b"t"], before, after)
    message = Message.from_payload(stream_channel(name).encode(), "t:x", payload)
    assert (message.exclude, message.exclude_socket) == (SID.encode(), SOCKET.encode())
    assert message.published == int(fields[b"t"]) / 1_000_000


def test_a_batchs_messages_carry_the_time_it_was_sent(publisher, listener, redis_client, name):
    with publisher.batch() as batch:
        for n in range(5):
            batch.to_stream(name, _stream(f"m{n}"))
        before = time.time()
    after = time.time()

    received = _received(listener, 5)
    entries = redis_client.xrange(history_key(stream_channel(name)))
    assert [m.partition(b" ")[0] for m in received] == [
        i + b";t=" + fields[b"t"] for i, fields in entries
    ]
    assert len({fields[b"t"] for _, fields in entries}) == 1  # one reading for the batch
    assert all(_within(fields[b"t"], before, after) for _, fields in entries)


def test_history_publish_takes_a_time_from_its_caller(publisher, listener, redis_client, name):
    key, channel = history_key(stream_channel(name)), stream_channel(name)

    entry_id, _ = publisher.history.publish(key, channel, b"<p>a</p>", published_us=1234567)

    [payload] = _received(listener, 1)
    assert payload == f"{entry_id};t=1234567 <p>a</p>".encode()
    assert redis_client.xrange(key)[0][1][b"t"] == b"1234567"


@pytest.mark.parametrize("rest", [("", "", "", ""), ("", "", "")], ids=["empty", "absent"])
def test_a_caller_that_passes_no_time_gets_no_mark_and_no_field(
    publisher, redis_client, listener, name, rest
):
    # A caller that passes '' as the time (ARGV[9]), or none (eight ARGV, from before it).
    key, channel = history_key(stream_channel(name)), stream_channel(name)
    script = redis_client.register_script(_PUBLISH)
    keys = [key, publisher.history.clock_key]

    entry_id, _ = script(keys=keys, args=[b"<p>a</p>", 100, 60_000, channel, b"k" * 16, *rest])

    [payload] = _received(listener, 1)
    assert payload == entry_id + b" <p>a</p>"
    assert b"t" not in redis_client.xrange(key)[0][1]
    assert Message.from_payload(channel.encode(), "t:x", payload).published is None


def test_a_retried_publish_carries_the_first_attempts_time(
    publisher, listener, redis_client, name, monkeypatch
):
    run_script = publisher.history._run_script
    attempts: list[tuple[Any, ...]] = []

    def never_run_first(keys: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        attempts.append(args)
        if len(attempts) == 1:
            # The clock moves on before the retry: a time of its own would show.
            wait_for(lambda: time.time() * 1_000_000 > args[8] + 1000, what="a ms to pass")
            raise redis.ConnectionError("Error 111 connecting. Connection refused.")
        return run_script(keys, args)

    monkeypatch.setattr(publisher.history, "_run_script", never_run_first)
    before = time.time()
    assert publisher.to_stream(name, _stream("once")) == 1
    after = time.time()

    first, retry = attempts
    assert retry[8] == first[8]  # ARGV[9]: the same publish, the first attempt's time
    [payload] = _received(listener, 1)
    [(entry_id, fields)] = redis_client.xrange(history_key(stream_channel(name)))
    assert fields[b"t"] == str(first[8]).encode()
    assert payload.partition(b" ")[0] == entry_id + b";t=" + fields[b"t"]
    assert _within(fields[b"t"], before, after)


def test_a_retry_whose_first_attempt_landed_keeps_its_entry_and_time(
    publisher, listener, redis_client, name, monkeypatch
):
    run_script = publisher.history._run_script
    attempts: list[tuple[Any, ...]] = []

    def lose_first_reply(keys: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        attempts.append(args)
        result = run_script(keys, args)
        if len(attempts) == 1:
            raise redis.ConnectionError("Connection closed by server.")
        return result

    monkeypatch.setattr(publisher.history, "_run_script", lose_first_reply)
    publisher.to_stream(name, _stream("once"))
    publisher.to_stream(name, _stream("marker"))

    first, retry, _ = attempts
    assert retry[8] == first[8]
    once, marker = _received(listener, 2)
    assert once.partition(b" ")[0].partition(b";")[2] == f"t={first[8]}".encode()
    assert b"marker" in marker
    [(_, fields), _] = redis_client.xrange(history_key(stream_channel(name)))
    assert fields[b"t"] == str(first[8]).encode()
