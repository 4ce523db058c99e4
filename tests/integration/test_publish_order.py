"""History ids on a real redis-server: one order across every channel, kept past a lost clock."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from markupsafe import Markup

from turbocast import Publisher, TurboStream, stream_channel
from turbocast.channels import clock_key, history_key
from turbocast.history import format_id, parse_id


@pytest.fixture
def prefix() -> str:
    """A namespace, and so a clock, of the test's own."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def own_publisher(redis_url: str, prefix: str) -> Iterator[Publisher]:
    pub = Publisher(redis_url, prefix=prefix)
    yield pub
    pub.close()


def _numbered(n: int) -> TurboStream:
    return TurboStream.append("log", Markup('<p data-n="{}"></p>').format(n))


def _n(payload: bytes) -> int:
    return int(payload.split(b'data-n="')[1].split(b'"')[0])


def _merged(redis_client: redis.Redis, keys: list[str]) -> list[tuple[tuple[int, int], int]]:
    """Every entry of ``keys`` as ``(parsed id, n)``, sorted by id: a multi-channel replay."""
    entries = [
        (parse_id(entry_id), _n(fields[b"d"]))
        for key in keys
        for entry_id, fields in redis_client.xrange(key)
    ]
    return sorted(entries)


def test_ids_follow_publish_order_across_channels(own_publisher, redis_client, prefix):
    names = ["a", "b", "c"]
    keys = [history_key(stream_channel(name, prefix), prefix) for name in names]
    count = 2000
    for n in range(count):
        own_publisher.to_stream(names[n % 3], _numbered(n))

    merged = _merged(redis_client, keys)

    assert len(merged) == count
    ids = [entry_id for entry_id, _ in merged]
    # No two channels share an id (Redis's own "*" gives both "<ms>-0" in one ms) ...
    assert all(earlier < later for earlier, later in zip(ids, ids[1:], strict=False))
    # ... and sorting by id gives back the order they were published in.
    assert [n for _, n in merged] == list(range(count))


def test_ids_are_distinct_across_channels_published_from_several_threads(
    own_publisher, redis_client, prefix
):
    per_thread = 300
    names = [f"thread-{i}" for i in range(4)]
    errors: list[BaseException] = []

    def publish(name: str) -> None:
        try:
            for n in range(per_thread):
                own_publisher.to_stream(name, _numbered(n))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert not errors
    keys = [history_key(stream_channel(name, prefix), prefix) for name in names]
    ids = [entry_id for entry_id, _ in _merged(redis_client, keys)]
    assert len(ids) == 4 * per_thread
    assert len(set(ids)) == len(ids)


def test_the_clock_is_the_last_id_handed_out_and_never_expires(own_publisher, redis_client, prefix):
    own_publisher.to_stream("a", _numbered(1))
    [(entry_id, _)] = redis_client.xrange(history_key(stream_channel("a", prefix), prefix))

    assert redis_client.get(clock_key(prefix)) == entry_id
    assert redis_client.ttl(clock_key(prefix)) == -1  # a key without a time to live


def test_a_lost_clock_behind_a_stream_still_publishes_above_its_top_and_moves_on(
    own_publisher, redis_client, prefix
):
    history = own_publisher.history
    ahead = history_key(stream_channel("ahead", prefix), prefix)
    other = history_key(stream_channel("other", prefix), prefix)
    history.publish(ahead, stream_channel("ahead", prefix), b"<p>first</p>")
    # The clock key is lost (evicted, deleted) while a stream's top is ahead of the
    # time: a clock that restarts from "now" would hand out ids below that top.
    redis_client.delete(clock_key(prefix))
    top = (int(time.time() * 1000) + 60_000, 5)
    redis_client.xadd(ahead, {"d": b"<p>by hand</p>"}, id=format_id(top))

    entry_id, _ = history.publish(ahead, stream_channel("ahead", prefix), b"<p>after</p>")

    assert parse_id(entry_id) > top
    assert [i for i, _ in redis_client.xrange(ahead)][-1].decode() == entry_id
    # The clock moved up with it: the next id, on any channel, is above it.
    assert redis_client.get(clock_key(prefix)).decode() == entry_id
    next_id, _ = history.publish(other, stream_channel("other", prefix), b"<p>next</p>")
    assert parse_id(next_id) > parse_id(entry_id)


def test_a_lost_clock_with_streams_behind_the_time_starts_again_from_now(
    own_publisher, redis_client, prefix
):
    history = own_publisher.history
    key = history_key(stream_channel("a", prefix), prefix)
    first, _ = history.publish(key, stream_channel("a", prefix), b"<p>1</p>")
    redis_client.delete(clock_key(prefix))
    before_ms = int(time.time() * 1000)

    second, _ = history.publish(key, stream_channel("a", prefix), b"<p>2</p>")

    assert parse_id(second) > parse_id(first)
    assert parse_id(second)[0] >= before_ms - 5_000  # Redis's clock, near this host's
    assert redis_client.get(clock_key(prefix)).decode() == second
