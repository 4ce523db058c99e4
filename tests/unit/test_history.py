"""turbocast.history: stream ids, and reading channel histories (against an in-memory fake)."""

from __future__ import annotations

import logging
import math
import time

import pytest
import redis

from tests.unit.fake_streams import FakePipeline, FakeStreamsRedis, payload_of
from turbocast.history import START, History, format_id, parse_id

KEY = "turbo:history:broadcast"
OTHER = "turbo:history:session:abcdefghijklmnop"


class FakeInfoPipeline(FakePipeline):
    """The shared fake's pipeline, plus ``XINFO STREAM`` and ``raise_on_error``."""

    client: FakeHistoryRedis

    def xinfo_stream(self, name: str):
        def run() -> object:
            if name not in self.client.streams:
                return redis.ResponseError("no such key")
            info: dict[str, object] = {"length": len(self.client.streams[name])}
            if self.client.redis_7:
                info["entries-added"] = self.client.added.get(name, 0)
                info["max-deleted-entry-id"] = self.client.max_deleted.get(name, b"0-0")
            return info

        self.queued.append(run)
        return self

    def xrange(self, name: str, min: str = "-", max: str = "+", count: int | None = None):
        if name in self.client.wrong_type:
            self.queued.append(lambda: redis.ResponseError("WRONGTYPE not a stream"))
            return self
        return super().xrange(name, min=min, max=max, count=count)

    def xrevrange(self, name: str, max: str = "+", min: str = "-", count: int | None = None):
        if name in self.client.wrong_type:
            self.queued.append(lambda: redis.ResponseError("WRONGTYPE not a stream"))
            return self
        return super().xrevrange(name, max=max, min=min, count=count)

    def execute(self, raise_on_error: bool = True) -> list[object]:
        results = super().execute()
        errors = [r for r in results if isinstance(r, Exception)]
        if raise_on_error and errors:
            raise errors[0]
        return results


class FakeHistoryRedis(FakeStreamsRedis):
    """Streams that count what was ever added and remember XDEL's newest, as Redis 7 does."""

    def __init__(self) -> None:
        super().__init__()
        self.added: dict[str, int] = {}
        self.max_deleted: dict[str, bytes] = {}
        self.redis_7 = True  # False: a Redis before 7.0, whose XINFO says neither
        self.wrong_type: set[str] = set()  # keys that hold something else than a stream

    def add(self, key: str, *ids: str) -> None:
        super().add(key, *ids)
        self.added[key] = self.added.get(key, 0) + len(ids)

    def pipeline(self, transaction: bool = True) -> FakeInfoPipeline:
        return FakeInfoPipeline(self)

    def trim(self, key: str, count: int) -> None:
        """Delete the ``count`` oldest entries, as MAXLEN or MINID trimming does."""
        self.streams[key] = self.streams[key][count:]

    def xdel(self, key: str, entry_id: str) -> None:
        self.streams[key] = [e for e in self.streams[key] if e[0] != entry_id.encode()]
        self.max_deleted[key] = max(
            self.max_deleted.get(key, b"0-0"), entry_id.encode(), key=lambda i: parse_id(i)
        )

    def drop(self, key: str) -> None:
        """The key expires (or Redis loses it): its counts go with it."""
        for table in (self.streams, self.added, self.max_deleted):
            table.pop(key, None)  # type: ignore[attr-defined]


@pytest.fixture
def client() -> FakeHistoryRedis:
    return FakeHistoryRedis()


@pytest.fixture
def history(client: FakeStreamsRedis) -> History:
    return History(client)  # type: ignore[arg-type]


# -- parse_id and format_id ----------------------------------------------------------------


@pytest.mark.parametrize("text", ["0-0", "1700000000000-0", "1700000000000-17", "1-2"])
def test_format_id_of_parse_id_gives_back_the_id(text):
    assert format_id(parse_id(text)) == text


def test_parse_id_reads_the_bytes_redis_returns():
    assert parse_id(b"1700000000000-3") == (1700000000000, 3)


def test_parse_id_without_a_sequence_means_sequence_zero():
    assert parse_id("1700") == (1700, 0)


def test_parsed_ids_order_numerically_not_as_text():
    ids = ["1701-0", "1700-10", "1700-2"]

    assert sorted(ids, key=parse_id) == ["1700-2", "1700-10", "1701-0"]
    assert parse_id("1700-2") < parse_id("1700-10") < parse_id("1701-0")
    assert parse_id("999-0") < parse_id("1000-0")


@pytest.mark.parametrize("text", ["abc", "", "-", "12-x", "x-1"])
def test_parse_id_refuses_what_is_not_a_stream_id(text):
    with pytest.raises(ValueError):
        parse_id(text)


# -- History: construction and publish ------------------------------------------------------


@pytest.mark.parametrize(("maxlen", "max_age"), [(0, 60.0), (-1, 60.0), (10, 0.0), (10, -5.0)])
def test_history_refuses_a_length_below_one_or_an_age_not_above_zero(client, maxlen, max_age):
    with pytest.raises(ValueError, match="maxlen"):
        History(client, maxlen=maxlen, max_age=max_age)  # type: ignore[arg-type]


def test_publish_runs_the_script_once_with_keys_payload_limits_channel_and_a_token(client):
    history = History(client, maxlen=50, max_age=2.5)  # type: ignore[arg-type]
    client.script_result = [b"1700000000000-4", 3]
    before = time.time()

    result = history.publish(KEY, "turbo:broadcast", b"<turbo-stream></turbo-stream>")
    after = time.time()

    assert result == ("1700000000000-4", 3)
    [(keys, args)] = client.script_calls
    # The history and the clock that orders ids across channels: every key it touches.
    assert keys == [KEY, "turbo:clock"]
    *args, mode = args
    payload, maxlen, max_age_ms, channel, token, retry_from, exclude, exclude_socket, t = args
    assert mode == ""  # PUBLISH, not a cluster's SPUBLISH
    assert (payload, maxlen, max_age_ms, channel) == (
        b"<turbo-stream></turbo-stream>",
        50,
        2500,
        "turbo:broadcast",
    )
    assert isinstance(token, bytes) and len(token) == 16
    assert retry_from == ""  # a first attempt: no lookup
    assert exclude == exclude_socket == ""  # nobody left out
    # The publisher's time: now, in whole microseconds since the epoch.
    assert isinstance(t, int) and math.floor(before * 1_000_000) <= t <= after * 1_000_000
    script = client.scripts[0]
    assert "XADD" in script and "PUBLISH" in script and "KEYS[2]" in script


def test_each_publish_gets_a_token_of_its_own(client, history):
    history.publish(KEY, "turbo:broadcast", b"a")
    history.publish(KEY, "turbo:broadcast", b"a")

    first, second = (args[4] for _, args in client.script_calls)
    assert first != second


def test_the_clock_key_follows_the_prefix(client):
    history = History(client, prefix="shop")  # type: ignore[arg-type]

    history.publish("shop:history:broadcast", "shop:broadcast", b"x")

    assert client.script_calls[0][0] == ["shop:history:broadcast", "shop:clock"]


def test_on_a_cluster_the_script_touches_only_the_history_and_publishes_sharded(client):
    # One hash slot per script on a Redis Cluster: no clock key shared by every channel,
    # and SPUBLISH, so only the shard that owns the channel's slot carries the message.
    history = History(client, sharded=True)  # type: ignore[arg-type]

    history.publish(KEY, "turbo:broadcast", b"x")

    [(keys, args)] = client.script_calls
    assert keys == [KEY]
    assert args[-1] == "S"


def test_a_retry_passes_the_first_attempts_token_and_where_to_look_from(client, history):
    history.publish(
        KEY,
        "turbo:broadcast",
        b"x",
        token=b"t" * 16,
        retry_from_ms=1700000000000,
        published_us=1699999999123456,
    )

    [(_, args)] = client.script_calls
    assert args[4:] == [b"t" * 16, "1700000000000", "", "", 1699999999123456, ""]


def test_a_publish_time_below_zero_is_refused(client, history):
    with pytest.raises(ValueError, match="published_us"):
        history.publish(KEY, "turbo:broadcast", b"x", published_us=-1)

    assert client.script_calls == []


def test_a_retry_without_the_first_attempts_token_is_refused(client, history):
    with pytest.raises(ValueError, match="token"):
        history.publish(KEY, "turbo:broadcast", b"x", retry_from_ms=1)

    assert client.script_calls == []


def test_a_retry_that_found_its_first_attempt_returns_it_and_says_so(client, history, caplog):
    client.script_result = [b"1700000000000-4", 2, 1]  # the script's "it had landed" reply

    with caplog.at_level(logging.INFO, logger="turbocast.history"):
        result = history.publish(
            KEY, "turbo:broadcast", b"x", token=b"t" * 16, retry_from_ms=1700000000000
        )

    assert result == ("1700000000000-4", 2)
    assert "had landed" in caplog.text


# -- History.positions ---------------------------------------------------------------------


def test_positions_are_start_for_empty_histories_and_the_newest_id_otherwise(client, history):
    client.add(KEY, "1700-0", "1700-2", "1701-0")

    assert history.positions([OTHER, KEY]) == [START, "1701-0"]


def test_positions_of_many_histories_take_one_round_trip(client, history):
    client.add(KEY, "1-0")
    client.add(OTHER, "2-0")

    history.positions([KEY, OTHER, "turbo:history:user:ann"])

    assert client.round_trips == 1


def test_positions_of_no_histories_is_an_empty_list(history):
    assert history.positions([]) == []


# -- History.since -------------------------------------------------------------------------


def test_since_returns_the_entries_after_the_position_oldest_first(client, history):
    client.add(KEY, "1700-0", "1700-2", "1700-10", "1701-0")

    entries, gap = history.since(KEY, "1700-2")

    assert entries == [
        ("1700-10", payload_of("1700-10"), None, None, None),
        ("1701-0", payload_of("1701-0"), None, None, None),
    ]
    assert gap is False


def test_since_returns_each_entrys_exclusions_and_publish_time(client, history):
    client.add(KEY, "1700-0")
    client.streams[KEY].append(
        (b"1700-1", {b"d": b"<p>", b"x": b"sess", b"s": b"sock", b"t": b"1700000000000123"})
    )

    entries, _ = history.since(KEY, START)

    assert entries == [
        ("1700-0", payload_of("1700-0"), None, None, None),
        ("1700-1", b"<p>", b"sess", b"sock", b"1700000000000123"),
    ]


def test_since_the_newest_id_returns_nothing_and_no_gap(client, history):
    client.add(KEY, "1700-0", "1701-0")

    assert history.since(KEY, "1701-0") == ([], False)


def test_since_start_returns_the_whole_history_when_nothing_was_deleted(client, history):
    client.add(KEY, "1700-5", "1701-0")

    entries, gap = history.since(KEY, START)

    assert [i for i, *_ in entries] == ["1700-5", "1701-0"]
    assert gap is False


def test_since_start_after_entries_were_trimmed_is_a_gap_with_what_is_left(client, history):
    # The page rendered while the channel was empty, then more came than it keeps.
    client.add(KEY, "1700-0", "1700-1", "1700-5", "1701-0")
    client.trim(KEY, 2)

    entries, gap = history.since(KEY, START)

    assert [i for i, *_ in entries] == ["1700-5", "1701-0"]
    assert gap is True


def test_since_start_on_an_absent_history_is_nothing_and_no_gap(history):
    assert history.since(KEY, START) == ([], False)


def test_since_a_trimmed_position_reports_a_gap_with_what_is_left(client, history):
    client.add(KEY, "1700-1", "1700-3", "1700-5", "1701-0")
    client.trim(KEY, 2)  # "1700-1", the reader's, and "1700-3", after it, are gone

    entries, gap = history.since(KEY, "1700-1")

    assert [i for i, *_ in entries] == ["1700-5", "1701-0"]
    assert gap is True


def test_since_a_position_that_was_itself_the_last_trimmed_is_a_gap_to_be_safe(client, history):
    # Whether "1700-3" went too or only the reader's own entry, the history cannot say.
    client.add(KEY, "1700-0", "1700-1", "1700-5", "1701-0")
    client.trim(KEY, 2)

    assert history.since(KEY, "1700-1")[1] is True


def test_since_a_position_after_what_was_trimmed_is_no_gap(client, history):
    client.add(KEY, "1700-0", "1700-1", "1700-5", "1701-0")
    client.trim(KEY, 1)

    assert history.since(KEY, "1700-5") == (
        [("1701-0", payload_of("1701-0"), None, None, None)],
        False,
    )


def test_since_a_position_before_an_entry_deleted_by_hand_is_a_gap(client, history):
    client.add(KEY, "1700-0", "1700-1", "1700-5", "1701-0")
    client.xdel(KEY, "1700-5")

    entries, gap = history.since(KEY, "1700-1")

    assert [i for i, *_ in entries] == ["1701-0"]
    assert gap is True


def test_since_a_position_after_an_entry_deleted_by_hand_is_no_gap(client, history):
    client.add(KEY, "1700-0", "1700-1", "1700-5", "1701-0")
    client.xdel(KEY, "1700-1")

    assert history.since(KEY, "1700-5") == (
        [("1701-0", payload_of("1701-0"), None, None, None)],
        False,
    )


def test_since_a_position_in_an_absent_history_is_a_gap(history):
    # Expired, or a Redis that lost its data: the reader's last message is not there.
    assert history.since(KEY, "1700-1") == ([], True)


def test_since_a_position_in_a_history_made_afresh_since_is_a_gap(client, history):
    # The old stream expired with the reader's entry and those after it; a new one
    # began, its counts fresh: the reader's entry is gone, and that is the sign.
    client.add(KEY, "1700-1", "1700-2")
    client.drop(KEY)
    client.add(KEY, "1900-0")

    assert history.since(KEY, "1700-1") == (
        [("1900-0", payload_of("1900-0"), None, None, None)],
        True,
    )


def test_since_start_in_a_history_made_afresh_is_no_gap(client, history):
    client.add(KEY, "1700-1")
    client.trim(KEY, 1)
    client.drop(KEY)
    client.add(KEY, "1900-0")

    assert history.since(KEY, START) == (
        [("1900-0", payload_of("1900-0"), None, None, None)],
        False,
    )


@pytest.mark.parametrize(
    ("position", "own", "trimmed", "gap"),
    [
        ("1700-1", True, False, False),
        ("1700-1", False, True, True),
        (START, False, False, False),
        (START, False, True, False),  # it cannot tell: no gap, as before
    ],
)
def test_since_on_a_redis_before_7_goes_by_the_readers_own_entry(
    client, history, position, own, trimmed, gap
):
    client.redis_7 = False
    client.add(KEY, "1699-0", *(["1700-1"] if own else []), "1701-0")
    if trimmed:
        client.trim(KEY, 1)

    assert history.since(KEY, position)[1] is gap


def test_since_more_than_maxlen_after_the_position_is_a_gap_with_the_newest_maxlen(client):
    # Trimming by whole nodes may keep more than maxlen; replay never gives more.
    history = History(client, maxlen=3)  # type: ignore[arg-type]
    client.add(KEY, "1700-0", "1700-1", "1700-2", "1700-3", "1700-4")

    entries, gap = history.since(KEY, "1700-0")

    assert ([i for i, *_ in entries], gap) == (["1700-2", "1700-3", "1700-4"], True)
    assert history.since(KEY, START)[1] is True


def test_since_exactly_maxlen_after_the_position_is_no_gap(client):
    history = History(client, maxlen=3)  # type: ignore[arg-type]
    client.add(KEY, "1700-0", "1700-1", "1700-2", "1700-3")

    entries, gap = history.since(KEY, "1700-0")

    assert ([i for i, *_ in entries], gap) == (["1700-1", "1700-2", "1700-3"], False)


def test_since_reports_an_error_other_than_a_missing_key(client, history):
    client.wrong_type.add(KEY)

    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        history.since(KEY, "1700-0")


def test_since_normalizes_a_position_without_a_sequence(client, history):
    client.add(KEY, "1700-0", "1700-1")

    entries, gap = history.since(KEY, "1700")

    assert [i for i, *_ in entries] == ["1700-1"]
    assert gap is False


def test_since_takes_one_round_trip(client, history):
    client.add(KEY, "1700-0", "1700-1")

    history.since(KEY, "1700-0")

    assert client.round_trips == 1


def test_since_reads_only_its_own_channel(client, history):
    client.add(KEY, "1700-0")
    client.add(OTHER, "1700-1", "1700-2")
    client.trim(OTHER, 1)

    assert history.since(KEY, START) == (
        [("1700-0", payload_of("1700-0"), None, None, None)],
        False,
    )
