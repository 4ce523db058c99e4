"""History.since on a real redis-server: the gap signal, from a real position and from 0-0."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from turbocast.history import START, History

MAXLEN = 10


@pytest.fixture
def history(redis_client: redis.Redis) -> Iterator[History]:
    short = History(redis_client, maxlen=MAXLEN, prefix=f"t{uuid.uuid4().hex[:12]}")
    yield short
    short.close()


@pytest.fixture
def channel() -> str:
    return f"turbo:stream:gaps-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def key(channel: str) -> str:
    return channel.replace("turbo:stream:", "turbo:history:stream:")


def _publish(history: History, key: str, channel: str, count: int) -> list[str]:
    return [history.publish(key, channel, f"<p>{n}</p>".encode())[0] for n in range(count)]


def test_from_start_after_more_than_the_history_holds_is_a_gap(history, key, channel):
    # The page rendered while its channel was empty ("0-0"), then 15 came; 10 are kept.
    ids = _publish(history, key, channel, MAXLEN + 5)

    entries, gap = history.since(key, START)

    assert gap is True
    assert [i for i, *_ in entries] == ids[-MAXLEN:]


def test_from_start_within_what_the_history_holds_is_no_gap(history, key, channel):
    ids = _publish(history, key, channel, MAXLEN)

    entries, gap = history.since(key, START)

    assert (gap, [i for i, *_ in entries]) == (False, ids)


def test_from_start_on_an_untouched_channel_is_nothing_and_no_gap(history, key):
    assert history.since(key, START) == ([], False)


def test_a_reader_within_the_bound_gets_the_rest_and_no_gap(history, key, channel):
    ids = _publish(history, key, channel, 5)
    ids += _publish(history, key, channel, MAXLEN - 5)

    entries, gap = history.since(key, ids[2])

    assert (gap, [i for i, *_ in entries]) == (False, ids[3:])


def test_a_reader_whose_own_entry_was_trimmed_gets_a_gap_to_be_safe(history, key, channel):
    # Only "mine" went, but Redis keeps no record of which ids trimming took: the
    # reader cannot tell this from losing more, and is told to refresh.
    [mine] = _publish(history, key, channel, 1)
    after = _publish(history, key, channel, MAXLEN)

    entries, gap = history.since(key, mine)

    assert (gap, [i for i, *_ in entries]) == (True, after)


def test_a_reader_at_the_oldest_entry_kept_gets_the_rest_and_no_gap(history, key, channel):
    ids = _publish(history, key, channel, MAXLEN + 3)

    entries, gap = history.since(key, ids[3])

    assert (gap, [i for i, *_ in entries]) == (False, ids[4:])


def test_a_reader_before_an_entry_deleted_by_hand_gets_a_gap(history, key, channel, redis_client):
    ids = _publish(history, key, channel, 5)
    redis_client.xdel(key, ids[3])

    entries, gap = history.since(key, ids[1])

    assert (gap, [i for i, *_ in entries]) == (True, [ids[2], ids[4]])


def test_a_reader_behind_what_was_trimmed_gets_a_gap(history, key, channel):
    [mine] = _publish(history, key, channel, 1)
    after = _publish(history, key, channel, MAXLEN + 1)  # the first after "mine" is gone

    entries, gap = history.since(key, mine)

    assert (gap, [i for i, *_ in entries]) == (True, after[1:])


def test_a_real_position_in_an_absent_history_is_a_gap(history, key, channel, redis_client):
    [mine] = _publish(history, key, channel, 1)
    redis_client.delete(key)  # expired, or Redis lost its data

    assert history.since(key, mine) == ([], True)


def test_a_real_position_in_a_history_begun_afresh_is_a_gap(history, key, channel, redis_client):
    [mine, _lost] = _publish(history, key, channel, 2)
    redis_client.delete(key)  # the old stream expires; a new one begins
    [fresh] = _publish(history, key, channel, 1)

    entries, gap = history.since(key, mine)

    assert (gap, [i for i, *_ in entries]) == (True, [fresh])
