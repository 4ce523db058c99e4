"""turbocast.publisher on a real redis-server: the direct script path, its errors, forks."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator

import pytest
import redis
from markupsafe import Markup

from tests.support import numsub, wait_for
from turbocast import Publisher, PublishError, TurboStream, channel_for
from turbocast.channels import history_key

SID = "p" * 32
CHANNEL = channel_for(SID)


def _stream(text: str) -> TurboStream:
    return TurboStream.append("messages", Markup("<li>{}</li>").format(text))


@pytest.fixture
def listener(redis_client: redis.Redis) -> Iterator[redis.client.PubSub]:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    wait_for(lambda: numsub(redis_client, CHANNEL) == 1, what="the listener")
    yield pubsub
    pubsub.close()


def _next(pubsub: redis.client.PubSub) -> bytes:
    message = wait_for(lambda: pubsub.get_message(timeout=0.1), what="a published message")
    return bytes(message["data"])


def test_publish_appends_to_the_history_and_publishes_with_the_id(
    publisher, listener, redis_client
):
    assert publisher.to_session(SID, _stream("one")) == 1

    head, _, html = _next(listener).partition(b" ")
    assert html == str(_stream("one")).encode()
    [(entry_id, fields)] = redis_client.xrange(history_key(CHANNEL))
    assert head == entry_id + b";t=" + fields[b"t"]  # the id, then the publisher's time
    assert fields[b"d"] == html
    assert len(fields[b"p"]) == 16  # the publish's own token, for a retry to find


def test_publishing_reuses_one_connection_when_sequential(publisher, redis_client):
    before = _client_ids(redis_client)
    for n in range(20):
        publisher.to_session(SID, _stream(str(n)))
    assert len(_client_ids(redis_client) - before) <= 1


def test_a_flushed_script_cache_is_refilled_on_the_fly(publisher, listener, redis_client):
    publisher.to_session(SID, _stream("before"))
    _next(listener)
    redis_client.script_flush()  # what a Redis restart does to scripts

    assert publisher.to_session(SID, _stream("after")) == 1
    assert _next(listener).endswith(str(_stream("after")).encode())


def test_a_killed_connection_is_retried_once_on_a_fresh_one(
    publisher, listener, redis_client, caplog
):
    publisher.to_session(SID, _stream("first"))
    _next(listener)
    redis_client.client_kill_filter(_type="normal", skipme=True)

    assert publisher.to_session(SID, _stream("second")) == 1
    assert "publish failed, retrying once" in caplog.text
    assert _next(listener).endswith(str(_stream("second")).encode())


def test_a_response_error_leaves_the_connection_usable(publisher, redis_client):
    redis_client.set(history_key(CHANNEL), "not a stream")  # WRONGTYPE for XADD
    with pytest.raises(PublishError, match="WRONGTYPE"):
        publisher.to_session(SID, _stream("refused"))
    redis_client.delete(history_key(CHANNEL))

    assert publisher.to_session(SID, _stream("fine")) == 0


def _publish_in_child(redis_url: str, publisher: Publisher, queue: multiprocessing.Queue) -> None:
    # The child got the parent's publisher, idle connection included.
    try:
        queue.put(publisher.to_session(SID, _stream(f"child {os.getpid()}")))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put(repr(exc))


def test_a_forked_child_publishes_on_connections_of_its_own(
    redis_url, publisher, listener, redis_client
):
    publisher.to_session(SID, _stream("parent before"))
    _next(listener)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_publish_in_child, args=(redis_url, publisher, queue))
    child.start()
    child.join(10)

    assert queue.get(timeout=10) == 1
    assert b"child" in _next(listener)
    # The parent's connection was not disturbed by the child.
    assert publisher.to_session(SID, _stream("parent after")) == 1
    assert _next(listener).endswith(str(_stream("parent after")).encode())


def _client_ids(redis_client: redis.Redis) -> set[str]:
    return {c["id"] for c in redis_client.client_list()}


def test_close_disconnects_the_publishing_connections(redis_url, redis_client):
    before = _client_ids(redis_client)
    publisher = Publisher(redis_url)
    publisher.to_session(SID, _stream("x"))
    own = _client_ids(redis_client) - before
    assert own

    publisher.close()

    wait_for(lambda: not own & _client_ids(redis_client), what="the publisher's connection closing")


def test_after_redis_drops_every_connection_only_one_publish_retries(
    publisher, listener, redis_client, caplog
):
    # Concurrent publishes leave the publisher with several idle connections.
    def bursts() -> None:
        threads = [threading.Thread(target=burst) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)

    def burst() -> None:
        for n in range(20):
            publisher.to_session(SID, _stream(str(n)))

    before = _client_ids(redis_client)
    wait_for(
        lambda: bursts() or len(_client_ids(redis_client) - before) >= 2,
        what="the publisher to hold several connections",
    )
    redis_client.client_kill_filter(_type="normal", skipme=True)  # as a restart would

    assert publisher.to_session(SID, _stream("after")) == 1
    bursts()  # every idle connection is used again

    # The first publish found a dead connection and retried; the others were dropped
    # with it, so no later publish stumbles on one.
    assert caplog.text.count("publish failed, retrying once") == 1
