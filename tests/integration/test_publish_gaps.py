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
    # The page rendered while its channel was empty ("0-0"), then 15 came: more than
    # the 10 it replays.
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


def test_a_reader_whose_own_entry_was_trimmed_gets_a_gap_to_be_safe(
    history, key, channel, redis_client
):
    # Only "mine" went (trimming by age takes entries one by one), but Redis keeps no
    # record of which ids trimming took: the reader cannot tell this from losing more,
    # and is told to refresh.
    [mine] = _publish(history, key, channel, 1)
    after = _publish(history, key, channel, MAXLEN)
    redis_client.xtrim(key, minid=after[0], approximate=False)

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


def _node_entries(redis_client: redis.Redis) -> int:
    """The most entries a stream node holds (trimming by count drops whole nodes)."""
    most = int(redis_client.config_get("stream-node-max-entries")["stream-node-max-entries"])
    if most < 1:
        pytest.skip("stream-node-max-entries is 0 here: nodes are bounded by bytes only")
    return most


def test_a_reader_that_missed_more_than_maxlen_gets_a_gap_while_the_history_holds_them(
    history, key, channel, redis_client
):
    # Trimming by count drops whole stream nodes: 15 short messages are still held.
    ids = _publish(history, key, channel, MAXLEN + 5)
    assert redis_client.xlen(key) == MAXLEN + 5

    entries, gap = history.since(key, ids[0])
    # The gap carries the newest id: the socket's cursor goes past everything replayed.
    assert (gap, [i for i, *_ in entries]) == (True, ids[-MAXLEN:])
    entries, gap = history.since(key, ids[4])  # exactly maxlen after it
    assert (gap, [i for i, *_ in entries]) == (False, ids[5:])


def test_past_its_maxlen_a_history_keeps_at_least_maxlen_and_less_than_a_node_more(
    history, key, channel, redis_client
):
    node = _node_entries(redis_client)
    ids = _publish(history, key, channel, MAXLEN + 3 * node)

    kept = [i.decode() for i, _ in redis_client.xrange(key)]

    assert MAXLEN <= len(kept) < MAXLEN + node
    assert kept == ids[-len(kept) :]
    assert history.since(key, START)[1] is True  # trimmed: a page from before it refreshes


def test_where_a_trimmed_node_ends_only_readers_in_it_or_too_far_behind_get_a_gap(
    history, key, channel, redis_client
):
    # Publish until Redis first drops a node, then read from every position around it.
    limit = MAXLEN + _node_entries(redis_client) + 1
    ids: list[str] = []
    while redis_client.xlen(key) == len(ids):
        assert len(ids) < limit, "no node was trimmed"
        ids += _publish(history, key, channel, 1)
    kept = [i.decode() for i, _ in redis_client.xrange(key)]
    assert kept == ids[-len(kept) :] and len(kept) >= MAXLEN
    trimmed = ids[: -len(kept)]

    # The newest trimmed entry: everything after it is held, yet its own is gone.
    entries, gap = history.since(key, trimmed[-1])
    assert (gap, [i for i, *_ in entries]) == (True, kept[-MAXLEN:])
    for index, position in enumerate(kept):
        after = kept[index + 1 :]
        entries, gap = history.since(key, position)
        assert (gap, [i for i, *_ in entries]) == (len(after) > MAXLEN, after[-MAXLEN:]), position
