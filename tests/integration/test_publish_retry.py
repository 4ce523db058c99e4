"""The publisher's one retry on a real redis-server: nothing twice, and a bounded wait."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from markupsafe import Markup

from tests.support import numsub, wait_for
from turbocast import Publisher, PublishError, TurboStream, stream_channel
from turbocast.channels import history_key
from turbocast.history import History


@pytest.fixture
def name() -> str:
    """A stream of the test's own."""
    return f"retry-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def listener(redis_client: redis.Redis, name: str) -> Iterator[redis.client.PubSub]:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(stream_channel(name))
    wait_for(lambda: numsub(redis_client, stream_channel(name)) == 1, what="the listener")
    yield pubsub
    pubsub.close()


def _stream(text: str) -> TurboStream:
    return TurboStream.append("log", Markup("<p>{}</p>").format(text))


def _received_until(pubsub: redis.client.PubSub, marker: bytes) -> list[bytes]:
    """Every message up to and including the first that contains ``marker``."""
    received: list[bytes] = []

    def marker_came() -> bool:
        message = pubsub.get_message(timeout=0.1)
        if message:
            received.append(bytes(message["data"]))
        return bool(received) and marker in received[-1]

    wait_for(marker_came, what="the marker message")
    return received


def _lose_first_reply(publisher: Publisher, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first attempt runs in Redis, then its reply is lost, as a dropped connection does."""
    run_script = publisher.history._run_script
    calls = []

    def run(*args: Any) -> Any:
        calls.append(args)
        result = run_script(*args)
        if len(calls) == 1:
            raise redis.ConnectionError("Connection closed by server.")
        return result

    monkeypatch.setattr(publisher.history, "_run_script", run)


def _never_run_first(publisher: Publisher, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first attempt never reaches Redis."""
    run_script = publisher.history._run_script
    calls = []

    def run(*args: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            raise redis.ConnectionError("Error 111 connecting. Connection refused.")
        return run_script(*args)

    monkeypatch.setattr(publisher.history, "_run_script", run)


def test_a_retry_after_a_lost_reply_finds_the_first_attempt_and_sends_nothing_twice(
    publisher, listener, redis_client, name
):
    history = publisher.history
    key, channel = history_key(stream_channel(name)), stream_channel(name)
    token = os.urandom(16)
    started_ms = int(time.time() * 1000)
    first_id, _ = history.publish(key, channel, b"<p>once</p>", token=token)  # reply "lost"

    retry_id, receivers = history.publish(
        key, channel, b"<p>once</p>", token=token, retry_from_ms=started_ms - 10_000
    )
    publisher.to_stream(name, _stream("marker"))

    assert retry_id == first_id
    assert receivers == 1  # the channel's subscribers now: the listener
    assert redis_client.xlen(key) == 2  # "once" and the marker
    received = _received_until(listener, b"marker")
    assert [m.partition(b" ")[2] for m in received[:-1]] == [b"<p>once</p>"]
    assert received[0].startswith(first_id.encode() + b";t=")


def test_a_retry_finds_its_first_attempt_behind_more_than_maxlen_other_entries(redis_client, name):
    # Other publishers' messages since the retry's window began: more than maxlen, all
    # still held (trimming by count drops whole stream nodes).
    history = History(redis_client, maxlen=10)
    key, channel = history_key(stream_channel(name)), stream_channel(name)
    started_ms = int(time.time() * 1000)
    for n in range(15):
        history.publish(key, channel, f"<p>other {n}</p>".encode(), token=os.urandom(16))
    token = os.urandom(16)
    first_id, _ = history.publish(key, channel, b"<p>mine</p>", token=token)  # reply "lost"

    retry_id, _ = history.publish(
        key, channel, b"<p>mine</p>", token=token, retry_from_ms=started_ms - 10_000
    )

    assert retry_id == first_id
    assert redis_client.xlen(key) == 16  # nothing twice


def test_a_publisher_whose_reply_was_lost_publishes_once(
    publisher, listener, redis_client, name, monkeypatch, caplog
):
    _lose_first_reply(publisher, monkeypatch)

    with caplog.at_level(logging.INFO):
        count = publisher.to_stream(name, _stream("once"))
    publisher.to_stream(name, _stream("marker"))

    key = history_key(stream_channel(name))
    assert [f[b"d"] for _, f in redis_client.xrange(key)] == [
        str(_stream("once")).encode(),
        str(_stream("marker")).encode(),
    ]
    received = _received_until(listener, b"marker")
    assert [m.partition(b" ")[2] for m in received] == [
        str(_stream("once")).encode(),
        str(_stream("marker")).encode(),
    ]
    assert count == 1  # the channel's subscribers when the retry ran: the listener
    assert "retrying once" in caplog.text and "had landed" in caplog.text


def test_a_retry_whose_first_attempt_never_ran_publishes_normally(
    publisher, listener, redis_client, name, monkeypatch
):
    _never_run_first(publisher, monkeypatch)

    assert publisher.to_stream(name, _stream("once")) == 1
    publisher.to_stream(name, _stream("marker"))

    key = history_key(stream_channel(name))
    assert redis_client.xlen(key) == 2
    received = _received_until(listener, b"marker")
    assert [m.partition(b" ")[2] for m in received] == [
        str(_stream("once")).encode(),
        str(_stream("marker")).encode(),
    ]


def test_a_retry_does_not_take_another_publishs_entry_for_its_own(publisher, redis_client, name):
    history = publisher.history
    key, channel = history_key(stream_channel(name)), stream_channel(name)
    started_ms = int(time.time() * 1000)
    other_id, _ = history.publish(key, channel, b"<p>other</p>", token=os.urandom(16))

    retry_id, _ = history.publish(
        key, channel, b"<p>mine</p>", token=os.urandom(16), retry_from_ms=started_ms - 10_000
    )

    assert retry_id != other_id
    assert [f[b"d"] for _, f in redis_client.xrange(key)] == [b"<p>other</p>", b"<p>mine</p>"]


def test_a_publisher_gives_up_on_a_redis_that_never_answers_after_its_timeout():
    # Something accepts connections (the kernel does, for a listening socket) and
    # then never says a word: a hung Redis, a black-holed proxy.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(16)
        port = mute.getsockname()[1]
        publisher = Publisher(f"redis://127.0.0.1:{port}/0", timeout=0.5)
        try:
            started = time.monotonic()
            with pytest.raises(PublishError) as info:
                publisher.to_all(_stream("into the void"))
            elapsed = time.monotonic() - started
        finally:
            publisher.close()

    assert isinstance(info.value.__cause__, redis.TimeoutError)
    # Two attempts of 0.5 s each; the bound is generous (a busy machine), far below
    # what the old fixed 10 s socket timeout took (20 s).
    assert elapsed < 4.0
